"""A headless Chromium driven through chromedriver's W3C WebDriver HTTP API with the standard library alone
(no selenium): open a page, find elements, type a file path into a file input, read text, take a screenshot.
Debian: apt-get install chromium chromium-driver."""
import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


def chromium_binary():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Browser:
    """One headless Chromium session; use as a context manager."""

    def __init__(self, window=(1000, 700)):
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        port = free_port()
        self.driver = subprocess.Popen([shutil.which("chromedriver"), f"--port={port}"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{port}"
        options = {"binary": chromium_binary(),
                   "args": CHROMIUM_FLAGS + [f"--user-data-dir={self.profile}", f"--window-size={window[0]},{window[1]}"]}
        try:
            self._wait_for_driver()
            answer = self._call("POST", "/session", {"capabilities": {"alwaysMatch": {
                "browserName": "chrome", "goog:chromeOptions": options}}})
        except BaseException:
            self._stop_driver()
            raise
        self.session = f"/session/{answer['sessionId']}"

    def _wait_for_driver(self, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._call("GET", "/status")
                return
            except OSError:
                if time.monotonic() > deadline or self.driver.poll() is not None:
                    raise RuntimeError("chromedriver did not start") from None
                time.sleep(0.1)

    def _call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"WebDriver {method} {path}: {err.read().decode(errors='replace')}") from None

    def get(self, url):
        self._call("POST", f"{self.session}/url", {"url": url})

    def elements(self, css) -> list:
        found = self._call("POST", f"{self.session}/elements", {"using": "css selector", "value": css})
        return [element[ELEMENT] for element in found]

    def text(self, element) -> str:
        return self._call("GET", f"{self.session}/element/{element}/text")

    def send_keys(self, element, text):
        self._call("POST", f"{self.session}/element/{element}/value", {"text": text})

    def wait_for(self, css, count=1, timeout=60) -> list:
        """The elements matching `css` once there are at least `count` of them."""
        deadline = time.monotonic() + timeout
        while len(found := self.elements(css)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {count} elements {css!r} after {timeout} s")
            time.sleep(0.1)
        return found

    def screenshot(self, path):
        Path(path).write_bytes(base64.b64decode(self._call("GET", f"{self.session}/screenshot")))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self._call("DELETE", self.session)
        finally:
            self._stop_driver()

    def _stop_driver(self):
        self.driver.terminate()
        self.driver.wait(timeout=30)
        shutil.rmtree(self.profile, ignore_errors=True)
