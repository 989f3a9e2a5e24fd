"""Compare: parameter and FLOP counts against torchvision's metadata, savings, and the timer."""

from __future__ import annotations

import json

import pytest
import torch

from cnndemo import bench, costs
from cnndemo.cli import main
from cnndemo.costs import (
    branch_costs,
    factorisation_savings,
    model_stats,
    reduction_savings,
    stage_costs,
)
from cnndemo.zoo import PUBLISHED_KEYS, ZOO

TV = list(PUBLISHED_KEYS)


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


def _bn(c: int) -> int:
    return 2 * c  # BatchNorm's scale and shift


def test_reduce_layer_saving_counts_parameters_as_the_branch_table_does():
    model = ZOO["googlenet"].build_meta()
    red, conv = model.inception3a.branch2[0].conv, model.inception3a.branch2[1].conv
    s = {x.where: x for x in reduction_savings(ZOO["googlenet"], "inception3a")}["inception3a/3x3"]
    # 1x1 192->96 and 3x3 96->128, no conv bias, BatchNorm after each: 18,432 + 192 + 110,592 + 256.
    assert s.params_built == 192 * 96 + _bn(96) + 9 * 96 * 128 + _bn(128) == 129_472
    assert s.params_built == {b.branch: b for b in branch_costs(ZOO["googlenet"], "inception3a")}["3x3"].params
    assert s.params_alt == 9 * red.in_channels * conv.out_channels + _bn(128)
    assert 0 < s.flops_saved < 1 and s.flops_alt == 2 * 9 * 192 * 128 * 28 * 28


def test_two_3x3_against_one_5x5_compares_equal_widths_with_the_textbook_beside_it():
    """VGG's argument: at C channels in and out, two 3x3 hold 18 C^2 weights, one 5x5 holds 25 C^2:
    a 28% saving. The example must be a like-for-like one (not 3->64->64, which costs more)."""
    vgg = {s.choice: s for s in factorisation_savings(ZOO["vgg16"])}["two 3x3 convs in place of one 5x5"]
    assert vgg.built == "3x3 256->256 -> 3x3 256->256" and vgg.alternative == "5x5 256->256"
    assert vgg.params_built == 2 * (9 * 256 * 256 + 256) and vgg.params_alt == 25 * 256 * 256 + 256
    assert vgg.textbook_saved == pytest.approx(0.28)
    assert vgg.params_saved == pytest.approx(0.28, abs=0.002) and vgg.params_saved > 0
    assert "equal widths" in vgg.why
    # Inception-v3's first double-3x3 reads 64 channels, widens to 96, outputs 96: as built it
    # saves less than the textbook figure, and says why.
    v3 = {s.choice: s for s in factorisation_savings(ZOO["inception_v3"])}
    s = v3["two 3x3 convs in place of one 5x5"]
    assert s.built == "3x3 64->96 -> 3x3 96->96" and s.alternative == "5x5 64->96"
    built = 9 * 64 * 96 + _bn(96) + 9 * 96 * 96 + _bn(96)
    alt = 25 * 64 * 96 + _bn(96)
    assert (s.params_built, s.params_alt) == (built, alt)
    assert s.params_saved == pytest.approx(1 - built / alt) and s.params_saved < s.textbook_saved
    assert "intermediate width (96) is wider than the input (64)" in s.why


def test_factorisations():
    v3 = {s.choice: s for s in factorisation_savings(ZOO["inception_v3"])}
    s = v3["1x7 + 7x1 in place of one 7x7"]
    assert s.textbook_saved == pytest.approx(1 - 14 / 49)
    assert s.params_alt > s.params_built and s.where.startswith("Mixed_6b")
    assert "two 3x3 convs in place of one 5x5" in {s.choice for s in factorisation_savings(ZOO["bn_inception"])}
    fire = factorisation_savings(ZOO["squeezenet1_0"])[0]
    assert fire.where == "fire2" and fire.params_saved > 0.5 and fire.textbook_saved is None


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


def test_cudagraph_is_refused_on_the_cpu_with_the_reason(capsys):
    cpu = torch.device("cpu")
    assert bench.default_modes(cpu) == ("eager",)
    with pytest.raises(ValueError, match="CUDA graph records the GPU kernels"):
        bench.check_setting(bench.Setting(1, mode="cudagraph"), cpu)
    with pytest.raises(ValueError, match="mode must be one of eager, cudagraph, compile"):
        bench.check_setting(bench.Setting(1, mode="fast"), cpu)
    with pytest.raises(SystemExit, match="bench: cudagraph needs a CUDA device"):
        main(["bench", "--models", "squeezenet1_0", "--device", "cpu", "--mode", "eager", "cudagraph", "--runs", "3"])


def test_half_precision_casts_a_copy_of_the_weights_and_the_input():
    cpu = torch.device("cpu")
    model = bench.prepare("mnist_resnet", cpu)
    cast = bench.measure(model, "mnist_resnet", cpu, batch=2, precision="bf16", runs=3, warmup=1)
    assert cast.half == bench.HALF_CAST and cast.channels_last and cast.mode == "eager"
    auto = bench.measure(model, "mnist_resnet", cpu, batch=2, precision="bf16", autocast=True, runs=3, warmup=1)
    assert auto.half == "autocast" and not auto.channels_last
    plain = bench.measure(model, "mnist_resnet", cpu, batch=2, channels_last=True, runs=3, warmup=1)
    assert plain.half is None and plain.channels_last
    variants = bench._Variants(model)
    half = variants.get(torch.bfloat16, True, False)
    assert next(half.parameters()).dtype == torch.bfloat16 and next(model.parameters()).dtype == torch.float32
    conv = next(m for m in half.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert variants.get(torch.bfloat16, True, False) is half  # made once, shared by the settings


def test_every_result_is_placed_against_the_measured_peak():
    data = bench.run_benchmark(["mnist_resnet"], device="cpu", batches=(4,), precisions=("fp32", "bf16"), runs=3,
                               warmup=1)
    peak = data["environment"]["peak"]
    assert peak["fp32_matmul_tflops"] > 0 and peak["bf16_matmul_tflops"] > 0 and peak["copy_gb_s"] > 0
    assert "tf32_matmul_tflops" not in peak  # a GPU-only ceiling
    assert data["settings"]["modes"] == ["eager"]
    for r in data["results"]:
        flops = costs.forward_flops("mnist_resnet", 28, 28)
        assert r["gflops"] == pytest.approx(flops / 1e9, rel=1e-3)
        assert r["tflops"] == pytest.approx(flops * 4 / (r["p50_ms"] / 1000) / 1e12, rel=1e-2)
        ceiling = peak[f"{r['precision']}_matmul_tflops"]
        assert r["pct_peak_of"] == f"{r['precision']} matmul"
        assert r["pct_peak"] == pytest.approx(100 * r["tflops"] / ceiling, rel=2e-2, abs=0.01)


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


def test_settings_are_timed_interleaved_with_their_spread(monkeypatch):
    """Round after round, every setting runs once per round: a burst of load lands on all of them."""
    model = bench.prepare("squeezenet1_0", torch.device("cpu"))
    order = []
    real = bench.PassTimer.time

    def spy(self, fn):
        order.append(id(self))
        return real(self, fn)

    monkeypatch.setattr(bench.PassTimer, "time", spy)
    settings = [bench.Setting(1), bench.Setting(2), bench.Setting(1, resolution=96)]
    res = bench.measure_interleaved(model, "squeezenet1_0", torch.device("cpu"), settings, runs=4, warmup=1)
    assert [r.batch for r in res] == [1, 2, 1] and res[2].input_size == (3, 96, 96)
    assert len(order) == 12 and len(set(order[:3])) == 3 and len(set(order[3:6])) == 3  # each round: all three
    assert order[0] != order[3]  # the order rotates between rounds
    for r in res:
        assert 0 < r.p10_ms <= r.p50_ms <= r.p90_ms and r.runs == 4
    with pytest.raises(ValueError, match="at least 3"):
        bench.scaling("mnist_resnet", device="cpu", runs=1)


def test_noise_is_said_plainly():
    steady = [{"model": "googlenet", "batch": 1, "p10_ms": 10.0, "p50_ms": 10.5, "p90_ms": 11.0}]
    assert bench.noise_note(steady) is None
    wide = steady + [{"model": "googlenet", "batch": 16, "p10_ms": 60.0, "p50_ms": 90.0, "p90_ms": 130.0}]
    note = bench.noise_note(wide)
    assert "noisy" in note and "batch 16" in note and "2.2x" in note
    assert "2 other requests were running" in bench.noise_note(steady, others_running=2)


def test_receptive_fields_match_the_published_values():
    """VGG-16: conv5_3 sees 196 px, pool5 212 px at stride 32; ResNet-50's last block 427 px."""
    from cnndemo.anatomy import receptive_fields

    vgg = receptive_fields(ZOO["vgg16"])
    assert (vgg["features.0"].size, vgg["features.0"].stride) == ((3, 3), (1, 1))
    assert vgg["features.28"].size == (196, 196) and vgg["features.30"].size == (212, 212)
    assert vgg["features.30"].stride == (32, 32) and vgg["avgpool"].whole_image
    res = receptive_fields(ZOO["resnet50"])
    assert res["layer4.2"].size == (427, 427) and res["layer4.2"].stride == (32, 32)
    # Inception-v3's 1x7 / 7x1 paths grow each axis by 6 x the stride per conv.
    v3 = receptive_fields(ZOO["inception_v3"])
    assert v3["Mixed_6b"].size[0] - v3["Mixed_6a"].size[0] == 2 * 6 * 16


def test_gpu_reference_is_shipped_labelled_and_explained_from_its_numbers(monkeypatch):
    from cnndemo.costs import ops_per_forward
    from cnndemo.ui import compare

    assert ops_per_forward("googlenet") > 4 * ops_per_forward("vgg16")  # many small ops vs few large ones
    rows, note = compare.gpu_reference()
    assert len(rows) == 6 and "H100" in note and "shipped as a reference" in note
    google = rows[0]
    assert float(google[4]) < float(google[3])  # the CUDA graph beats the eager loop at batch 1
    assert "launch overhead" in note
    # The paragraph follows the figures: swap VGG-16's batch-1 time and it says so.
    gpu = next(f for f in bench.reference_files() if f["environment"]["device"] == "cuda")
    for r in gpu["results"]:
        if r["model"] == "vgg16" and r["batch"] == 1 and r.get("mode") == "eager" and r["precision"] == "fp32":
            r["p50_ms"] = 99.0
    monkeypatch.setattr(compare, "reference_files", lambda: [gpu])
    assert "VGG-16 (30.9 GFLOPs) trails GoogLeNet" in compare.gpu_reference()[1]
    assert "99.00 ms" in compare.gpu_reference()[1]


def test_live_compare_rows_show_mode_and_share_of_peak():
    from cnndemo.ui.compare import RESULT_HEADERS, run_compare

    import asyncio

    out = asyncio.run(run_compare(["squeezenet1_0"], "cpu", [1, 2], "bf16", False, False, 3))
    rows, note, data = out["results"], out["note"], out["json"]
    live = [dict(zip(RESULT_HEADERS, r)) for r in rows if r[0] == "live"]
    assert [r["batch"] for r in live] == [1, 2] and all(r["mode"] == "eager" for r in live)
    assert all(r["precision"] == "bf16 CL" for r in live)  # cast half precision runs channels_last
    assert all(float(r["% of peak"]) > 0 for r in live)
    assert data["environment"]["peak"]["bf16_matmul_tflops"] > 0 and "Measured live" in note


def test_vgg_states_its_own_argument_three_3x3_against_one_7x7():
    from cnndemo.costs import factorisation_savings
    from cnndemo.zoo import get_spec

    row = next(s for s in factorisation_savings(get_spec("vgg16")) if s.choice == "three 3x3 convs in place of one 7x7")
    assert row.textbook_saved == pytest.approx(1 - 27 / 49)
    # Equal widths (512): weights 3 x 9 against 49 per channel pair, biases aside.
    assert row.params_built / row.params_alt == pytest.approx(27 / 49, abs=0.002)


def test_a_strided_bottleneck_says_why_flops_fall_less_than_parameters():
    from cnndemo.costs import reduction_savings
    from cnndemo.zoo import get_spec

    row = reduction_savings(get_spec("resnet50"), "layer3.0")[0]
    assert 1 - row.flops_built / row.flops_alt < 1 - row.params_built / row.params_alt
    assert "runs at 28x28, before the stride-2 3x3" in row.why


def test_live_measurements_say_how_long_they_take_before_the_click():
    from cnndemo.bench import estimated_seconds, benchmark_tflop
    from cnndemo.ui import compare

    quick = compare.QUICK
    tflop = benchmark_tflop(quick["models"], tuple(quick["batches"]), ("eager",), quick["runs"], 2)
    seconds, _name = estimated_seconds(tflop, "cpu", len(quick["models"]))
    assert seconds < 30  # the quick preset fits in 30 s at the shipped CPU reference's rate
    assert "Estimated: about" in compare.bench_estimate(quick["models"], "cpu", quick["batches"], False, quick["runs"])
    every = [k for k, s in compare.ZOO.items() if s.inputs.kind == "photo"]
    assert "Over this server's limit" in compare.bench_estimate(every, "cpu", [1, 8, 32, 64], False, 50)
    assert "timed passes per point" in compare.scaling_estimate("vgg16")


def test_a_1x1_that_widens_is_called_a_widening_not_a_reduction():
    from cnndemo.costs import reduction_savings
    from cnndemo.zoo import get_spec

    rows = {r.where: r for r in reduction_savings(get_spec("mnist_inception"), "incept1")}
    row = rows["incept1/5x5"]
    assert row.choice == "1x1 widening" and "widens 10 channels to 16" in row.why and "narrows" not in row.why
    assert row.params_built > row.params_alt  # it costs more: the "saving" is negative
    narrowing = reduction_savings(get_spec("googlenet"), "inception3a")[0]
    assert narrowing.choice == "1x1 reduction" and "narrows 192 channels to" in narrowing.why


def test_a_model_built_without_its_auxiliary_heads_shows_the_published_files_size_beside_its_own():
    from cnndemo.ui.compare import stats_rows

    for key in ("googlenet", "inception_v3"):
        s = model_stats(key)
        published = ZOO[key].weights.enum.meta["_file_size"]
        assert s.file_mb == published > s.weight_mb  # the file also holds the training-only heads
        row = next(r for r in stats_rows() if r[0] == ZOO[key].name)
        assert row[2] == f"{s.weight_mb:.1f} (file {published:.1f})"
    assert model_stats("resnet50").file_mb is None  # nothing left out: its size is the file's


def test_on_zerogpu_the_benchmark_is_a_gpu_task_with_a_computed_duration(setenv, monkeypatch):
    """ZeroGPU (SPACES_ZERO_GPU set): "auto" is the CPU, and Compare's CUDA benchmark runs as a
    spaces.GPU task: its function and arguments cross a pickle boundary, its duration comes from
    the work, and the note says the figures are not a benchmark. (A stand-in for ``spaces``
    runs the task's function on this CPU, after the same pickling.)"""
    import asyncio
    import pickle
    import sys
    import types

    from cnndemo import runtime, zerogpu
    from cnndemo.ui import compare
    from cnndemo.ui.compare import run_compare

    calls = []
    # A busy machine may or may not make these figures noisy: say they are, so the order of the
    # two caveats is checked every run.
    monkeypatch.setattr(compare, "noise_note", lambda results, others: "These figures are noisy: a stand-in.")

    def gpu(task, duration):
        def run(*args):
            calls.append(duration(*args))
            fn, a, kw, est = pickle.loads(pickle.dumps(args))  # what the forked worker receives
            assert fn is bench.run_benchmark and kw["device"] == "cuda"
            zerogpu.inside = True
            try:  # the stand-in has no GPU: the same work on the CPU
                return pickle.loads(pickle.dumps(fn(*a, **{**kw, "device": "cpu", "modes": ("eager",)})))
            finally:
                zerogpu.inside = False
        return run

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    monkeypatch.setattr(zerogpu, "_task", None)
    setenv("SPACES_ZERO_GPU", "true")
    assert runtime.pick_device("auto").type == "cpu" and runtime.pick_device("cuda").type == "cuda"
    out = asyncio.run(run_compare(["squeezenet1_0"], "cuda", [1], "fp32", False, False, 5))
    assert len(calls) == 1 and 15 <= calls[0] <= 300
    assert out["note"].startswith("**Not a benchmark**") and out["json"]["results"][0]["model"] == "squeezenet1_0"
    assert "**⚠ These figures are noisy: a stand-in.**" in out["note"]  # below the verdict, not instead of it
    with pytest.raises(Exception, match="torch.compile is not available on ZeroGPU"):
        asyncio.run(run_compare(["squeezenet1_0"], "cuda", [8], "fp32", False, True, 5))
    setenv("SPACES_ZERO_GPU", None)
    assert runtime.pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
