"""Developer diagnostics: start-up time, the cost of a view against a bare forward, the
benchmark harness against a plain loop, a memory soak and a simulated class. They reach the
app only through its public functions."""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ... import cache, settings
from ...attribution import INTERNAL_BATCH, Settings, attribute
from ...bench import measure, plain_loop_ms, prepare
from ...branches import explore_tensor
from .browsers import run_browser_follow
from .classroom import run_classroom
from . import peer  # noqa: F401 (registers peer-check)
from ...lessons import load_lesson
from .server import free_port, proc_status_mb, start_server
from ...paths import CHECKOUT, EXAMPLES_DIR
from ...pipeline import prepare as prepare_input, timed, timed_forward
from ...runtime import STORE, pick_device
from ...taps import hook_count
from ...zoo import DEFAULT_MODEL, ZOO
from ..common import command, emit, load_model, model_arg


def _setup_startup(p):
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", action="store_true")


@command("bench-startup", "cold start of `python app.py --offline` to the first HTTP 200", _setup_startup)
def run_bench_startup(args) -> int:
    times = []
    for _ in range(args.runs):
        server = start_server(timeout=300)
        times.append(server.startup_s)
        server.stop()
    result = {
        "runs_s": [round(t, 2) for t in times],
        "median_s": round(statistics.median(times), 2),
        "cpus": os.cpu_count(),
        "offline": True,
    }
    emit(result if args.json else f"cold start to first HTTP 200: median {result['median_s']} s over {args.runs} runs {result['runs_s']}")
    return 0


def _setup_bench_explore(p):
    model_arg(p)
    p.add_argument("--runs", type=int, default=20, help="timed runs of each (median reported; at least 10)")
    p.add_argument("--image", default=None, help="default: assets/examples/cat.jpg")
    p.add_argument("--json", action="store_true")


@command("bench-explore", "bare forward vs top-5 + every branch capture and share (same preprocessed tensor)", _setup_bench_explore)
def run_bench_explore(args) -> int:
    runs = max(10, args.runs)
    model = load_model(args.model)
    x = prepare_input(args.image or str(EXAMPLES_DIR / "cat.jpg"), model).x

    def bare() -> float:
        return timed_forward(model, x)[1]

    def full() -> float:
        with timed(model.device) as t:
            explore_tensor(model, x, 5)  # no cache: top-5 + every block's branches and shares
        return t.ms

    for _ in range(3):
        bare(), full()
    fwd, exp = [], []
    for _ in range(runs):  # interleaved, so drift hits both alike
        fwd.append(bare())
        exp.append(full())
    f, e = statistics.median(fwd), statistics.median(exp)
    result = {
        "model": model.key,
        "forward_ms": round(f, 2),
        "explore_ms": round(e, 2),
        "ratio": round(e / f, 3),
        "runs": runs,
        "blocks": len(model.spec.blocks),
        "device": str(model.device),
        "threads": torch.get_num_threads(),
    }
    emit(result if args.json else f"{model.key}: forward {f:.1f} ms, explore {e:.1f} ms, ratio {e / f:.2f} ({runs} runs)")
    return 0


def _setup_bench_attr(p):
    model_arg(p)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--internal-batch", type=int, default=None, help="default: the library's INTERNAL_BATCH")
    p.add_argument("--sweep-batch", action="store_true", help="time IG for internal batch sizes 1, 4, 8, 16, 32")
    p.add_argument("--json", action="store_true")


@command("bench-attribution", "cnndemo's Integrated Gradients vs a direct Captum call", _setup_bench_attr)
def run_bench_attribution(args) -> int:
    from captum.attr import IntegratedGradients

    model = load_model(args.model)
    image = str(EXAMPLES_DIR / "cat.jpg")
    x = prepare_input(image, model).x
    with torch.no_grad():
        target = int(model.module(x).argmax(1)[0])
    base = torch.zeros_like(x)

    def direct(ibs: int) -> float:
        with model.lock, timed(model.device) as t:
            IntegratedGradients(model.module).attribute(
                x, baselines=base, target=target, n_steps=args.steps, internal_batch_size=ibs
            )
        return t.ms

    def ours(ibs: int) -> float:
        with timed(model.device) as t:
            attribute(image, model, "ig", target=target, scores=False,
                      settings=Settings(steps=args.steps, internal_batch=ibs))
        return t.ms

    if args.sweep_batch:
        rows = []
        for ibs in (1, 4, 8, 16, 32):
            direct(ibs)
            t = statistics.median(direct(ibs) for _ in range(max(2, args.runs // 2)))
            rows.append({"internal_batch": ibs, "captum_ms": round(t, 1)})
            if not args.json:
                print(f"internal batch {ibs:3}: {t:8.1f} ms for IG with {args.steps} steps")
        if args.json:
            emit({"model": model.key, "steps": args.steps, "sweep": rows})
        return 0
    ibs = args.internal_batch or INTERNAL_BATCH
    ours(ibs), direct(ibs)  # warm-up (also builds the attribution copy once)
    a, d = [], []
    for _ in range(args.runs):  # interleaved
        a.append(ours(ibs))
        d.append(direct(ibs))
    res = {
        "model": model.key, "steps": args.steps, "internal_batch": ibs,
        "cnndemo_ms": round(statistics.median(a), 1), "captum_ms": round(statistics.median(d), 1),
        "ratio": round(statistics.median(a) / statistics.median(d), 3), "runs": args.runs,
        "threads": torch.get_num_threads(),
    }
    emit(res if args.json else f"IG {args.steps} steps on {model.key}: cnndemo {res['cnndemo_ms']} ms, "
         f"Captum {res['captum_ms']} ms, ratio {res['ratio']} (internal batch {ibs})")
    return 0


def _setup_bench_check(p):
    model_arg(p)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5, help="plain loops run before and after the harness")
    p.add_argument("--device", dest="bench_device", default="auto")
    p.add_argument("--json", action="store_true")


# At batch 32 and above the harness must agree with the plain loop this closely; batch 1 is
# launch-bound and noisy, so there the spreads are reported instead.
CHECK_TOLERANCE = 0.05


CHECK_MIN_BATCH = 32


@command("bench-check", "the benchmark harness against a plain event-timed loop", _setup_bench_check)
def run_bench_check(args) -> int:
    dev = pick_device(args.bench_device)
    model = prepare(args.model, dev)
    x = torch.randn(args.batch, *ZOO[args.model].input_size, device=dev)
    half = max(1, args.repeats // 2)
    loops = [plain_loop_ms(model, x, args.runs) for _ in range(half)]
    harness = measure(model, args.model, dev, batch=args.batch, runs=args.runs)
    loops += [plain_loop_ms(model, x, args.runs) for _ in range(max(1, args.repeats - half))]
    ref = statistics.median(loops)
    diff = harness.p50_ms / ref - 1
    checked = args.batch >= CHECK_MIN_BATCH
    res = {"model": args.model, "device": dev.type, "batch": args.batch, "runs": args.runs,
           "harness_p10_ms": harness.p10_ms, "harness_p50_ms": harness.p50_ms, "harness_p90_ms": harness.p90_ms,
           "plain_loop_ms": round(ref, 3), "plain_loop_range_ms": [round(min(loops), 3), round(max(loops), 3)],
           "difference": round(diff, 4), "tolerance": CHECK_TOLERANCE if checked else None,
           "agrees": abs(diff) <= CHECK_TOLERANCE if checked else None}
    if args.json:
        emit(res)
    else:
        print(f"{args.model} batch {args.batch} on {dev.type}: harness p50 {harness.p50_ms:.2f} ms "
              f"(p10-p90 {harness.p10_ms:.2f}-{harness.p90_ms:.2f}), plain loop {ref:.2f} ms "
              f"(range over {len(loops)} loops {min(loops):.2f}-{max(loops):.2f}): difference {diff:+.1%}")
        print(f"  {'agrees' if res['agrees'] else 'DISAGREES'} within {CHECK_TOLERANCE:.0%}" if checked else
              f"  batch below {CHECK_MIN_BATCH}: launch-bound and noisy, so compare the spreads above, not a tolerance")
    return 0 if res["agrees"] is not False else 1


def _setup_soak(p):
    p.add_argument("--requests", type=int, default=300, help="measured requests")
    p.add_argument("--warmup", type=int, default=90,
                   help="requests first, before the memory baseline: one full cycle of every (request, image, "
                        "model) variant, so that the bounded caches and lazily built model copies exist")
    p.add_argument("--json", action="store_true")


@command("soak", "serve the app in-process and send it N mixed requests; report memory and hooks", _setup_soak)
def run_soak(args) -> int:
    settings.export_default("CNNDEMO_OFFLINE", "1")
    from gradio_client import Client, handle_file

    from ...ui import launch

    port = free_port()
    rss_start = proc_status_mb()
    demo = launch(port=port, prevent_thread_lock=True, quiet=True)
    url = demo.local_url
    client = Client(url, verbose=False)
    ex = EXAMPLES_DIR
    bad = Path(tempfile.mkdtemp()) / "notes.jpg"
    bad.write_text("not an image")
    photos = [handle_file(str(p)) for p in sorted(ex.glob("*.jpg"))]
    spec = ZOO[DEFAULT_MODEL]
    blocks = [spec.blocks[0].name, spec.default_block, spec.blocks[-1].name]
    calls = [
        lambda i: client.predict(image=photos[i % len(photos)], model=[DEFAULT_MODEL, "squeezenet1_0", "bn_inception"][i % 3], api_name="/predict"),
        lambda i: client.predict(image=photos[i % len(photos)], model=DEFAULT_MODEL, block=blocks[i % 3], api_name="/branches"),
        lambda i: client.predict(image=photos[i % len(photos)], model="bn_inception", block="inception4c", branch=["1x1", "3x3", "double_3x3"][i % 3], mode="zero", api_name="/ablate"),
        lambda i: client.predict(image=photos[i % len(photos)], model="squeezenet1_0", method=["gradcam", "saliency"][i % 2], target=None, layer=None, api_name="/attribute"),
        lambda i: client.predict(image=handle_file(str(ex / "camera_gray.png")), api_name="/digits"),
        lambda i: client.predict(image=handle_file(str(bad)), model=DEFAULT_MODEL, api_name="/predict"),
    ]
    errors, expected_errors, rss_base, curve = [], 0, None, []
    total = args.warmup + args.requests
    t0 = time.perf_counter()
    for i in range(total):
        if i == args.warmup:
            gc.collect()
            rss_base = proc_status_mb()
            t0 = time.perf_counter()
        if i >= args.warmup and (i - args.warmup) % 50 == 0:
            curve.append((i - args.warmup, round(proc_status_mb(), 1)))
        kind = i % len(calls)
        try:
            calls[kind](i // len(calls))
            if kind == len(calls) - 1:
                errors.append(f"request {i}: a text file was accepted as an image")
        except Exception as e:
            if kind == len(calls) - 1 and "text file" in str(e):
                expected_errors += 1
            else:
                errors.append(f"request {i} ({kind}): {e}")
    elapsed = time.perf_counter() - t0
    gc.collect()
    rss_end = proc_status_mb()

    sizes = cache.sizes()
    caches = {"explorations_mb": sizes["explorations"]["mb"], "explorations": sizes["explorations"]["entries"],
              "branch_panels_mb": sizes["branch panels"]["mb"]}
    hooks = {lm.key: sum(hook_count(m) for m in lm.modules()) for lm in STORE.loaded()}
    demo.close()
    res = {
        "requests": args.requests,
        "warmup_requests": args.warmup,
        "seconds": round(elapsed, 1),
        "unexpected_errors": len(errors),
        "refused_as_expected": expected_errors,
        "rss_start_mb": round(rss_start, 1),
        "rss_after_warmup_mb": round(rss_base or rss_end, 1),
        "rss_end_mb": round(rss_end, 1),
        "growth_mb": round(rss_end - (rss_base or rss_end), 1),
        "rss_curve_mb": curve + [(args.requests, round(rss_end, 1))],
        "bounded_caches": caches,
        "hooks_left": sum(hooks.values()),
        "hooks_by_model": hooks,
        "first_errors": errors[:5],
    }
    emit(res if args.json else json.dumps(res, indent=2))
    return 0 if not errors and res["hooks_left"] == 0 else 1


def _env_argument(p) -> None:
    """``--env KEY=VALUE ...``: settings for the server a benchmark starts."""
    p.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE", help="server settings, e.g. CNNDEMO_WORKERS=2")


def _server_env(args) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in args.env)


def _to_stderr(message: str) -> None:
    """A benchmark's progress, on standard error (standard output carries its results)."""
    print(message, file=sys.stderr, flush=True)


def _setup_classroom(p):
    p.add_argument("--students", type=int, nargs="+", default=[10, 30, 60], help="class sizes, run in turn")
    p.add_argument("--lesson", default="default",
                   help="default (predict, switch block, knock out, IG, draw a digit), photo (the same, every student on a "
                        "photo and a drawing of their own: @photo, @drawing), predict, or a JSON file")
    _env_argument(p)
    p.add_argument("--rounds", type=int, default=1, help="repeat each class size this many times, pooled")
    p.add_argument("--client", choices=("browser", "gradio"), default="browser",
                   help="how each student talks to the app: as a browser does, over plain HTTP (default), or "
                        "through gradio_client (~160 ms of CPU per call on the same cores)")
    p.add_argument("--time-limit", type=float, default=1200.0, help="stop starting new steps after this many seconds")
    p.add_argument("--json", action="store_true")


@command("bench-classroom", "N simulated students run a lesson against the app on loopback", _setup_classroom)
def run_bench_classroom(args) -> int:
    env = _server_env(args)
    out = run_classroom(args.students, load_lesson(args.lesson), env=env, time_limit=args.time_limit, rounds=args.rounds,
                        progress=_to_stderr, client=args.client)
    if args.json:
        emit(out)
        return 0
    for run in out["runs"]:
        print(f"{run['students']} students: {run['wall_s']} s, {run['throughput_req_s']} req/s, "
              f"server RSS peak {run['server_rss_mb_peak']} MB")
        for api, r in run["endpoints"].items():
            print(f"  {api:<12} {r['step']:<26} p50 {r['p50_s']} s  p95 {r['p95_s']} s  max {r['max_s']} s  "
                  f"errors {r['errors']}/{r['calls']}  queue full {r['refused_queue_full']}"
                  + (f"  {r['first_errors']}" if r["errors"] else ""))
    return 0


def _setup_room(p):
    p.add_argument("--students", type=int, default=30, help="pages following the teacher (default 30)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between a page's looks at the room (the page's timer)")
    p.add_argument("--client", choices=("gradio", "http"), default="gradio",
                   help="gradio_client (default; ~0.15 s of CPU per call on the same cores), or a page's plain HTTP requests")
    p.add_argument("--transport", choices=("watch", "poll"), default="watch",
                   help="watch: one room_watch stream per student (default); poll: room_state once a second, as a page does")
    _env_argument(p)
    p.add_argument("--json", action="store_true")


@command("bench-room", "a class of N follows ten teacher changes through gradio_client: follow latency", _setup_room)
def run_bench_room(args) -> int:
    from .follow import run_follow

    env = _server_env(args)
    out = run_follow(args.students, poll_s=args.poll, env=env, client=args.client, transport=args.transport,
                     progress=_to_stderr)
    if args.json:
        emit(out)
    else:
        print(f"{out['students']} students ({out['client']}, {out['transport']}), {out['changes']} changes: follow p50 "
              f"{out['follow_p50_s']} s, p95 {out['follow_p95_s']} s, max {out['follow_max_s']} s; behind the teacher p95 "
              f"{out['behind_teacher_p95_s']} s; missed {out['missed']}, errors {out['errors']}; "
              f"server RSS peak {out['server_rss_mb_peak']} MB, server CPU {out['server_cpu_s']} s, "
              f"students' CPU {out['students_cpu_s']} s")
        for c in out["per_change"]:
            print(f"  p95 {c['p95_s']} s, behind the teacher {c['behind_teacher_p95_s']} s  (the teacher's own page "
                  f"{c['teacher_s']} s; {c['students']} students)  {c['view']}")
    return 0 if out["errors"] == 0 and out["missed"] == 0 else 1


def _setup_follow(p):
    p.add_argument("--students", type=int, default=3, help="student pages (default 3; the second at 390 px)")
    p.add_argument("--chromium", default="/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None,
                   help="the Chromium to run (default /usr/bin/chromium when present, else Playwright's own)")
    _env_argument(p)
    p.add_argument("--json", action="store_true")


@command("bench-follow", "a teacher and N student pages in Chromium follow eight changes: seconds per page, CPU "
         "of server and browsers", _setup_follow)
def run_bench_follow(args) -> int:
    env = _server_env(args)
    out = run_browser_follow(args.students, chromium=args.chromium, env=env,
                             progress=_to_stderr)
    if args.json:
        emit(out)
    else:
        print(f"a teacher and {out['students']} student pages on {out['cores']} cores: slowest student "
              f"{out['slowest_student_max_s']} s; missed {out['missed']}; CPU server {out['server_cpu_s']} s, "
              f"browsers {out['browsers_cpu_s']} s")
        for r in out["changes"]:
            print(f"  {r['change']:<40} teacher {r['teacher_s']} s, slowest student {r['slowest_student_s']} s "
                  f"(behind {r['behind_teacher_s']} s); CPU server {r['server_cpu_s']} s, browsers "
                  f"{r['browsers_cpu_s']} s")
    return 0 if out["missed"] == 0 else 1


def _setup_bench_checkpoints(p):
    p.add_argument("--model", default="resnet50", choices=list(ZOO), metavar="KEY", help="zoo key (default resnet50)")
    p.add_argument("--json", action="store_true")


# Run in a fresh process per file: the peak resident memory of one load, from a reset high-water mark.
_LOAD_ONE = """
import json, sys, time
from pathlib import Path
from cnndemo.cli.diagnostics.server import proc_status_mb as status
from cnndemo.runtime import STORE
from cnndemo.weights import WeightsError
Path('/proc/self/clear_refs').write_text('5')
before = status('self', 'VmRSS')
t0 = time.perf_counter()
try:
    STORE.get(sys.argv[1], checkpoint=sys.argv[2]); error = None
except WeightsError as e:
    error = str(e)
print(json.dumps({"s": time.perf_counter() - t0, "peak_mb": status('self', 'VmHWM') - before, "error": error}))
"""


@command("bench-checkpoints", "time and peak memory of loading each hostile checkpoint against a valid one",
         _setup_bench_checkpoints)
def run_bench_checkpoints(args) -> int:
    from ... import hostile

    weights_mb = hostile.expected(args.model).total_bytes / 2**20
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name, make in hostile.CASES.items():
            path = make(Path(d), args.model)
            out = subprocess.run([sys.executable, "-c", _LOAD_ONE, args.model, str(path)], capture_output=True,
                                 text=True, cwd=CHECKOUT, check=True)
            row = {"case": name, "file_mb": round(path.stat().st_size / 2**20, 2), **json.loads(out.stdout)}
            row["s"], row["peak_mb"] = round(row["s"], 3), round(row["peak_mb"], 1)
            rows.append(row)
            path.unlink()
    if args.json:
        emit({"model": args.model, "weights_mb": round(weights_mb, 1), "results": rows})
    else:
        print(f"{args.model}: weights {weights_mb:.1f} MB; goal: peak < {2 * weights_mb:.0f} MB, time < 2x a valid load")
        for r in rows:
            verdict = "loaded" if r["error"] is None else "refused: " + r["error"][:90]
            print(f"  {r['case']:32s} {r['file_mb']:8.2f} MB  {r['s']:7.3f} s  peak +{r['peak_mb']:7.1f} MB  {verdict}")
    return 0


def _setup_flood(p):
    p.add_argument("--seconds", type=float, default=60.0, help="how long the flood lasts")
    p.add_argument("--flood", choices=["predict", "ig"], default="predict",
                   help="what the flooding client sends: uncached predictions, or IG-100 on ResNet-50")
    p.add_argument("--json", action="store_true")


@command("bench-flood", "a student's /predict latency while one client floods the queue", _setup_flood)
def run_bench_flood(args) -> int:
    """One client (one browser session) sends requests as fast as the server takes them; a
    student predicts fresh photos one after another. Reports the student's latency and what
    the flooding client was told."""
    import threading

    import httpx
    import numpy as np
    from PIL import Image

    from .classroom import _percentile

    server = start_server()
    base = server.url.rstrip("/")
    stop = threading.Event()
    codes: dict[int, int] = {}

    def upload(c: httpx.Client, path: Path) -> dict:
        with open(path, "rb") as f:
            name = c.post("/gradio_api/upload", files={"files": (path.name, f)}).json()[0]
        return {"path": name, "meta": {"_type": "gradio.FileData"}}

    def fresh_photo(folder: Path, i: int) -> Path:
        rng = np.random.default_rng(i)
        path = folder / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 255, (240, 240, 3), dtype=np.uint8)).save(path)
        return path

    def fn_index(c: httpx.Client, api: str) -> int:
        return next(d["id"] for d in c.get("/config").json()["dependencies"] if d.get("api_name") == api)

    with tempfile.TemporaryDirectory() as d, httpx.Client(base_url=base, timeout=600) as c:
        folder = Path(d)
        predict, attribute = fn_index(c, "predict"), fn_index(c, "attribute")
        flood_session = "flood" + os.urandom(6).hex()

        def flooder():
            i = 10_000
            with httpx.Client(base_url=base, timeout=600) as fc:
                while not stop.is_set():
                    i += 1
                    image = upload(fc, fresh_photo(folder, i))
                    if args.flood == "ig":
                        fn, data = attribute, [image, "resnet50", "ig", None, None, 100, 8, 32, 24, None]
                    else:
                        fn, data = predict, [image, "googlenet", None]
                    r = fc.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn,
                                                                 "session_hash": flood_session})
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1
                    if r.status_code != 200:
                        time.sleep(0.05)

        # Warm: the model is built before the flood starts.
        warm = upload(c, fresh_photo(folder, 0))
        c.post("/gradio_api/call/predict", json={"data": [warm, "googlenet"]})
        thread = threading.Thread(target=flooder, daemon=True)
        thread.start()
        latencies, refused = [], []
        t_end = time.monotonic() + args.seconds
        i = 0
        while time.monotonic() < t_end:
            i += 1
            image = upload(c, fresh_photo(folder, i))
            t0 = time.monotonic()
            r = c.post("/gradio_api/call/predict", json={"data": [image, "googlenet"], "session_hash": f"student{i}"})
            if r.status_code != 200:  # turned away (a full queue): counted, and tried again
                refused.append(r.status_code)
                time.sleep(0.5)
                continue
            with c.stream("GET", f"/gradio_api/call/predict/{r.json()['event_id']}") as s:
                for line in s.iter_lines():
                    if line.startswith("event: complete") or line.startswith("event: error"):
                        break
            latencies.append(time.monotonic() - t0)
        stop.set()
        thread.join(timeout=30)
    server.stop()
    out = {"flood": args.flood, "seconds": args.seconds, "student_predictions": len(latencies),
           "student_refused": len(refused), "p50_s": round(_percentile(latencies, 50), 2),
           "p95_s": round(_percentile(latencies, 95), 2), "max_s": round(max(latencies, default=float("nan")), 2),
           "flood_answers": {str(k): v for k, v in sorted(codes.items())}}
    if args.json:
        emit(out)
    else:
        print(f"flood of {args.flood}: student /predict p50 {out['p50_s']} s, p95 {out['p95_s']} s, max {out['max_s']} s "
              f"({len(latencies)} predictions, {len(refused)} turned away); the flooding client got {out['flood_answers']} (HTTP status: count)")
    return 0
