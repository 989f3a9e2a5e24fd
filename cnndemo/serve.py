"""Start the web app: ``python app.py`` in a checkout, ``cnndemo serve`` from an installed
package. The options are parsed before anything heavy is imported, so ``--help`` answers at
once; the demo is built only when it is about to be launched (or when ``app.py`` is imported,
as Hugging Face Spaces and ``gradio app.py`` do)."""

from __future__ import annotations

import argparse
import logging

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


def read_lesson(args: argparse.Namespace) -> str | None:
    """Read ``--warm``'s lesson into ``args.lesson``; what is wrong with it, or None."""
    args.lesson = None
    if args.warm:
        from .lessons import load_lesson

        try:
            args.lesson = load_lesson(args.warm)
        except (OSError, ValueError) as e:
            return f"--warm {args.warm}: {e}"
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="CNN Zoo Lab web app")
    add_arguments(p)
    args = p.parse_args(argv)
    problem = read_lesson(args)
    if problem:
        p.error(problem)
    return args


def build():
    """The app's Blocks (no model is loaded and the network is not touched)."""
    from .prefetch import persistent_torch_home

    home = persistent_torch_home()
    if home is not None:  # a Space's /data bucket survives restarts; its own disk does not
        settings.export_default("TORCH_HOME", str(home))
    from .ui import build_demo

    return build_demo()


def serve(args: argparse.Namespace, demo=None) -> None:
    """Launch the app with parsed ``args`` (``demo``: one already built, else built here)."""
    # The app's own notes (a lesson warmed, an upload folder emptied, work stopped for a closed
    # tab, a failed weight fetch) go to the console; other libraries keep their own levels.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s cnndemo: %(message)s", "%H:%M:%S"))
    logging.getLogger("cnndemo").addHandler(handler)
    logging.getLogger("cnndemo").setLevel(logging.INFO)
    if args.offline:
        settings.configure(offline=True)
    if args.device:
        settings.configure(device=args.device)
    demo = demo if demo is not None else build()
    from .ui import launch

    launch(demo, host=args.host, port=args.port, share=args.share, mcp=args.mcp, prefetch=args.prefetch,
           warm=(args.warm, args.lesson) if args.warm else None)


def main(argv: list[str] | None = None) -> None:
    serve(parse_args(argv))
