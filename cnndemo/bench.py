"""Measured inference time, the way timm's benchmark.py does it.

Warm-up runs first, then ``runs`` timed forward passes under ``torch.inference_mode``. On
CUDA each pass is bracketed by CUDA events (one synchronisation at the end, none in between);
on the CPU by ``time.perf_counter``. Reported: the median (p50) and 90th percentile of the
per-pass latency, the throughput at that batch (images/s from the median), and peak memory:
``torch.cuda.max_memory_allocated`` on CUDA; on the CPU, the peak of live tensor bytes
(weights included) tracked op by op during one pass. Every result carries its environment.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import statistics
import time
import weakref
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from . import cancel
from .errors import BadRequest
from .cancel import ProgressFn
from .cache import memo
from .paths import BENCH_DIR
from .pipeline import sync
from .costs import forward_flops, module_flops
from .runtime import build_random, pick_device
from .zoo import ZOO, get_spec

log = logging.getLogger("cnndemo")

PRECISIONS = ("fp32", "fp16", "bf16")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@memo(1, name="cpu name")
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def environment(device: torch.device) -> dict:
    """Where and with what a result was measured."""
    import torchvision

    env = {
        "device": device.type,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "os": platform.platform(terse=True),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


@dataclass(frozen=True)
class BenchResult:
    model: str
    device: str
    device_name: str
    mode: str  # eager, cudagraph or compile
    precision: str
    half: str | None  # how half precision was applied: HALF_CAST, HALF_AUTOCAST, or None for fp32
    channels_last: bool
    batch: int
    input_size: tuple[int, int, int]
    runs: int
    warmup: int
    threads: int
    p10_ms: float
    p50_ms: float
    p90_ms: float
    mean_ms: float
    throughput: float  # images / s at this batch, from the median
    compile_s: float | None  # compile mode: the first call (tracing, compiling, one pass), not in the timings
    gflops: float  # per image, as torch.utils.flop_counter counts
    tflops: float  # achieved: FLOPs of the batch / median time
    pct_peak: float | None  # tflops as a share of the run's measured peak for this precision
    pct_peak_of: str | None  # which peak: "bf16 matmul", "tf32 matmul", ...
    peak_mem_mb: float
    peak_mem_kind: str
    torch: str
    date: str

    def to_json(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d


class PassTimer:
    """Per-pass wall time: CUDA events on CUDA (no sync between passes), perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def time(self, fn: Callable[[], object]) -> None:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            self.marks.append((start, end))
        else:
            t0 = time.perf_counter()
            fn()
            self.marks.append((t0, time.perf_counter()))

    def times_ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [s.elapsed_time(e) for s, e in self.marks]
        return [(e - s) * 1000.0 for s, e in self.marks]


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages alive during the dispatched ops (CPU peak memory)."""

    def __init__(self, baseline: int):
        super().__init__()
        self.live = baseline
        self.peak = baseline
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                st = t.untyped_storage()
                key = st.data_ptr()
                if key and key not in self._seen:
                    self._seen.add(key)
                    n = st.nbytes()
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(st, self._free, key, n)
        return out

    def _free(self, key: int, n: int) -> None:
        self._seen.discard(key)
        self.live -= n


def _weights_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def cpu_peak_mb(model: nn.Module, x: torch.Tensor, autocast) -> float:
    tracker = _LiveTensorBytes(_weights_bytes(model) + x.numel() * x.element_size())
    with torch.inference_mode(), autocast, tracker:
        model(x)
    return tracker.peak / 2**20


def prepare(key: str, device: torch.device) -> nn.Module:
    """A random-init fp32 copy of the architecture (timing does not depend on the weights); the
    settings' precision, memory format and mode are applied per setting (see ``_Variants``)."""
    return build_random(get_spec(key)).to(device).eval()


MODES = ("eager", "cudagraph", "compile")
HALF_CAST = "weights and input cast"
HALF_AUTOCAST = "autocast"
CUDAGRAPH_NEEDS_CUDA = (
    "cudagraph needs a CUDA device: a CUDA graph records the GPU kernels one forward launches and replays "
    "them with a single call, and the CPU launches no kernels to record. On the CPU, measure eager or compile.")
# Why cudagraph mode captures with torch.cuda.graph and not torch.compile(mode="reduce-overhead"):
# it replays exactly the kernels eager mode runs, so eager vs cudagraph isolates the cost of
# launching them one by one; fused, compiled kernels are the compile mode's own figure.
CUDAGRAPH_HOW = ("torch.cuda.graph: the eager forward captured after a warm-up on a side stream, replayed on a "
                 "static input (the same kernels as eager, without per-kernel launches)")


def default_modes(device: torch.device) -> tuple[str, ...]:
    """eager and cudagraph on CUDA (the launch-overhead story), eager on the CPU."""
    return ("eager", "cudagraph") if device.type == "cuda" else ("eager",)


@dataclass(frozen=True)
class Setting:
    """One timed configuration of a prepared model."""

    batch: int
    precision: str = "fp32"
    resolution: int | None = None
    mode: str = "eager"


def check_setting(st: Setting, device: torch.device) -> None:
    """Refuse, with the reason, a setting that cannot be measured honestly on ``device``."""
    if st.precision not in PRECISIONS:
        raise BadRequest(f"precision must be one of {', '.join(PRECISIONS)}")
    if st.mode not in MODES:
        raise BadRequest(f"mode must be one of {', '.join(MODES)}")
    if st.precision == "fp16" and device.type == "cpu":
        raise BadRequest("fp16 is a GPU setting: most CPUs have no fast float16 kernels, so the "
                         "figure would measure emulation; on the CPU use fp32 or bf16")
    if st.mode == "cudagraph" and device.type != "cuda":
        raise BadRequest(CUDAGRAPH_NEEDS_CUDA)


def _quantile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(round(q * (len(sorted_ms) - 1))))]


class _Variants:
    """The model as each setting runs it: weights cast to half precision (or not), channels_last
    (or not), compiled (or not). Each variant is made once and shared by the settings that need it."""

    def __init__(self, model: nn.Module):
        self.base = model
        self._made: dict[tuple, nn.Module] = {}

    def get(self, dtype: torch.dtype | None, channels_last: bool, compiled: bool) -> nn.Module:
        k = (dtype, channels_last, compiled)
        if k not in self._made:
            if compiled:
                self._made[k] = torch.compile(self.get(dtype, channels_last, False), dynamic=False)
            elif dtype is None and not channels_last:
                self._made[k] = self.base
            else:
                m = copy.deepcopy(self.base)
                m = m.to(dtype) if dtype is not None else m
                self._made[k] = m.to(memory_format=torch.channels_last) if channels_last else m
        return self._made[k]


@dataclass
class _Case:
    setting: Setting
    x: torch.Tensor
    autocast: object  # a context manager
    half: str | None
    channels_last: bool
    model: nn.Module
    run: Callable[[], object]
    timer: PassTimer
    compile_s: float | None = None


def _graphed(model: nn.Module, x: torch.Tensor, autocast) -> Callable[[], object]:
    """``model(x)`` captured as a CUDA graph, the way PyTorch's CUDA-graph docs do it: warm up
    on a side stream, capture on a static input, then replay."""
    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            with autocast:
                model(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        with autocast:
            static_y = model(static_x)
    graph.static = (static_x, static_y)  # keep the captured tensors alive with the graph
    return graph.replay


def _make_case(variants: _Variants, st: Setting, spec, device: torch.device, channels_last: bool | None,
               autocast: bool) -> _Case:
    check_setting(st, device)
    c, h, w = spec.input_size
    if st.resolution:
        h = w = st.resolution
    half = None if st.precision == "fp32" else HALF_AUTOCAST if autocast else HALF_CAST
    cl = (half == HALF_CAST) if channels_last is None else channels_last  # half precision: channels_last by default
    dtype = _DTYPES[st.precision] if half == HALF_CAST else None
    x = torch.randn(st.batch, c, h, w, device=device, dtype=dtype)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    # Autocast's weight cache must be off for graph capture (a cached cast would be captured once).
    ctx = (torch.autocast(device.type, dtype=_DTYPES[st.precision], cache_enabled=st.mode != "cudagraph")
           if half == HALF_AUTOCAST else nullcontext())
    model = variants.get(dtype, cl, st.mode == "compile")

    def run():
        with ctx:
            return model(x)

    case = _Case(st, x, ctx, half, cl, model, run, PassTimer(device))
    if st.mode == "compile":  # the first call traces and compiles: timed apart from the steady state
        sync(device)
        t0 = time.perf_counter()
        run()
        sync(device)
        case.compile_s = round(time.perf_counter() - t0, 2)
    elif st.mode == "cudagraph":
        case.run = _graphed(model, x, ctx)
    return case


def _peak_for(precision: str, device: torch.device, peak: dict | None) -> tuple[float | None, str | None]:
    """The measured matmul peak a result at ``precision`` is compared with."""
    if not peak:
        return None, None
    if precision == "fp32":
        # cuDNN runs fp32 convolutions on TF32 tensor cores unless told not to.
        kind = "tf32" if device.type == "cuda" and torch.backends.cudnn.allow_tf32 else "fp32"
    else:
        kind = precision
    value = peak.get(f"{kind}_matmul_tflops")
    return (value, f"{kind} matmul") if value else (None, None)


def measure_interleaved(
    model: nn.Module,
    key: str,
    device: torch.device,
    settings: list[Setting],
    *,
    channels_last: bool | None = None,
    autocast: bool = False,
    runs: int = 20,
    warmup: int = 5,
    peak: dict | None = None,
) -> list[BenchResult]:
    """Time several settings of one model, interleaved: round after round, each setting runs
    once per round (in a rotating order), so a burst of load from elsewhere lands on all of
    them alike instead of on whichever happened to run then. One result per setting, with
    its p10/p50/p90 spread over ``runs`` passes.

    Half precision casts the weights and the input (with channels_last unless
    ``channels_last=False``); ``autocast=True`` uses ``torch.autocast`` instead, labelled as such.
    ``peak`` (from ``device_peak``) turns achieved TFLOP/s into a share of the device's peak.
    """
    spec = get_spec(key)
    variants = _Variants(model)
    benchmark_flag = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda"  # cuDNN picks its fastest kernels per shape
    try:
        with torch.inference_mode():
            cases = []
            for st in settings:
                cancel.check()
                cases.append(_make_case(variants, st, spec, device, channels_last, autocast))
            for _ in range(warmup):
                for case in cases:
                    cancel.check()
                    case.run()
            sync(device)
            for r in range(runs):
                for i in range(len(cases)):
                    case = cases[(i + r) % len(cases)]
                    cancel.check()
                    case.timer.time(case.run)
            return [_result(case, key, device, runs, warmup, peak) for case in cases]
    finally:
        torch.backends.cudnn.benchmark = benchmark_flag


def _result(case: _Case, key: str, device: torch.device, runs: int, warmup: int, peak: dict | None) -> BenchResult:
    st = case.setting
    times = sorted(case.timer.times_ms())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        case.run()
        mem, kind = torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    else:
        eager = getattr(case.model, "_orig_mod", case.model)  # tracked op by op: the eager forward
        mem = cpu_peak_mb(eager, case.x, case.autocast)
        kind = "peak live tensor bytes (weights + activations" + (", eager forward)" if st.mode == "compile" else ")")
    p50 = statistics.median(times)
    size = tuple(case.x.shape[1:])
    flops = forward_flops(key, size[1], size[2])
    tflops = flops * st.batch / (p50 / 1000.0) / 1e12
    ceiling, ceiling_kind = _peak_for(st.precision, device, peak)
    return BenchResult(
        key, device.type, device_name(device), st.mode, st.precision, case.half, case.channels_last, st.batch, size,
        runs, warmup, torch.get_num_threads(), round(_quantile(times, 0.1), 3), round(p50, 3),
        round(_quantile(times, 0.9), 3), round(statistics.fmean(times), 3), round(st.batch / p50 * 1000.0, 2),
        case.compile_s, _sig(flops / 1e9), _sig(tflops), None if ceiling is None else _sig(100 * tflops / ceiling),
        ceiling_kind,
        round(mem, 1), kind, torch.__version__, datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


def _sig(v: float, digits: int = 4) -> float:
    """``v`` to ``digits`` significant digits (a CPU's 0.004 TFLOP/s keeps its precision)."""
    return float(f"{v:.{digits}g}")


def measure(model: nn.Module, key: str, device: torch.device, *, batch: int, precision: str = "fp32",
            mode: str = "eager", channels_last: bool | None = None, autocast: bool = False, runs: int = 20,
            warmup: int = 5, resolution: int | None = None, peak: dict | None = None) -> BenchResult:
    """One setting (see ``measure_interleaved``)."""
    return measure_interleaved(model, key, device, [Setting(batch, precision, resolution, mode)],
                               channels_last=channels_last, autocast=autocast, runs=runs, warmup=warmup, peak=peak)[0]


def _best_ms(device: torch.device, fn: Callable[[], object], reps: int) -> float:
    fn()
    sync(device)
    timer = PassTimer(device)
    for _ in range(reps):
        timer.time(fn)
    return min(timer.times_ms())


def device_peak(device: torch.device) -> dict:
    """The roofline's ceilings, measured once per run: the best of a few large matmuls per
    precision (TFLOP/s) and a large device-to-device copy (GB/s, bytes read + written)."""
    cuda = device.type == "cuda"
    n, reps = (8192, 10) if cuda else (1024, 3)
    kinds = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}
    if cuda:
        kinds["fp16"] = torch.float16
    out: dict = {"how": f"best of {reps} {n}x{n} matmuls per precision; a "
                        f"{'1 GiB' if cuda else '256 MiB'} tensor copy for bandwidth (read + write)"}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        with torch.inference_mode():
            for name, dtype in kinds.items():
                if name == "tf32" and not cuda:
                    continue
                torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
                a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
                ms = _best_ms(device, partial(torch.matmul, a, b), reps)
                out[f"{name}_matmul_tflops"] = round(2 * n**3 / (ms / 1000.0) / 1e12, 3)
            nbytes = (1 << 30) if cuda else (256 << 20)
            src = torch.empty(nbytes, dtype=torch.uint8, device=device)
            dst = torch.empty_like(src)
            ms = _best_ms(device, lambda: dst.copy_(src), reps)
            out["copy_gb_s"] = round(2 * nbytes / (ms / 1000.0) / 1e9, 1)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return out


# The spread above which figures are called noisy: the slowest tenth of the passes takes more
# than 1.5 times as long as the fastest tenth. A quiet machine measures well under that.
NOISY_SPREAD = 1.5


def noise_note(results: list[dict], others_running: int = 0) -> str | None:
    """A plain sentence when the figures are noisy, and why; None when they look steady."""
    spreads = [(r["p90_ms"] / r["p10_ms"], r) for r in results if r.get("p10_ms")]
    wide = [(sp, r) for sp, r in spreads if sp > NOISY_SPREAD]
    reasons = []
    if others_running:
        reasons.append(f"{others_running} other request{'s were' if others_running > 1 else ' was'} "
                       "running on the same machine while it was measured")
    if wide:
        sp, r = max(wide, key=lambda t: t[0])
        reasons.append(f"{len(wide)} of {len(spreads)} settings spread widely (worst: {get_spec(r['model']).name} "
                       f"batch {r['batch']}, p90 is {sp:.1f}x p10)")
    if not reasons:
        return None
    return ("These figures are noisy: " + "; and ".join(reasons) +
            ". Compare settings by their bars, not their exact values, or measure again when the machine is idle.")




def run_benchmark(
    models: list[str],
    *,
    device: str = "auto",
    batches: tuple[int, ...] = (1, 32),
    precisions: tuple[str, ...] = ("fp32",),
    modes: tuple[str, ...] | None = None,
    autocast: bool = False,
    channels_last: bool | None = None,
    runs: int = 20,
    warmup: int = 5,
    progress: ProgressFn | None = None,
) -> dict:
    """The results-file structure: an environment record (with the device's measured peak) and
    one result per setting. ``modes`` defaults to ``default_modes(device)``."""
    dev = pick_device(device)
    modes = tuple(modes or default_modes(dev))
    for mode in modes:  # a mode the device cannot run is refused before anything is measured
        check_setting(Setting(1, mode=mode), dev)
    if progress:
        progress(0.0, "measuring the device's peak (matmul, copy)")
    env = environment(dev)
    env["peak"] = device_peak(dev)
    env["cudnn_benchmark"] = dev.type == "cuda"
    results = []
    total = len(models) * len(batches) * len(precisions) * len(modes)
    done = 0
    for key in models:
        model = prepare(key, dev)
        settings = []
        for mode in modes:
            for precision in precisions:
                for b in batches:
                    try:
                        check_setting(Setting(b, precision, mode=mode), dev)
                        settings.append(Setting(b, precision, mode=mode))
                    except ValueError as e:
                        results.append({"model": key, "batch": b, "precision": precision, "mode": mode, "error": str(e)})
        if progress:
            progress(done / total, f"{key}: {len(settings)} settings, interleaved")
        try:
            results += [] if not settings else [r.to_json() for r in measure_interleaved(
                model, key, dev, settings, channels_last=channels_last, autocast=autocast, runs=runs, warmup=warmup,
                peak=env["peak"])]
        except RuntimeError as e:  # out of memory, an unsupported kernel, a failed compile
            results += [{"model": key, "batch": st.batch, "precision": st.precision, "mode": st.mode,
                         "error": str(e).strip().splitlines()[0][:300]} for st in settings]
        done += len(precisions) * len(batches) * len(modes)
        del model
    return {"environment": env, "settings": {
        "batches": list(batches), "precisions": list(precisions), "modes": list(modes),
        "half": HALF_AUTOCAST if autocast else HALF_CAST, "channels_last": channels_last,
        "cudagraph": CUDAGRAPH_HOW if "cudagraph" in modes else None, "runs": runs, "warmup": warmup},
        "results": results}


def benchmark_tflop(models: list[str], batches: tuple[int, ...], modes: tuple[str, ...], runs: int, warmup: int) -> float:
    """Arithmetic ``run_benchmark`` asks for: every image of every warm-up and timed pass."""
    return sum(module_flops(k)[0] for k in models) * sum(batches) * len(modes) * (runs + warmup) / 1e12


SCALING_BATCHES = (1, 2, 4, 8, 16)
SCALING_RESOLUTIONS = (128, 160, 224, 288, 352)


def scaling_tflop(key: str, runs: int, warmup: int = 2, batches=SCALING_BATCHES,
                  resolutions=SCALING_RESOLUTIONS) -> float:
    """Arithmetic ``scaling`` asks for: the batch curve at the model's own size, then batch 1
    at each resolution the model accepts, ``runs + warmup`` passes each."""
    spec = get_spec(key)
    per_round = module_flops(key)[0] * sum(batches)
    per_round += sum(forward_flops(key, r, r) for r in resolutions if r >= spec.inputs.min_side)
    return per_round * (runs + warmup) / 1e12


def scaling(key: str, *, device: str = "auto", batches=SCALING_BATCHES, resolutions=SCALING_RESOLUTIONS,
            runs: int = 8, warmup: int = 2, progress: ProgressFn | None = None) -> dict:
    """How cost grows: latency per image vs batch size (own resolution), and latency vs input
    resolution (batch 1). All settings are timed interleaved, ``runs`` passes each, and each
    point carries its p10-p90 spread."""
    if runs < 3:
        raise BadRequest("a curve needs at least 3 timed passes per point (one sample shows no spread)")
    dev = pick_device(device)
    model = prepare(key, dev)
    spec = get_spec(key)
    min_side = spec.inputs.min_side
    by_batch = [Setting(b) for b in batches]
    by_res = [Setting(1, resolution=r) for r in resolutions if r >= min_side]
    if progress:
        progress(0.05, f"{key}: {len(by_batch) + len(by_res)} settings, {runs} interleaved rounds")
    results = measure_interleaved(model, key, dev, by_batch + by_res, runs=runs, warmup=warmup)
    out = {"model": key, "device": dev.type, "runs": runs, "batch": [], "resolution": []}
    for r in results[: len(by_batch)]:
        b = r.batch
        out["batch"].append({"batch": b, "ms_per_image": round(r.p50_ms / b, 3), "p10": round(r.p10_ms / b, 3),
                             "p90": round(r.p90_ms / b, 3), "p10_ms": r.p10_ms, "p50_ms": r.p50_ms, "p90_ms": r.p90_ms})
    for r in results[len(by_batch):]:
        out["resolution"].append({"resolution": r.input_size[-1], "p10_ms": r.p10_ms, "p50_ms": r.p50_ms,
                                  "p90_ms": r.p90_ms})
    out["results"] = [r.to_json() for r in results]
    out["noise"] = noise_note(out["results"])
    return out


def plain_loop_ms(model: nn.Module, x: torch.Tensor, runs: int) -> float:
    """The hand-written reference: a bare loop, total time / runs; on CUDA one pair of events
    around the whole loop (no per-pass events, no sync inside)."""
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        if x.is_cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(runs):
                model(x)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / runs
        t0 = time.perf_counter()
        for _ in range(runs):
            model(x)
        return (time.perf_counter() - t0) * 1000.0 / runs


def reference_files() -> list[dict]:
    """Shipped results (assets/benchmarks/*.json), newest first."""
    out = []
    for p in sorted(BENCH_DIR.glob("*.json")):
        try:
            data = json.loads(p.read_text())
            data["file"] = p.name
            out.append(data)
        except (OSError, ValueError) as e:  # shown without it, and said in the log
            log.warning("benchmark reference %s is unreadable and was left out: %s", p, e)
            continue
    return sorted(out, key=lambda d: d.get("environment", {}).get("date", ""), reverse=True)


def reference_rate(device: str) -> tuple[float, str] | None:
    """The median arithmetic rate (FLOP/s) that the shipped results for this kind of device
    reached in fp32 eager, and the device it was measured on: what duration estimates use."""
    for data in reference_files():
        env = data.get("environment", {})
        if env.get("device") != device:
            continue
        rates = [module_flops(r["model"])[0] * r["batch"] / (r["p50_ms"] / 1000) for r in data.get("results", [])
                 if "error" not in r and r.get("precision") == "fp32" and r.get("mode", "eager") == "eager"
                 and r.get("p50_ms") and r.get("model") in ZOO]
        if rates:
            return statistics.median(rates), env.get("device_name", device)
    return None


def estimated_seconds(tflop: float, device: str, models: int = 1) -> tuple[float, str] | None:
    """A measurement's wall time before it starts: its arithmetic at the reference rate of this
    kind of device, plus about a second per model built. None without a reference."""
    ref = reference_rate(device)
    if ref is None:
        return None
    rate, name = ref
    return tflop * 1e12 / rate + models, name
