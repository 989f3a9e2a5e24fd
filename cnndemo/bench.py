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


def measure(
    model: nn.Module,
    key: str,
    device: torch.device,
    *,
    batch: int,
    precision: str = "fp32",
    channels_last: bool = False,
    compiled: bool = False,
    runs: int = 20,
    warmup: int = 5,
    resolution: int | None = None,
) -> BenchResult:
    spec = get_spec(key)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 autocast is a GPU setting; on the CPU use fp32 or bf16")
    c, h, w = spec.input_size
    if resolution:
        h = w = resolution
    x = torch.randn(batch, c, h, w, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=_DTYPES[precision]) if precision in _DTYPES else nullcontext()
    with torch.inference_mode(), autocast:
        for _ in range(warmup):
            cancel.check()
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        timer = PassTimer(device)
        for _ in range(runs):
            cancel.check()
            timer.time(lambda: model(x))
        times = timer.times_ms()
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    else:
        peak, kind = cpu_peak_mb(model, x, autocast), "peak live tensor bytes (weights + activations)"
    times.sort()
    p50 = statistics.median(times)
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    env = environment(device)
    return BenchResult(
        key, device.type, env["device_name"], precision, channels_last, compiled, batch, (c, h, w), runs,
        warmup, torch.get_num_threads(), round(p50, 3), round(p90, 3), round(statistics.fmean(times), 3),
        round(batch / p50 * 1000.0, 2), round(peak, 1), kind, torch.__version__, env["date"],
    )


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
        for precision in precisions:
            for b in batches:
                if progress:
                    progress(done / total, f"{key}: batch {b}, {precision}")
                try:
                    r = measure(model, key, dev, batch=b, precision=precision, channels_last=channels_last,
                                compiled=compile, runs=runs, warmup=warmup)
                    results.append(r.to_json())
                except (ValueError, RuntimeError) as e:
                    results.append({"model": key, "batch": b, "precision": precision, "error": str(e)})
                done += 1
        del model
    return {"environment": environment(dev), "settings": {
        "batches": list(batches), "precisions": list(precisions), "channels_last": channels_last,
        "compile": compile, "runs": runs, "warmup": warmup}, "results": results}


def scaling(key: str, *, device: str = "auto", batches=(1, 2, 4, 8, 16), resolutions=(128, 160, 224, 288, 352),
            runs: int = 8, warmup: int = 2, progress: ProgressFn | None = None) -> dict:
    """How cost grows: latency vs batch size (own resolution) and vs input resolution (batch 1)."""
    dev = pick_device(device)
    model = prepare(key, dev)
    spec = get_spec(key)
    min_side = 75 if spec.key == "inception_v3" else 32 if spec.inputs.kind == "photo" else spec.input_size[-1]
    out = {"model": key, "device": dev.type, "batch": [], "resolution": []}
    steps = len(batches) + len(resolutions)
    for i, b in enumerate(batches):
        if progress:
            progress(i / steps, f"{key}: batch {b}")
        r = measure(model, key, dev, batch=b, runs=runs, warmup=warmup)
        out["batch"].append({"batch": b, "p50_ms": r.p50_ms, "ms_per_image": round(r.p50_ms / b, 3)})
    for j, res in enumerate(r for r in resolutions if r >= min_side):
        if progress:
            progress((len(batches) + j) / steps, f"{key}: {res}x{res}")
        r = measure(model, key, dev, batch=1, runs=runs, warmup=warmup, resolution=res)
        out["resolution"].append({"resolution": res, "p50_ms": r.p50_ms})
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
