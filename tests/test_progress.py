"""Progress of eval and infer: a bar with rate and time left on a terminal, plain lines in logs."""
import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
import time

from mobilenetv3.progress import progress


def stderr_is_a_terminal(monkeypatch, tty):
    """progress() asks sys.stderr (here capsys's capture) whether it is a terminal."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)


def test_off_a_terminal_a_plain_line_every_n_steps(capsys, monkeypatch):
    stderr_is_a_terminal(monkeypatch, False)
    assert list(progress(range(120), 120, "batch", every=50)) == list(range(120))
    captured = capsys.readouterr()
    lines = captured.err.splitlines()  # logged on mobilenetv3.progress: on stderr (conftest ran log.configure())
    assert [line.split(",")[0] for line in lines] == ["50/120 batches", "100/120 batches"]
    assert all(re.fullmatch(r"\d+/120 batches, \d+ s, about \d+ s left", line) for line in lines)
    assert captured.out == ""


def slowly(count, seconds=0.02):
    for index in range(count):
        time.sleep(seconds)
        yield index


def test_on_a_terminal_a_bar_with_rate_and_time_left(capsys, monkeypatch):
    stderr_is_a_terminal(monkeypatch, True)
    assert list(progress(slowly(30), 30, "batch")) == list(range(30))
    # tqdm redraws in place: "12/30 [00:00<00:00, 48.9batch/s]" (done/total [elapsed<left, rate]).
    assert re.search(r"\r.*\d+/30 \[\d\d:\d\d<\d\d:\d\d, +\d+\.\d+batch/s\]", capsys.readouterr().err)


def test_nothing_on_other_ranks(capsys, monkeypatch):
    for tty in (True, False):
        stderr_is_a_terminal(monkeypatch, tty)
        assert list(progress(range(120), 120, "batch", enabled=False, every=10)) == list(range(120))
        assert capsys.readouterr() == ("", "")


def test_a_real_terminal_gets_the_bar():
    """stderr on a pseudo-terminal, as in an interactive shell."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    code = ("import time\nfrom mobilenetv3.progress import progress\n"
            "for _ in progress(range(10), 10, 'batch'): time.sleep(0.05)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stderr=follower)
    os.close(follower)
    seen = b""
    while True:  # read while the child writes: a pseudo-terminal holds little
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert child.wait(timeout=60) == 0
    seen = seen.decode()
    assert re.search(r"\d+/10 \[.*batch/s\]", seen), seen
