"""One unit step by step: the recomputed arithmetic equals the captured activation, and the
effective receptive field lies inside the theoretical box, on every zoo model."""

from __future__ import annotations

import json
import random

import gradio as gr
import numpy as np
import pytest

from cnndemo.branches import block_infos
from cnndemo.errors import BadRequest, NotFound
from cnndemo.hide import hide
from cnndemo.paths import EXAMPLES_DIR
from cnndemo.units import field_boxes, unit
from cnndemo.zoo import ZOO
from test_cli import run_json


def _units(key: str, seed: int, n: int):
    """``n`` random (block, branch, channel, y, x) of a model's branch maps."""
    rng = random.Random(f"{key}-{seed}")
    infos = block_infos(ZOO[key])
    for _ in range(n):
        info = rng.choice(infos)
        br = rng.choice(info.branches)
        c, h, w = br.shape
        yield info.name, br.name, rng.randrange(c), rng.randrange(h), rng.randrange(w)


@pytest.mark.parametrize("key", list(ZOO))
def test_five_random_units_recompute_to_the_captured_activation(key, cat):
    for block, branch, c, y, x in _units(key, 0, 5):
        r = unit(cat, key, block, branch, c, y, x, effective=False)
        assert r.agrees, (block, branch, c, y, x, r.captured, r.recomputed)
        assert r.conv is not None or r.passthrough or r.pool  # the arithmetic was shown, not copied
        if r.conv is not None:
            assert r.conv.patch.shape == r.conv.kernel_slice.shape == (r.conv.in_channels, *r.conv.kernel)


@pytest.mark.parametrize("key", list(ZOO))
def test_the_effective_field_lies_inside_the_theoretical_box(key, cat):
    """|d unit / d input| is exactly zero outside the true field: any mass outside the box is
    an off-by-one in its padding or stride."""
    tested = 0
    for block, branch, c, y, x in _units(key, 1, 40):
        r = unit(cat, key, block, branch, c, y, x)
        total = float(r.erf.sum())
        if total == 0:  # a unit that its ReLU zeroed: no gradient reaches the image
            continue
        tested += 1
        assert r.erf_outside <= 1e-6 * total, (block, branch, c, y, x, r.box, r.erf_outside, total)
        assert r.erf_in_box == pytest.approx(1.0, abs=1e-6) and 0 < r.erf_radius90
        if tested == 5:
            break
    assert tested == 5, f"only {tested} of 40 units of {key} let a gradient through"


def test_a_units_hooks_never_meet_another_requests_forward_pass(cat):
    """Its hooks live only while it holds the model's lock: while another request holds the
    lock and runs the model, the unit waits with no hook on it (hooks registered before the lock
    recorded that other image's layers too)."""
    import threading
    import time

    from cnndemo.pipeline import resolve
    from cnndemo.taps import hook_count

    lm = resolve("googlenet")
    holding, seen, done = threading.Event(), [], []

    def other_request():
        with lm.lock:
            holding.set()
            t0 = time.monotonic()
            while hook_count(lm.module) == 0 and time.monotonic() - t0 < 1.0:
                time.sleep(0.01)  # time for a waiting unit to (wrongly) hook the model
            seen.append(hook_count(lm.module))

    other = threading.Thread(target=other_request)
    other.start()
    holding.wait(10)
    worker = threading.Thread(target=lambda: done.append(unit(cat, lm, "inception4b", "3x3", 3, 4, 5)))
    worker.start()
    other.join(30)
    worker.join(60)
    assert seen == [0] and done and done[0].agrees and hook_count(lm.module) == 0


def test_resnet50s_last_stage_reads_427_pixels_and_its_identity_shortcut_passes_the_input_on(cat):
    assert field_boxes(ZOO["resnet50"])["layer4.2"].size == (427, 427)
    r = unit(cat, "resnet50", "layer1.1", "shortcut", 5, 10, 10)
    assert r.passthrough and r.conv is None and r.agrees
    assert r.erf_outside <= 1e-6 * r.erf.sum() and r.erf_in_box == pytest.approx(1.0)


@pytest.mark.parametrize("key, block, branch", [("bn_inception", "inception4e", "pool"),
                                                ("inception_v3", "Mixed_6a", "pool")])
def test_a_path_that_only_pools_shows_its_windows_maximum(key, block, branch, cat):
    """A reduction block's pool path has no convolution: its unit is the largest value of its
    window of the block's input (a module, or a pool the block applies functionally)."""
    for _, _, c, y, x in _units(key, 2, 3):
        r = unit(cat, key, block, branch, c % 64, y % 5, x % 5)
        assert r.conv is None and r.pool.kind == "max" and r.agrees
        assert r.pool.value == pytest.approx(float(r.pool.window.max()))
        assert r.erf_outside <= 1e-6 * r.erf.sum()


def test_a_unit_that_does_not_exist_is_refused_with_what_does(cat):
    with pytest.raises(BadRequest, match="channel below 256 at y below 28"):
        unit(cat, "vgg16", "stage3", None, 999, 0, 0)
    with pytest.raises(BadRequest, match="name one"):
        unit(cat, "googlenet", "inception4b", None, 0, 0, 0)
    with pytest.raises(NotFound, match="no branch 'nope'.*1x1"):
        unit(cat, "googlenet", "inception4b", "nope", 0, 0, 0)
    with pytest.raises(NotFound, match="no block"):
        unit(cat, "googlenet", "stage9", "1x1", 0, 0, 0)


def test_the_unit_command_prints_the_terms_and_the_fields(capsys, cat):
    rc, (row,) = run_json(capsys, "unit", "--model", "googlenet", "--block", "inception4b", "--branch", "3x3",
                          "--channel", "72", "--at", "2", "12", "--json", str(cat))
    assert rc == 0 and row["agrees"]
    assert abs(row["recomputed"] - row["captured"]) <= 1e-4 * abs(row["captured"]) + 1e-5
    conv, bn = row["conv"], row["batchnorm"]
    assert conv["kernel"] == [3, 3] and len(conv["top_inputs"]) == 6
    assert bn["before"] == pytest.approx(conv["value"])
    assert set(row["field"]) == {"box", "clipped", "size", "stride", "image"} and row["field"]["size"] == [139, 139]
    assert 0 < row["effective_field"]["radius90_px"] and row["effective_field"]["in_box"] == pytest.approx(1.0)
    json.dumps(row)  # plain JSON all the way down
    rc, (row,) = run_json(capsys, "unit", "--model", "vgg16", "--block", "stage3", "--channel", "999", "--at", "0",
                          "0", "--json", str(cat))
    assert rc == 1 and "channel below 256" in row["error"]


# ---------------------------------------------------------------------------- paint to hide

def _ink(examples):
    from cnndemo.pipeline import load_for

    pixels = np.asarray(load_for(ZOO["mnist_inception"], examples / "digits" / "six.png").image)
    return pixels[..., 0] < 128  # black ink on white paper


def test_hiding_half_a_drawn_six_changes_what_the_trained_network_says(examples):
    """The digit networks are trained (their weights ship with the app): hiding the left half
    of the six's strokes takes its 6 away; hiding a corner of empty paper changes nothing."""
    six = examples / "digits" / "six.png"
    ink = _ink(examples)
    left = ink & (np.arange(ink.shape[1])[None, :] < ink.shape[1] // 2)
    r = hide(six, "mnist_inception", left)
    assert r.target.label == "6" and r.target.prob > 0.9
    assert r.p_after < 0.1 and r.after.top[0].label != "6" and r.delta < -0.8
    assert r.fill_kind == "paper colour" and r.fill == (255, 255, 255)
    assert np.asarray(r.picture)[left].min() == 255  # the hidden strokes are paper now
    corner = np.zeros_like(ink)
    corner[:20, :20] = True
    assert hide(six, "mnist_inception", corner).delta == pytest.approx(0.0, abs=1e-6)


def test_painting_nothing_or_everything_is_refused_with_what_to_do(cat):
    with pytest.raises(BadRequest, match="Paint over part of the image first"):
        hide(cat, "squeezenet1_0", np.zeros((10, 10), bool))
    with pytest.raises(BadRequest, match="whole image"):
        hide(cat, "squeezenet1_0", np.ones((10, 10), bool))
    r = hide(cat, "squeezenet1_0", np.eye(10, dtype=bool))  # a mask painted at another size is scaled
    assert 0 < r.hidden < 0.2 and r.fill_kind == "mean colour"


def test_the_editors_painted_layer_is_what_is_hidden(examples):
    """The page's handler: the painted layer's alpha is the mask (at the canvas's size)."""
    from PIL import Image

    from cnndemo.ui.unitview import painted_mask, try_hidden

    ink = _ink(examples)
    layer = np.zeros((*ink.shape, 4), np.uint8)
    layer[ink & (np.arange(ink.shape[1])[None, :] < ink.shape[1] // 2)] = (255, 0, 255, 255)
    half = Image.fromarray(layer, "RGBA").resize((140, 140), Image.Resampling.NEAREST)  # a smaller canvas
    editor = {"background": None, "layers": [half], "composite": None}
    assert painted_mask(editor).shape == (140, 140)
    out = try_hidden(str(examples / "digits" / "six.png"), "mnist_inception", None, editor)
    assert "**6**" in out["hide_note"] and "paper colour" in out["hide_note"]
    assert max(out["hide_after"], key=out["hide_after"].get) != "6 (6)"
    with pytest.raises(gr.Error, match="Paint on this image"):
        try_hidden(str(examples / "digits" / "six.png"), "mnist_inception", None, {"layers": []})


def test_the_hide_command_reports_both_top5s_and_each_trys_time(capsys, cat):
    rc, (row,) = run_json(capsys, "hide", "--model", "squeezenet1_0", "--rect", "40", "40", "120", "120",
                          "--repeat", "2", "--json", str(cat))
    assert rc == 0 and len(row["before"]) == len(row["after"]) == 5 and len(row["tries_ms"]) == 2
    assert row["before"][0]["index"] == row["target"]["index"]
    assert row["delta"] == pytest.approx(row["p_after"] - row["target"]["prob"])
    assert 0 < row["hidden_share"] < 1 and row["forward_ms"] > 0


# ---------------------------------------------------------------------------- the page's handlers


def test_the_page_shows_a_units_steps_and_a_click_picks_the_unit_under_it(cat):
    from cnndemo.ui.unitview import pick_unit, show_unit

    out = show_unit(str(cat), "googlenet", "inception4b", "3x3", None, "light presenter")
    assert "equal to 1e-4" in out["unit_steps"] and "input patch" in out["unit_steps"]
    assert out["unit_pick"].size[0] >= 320 and out["unit_field"].size == out["unit_pick"].size
    channel = out["unit_channel"]
    factor = out["unit_pick"].size[0] // 224  # the pick map: the 224 px input scaled by a whole factor
    click = type("Select", (), {"index": [int(100.5 * factor), int(30.5 * factor)]})()
    picked = pick_unit(str(cat), "googlenet", "inception4b", "3x3", None, "light", channel, click)
    # inception4b's maps are 14 x 14 over 224 px: 16 px a unit
    assert f"channel {channel} at ({30 // 16}, {100 // 16})" in picked["unit_steps"]


def test_a_click_on_the_branch_panel_maps_back_to_the_map_under_it():
    """``render.panel_layout`` is where ``block_panel`` draws: each map's square holds that
    map's pixels, and a point maps back to its branch, channel and place."""
    from cnndemo import render
    from cnndemo.branches import explore

    ex = explore(EXAMPLES_DIR / "cat.jpg", "mnist_inception")
    bm = ex.blocks["incept1"]
    for look in (render.LIGHT, render.Look.parse("dark presenter")):
        lay = render.panel_layout(bm, look=look)
        panel = np.asarray(render.block_panel(bm, ex.seen, look=look))
        assert panel.shape[:2] == (lay.height, lay.width)
        for i, maps in enumerate(lay.spots):
            assert [ch for ch, _ in maps] == [None, *bm.branches[i].top_channels]
            for channel, (x, y, side) in maps:
                assert lay.spot_at(x + 0.5 * side, y + 0.25 * side) == (i, channel, 0.25, 0.5)
                if channel is not None:  # the channel's own map, drawn at that square
                    m = bm.branches[i].top_maps[[c for c, _ in maps[1:]].index(channel)]
                    tile = np.asarray(render.colorize(m).resize((side, side), render.Image.Resampling.NEAREST))
                    assert (panel[y:y + side, x:x + side] == tile).all()
        assert lay.spot_at(2, 2) is None and lay.spot_at(2, lay.rows[0][1] + 5) is None
