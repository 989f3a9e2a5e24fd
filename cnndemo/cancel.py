"""Cooperative cancellation and work budgets for long-running views.

A request that its client abandons must stop within about a second, and must not hold a
model's lock meanwhile. Python cannot stop a thread from outside, so long loops (Captum's
batches, occlusion windows, the sanity and deletion passes, benchmark iterations, training
steps) call ``check()``. It raises ``Cancelled`` once the token of the current context is set.

The token travels in a ``ContextVar``; the app runs each handler in a worker thread inside a
copy of the request's context (``ui.serving.cancellable``), so library code needs no extra
argument. Outside a cancellable
call ``check()`` does nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from typing import Callable, Iterator, Protocol

from . import settings
from .errors import BadRequest

# Progress of long work: (fraction done or None, what is happening now). Every long call takes one.
ProgressFn = Callable[[float | None, str], None]



class Token(Protocol):
    """What cancels work: a ``threading.Event`` per request, or ``Waiters`` for shared work."""

    def is_set(self) -> bool: ...


_TOKEN: contextvars.ContextVar[Token | None] = contextvars.ContextVar("cnndemo_cancel", default=None)


def current() -> Token | None:
    """The current request's token (None outside a cancellable call: nothing cancels it)."""
    return _TOKEN.get()


class Waiters:
    """The token of work that several requests wait for: set once every one of them has
    been cancelled. A waiter without a token (a command-line call) never goes away."""

    def __init__(self):
        self._tokens: list[Token] = []
        self._forever = False
        self._lock = threading.Lock()

    def add(self, token: Token | None) -> None:
        with self._lock:
            if token is None:
                self._forever = True
            else:
                self._tokens.append(token)

    def waiting(self) -> int:
        """How many requests still wait."""
        with self._lock:
            return sum(1 for t in self._tokens if not t.is_set()) + (1 if self._forever else 0)

    def is_set(self) -> bool:
        return self.waiting() == 0


def work_budget_tflop() -> float:
    """The most arithmetic one request may ask for, in TFLOP (2 FLOPs per multiply-add, forward
    and backward counted): by default about a minute of a 2-core CPU. IG at 16 steps on GoogLeNet
    with both scores is ~0.5 TFLOP; occlusion at window 4 / stride 2 on GoogLeNet is ~37 TFLOP."""
    return settings.get().work_budget_tflop


class Cancelled(Exception):
    """The client went away (or cancelled); the work stopped early and has no result."""


class OverBudget(BadRequest):
    """The settings ask for more work than one request may do; the message gives both figures."""


# Set when the server shuts down (Ctrl-C): every request's work stops at its next check, so the
# process does not wait for an attribution or a benchmark that nobody will see.
_STOPPING = threading.Event()


def stop_all() -> None:
    """Cancel the work of every request, now and from now on (the server is going away)."""
    _STOPPING.set()


def check() -> None:
    """Raise ``Cancelled`` if the current request was cancelled; otherwise return at once."""
    token = _TOKEN.get()
    if token is not None and (token.is_set() or _STOPPING.is_set()):
        raise Cancelled("the request was cancelled")


@contextlib.contextmanager
def cancellable(token: Token) -> Iterator[Token]:
    """Run the body with ``token`` as the current cancellation token."""
    reset = _TOKEN.set(token)
    try:
        yield token
    finally:
        _TOKEN.reset(reset)


@contextlib.contextmanager
def holding(lock) -> Iterator[None]:
    """Acquire ``lock`` while staying cancellable: a request cancelled in the queue for a busy
    model gives up its place instead of running later for nobody."""
    while not lock.acquire(timeout=0.1):
        check()
    try:
        yield
    finally:
        lock.release()


ATTRIBUTION_HINT = "Use fewer steps or samples, or a larger occlusion window and stride."


def check_budget(tflop: float, what: str, budget: float | None = None, *, hint: str = ATTRIBUTION_HINT) -> None:
    """Refuse up front work estimated above the budget, saying the estimate, the limit and
    what to change."""
    budget = work_budget_tflop() if budget is None else budget
    if tflop > budget:
        raise OverBudget(
            f"{what} would cost about {tflop:,.1f} TFLOP, over this server's limit of {budget:g} TFLOP "
            f"per request. {hint}"
        )
