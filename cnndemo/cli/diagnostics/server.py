"""The app as a separate process on loopback, for the tools that measure it (the class
simulation, the start-up and flood benchmarks, check-space) and for the tests: a free port,
start-and-wait-for-HTTP-200, the server's resident memory, and a clean stop."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ... import settings
from ...paths import CHECKOUT as ROOT


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_get(port: int, path: str = "/", timeout: float = 10.0) -> tuple[int, bytes]:
    """GET from a server on this machine's loopback interface: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def proc_status_mb(pid: int | str = "self", field_name: str = "VmRSS") -> float:
    """A memory figure of a process from ``/proc/PID/status`` (VmRSS: resident now; VmHWM: its
    peak), in MB; 0.0 where it cannot be read (the process has gone, or not Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds a process has used so far (``/proc/PID/stat``). Raises
    ``OSError`` once the process has gone: a figure of 0 would read as a quiet process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    """``python app.py`` running on ``port``; ``log`` holds its output."""

    proc: subprocess.Popen
    url: str
    port: int
    startup_s: float
    log: Path
    peak_rss_mb: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    def rss_mb(self) -> float:
        return proc_status_mb(self.proc.pid)

    def watch(self) -> None:
        """Track the peak resident memory (``peak_rss_mb``) until ``stop``."""

        def loop():
            while not self._stop.wait(0.2):
                self.peak_rss_mb = max(self.peak_rss_mb, self.rss_mb())

        threading.Thread(target=loop, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_server(env: dict[str, str] | None = None, app_args: tuple[str, ...] = ("--offline",),
                 timeout: float = 120, *, as_space: bool = False, watch: bool = False) -> Server:
    """``python app.py`` (``python -m cnndemo serve`` outside a checkout) on a free loopback port, with an upload folder of its own (unless
    ``env`` names one); returns once it answers HTTP 200, or raises with the end of its log.

    ``as_space``: started the way a Hugging Face Space starts it (``SPACE_ID`` set, the port
    in ``GRADIO_SERVER_PORT``, no address given), so it binds all interfaces by itself.
    ``watch``: track its peak resident memory.
    """
    port = free_port()
    extra = {"GRADIO_TEMP_DIR": tempfile.mkdtemp(prefix="cnndemo-uploads-"), **(env or {})}
    if as_space:
        extra.update(SPACE_ID="check/cnn-zoo-lab", GRADIO_SERVER_PORT=str(port))
        address: list[str] = []
    else:
        address = ["--host", "127.0.0.1", "--port", str(port)]
    full_env = settings.environment(extra, drop=("GRADIO_SERVER_NAME",) if as_space else ())
    log = Path(tempfile.mkstemp(prefix="cnndemo-app-", suffix=".log")[1])
    t0 = time.monotonic()
    with open(log, "wb") as out:
        # An installed package has no app.py: its ``serve`` command starts the same app.
        app = [str(ROOT / "app.py")] if (ROOT / "app.py").is_file() else ["-m", "cnndemo", "serve"]
        proc = subprocess.Popen([sys.executable, *app, *address, *app_args],
                                cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode} before answering:\n{_tail(log)}")
        try:
            if local_get(port, "/", timeout=2)[0] == 200:
                server = Server(proc, f"http://127.0.0.1:{port}/", port, time.monotonic() - t0, log)
                if watch:
                    server.watch()
                return server
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the app did not answer within {timeout:.0f} s:\n{_tail(log)}")


def _tail(log: Path, chars: int = 4000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
