"""Where the shipped files are: ``assets/`` beside the package in a checkout (or an editable
install), else inside the installed package (``cnndemo/assets``, package data read through
``importlib.resources``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


# The folder that holds cnndemo/, app.py, README.md and tests/ in a checkout.
CHECKOUT = Path(__file__).resolve().parent.parent


def _assets() -> Path:
    here = CHECKOUT / "assets"
    if here.is_dir():
        return here
    # An installed wheel (site-packages, or ``pip install --target``): package data. A zipped
    # package is not supported: the weights and examples are opened as files.
    return Path(str(resources.files("cnndemo") / "assets"))


ASSETS = _assets()
EXAMPLES_DIR = ASSETS / "examples"
WEIGHTS_DIR = ASSETS / "weights"
BENCH_DIR = ASSETS / "benchmarks"
# The drawn-digit benchmark (a test fixture: present in a checkout only).
DRAWN_DIGITS_DIR = CHECKOUT / "tests" / "fixtures" / "drawn_digits"
