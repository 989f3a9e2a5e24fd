"""Bounded in-process caches, and one public way to empty them all (tests, a memory soak).

One style: ``LRU`` for values a caller stores, ``memo`` for a function's results. Both are
thread-safe, bounded, named (``sizes()`` reports them) and emptied by ``reset_all``.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections import OrderedDict

_ALL: weakref.WeakValueDictionary[str, LRU] = weakref.WeakValueDictionary()


class LRU:
    """A small thread-safe LRU map, bounded by entries and, given ``weigh``, by bytes.

    ``name``: how ``sizes()`` reports it (and makes ``reset_all`` reach it).
    """

    def __init__(self, size: int, max_bytes: int | None = None, weigh=None, *, name: str | None = None):
        self.size = size
        self.max_bytes = max_bytes
        self.weigh = weigh or (lambda v: 0)
        self.bytes = 0
        self.data: OrderedDict = OrderedDict()
        self.lock = threading.Lock()
        if name:
            _ALL[name] = self

    def __len__(self) -> int:
        return len(self.data)

    def get(self, key, default=None):
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key][0]
        return default

    def put(self, key, value):
        n = self.weigh(value)
        with self.lock:
            if key in self.data:
                self.bytes -= self.data.pop(key)[1]
            self.data[key] = (value, n)
            self.bytes += n
            while len(self.data) > self.size or (
                self.max_bytes is not None and self.bytes > self.max_bytes and len(self.data) > 1
            ):
                _, (_, dropped) = self.data.popitem(last=False)
                self.bytes -= dropped

    def clear(self):
        with self.lock:
            self.data.clear()
            self.bytes = 0


_MISSING = object()


def memo(size: int = 64, *, name: str):
    """Remember a function's results by its (hashable) arguments in a named ``LRU`` of ``size``
    entries. A result is computed once: callers asking for the same missing one wait for it.
    ``fn.cache_clear()`` empties it (as ``functools.lru_cache`` does)."""

    def wrap(fn):
        store = LRU(size, name=name)
        guard = threading.Lock()
        computing: dict = {}  # key -> the lock of the call computing it

        @functools.wraps(fn)
        def cached(*args, **kwargs):
            key = (args, tuple(sorted(kwargs.items())))
            value = store.get(key, _MISSING)
            if value is not _MISSING:
                return value
            with guard:
                lock = computing.setdefault(key, threading.Lock())
            try:
                with lock:
                    value = store.get(key, _MISSING)
                    if value is _MISSING:
                        value = fn(*args, **kwargs)
                        store.put(key, value)
            finally:  # a call that raised leaves no lock behind either
                with guard:
                    computing.pop(key, None)
            return value

        cached.cache_clear = store.clear
        cached.cache = store  # keeps it alive (the registry holds it weakly)
        return cached

    return wrap


def sizes() -> dict[str, dict]:
    """Entries and bytes of every named cache alive in this process."""
    return {name: {"entries": len(c), "mb": round(c.bytes / 2**20, 1)} for name, c in sorted(_ALL.items())}


def reset_all() -> None:
    """Empty every named cache."""
    for c in list(_ALL.values()):
        c.clear()
