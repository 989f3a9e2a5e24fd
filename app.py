"""CNN Zoo Lab: `python app.py` starts the app (see --help); `gradio app.py` runs it with reload.

`demo` is built at import (Hugging Face Spaces and Gradio's reload mode look for it); building
it loads no model and touches no network. Launching happens only under `__main__`.
"""

from __future__ import annotations

import argparse
import logging

from cnndemo import settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = settings.get()
    in_space = env.in_space
    host = env.server_name or ("0.0.0.0" if in_space else "127.0.0.1")
    p = argparse.ArgumentParser(description="CNN Zoo Lab web app")
    p.add_argument("--host", default=host,
                   help="address to bind (default 127.0.0.1; 0.0.0.0 in a Hugging Face Space; GRADIO_SERVER_NAME)")
    p.add_argument("--port", type=int, default=env.server_port,
                   help="port (default 7860; GRADIO_SERVER_PORT)")
    p.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    p.add_argument("--offline", action="store_true", help="never touch the network (CNNDEMO_OFFLINE=1)")
    p.add_argument("--device", default=None, help="auto (default: CUDA when present), cpu or cuda")
    p.add_argument("--mcp", action="store_true", default=env.mcp,
                   help="also serve every named endpoint as an MCP tool (CNNDEMO_MCP=1; needs gradio[mcp])")
    p.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=in_space,
                   help="fetch the published weights in the background at start (default: on in a Space)")
    p.add_argument("--warm", default=env.warm or None, metavar="LESSON",
                   help="compute a lesson's steps at start, so the first student finds them ready: default, "
                        "predict, or a lesson file (JSON; see README) (CNNDEMO_WARM)")
    args = p.parse_args(argv)
    if args.warm:
        from cnndemo.lessons import load_lesson

        try:
            args.lesson = load_lesson(args.warm)
        except (OSError, ValueError) as e:
            p.error(f"--warm {args.warm}: {e}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # The app's own notes (a lesson warmed, an upload folder emptied, work stopped for a closed
    # tab) go to the console; other libraries keep their own levels.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s cnndemo: %(message)s", "%H:%M:%S"))
    logging.getLogger("cnndemo").addHandler(handler)
    logging.getLogger("cnndemo").setLevel(logging.INFO)
    if args.offline:
        settings.configure(offline=True)
    if args.device:
        settings.configure(device=args.device)
    from cnndemo.ui import launch

    launch(demo, host=args.host, port=args.port, share=args.share, mcp=args.mcp, prefetch=args.prefetch,
           warm=(args.warm, args.lesson) if args.warm else None)


def _build():
    from cnndemo.prefetch import persistent_torch_home

    home = persistent_torch_home()
    if home is not None:  # a Space's /data bucket survives restarts; its own disk does not
        settings.export_default("TORCH_HOME", str(home))
    from cnndemo.ui import build_demo

    return build_demo()


demo = _build()

if __name__ == "__main__":
    main()
