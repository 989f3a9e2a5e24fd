"""The command line: the same functions as the app, for scripts, notebooks and tests.

Every command that takes ``--json`` prints machine-readable JSON on stdout (one object per
line where it handles several images) and exits non-zero when anything failed.

A command lives in the module of its view (``explore``, ``attributions``, ``compare``,
``digits``), deployment checks in ``space``, developer tools in ``diagnostics``; each
registers itself with ``common.command``.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from . import explore, digits, attributions, compare, space, diagnostics  # noqa: F401 (each registers its commands)
from .. import settings
from ..errors import UserError
from .common import COMMANDS, emit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cnndemo",
        description="CNN Zoo Lab: predictions, branch maps, attributions and benchmarks for classic CNNs.",
    )
    parser.add_argument("--offline", action="store_true", help="never touch the network (CNNDEMO_OFFLINE=1)")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1 ...")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (setup, _run, help_text) in COMMANDS.items():
        setup(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.offline:
        settings.configure(offline=True)
    if args.device:
        settings.configure(device=args.device)
    _setup, run, _help = COMMANDS[args.command]
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except (UserError, KeyError, ValueError, RuntimeError) as e:
        # The library's refusals are a sentence; anything else is a bug, shown with its traceback.
        if not isinstance(e, UserError):
            traceback.print_exc()
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if getattr(args, "json", False):
            emit({"error": str(msg)})
        else:
            print(f"error: {msg}", file=sys.stderr)
        return 2
