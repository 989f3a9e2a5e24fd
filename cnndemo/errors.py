"""The library's own refusals: one base class, ``UserError``, for everything it turns down
with a sentence meant for the person who asked (an unknown model, a target that names no
class, an image that cannot be read, weights that do not fit, work over the budget).

The app and the CLI show a ``UserError``'s message as it is. Any other exception is a bug:
they log it with its traceback and show "Internal error". The subclasses are also the
built-in errors they replace (``NotFound`` is a ``KeyError``, ``BadRequest`` a ``ValueError``),
so code that caught those still catches them.
"""

from __future__ import annotations


class UserError(Exception):
    """A refusal with a message for the user (shown as it is, never with a traceback)."""

    def __str__(self) -> str:  # KeyError's str() would quote the message
        return str(self.args[0]) if self.args else ""


class NotFound(UserError, KeyError):
    """A name that is not there: a model, method, block, branch, layer or class."""


class BadRequest(UserError, ValueError):
    """A value that cannot be used: out of range, of the wrong kind, or not supported here."""
