"""Checks of the attribution scores: ``peer-check`` against Quantus, an independent
implementation, and ``score-stability``, how often a verdict changes with the base seed.

Quantus (Hedström et al. 2023) is not a dependency of the app; ``peer-check`` needs it installed
(``pip install quantus``). On the digit networks, which have trained weights offline:

- the sanity score's correlations over seeds against Quantus's MPRT (``layer_order="top_down"``)
  read at the layer where its cascade has re-initialised exactly the spec's top layers, over as
  many seeds. The two draw different random weights, so their distributions are compared (mean,
  sd, a Mann-Whitney U test), not their values;
- the deletion curve (the map's order, no random order) against Quantus's PixelFlipping with the
  same baseline and about 16 equal steps (49 of a 28 x 28 digit's 784 pixels at a time): the same
  probabilities, to rounding, where no two pixels tie.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ...attribution import (add_scores, attribute, attribution_model, heat_of, randomized_model, resolve_layer,
                            run_method, _baseline)
from ...errors import UserError
from ...paths import EXAMPLES_DIR
from ...pipeline import prepare
from ...scores import DELETION_ORDERS, SANITY_THRESHOLD, deletion_curve, spearman
from ...training import load_digits
from ...zoo import ZOO
from ..common import command, emit, load_model

DIGIT_MODELS = tuple(k for k, s in ZOO.items() if s.inputs.kind == "digit" and s.weights is not None)
METHODS = ("saliency", "gradcam", "ig")


def _setup(p):
    p.add_argument("--models", nargs="+", default=list(DIGIT_MODELS), choices=list(DIGIT_MODELS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", type=int, default=10, help="re-initialisations on each side")
    p.add_argument("--image", default=str(EXAMPLES_DIR / "digits" / "six.png"))
    p.add_argument("--json", action="store_true")


def _quantus():
    try:
        import quantus
    except ImportError as e:
        raise UserError("the peer check needs Quantus, which the app does not: pip install quantus") from e
    return quantus


def _top_layer_key(model: torch.nn.Module, top_layers: tuple[str, ...]) -> str:
    """The module at which Quantus's top-down cascade has re-initialised every module of the top
    layers and nothing else (it walks the modules that have reset_parameters, last first)."""
    names = [n for n, m in model.named_modules() if hasattr(m, "reset_parameters")][::-1]
    inside = [any(n == t or n.startswith(t + ".") for t in top_layers) for n in names]
    k = inside.index(False) if False in inside else len(names)
    if not all(inside[:k]) or any(inside[k:]):
        raise UserError(f"the top layers {top_layers} are not the last modules: Quantus's cascade cannot match them")
    return names[k - 1]


def _r(v) -> float | None:
    return round(float(v), 4) if np.isfinite(v) else None


def check(key: str, method: str, image: str, seeds: int) -> dict:
    quantus = _quantus()
    from scipy.stats import mannwhitneyu

    lm = load_model(key)
    a = attribute(image, lm, method, scores=False)
    x = prepare(image, lm).x
    with lm.attr_lock:
        m = attribution_model(lm)
        paths = resolve_layer(lm.spec, m, a.layer)[1] if a.layer else ()

        def explain(model, inputs, targets, **_):
            xs = torch.as_tensor(inputs, dtype=x.dtype)
            return np.stack([heat_of(run_method(model, lm.spec, method, xs[i:i + 1], int(t), layer_paths=paths,
                                                settings=a.settings))[None] for i, t in enumerate(targets)])

        ours = [spearman(np.abs(a.heat), np.abs(explain(randomized_model(lm, 1234 + s), x.numpy(), [a.target])[0, 0]))
                for s in range(seeds)]
        layer = _top_layer_key(m, lm.spec.top_layers)
        theirs, refused = [], 0
        for s in range(seeds):
            mprt = quantus.MPRT(layer_order="top_down", seed=1234 + s, similarity_func=quantus.similarity_func.correlation_spearman,
                                abs=True, normalise=False, disable_warnings=True)
            try:
                scores = mprt(model=m, x_batch=x.numpy(), y_batch=np.array([a.target]), a_batch=a.heat[None, None],
                              explain_func=explain, softmax=False, device="cpu")
            except AssertionError:  # Quantus refuses a constant map at any layer of its cascade
                refused += 1
                continue
            theirs.append(float(scores[layer][0]))
        # The deletion curve in the map's order, against PixelFlipping with the same step and baseline.
        n = x.shape[-2] * x.shape[-1]
        step = min(d for d in range(max(1, n // 16), n + 1) if n % d == 0)  # about 16 steps, evenly
        ours_curve = deletion_curve(m, x, a.target, a.heat, _baseline(lm.spec, x), steps=n // step, orders=1)
        black = float(_baseline(lm.spec, x).flatten()[0])
        flip = quantus.PixelFlipping(features_in_step=step, perturb_baseline=black, abs=True, normalise=False,
                                     disable_warnings=True)
        curve = flip(model=m, x_batch=x.numpy(), y_batch=np.array([a.target]), a_batch=np.abs(a.heat)[None, None],
                     softmax=True, device="cpu")[0]
    ours_def = [r for r in ours if r is not None]
    theirs_def = [r for r in theirs if np.isfinite(r)]
    test = mannwhitneyu(ours_def, theirs_def) if ours_def and theirs_def else None
    diff = float(np.max(np.abs(np.array(ours_curve.probs[1:]) - np.array(curve))))
    return {
        "model": key, "method": method, "image": image, "seeds": seeds, "quantus_layer": layer,
        "sanity": {"ours_mean": _r(np.mean(ours_def)), "ours_sd": _r(np.std(ours_def, ddof=1)),
                   "quantus_mean": _r(np.mean(theirs_def)), "quantus_sd": _r(np.std(theirs_def, ddof=1)),
                   "ours_constant": len(ours) - len(ours_def), "quantus_refused": refused + len(theirs) - len(theirs_def),
                   "mann_whitney_p": None if test is None else round(float(test.pvalue), 4)},
        # Pixels of equal attribution are deleted in a random order here and in argsort's there.
        "deletion": {"steps": len(curve), "max_abs_difference": diff,
                     "tied_pixels": int(np.abs(a.heat).size - np.unique(np.abs(a.heat)).size)},
    }


@command("peer-check", "the sanity score against Quantus's MPRT and the deletion curve against its PixelFlipping "
         "(needs `pip install quantus`)", _setup)
def run_peer_check(args) -> int:
    for key in args.models:
        for method in args.methods:
            try:
                r = check(key, method, args.image, args.seeds)
            except UserError as e:
                emit({"error": str(e)} if args.json else f"error: {e}")
                return 1
            _report(r, args.json)
    return 0


def _report(r: dict, as_json: bool) -> None:
    def mean_sd(who: str) -> str:
        mean, sd = s[f"{who}_mean"], s[f"{who}_sd"]
        return "n/a" if mean is None else f"{mean:+.3f}" + ("" if sd is None else f" ± {sd:.3f}")

    s, d = r["sanity"], r["deletion"]
    emit(r if as_json else
         f"{r['model']:15s} {r['method']:9s} sanity over {r['seeds']} seeds: ours {mean_sd('ours')}, "
         f"Quantus MPRT at {r['quantus_layer']} {mean_sd('quantus')} "
         f"(Mann-Whitney p = {s['mann_whitney_p']}; constant maps: ours {s['ours_constant']}, Quantus refused "
         f"{s['quantus_refused']}); deletion vs PixelFlipping over {d['steps']} steps: "
         f"max |difference| {d['max_abs_difference']:.2g} ({d['tied_pixels']} pixels tied with another)")


def _setup_stability(p):
    p.add_argument("--model", default="mnist_resnet", choices=list(DIGIT_MODELS))
    p.add_argument("--per-class", type=int, default=2, help="held-out MNIST digits of each class")
    p.add_argument("--seeds", type=int, nargs="+", default=[1234, 1, 77, 5000, 99999], help="base seeds")
    p.add_argument("--json", action="store_true")


@command("score-stability", "how often the sanity and deletion verdicts change with the base seed, "
         "on held-out MNIST digits: one draw, 19 fixed random orders, and the scores as shipped", _setup_stability)
def run_score_stability(args) -> int:
    data = load_digits()
    lm = load_model(args.model)
    rows = []
    changed = {"sanity_one_seed": 0, "sanity": 0, "deletion_one_order": 0, "deletion_19_orders": 0, "deletion": 0}
    used = {"seeds": [], "orders": []}
    for c in range(10):
        for k in range(args.per_class):
            i = int(np.flatnonzero(data.y_test.numpy() == c)[k])
            image = Image.fromarray((data.x_test[i, 0].numpy() * 255).round().astype(np.uint8), "L")
            cam = attribute(image, lm, "gradcam", scores=False)
            sal = attribute(image, lm, "saliency", scores=False)
            x = prepare(image, lm).x
            v = {key: [] for key in changed}
            for seed in args.seeds:
                san = add_scores(cam, image, lm, seed=seed).sanity
                first = san.correlations[0]
                v["sanity_one_seed"].append(None if first is None else abs(first) < SANITY_THRESHOLD)
                v["sanity"].append(san.passed)
                dele = add_scores(sal, image, lm, seed=seed).deletion
                v["deletion"].append(dele.outside_band and dele.score > 0)
                with lm.attr_lock:
                    m = attribution_model(lm)
                    base = _baseline(lm.spec, x)
                    one = deletion_curve(m, x, sal.target, sal.heat, base, seed=seed, orders=1)
                    fixed = deletion_curve(m, x, sal.target, sal.heat, base, seed=seed, orders=DELETION_ORDERS)
                v["deletion_one_order"].append(one.random_aucs[0] > one.auc)
                v["deletion_19_orders"].append(fixed.outside_band and fixed.score > 0)
                used["seeds"].append(len(san.seeds))
                used["orders"].append(dele.orders)
            for key in changed:
                changed[key] += len(set(v[key])) > 1
            rows.append({"digit": c, "test_index": i, **v})
            if not args.json:
                print(f"digit {c} (held-out #{i}): " + "; ".join(f"{key} {v[key]}" for key in changed), flush=True)
    out = {"model": lm.key, "digits": len(rows), "base_seeds": args.seeds, "verdict_changed_with_seed": changed,
           "sanity_seeds_used_mean": round(float(np.mean(used["seeds"])), 1),
           "deletion_orders_used_mean": round(float(np.mean(used["orders"])), 1)}
    emit({**out, "rows": rows} if args.json else
         f"{out['digits']} digits x {len(args.seeds)} base seeds on {lm.key}: verdicts that changed with the seed: "
         + ", ".join(f"{k} {n}" for k, n in changed.items())
         + f"; re-initialisations used {out['sanity_seeds_used_mean']} on average, random orders {out['deletion_orders_used_mean']}")
    return 0
