"""The command line: the same functions as the app, for scripts, notebooks and tests.

Every command that takes ``--json`` prints machine-readable JSON on stdout (one object per
line where it handles several images) and exits non-zero when anything failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

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


def _model_arg(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    from .zoo import ZOO

    p.add_argument("--model", required=required, choices=list(ZOO), metavar="KEY", help="zoo key")


def _load(key: str, weights: str | None = None):
    from .runtime import STORE

    if weights:
        return STORE.get(key, checkpoint=weights)
    bar = CliProgress()
    try:
        return STORE.get(key, progress=bar)
    finally:
        bar.close()


# ----------------------------------------------------------------------------- models


def _setup_models(p):
    p.add_argument("--json", action="store_true", help="print a JSON list")


@command("models", "list the zoo", _setup_models)
def run_models(args) -> int:
    from .profile import count_model_params
    from .weights import availability
    from .zoo import ZOO

    rows = []
    for spec in ZOO.values():
        src = spec.weights
        rows.append(
            {
                "key": spec.key,
                "name": spec.name,
                "family": spec.family,
                "description": spec.description,
                "params": count_model_params(spec),
                "input_size": list(spec.input_size),
                "weights": availability(src),
                "weights_source": src.describe() if src is not None else None,
                "blocks": len(spec.blocks),
                "paper": spec.paper.url,
            }
        )
    if args.json:
        emit(rows)
    else:
        for r in rows:
            print(f"{r['key']:15} {r['family']:9} {r['params']:>12,} {str(r['input_size']):14} {r['weights']:10} {r['name']}")
    return 0


# ----------------------------------------------------------------------------- predict


def _setup_predict(p):
    _model_arg(p)
    p.add_argument("--weights", metavar="FILE", help="your own state_dict (.pth/.pt/.safetensors)")
    p.add_argument("--top", type=int, default=5, help="how many classes (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per image per line")
    p.add_argument("images", nargs="+", metavar="IMAGE")


@command("predict", "top-k predictions for images", _setup_predict)
def run_predict(args) -> int:
    from .images import ImageError
    from .predict import predict
    from .weights import WeightsError

    try:
        model = _load(args.model, args.weights)
    except WeightsError as e:
        emit({"model": args.model, "error": str(e)} if args.json else f"error: {e}")
        return 2
    if not args.json and not model.weights.trained:
        print(f"warning: {model.spec.name} runs with RANDOM weights ({model.weights.reason}); "
              "predictions are meaningless.", file=sys.stderr)
    failed = 0
    for path in args.images:
        try:
            pred = predict(path, model, top=args.top)
        except (ImageError, ValueError, OSError) as e:
            failed += 1
            emit({"image": path, "error": str(e)} if args.json else f"{path}: error: {e}")
            continue
        if args.json:
            emit(pred.to_json(image=path))
        else:
            print(f"{path}  [{pred.weights.kind} weights, {pred.ms:.1f} ms]")
            for t in pred.top:
                print(f"  {t.prob:7.2%}  {t.label} ({t.index})")
    return 1 if failed else 0


# ----------------------------------------------------------------------------- fetch-weights


def _setup_fetch(p):
    from .zoo import ZOO

    p.add_argument("--models", nargs="+", metavar="KEY", choices=list(ZOO), help="default: all with published weights")
    p.add_argument("--force", action="store_true", help="download again even when a verified copy exists")
    p.add_argument("--json", action="store_true")


@command("fetch-weights", "download and verify published weights into the torch hub cache", _setup_fetch)
def run_fetch(args) -> int:
    from . import weights as W
    from .zoo import ZOO

    keys = args.models or [k for k, s in ZOO.items() if isinstance(s.weights, W.TorchvisionWeights)]
    failed = 0
    for key in keys:
        src = ZOO[key].weights
        if not isinstance(src, W.TorchvisionWeights):
            note = "bundled with the app" if src is not None else "no published weights"
            emit({"model": key, "status": "skipped", "reason": note} if args.json else f"{key}: skipped ({note})")
            continue
        bar = CliProgress()
        try:
            path = W.fetch(src, progress=bar, force=args.force)
        except W.WeightsError as e:
            failed += 1
            emit({"model": key, "status": "failed", "error": str(e)} if args.json else f"{key}: FAILED: {e}")
            continue
        finally:
            bar.close()
        emit({"model": key, "status": "ok", "path": str(path)} if args.json else f"{key}: ok {path}")
    if not args.json:
        print(f"\nCopy {W.hub_checkpoint_dir()} to the same place on offline machines "
              "(or set TORCH_HOME to a folder holding hub/checkpoints).")
    return 1 if failed else 0


# ----------------------------------------------------------------------------- bench-startup


def _setup_startup(p):
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", action="store_true")


@command("bench-startup", "cold start of `python app.py --offline` to the first HTTP 200", _setup_startup)
def run_bench_startup(args) -> int:
    import socket
    import statistics
    import subprocess
    import time
    import urllib.request

    app = Path(__file__).resolve().parent.parent / "app.py"
    times = []
    for _ in range(args.runs):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, str(app), "--offline", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError("the app exited before answering")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(0.05)
            times.append(time.perf_counter() - t0)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    result = {
        "runs_s": [round(t, 2) for t in times],
        "median_s": round(statistics.median(times), 2),
        "cpus": os.cpu_count(),
        "offline": True,
    }
    emit(result if args.json else f"cold start to first HTTP 200: median {result['median_s']} s over {args.runs} runs {result['runs_s']}")
    return 0


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    from . import cli_views  # noqa: F401  (registers the commands of the other views)

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
        os.environ["CNNDEMO_OFFLINE"] = "1"
    if args.device:
        os.environ["CNNDEMO_DEVICE"] = args.device
    _setup, run, _help = COMMANDS[args.command]
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except (KeyError, ValueError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if getattr(args, "json", False):
            emit({"error": str(msg)})
        else:
            print(f"error: {msg}", file=sys.stderr)
        return 2
