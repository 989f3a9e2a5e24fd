"""Branch capture: exact, complete, honest labels, isolated per request, and no hooks left."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from cnndemo import cache
from cnndemo.branches import ablate, block_infos, explore
from cnndemo.runtime import STORE, build_random
from cnndemo.taps import hook_count, run_with_taps
from cnndemo.zoo import ZOO
from images_factory import gradient, save


@pytest.mark.parametrize("key", list(ZOO))
def test_branches_reproduce_every_block_output_exactly(key):
    spec = ZOO[key]
    model = build_random(spec)
    x = torch.randn(1, *spec.input_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        plain = model(x)
        logits, raw = run_with_taps(model, x, spec.blocks)
    assert torch.equal(logits, plain), "capturing must not change the forward pass"
    assert set(raw) == {b.name for b in spec.blocks}
    for block in spec.blocks:
        rb = raw[block.name]
        rebuilt = block.combine(rb.branches)
        assert torch.equal(rebuilt, rb.output), f"{key}/{block.name}: branches do not rebuild the output"
        if block.merge == "concat":
            widths = [t.shape[1] for t in rb.branches]
            assert sum(widths) == rb.output.shape[1]
    assert hook_count(model) == 0


@pytest.mark.parametrize("key", list(ZOO))
def test_channel_ranges_tile_the_output(key):
    for info in block_infos(ZOO[key]):
        if info.merge != "concat":
            assert all(b.channels is None for b in info.branches)
            continue
        lo = 0
        for b in info.branches:
            assert b.channels[0] == lo and b.channels[1] >= lo
            assert b.channels[1] - b.channels[0] + 1 == b.shape[0]
            lo = b.channels[1] + 1
        assert lo == info.shape[0]


def test_declared_block_coverage():
    names = lambda k: [b.name for b in ZOO[k].blocks]  # noqa: E731
    assert names("googlenet") == [f"inception{b}" for b in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")]
    assert len(names("bn_inception")) == 10
    assert names("inception_v3")[0] == "Mixed_5b" and names("inception_v3")[-1] == "Mixed_7c"
    assert len(names("inception_v3")) == 11
    assert len(names("resnet50")) == 16 and len(names("squeezenet1_0")) == 8
    assert not ZOO["vgg16"].has_branches and len(names("vgg16")) == 5
    assert [len(b.branches) for b in ZOO["bn_inception"].blocks] == [4, 4, 3, 4, 4, 4, 4, 3, 4, 4]


def test_googlenet_third_branch_is_labelled_by_its_real_kernel():
    model = build_random(ZOO["googlenet"])
    conv = model.inception4a.branch3[1].conv
    assert conv.kernel_size == (3, 3)  # torchvision's known "5x5" that is 3x3
    info = {i.name: i for i in block_infos(ZOO["googlenet"])}["inception4a"]
    third = info.branches[2]
    assert third.name == "3x3b"
    assert third.path == "1x1 reduce 16 -> 3x3 48" and "5x5" not in third.path
    assert "5x5" in third.note  # the note says why


def test_inception_v3_split_and_functional_branches():
    infos = {i.name: i for i in block_infos(ZOO["inception_v3"])}
    e = {b.name: b for b in infos["Mixed_7b"].branches}
    assert e["3x3"].path == "1x1 reduce 384 -> (1x3 384 || 3x1 384)" and e["3x3"].shape[0] == 768
    b = {x.name: x for x in infos["Mixed_6a"].branches}
    assert b["pool"].path == "3x3/2 max-pool" and b["pool"].params == 0
    c = {x.name: x for x in infos["Mixed_6b"].branches}
    assert c["7x7"].path == "1x1 reduce 128 -> 1x7 128 -> 7x1 192"
    assert c["pool_proj"].path.startswith("3x3 avg-pool")


def test_resnet_residual_plus_shortcut_is_the_pre_relu_sum():
    spec = ZOO["resnet50"]
    model = build_random(spec)
    x = torch.randn(1, 3, 224, 224)
    pre_relu = {}
    block = model.layer2[0]
    # The Bottleneck's final ReLU is the shared self.relu: record the tensor fed to its last call.
    h = block.relu.register_forward_pre_hook(lambda m, i: pre_relu.__setitem__("last", i[0].clone()))
    try:
        with torch.inference_mode():
            _, raw = run_with_taps(model, x, spec.blocks)
    finally:
        h.remove()
    residual, shortcut = raw["layer2.0"].branches
    assert torch.equal(residual + shortcut, pre_relu["last"])


def test_explore_is_cached_and_runs_one_forward(tmp_path, cat):
    cache.reset_all()
    lm = STORE.get("googlenet")
    calls = []
    h = lm.module.register_forward_pre_hook(lambda m, i: calls.append(1))
    try:
        a = explore(cat, lm)
        b = explore(cat, lm)
    finally:
        h.remove()
    # The second call is served from the cache: the same maps and prediction, no forward pass.
    assert a.blocks is b.blocks and len(calls) == 1
    assert b.prediction.cached and not a.prediction.cached and b.prediction.top == a.prediction.top
    assert set(a.blocks) == {blk.name for blk in lm.spec.blocks}
    for bm in a.blocks.values():
        assert sum(bm.shares().values()) == pytest.approx(1.0, abs=1e-5)
        for br in bm.branches:
            assert br.mean_map.shape == br.info.shape[1:] and br.top_maps.shape[0] == len(br.top_channels)


def test_ablation_changes_logits_and_never_the_shared_model(cat):
    lm = STORE.get("bn_inception")
    x_pred = explore(cat, lm, use_cache=False).prediction
    before_state = {k: v.clone() for k, v in lm.module.state_dict().items()}
    res = ablate(cat, lm, "inception4c", "double_3x3")
    assert res.before.top == x_pred.top
    assert [t.prob for t in res.after.top] != [t.prob for t in res.before.top]
    mean = ablate(cat, lm, "inception4c", "double_3x3", mode="mean")
    assert mean.after.top != res.after.top
    after_state = lm.module.state_dict()
    assert all(torch.equal(before_state[k], after_state[k]) for k in before_state)
    assert hook_count(lm.module) == 0
    assert explore(cat, lm, use_cache=False).prediction.top == x_pred.top


def test_ablation_refusals(cat):
    with pytest.raises(ValueError, match="no parallel branches"):
        ablate(cat, "vgg16", "stage2", "output")
    with pytest.raises(KeyError, match="no branch"):
        ablate(cat, "googlenet", "inception4a", "5x5")
    with pytest.raises(ValueError, match="mode"):
        ablate(cat, "googlenet", "inception4a", "1x1", mode="half")


def test_concurrent_captures_never_mix(tmp_path, cat):
    other = save(gradient(300, 200), tmp_path / "g.png")
    jobs = [("googlenet", cat), ("googlenet", str(other)), ("squeezenet1_0", cat), ("squeezenet1_0", str(other))]
    serial = {j: explore(j[1], j[0], use_cache=False) for j in jobs}
    results: dict = {}
    errors = []

    def work(i, job):
        try:
            results[(i, job)] = explore(job[1], job[0], use_cache=False)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i, j)) for i in range(3) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for (_i, job), ex in results.items():
        ref = serial[job]
        assert ex.prediction.top == ref.prediction.top
        for name, bm in ex.blocks.items():
            for a, b in zip(bm.branches, ref.blocks[name].branches):
                assert np.array_equal(a.mean_map, b.mean_map)
    for key in ("googlenet", "squeezenet1_0"):
        assert hook_count(STORE.get(key).module) == 0

