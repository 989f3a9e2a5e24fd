"""Workers for long computations, with a place in line a waiting request is told.

The app runs light events (a prediction, branch maps, an ablation, a digit) and heavy ones
(attributions, benchmarks, training) in lanes of their own (``ui``). Inside the heavy lane,
only ``HEAVY.slots`` computations run at once: more would only share the same cores. A
request that finds its result ready, or the identical request already computing it
(``shared``), needs no worker and never waits for one.

A computation that takes a worker and then asks for more heavy work (the all-methods grid
runs each method) keeps the one it has: ``slot`` is re-entrant within a request.

``Lane.run`` runs a computation on one of the lane's own threads, at a lower CPU priority
(``nice``): a heavy computation still uses every idle cycle, but the light events beside it
get the cores first (Linux gives a thread of nice 0 about ten times the share of one at 10).
Its threads are niced before they first run torch, so the OpenMP threads each starts inherit it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import os
import threading
from typing import Callable, Iterator, TypeVar

from . import cancel, settings
from .cancel import ProgressFn

T = TypeVar("T")
# How much lower a heavy computation's CPU priority is than a light event's.
HEAVY_NICE = 10


def lower_priority(niceness: int = HEAVY_NICE) -> bool:
    """Give the calling thread (and the threads it starts from now on) a lower CPU priority.
    False where the system does not allow it (not Linux); the work then runs as before."""
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, max(current, niceness))
        return True
    except (OSError, AttributeError):
        return False


class Lane:
    """At most ``slots`` computations at once; the others wait in arrival order, cancellably."""

    def __init__(self, name: str, slots: int, nice: int = 0):
        self.name = name
        self.slots = max(1, int(slots))
        self.nice = nice
        self._cond = threading.Condition()
        self._running = 0
        self._line: list[object] = []
        self._held: contextvars.ContextVar[bool] = contextvars.ContextVar(f"cnndemo_lane_{name}", default=False)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._local = threading.local()

    def _start_thread(self) -> None:
        self._local.mine = True
        if self.nice:
            lower_priority(self.nice)

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._cond:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self.slots, thread_name_prefix=f"cnndemo-{self.name}", initializer=self._start_thread)
            return self._pool

    def run(self, fn: Callable[[], T], progress: ProgressFn | None = None) -> T:
        """``fn()`` on one of the lane's threads, once a worker is free (``slot``), in the
        caller's context (its cancellation token, its progress). Called from a lane thread
        (heavy work asking for more), it runs at once, where it is."""
        if getattr(self._local, "mine", False):
            return fn()
        with self.slot(progress):
            ctx = contextvars.copy_context()
            return self._executor().submit(ctx.run, fn).result()

    def holding(self) -> bool:
        """Whether the caller already holds one of this lane's workers."""
        return bool(getattr(self._local, "mine", False) or self._held.get())

    def status(self) -> tuple[int, int]:
        """(running, waiting) right now."""
        with self._cond:
            return self._running, len(self._line)

    @contextlib.contextmanager
    def slot(self, progress: ProgressFn | None = None) -> Iterator[None]:
        """Hold a worker for the body. Waiting, the request is told how many are ahead of it
        (through ``progress``) and stays cancellable."""
        if self._held.get():
            yield
            return
        ticket = object()
        told = None
        with self._cond:
            self._line.append(ticket)
        try:
            while True:
                with self._cond:
                    if self._running < self.slots and self._line[0] is ticket:
                        self._line.pop(0)
                        self._running += 1
                        break
                    ahead = self._line.index(ticket) + self._running
                    self._cond.wait(0.1)
                cancel.check()
                if progress is not None and ahead != told:
                    told = ahead
                    progress(0.0, f"Waiting for a free worker: {ahead} long job{'s' if ahead != 1 else ''} ahead")
        except BaseException:
            with self._cond:
                if ticket in self._line:
                    self._line.remove(ticket)
                self._cond.notify_all()
            raise
        token = self._held.set(True)
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):  # a generator closed from another context
                self._held.reset(token)
            with self._cond:
                self._running -= 1
                self._cond.notify_all()


HEAVY = Lane("heavy", settings.get().heavy_workers, nice=HEAVY_NICE)
