"""Measured inference time, the way timm's benchmark.py does it.

Warm-up runs first, then ``runs`` timed forward passes under ``torch.inference_mode``. On
CUDA each pass is bracketed by CUDA events (one synchronisation at the end, none in between);
on the CPU by ``time.perf_counter``. Reported: the median (p50) and 90th percentile of the
per-pass latency, the throughput at that batch (images/s from the median), and peak memory:
``torch.cuda.max_memory_allocated`` on CUDA; on the CPU, the peak of live tensor bytes
(weights included) tracked op by op during one pass. Every result carries its environment.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import weakref
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from . import cancel
from .paths import BENCH_DIR
from .runtime import build_random, pick_device
from .zoo import get_spec

PRECISIONS = ("fp32", "fp16", "bf16")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    """Where and with what a result was measured."""
    import torchvision

    env = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
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
    precision: str
    channels_last: bool
    compiled: bool
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


def prepare(key: str, device: torch.device, *, channels_last: bool = False, compile: bool = False) -> nn.Module:
    """A random-init copy of the architecture (timing does not depend on the weights)."""
    model = build_random(get_spec(key)).to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    return model


@dataclass(frozen=True)
class Setting:
    """One timed configuration of a prepared model."""

    batch: int
    precision: str = "fp32"
    resolution: int | None = None


def check_setting(st: Setting, device: torch.device) -> None:
    """Refuse, with the reason, a setting that cannot be measured honestly on ``device``."""
    if st.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    if st.precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 is a GPU setting: most CPUs have no fast float16 kernels, so the "
                         "figure would measure emulation; on the CPU use fp32 or bf16")


def _quantile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(round(q * (len(sorted_ms) - 1))))]


def measure_interleaved(
    model: nn.Module,
    key: str,
    device: torch.device,
    settings: list[Setting],
    *,
    channels_last: bool = False,
    compiled: bool = False,
    runs: int = 20,
    warmup: int = 5,
) -> list[BenchResult]:
    """Time several settings of one model, interleaved: round after round, each setting runs
    once per round (in a rotating order), so a burst of load from elsewhere lands on all of
    them alike instead of on whichever happened to run then. One result per setting, with
    its p10/p50/p90 spread over ``runs`` passes."""
    spec = get_spec(key)
    cases = []
    for st in settings:
        check_setting(st, device)
        c, h, w = spec.input_size
        if st.resolution:
            h = w = st.resolution
        x = torch.randn(st.batch, c, h, w, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast(device.type, dtype=_DTYPES[st.precision]) if st.precision in _DTYPES
                    else nullcontext())
        cases.append((st, x, autocast, (c, h, w), PassTimer(device)))

    def run(case) -> None:
        _, x, autocast, _, _ = case
        with autocast:
            model(x)

    with torch.inference_mode():
        for _ in range(warmup):
            for case in cases:
                cancel.check()
                run(case)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        for r in range(runs):
            for i in range(len(cases)):
                case = cases[(i + r) % len(cases)]
                cancel.check()
                case[4].time(lambda: run(case))
    env = environment(device)
    out = []
    for st, x, autocast, size, timer in cases:
        times = sorted(timer.times_ms())
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            with torch.inference_mode(), autocast:
                model(x)
            peak, kind = torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
        else:
            peak, kind = cpu_peak_mb(model, x, autocast), "peak live tensor bytes (weights + activations)"
        p50 = statistics.median(times)
        out.append(BenchResult(
            key, device.type, env["device_name"], st.precision, channels_last, compiled, st.batch, size, runs,
            warmup, torch.get_num_threads(), round(_quantile(times, 0.1), 3), round(p50, 3),
            round(_quantile(times, 0.9), 3), round(statistics.fmean(times), 3),
            round(st.batch / p50 * 1000.0, 2), round(peak, 1), kind, torch.__version__, env["date"],
        ))
    return out


def measure(model: nn.Module, key: str, device: torch.device, *, batch: int, precision: str = "fp32",
            channels_last: bool = False, compiled: bool = False, runs: int = 20, warmup: int = 5,
            resolution: int | None = None) -> BenchResult:
    """One setting (see ``measure_interleaved``)."""
    return measure_interleaved(model, key, device, [Setting(batch, precision, resolution)],
                               channels_last=channels_last, compiled=compiled, runs=runs, warmup=warmup)[0]


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


ProgressFn = Callable[[float | None, str], None]


def run_benchmark(
    models: list[str],
    *,
    device: str = "auto",
    batches: tuple[int, ...] = (1, 32),
    precisions: tuple[str, ...] = ("fp32",),
    channels_last: bool = False,
    compile: bool = False,
    runs: int = 20,
    warmup: int = 5,
    progress: ProgressFn | None = None,
) -> dict:
    """The results-file structure: an environment record and one result per setting."""
    dev = pick_device(device)
    results = []
    total = len(models) * len(batches) * len(precisions)
    done = 0
    for key in models:
        model = prepare(key, dev, channels_last=channels_last, compile=compile)
        settings = []
        for precision in precisions:
            for b in batches:
                try:
                    check_setting(Setting(b, precision), dev)
                    settings.append(Setting(b, precision))
                except ValueError as e:
                    results.append({"model": key, "batch": b, "precision": precision, "error": str(e)})
        if progress:
            progress(done / total, f"{key}: {len(settings)} settings, interleaved")
        try:
            results += [] if not settings else [r.to_json() for r in measure_interleaved(
                model, key, dev, settings, channels_last=channels_last, compiled=compile, runs=runs, warmup=warmup)]
        except RuntimeError as e:  # out of memory, unsupported kernel
            results += [{"model": key, "batch": st.batch, "precision": st.precision, "error": str(e)} for st in settings]
        done += len(precisions) * len(batches)
        del model
    return {"environment": environment(dev), "settings": {
        "batches": list(batches), "precisions": list(precisions), "channels_last": channels_last,
        "compile": compile, "runs": runs, "warmup": warmup}, "results": results}


def scaling(key: str, *, device: str = "auto", batches=(1, 2, 4, 8, 16), resolutions=(128, 160, 224, 288, 352),
            runs: int = 8, warmup: int = 2, progress: ProgressFn | None = None) -> dict:
    """How cost grows: latency per image vs batch size (own resolution), and latency vs input
    resolution (batch 1). All settings are timed interleaved, ``runs`` passes each, and each
    point carries its p10-p90 spread."""
    if runs < 3:
        raise ValueError("a curve needs at least 3 timed passes per point (one sample shows no spread)")
    dev = pick_device(device)
    model = prepare(key, dev)
    spec = get_spec(key)
    min_side = 75 if spec.key == "inception_v3" else 32 if spec.inputs.kind == "photo" else spec.input_size[-1]
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
    """The hand-written reference: a bare loop, total time / runs (synchronised on CUDA)."""
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(runs):
            model(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1000.0 / runs


def reference_files() -> list[dict]:
    """Shipped results (assets/benchmarks/*.json), newest first."""
    out = []
    for p in sorted(BENCH_DIR.glob("*.json")):
        try:
            data = json.loads(p.read_text())
            data["file"] = p.name
            out.append(data)
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda d: d.get("environment", {}).get("date", ""), reverse=True)


def results_file_name(env: dict) -> str:
    name = env.get("device_name", env.get("device", "device"))
    slug = "".join(ch.lower() if ch.isalnum() else "-" for ch in name).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    return f"{env.get('device', 'cpu')}-{slug[:60]}.json"
