"""Commands of the Explore view: the zoo, predictions, weights, blocks and branches."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from PIL import Image

from .. import render
from .. import weights as W
from ..errors import NotFound, UserError
from ..branches import ablate, block_infos, explore
from ..images import ImageError
from ..predict import predict
from ..units import unit
from ..hide import hide, rect_mask
from ..featurevis import VisSettings, exemplars, folder_exemplars, visualize
from ..pipeline import load_for
from ..ranking import folder_file, folder_ranking
from ..costs import count_model_params
from ..weights import WeightsError, availability
from ..zoo import PUBLISHED_KEYS, ZOO
from .common import CliProgress, command, emit, fail, load_model, model_arg


def _setup_models(p):
    p.add_argument("--json", action="store_true", help="print a JSON list")


@command("models", "list the zoo", _setup_models)
def run_models(args) -> int:
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


def _setup_predict(p):
    model_arg(p)
    p.add_argument("--weights", metavar="FILE", help="your own state_dict (.pth/.pt/.safetensors)")
    p.add_argument("--top", type=int, default=5, help="how many classes (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per image per line")
    p.add_argument("images", nargs="+", metavar="IMAGE")


@command("predict", "top-k predictions for images", _setup_predict)
def run_predict(args) -> int:
    try:
        model = load_model(args.model, args.weights)
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


def _setup_fetch(p):
    p.add_argument("--models", nargs="+", metavar="KEY", choices=list(ZOO), help="default: all with published weights")
    p.add_argument("--force", action="store_true", help="download again even when a verified copy exists")
    p.add_argument("--json", action="store_true")


@command("fetch-weights", "download and verify published weights into the torch hub cache", _setup_fetch)
def run_fetch(args) -> int:
    keys = args.models or list(PUBLISHED_KEYS)
    failed = 0
    for key in keys:
        src = ZOO[key].weights
        if key not in PUBLISHED_KEYS:
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


def _setup_blocks(p):
    model_arg(p)
    p.add_argument("--json", action="store_true")


@command("blocks", "the multi-branch blocks of a model, with their branches", _setup_blocks)
def run_blocks(args) -> int:
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
    model_arg(p)
    p.add_argument("--block", required=True, help="block name (see `blocks`)")
    p.add_argument("--weights", metavar="FILE", help="your own state_dict")
    p.add_argument("--out", type=Path, help="write the maps here as PNG files")
    p.add_argument("--ablate", metavar="BRANCH", help="also re-run with this branch knocked out")
    p.add_argument("--mode", choices=["zero", "mean"], default="zero", help="ablation: zeros or the branch's per-channel mean")
    p.add_argument("--json", action="store_true")
    p.add_argument("image", metavar="IMAGE")


@command("branches", "per-branch maps and shares of one block for an image", _setup_branches)
def run_branches(args) -> int:
    try:
        model = load_model(args.model, args.weights)
        ex = explore(args.image, model)
        block = ex.blocks.get(args.block)
        if block is None:
            raise NotFound(f"{model.spec.name} has no block {args.block!r}; blocks: {', '.join(ex.blocks)}")
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
    except UserError as e:
        return fail(args, e)
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


def _setup_unit(p):
    model_arg(p)
    p.add_argument("--weights", metavar="FILE", help="your own state_dict (.pth/.pt/.safetensors)")
    p.add_argument("--block", required=True, help="a block (or a plain stage, without --branch)")
    p.add_argument("--branch", default=None, help="the branch (omit it for a plain stage)")
    p.add_argument("--channel", type=int, required=True, help="the output channel, in the branch")
    p.add_argument("--at", type=int, nargs=2, required=True, metavar=("Y", "X"), help="the position on its map")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("image", metavar="IMAGE")


@command("unit", "one unit of a branch step by step: its arithmetic and its receptive fields", _setup_unit)
def run_unit(args) -> int:
    try:
        report = unit(args.image, load_model(args.model, args.weights), args.block, args.branch, args.channel,
                      *args.at)
    except UserError as e:
        return fail(args, e)
    emit({"image": args.image, **report.to_json()} if args.json else "\n".join(report.lines()))
    return 0 if report.agrees else 1


def _setup_hide(p):
    model_arg(p)
    p.add_argument("--weights", metavar="FILE", help="your own state_dict (.pth/.pt/.safetensors)")
    p.add_argument("--rect", type=int, nargs=4, action="append", required=True,
                   metavar=("TOP", "LEFT", "BOTTOM", "RIGHT"), help="a rectangle to hide, in the image's pixels (inclusive); repeat for more")
    p.add_argument("--repeat", type=int, default=1,
                   help="try it N times and report each try's time (warm after the first)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("image", metavar="IMAGE")


@command("hide", "paint to hide: the top-5 with rectangles of the image hidden, and the time of a try", _setup_hide)
def run_hide(args) -> int:
    try:
        model = load_model(args.model, args.weights)
        opened = load_for(model.spec, args.image)  # opened once, for the mask and every try
        mask = rect_mask(opened.image.size, [tuple(r) for r in args.rect])
        tries = [hide(opened, model, mask) for _ in range(max(1, args.repeat))]
    except UserError as e:
        return fail(args, e)
    res = tries[-1]
    times = [round(t.ms, 2) for t in tries]
    out = {"image": args.image, "model": model.key, "weights": model.weights.kind, **res.to_json(), "tries_ms": times}
    if args.json:
        emit(out)
    else:
        print(f"{res.target.label}: {res.target.prob:.1%} -> {res.p_after:.1%} ({res.delta:+.1%}) with "
              f"{res.hidden:.0%} of the image hidden; a try takes {times[-1]:.0f} ms (tries: {times})")
    return 0


def _setup_visualize(p):
    model_arg(p)
    p.add_argument("--weights", metavar="FILE", help="your own state_dict (.pth/.pt/.safetensors)")
    p.add_argument("--block", required=True, help="a block (or a plain stage, without --branch)")
    p.add_argument("--branch", default=None, help="the branch (omit it for a plain stage)")
    p.add_argument("--channel", type=int, nargs="+", required=True, help="the branch's channels (one image each)")
    p.add_argument("--steps", type=int, default=VisSettings.steps, help="optimisation steps (Adam)")
    p.add_argument("--size", type=int, default=None, help="the side it is optimised at (default 128; digits 28)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=1,
                   help="optimise N times and report each run's time (warm after the first)")
    p.add_argument("--exemplars", type=Path, metavar="DIR",
                   help="rank the images of this folder (and its subfolders) by each channel's mean activation; "
                        "without it, a digit network ranks its 1,000 held-out digits, a photo network none")
    p.add_argument("--out", type=Path, help="PNG: the images side by side")
    p.add_argument("--json", action="store_true", help="print one JSON object")


@command("visualize", "what a branch channel looks for: an input optimised to excite it, beside the held-out "
         "digits that excite it most (digit networks)", _setup_visualize)
def run_visualize(args) -> int:
    model = load_model(args.model, args.weights)
    bar = CliProgress()
    try:
        runs = [visualize(model, args.block, args.branch, args.channel,
                          VisSettings(steps=args.steps, size=args.size, seed=args.seed), progress=bar)
                for _ in range(max(1, args.repeat))]
    finally:
        bar.close()
    vis = runs[-1]
    out = {**vis.to_json(), "runs_s": [round(r.seconds, 3) for r in runs]}
    found = []
    if args.exemplars is not None:
        bar = CliProgress()
        try:
            found = [folder_exemplars(model, args.block, vis.branch, c, args.exemplars, k=6, progress=bar)
                     for c in args.channel]
        finally:
            bar.close()
    elif model.spec.inputs.kind == "digit":
        found = [exemplars(model, args.block, vis.branch, c, k=6) for c in args.channel]
    else:
        out["exemplars"] = "none: name a folder of your images with --exemplars DIR"
    if found:
        out["exemplars"] = [e.to_json() for e in found]
        out["best_exemplar"] = [{"source": e.sources[0], "activation": round(e.best, 6)} for e in found]
        out["beats_best_exemplar"] = [a > e.best for a, e in zip(vis.activations, found)]
    if vis.weights == "random":
        out["note"] = "untrained weights: this is what a randomly initialised network's channel answers"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tiles = [render.enlarged(im, 224) for im in vis.images]
        tiles += [render.enlarged(im, 112) for e in found for im in e.images]
        strip = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)), "white")
        for i, t in enumerate(tiles):
            strip.paste(t.convert("RGB"), (sum(u.width for u in tiles[:i]), 0))
        strip.save(args.out)
        out["png"] = str(args.out)
    if args.json:
        emit(out)
    else:
        for i, c in enumerate(args.channel):
            line = f"{vis.block} / {vis.branch} channel {c}: mean activation {vis.activations[i]:.4g}"
            if found:
                best = out["best_exemplar"][i]
                line += f" (best exemplar, {best['source']}: {best['activation']:.4g}" + (
                    ")" if out["beats_best_exemplar"][i] else "; weak: a real image excites it more)")
            print(line)
        print(f"{vis.settings.steps} steps at {vis.settings.size} px in {vis.seconds:.1f} s" + (
            f"; {out['note']}" if "note" in out else ""))
        if isinstance(out.get("exemplars"), str):
            print(f"exemplars: {out['exemplars']}")
        elif found and found[0].skipped:
            print(f"exemplars: {found[0].skipped} files of {args.exemplars} were not readable images")
    return 0


def _setup_exemplars(p):
    model_arg(p)
    p.add_argument("--weights", metavar="FILE", help="your own state_dict (.pth/.pt/.safetensors)")
    p.add_argument("--folder", type=Path, required=True, metavar="DIR", help="a folder of images (and its subfolders)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


@command("exemplars", "rank a folder of images for every branch channel of a network, as the app's --exemplars "
         "does in the background (kept beside the weights cache for published weights, so a lesson starts with it)",
         _setup_exemplars)
def run_exemplars(args) -> int:
    model = load_model(args.model, args.weights)
    bar = CliProgress()
    t0 = time.perf_counter()
    try:
        found = folder_ranking(model, args.folder, progress=bar)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    kept = folder_file(model, args.folder)
    out = {"model": model.key, "weights": model.weights.kind, "folder": str(args.folder), "images": len(found.sources),
           "skipped": found.skipped, "seconds": round(seconds, 3),
           "images_per_s": round(len(found.sources) / seconds, 2) if seconds else None,
           "kept": str(kept) if kept is not None and kept.is_file() else None}
    if args.json:
        emit(out)
    else:
        print(f"{model.spec.name}: {out['images']} images of {args.folder} ranked in {seconds:.1f} s "
              f"({out['images_per_s']} images/s)" + (f"; {len(found.skipped)} not readable as images" if found.skipped
                                                      else ""))
        print(f"kept in {kept}" if out["kept"] else "not kept on disk (only published weights' rankings are)")
    return 0
