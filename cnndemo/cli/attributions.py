"""Commands of the Attributions view."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .. import render
from ..attribution import METHODS, Settings, attribute, knobs, score_sentences
from ..scores import SANITY_SEED
from ..errors import UserError
from .common import CliProgress, command, emit, fail, load_model, model_arg


def _setup_attribute(p):
    model_arg(p)
    p.add_argument("--method", required=True, choices=list(METHODS))
    p.add_argument("--target", default=None, help="class index or name (default: the top prediction)")
    p.add_argument("--layer", default=None, help="Grad-CAM layer: a block (inception4d) or a branch (inception4d/3x3)")
    p.add_argument("--weights", metavar="FILE", help="your own state_dict")
    for k in knobs().values():  # one flag per method knob, from its declaration
        p.add_argument(f"--{k.name}", type=int if k.integer else float, default=k.default, help=k.describe())
    p.add_argument("--no-scores", action="store_true", help="skip the sanity and deletion scores")
    p.add_argument("--seed", type=int, default=SANITY_SEED,
                   help="the scores' first re-initialisation and random order (the others follow it)")
    p.add_argument("--out", type=Path, help="PNG: overlay and signed map side by side")
    p.add_argument("--npy", type=Path, help="raw attribution (C x H x W; H x W for Grad-CAM)")
    p.add_argument("--json", action="store_true")
    p.add_argument("image", metavar="IMAGE")


@command("attribute", "an attribution map (Captum) with its sanity and deletion scores", _setup_attribute)
def run_attribute(args) -> int:
    bar = CliProgress()  # on stderr: the passes through the network, then each score
    try:
        settings = Settings(**{k.name: k.check(getattr(args, k.name)) for k in knobs().values()})
        model = load_model(args.model, args.weights)
        a = attribute(args.image, model, args.method, target=args.target, layer=args.layer,
                      settings=settings, scores=not args.no_scores, seed=args.seed, progress=bar)
    except UserError as e:
        return fail(args, e)
    finally:
        bar.close()
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
        for line in score_sentences(a):
            print("  " + line)
    return 0
