"""What every command shares: the registry, JSON output, the progress bar, the model argument
and model loading. A command is a ``run(args) -> exit code`` registered with ``@command``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from ..runtime import STORE, LoadedModel
from ..zoo import ZOO

COMMANDS: dict[str, tuple[Callable, Callable, str]] = {}


def command(name: str, help: str, setup: Callable[[argparse.ArgumentParser], None]):
    """Register ``run`` as the sub-command ``name``; ``setup`` adds its arguments."""

    def deco(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (setup, run, help)
        return run

    return deco


def emit(obj) -> None:
    """Print a JSON object on one line, or a plain string as it is."""
    print(obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False), flush=True)


class CliProgress:
    """A tqdm bar on stderr, opened only once there is something to show (a download)."""

    def __init__(self):
        self.bar = None

    def __call__(self, frac: float | None, desc: str) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=100, unit="%", file=sys.stderr, leave=False)
        self.bar.set_description(desc, refresh=False)
        if frac is not None:
            self.bar.n = round(frac * 100)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def model_arg(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--model", required=required, choices=list(ZOO), metavar="KEY", help="zoo key")


def load_model(key: str, weights: str | None = None) -> LoadedModel:
    """The zoo model ``key`` with its own weights (a download shows a bar), or with ``weights``."""
    if weights:
        return STORE.get(key, checkpoint=weights)
    bar = CliProgress()
    try:
        return STORE.get(key, progress=bar)
    finally:
        bar.close()


def fail(args, e: Exception) -> int:
    """Report a human-readable failure for ``args.image`` (JSON with --json) and return 1."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    emit({"image": args.image, "error": str(msg)} if args.json else f"error: {msg}")
    return 1
