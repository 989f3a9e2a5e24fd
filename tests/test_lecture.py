"""A lecture's numbers and results: timings that say what they are, nothing stale on screen."""

from __future__ import annotations

import asyncio
import uuid

from cnndemo.branches import explore
from cnndemo.runtime import STORE, LoadedModel, build_random
from cnndemo.weights import WeightsInfo
from cnndemo.zoo import get_spec
from conftest import ROOT
from images_factory import gradient


def _fresh(key: str) -> LoadedModel:
    """A model nobody has run yet, with an identity of its own (so no cached result is shared)."""
    info = WeightsInfo("random", "test init", f"test-{uuid.uuid4().hex}")
    return LoadedModel(get_spec(key), build_random(get_spec(key)).eval(), info, STORE.device)


def test_a_cold_start_or_a_cached_result_is_never_shown_as_this_requests_time():
    lm = _fresh("mnist_resnet")
    first = explore(gradient(64, 64), lm).prediction
    assert first.first_run and not first.cached
    assert "first run on this server" in first.timing("CPU")
    again = explore(gradient(64, 64), lm).prediction
    assert again.cached and again.ms == first.ms
    assert again.timing("CPU").startswith("no forward pass for this request")
    assert f"{first.ms:.1f} ms on CPU then" in again.timing("CPU")
    other = explore(gradient(64, 48), lm).prediction
    assert not other.first_run and not other.cached
    assert other.timing("CPU") == f"forward pass {other.ms:.1f} ms on CPU"
    assert again.to_json()["cached"] is True and first.to_json()["first_run"] is True


def test_a_new_model_or_image_empties_every_result_at_once():
    from cnndemo.ui.explore import results_pending

    out = results_pending("inception_v3", "inception5b", "cat.jpg", new_model=True)
    for name in ("label", "seen", "json", "panel", "branch_table", "branch_json", "branch_view"):
        assert out[name] is None, name
    assert out["share_plot"].value is None  # emptied, with the new block's order and colours
    depth = out["depth_plot"]  # emptied, with the new model's blocks in forward order
    assert depth.value is None and depth.sort == [b.name for b in get_spec("inception_v3").blocks]
    assert "Inception-v3" in out["info"] and "Computing" in out["info"]
    assert out["block"].value == get_spec("inception_v3").default_block != "inception5b"
    assert "inception5b" not in out["block"].choices
    kept = results_pending("googlenet", "inception3a", "cat.jpg", new_model=False)
    assert "block" not in kept and "inception3a" in kept["block_note"]


def test_the_clearing_runs_in_the_browser_without_the_queue():
    """The emptying must not wait behind the network-running events it announces."""
    import app

    outputs_of = {}
    for fn in app.demo.fns.values():
        if fn.queue is False and any(t[1] == "change" for t in fn.targets):
            outputs_of.setdefault(fn.name, set()).update(getattr(o, "elem_id", None) for o in fn.outputs)
    assert any("explore-top5" in ids and "explore-panel" in ids for ids in outputs_of.values()), outputs_of


def test_offline_without_imagenet_weights_the_start_panel_teaches_on_a_trained_digit_network(monkeypatch):
    from cnndemo import weights
    from cnndemo.branches import ablate
    from cnndemo.ui.start import first_lesson
    from cnndemo.zoo import DEFAULT_MODEL, ZOO

    assert weights.availability(ZOO[DEFAULT_MODEL].weights) == "pretrained"  # the tests' empty hub cache
    lesson = first_lesson()
    assert lesson.model != DEFAULT_MODEL and ZOO[lesson.model].inputs.kind == "digit"
    assert "offline" in lesson.why and "not cached" in lesson.why and ZOO[lesson.model].name in lesson.markdown
    lm = STORE.get(lesson.model)
    assert lm.weights.kind == "pretrained"
    # The example it opens is read as what it shows, and knocking out a branch of the block the
    # panel points to moves the answer (with random weights nothing moves: item 5's complaint).
    top = explore(str(lesson.image), lm).prediction.top[0]
    assert top.label == "6" and top.prob > 0.5
    spec = ZOO[lesson.model]
    block = spec.block(spec.default_block)
    deltas = [ablate(str(lesson.image), lm, block.name, b.name).top1_delta for b in block.branches]
    assert min(deltas) < -0.05


def test_with_imagenet_weights_at_hand_the_start_panel_keeps_the_photo(monkeypatch, tmp_path, setenv):
    from cnndemo import weights
    from cnndemo.ui.start import first_lesson
    from cnndemo.zoo import DEFAULT_MODEL, ZOO

    setenv("CNNDEMO_OFFLINE", "0")
    assert first_lesson().model == DEFAULT_MODEL and first_lesson().why is None  # fetched on first use
    src = ZOO[DEFAULT_MODEL].weights
    monkeypatch.setitem(weights._failures, src.url, (__import__("time").monotonic(), "connection refused"))
    lesson = first_lesson()
    assert lesson.model != DEFAULT_MODEL and "connection refused" in lesson.why
    weights.forget_failures()
    setenv("CNNDEMO_OFFLINE", "1")
    monkeypatch.setattr(type(src), "path", property(lambda self: tmp_path / "present.pth"))
    (tmp_path / "present.pth").write_bytes(b"x")
    assert first_lesson().model == DEFAULT_MODEL  # cached: used even offline


def _digit_attribution(method="gradcam"):
    from cnndemo.attribution import attribute

    return attribute(str(ROOT / "assets/examples/digits/six.png"), STORE.get("mnist_inception"), method,
                     layer="incept2", scores=True)


def test_a_slide_export_is_large_and_names_model_weights_method_layer_target_and_scores():
    from cnndemo.ui.attributions import slide, slide_name, slide_title

    a = _digit_attribution()
    name, title = slide_name(a), slide_title(a)
    for part in ("mnist_inception", "pretrained", "gradcam", "incept2", f"{a.target}-{a.label}"):
        assert part in name
    for part in ("MNIST Inception net", "pretrained weights", "Grad-CAM", "at incept2", f"target: {a.label} ({a.target})"):
        assert part in title
    img = slide(a)
    assert img.size[0] >= 1600
    # The scores are drawn into it: the lower band of a slide with scores is not blank paper.
    import numpy as np

    band = np.asarray(img)[int(img.size[1] * 0.82):, :, :]
    assert (band < 128).any()


def test_pictures_with_text_are_drawn_for_dark_mode_and_presenter_mode():
    from cnndemo import render

    ex = explore(str(ROOT / "assets/examples/digits/six.png"), STORE.get("mnist_inception"))
    bm = ex.blocks["incept1"]
    light = render.block_panel(bm, ex.seen)
    dark = render.block_panel(bm, ex.seen, look=render.Look.parse("dark"))
    big = render.block_panel(bm, ex.seen, look=render.Look.parse("light presenter"))
    assert light.getpixel((2, 2)) == (255, 255, 255) and sum(dark.getpixel((2, 2))) < 100
    assert big.size[1] > light.size[1]  # larger text needs taller rows
    assert render.Look.parse("dark presenter") == render.Look(True, True) and render.Look.parse("<script>") == render.LIGHT
    # The clicked branch's card is about as tall as it is wide (a phone shows it large).
    card = render.branch_card(bm, bm.branches[0], ex.seen)
    assert 0.6 < card.size[1] / card.size[0] < 1.2


def test_the_block_share_chart_keeps_the_block_order_and_the_diagram_colours():
    from cnndemo.render import branch_colours_hex
    from cnndemo.ui.explore import branches_pending, show_branches

    six = str(ROOT / "assets/examples/digits/six.png")
    chart = branches_pending("mnist_inception", "incept1", six)["share_plot"]  # set before the values arrive
    names = [b.name for b in get_spec("mnist_inception").block("incept1").branches]
    assert chart.sort == names and names != sorted(names)
    assert [chart.color_map[n] for n in names] == branch_colours_hex()[:len(names)]
    # The endpoint itself keeps returning the plain table (an update object would change its API).
    table = asyncio.run(show_branches(six, "mnist_inception", "incept1"))["share_plot"]
    assert list(table["branch"]) == names


def test_cross_model_attribution_can_explain_one_shared_target():
    from cnndemo.ui.attributions import run_compare

    out = asyncio.run(run_compare(str(ROOT / "assets/examples/cat.jpg"), ["squeezenet1_0", "resnet50"],
                                  "gradcam", target="281", progress=lambda *a, **k: None))
    grid, rows = out["cmp_grid"], out["cmp_table"]
    assert grid.size[0] > 600
    assert {r[1] for r in rows} == {"tabby"}  # both explain class 281, whatever their own top-1


def test_paper_names_sit_beside_torchvision_names():
    from cnndemo.ui.explore import architecture_rows

    vgg = {r[0]: r[1] for r in architecture_rows("vgg16")}
    assert vgg["features.28"] == "conv5_3" and vgg["features.0"] == "conv1_1" and vgg["classifier.6"] == "fc8"
    res = {r[0]: r[1] for r in architecture_rows("resnet50")}
    assert res["layer3.0"] == "conv4_x, block 1"
    sq = {r[0]: r[1] for r in architecture_rows("squeezenet1_0")}
    assert sq["features.12"] == "fire9" and sq["classifier.1"] == "conv10"


def test_every_result_image_has_alt_text():
    import gradio as gr

    from cnndemo.ui import build_demo

    demo = build_demo()
    images = [b for b in demo.blocks.values() if isinstance(b, gr.Image) and b.interactive is False]
    assert len(images) >= 10
    assert not [b.label for b in images if not (b.alt_text or "").strip()]
