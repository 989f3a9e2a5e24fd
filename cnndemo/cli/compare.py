"""Commands of the Compare view: sizes and FLOPs, the benchmark, and the anatomy of a model."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from ..bench import MODES, run_benchmark
from ..costs import (FLOPS_CONVENTION, PARAMS_CONVENTION, branch_costs, factorisation_savings, model_stats,
                       reduction_savings, stage_costs)
from ..zoo import ZOO
from .common import command, emit, model_arg


def _setup_stats(p):
    p.add_argument("--json", action="store_true")


@command("stats", "parameters, weight size, FLOPs and accuracy of every zoo model (no timing)", _setup_stats)
def run_stats(args) -> int:
    rows = [model_stats(k).to_json() for k in ZOO]
    if args.json:
        emit(rows)
        return 0
    print(FLOPS_CONVENTION)
    print(f"{'model':15} {'params':>12} {'MiB':>8} {'GFLOPs':>8} {'acc@1':>7} {'acc@5':>7}  accuracy on")
    for r in rows:
        a1 = f"{r['acc1']:.1f}" if r["acc1"] is not None else "-"
        a5 = f"{r['acc5']:.1f}" if r["acc5"] is not None else "-"
        file = f"  (torchvision's file: {r['file_mb']:.1f} MiB, with its auxiliary heads)" if r["file_mb"] else ""
        print(f"{r['key']:15} {r['params']:>12,} {r['weight_mb']:>8.1f} {r['gflops']:>8.2f} {a1:>7} {a5:>7}  "
              f"{r['accuracy_on']}{file}")
    return 0


def _setup_bench(p):
    p.add_argument("--models", nargs="+", choices=list(ZOO), metavar="KEY", default=None, help="default: all")
    p.add_argument("--device", dest="bench_device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    p.add_argument("--mode", nargs="+", choices=MODES, default=None,
                   help="eager: module by module; cudagraph: the eager forward captured as a CUDA graph and replayed "
                        "(CUDA only); compile: torch.compile, its compile time reported apart. "
                        "Default: eager and cudagraph on CUDA, eager on the CPU")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "fp16", "bf16"],
                   help="fp16/bf16 cast the weights and the input (channels_last by default)")
    p.add_argument("--autocast", action="store_true", help="half precision by torch.autocast instead of casting")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="memory format (default: channels_last for cast half precision, contiguous otherwise)")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json", metavar="OUT.json", type=Path, default=None, help="write the results file here")


@command("bench", "measure latency p50/p90, throughput, TFLOP/s against the device's peak, and peak memory", _setup_bench)
def run_bench(args) -> int:
    from tqdm import tqdm

    models = args.models or list(ZOO)
    bar = tqdm(total=100, file=sys.stderr, leave=False)

    def progress(frac, desc):
        bar.set_description(desc)
        bar.n = round((frac or 0) * 100)
        bar.refresh()

    try:
        data = run_benchmark(models, device=args.bench_device, batches=tuple(args.batch), precisions=tuple(args.precision),
                             modes=tuple(args.mode) if args.mode else None, autocast=args.autocast,
                             channels_last=args.channels_last, runs=args.runs, warmup=args.warmup, progress=progress)
    except ValueError as e:  # a mode or precision this device cannot run
        raise SystemExit(f"bench: {e}") from None
    finally:
        bar.close()
    env, peak = data["environment"], data["environment"]["peak"]
    print(f"{env['device_name']} ({env['device']}, {env['threads']} threads), torch {env['torch']}, {env['date']}")
    print("peak: " + ", ".join(f"{k.removesuffix('_matmul_tflops')} {v:g} TFLOP/s" for k, v in peak.items()
                               if k.endswith("_tflops")) + f", copy {peak['copy_gb_s']:g} GB/s ({peak['how']})")
    for r in data["results"]:
        head = f"  {r['model']:15} {r['mode']:9} batch {r['batch']:4} {r['precision']:5}"
        if "error" in r:
            print(f"{head} {r['error']}")
            continue
        pct = "" if r["pct_peak"] is None else f" = {r['pct_peak']:5.1f}% of {r['pct_peak_of']}"
        comp = "" if r["compile_s"] is None else f"  (compile {r['compile_s']:.1f} s)"
        print(f"{head}{' CL' if r['channels_last'] else '   '} p50 {r['p50_ms']:9.2f} ms  p90 {r['p90_ms']:9.2f} ms"
              f"  {r['throughput']:9.1f} img/s  {r['tflops']:8.3f} TFLOP/s{pct}  peak {r['peak_mem_mb']:8.1f} MiB{comp}")
    if any(r.get("half") == "autocast" for r in data["results"]):
        print("half precision by torch.autocast (per-op casts); without --autocast the weights and input are cast")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _setup_anatomy(p):
    model_arg(p)
    p.add_argument("--block", default=None, help="per-branch costs and 1x1-reduction savings of this block")
    p.add_argument("--json", action="store_true")


@command("anatomy", "stage table, per-branch costs and what the design choices save", _setup_anatomy)
def run_anatomy(args) -> int:
    spec = ZOO[args.model]
    block = args.block or (spec.default_block if spec.has_branches else None)
    out = {
        "model": spec.key,
        "flops_convention": FLOPS_CONVENTION,
        "params_convention": PARAMS_CONVENTION,
        "stages": [asdict(s) for s in stage_costs(spec)],
        "block": block,
        "branches": [asdict(b) for b in branch_costs(spec, block)] if block else [],
        "savings": [s.to_json() for s in (reduction_savings(spec, block) if block else []) + factorisation_savings(spec)],
    }
    if args.json:
        emit(out)
        return 0
    print(FLOPS_CONVENTION)
    for s in out["stages"]:
        print(f"  {s['name']:16} {s['layer']:18} {'x'.join(map(str, s['shape'])):14} {s['params']:>12,} {s['flops'] / 1e6:10.1f} MFLOPs")
    for b in out["branches"]:
        print(f"  {b['block']}/{b['branch']:12} {b['path']:45} {b['params']:>10,} {b['flops'] / 1e6:9.1f} MFLOPs")
    for s in out["savings"]:
        textbook = "" if s["textbook_saved"] is None else f" (textbook, equal widths: {s['textbook_saved']:.0%}; {s['why']})"
        print(f"  {s['where']}: {s['choice']}: {s['built']} vs {s['alternative']}: "
              f"{s['params_saved']:.0%} fewer parameters, {s['flops_saved']:.0%} fewer FLOPs{textbook}")
    return 0
