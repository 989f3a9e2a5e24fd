"""What a branch channel looks for: optimised inputs against the held-out digits that excite
the channel most, on the three digit networks (their shipped, trained weights)."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
import torch

from cnndemo.errors import BadRequest
from cnndemo.featurevis import (VisSettings, branch_maps, exemplars, held_out_digits, network_input, visualize,
                                visualize_targets)
from cnndemo.runtime import STORE
from cnndemo.zoo import DIGIT_KEYS, ZOO


def _random_targets(key: str, n: int, seed: int) -> list[tuple[str, str, int]]:
    """``n`` random (block, branch, channel) among the network's branches that have layers."""
    lm = STORE.get(key)
    x = network_input(lm, held_out_digits()[:1])
    pool = []
    with torch.inference_mode():
        for b in ZOO[key].blocks:
            for br in b.branches:
                if br.tap_paths:
                    width = branch_maps(lm, x, b.name, br.name)[0].shape[1]
                    pool += [(b.name, br.name, c) for c in range(width)]
    return random.Random(seed).sample(pool, n)


@pytest.mark.parametrize("key", [pytest.param(k, marks=pytest.mark.slow) if k == "d2l_googlenet" else k
                                 for k in DIGIT_KEYS])  # the d2l GoogLeNet at 96 px: about 35 s
def test_an_optimised_digit_excites_its_channel_more_than_any_held_out_digit(key):
    """On each digit network (its shipped, trained weights), 8 random branch channels: the
    optimised image reaches a higher mean activation than the best of the 1,000 held-out digits."""
    assert STORE.get(key).weights.kind == "pretrained"
    report = []
    for vis in visualize_targets(key, _random_targets(key, 8, seed=7)):
        for c, reached, img in zip(vis.channels, vis.activations, vis.images):
            assert img.size == (28, 28) and img.mode == "L"
            report.append((vis.block, vis.branch, c, round(reached, 4), round(exemplars(key, vis.block, vis.branch, c,
                                                                                        k=1).best, 4)))
    print(key, report)
    assert len(report) == 8
    assert all(reached > best for *_, reached, best in report), report


def test_the_activation_reported_is_the_one_the_shown_image_gives():
    """Measured again from the image as shown (8-bit, through the app's own digit pipeline):
    the same activation, to the rounding of the pixels."""
    vis = visualize("mnist_inception", "incept1", "5x5", [3, 11], VisSettings(steps=64))
    lm = STORE.get("mnist_inception")
    shown = torch.stack([torch.from_numpy(np.asarray(im, np.float32) / 255.0)[None] for im in vis.images])
    with torch.inference_mode():
        maps = branch_maps(lm, network_input(lm, shown), "incept1", "5x5")[0]
    again = maps[[0, 1], [3, 11]].flatten(1).mean(1).tolist()
    assert again == pytest.approx(vis.activations, rel=1e-4, abs=1e-6)
    # The weights were laid out channels-last for the optimisation only: they are back as they were.
    assert all(p.is_contiguous() for p in lm.module.parameters())


def test_exemplars_are_ranked_and_cropped_to_the_units_field():
    ex = exemplars("mnist_inception", "incept2", "1x1", 5, k=9)
    assert ex.activations == sorted(ex.activations, reverse=True) and len(set(ex.indices)) == 9
    for (top, left, bottom, right), img in zip(ex.boxes, ex.images):
        assert 0 <= top <= bottom <= 27 and 0 <= left <= right <= 27
        w, h = right - left + 1, bottom - top + 1
        assert img.width % w == 0 and img.height % h == 0 and img.width // w == img.height // h


def test_bad_requests_say_what_is_wrong():
    with pytest.raises(BadRequest, match="channels 0 to"):
        visualize("mnist_inception", "incept1", "5x5", [9999], VisSettings(steps=2))
    with pytest.raises(BadRequest, match="passes its input on"):
        visualize("mnist_resnet", "rblock1", "shortcut", [0], VisSettings(steps=2))
    with pytest.raises(BadRequest, match="reads photos"):
        exemplars("googlenet", "inception3a", "1x1", 0)


def test_held_out_statistics_are_kept_on_disk_beside_the_weights_cache(tmp_path, setenv):
    from cnndemo import featurevis
    from cnndemo.ranking import cache_file

    setenv("TORCH_HOME", str(tmp_path / "torch"))
    lm = STORE.get("mnist_inception")
    featurevis.held_out_ranking.cache_clear()
    first = exemplars(lm, "incept2", "5x5", 7, k=5)
    path = cache_file(lm, "held-out")
    assert path is not None and path.is_file() and path.is_relative_to(tmp_path / "torch")
    featurevis.held_out_ranking.cache_clear()
    stamp = path.stat().st_mtime_ns
    again = exemplars(lm, "incept2", "5x5", 7, k=5)  # read back, not computed
    assert (again.indices, again.activations, again.peaks) == (first.indices, first.activations, first.peaks)
    assert path.stat().st_mtime_ns == stamp
    path.write_bytes(b"not a tensor file")  # damaged: computed again and rewritten
    featurevis.held_out_ranking.cache_clear()
    assert exemplars(lm, "incept2", "5x5", 7, k=5).indices == first.indices
    assert path.stat().st_size > 1000
    featurevis.held_out_ranking.cache_clear()


def test_a_ranking_keeps_each_channels_best_inputs_across_its_batches():
    """The held-out digits are ranked 250 at a time, keeping only each channel's best 9: the
    same 9, in the same order, as ranking all 1,000 digits at once, with the same strongest unit."""
    from cnndemo.featurevis import held_out_ranking

    lm = STORE.get("mnist_inception")
    ranking = held_out_ranking(lm)
    with torch.inference_mode():
        maps = branch_maps(lm, network_input(lm, held_out_digits()), "incept2", "double_3x3")[0].flatten(2)
    means, peaks = maps.mean(2), maps.argmax(2)
    w = ranking.shapes["incept2/double_3x3"][1]
    for channel in (0, 5, maps.shape[1] - 1):
        best = ranking.best("incept2", "double_3x3", channel)
        order = torch.argsort(means[:, channel], descending=True)[:9].tolist()
        assert [i for i, _, _ in best] == order
        assert [a for _, a, _ in best] == pytest.approx(means[order, channel].tolist(), rel=1e-5)
        assert [p for _, _, p in best] == [divmod(int(peaks[i, channel]), w) for i in order]


def _photo_folder(folder, examples):
    (folder / "sub").mkdir(parents=True)
    for name in ("cat.jpg", "coffee.jpg", "rocket.jpg"):
        (folder / name).write_bytes((examples / name).read_bytes())
    (folder / "sub" / "astronaut.jpg").write_bytes((examples / "astronaut.jpg").read_bytes())
    (folder / "notes.png").write_text("not an image")
    return folder


@pytest.mark.parametrize("batch", [1, 3])
def test_a_folder_of_images_gives_a_photo_networks_exemplars(tmp_path, examples, monkeypatch, batch):
    """Ranked by the channel's mean activation (each checked against the branch map of that
    image alone), cropped to the strongest unit's field, whatever the batches it was ranked in;
    unreadable files are counted, a missing or empty folder is a sentence."""
    from cnndemo import ranking
    from cnndemo.featurevis import folder_exemplars
    from cnndemo.pipeline import prepare

    monkeypatch.setattr(ranking, "BATCH", batch)
    _photo_folder(tmp_path, examples)
    ex = folder_exemplars("squeezenet1_0", "fire4", "expand3x3", 3, tmp_path, k=9)
    assert ex.skipped == 1 and len(ex.sources) == 4 and ex.activations == sorted(ex.activations, reverse=True)
    lm = STORE.get("squeezenet1_0")
    with torch.inference_mode():
        for src, act in zip(ex.sources, ex.activations):
            alone = branch_maps(lm, prepare(src, lm).x, "fire4", "expand3x3")[0][0, 3].mean()
            assert float(alone) == pytest.approx(act, rel=1e-5)
    for top, left, bottom, right in ex.boxes:
        assert 0 <= top <= bottom < 224 and 0 <= left <= right < 224
    with pytest.raises(BadRequest, match="no folder"):
        folder_exemplars("squeezenet1_0", "fire4", "expand3x3", 3, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadRequest, match="holds no images"):
        folder_exemplars("squeezenet1_0", "fire4", "expand3x3", 3, tmp_path / "empty")


def _wait(condition, timeout: float = 120.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_the_apps_folder_is_ranked_in_the_background_and_again_when_it_changes(tmp_path, examples):
    """``FolderIndex``: one background ranking per network (asked for twice, run once), the same
    as ranking the folder directly; the header line says how far it got; a file added to the
    folder starts a new ranking."""
    from cnndemo.ranking import FolderIndex, folder_ranking

    folder = _photo_folder(tmp_path / "photos", examples)
    index = FolderIndex(folder)
    try:
        index.start_with("squeezenet1_0")
        lm = STORE.get("squeezenet1_0")
        _wait(lambda: index.jobs(), what="the first job")
        job = index.job(lm)
        assert index.job(lm) is job and len(index.jobs()) == 1
        _wait(lambda: not index.running, what="the ranking")
        assert job.done == job.total == 5 and not job.error and job.ranking is not None
        direct = folder_ranking(lm, folder)
        assert job.ranking.sources == direct.sources and len(job.ranking.skipped) == 1
        assert job.ranking.best("fire4", "expand3x3", 3) == direct.best("fire4", "expand3x3", 3)
        assert index.describe() == f"Exemplars from {folder.name} ranked for {lm.spec.name}."
        (folder / "sub" / "grace_hopper.jpg").write_bytes((examples / "grace_hopper.jpg").read_bytes())
        again = index.job(lm)
        assert again is not job and again.fingerprint != job.fingerprint
        _wait(lambda: not index.running, what="the second ranking")
        assert len(again.ranking.sources) == 5 and any("grace_hopper" in s for s in again.ranking.sources)
    finally:
        index.stop()


def test_the_header_names_the_network_being_ranked_not_one_waiting_in_line(tmp_path, examples, monkeypatch):
    """The app's first network is loaded by the background thread; a network a student asks for
    meanwhile waits in the queue behind it. While the first is ranked, the header line names it
    and counts the second as waiting."""
    import threading

    from cnndemo import ranking

    loading, ranking_gate = threading.Event(), threading.Event()
    real_resolve, real_ranking = ranking.resolve, ranking.folder_ranking

    def slow_load(model):
        assert loading.wait(120)
        return real_resolve(model)

    def held(*args, **kwargs):
        assert ranking_gate.wait(120)
        return real_ranking(*args, **kwargs)

    monkeypatch.setattr(ranking, "resolve", slow_load)
    monkeypatch.setattr(ranking, "folder_ranking", held)
    index = ranking.FolderIndex(_photo_folder(tmp_path / "photos", examples))
    try:
        first, second = STORE.get("squeezenet1_0"), STORE.get("mnist_inception")
        index.start_with(first.key)  # the thread loads it (held above) before it knows its job
        index.job(second)
        loading.set()
        _wait(lambda: any(j.started for j in index.jobs()), what="the first job to start")
        said = index.describe()
        assert f"for {first.spec.name} in the background" in said and "1 more network waiting" in said, said
        ranking_gate.set()
        _wait(lambda: not index.running, what="both rankings")
        assert index.describe() == f"Exemplars from photos ranked for {second.spec.name}, {first.spec.name}."
    finally:
        loading.set()
        ranking_gate.set()
        index.stop()


def test_explore_fills_in_a_photo_networks_exemplars_once_the_folder_is_ranked(tmp_path, examples, cat, setenv,
                                                                                monkeypatch):
    """While the app's folder is ranked, the view shows the optimised images and says how far
    the ranking got, its timer on; the timer's tick then shows the photos' best crops beside them
    with a verdict each, and stops. Without a folder, the view says there is none."""
    import threading

    from cnndemo import ranking
    from cnndemo.ui import featureview

    monkeypatch.setattr(featureview, "_settings", lambda digit: (1, VisSettings(steps=4)))
    gate, real = threading.Event(), ranking.folder_ranking

    def held(*args, **kwargs):
        assert gate.wait(120)
        return real(*args, **kwargs)

    monkeypatch.setattr(ranking, "folder_ranking", held)
    setenv("CNNDEMO_EXEMPLARS", None)
    shown = featureview.look_for(str(cat), "squeezenet1_0", "fire4", None, "light", progress=None)
    assert "no folder of photos was named" in shown["lookfor_note"] and not shown["lookfor_timer"].active
    setenv("CNNDEMO_EXEMPLARS", str(_photo_folder(tmp_path / "photos", examples)))
    index = ranking.app_index(str(tmp_path / "photos"))
    try:
        shown = featureview.look_for(str(cat), "squeezenet1_0", "fire4", None, "light", progress=None)
        assert "in the background: 0 of 5" in shown["lookfor_note"] and shown["lookfor_timer"].active
        assert "photo" not in shown["lookfor_note"].split("\n\n")[1]
        gate.set()
        _wait(lambda: not index.running, what="the ranking")
        ticked = featureview.refresh(str(cat), "squeezenet1_0", "fire4", None, "light")
        lines = ticked["lookfor_note"].split("\n\n")[1].splitlines()
        assert len(lines) == 2 and all(("beats every photo" in ln) or ("weak" in ln) for ln in lines), lines
        assert "1 file(s)" in ticked["lookfor_note"] and not ticked["lookfor_timer"].active
        assert ticked["lookfor_grid"].width > shown["lookfor_grid"].width  # three crops per row beside the image
        # Another block since: nothing is optimised on a tick, and the timer stops.
        other = featureview.refresh(str(cat), "squeezenet1_0", "fire3", None, "light")
        assert set(other) == {"lookfor_timer"} and not other["lookfor_timer"].active
    finally:
        gate.set()
        index.stop()


def test_an_exemplar_folder_that_cannot_be_used_stops_the_app_with_the_reason(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    (tmp_path / "empty").mkdir()
    for arg, said in ((tmp_path / "missing", "There is no folder"), (tmp_path / "empty", "holds no images")):
        r = subprocess.run([sys.executable, str(ROOT / "app.py"), "--offline", "--exemplars", str(arg)],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert r.returncode == 2 and f"--exemplars {arg}" in r.stderr and said in r.stderr, r.stderr[-500:]


def test_the_grid_keeps_a_crops_shape():
    """A field cut by the image's edge is not square: the grid fits it into its tile in its own
    shape, centred, the paper showing either side, instead of stretching it."""
    from PIL import Image

    from cnndemo import render

    tall = Image.new("RGB", (10, 20), (200, 0, 0))
    grid = render.tile_grid([("row", [(tall, "tall")])], tile=100)
    x0, y0 = int(130 * render.LIGHT.scale), 8  # the first tile's corner (label column, padding)
    paper = render._rgb(render.LIGHT.paper)
    assert grid.getpixel((x0 + 10, y0 + 50)) == paper and grid.getpixel((x0 + 90, y0 + 50)) == paper
    assert grid.getpixel((x0 + 50, y0 + 50)) == (200, 0, 0) and grid.getpixel((x0 + 50, y0 + 2)) == (200, 0, 0)
