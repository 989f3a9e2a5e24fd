"""Start the web app: ``python app.py`` in a checkout, ``cnndemo serve`` from an installed
package. The options are parsed here, before anything heavy is imported, so ``--help`` answers
at once; ``cnndemo.ui.serve`` then builds the demo and launches it.

An entry point of the app (like ``app.py``), kept out of ``cnndemo.ui`` only because importing
that package imports Gradio."""

from __future__ import annotations

import argparse

from . import settings


def add_arguments(p: argparse.ArgumentParser, *, under_cli: bool = False) -> None:
    """The app's options (``python app.py`` and ``cnndemo serve`` alike). ``under_cli``: the
    command line's own ``--offline`` and ``--device`` (before the command) are not overwritten
    by this parser's defaults."""
    own = {"default": argparse.SUPPRESS} if under_cli else {}
    env = settings.get()
    in_space = env.in_space
    host = env.server_name or ("0.0.0.0" if in_space else "127.0.0.1")
    p.add_argument("--host", default=host,
                   help="address to bind (default 127.0.0.1; 0.0.0.0 in a Hugging Face Space; GRADIO_SERVER_NAME)")
    p.add_argument("--port", type=int, default=env.server_port,
                   help="port (default 7860; GRADIO_SERVER_PORT)")
    p.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    p.add_argument("--offline", action="store_true", help="never touch the network (CNNDEMO_OFFLINE=1)", **own)
    p.add_argument("--device", help="auto (default: CUDA when present), cpu or cuda", **({"default": None} | own))
    p.add_argument("--mcp", action="store_true", default=env.mcp,
                   help="also serve every named endpoint as an MCP tool (CNNDEMO_MCP=1; needs gradio[mcp])")
    p.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=in_space,
                   help="fetch the published weights in the background at start (default: on in a Space)")
    p.add_argument("--warm", default=env.warm or None, metavar="LESSON",
                   help="compute a lesson's steps at start, so the first student finds them ready: default, "
                        "predict, or a lesson file (JSON; see README) (CNNDEMO_WARM)")
    p.add_argument("--exemplars", default=env.exemplars or None, metavar="DIR",
                   help="a folder of your images (and its subfolders): ranked in the background for each photo "
                        "network, so that each channel's most exciting crops stand beside what it looks for "
                        "(CNNDEMO_EXEMPLARS)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="CNN Zoo Lab web app")
    add_arguments(p)
    return p.parse_args(argv)


def start(args: argparse.Namespace) -> int:
    """Build and launch the app for parsed ``args`` (returns when the server stops)."""
    from .ui import serve

    return serve(args)


def main(argv: list[str] | None = None) -> None:
    raise SystemExit(start(parse_args(argv)))
