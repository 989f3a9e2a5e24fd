"""Compare: parameter and FLOP counts against torchvision's metadata, savings, and the timer."""

from __future__ import annotations

import json

import pytest
import torch

from cnndemo import bench
from cnndemo.cli import main
from cnndemo.profile import (
    branch_costs,
    factorisation_savings,
    model_stats,
    reduction_savings,
    stage_costs,
)
from cnndemo.weights import TorchvisionWeights
from cnndemo.zoo import ZOO

TV = [k for k, s in ZOO.items() if isinstance(s.weights, TorchvisionWeights)]


@pytest.mark.parametrize("key", TV)
def test_params_match_torchvision_metadata(key):
    meta = ZOO[key].weights.meta["num_params"]
    ours = model_stats(key).params
    if key == "inception_v3":
        # Built without the training-only AuxLogits head; torchvision's count includes it.
        import torchvision

        aux = sum(p.numel() for p in torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).AuxLogits.parameters())
        assert ours + aux == meta
    else:
        assert ours == meta


@pytest.mark.parametrize("key", TV)
def test_flops_agree_with_torchvision_ops(key):
    gmacs = ZOO[key].weights.meta["_ops"]
    assert model_stats(key).flops / 2 / 1e9 == pytest.approx(gmacs, rel=0.02)


def test_weight_size_and_accuracy_columns():
    g = model_stats("googlenet")
    assert g.acc1 == ZOO["googlenet"].weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    state = ZOO["googlenet"].build_meta().state_dict()
    assert g.weight_mb == pytest.approx(sum(t.numel() * t.element_size() for t in state.values()) / 2**20)
    assert model_stats("bn_inception").acc1 is None


def test_stage_and_branch_costs_add_up():
    spec = ZOO["googlenet"]
    stages = stage_costs(spec)
    assert sum(s.flops for s in stages) == model_stats("googlenet").flops
    block = {s.name: s for s in stages}["inception3a"]
    assert sum(b.flops for b in branch_costs(spec, "inception3a")) == block.flops


def test_reduce_layer_saving_is_computed_from_the_modules():
    model = ZOO["googlenet"].build_meta()
    red, conv = model.inception3a.branch2[0].conv, model.inception3a.branch2[1].conv
    s = {x.where: x for x in reduction_savings(ZOO["googlenet"], "inception3a")}["inception3a/3x3"]
    assert s.params_built == red.weight.numel() + conv.weight.numel()
    assert s.params_alt == red.in_channels * conv.out_channels * 9
    assert 0 < s.flops_saved < 1 and s.flops_alt == 2 * s.params_alt * 28 * 28


def test_factorisations():
    bn = {s.choice: s for s in factorisation_savings(ZOO["bn_inception"])}
    assert "two 3x3 convs in place of one 5x5" in bn
    v3 = {s.choice: s for s in factorisation_savings(ZOO["inception_v3"])}
    s = v3["1x7 + 7x1 in place of one 7x7"]
    assert s.params_alt > s.params_built and s.where.startswith("Mixed_6b")
    fire = factorisation_savings(ZOO["squeezenet1_0"])[0]
    assert fire.where == "fire2" and fire.params_saved > 0.5


def test_cpu_timing_path_and_results_record():
    model = bench.prepare("squeezenet1_0", torch.device("cpu"))
    r = bench.measure(model, "squeezenet1_0", torch.device("cpu"), batch=2, runs=3, warmup=1)
    assert r.p50_ms > 0 and r.p90_ms >= r.p50_ms and r.throughput == pytest.approx(2000 / r.p50_ms, rel=1e-3)
    weights_mb = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    assert r.peak_mem_mb > weights_mb
    timer = bench.PassTimer(torch.device("cpu"))
    timer.time(lambda: sum(range(1000)))
    assert len(timer.times_ms()) == 1 and not timer.cuda
    with pytest.raises(ValueError, match="GPU"):
        bench.measure(model, "squeezenet1_0", torch.device("cpu"), batch=1, precision="fp16", runs=1, warmup=0)


def test_bench_cli_writes_a_results_file(tmp_path, capsys):
    out = tmp_path / "cpu.json"
    rc = main(["bench", "--models", "squeezenet1_0", "--device", "cpu", "--batch", "1", "2",
               "--precision", "fp32", "fp16", "--runs", "3", "--warmup", "1", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    env = data["environment"]
    assert {"device", "device_name", "torch", "threads", "date"} <= set(env)
    ok = [r for r in data["results"] if "error" not in r]
    assert {r["batch"] for r in ok} == {1, 2} and all(r["precision"] == "fp32" for r in ok)
    assert any("error" in r and r["precision"] == "fp16" for r in data["results"])


def test_stats_cli(capsys):
    assert main(["stats", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["key"] for r in rows} == set(ZOO)
    assert all({"key", "params", "weight_mb", "flops", "flops_convention", "acc1", "acc5"} <= set(r) for r in rows)


def test_shipped_reference_results_are_labelled():
    files = bench.reference_files()
    assert files, "assets/benchmarks/ should ship at least the CPU reference file"
    for f in files:
        assert {"device", "device_name", "torch", "date"} <= set(f["environment"])
        assert f["results"]
