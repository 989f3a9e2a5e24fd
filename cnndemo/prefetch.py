"""Fetch the published weights in the background, smallest first, so that a Space that just
restarted (its disk is ephemeral) has them before the class asks for them.

Nothing here blocks: the downloads run in one daemon thread, each through ``weights.fetch``
(SHA-256 verified, stall timeout, one download per file even when a request asks for the same
model meanwhile). ``status()`` says how far it got, for the app's status line.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import settings
from . import weights as W
from .zoo import PUBLISHED_KEYS, ZOO


@dataclass
class PrefetchState:
    total: int = 0
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    current: str = ""
    fraction: float | None = None
    running: bool = False
    started: float = 0.0


_STATE = PrefetchState()
_LOCK = threading.Lock()
LOG = logging.getLogger(__name__)


def published_sources() -> list[tuple[str, W.TorchvisionWeights]]:
    """(model key, weights) for every zoo model with published weights, smallest file first
    (torchvision's metadata gives each file's size)."""
    items = [(k, ZOO[k].weights) for k in PUBLISHED_KEYS]
    return sorted(items, key=lambda kv: kv[1].meta.get("_file_size", float("inf")))


def persistent_torch_home() -> Path | None:
    """Where a Space keeps the weights across restarts: ``TORCH_HOME`` when set, else a
    writable persistent-storage mount at ``/data``; None when neither exists."""
    if settings.get().torch_home:
        return Path(settings.get().torch_home)
    data = Path("/data")
    if data.is_dir() and os.access(data, os.W_OK):
        return data / "torch"
    return None


def status() -> PrefetchState:
    with _LOCK:
        return PrefetchState(_STATE.total, list(_STATE.done), dict(_STATE.failed), _STATE.current,
                             _STATE.fraction, _STATE.running, _STATE.started)


def describe(s: PrefetchState | None = None) -> str:
    """One line for the status bar (from ``s``, else the current state); empty when no
    prefetch was started."""
    s = s or status()
    if not s.total:
        return ""
    head = f"{len(s.done)} of {s.total} published checkpoints ready"
    if s.running and s.current:
        pct = f" {s.fraction:.0%}" if s.fraction is not None else ""
        head = f"Fetching weights in the background: {head}; now {s.current}{pct}"
    elif s.failed:
        head += f"; {len(s.failed)} could not be fetched ({'; '.join(f'{k}: {v}' for k, v in s.failed.items())})"
    return head


def run(sources: list[tuple[str, W.TorchvisionWeights]] | None = None) -> PrefetchState:
    """Fetch every source in turn (blocking; ``start`` runs this in a thread)."""
    sources = published_sources() if sources is None else sources
    with _LOCK:
        _STATE.total, _STATE.done, _STATE.failed = len(sources), [], {}
        _STATE.running, _STATE.started = True, time.monotonic()
    try:
        for key, src in sources:
            with _LOCK:
                _STATE.current, _STATE.fraction = key, None

            def progress(frac: float | None, _desc: str) -> None:
                with _LOCK:
                    _STATE.fraction = frac

            try:
                W.fetch(src, progress=progress)
                with _LOCK:
                    _STATE.done.append(key)
            except Exception as e:  # noqa: BLE001 (one model's failure must not end the others' fetch)
                # The status line shows it too; the log keeps it for whoever runs the server.
                LOG.warning("background fetch of %s's weights failed: %s", key, e,
                            exc_info=not isinstance(e, W.WeightsError))
                with _LOCK:
                    _STATE.failed[key] = str(e)
    finally:
        with _LOCK:
            _STATE.running, _STATE.current = False, ""
    return status()


def start(sources: list[tuple[str, W.TorchvisionWeights]] | None = None) -> threading.Thread:
    """Start the background fetch; returns at once."""
    t = threading.Thread(target=run, args=(sources,), name="cnndemo-prefetch", daemon=True)
    t.start()
    return t
