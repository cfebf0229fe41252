"""scripts/serve.py as a real server on a free loopback port: it says where it serves, answers over TCP, drains
the request in progress on SIGTERM and exits 0; its page in a real headless Chromium (upload a file, read the
rendered labels); a bounded load test (thousands of requests from concurrent clients: no error, no growth of
the server's RSS)."""
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from test_serving import IMAGES, encoded, noisy
from webdriver import Browser, chromium_binary

pytest.importorskip("uvicorn", reason="the serve extra: pip install -e '.[serve]'")

ADDRESS = re.compile(r"^serving mobilenet_v3_small \(mindspore\) on http://127\.0\.0\.1:(\d+)/ \(this machine only")


class Server:
    """scripts/serve.py in a child process, on the port the system picks (--port 0)."""

    def __init__(self, checkpoint, log: Path, *flags):
        self.log = log.open("w")
        self.process = subprocess.Popen([sys.executable, str(REPO / "scripts" / "serve.py"), "--device_target", "CPU",
                                         "--pretrained", str(checkpoint), "--port", "0", *map(str, flags)],
                                        stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.lines = []
        for line in self.process.stdout:  # until it says where it serves
            self.lines.append(line.rstrip("\n"))
            if match := ADDRESS.match(line):
                self.port = int(match.group(1))
                return
        raise AssertionError(f"the server stopped before serving: {self.lines} {log.read_text()[-2000:]}")

    def request(self, method, path, body=None, headers=None, connection=None):
        """(status, headers, JSON answer)."""
        own = connection is None
        connection = connection or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(method, path, body, headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), json.loads(response.read())
        finally:
            if own:
                connection.close()

    def predict(self, blob, kind="image/jpeg", connection=None, query=""):
        return self.request("POST", f"/predict{query}", blob, {"Content-Type": kind}, connection)

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def stop(self, timeout=60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.lines += self.process.stdout.read().splitlines()
            self.log.close()
        return code


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    running = Server(trained, tmp_path_factory.mktemp("serve") / "stderr.log", "--max_batch", 8)
    yield running
    assert running.stop() == 0


def test_the_server_says_where_it_serves_and_answers_over_tcp(server):
    assert server.lines[-2:] == ["warming up: batches of 1 to 8 images (MindSpore compiles each shape once)",
                                 server.lines[-1]]
    status, _, answer = server.predict(IMAGES["red.jpg"], query="?top_k=2")
    assert status == 200 and [p["label"] for p in answer["predictions"]] == ["class_0", "class_2"]
    status, headers, answer = server.predict(b"not an image")
    assert status == 400 and headers["content-type"] == "application/json" and "not an image" in answer["error"]
    assert server.request("GET", "/metadata")[2]["classes"] == ["class_0", "class_1", "class_2"]


def test_sigterm_answers_the_request_in_progress_then_exits_0(trained, tmp_path):
    """A request whose body is half sent when SIGTERM arrives is in progress: once its body is complete it is
    answered, then the server exits 0 and says so."""
    server = Server(trained, tmp_path / "stderr.log", "--max_batch", 4)
    body = IMAGES["green.png"]
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as connection:
            connection.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                               b"Content-Length: %d\r\n\r\n" % len(body) + body[:len(body) // 2])
            deadline = time.monotonic() + 60
            while server.request("GET", "/health")[2]["requests_in_progress"] < 1:
                assert time.monotonic() < deadline, "the half-sent request never counted as in progress"
                time.sleep(0.02)
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)  # the server is stopping now, with the request still being read
            connection.sendall(body[len(body) // 2:])
            response = http.client.HTTPResponse(connection)
            response.begin()
            status, answer = response.status, json.loads(response.read())
        assert status == 200 and answer["predictions"][0]["label"] == "class_1"
    finally:
        code = server.stop()
    assert code == 0 and server.lines[-1] == "stopped: every request in progress was answered"
    with pytest.raises(ConnectionRefusedError):
        server.request("GET", "/health")


@pytest.mark.skipif(not (chromium_binary() and __import__("shutil").which("chromedriver")),
                    reason="needs Chromium and chromedriver: apt-get install chromium chromium-driver")
def test_the_page_in_a_headless_browser_shows_the_top_classes_of_an_uploaded_file(server, tmp_path):
    image = tmp_path / "green.png"
    image.write_bytes(IMAGES["green.png"])
    _, _, answer = server.predict(IMAGES["green.png"], "image/png", query="?top_k=3")
    with Browser() as browser:
        browser.get(f"http://127.0.0.1:{server.port}/")
        (chooser,) = browser.wait_for("#file")
        browser.send_keys(chooser, str(image))
        labels = [browser.text(element) for element in browser.wait_for(".label", 3)]
        shares = [browser.text(element) for element in browser.elements(".probability")]
        description = browser.text(browser.elements("#model")[0])
        error = browser.text(browser.elements("#error")[0])
    assert labels == [p["label"] for p in answer["predictions"]] and labels[0] == "class_1"
    assert shares == [f"{100 * p['probability']:.1f}%" for p in answer["predictions"]]
    assert description == "mobilenet_v3_small, 3 classes, 32 px, mindspore (version 0.1.0)" and error == ""


def test_thousands_of_concurrent_requests_without_an_error_or_a_growing_rss(server):
    """16 clients on keep-alive connections, 2,400 requests of 6 different 300x400 images (about 200 KB each:
    a body or decoded image kept per request would add hundreds of MB)."""
    bodies = [encoded(noisy((i * 40, 255 - i * 40, 128), (300, 400), seed=i), "PNG") for i in range(6)]
    tops = [server.predict(body, "image/png")[2]["predictions"] for body in bodies]
    clients, per_client = 16, 150
    statuses, rss = [], []

    def client(index):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        try:
            for i in range(per_client):
                which = (index + i) % len(bodies)
                status, _, answer = server.predict(bodies[which], "image/png", connection)
                statuses.append(status)
                got, want = answer["predictions"], tops[which]
                assert [p["index"] for p in got] == [p["index"] for p in want]
                assert np.allclose([p["probability"] for p in got], [p["probability"] for p in want], atol=1e-6)
                if index == 0 and i in (per_client // 4, per_client - 1):
                    rss.append(server.rss_mb())
        finally:
            connection.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for done in [pool.submit(client, index) for index in range(clients)]:
            done.result()
    elapsed = time.perf_counter() - start
    assert statuses == [200] * clients * per_client
    assert rss[1] - rss[0] < 40, f"RSS grew from {rss[0]:.0f} to {rss[1]:.0f} MB over {len(statuses)} requests"
    health = server.request("GET", "/health")[2]
    assert health["requests_in_progress"] == 0 and max(map(int, health["batch_sizes"])) > 1
    print(f"{len(statuses)} requests in {elapsed:.1f} s; RSS {rss[0]:.0f} -> {rss[1]:.0f} MB; "
          f"batch sizes {health['batch_sizes']}")
