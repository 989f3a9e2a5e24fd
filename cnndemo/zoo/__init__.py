"""The zoo: one frozen ``ModelSpec`` per architecture, and nothing else decides per model.

One module per family (``inception``, ``residual``, ``plain``, ``compact``, ``digits``), each
with its builders and its blocks beside its specs (``SPECS``). Branch taps are declared there,
block by block, from the real module layout of each implementation (torchvision's attribute
names, this package's own archs); nothing is discovered by name patterns at run time. A new
model is one entry in its family's ``SPECS``; a new family is one module, listed below.
"""

from __future__ import annotations

from ..errors import NotFound
from ..specs import ModelSpec
from . import compact, digits, inception, plain, residual

ZOO: dict[str, ModelSpec] = {s.key: s for family in (inception, residual, plain, compact, digits) for s in family.SPECS}


def families() -> tuple[str, ...]:
    """The model families, in zoo order (the menus group by them): a new family is simply a new
    ``family`` value in ``ZOO``."""
    return tuple(dict.fromkeys(s.family for s in ZOO.values()))


IMAGENET_KEYS = tuple(k for k, s in ZOO.items() if s.inputs.kind == "photo")
DIGIT_KEYS = tuple(k for k, s in ZOO.items() if s.inputs.kind == "digit")
# Models whose weights are published online (fetch-weights and the background prefetch get them).
PUBLISHED_KEYS = tuple(k for k, s in ZOO.items() if s.weights is not None and s.weights.downloadable)
# The model every view opens with, and the digit network whose branch maps and attribution the
# Digits tab shows (the first digit network, in zoo order, with parallel branches).
DEFAULT_MODEL = "googlenet"
DIGIT_SHOWCASE = next(k for k in DIGIT_KEYS if ZOO[k].has_branches)


def get_spec(key: str) -> ModelSpec:
    try:
        return ZOO[key]
    except KeyError:
        raise NotFound(f"unknown model {key!r}; choose one of: {', '.join(ZOO)}") from None
