"""Compare tab: parameters, FLOPs, weight size, accuracy and measured time across the zoo."""

from __future__ import annotations

import threading

import gradio as gr
import pandas as pd
import torch

from .. import render
from ..cache import LRU
from ..bench import (benchmark_tflop, default_modes, estimated_seconds, noise_note, reference_files, run_benchmark,
                     scaling, scaling_tflop)
from ..cancel import work_budget_tflop, check_budget
from ..costs import FLOPS_CONVENTION, PARAMS_CONVENTION, ops_per_forward, branch_costs, factorisation_savings, model_stats, reduction_savings, stage_costs
from .. import zerogpu
from ..errors import NotFound
from ..lanes import HEAVY
from ..runtime import pick_device
from ..zoo import DEFAULT_MODEL, ZOO, get_spec
from .common import by_name, gr_progress, heavy_lane, model_choices, requests_running, user_errors

# Live measurements by settings: a second click on the same settings shows the same run.
_LIVE = LRU(32, name="live benchmarks")


def _fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def stats_rows() -> list[list]:
    rows = []
    for key in ZOO:
        s = model_stats(key)
        size = f"{s.weight_mb:.1f}" + (f" (file {s.file_mb:.1f})" if s.file_mb else "")
        rows.append([ZOO[key].name, f"{s.params:,}", size, f"{s.gflops:.2f}",
                     _fmt(s.acc1), _fmt(s.acc5), s.accuracy_on])
    return rows


def cost_frames() -> tuple[gr.BarPlot, gr.BarPlot]:
    stats = [model_stats(k) for k in ZOO]
    names = [ZOO[s.key].name for s in stats]
    params = pd.DataFrame({"model": names, "millions of parameters": [s.params / 1e6 for s in stats]})
    flops = pd.DataFrame({"model": names, "GFLOPs": [s.gflops for s in stats]})
    return gr.BarPlot(params, sort=names), gr.BarPlot(flops, sort=names)


GPU_HEADERS = ["model", "GFLOPs", "ops per forward", "b1 fp32 eager ms", "b1 fp32 CUDA graph ms",
               "b256 bf16 eager img/s", "b256 bf16 CUDA graph img/s", "b256 bf16 compiled img/s",
               "compiled TFLOP/s", "% of peak"]


def _pick(data: dict, model: str, mode: str, batch: int, precision: str) -> dict | None:
    """The reference row for a setting: weights cast (the reference script) before autocast."""
    rows = [r for r in data["results"] if "error" not in r and r["model"] == model and r.get("mode") == mode
            and r["batch"] == batch and r["precision"] == precision]
    rows.sort(key=lambda r: r.get("source") != "reference script")
    return rows[0] if rows else None


def gpu_reference() -> tuple[list[list], str]:
    """The shipped GPU figures: eager vs CUDA graph vs compiled, at batch 1 and batch 256, with
    achieved TFLOP/s and share of the card's measured peak; and what they show, in words
    written from those numbers."""
    gpu = next((f for f in reference_files() if f["environment"]["device"] == "cuda"), None)
    if gpu is None:
        return [], ""
    env = gpu["environment"]
    rows, cells = [], {}
    for key, spec in ZOO.items():
        if spec.inputs.kind != "photo":
            continue
        e1, g1 = _pick(gpu, key, "eager", 1, "fp32"), _pick(gpu, key, "cudagraph", 1, "fp32")
        e256, g256 = _pick(gpu, key, "eager", 256, "bf16"), _pick(gpu, key, "cudagraph", 256, "bf16")
        c256 = _pick(gpu, key, "compile", 256, "bf16")
        cells[key] = (e1, g1, e256, g256, c256)
        get = lambda r, k, f: "-" if r is None or r.get(k) is None else format(r[k], f)  # noqa: E731
        rows.append([spec.name, f"{model_stats(key).gflops:.2f}", f"{ops_per_forward(key)}",
                     get(e1, "p50_ms", ".2f"), get(g1, "p50_ms", ".2f"), get(e256, "throughput", ",.0f"),
                     get(g256, "throughput", ",.0f"), get(c256, "throughput", ",.0f"), get(c256, "tflops", ".0f"),
                     get(c256, "pct_peak", ".0f")])
    peak = env.get("peak", {}).get("bf16_matmul_tflops")
    head = (f"**GPU reference: {env['device_name']}** (torch {env['torch']}, cuDNN {env.get('cudnn', '?')}). "
            f"{env.get('provenance', '')[:1].upper()}{env.get('provenance', '')[1:]}. Batch 256 in bf16 with the weights and input cast and channels_last; "
            + (f"peak: {peak:.0f} TFLOP/s, a large bf16 matmul measured on the same card. " if peak else "")
            + "Ops per forward: tensor operations dispatched by one batch-1 forward (each at least one kernel launch). "
            + f"Batch-1 times from the {_sources(c[0] for c in cells.values())}, as in the accuracy-vs-latency chart "
            + "below; batch-256 figures from the " + _sources(c[4] for c in cells.values()) + ".")
    return rows, head + "  \n" + _gpu_story(cells)


def _gpu_story(cells: dict) -> str:
    """Why the small-batch and large-batch rankings differ, from the measured figures."""
    if "googlenet" not in cells or "vgg16" not in cells:
        return ""  # the reference has no rows for the two models the story compares
    (ge1, gg1, _, _, gc), (ve1, _, _, _, vc) = cells["googlenet"], cells["vgg16"]
    if None in (ge1, gg1, gc, ve1, vc):
        return ""  # a setting the story needs was not measured (or failed) in the reference
    g_ms, v_ms, gg_ms = ge1["p50_ms"], ve1["p50_ms"], gg1["p50_ms"]
    g_img, v_img = gc["throughput"], vc["throughput"]
    g_ops, v_ops = ops_per_forward("googlenet"), ops_per_forward("vgg16")
    g_fl, v_fl = model_stats("googlenet").gflops, model_stats("vgg16").gflops
    small = "beats" if v_ms < g_ms else "trails"
    large = "loses to" if v_img < g_img else "still beats"
    return (
        f"At batch 1, VGG-16 ({v_fl:.1f} GFLOPs) {small} GoogLeNet ({g_fl:.1f} GFLOPs): {v_ms:.2f} ms against "
        f"{g_ms:.2f} ms. GoogLeNet's forward is {g_ops} small operations against VGG-16's {v_ops} large ones, "
        f"and at batch 1 the GPU finishes each faster than the CPU can launch the next: the time is launch "
        f"overhead. Replayed as one CUDA graph (no per-operation launches), GoogLeNet takes {gg_ms:.2f} ms, "
        f"{g_ms / gg_ms:.1f}x less. At batch 256 the arithmetic dominates and VGG-16 {large} it: "
        f"{v_img:,.0f} against {g_img:,.0f} images/s (compiled, bf16), because each image costs it "
        f"{v_fl / g_fl:.0f}x the FLOPs, even at {vc['pct_peak']:.0f}% of the card's peak against GoogLeNet's "
        f"{gc['pct_peak']:.0f}%."
    )


def reference_markdown() -> str:
    files = reference_files()
    if not files:
        return "No reference results are shipped yet."
    lines = []
    for f in files:
        env = f["environment"]
        lines.append(f"- **{env['device_name']}** ({env['device'].upper()}, {env.get('threads', '?')} threads), "
                     f"torch {env['torch']}, measured {env['date']} (`assets/benchmarks/{f['file']}`)")
    if not any(f["environment"]["device"] == "cuda" and "provenance" not in f["environment"] for f in files):
        lines.append("- The GPU figures below are a shipped reference, not measured by this build on this machine. "
                     "On a GPU, `python -m cnndemo bench --device cuda --mode eager cudagraph compile --precision fp32 "
                     "bf16 --batch 1 256 --json assets/benchmarks/<gpu>.json` measures your own card, and this tab "
                     "then shows it in place of the reference.")
    return "Reference results (measured elsewhere, shipped with the app):\n" + "\n".join(lines)


def result_rows(data: dict, label: str) -> list[list]:
    env = data["environment"]
    rows = []
    for r in data["results"]:
        mode = r.get("mode", "eager")
        if "error" in r:
            rows.append([label, ZOO[r["model"]].name, env["device_name"], mode, r["precision"], r["batch"],
                         "-", "-", "-", "-", "-", "-", "-", "not measured (reason below the table)"])
            continue
        half = {"autocast": " autocast"}.get(r.get("half"), "")
        compile_s = f"; compiled in {r['compile_s']:.0f} s" if r.get("compile_s") is not None else ""
        rows.append([label, ZOO[r["model"]].name, env["device_name"], mode,
                     r["precision"] + half + (" CL" if r["channels_last"] else ""), r["batch"],
                     _fmt(r.get("p10_ms"), ".2f"), f"{r['p50_ms']:.2f}", _fmt(r.get("p90_ms"), ".2f"),
                     f"{r['throughput']:.1f}", _fmt(r.get("tflops"), ".3f"), _fmt(r.get("pct_peak"), ".1f"),
                     _fmt(r.get("peak_mem_mb"), ".0f"), f"{env['threads']} threads, {r['date']}{compile_s}"])
    return rows


RESULT_HEADERS = ["source", "model", "device", "mode", "precision", "batch", "p10 ms", "p50 ms", "p90 ms", "images/s",
                  "TFLOP/s", "% of peak", "peak MiB", "notes"]


def reference_rows() -> list[list]:
    """The CPU reference in the results table (the GPU reference has its own table)."""
    rows = []
    for f in reference_files():
        if f["environment"]["device"] != "cuda":
            rows += result_rows(f, "reference")
    return rows


def bubble_figure(latency: dict[str, dict], source: str):
    """Accuracy vs latency at batch 1 (median, bar: p10 to p90 where measured), bubble area = parameters."""
    fig = render.new_figure(7.5, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    for key, r in latency.items():
        s = model_stats(key)
        if s.acc1 is None or not s.accuracy_on.startswith("ImageNet"):
            continue
        ms = r["p50_ms"]
        ax.scatter(ms, s.acc1, s=max(30.0, s.params / 1e5), alpha=0.55)
        ax.errorbar(ms, s.acc1, xerr=[[ms - (r.get("p10_ms") or ms)], [(r.get("p90_ms") or ms) - ms]], fmt="none",
                    ecolor="#555", capsize=3, lw=1)
        ax.annotate(f"{ZOO[key].name}\n{s.params / 1e6:.1f}M params", (ms, s.acc1), fontsize=8,
                    xytext=(6, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(f"latency at batch 1, ms (log scale; bar: p10 to p90) · {source}")
    ax.set_ylabel("ImageNet top-1 accuracy, % (torchvision)")
    ax.set_title("Accuracy vs latency (bubble area = parameters)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _latency_b1(data: dict) -> dict[str, dict]:
    """Batch-1 fp32 eager latency per model: the same row the GPU table shows (the reference
    script's where a file has both it and this project's bench), so one label holds for both."""
    rows = [r for r in data["results"]
            if "error" not in r and r["batch"] == 1 and r["precision"] == "fp32" and r.get("mode", "eager") == "eager"]
    rows.sort(key=lambda r: r.get("source") == "reference script")  # the preferred row is put last, and kept
    return {r["model"]: r for r in rows}


def _sources(rows) -> str:
    """Which measurement the figures come from, as the results file says."""
    names = sorted({r.get("source") or "this project's bench" for r in rows if r})
    return " and ".join(names)


_BUBBLE_LOCK = threading.Lock()


def initial_bubble():
    """The reference figure every page opens with, drawn one page at a time: matplotlib's text
    parser is shared by the process and fails when two threads lay out text at once (a class
    opening the app together). Drawn here, so Gradio's own save reuses the laid-out text."""
    with _BUBBLE_LOCK:
        fig = _initial_bubble()
        if fig is not None:
            fig.canvas.draw()
        return fig


def _initial_bubble():
    for f in reference_files():
        lat = _latency_b1(f)
        if lat:
            plotted = [r for k, r in lat.items() if ZOO[k].inputs.kind == "photo"]
            return bubble_figure(lat, f"reference: {f['environment']['device_name']}, {_sources(plotted)}")
    return None


def _measured(measure) -> dict:
    """Run a measurement (its result has "results"), and say in its "noise" whether the
    figures are noisy, counting the other requests that ran beside it (at its start or end)."""
    others = requests_running() - 1
    data = measure()
    data["noise"] = noise_note(data["results"], max(others, requests_running() - 1))
    return data


def _noise_first(data: dict, note: str) -> str:
    return f"**⚠ {data['noise']}**  \n{note}" if data.get("noise") else note


def _live_modes(device: str, compile: bool) -> tuple[str, ...]:
    """The device's default modes (eager, plus cudagraph on CUDA), plus compile when asked."""
    return default_modes(pick_device(device)) + (("compile",) if compile else ())


def _live_plan(models: list[str], device: str, batch_sizes: list | None, compile: bool,
               runs: float) -> tuple[tuple[int, ...], tuple[str, ...], int, float]:
    """What a live benchmark runs: its batch sizes, modes and warm-up passes, and its arithmetic
    in TFLOP (the estimate before the click and the budget check use the same plan)."""
    batches = tuple(sorted({int(b) for b in (batch_sizes or [1])}))
    modes = _live_modes(device, bool(compile))
    warmup = max(2, int(runs) // 5)
    return batches, modes, warmup, benchmark_tflop(models, batches, modes, int(runs), warmup)


@user_errors
def run_compare(models: list[str] | None, device: str = "auto", batch_sizes: list | None = None,
                precision: str = "fp32", channels_last: bool = False, compile: bool = False, runs: float = 10,
                progress=gr.Progress()):
    """Measure latency p50/p90, throughput and peak memory on the app's own device (cached per settings).

    Args:
        models: zoo keys.
        device: "auto", "cpu" or "cuda".
        batch_sizes: batch sizes, e.g. [1, 8].
        precision: "fp32", "bf16" or "fp16" (fp16 needs CUDA).
        channels_last: use the channels_last memory format (half precision uses it in any case).
        compile: also measure the torch.compile'd model (its compile time is reported apart).
        runs: timed runs per setting (5-50).
    """
    models = list(models or [])
    if not models:
        raise gr.Error("Pick at least one model.")
    batches, modes, warmup, tflop = _live_plan(models, device, batch_sizes, compile, runs)
    if max(batches) > 256:
        raise gr.Error("Batch sizes above 256 are not offered here; use the CLI.")
    key = (device, tuple(models), batches, precision, bool(channels_last), bool(compile), int(runs))
    check_budget(tflop, f"Benchmarking {len(models)} models", hint="Pick fewer models, smaller batch sizes or fewer runs.")
    on_zero = zerogpu.available() and pick_device(device).type == "cuda"
    if on_zero and compile:
        raise gr.Error("torch.compile is not available on ZeroGPU (the GPU is lent per request, and a compile "
                       "takes minutes of it). Measure eager and CUDA graphs here, or run the CLI on a dedicated GPU.")
    data = _LIVE.get(key)
    cached = data is not None
    if data is None:
        bench = dict(device=device, batches=batches, precisions=(precision,),
                     channels_last=True if channels_last else None, modes=modes, runs=int(runs), warmup=warmup)
        if on_zero:  # a spaces.GPU task: plain arguments across the fork, no progress callback
            est = estimated_seconds(tflop, "cuda", len(models))
            measure = lambda: zerogpu.run_on_gpu(run_benchmark, models, estimate_s=est and est[0], **bench)  # noqa: E731
        else:
            measure = lambda: run_benchmark(models, **bench, progress=gr_progress(progress))  # noqa: E731
        data = HEAVY.run(lambda: _measured(measure), gr_progress(progress))
        _LIVE.put(key, data)
    env = data["environment"]
    note = (f"Measured live on **{env['device_name']}** ({env['device'].upper()}, {env['threads']} threads), "
            f"torch {env['torch']}, {env['date']}" + (" (cached result for these settings)" if cached else "") +
            f". Batch sizes timed interleaved, {int(runs)} passes each; p10 and p90 show the spread. Timing uses "
            "each architecture with random weights (weights do not change the time).")
    note = _noise_first(data, note)
    if on_zero:  # the stronger caveat goes first: there the figures are never a benchmark, steady or not
        note = (f"**Not a benchmark**: timed on a ZeroGPU slice, a GPU that Hugging Face shares between Spaces and "
                f"lends per request, so other work can run on it meanwhile; the order of magnitude holds, the "
                f"figures do not. torch.compile is not available there. The shipped reference rows were measured "
                f"on a dedicated GPU.  \n{note}")
    refused = [r for r in data["results"] if "error" in r]
    if refused:
        note += "  \n" + "  \n".join(f"**Not measured**: {ZOO[r['model']].name}, batch {r['batch']}, "
                                      f"{r['precision']}: {r['error']}" for r in refused)
    lat = _latency_b1(data)
    bubble = bubble_figure(lat, f"live: {env['device_name']}") if lat else None
    return {"results": result_rows(data, "live") + reference_rows(), "note": note, "bubble": bubble, "json": data}


def _scaling_runs(model: str) -> int:
    """As many timed passes per point as the request's budget allows (8 at most, 3 at least)."""
    return next((r for r in range(8, 2, -1) if scaling_tflop(model, r) <= work_budget_tflop()), 3)


def _duration(tflop: float, device: str, models: int, extra: str = "") -> str:
    """'About 20 s on this machine (...)': said before the click, from the shipped reference rate."""
    est = estimated_seconds(tflop, device, models)
    if tflop > work_budget_tflop():
        return (f"**Over this server's limit**: about {tflop:,.1f} TFLOP against {work_budget_tflop():g}. "
                "Pick fewer models, batch sizes or runs (or the quick preset).")
    if est is None:
        return f"About {tflop:,.2f} TFLOP of arithmetic (no shipped {device.upper()} reference to time it by)."
    seconds, name = est
    shown = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
    return (f"**Estimated: about {shown}** on an idle machine ({tflop:,.2f} TFLOP at the rate the shipped {name} "
            f"reference reached; other requests running beside it make it longer){extra}.")


def bench_estimate(models: list[str] | None, device: str = "auto", batch_sizes: list | None = None,
                   compile: bool = False, runs: float = 10) -> str:
    models = list(models or [])
    if not models:
        return ""
    tflop = _live_plan(models, device, batch_sizes, compile, runs)[3]
    return _duration(tflop, pick_device(device).type, len(models),
                     "; each model compiled adds a minute or more" if compile else "")


def scaling_estimate(model: str) -> str:
    runs = _scaling_runs(model)
    return _duration(scaling_tflop(model, runs), pick_device("auto").type, 1, f", {runs} timed passes per point")


LIVE_DEFAULT = {"models": [DEFAULT_MODEL, "resnet50", "squeezenet1_0"], "batches": [1, 8], "runs": 10}
QUICK = {**LIVE_DEFAULT, "batches": [1], "compile": False}


@user_errors
def run_scaling(model: str, progress=gr.Progress()):
    """Latency per image against batch size, and against input resolution, measured live.

    Args:
        model: a zoo key.
    """
    runs = _scaling_runs(model)
    check_budget(scaling_tflop(model, runs), f"Scaling curves for {ZOO[model].name}",
                 hint="Pick a smaller model, or measure it with `python -m cnndemo bench` instead.")
    data = HEAVY.run(lambda: _measured(lambda: scaling(model, runs=runs, progress=gr_progress(progress))),
                     gr_progress(progress))
    name = ZOO[model].name
    by_batch = render.timing_curve(data["batch"], "batch", "ms_per_image", "p10", "p90", log_x=True,
                                   xlabel="batch size", ylabel="ms per image",
                                   title=f"{name}: latency per image vs batch size")
    by_res = render.timing_curve(data["resolution"], "resolution", "p50_ms", "p10_ms", "p90_ms",
                                 xlabel="input side, px", ylabel="ms per pass (batch 1)",
                                 title=f"{name}: latency vs input resolution")
    note = (f"{name} on {data['device'].upper()}: every point is the median of {data['runs']} passes, all settings "
            "timed interleaved (round after round), with its p10-p90 spread as a bar.")
    return {"by_batch": by_batch, "by_res": by_res, "scale_note": _noise_first(data, note), "scale_json": data}


def anatomy_tables(model: str, block: str | None):
    """Stage costs, branch costs and what the design choices save, for one model and block.

    Args:
        model: a zoo key.
        block: a block name; empty for the model's default block.
    """
    spec = get_spec(model)
    # Empty (or the dropdown's "-" of a model without blocks): the default block; another
    # model's block name is refused with this model's names.
    block = spec.default_block if block in (None, "", "-") else spec.block(block).name
    stages = [[s.name, s.layer, " × ".join(map(str, s.shape)), f"{s.params:,}", f"{s.flops / 1e6:,.1f}"]
              for s in stage_costs(spec)]
    branches, savings = [], []
    if spec.has_branches:
        branches = [[b.branch, b.path, f"{b.params:,}", f"{b.flops / 1e6:,.1f}"] for b in branch_costs(spec, block)]
        savings = reduction_savings(spec, block)
    savings += factorisation_savings(spec)
    sav_rows = [[s.where, s.choice, f"{s.built}  vs  {s.alternative}",
                 f"{s.params_built:,} vs {s.params_alt:,} ({s.flops_built / 1e6:,.1f} vs {s.flops_alt / 1e6:,.1f} MFLOPs)",
                 f"{s.params_saved:.0%} / {s.flops_saved:.0%}",
                 "-" if s.textbook_saved is None else f"{s.textbook_saved:.0%}", s.why]
                for s in savings]
    return {"stages": stages, "branch_costs": branches,
            "savings": sav_rows or [["-", "no such design choice in this model", "", "", "", "", ""]]}


anatomy = user_errors(anatomy_tables)


def _blocks_update(model: str):
    spec = ZOO[model]
    return gr.Dropdown(choices=[b.name for b in spec.blocks if b.merge != "single"] or ["-"],
                       value=spec.default_block if spec.has_branches else "-")


def build() -> dict:
    c: dict = {}
    gr.Markdown(f"### The zoo side by side\n{FLOPS_CONVENTION}. Weight size: float32 parameters and buffers, MiB. "
                "Inception-v3 is counted without its training-only AuxLogits head (torchvision's 27.2M includes it). "
                "(file N): torchvision's published file, which also holds the training-only auxiliary heads "
                "that this app does not build.")
    c["stats"] = gr.Dataframe(elem_id="compare-stats", headers=["model", "parameters", "weight MiB", "GFLOPs", "acc@1", "acc@5", "accuracy on"],
                              interactive=False, wrap=True)
    with gr.Row():
        c["params_plot"] = gr.BarPlot(x="model", y="millions of parameters", title="Parameters (millions)", elem_id="compare-params",
                                      height=340, x_label_angle=-30, y_title="millions")
        c["flops_plot"] = gr.BarPlot(x="model", y="GFLOPs", title="GFLOPs at each model's own input size",
                                     height=340, x_label_angle=-30)
    gr.Markdown("### Measured time")
    c["reference"] = gr.Markdown()
    c["gpu_note"] = gr.Markdown(elem_id="compare-gpu-note")
    c["gpu_table"] = gr.Dataframe(headers=GPU_HEADERS, interactive=False, wrap=True, label="GPU reference",
                                  elem_id="compare-gpu")
    with gr.Row():
        c["models"] = gr.Dropdown(model_choices("photo"), value=LIVE_DEFAULT["models"],
                                  multiselect=True, label="Models", scale=4)
        devices = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() or zerogpu.available() else [])
        c["device"] = gr.Dropdown(devices, value="auto", label="Device", scale=1)
        c["batches"] = gr.CheckboxGroup([1, 8, 32, 64], value=LIVE_DEFAULT["batches"], label="Batch sizes", scale=2)
        c["precision"] = gr.Dropdown(["fp32", "bf16", "fp16"], value="fp32", label="Precision",
                                     info="fp16 needs CUDA", scale=1)
    with gr.Row():
        c["channels_last"] = gr.Checkbox(label="channels_last", value=False, info="on anyway for bf16 and fp16")
        c["compile"] = gr.Checkbox(label="also torch.compile", value=False,
                                   info="one more mode; compiling takes a minute or more per model")
        c["runs"] = gr.Slider(5, 50, value=LIVE_DEFAULT["runs"], step=1, precision=0, label="Timed runs per setting")
        c["quick"] = gr.Button("Quick preset (3 models, batch 1)", size="sm")
        c["go"] = gr.Button("Run benchmark", variant="primary")
    c["estimate"] = gr.Markdown(elem_id="compare-estimate", elem_classes=["cz-note"])
    c["note"] = gr.Markdown(label="measured on")
    c["results"] = gr.Dataframe(headers=RESULT_HEADERS, interactive=False, wrap=True, label="results")
    c["bubble"] = gr.Plot(label="Accuracy vs latency", elem_id="compare-bubble", show_label=False)
    with gr.Accordion("Results file (JSON)", open=False):
        c["json"] = gr.JSON(label="benchmark")
    gr.Markdown("### How cost grows")
    with gr.Row():
        c["scale_model"] = gr.Dropdown(model_choices("photo"), value=DEFAULT_MODEL, label="Model", scale=3)
        c["scale_go"] = gr.Button("Measure latency vs batch and resolution", scale=1)
    c["scale_estimate"] = gr.Markdown(elem_id="compare-scale-estimate", elem_classes=["cz-note"])
    c["scale_note"] = gr.Markdown(label="how it was measured")
    with gr.Row():
        c["by_batch"] = gr.Plot(label="latency vs batch", show_label=False)
        c["by_res"] = gr.Plot(label="latency vs resolution", show_label=False)
    with gr.Accordion("Scaling results (JSON)", open=False):
        c["scale_json"] = gr.JSON(label="scaling")
    gr.Markdown("### Architecture anatomy")
    with gr.Row():
        c["an_model"] = gr.Dropdown(model_choices(), value=DEFAULT_MODEL, label="Model")
        c["an_block"] = gr.Dropdown([b.name for b in ZOO[DEFAULT_MODEL].blocks], value=ZOO[DEFAULT_MODEL].blocks[0].name,
                                    label="Block", allow_custom_value=True)
    c["stages"] = gr.Dataframe(headers=["stage", "layer", "output shape", "parameters", "MFLOPs"], interactive=False,
                               label="stages")
    c["branch_costs"] = gr.Dataframe(headers=["branch", "kernel path", "parameters", "MFLOPs"], interactive=False,
                                     label="branch costs")
    gr.Markdown(f"{PARAMS_CONVENTION}. Each saving compares the path as built with one plain layer of the "
                "same input and output widths; the textbook column is the paper's argument at equal widths "
                "(18 vs 25 weights per channel pair for two 3x3 against one 5x5; 27 vs 49 for three 3x3 against one 7x7, "
                "VGG's own argument).", elem_classes=["cz-note"])
    c["savings"] = gr.Dataframe(
        headers=["where", "design choice", "as built vs plain alternative", "parameters (MFLOPs)",
                 "saved: params / FLOPs", "textbook, equal widths", "why they differ"],
        interactive=False, wrap=True, label="savings", elem_id="compare-savings",
        column_widths=["11%", "13%", "20%", "19%", "9%", "8%", "20%"],
    )

    measured, measured_outputs = by_name(run_compare, c, ("results", "note", "bubble", "json"))
    c["go"].click(
        measured,
        [c["models"], c["device"], c["batches"], c["precision"], c["channels_last"], c["compile"], c["runs"]],
        measured_outputs, api_name="compare", **heavy_lane(),
    )
    estimate_inputs = [c["models"], c["device"], c["batches"], c["compile"], c["runs"]]
    gr.on([c[k].change for k in ("models", "device", "batches", "compile", "runs")], user_errors(bench_estimate),
          estimate_inputs, [c["estimate"]], api_visibility="private", queue=False)
    quick, quick_outputs = by_name(lambda: {k: QUICK[k] for k in ("models", "batches", "runs", "compile")}, c,
                                   ("models", "batches", "runs", "compile"))
    c["quick"].click(quick, None, quick_outputs, api_visibility="private", queue=False)
    c["scale_model"].change(user_errors(scaling_estimate), [c["scale_model"]], [c["scale_estimate"]],
                            api_visibility="private", queue=False)
    scaled, scaled_outputs = by_name(run_scaling, c, ("by_batch", "by_res", "scale_note", "scale_json"))
    c["scale_go"].click(scaled, [c["scale_model"]], scaled_outputs, api_name="scaling", **heavy_lane())
    tables, table_outputs = by_name(anatomy, c, ("stages", "branch_costs", "savings"))
    c["an_model"].change(_blocks_update, [c["an_model"]], [c["an_block"]], api_visibility="private").then(
        tables, [c["an_model"], c["an_block"]], table_outputs, api_name="anatomy_refresh", api_visibility="private")
    c["an_block"].input(tables, [c["an_model"], c["an_block"]], table_outputs, api_name="anatomy")
    gr.api(user_errors(api_stats), api_name="stats")
    return c


def api_stats(models: list[str] | None = None) -> list[dict]:
    """Each model's totals, as the Compare tab's table shows them: parameters, MiB of float32
    weights, FLOPs for one image at its input size, and its published (or measured) accuracy.

    Args:
        models: zoo keys, e.g. ["googlenet", "resnet50"]; empty: the whole zoo.
    """
    keys = list(models or ZOO)
    unknown = [k for k in keys if k not in ZOO]
    if unknown:
        raise NotFound(f"not in the zoo: {', '.join(map(str, unknown))}; the zoo: {', '.join(ZOO)}")
    return [model_stats(k).to_json() for k in keys]


LOADED = ("stats", "params_plot", "flops_plot", "reference", "results", "bubble", "stages", "branch_costs",
          "savings", "gpu_table", "gpu_note", "estimate", "scale_estimate")


def on_load() -> dict:
    """Fill the Compare tab's static parts (cheap: counted once on the meta device, then cached)."""
    params, flops = cost_frames()
    gpu_rows, gpu_note = gpu_reference()
    return {"stats": stats_rows(), "params_plot": params, "flops_plot": flops, "reference": reference_markdown(),
            "results": reference_rows(), "bubble": initial_bubble(),
            **anatomy_tables(DEFAULT_MODEL, ZOO[DEFAULT_MODEL].blocks[0].name), "gpu_table": gpu_rows, "gpu_note": gpu_note,
            "estimate": bench_estimate(LIVE_DEFAULT["models"], "auto", LIVE_DEFAULT["batches"], False,
                                       LIVE_DEFAULT["runs"]),
            "scale_estimate": scaling_estimate(DEFAULT_MODEL)}
