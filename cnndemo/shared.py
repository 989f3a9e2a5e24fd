"""Results shared by every request: each computed once, then kept in a cache bounded in bytes.

A class that presses Explain on the teacher's example asks thirty times for the same
Integrated Gradients. ``SharedResults.get(key, compute)``:

- returns a finished result from the cache;
- else, when an identical request is computing it right now, waits for that one's result
  ("single flight") and follows its progress;
- else computes it, and keeps it.

The computation runs under a ``cancel.Waiters`` token: it stops when *every* request waiting
for it has gone (closed the tab, cancelled), and goes on while any one still waits. A key
names what is computed (the model with its weights, the pixels, the method and its
settings), never who asked: results carry no file names or notes of the request that made
them (those are added back per request by the caller).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from typing import Any, Callable, Hashable, TypeVar

import numpy as np
import torch
from PIL import Image

from . import cancel, settings
from .cache import LRU
from .cancel import ProgressFn
from .lanes import Lane

T = TypeVar("T")
_MISSING = object()


def nbytes(value: Any, _depth: int = 0) -> int:
    """About how much memory a result holds: its arrays, tensors, images and bytes, found
    through dataclasses, dicts, lists and tuples (small scalars count as nothing)."""
    if _depth > 6 or value is None:
        return 0
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, Image.Image):
        return value.size[0] * value.size[1] * len(value.getbands())
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, dict):
        return sum(nbytes(v, _depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v, _depth + 1) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(nbytes(getattr(value, f.name), _depth + 1) for f in dataclasses.fields(value))
    return 0


class _Flight:
    """One computation in progress, and who waits for it."""

    def __init__(self):
        self.waiters = cancel.Waiters()
        self.done = threading.Event()
        self.started = threading.Event()  # its leader holds a worker and computes
        self.value: Any = _MISSING
        self.error: BaseException | None = None
        self.progress: tuple[float | None, str] | None = None
        self.progress_seq = 0

    def report(self, frac: float | None, desc: str) -> None:
        self.progress = (frac, desc)
        self.progress_seq += 1


class SharedResults:
    """A byte-bounded cache of finished results with single flight for the missing ones."""

    def __init__(self, max_bytes: int | None = None, *, name: str = "shared results"):
        limit = settings.get().results_cache_bytes if max_bytes is None else max_bytes
        self.cache = LRU(100_000, max_bytes=limit, weigh=nbytes, name=name)
        self._flights: dict[Hashable, _Flight] = {}
        self._guard = threading.Lock()
        self.counts: Counter = Counter()  # computed, cached (hits), joined (waited on a flight)

    def peek(self, key: Hashable, default=None):
        """The finished result for ``key``, or ``default`` (nothing is computed)."""
        value = self.cache.get(key, _MISSING)
        if value is _MISSING:
            return default
        self._count("cached")
        return value

    def get(self, key: Hashable, compute: Callable[[ProgressFn | None], T], *,
            progress: ProgressFn | None = None, lane: Lane | None = None) -> T:
        """The result for ``key``: from the cache, from the identical request computing it
        now, or computed here by ``compute(progress)``, holding a worker of ``lane`` (the
        identical requests wait for the result, not for a worker). A result that is too big
        for the cache is returned and not kept. Errors are not kept: the next request tries
        again."""
        while True:
            value = self.peek(key, _MISSING)
            if value is not _MISSING:
                return value
            with self._guard:
                value = self.cache.get(key, _MISSING)  # finished while this request looked
                if value is not _MISSING:
                    return value
                flight = self._flights.get(key)
                # A request that holds a worker (the all-methods grid, running each method) never
                # waits for a leader that is still waiting for a worker: that could be its own.
                take_over = flight is not None and lane is not None and lane.holding() and not flight.started.is_set()
                leader = flight is None
                if leader:
                    flight = self._flights[key] = _Flight()
                if not take_over:
                    flight.waiters.add(cancel.current())
            if take_over:
                value = compute(progress)
                self._count("computed")
                self.cache.put(key, value)  # the waiting leader finds it when it gets its worker
                return value
            if leader:
                return self._compute(key, flight, compute, progress, lane)
            self._count("joined")
            value = self._wait(flight, progress)
            if value is not _MISSING:
                return value
            # The flight stopped because everybody else went away just as this request joined
            # it: this request still wants the result, so it starts its own.

    def _compute(self, key, flight: _Flight, compute, progress: ProgressFn | None, lane: Lane | None):
        def report(frac, desc):
            flight.report(frac, desc)
            if progress is not None:
                progress(frac, desc)

        def run():
            flight.started.set()
            done = self.cache.get(key, _MISSING)  # computed meanwhile by a request that held a worker
            if done is not _MISSING:
                return done
            value = compute(report)
            self._count("computed")
            self.cache.put(key, value)
            return value

        try:
            with cancel.cancellable(flight.waiters):
                value = lane.run(run, report) if lane else run()
            flight.value = value
            return value
        except BaseException as e:
            flight.error = e
            raise
        finally:
            with self._guard:
                self._flights.pop(key, None)
            flight.done.set()

    @staticmethod
    def _wait(flight: _Flight, progress: ProgressFn | None):
        seen = 0
        while not flight.done.wait(0.1):
            cancel.check()
            if progress is not None and flight.progress_seq != seen and flight.progress is not None:
                seen = flight.progress_seq
                frac, desc = flight.progress
                others = flight.waiters.waiting() - 1
                progress(frac, f"{desc} (computed once for {others + 1} requests)" if others else desc)
        if flight.error is None:
            return flight.value
        if isinstance(flight.error, cancel.Cancelled):
            cancel.check()  # this request went away too
            return _MISSING
        raise flight.error

    def _count(self, what: str) -> None:
        with self._guard:
            self.counts[what] += 1

    def clear(self) -> None:
        self.cache.clear()
        with self._guard:
            self.counts.clear()


RESULTS = SharedResults()
