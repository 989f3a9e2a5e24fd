"""What a branch channel looks for: optimised inputs against the held-out digits that excite
the channel most, on the three digit networks (their shipped, trained weights)."""

from __future__ import annotations

import random

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

    setenv("TORCH_HOME", str(tmp_path / "torch"))
    lm = STORE.get("mnist_inception")
    featurevis._held_out_stats.cache_clear()
    first = exemplars(lm, "incept2", "5x5", 7, k=5)
    path = featurevis.stats_file(lm)
    assert path is not None and path.is_file() and path.is_relative_to(tmp_path / "torch")
    featurevis._held_out_stats.cache_clear()
    stamp = path.stat().st_mtime_ns
    again = exemplars(lm, "incept2", "5x5", 7, k=5)  # read back, not computed
    assert (again.indices, again.activations, again.peaks) == (first.indices, first.activations, first.peaks)
    assert path.stat().st_mtime_ns == stamp
    path.write_bytes(b"not a tensor file")  # damaged: computed again and rewritten
    featurevis._held_out_stats.cache_clear()
    assert exemplars(lm, "incept2", "5x5", 7, k=5).indices == first.indices
    assert path.stat().st_size > 1000
    featurevis._held_out_stats.cache_clear()


def test_a_folder_of_images_gives_a_photo_networks_exemplars(tmp_path, examples):
    """Ranked by the channel's mean activation (each checked against the branch map of that
    image alone), cropped to the strongest unit's field; unreadable files are counted, a missing
    or empty folder is a sentence."""
    from cnndemo.featurevis import folder_exemplars
    from cnndemo.pipeline import prepare

    (tmp_path / "sub").mkdir()
    for name in ("cat.jpg", "coffee.jpg", "rocket.jpg"):
        (tmp_path / name).write_bytes((examples / name).read_bytes())
    (tmp_path / "sub" / "astronaut.jpg").write_bytes((examples / "astronaut.jpg").read_bytes())
    (tmp_path / "notes.png").write_text("not an image")
    ex = folder_exemplars("squeezenet1_0", "fire4", "expand3x3", 3, tmp_path, k=3)
    assert ex.skipped == 1 and len(ex.sources) == 3 and ex.activations == sorted(ex.activations, reverse=True)
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
