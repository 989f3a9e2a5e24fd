"""Attributions: correct on every zoo model (or refused with a reason), scored, and isolated."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from captum.attr import DeepLift, GuidedBackprop, Saliency

from cnndemo.archs.module_relu import with_module_relus
from cnndemo.attribution import (
    METHODS,
    Settings,
    add_scores,
    attribute,
    attribution_model,
    layer_choices,
    randomized_model,
    resolve_target,
)
from cnndemo.scores import spearman
from cnndemo.runtime import STORE, build_random
from cnndemo.taps import hook_count
from cnndemo.zoo import ZOO


FAST = Settings(steps=4, samples=2, window=56, stride=56)


def _grad(model, x, target):
    return Saliency(model).attribute(x.clone().requires_grad_(), target=target, abs=False)


@pytest.mark.parametrize("key", ["googlenet", "inception_v3"])
def test_guided_backprop_differs_from_plain_gradients(key):
    spec = ZOO[key]
    model = build_random(spec)
    x = torch.randn(1, *spec.input_size, generator=torch.Generator().manual_seed(0))
    plain = _grad(model, x, 3)
    # The upstream trap: on torchvision's functional ReLUs, Captum's guided backprop is a no-op.
    scale = float(plain.abs().mean())
    assert scale > 0
    naive = GuidedBackprop(model).attribute(x.clone().requires_grad_(), target=3)
    assert float((naive - plain).abs().max()) <= 1e-5 * float(plain.abs().max())
    fixed = with_module_relus(copy.deepcopy(model)).eval()
    guided = GuidedBackprop(fixed).attribute(x.clone().requires_grad_(), target=3)
    assert float((guided - plain).abs().mean()) > 0.05 * scale


@pytest.mark.parametrize("key", ["googlenet", "inception_v3"])
def test_guided_gradcam_differs_from_gradcam_times_plain_gradient(key, cat):
    lm = STORE.get(key)
    a = attribute(cat, lm, "guided_gradcam", scores=False)
    g = attribute(cat, lm, "gradcam", target=a.target, layer=a.layer, scores=False)
    plain = _grad(lm.module, _input(lm, cat), a.target)[0].numpy()
    naive = plain * g.attr[None]  # what Guided Grad-CAM silently becomes with functional ReLUs
    assert a.attr.shape == naive.shape
    assert np.abs(a.attr - naive).mean() > 0.05 * np.abs(naive).mean()


def _input(lm, cat):
    from cnndemo.pipeline import load_for, to_batch

    return to_batch(lm.spec, load_for(lm.spec, cat), lm.device)


def test_deeplift_is_right_on_resnet_only_with_unique_relus():
    spec = ZOO["resnet50"]
    model = build_random(spec)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    base = torch.zeros_like(x)
    fixed = with_module_relus(copy.deepcopy(model)).eval()
    _, delta_fixed = DeepLift(fixed).attribute(x, baselines=base, target=1, return_convergence_delta=True)
    # DeepLift's attributions must add up to f(x) - f(baseline) ("summation to delta").
    with torch.no_grad():
        gap = float(fixed(x)[0, 1] - fixed(base)[0, 1])
    assert abs(float(delta_fixed)) < 1e-3 * max(1.0, abs(gap))
    # On torchvision's Bottleneck (one ReLU module used three times) Captum refuses.
    with pytest.raises(RuntimeError, match="DeepLift"):
        DeepLift(model).attribute(x, baselines=base, target=1, return_convergence_delta=True)


def test_attribution_copy_computes_the_same_logits(cat):
    for key in ("googlenet", "inception_v3", "resnet50"):
        lm = STORE.get(key)
        x = _input(lm, cat)
        with torch.no_grad():
            assert torch.equal(attribution_model(lm)(x), lm.module(x))


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_on_squeezenet_and_a_digit_net(method, cat):
    for key in ("squeezenet1_0", "mnist_inception"):
        a = attribute(cat, key, method, settings=FAST)
        c, h, w = ZOO[key].input_size
        expected = (h, w) if METHODS[method].kind == "cam" else (c, h, w)
        assert a.attr.shape == expected and np.isfinite(a.attr).all()
        assert np.abs(a.attr).sum() > 0
        assert -1 <= a.sanity.rank_correlation <= 1 and len(a.deletion.probs) == 11
        assert a.deletion.probs[0] == pytest.approx(a.prob, rel=1e-4)


def test_gradcam_on_blocks_and_single_branches(cat):
    spec = ZOO["googlenet"]
    assert "inception4d" in layer_choices(spec) and "inception4d/3x3" in layer_choices(spec)
    lm = STORE.get("googlenet")
    whole = attribute(cat, lm, "gradcam", layer="inception4d", scores=False)
    branch = attribute(cat, lm, "gradcam", layer="inception4d/3x3", scores=False)
    assert branch.layer == "inception4d/3x3" and whole.attr.shape == branch.attr.shape == (224, 224)
    norm = lambda a: a / (np.abs(a).max() or 1.0)  # noqa: E731  (random-init maps are tiny)
    assert np.abs(norm(whole.attr) - norm(branch.attr)).mean() > 0.01
    split = attribute(cat, "inception_v3", "gradcam", layer="Mixed_7b/3x3", scores=False)
    assert split.attr.shape == (299, 299)
    with pytest.raises(ValueError, match="no module of its own"):
        attribute(cat, "inception_v3", "gradcam", layer="Mixed_6a/pool", scores=False)
    with pytest.raises(KeyError, match="no layer"):
        attribute(cat, lm, "gradcam", layer="inception9z", scores=False)


def test_targets_by_index_and_name(cat):
    spec = ZOO["googlenet"]
    logits = torch.zeros(1, 1000)
    logits[0, 7] = 5
    assert resolve_target(spec, None, logits) == 7
    assert resolve_target(spec, 207, logits) == 207
    assert resolve_target(spec, "golden retriever", logits) == 207
    assert resolve_target(spec, "Golden Retriever (207)", logits) == 207
    assert resolve_target(spec, "tabby", logits) == 281
    with pytest.raises(ValueError, match="matches"):
        resolve_target(spec, "terrier", logits)
    with pytest.raises(ValueError, match="out of range"):
        resolve_target(spec, 1000, logits)
    a = attribute(cat, "squeezenet1_0", "saliency", target="coffee mug", scores=False)
    assert a.target == 504 and a.label == "coffee mug"


def test_spearman():
    a = np.arange(100.0)
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)


def test_spearman_is_tie_aware_and_undefined_for_constant_maps():
    """Two mostly-zero maps with their one bright pixel in different places share no ranking:
    ranking ties by position (argsort of argsort) called them 0.99 alike."""
    x, y = np.zeros((32, 32)), np.zeros((32, 32))
    x[3, 5], y[20, 30] = 1.0, 1.0
    assert abs(spearman(x, y)) < 0.01
    y2 = np.zeros((32, 32))
    y2[3, 5] = 0.5
    assert spearman(x, y2) == pytest.approx(1.0)  # the same pixel: the same ranking
    assert spearman(np.zeros((8, 8)), np.arange(64.0)) is None
    assert spearman(np.full(10, 3.0), np.full(10, 3.0)) is None


def _deletion(heat, model=None):
    from cnndemo.scores import deletion_curve

    torch.manual_seed(0)
    model = model or torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    x = torch.rand(1, 3, 16, 16)
    return deletion_curve(model, x, 1, heat, torch.zeros_like(x), steps=8, batch=4)


def test_deletion_ties_follow_the_random_order_and_flat_maps_score_nothing():
    flat = _deletion(np.zeros((16, 16)))
    # A constant map deletes in the first random order, the only one it is compared with.
    assert flat.orders == 1 and flat.probs == flat.random_probs and flat.score is None and "constant" in flat.verdict
    assert flat.to_json()["score"] is None
    # One hot pixel, the rest tied: the hot pixel goes first, then the ties in the random order.
    heat = np.zeros((16, 16))
    heat[0, 0] = 1.0
    one = _deletion(heat)
    assert one.score is not None and one.probs[-1] == pytest.approx(one.random_probs[-1])
    assert not one.flat and one.orders >= 19


def test_deletion_verdict_is_a_permutation_test_against_the_random_orders():
    from cnndemo.scores import Deletion

    def d(auc, randoms):
        f = (0.0, 0.5, 1.0)
        return Deletion(f, (1.0, 0.5, 0.0), f, f, f, auc, tuple(randoms))

    randoms = [0.3 + 0.01 * i for i in range(19)]
    better = d(0.1, randoms)  # below all 19: p = 1/20
    assert better.p_value == pytest.approx(0.05) and better.outside_band and "matter more" in better.verdict
    one_below = d(0.305, randoms)  # one random order did as well: p = 2/20
    assert one_below.p_value == pytest.approx(0.1) and not one_below.outside_band
    assert one_below.verdict.startswith("inconclusive") and "1 of 19" in one_below.verdict
    worse = d(0.9, randoms)
    assert worse.score < 0 and worse.outside_band and worse.verdict.startswith("worse")
    # Fewer than 19 orders can never reach p = 0.05.
    assert not d(0.0, randoms[:10]).outside_band


def test_sanity_verdicts_say_when_they_mean_nothing():
    from cnndemo.scores import Sanity

    assert "undefined" in Sanity((None, None), (1, 2), ("fc",)).verdict
    assert Sanity((None,), (1,), ("fc",)).to_json()["rank_correlation"] is None
    s = Sanity((0.2, 0.1, 0.15, 0.12, 0.18), tuple(range(5)), ("fc",), untrained=True)
    assert s.passed and s.verdict.startswith("passes") and "untrained" in s.verdict
    assert "choice" in s.to_json()["threshold_source"]
    assert Sanity((0.9, 0.95, 0.92), (1, 2, 3), ("fc",)).passed is False
    # A mean of 0.1 with an sd of 0.45 over five seeds: the interval straddles 0.5.
    wide = Sanity((-0.4, 0.6, 0.1, -0.2, 0.4), tuple(range(5)), ("fc",))
    assert wide.passed is None and wide.verdict.startswith("inconclusive") and "straddles" in wide.verdict
    assert Sanity((0.1,), (1,), ("fc",)).passed is None  # one seed: no spread to judge


DIGIT = "assets/examples/digits/six.png"


def test_sanity_verdict_on_a_coarse_gradcam_map_does_not_flip_with_the_seed():
    """mnist_resnet's Grad-CAM map is 4 x 4: one re-initialisation's correlation varies by
    about 0.4 with the seed, so a one-seed verdict was a coin flip."""
    lm = STORE.get("mnist_resnet")
    a = attribute(DIGIT, lm, "gradcam", scores=False)
    runs = [add_scores(a, DIGIT, lm, seed=seed).sanity for seed in (1234, 1, 77, 5000, 99999)]
    assert len({s.passed for s in runs}) == 1, [s.summary() for s in runs]
    assert all(len(s.seeds) >= 3 and s.spread is not None for s in runs)
    assert len({s.seeds for s in runs}) == 5  # each base seed really re-initialised other copies


def test_deletion_verdict_on_saliency_does_not_flip_with_the_seed():
    lm = STORE.get("mnist_resnet")
    a = attribute(DIGIT, lm, "saliency", scores=False)
    runs = [add_scores(a, DIGIT, lm, seed=seed).deletion for seed in (1234, 1, 77, 5000, 99999)]
    assert len({d.outside_band for d in runs}) == 1, [(d.p_value, d.orders) for d in runs]
    assert len({d.random_aucs for d in runs}) == 5 and all(d.orders >= 19 for d in runs)


def test_scores_stop_at_the_work_budget_and_say_so(cat, setenv):
    """A budget that admits only the scores' minimum: one re-initialisation, one random order,
    both marked as stopped by the budget, neither giving a verdict."""
    from cnndemo import cache
    from cnndemo.attribution import request_tflop

    cache.reset_all()  # no random orders kept from an earlier test: each must be paid for
    setenv("CNNDEMO_WORK_BUDGET_TFLOP", str(request_tflop(ZOO["squeezenet1_0"], "saliency") * 1.001))
    a = attribute(cat, "squeezenet1_0", "saliency")
    assert len(a.sanity.seeds) == 1 and a.sanity.budget and a.sanity.passed is None
    assert "limits on work" in a.sanity.verdict
    assert a.deletion.orders == 1 and a.deletion.budget and not a.deletion.outside_band
    assert "limits on work" in a.deletion.verdict


def test_sanity_uses_a_copy_with_reinitialised_top_layers():
    lm = STORE.get("squeezenet1_0")
    rnd = randomized_model(lm)
    orig = dict(lm.module.named_parameters())
    changed = {n for n, p in rnd.named_parameters() if not torch.equal(p, orig[n])}
    assert changed and all(n.startswith(("classifier", "features.12")) for n in changed)


def test_concurrent_attributions_equal_their_serial_results(cat):
    jobs = [("googlenet", "gradcam", None), ("googlenet", "guided_backprop", None), ("googlenet", "gradcam", 504)]
    serial = [attribute(cat, k, m, target=t, scores=False).attr for k, m, t in jobs]
    results: dict = {}

    def work(i, job):
        k, m, t = job
        results[i] = attribute(cat, k, m, target=t, scores=False).attr

    threads = [threading.Thread(target=work, args=(i, j)) for i, j in enumerate(jobs * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(len(jobs) * 2):
        np.testing.assert_allclose(results[i], serial[i % len(jobs)], rtol=1e-5, atol=1e-7)
    lm = STORE.get("googlenet")
    assert hook_count(lm.module) == 0 and hook_count(attribution_model(lm)) == 0


def test_an_all_zero_map_still_renders(cat):
    """Occlusion on an untrained net can give exactly zero everywhere; Captum cannot scale that."""
    import dataclasses

    from cnndemo import render

    a = attribute(cat, "squeezenet1_0", "saliency", scores=False)
    zero = dataclasses.replace(a, attr=np.zeros_like(a.attr))
    overlay, signed = render.attribution_views(zero)
    assert overlay.size[0] > 100 and signed.size[0] > 100
    assert render.attribution_grid([a, zero, None], ["a", "zero", "refused"]).size[0] > 300


def test_integrated_gradients_reports_how_far_it_is_from_complete(cat):
    """Every IG map carries Captum's convergence delta: the attributions' sum against the
    target's f(x) - f(baseline), which is computed here directly; more steps bring the error
    down; no other method claims completeness."""
    from cnndemo.attribution import _baseline
    from cnndemo.pipeline import prepare

    lm = STORE.get("mnist_resnet")
    few = attribute(cat, lm, "ig", settings=Settings(steps=4), scores=False)
    many = attribute(cat, lm, "ig", settings=Settings(steps=64), scores=False)
    x = prepare(cat, lm).x
    m = attribution_model(lm)
    with torch.no_grad():
        diff = float(m(x)[0, few.target] - m(_baseline(lm.spec, x))[0, few.target])
    for a in (few, many):
        assert a.completeness.total == pytest.approx(float(a.attr.astype(np.float64).sum()), rel=1e-6)
        assert a.completeness.difference == pytest.approx(diff, rel=1e-3, abs=1e-4)
    assert many.completeness.relative_error < few.completeness.relative_error
    assert few.to_json()["completeness"]["steps"] == 4 and many.to_json()["completeness"]["within"] in (True, False)
    assert attribute(cat, lm, "saliency", scores=False).completeness is None


def test_the_completeness_sentence_warns_beyond_the_tolerance_and_says_when_no_error_can_be_stated():
    from cnndemo.attribution import Completeness

    fine = Completeness(total=1.02, delta=0.02, steps=64)  # f(x) - f(b) = 1.0: off by 2%
    assert fine.within and "off by 2.0% with 64 steps" in fine.sentence() and "⚠" not in fine.sentence()
    off = Completeness(total=1.1, delta=0.1, steps=16)
    assert off.within is False and off.relative_error == pytest.approx(0.1)
    assert "⚠ off by 10.0% with 16 steps" in off.sentence() and "Raise Steps" in off.sentence()
    flat = Completeness(total=2e-13, delta=2e-13, steps=16)  # an output that does not depend on the input
    assert flat.relative_error is None and flat.within is None and "no error can be stated" in flat.sentence()
