"""Where the shipped files are: ``assets/`` beside the package in a checkout (or an editable
install), else the copy a regular ``pip install .`` puts under ``<prefix>/share/cnndemo``."""

from __future__ import annotations

import sys
from pathlib import Path


# The folder that holds cnndemo/, app.py, README.md and tests/ in a checkout.
CHECKOUT = Path(__file__).resolve().parent.parent


def _assets() -> Path:
    here = CHECKOUT / "assets"
    if here.is_dir():
        return here
    installed = Path(sys.prefix) / "share" / "cnndemo" / "assets"
    return installed if installed.is_dir() else here


ASSETS = _assets()
EXAMPLES_DIR = ASSETS / "examples"
WEIGHTS_DIR = ASSETS / "weights"
BENCH_DIR = ASSETS / "benchmarks"
# The drawn-digit benchmark (a test fixture: present in a checkout only).
DRAWN_DIGITS_DIR = CHECKOUT / "tests" / "fixtures" / "drawn_digits"
