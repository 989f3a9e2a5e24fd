"""CLI commands of the branch, attribution, compare and digits views (registered on import)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .cli import _model_arg, command, emit
from .paths import EXAMPLES_DIR
from .zoo import DIGIT_KEYS

# ----------------------------------------------------------------------------- train


def _setup_train(p):
    p.add_argument("--model", required=True, choices=list(DIGIT_KEYS), metavar="KEY", help="a digit network")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05, help="initial learning rate (cosine decay to 0)")
    p.add_argument("--clip", type=float, default=2.0, help="clip the gradient norm (0: off)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="train on the first N training digits only")
    p.add_argument("--init", type=Path, default=None, metavar="FILE",
                   help="start from these weights (fine-tune) instead of random ones, e.g. the shipped file")
    p.add_argument("--extra", action="store_true",
                   help="also train on printed digits (matplotlib's typefaces) and scikit-learn's 1,797 digits")
    p.add_argument("--out", type=Path, default=None, help="weights file (default runs/KEY.safetensors; a record .json is written next to it)")
    p.add_argument("--sweep", action="store_true", help="run a grid of --batch-sizes x --lrs and plot each run")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64, 512])
    p.add_argument("--lrs", type=float, nargs="+", default=None, help="learning rates for --sweep (default: --lr)")
    p.add_argument("--json", action="store_true")


def _progress_bar(total: int, desc: str):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, file=sys.stderr, unit="step", dynamic_ncols=True)

    def on_step(info: dict) -> None:
        if "initial" in info:
            bar.write(f"before training: held-out acc {info['initial']['test_acc']:.2f}%", file=sys.stderr)
            return
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

    from .cli import _load
    from .training import TRAIN_PER_CLASS, extra_digits, load_digits, save_trained, train
    from .weights import sha256_file

    data = load_digits()
    ex_x, ex_y, ex_about = extra_digits() if args.extra else (None, None, None)
    n = (args.limit or TRAIN_PER_CLASS * 10) + (len(ex_x) if args.extra else 0)
    cmd = "python -m cnndemo " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "train"
    if args.sweep:
        return _sweep(args, data, n, (ex_x, ex_y) if args.extra else None)
    out = args.out or Path("runs") / f"{args.model}.safetensors"
    bar, on_step = _progress_bar(args.epochs * math.ceil(n / args.batch_size), args.model)
    try:
        result = train(
            args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            optimizer=args.optimizer, seed=args.seed, data=data, limit=args.limit, clip=args.clip or None,
            extra=(ex_x, ex_y) if args.extra else None, on_step=on_step,
            init=_load(args.model, str(args.init)).module.state_dict() if args.init else None,
        )
    finally:
        bar.close()
    settings = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "optimizer", "seed", "limit", "clip")}
    settings["extra"] = ex_about
    if args.init:
        settings["init"] = {"file": args.init.name, "sha256": sha256_file(args.init)}
    record = save_trained(result, args.model, out, command=cmd, settings=settings, data=data)
    summary = {k: record[k] for k in ("model", "weights_file", "epochs", "wall_time_s", "test_acc", "sha256")}
    summary["out"] = str(out)
    emit(summary if args.json else f"saved {out} (+ .json record): held-out accuracy {record['test_acc']}% in {record['wall_time_s']} s")
    return 0


def _sweep(args, data, n: int, extra) -> int:
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
                          seed=args.seed, data=data, limit=args.limit, clip=args.clip or None, extra=extra,
                          on_step=on_step)
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


DRAWN_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "drawn_digits"


def _setup_digits_benchmark(p):
    p.add_argument("--dir", type=Path, default=DRAWN_DIR,
                   help="a folder with manifest.json and its PNGs (default: the checkout's drawn-digit benchmark)")
    p.add_argument("--weights", nargs="+", default=[], metavar="KEY=FILE",
                   help="score these weights instead of the shipped ones, e.g. mnist_resnet=runs/mnist_resnet.safetensors")
    p.add_argument("--misread", action="store_true", help="list every misread file")
    p.add_argument("--json", action="store_true")


@command("digits-benchmark", "accuracy of the digit networks on drawn and printed digits, per network and digit",
         _setup_digits_benchmark)
def run_digits_benchmark(args) -> int:
    from .cli import _load
    from .training import drawn_accuracy

    if not (args.dir / "manifest.json").is_file():
        raise SystemExit(f"digits-benchmark: no manifest.json in {args.dir} (the benchmark ships in a checkout's "
                         "tests/fixtures/drawn_digits)")
    own = dict(w.split("=", 1) for w in args.weights)
    unknown = set(own) - set(DIGIT_KEYS)
    if unknown:
        raise SystemExit(f"digits-benchmark: {', '.join(sorted(unknown))} is not a digit network ({', '.join(DIGIT_KEYS)})")
    models = {k: _load(k, own.get(k)).module for k in DIGIT_KEYS}
    res = drawn_accuracy(args.dir, models)
    if args.json:
        emit(res)
        return 0
    print(f"{res['n']} digits: " + ", ".join(f"{n} {s}" for s, n in res["by_source"].items())
          + f"; the networks disagree on {res['disagree']}")
    print(f"{'network':16} {'all':>6} " + " ".join(f"{d:>5}" for d in range(10)) + "  "
          + "  ".join(f"{s:>10}" for s in res["by_source"]))
    for key, r in res["networks"].items():
        print(f"{key:16} {r['accuracy']:6.1f} " + " ".join(f"{r['per_digit'][d]:5.0f}" for d in range(10)) + "  "
              + "  ".join(f"{r['per_source'][s]:10.1f}" for s in res["by_source"]))
        if args.misread:
            print("    misread: " + ", ".join(f"{m['file']} as {m['read']}" for m in r["misread"]))
    return 0


# ----------------------------------------------------------------------------- branches


def _fail(args, e: Exception) -> int:
    """Report a human-readable failure for ``args.image`` (JSON with --json) and return 1."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    emit({"image": args.image, "error": str(msg)} if args.json else f"error: {msg}")
    return 1


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
            "branches": block.branches_json(),
        }
        if args.ablate:
            res = ablate(args.image, model, args.block, args.ablate, mode=args.mode)
            out.update(res.to_json())
    except (ImageError, WeightsError, KeyError, ValueError) as e:
        return _fail(args, e)
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


@command("bench-explore", "bare forward vs top-5 + every branch capture and share (same preprocessed tensor)", _setup_bench_explore)
def run_bench_explore(args) -> int:
    import statistics
    import time

    import torch

    from .branches import explore_tensor
    from .cli import _load
    from .predict import load_for, sync, to_batch

    runs = max(10, args.runs)
    model = _load(args.model)
    image = args.image or str(EXAMPLES_DIR / "cat.jpg")
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
        explore_tensor(model, x, 5)  # no cache: top-5 + every block's branches and shares
        sync(model.device)
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


# ----------------------------------------------------------------------------- attributions


def _setup_attribute(p):
    from .attribution import METHODS, Settings

    d = Settings()
    _model_arg(p)
    p.add_argument("--method", required=True, choices=list(METHODS))
    p.add_argument("--target", default=None, help="class index or name (default: the top prediction)")
    p.add_argument("--layer", default=None, help="Grad-CAM layer: a block (inception4d) or a branch (inception4d/3x3)")
    p.add_argument("--weights", metavar="FILE", help="your own state_dict")
    p.add_argument("--steps", type=int, default=d.steps, help=f"Integrated Gradients steps (default {d.steps})")
    p.add_argument("--samples", type=int, default=d.samples, help=f"SmoothGrad / GradientSHAP samples (default {d.samples})")
    p.add_argument("--window", type=int, default=d.window, help=f"Occlusion window in pixels (default {d.window})")
    p.add_argument("--stride", type=int, default=d.stride, help=f"Occlusion stride in pixels (default {d.stride})")
    p.add_argument("--no-scores", action="store_true", help="skip the sanity and deletion scores")
    p.add_argument("--out", type=Path, help="PNG: overlay and signed map side by side")
    p.add_argument("--npy", type=Path, help="raw attribution (C x H x W; H x W for Grad-CAM)")
    p.add_argument("--json", action="store_true")
    p.add_argument("image", metavar="IMAGE")


@command("attribute", "an attribution map (Captum) with its sanity and deletion scores", _setup_attribute)
def run_attribute(args) -> int:
    import numpy as np
    from PIL import Image

    from . import render
    from .attribution import Settings, attribute
    from .cli import _load
    from .images import ImageError
    from .weights import WeightsError

    settings = Settings(steps=args.steps, samples=args.samples, window=args.window, stride=args.stride)
    try:
        model = _load(args.model, args.weights)
        a = attribute(args.image, model, args.method, target=args.target, layer=args.layer,
                      settings=settings, scores=not args.no_scores)
    except (ImageError, WeightsError, KeyError, ValueError) as e:
        return _fail(args, e)
    out = a.to_json()
    out["image"] = args.image
    if args.npy:
        args.npy.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.npy, a.attr)
        out["npy"] = str(args.npy)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        left, right = render.attribution_views(a)
        both = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), "white")
        both.paste(left, (0, 0))
        both.paste(right, (left.width, 0))
        both.save(args.out)
        out["png"] = str(args.out)
    if args.json:
        emit(out)
    else:
        print(f"{a.method} on {a.model} for {a.label} ({a.target}): {a.ms:.0f} ms")
        if a.sanity:
            rho = a.sanity.rank_correlation
            shown = "undefined" if rho is None else f"{rho:+.3f}"
            print(f"  sanity: rank correlation with re-initialised top layers {shown} ({a.sanity.verdict})")
        if a.deletion:
            d = a.deletion
            score = "undefined" if d.score is None else f"{d.score:+.3f}"
            print(f"  deletion: AUC {d.auc:.4f} vs random {d.random_auc:.4f} (score {score}: {d.verdict})")
    return 0


def _setup_bench_attr(p):
    _model_arg(p)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--internal-batch", type=int, default=None, help="default: the library's INTERNAL_BATCH")
    p.add_argument("--sweep-batch", action="store_true", help="time IG for internal batch sizes 1, 4, 8, 16, 32")
    p.add_argument("--json", action="store_true")


@command("bench-attribution", "cnndemo's Integrated Gradients vs a direct Captum call", _setup_bench_attr)
def run_bench_attribution(args) -> int:
    import statistics
    import time

    import torch
    from captum.attr import IntegratedGradients

    from .attribution import INTERNAL_BATCH, Settings, attribute
    from .cli import _load
    from .predict import load_for, to_batch

    model = _load(args.model)
    image = str(EXAMPLES_DIR / "cat.jpg")
    x = to_batch(model.spec, load_for(model.spec, image), model.device)
    with torch.no_grad():
        target = int(model.module(x).argmax(1)[0])
    base = torch.zeros_like(x)

    def direct(ibs: int) -> float:
        t0 = time.perf_counter()
        with model.lock:
            IntegratedGradients(model.module).attribute(
                x, baselines=base, target=target, n_steps=args.steps, internal_batch_size=ibs
            )
        return (time.perf_counter() - t0) * 1000

    def ours(ibs: int) -> float:
        t0 = time.perf_counter()
        attribute(image, model, "ig", target=target, scores=False,
                  settings=Settings(steps=args.steps, internal_batch=ibs))
        return (time.perf_counter() - t0) * 1000

    if args.sweep_batch:
        rows = []
        for ibs in (1, 4, 8, 16, 32):
            direct(ibs)
            t = statistics.median(direct(ibs) for _ in range(max(2, args.runs // 2)))
            rows.append({"internal_batch": ibs, "captum_ms": round(t, 1)})
            if not args.json:
                print(f"internal batch {ibs:3}: {t:8.1f} ms for IG with {args.steps} steps")
        if args.json:
            emit({"model": model.key, "steps": args.steps, "sweep": rows})
        return 0
    ibs = args.internal_batch or INTERNAL_BATCH
    ours(ibs), direct(ibs)  # warm-up (also builds the attribution copy once)
    a, d = [], []
    for _ in range(args.runs):  # interleaved
        a.append(ours(ibs))
        d.append(direct(ibs))
    res = {
        "model": model.key, "steps": args.steps, "internal_batch": ibs,
        "cnndemo_ms": round(statistics.median(a), 1), "captum_ms": round(statistics.median(d), 1),
        "ratio": round(statistics.median(a) / statistics.median(d), 3), "runs": args.runs,
        "threads": torch.get_num_threads(),
    }
    emit(res if args.json else f"IG {args.steps} steps on {model.key}: cnndemo {res['cnndemo_ms']} ms, "
         f"Captum {res['captum_ms']} ms, ratio {res['ratio']} (internal batch {ibs})")
    return 0


# ----------------------------------------------------------------------------- compare


def _setup_stats(p):
    p.add_argument("--json", action="store_true")


@command("stats", "parameters, weight size, FLOPs and accuracy of every zoo model (no timing)", _setup_stats)
def run_stats(args) -> int:
    from .profile import FLOPS_CONVENTION, model_stats
    from .zoo import ZOO

    rows = [model_stats(k).to_json() for k in ZOO]
    if args.json:
        emit(rows)
        return 0
    print(FLOPS_CONVENTION)
    print(f"{'model':15} {'params':>12} {'MiB':>8} {'GFLOPs':>8} {'acc@1':>7} {'acc@5':>7}  accuracy on")
    for r in rows:
        a1 = f"{r['acc1']:.1f}" if r["acc1"] is not None else "-"
        a5 = f"{r['acc5']:.1f}" if r["acc5"] is not None else "-"
        print(f"{r['key']:15} {r['params']:>12,} {r['weight_mb']:>8.1f} {r['gflops']:>8.2f} {a1:>7} {a5:>7}  {r['accuracy_on']}")
    return 0


def _setup_bench(p):
    from .bench import MODES
    from .zoo import ZOO

    p.add_argument("--models", nargs="+", choices=list(ZOO), metavar="KEY", default=None, help="default: all")
    p.add_argument("--device", dest="bench_device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    p.add_argument("--mode", nargs="+", choices=MODES, default=None,
                   help="eager: module by module; cudagraph: the eager forward captured as a CUDA graph and replayed "
                        "(CUDA only); compile: torch.compile, its compile time reported apart. "
                        "Default: eager and cudagraph on CUDA, eager on the CPU")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "fp16", "bf16"],
                   help="fp16/bf16 cast the weights and the input (channels_last by default)")
    p.add_argument("--autocast", action="store_true", help="half precision by torch.autocast instead of casting")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="memory format (default: channels_last for cast half precision, contiguous otherwise)")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json", metavar="OUT.json", type=Path, default=None, help="write the results file here")


@command("bench", "measure latency p50/p90, throughput, TFLOP/s against the device's peak, and peak memory", _setup_bench)
def run_bench(args) -> int:
    from tqdm import tqdm

    from .bench import run_benchmark
    from .zoo import ZOO

    models = args.models or list(ZOO)
    bar = tqdm(total=100, file=sys.stderr, leave=False)

    def progress(frac, desc):
        bar.set_description(desc)
        bar.n = round((frac or 0) * 100)
        bar.refresh()

    try:
        data = run_benchmark(models, device=args.bench_device, batches=tuple(args.batch), precisions=tuple(args.precision),
                             modes=tuple(args.mode) if args.mode else None, autocast=args.autocast,
                             channels_last=args.channels_last, runs=args.runs, warmup=args.warmup, progress=progress)
    except ValueError as e:  # a mode or precision this device cannot run
        raise SystemExit(f"bench: {e}") from None
    finally:
        bar.close()
    env, peak = data["environment"], data["environment"]["peak"]
    print(f"{env['device_name']} ({env['device']}, {env['threads']} threads), torch {env['torch']}, {env['date']}")
    print("peak: " + ", ".join(f"{k.removesuffix('_matmul_tflops')} {v:g} TFLOP/s" for k, v in peak.items()
                               if k.endswith("_tflops")) + f", copy {peak['copy_gb_s']:g} GB/s ({peak['how']})")
    for r in data["results"]:
        head = f"  {r['model']:15} {r['mode']:9} batch {r['batch']:4} {r['precision']:5}"
        if "error" in r:
            print(f"{head} {r['error']}")
            continue
        pct = "" if r["pct_peak"] is None else f" = {r['pct_peak']:5.1f}% of {r['pct_peak_of']}"
        comp = "" if r["compile_s"] is None else f"  (compile {r['compile_s']:.1f} s)"
        print(f"{head}{' CL' if r['channels_last'] else '   '} p50 {r['p50_ms']:9.2f} ms  p90 {r['p90_ms']:9.2f} ms"
              f"  {r['throughput']:9.1f} img/s  {r['tflops']:8.3f} TFLOP/s{pct}  peak {r['peak_mem_mb']:8.1f} MiB{comp}")
    if any(r.get("half") == "autocast" for r in data["results"]):
        print("half precision by torch.autocast (per-op casts); without --autocast the weights and input are cast")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _setup_bench_check(p):
    _model_arg(p)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5, help="plain loops run before and after the harness")
    p.add_argument("--device", dest="bench_device", default="auto")
    p.add_argument("--json", action="store_true")


# At batch 32 and above the harness must agree with the plain loop this closely; batch 1 is
# launch-bound and noisy, so there the spreads are reported instead.
CHECK_TOLERANCE = 0.05
CHECK_MIN_BATCH = 32


@command("bench-check", "the benchmark harness against a plain event-timed loop", _setup_bench_check)
def run_bench_check(args) -> int:
    import statistics

    import torch

    from .bench import measure, plain_loop_ms, prepare
    from .runtime import pick_device
    from .zoo import ZOO

    dev = pick_device(args.bench_device)
    model = prepare(args.model, dev)
    x = torch.randn(args.batch, *ZOO[args.model].input_size, device=dev)
    half = max(1, args.repeats // 2)
    loops = [plain_loop_ms(model, x, args.runs) for _ in range(half)]
    harness = measure(model, args.model, dev, batch=args.batch, runs=args.runs)
    loops += [plain_loop_ms(model, x, args.runs) for _ in range(max(1, args.repeats - half))]
    ref = statistics.median(loops)
    diff = harness.p50_ms / ref - 1
    checked = args.batch >= CHECK_MIN_BATCH
    res = {"model": args.model, "device": dev.type, "batch": args.batch, "runs": args.runs,
           "harness_p10_ms": harness.p10_ms, "harness_p50_ms": harness.p50_ms, "harness_p90_ms": harness.p90_ms,
           "plain_loop_ms": round(ref, 3), "plain_loop_range_ms": [round(min(loops), 3), round(max(loops), 3)],
           "difference": round(diff, 4), "tolerance": CHECK_TOLERANCE if checked else None,
           "agrees": abs(diff) <= CHECK_TOLERANCE if checked else None}
    if args.json:
        emit(res)
    else:
        print(f"{args.model} batch {args.batch} on {dev.type}: harness p50 {harness.p50_ms:.2f} ms "
              f"(p10-p90 {harness.p10_ms:.2f}-{harness.p90_ms:.2f}), plain loop {ref:.2f} ms "
              f"(range over {len(loops)} loops {min(loops):.2f}-{max(loops):.2f}): difference {diff:+.1%}")
        print(f"  {'agrees' if res['agrees'] else 'DISAGREES'} within {CHECK_TOLERANCE:.0%}" if checked else
              f"  batch below {CHECK_MIN_BATCH}: launch-bound and noisy, so compare the spreads above, not a tolerance")
    return 0 if res["agrees"] is not False else 1


def _setup_anatomy(p):
    _model_arg(p)
    p.add_argument("--block", default=None, help="per-branch costs and 1x1-reduction savings of this block")
    p.add_argument("--json", action="store_true")


@command("anatomy", "stage table, per-branch costs and what the design choices save", _setup_anatomy)
def run_anatomy(args) -> int:
    from dataclasses import asdict

    from .profile import FLOPS_CONVENTION, PARAMS_CONVENTION, branch_costs, factorisation_savings, reduction_savings, stage_costs
    from .zoo import ZOO

    spec = ZOO[args.model]
    block = args.block or (spec.default_block if spec.has_branches else None)
    out = {
        "model": spec.key,
        "flops_convention": FLOPS_CONVENTION,
        "params_convention": PARAMS_CONVENTION,
        "stages": [asdict(s) for s in stage_costs(spec)],
        "block": block,
        "branches": [asdict(b) for b in branch_costs(spec, block)] if block else [],
        "savings": [s.to_json() for s in (reduction_savings(spec, block) if block else []) + factorisation_savings(spec)],
    }
    if args.json:
        emit(out)
        return 0
    print(FLOPS_CONVENTION)
    for s in out["stages"]:
        print(f"  {s['name']:16} {s['layer']:18} {'x'.join(map(str, s['shape'])):14} {s['params']:>12,} {s['flops'] / 1e6:10.1f} MFLOPs")
    for b in out["branches"]:
        print(f"  {b['block']}/{b['branch']:12} {b['path']:45} {b['params']:>10,} {b['flops'] / 1e6:9.1f} MFLOPs")
    for s in out["savings"]:
        textbook = "" if s["textbook_saved"] is None else f" (textbook, equal widths: {s['textbook_saved']:.0%}; {s['why']})"
        print(f"  {s['where']}: {s['choice']}: {s['built']} vs {s['alternative']}: "
              f"{s['params_saved']:.0%} fewer parameters, {s['flops_saved']:.0%} fewer FLOPs{textbook}")
    return 0


# ----------------------------------------------------------------------------- soak


def _setup_soak(p):
    p.add_argument("--requests", type=int, default=300, help="measured requests")
    p.add_argument("--warmup", type=int, default=90,
                   help="requests first, before the memory baseline: one full cycle of every (request, image, "
                        "model) variant, so that the bounded caches and lazily built model copies exist")
    p.add_argument("--json", action="store_true")


def _rss_mb() -> float:
    import os

    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@command("soak", "serve the app in-process and send it N mixed requests; report memory and hooks", _setup_soak)
def run_soak(args) -> int:
    import gc
    import os
    import socket
    import tempfile
    import time

    os.environ.setdefault("CNNDEMO_OFFLINE", "1")
    from gradio_client import Client, handle_file

    from .runtime import STORE
    from .taps import hook_count
    from .ui import launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rss_start = _rss_mb()
    demo = launch(port=port, prevent_thread_lock=True, quiet=True)
    url = demo.local_url
    client = Client(url, verbose=False)
    ex = EXAMPLES_DIR
    bad = Path(tempfile.mkdtemp()) / "notes.jpg"
    bad.write_text("not an image")
    photos = [handle_file(str(p)) for p in sorted(ex.glob("*.jpg"))]
    calls = [
        lambda i: client.predict(image=photos[i % len(photos)], model=["googlenet", "squeezenet1_0", "bn_inception"][i % 3], api_name="/predict"),
        lambda i: client.predict(image=photos[i % len(photos)], model="googlenet", block=["inception3a", "inception4c", "inception5b"][i % 3], api_name="/branches"),
        lambda i: client.predict(image=photos[i % len(photos)], model="bn_inception", block="inception4c", branch=["1x1", "3x3", "double_3x3"][i % 3], mode="zero", api_name="/ablate"),
        lambda i: client.predict(image=photos[i % len(photos)], model="squeezenet1_0", method=["gradcam", "saliency"][i % 2], target=None, layer=None, api_name="/attribute"),
        lambda i: client.predict(image=handle_file(str(ex / "camera_gray.png")), api_name="/digits"),
        lambda i: client.predict(image=handle_file(str(bad)), model="googlenet", api_name="/predict"),
    ]
    errors, expected_errors, rss_base, curve = [], 0, None, []
    total = args.warmup + args.requests
    t0 = time.perf_counter()
    for i in range(total):
        if i == args.warmup:
            gc.collect()
            rss_base = _rss_mb()
            t0 = time.perf_counter()
        if i >= args.warmup and (i - args.warmup) % 50 == 0:
            curve.append((i - args.warmup, round(_rss_mb(), 1)))
        kind = i % len(calls)
        try:
            calls[kind](i // len(calls))
            if kind == len(calls) - 1:
                errors.append(f"request {i}: a text file was accepted as an image")
        except Exception as e:
            if kind == len(calls) - 1 and "text file" in str(e):
                expected_errors += 1
            else:
                errors.append(f"request {i} ({kind}): {e}")
    elapsed = time.perf_counter() - t0
    gc.collect()
    rss_end = _rss_mb()
    from .branches import CACHE
    from .ui.explore import _PANELS

    caches = {"explorations_mb": round(CACHE.bytes / 2**20, 1), "explorations": len(CACHE.data),
              "branch_panels_mb": round(_PANELS.bytes / 2**20, 1)}
    hooks = {}
    for lm in STORE.loaded():
        hooks[lm.key] = hook_count(lm.module) + sum(hook_count(v) for v in lm._variants.values())
    demo.close()
    res = {
        "requests": args.requests,
        "warmup_requests": args.warmup,
        "seconds": round(elapsed, 1),
        "unexpected_errors": len(errors),
        "refused_as_expected": expected_errors,
        "rss_start_mb": round(rss_start, 1),
        "rss_after_warmup_mb": round(rss_base or rss_end, 1),
        "rss_end_mb": round(rss_end, 1),
        "growth_mb": round(rss_end - (rss_base or rss_end), 1),
        "rss_curve_mb": curve + [(args.requests, round(rss_end, 1))],
        "bounded_caches": caches,
        "hooks_left": sum(hooks.values()),
        "hooks_by_model": hooks,
        "first_errors": errors[:5],
    }
    emit(res if args.json else json.dumps(res, indent=2))
    return 0 if not errors and res["hooks_left"] == 0 else 1


# ----------------------------------------------------------------------------- classroom


def _setup_classroom(p):
    p.add_argument("--students", type=int, nargs="+", default=[10, 30, 60], help="class sizes, run in turn")
    p.add_argument("--lesson", default="default",
                   help="default (predict, switch block, knock out, IG, draw a digit), predict, or a JSON file")
    p.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE", help="server settings, e.g. CNNDEMO_WORKERS=2")
    p.add_argument("--rounds", type=int, default=1, help="repeat each class size this many times, pooled")
    p.add_argument("--time-limit", type=float, default=1200.0, help="stop starting new steps after this many seconds")
    p.add_argument("--json", action="store_true")


@command("bench-classroom", "N simulated students run a lesson against the app on loopback", _setup_classroom)
def run_bench_classroom(args) -> int:
    from .classroom import load_lesson, run_classroom

    env = dict(kv.split("=", 1) for kv in args.env)
    out = run_classroom(args.students, load_lesson(args.lesson), env=env, time_limit=args.time_limit, rounds=args.rounds,
                        progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.json:
        emit(out)
        return 0
    for run in out["runs"]:
        print(f"{run['students']} students: {run['wall_s']} s, {run['throughput_req_s']} req/s, "
              f"server RSS peak {run['server_rss_mb_peak']} MB")
        for api, r in run["endpoints"].items():
            print(f"  {api:<12} {r['step']:<26} p50 {r['p50_s']} s  p95 {r['p95_s']} s  max {r['max_s']} s  "
                  f"errors {r['errors']}/{r['calls']}  queue full {r['refused_queue_full']}"
                  + (f"  {r['first_errors']}" if r["errors"] else ""))
    return 0


# ----------------------------------------------------------------------------- check-space


def _setup_check_space(p):
    p.add_argument("--skip-resolve", action="store_true", help="skip the pip resolution (it needs the package index)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the app")


def _front_matter(readme: Path) -> dict[str, str]:
    lines = readme.read_text().splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    out = {}
    for line in lines[1:]:
        if line.strip() == "---":
            break
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip().strip('"').strip("'")
    return out


def _listening_on_all_interfaces(port: int) -> bool:
    """Whether some socket listens on 0.0.0.0:port or [::]:port (read from /proc/net)."""
    for table, any_addr in (("/proc/net/tcp", "00000000"), ("/proc/net/tcp6", "0" * 32)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            addr, _, hexport = local.partition(":")
            if state == "0A" and int(hexport, 16) == port and addr == any_addr:
                return True
    return False


@command("check-space", "before pushing to a Space: resolve requirements.txt for the front matter's Python, "
         "start the app as a Space does and call /predict", _setup_check_space)
def run_check_space(args) -> int:
    import os
    import subprocess
    import tempfile

    from .classroom import start_server

    root = Path(__file__).resolve().parent.parent
    meta = _front_matter(root / "README.md")
    version = meta.get("python_version")
    ok = True
    print(f"front matter: sdk {meta.get('sdk')} {meta.get('sdk_version')}, python_version {version or 'MISSING (Spaces default to 3.10)'}")
    if not version:
        ok = False
    if not args.skip_resolve and version:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
                   "--only-binary=:all:", "--python-version", version, "--target", tmp,
                   "-r", str(root / "requirements.txt")]
            r = subprocess.run(cmd, capture_output=True, text=True)
        errors = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("ERROR")]
        print(f"requirements.txt for Python {version}: " + ("resolves" if r.returncode == 0 else "FAILS"))
        for line in errors[:4]:
            print("  " + line)
        ok &= r.returncode == 0
    try:
        server = start_server({"CNNDEMO_OFFLINE": os.environ.get("CNNDEMO_OFFLINE", "1")}, ("--no-prefetch",),
                              timeout=args.timeout, as_space=True)
    except RuntimeError as e:
        print(f"app as a Space (SPACE_ID set, GRADIO_SERVER_PORT): did NOT start: {e}")
        return 1
    try:
        from gradio_client import Client, handle_file

        everywhere = _listening_on_all_interfaces(server.port)
        print(f"app as a Space: answered on port {server.port} after {server.startup_s:.1f} s; "
              f"listening on all interfaces: {'yes' if everywhere else 'NO'}")
        ok &= everywhere
        client = Client(server.url, verbose=False)
        raw = client.predict(image=handle_file(str(EXAMPLES_DIR / "cat.jpg")), model="googlenet", api_name="/predict")[-1]
        print(f"/predict: {raw['model']} ({raw['weights']} weights), top-1 {raw['top'][0]['label']}")
        ok &= raw["model"] == "googlenet" and len(raw["top"]) == 5
    finally:
        server.stop()
    print("ready to push" if ok else "NOT ready: see above")
    return 0 if ok else 1
