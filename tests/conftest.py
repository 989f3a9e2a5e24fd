"""Test setup: never touch the network, use a private torch hub cache, share one app server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import http.client
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"


def pytest_configure(config):
    # Set before cnndemo is imported anywhere: offline, and a hub cache of our own so that a
    # developer's real ~/.cache/torch never changes what the tests see.
    os.environ["CNNDEMO_OFFLINE"] = "1"
    os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="cnndemo-torch-home-")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_OFFLINE"] = "1"
    config.addinivalue_line("markers", "browser: real-browser tests (Playwright + Debian chromium)")
    config.addinivalue_line("markers", "slow: the longest tests (training, a class of 30, chromium); -m 'not slow' skips them")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_get(port: int, path: str = "/", timeout: float = 10.0) -> tuple[int, bytes]:
    """GET from the app on this machine's loopback interface (the tests never go further)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_http(port: int, timeout: float = 60.0) -> float:
    """Seconds until the app on ``port`` answers 200 (raises after ``timeout``)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if local_get(port, "/", timeout=2)[0] == 200:
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the app on port {port} did not answer within {timeout} s")


class AppServer:
    def __init__(self, extra_env: dict | None = None, args: tuple[str, ...] = ("--offline",)):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        # Each server owns its upload folder (the app empties it at start).
        env = {**os.environ, "GRADIO_TEMP_DIR": tempfile.mkdtemp(prefix="cnndemo-uploads-"), **(extra_env or {})}
        self.log = tempfile.NamedTemporaryFile(prefix="cnndemo-app-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--port", str(self.port), *args],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            self.startup_s = wait_http(self.port, timeout=90)
        except TimeoutError:
            self.stop()
            raise RuntimeError("app did not start:\n" + Path(self.log.name).read_text()) from None

    def rss_mb(self) -> float:
        pages = int(Path(f"/proc/{self.proc.pid}/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def app_server():
    server = AppServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client(app_server):
    from gradio_client import Client

    return Client(app_server.url, verbose=False)


@pytest.fixture(scope="session")
def examples() -> Path:
    """The example photos shipped with the app."""
    return EXAMPLES


@pytest.fixture(scope="session")
def cat(examples) -> Path:
    """The example image most tests use."""
    return examples / "cat.jpg"
