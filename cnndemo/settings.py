"""Every setting the app takes from the environment, in one frozen record.

This is the only module that reads (or writes) ``os.environ``. ``get()`` reads the
environment once, on first use; the app's and the CLI's flags change it through
``configure`` (which also exports the change, so a process started later inherits it), and
tests that change a variable call ``reload()``. README's "Settings" table lists them all.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from dataclasses import dataclass, fields, replace
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}


def parse_bytes(text: str) -> int:
    """'2gb', '500 MB', '1048576' -> bytes (binary units, as Gradio's max_file_size)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?b?)?\s*", str(text).lower())
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 2gb, 500mb)")
    unit = (m.group(2) or "b").rstrip("b") or "b"
    return int(float(m.group(1)) * {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[unit])


@dataclass(frozen=True)
class Settings:
    """One field per variable; ``ENV`` maps each field to its variable's name."""

    offline: bool = False
    device: str = "auto"
    weights_url: str = ""
    download_timeout_s: float = 10.0
    max_checkpoint_loads: int = 2
    torch_home: str = ""
    work_budget_tflop: float = 6.0
    # What an attribution's scores may add beyond their minimum (3 re-initialisations, 19 random
    # orders) to settle a verdict: a GoogLeNet Grad-CAM's 79 random orders took 24 s on 2 cores.
    score_extra_tflop: float = 0.5
    max_image_mb: float = 25.0
    max_megapixels: float = 40.0
    cpu_cores: int = 0  # 0: the affinity mask
    torch_threads: int = 0  # 0: cpu_cores
    workers: int = 2
    heavy_workers: int = 1
    results_cache: str = "256mb"
    batch: str = "auto"  # auto: on with CUDA, off on a CPU
    queue_max: int = 64
    max_threads: int = 40
    max_upload: str = "120mb"
    queue_per_session: int = 4
    heavy_per_session: int = 1
    queue_per_ip: int = 16
    proxy_hops: int | None = None  # None: 1 in a Space, else 0
    state_ttl_s: float = 1800.0
    sessions: int = 1000
    upload_quota: str = "2gb"
    partial_upload_s: float = 300.0
    upload_dir: str = ""  # GRADIO_TEMP_DIR; empty: <tmp>/cnndemo-gradio
    space_id: str = ""
    server_name: str = ""
    server_port: int = 7860
    mcp: bool = False
    warm: str = ""
    exemplars: str = ""  # a folder of images: the photo networks' natural exemplars
    rooms: int = 20
    room_members: int = 60
    room_idle_s: float = 3600.0
    zero_gpu: bool = False  # set by Hugging Face's ZeroGPU runtime

    ENV = {
        "offline": "CNNDEMO_OFFLINE", "device": "CNNDEMO_DEVICE", "weights_url": "CNNDEMO_WEIGHTS_URL",
        "download_timeout_s": "CNNDEMO_DOWNLOAD_TIMEOUT", "max_checkpoint_loads": "CNNDEMO_MAX_CHECKPOINT_LOADS",
        "torch_home": "TORCH_HOME", "work_budget_tflop": "CNNDEMO_WORK_BUDGET_TFLOP",
        "score_extra_tflop": "CNNDEMO_SCORE_EXTRA_TFLOP",
        "max_image_mb": "CNNDEMO_MAX_IMAGE_MB", "max_megapixels": "CNNDEMO_MAX_MEGAPIXELS",
        "cpu_cores": "CPU_CORES", "torch_threads": "CNNDEMO_TORCH_THREADS", "workers": "CNNDEMO_WORKERS",
        "heavy_workers": "CNNDEMO_HEAVY_WORKERS", "results_cache": "CNNDEMO_RESULTS_CACHE", "batch": "CNNDEMO_BATCH",
        "queue_max": "CNNDEMO_QUEUE_MAX", "max_threads": "CNNDEMO_MAX_THREADS", "max_upload": "CNNDEMO_MAX_UPLOAD",
        "queue_per_session": "CNNDEMO_QUEUE_PER_SESSION", "heavy_per_session": "CNNDEMO_HEAVY_PER_SESSION",
        "queue_per_ip": "CNNDEMO_QUEUE_PER_IP", "proxy_hops": "CNNDEMO_PROXY_HOPS",
        "state_ttl_s": "CNNDEMO_STATE_TTL", "sessions": "CNNDEMO_SESSIONS", "upload_quota": "CNNDEMO_UPLOAD_QUOTA",
        "partial_upload_s": "CNNDEMO_PARTIAL_UPLOAD_S", "upload_dir": "GRADIO_TEMP_DIR", "space_id": "SPACE_ID",
        "server_name": "GRADIO_SERVER_NAME", "server_port": "GRADIO_SERVER_PORT", "mcp": "CNNDEMO_MCP", "warm": "CNNDEMO_WARM",
        "exemplars": "CNNDEMO_EXEMPLARS",
        "rooms": "CNNDEMO_ROOMS", "room_members": "CNNDEMO_ROOM_MEMBERS", "room_idle_s": "CNNDEMO_ROOM_IDLE",
        "zero_gpu": "SPACES_ZERO_GPU",
    }

    # ------------------------------------------------------------------ derived values

    @property
    def in_space(self) -> bool:
        return bool(self.space_id)

    @property
    def hops(self) -> int:
        """Proxies in front of the app that append to X-Forwarded-For (a Space has one)."""
        return self.proxy_hops if self.proxy_hops is not None else (1 if self.in_space else 0)

    @property
    def upload_quota_bytes(self) -> int:
        return parse_bytes(self.upload_quota)

    @property
    def heavy_lane(self) -> int:
        """Long requests in progress at once (Gradio's limit for the heavy lane): those computing
        (``heavy_workers``) and those waiting for a worker or for an identical request's result.
        Half of Gradio's threads, so light events always find one."""
        return max(self.heavy_workers, self.max_threads // 2)

    @property
    def results_cache_bytes(self) -> int:
        return parse_bytes(self.results_cache)

    @property
    def upload_folder(self) -> Path:
        return Path(self.upload_dir or Path(tempfile.gettempdir()) / "cnndemo-gradio")

    @property
    def max_image_bytes(self) -> int:
        return int(self.max_image_mb * 1024 * 1024)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1_000_000)


def _convert(value: str, default):
    """A variable's text as the field's type; the default when it does not parse (as before:
    a malformed number never stopped the app)."""
    value = value.strip()
    if isinstance(default, bool):
        return value.lower() in _TRUE
    if isinstance(default, int) or default is None:
        return int(value) if value.lstrip("-").isdigit() else default
    if isinstance(default, float):
        try:
            return float(value)
        except ValueError:
            return default
    return value


def read(environ=None) -> Settings:
    """The settings in ``environ`` (default: this process's environment)."""
    environ = os.environ if environ is None else environ
    base = Settings()
    values = {}
    for f in fields(Settings):
        name = Settings.ENV[f.name]
        if environ.get(name, "").strip():
            values[f.name] = _convert(environ[name], getattr(base, f.name))
    if values.get("cpu_cores", 0) < 0:
        values["cpu_cores"] = 0
    if values.get("torch_threads", 0) < 0:
        values["torch_threads"] = 0
    return replace(base, **values)


_current: Settings | None = None  # read on first use
_LOCK = threading.Lock()


def get() -> Settings:
    """The current settings (the environment, read on first use)."""
    global _current
    if _current is None:
        with _LOCK:
            if _current is None:
                _current = read()
    return _current


def reload() -> Settings:
    """Read the environment again (a test that changed a variable)."""
    global _current
    with _LOCK:
        _current = read()
    return _current


def configure(**changes) -> Settings:
    """Change settings for this process (``--offline``, ``--device``), and export them so that a
    process started from this one (a benchmark's server, a check) gets the same."""
    current = get()
    new = replace(current, **changes)
    for name, value in changes.items():
        os.environ[Settings.ENV[name]] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    global _current
    with _LOCK:
        _current = new
    return new


def export_default(name: str, value: str) -> None:
    """Set a variable that another library reads (Gradio's ``GRADIO_TEMP_DIR``, torch's
    ``TORCH_HOME``) unless it is set already, and keep the record in step."""
    field = next(f for f, env in Settings.ENV.items() if env == name)
    if not os.environ.get(name, "").strip():
        configure(**{field: _convert(value, getattr(Settings(), field))})


def environment(extra: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment with ``extra`` added and ``drop`` removed: for a child process."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra or {})
    return env


def table() -> list[tuple[str, str, str]]:
    """(variable, field, default) for every setting: README's table is checked against it."""
    base = Settings()
    return [(Settings.ENV[f.name], f.name, repr(getattr(base, f.name))) for f in fields(Settings)]
