"""CLI commands of the branch, attribution, compare and digits views (registered on import)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from .cli import command, emit
from .zoo import DIGIT_KEYS

# ----------------------------------------------------------------------------- train


def _setup_train(p):
    p.add_argument("--model", required=True, choices=list(DIGIT_KEYS), metavar="KEY", help="a digit network")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate (one-cycle schedule)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="train on the first N training digits only")
    p.add_argument("--out", type=Path, default=None, help="weights file (default runs/KEY.safetensors; a record .json is written next to it)")
    p.add_argument("--sweep", action="store_true", help="run a grid of --batch-sizes x --lrs and plot each run")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64, 512])
    p.add_argument("--lrs", type=float, nargs="+", default=None, help="learning rates for --sweep (default: --lr)")
    p.add_argument("--json", action="store_true")


def _progress_bar(total: int, desc: str):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, file=sys.stderr, unit="step", dynamic_ncols=True)

    def on_step(info: dict) -> None:
        if "epoch_done" in info:
            e = info["epoch_done"]
            bar.write(
                f"epoch {e['epoch']}/{info['epochs']}: loss {e['loss']:.4f}  train acc {e['train_acc']:.1f}%  "
                f"held-out acc {e['test_acc']:.2f}%  {e['ex_per_s']:.0f} examples/s",
                file=sys.stderr,
            )
            return
        bar.update(1)
        bar.set_postfix(loss=f"{info['loss']:.3f}", acc=f"{info['train_acc']:.1f}%", ex_s=f"{info['ex_per_s']:.0f}", refresh=False)

    return bar, on_step


@command("train", "train a digit network on MNIST (or --sweep a batch-size/learning-rate grid)", _setup_train)
def run_train(args) -> int:
    import math

    from .training import TRAIN_PER_CLASS, load_digits, save_trained, train

    data = load_digits()
    n = args.limit or TRAIN_PER_CLASS * 10
    cmd = "python -m cnndemo " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "train"
    if args.sweep:
        return _sweep(args, data, n)
    out = args.out or Path("runs") / f"{args.model}.safetensors"
    bar, on_step = _progress_bar(args.epochs * math.ceil(n / args.batch_size), args.model)
    try:
        result = train(
            args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            optimizer=args.optimizer, seed=args.seed, data=data, limit=args.limit, on_step=on_step,
        )
    finally:
        bar.close()
    settings = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "optimizer", "seed", "limit")}
    record = save_trained(result, args.model, out, command=cmd, settings=settings, data=data)
    summary = {k: record[k] for k in ("model", "weights_file", "epochs", "wall_time_s", "test_acc", "sha256")}
    summary["out"] = str(out)
    emit(summary if args.json else f"saved {out} (+ .json record): held-out accuracy {record['test_acc']}% in {record['wall_time_s']} s")
    return 0


def _sweep(args, data, n: int) -> int:
    import math
    from dataclasses import asdict

    from .render import figure_to_image, training_curves
    from .training import train

    out = args.out or Path("runs") / f"sweep-{args.model}"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for bs in args.batch_sizes:
        for lr in args.lrs or [args.lr]:
            bar, on_step = _progress_bar(args.epochs * math.ceil(n / bs), f"{args.model} bs={bs} lr={lr}")
            try:
                r = train(args.model, epochs=args.epochs, batch_size=bs, lr=lr, optimizer=args.optimizer,
                          seed=args.seed, data=data, limit=args.limit, on_step=on_step)
            finally:
                bar.close()
            hist = [asdict(h) for h in r.history]
            ex_s = sum(h["ex_per_s"] for h in hist) / len(hist)
            title = (f"{args.model}: batch {bs}, lr {lr}: {len(r.steps)} updates, {ex_s:.0f} examples/s, "
                     f"held-out {r.test_acc:.1f}% after {args.epochs} epochs")
            png = out / f"bs{bs}_lr{lr:g}.png"
            figure_to_image(training_curves(hist, r.steps, title)).save(png)
            rows.append({"batch_size": bs, "lr": lr, "updates": len(r.steps), "examples_per_s": round(ex_s, 1),
                         "final_loss": round(hist[-1]["loss"], 4), "test_acc": round(r.test_acc, 2),
                         "wall_s": round(r.wall_s, 1), "plot": str(png)})
            if not args.json:
                print(f"bs={bs:4} lr={lr:<6g} updates={len(r.steps):5}  {ex_s:7.0f} ex/s  "
                      f"loss {hist[-1]['loss']:.3f}  held-out {r.test_acc:.1f}%  -> {png}")
    (out / "sweep.json").write_text(json.dumps({"model": args.model, "epochs": args.epochs, "runs": rows}, indent=2) + "\n")
    if args.json:
        emit({"model": args.model, "epochs": args.epochs, "runs": rows, "out": str(out)})
    return 0


# ----------------------------------------------------------------------------- branches


def _model_arg(p):
    from .zoo import ZOO

    p.add_argument("--model", required=True, choices=list(ZOO), metavar="KEY", help="zoo key")


def _setup_blocks(p):
    _model_arg(p)
    p.add_argument("--json", action="store_true")


@command("blocks", "the multi-branch blocks of a model, with their branches", _setup_blocks)
def run_blocks(args) -> int:
    from .branches import block_infos
    from .zoo import ZOO

    spec = ZOO[args.model]
    infos = block_infos(spec)
    if args.json:
        emit({"model": spec.key, "has_branches": spec.has_branches, "blocks": [i.to_json() for i in infos]})
        return 0
    if not spec.has_branches:
        print(f"{spec.name} has no parallel branches; these are its stages:")
    for i in infos:
        print(f"{i.name:14} {i.kind:45} out {'x'.join(map(str, i.shape))}")
        for b in i.branches:
            ch = f"ch {b.channels[0]}-{b.channels[1]}" if b.channels else "summed"
            print(f"    {b.name:12} {b.path:50} {ch:14} {b.params:>10,} params")
    return 0


def _setup_branches(p):
    _model_arg(p)
    p.add_argument("--block", required=True, help="block name (see `blocks`)")
    p.add_argument("--weights", metavar="FILE", help="your own state_dict")
    p.add_argument("--out", type=Path, help="write the maps here as PNG files")
    p.add_argument("--ablate", metavar="BRANCH", help="also re-run with this branch knocked out")
    p.add_argument("--mode", choices=["zero", "mean"], default="zero", help="ablation: zeros or the branch's per-channel mean")
    p.add_argument("--json", action="store_true")
    p.add_argument("image", metavar="IMAGE")


@command("branches", "per-branch maps and shares of one block for an image", _setup_branches)
def run_branches(args) -> int:
    from . import render
    from .branches import ablate, explore
    from .cli import _load
    from .images import ImageError
    from .weights import WeightsError

    try:
        model = _load(args.model, args.weights)
        ex = explore(args.image, model)
        block = ex.blocks.get(args.block)
        if block is None:
            raise KeyError(f"{model.spec.name} has no block {args.block!r}; blocks: {', '.join(ex.blocks)}")
        out = {
            "image": args.image,
            "model": model.key,
            "weights": model.weights.kind,
            "block": args.block,
            "branches": [
                {
                    "name": b.info.name,
                    "path": b.info.path,
                    "channels": list(b.info.channels) if b.info.channels else None,
                    "shape": list(b.info.shape),
                    "params": b.info.params,
                    "share": round(b.share, 6),
                }
                for b in block.branches
            ],
        }
        if args.ablate:
            res = ablate(args.image, model, args.block, args.ablate, mode=args.mode)
            out.update(res.to_json())
    except (ImageError, WeightsError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        emit({"image": args.image, "error": str(msg)} if args.json else f"error: {msg}")
        return 1
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        files = [args.out / f"{args.block}_panel.png"]
        render.block_panel(block, ex.seen).save(files[0])
        for b in block.branches:
            path = args.out / f"{args.block}_{b.info.name}_mean.png"
            render.overlay(ex.seen, b.mean_map).save(path)
            files.append(path)
        out["files"] = [str(f) for f in files]
    if args.json:
        emit(out)
    else:
        for b in out["branches"]:
            print(f"{b['name']:12} {b['path']:50} share {b['share']:6.1%}  {b['params']:>10,} params")
        if args.ablate:
            print(f"knocking out {args.ablate} ({args.mode}): top-1 probability changes by {out['top1_delta']:+.4f}")
    return 0


def _setup_bench_explore(p):
    _model_arg(p)
    p.add_argument("--runs", type=int, default=20, help="timed runs of each (median reported; at least 10)")
    p.add_argument("--image", default=None, help="default: assets/examples/cat.jpg")
    p.add_argument("--json", action="store_true")


@command("bench-explore", "bare forward vs top-5 + every branch capture and share", _setup_bench_explore)
def run_bench_explore(args) -> int:
    import statistics
    import time

    import torch

    from .branches import _explore
    from .cli import _load
    from .predict import load_for, sync, to_batch

    runs = max(10, args.runs)
    model = _load(args.model)
    image = args.image or str(Path(__file__).resolve().parent.parent / "assets" / "examples" / "cat.jpg")
    opened = load_for(model.spec, image)
    x = to_batch(model.spec, opened, model.device)

    def bare() -> float:
        with torch.inference_mode():
            sync(model.device)
            t0 = time.perf_counter()
            model.module(x)
            sync(model.device)
            return (time.perf_counter() - t0) * 1000

    def full() -> float:
        t0 = time.perf_counter()
        _explore(opened, model, 5)  # no cache: top-5 + every block's branches and shares
        return (time.perf_counter() - t0) * 1000

    for _ in range(3):
        bare(), full()
    fwd, exp = [], []
    for _ in range(runs):  # interleaved, so drift hits both alike
        fwd.append(bare())
        exp.append(full())
    f, e = statistics.median(fwd), statistics.median(exp)
    result = {
        "model": model.key,
        "forward_ms": round(f, 2),
        "explore_ms": round(e, 2),
        "ratio": round(e / f, 3),
        "runs": runs,
        "blocks": len(model.spec.blocks),
        "device": str(model.device),
        "threads": torch.get_num_threads(),
    }
    emit(result if args.json else f"{model.key}: forward {f:.1f} ms, explore {e:.1f} ms, ratio {e / f:.2f} ({runs} runs)")
    return 0
