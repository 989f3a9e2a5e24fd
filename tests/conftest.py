"""Test setup: never touch the network, use a private torch hub cache, share one app server."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Set before cnndemo is imported anywhere (its settings are read once): offline, and a hub
# cache of our own so that a developer's real ~/.cache/torch never changes what the tests see.
os.environ["CNNDEMO_OFFLINE"] = "1"
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="cnndemo-torch-home-")
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"

from cnndemo import settings  # noqa: E402
from cnndemo.cli.diagnostics.server import Server, local_get, start_server  # noqa: E402, F401 (tests import local_get)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: real-browser tests (Playwright + Debian chromium)")
    config.addinivalue_line("markers", "slow: the longest tests (training, a class of 30, chromium); -m 'not slow' skips them")


def AppServer(extra_env: dict | None = None, args: tuple[str, ...] = ("--offline",)) -> Server:
    """``python app.py`` on a free loopback port, with an upload folder of its own."""
    return start_server(extra_env, args, timeout=90)


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


@pytest.fixture
def setenv(monkeypatch):
    """``setenv(NAME, value)`` (None: unset) for the rest of a test, with the settings read again;
    both are restored afterwards."""

    def set_(name: str, value: str | None) -> None:
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
        settings.reload()

    yield set_
    monkeypatch.undo()
    settings.reload()
