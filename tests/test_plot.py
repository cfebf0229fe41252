"""plot.py on a damaged metrics.jsonl: what can be read is drawn, the rest named by line number."""
import runpy

import pytest

from conftest import REPO, run_script

# Lines 3 (a byte that is not UTF-8), 5 (no number for loss), 6 (not an object) and 8 (cut short, as a run
# killed while writing leaves it) cannot be drawn; line 7 is blank.
DAMAGED = (b'{"epoch": 1, "loss": 2.0, "lr": 0.1}\n'
           b'{"epoch": 2, "loss": 1.5, "lr": 0.05, "val_top1": 0.5}\n'
           b'{"epoch": 3, "loss": 1.2, "lr": 0.02, "note": "caf\xe9"}\n'
           b'{"epoch": 4, "loss": 1.1, "lr": 0.01}\n'
           b'{"epoch": 5, "loss": "nan", "lr": 0.01}\n'
           b'[5, 1.0, 0.01]\n'
           b'\n'
           b'{"epoch": 6, "loss": 1.')


def test_readable_lines_are_drawn_and_the_others_named(tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_bytes(DAMAGED)
    done = run_script("plot", tmp_path / "run")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"warning: {tmp_path / 'run' / 'metrics.jsonl'}: skipped lines 3, 5, 6, 8 (cut short, not UTF-8, or without "
        "numbers for epoch, loss and lr); plotted the other 3"]
    assert (tmp_path / "run" / "curves.png").is_file()
    readable_lines = runpy.run_path(str(REPO / "scripts" / "plot.py"))["readable_lines"]
    lines, skipped = readable_lines(tmp_path / "run" / "metrics.jsonl")
    assert [line["epoch"] for line in lines] == [1, 2, 4] and skipped == [3, 5, 6, 8]


def test_a_file_of_no_readable_line_is_one_error(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_bytes(b'\xff\xfe{"epoch": 1}\n{"epoch": 2, "lo')
    done = run_script("plot", tmp_path / "run")
    assert done.returncode == 2 and done.stderr.splitlines() == [
        f"error: {tmp_path / 'run' / 'metrics.jsonl'}: no line can be drawn (lines 1, 2: cut short, not UTF-8, or "
        "without numbers for epoch, loss and lr); pass the ckpt_save_dir of another run"]
    assert not (tmp_path / "run" / "curves.png").exists()
