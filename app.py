"""CNN Zoo Lab: `python app.py` starts the app (see --help). Models load lazily."""

from __future__ import annotations

import argparse
import os


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    in_space = bool(os.environ.get("SPACE_ID"))
    p = argparse.ArgumentParser(description="CNN Zoo Lab web app")
    p.add_argument("--host", default="0.0.0.0" if in_space else "127.0.0.1",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 in a Hugging Face Space)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    p.add_argument("--offline", action="store_true", help="never touch the network (CNNDEMO_OFFLINE=1)")
    p.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.offline:
        os.environ["CNNDEMO_OFFLINE"] = "1"
    if args.device:
        os.environ["CNNDEMO_DEVICE"] = args.device
    from cnndemo.ui import launch

    launch(host=args.host, port=args.port, share=args.share)


if __name__ == "__main__":
    main()
