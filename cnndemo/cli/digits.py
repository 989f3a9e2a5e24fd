"""Commands of the Digits view: training the digit networks, and the drawn-digit benchmark."""

from __future__ import annotations

import json
import math
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

from ..paths import DRAWN_DIGITS_DIR
from ..render import figure_to_image, training_curves
from ..training import TRAIN_PER_CLASS, drawn_accuracy, extra_digits, load_digits, save_trained, train
from ..weights import sha256_file
from ..zoo import DIGIT_KEYS
from .common import command, emit, load_model


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
            init=load_model(args.model, str(args.init)).module.state_dict() if args.init else None,
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


def _setup_digits_benchmark(p):
    p.add_argument("--dir", type=Path, default=DRAWN_DIGITS_DIR,
                   help="a folder with manifest.json and its PNGs (default: the checkout's drawn-digit benchmark)")
    p.add_argument("--weights", nargs="+", default=[], metavar="KEY=FILE",
                   help="score these weights instead of the shipped ones, e.g. mnist_resnet=runs/mnist_resnet.safetensors")
    p.add_argument("--misread", action="store_true", help="list every misread file")
    p.add_argument("--json", action="store_true")


@command("digits-benchmark", "accuracy of the digit networks on drawn and printed digits, per network and digit",
         _setup_digits_benchmark)
def run_digits_benchmark(args) -> int:
    if not (args.dir / "manifest.json").is_file():
        raise SystemExit(f"digits-benchmark: no manifest.json in {args.dir} (the benchmark ships in a checkout's "
                         "tests/fixtures/drawn_digits)")
    own = dict(w.split("=", 1) for w in args.weights)
    unknown = set(own) - set(DIGIT_KEYS)
    if unknown:
        raise SystemExit(f"digits-benchmark: {', '.join(sorted(unknown))} is not a digit network ({', '.join(DIGIT_KEYS)})")
    models = {k: load_model(k, own.get(k)).module for k in DIGIT_KEYS}
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
