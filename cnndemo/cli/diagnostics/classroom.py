"""A class of simulated students against a real app server: per-endpoint latency, errors,
throughput and the server's memory.

``run_classroom`` starts ``python app.py`` on loopback (nothing else is ever contacted), warms
it with one student, then for each class size lets every student run the lesson at once,
each with its own ``gradio_client`` session. Bounded: a fixed number of calls per student, a
timeout per call, and a deadline for the whole run.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from pathlib import Path

from ...attribution import knobs
from ...paths import EXAMPLES_DIR as EXAMPLES
from .server import Server, start_server

# One lesson step: (label, api_name, keyword arguments; "@name" is an example file to upload).
DEFAULT_LESSON: list[dict] = [
    {"step": "predict an example", "api": "/predict", "args": {"image": "@cat.jpg", "model": "googlenet"}},
    {"step": "switch the branch block", "api": "/branches",
     "args": {"image": "@cat.jpg", "model": "googlenet", "block": "inception4c"}},
    {"step": "knock out a branch", "api": "/ablate",
     "args": {"image": "@cat.jpg", "model": "googlenet", "block": "inception4c", "branch": "3x3", "mode": "zero"}},
    {"step": "run Integrated Gradients", "api": "/attribute",
     "args": {"image": "@cat.jpg", "model": "googlenet", "method": "ig", "target": None, "layer": None,
              **{k.name: k.default for k in knobs().values()}}},
    {"step": "draw a digit", "api": "/digits", "args": {"image": "@digit"}},
]
PREDICT_LESSON: list[dict] = [DEFAULT_LESSON[0]]
LESSONS = {"default": DEFAULT_LESSON, "predict": PREDICT_LESSON}


def load_lesson(name_or_file: str) -> list[dict]:
    """A lesson by name (default, predict) or from a JSON file (a list of steps as above)."""
    if name_or_file in LESSONS:
        return LESSONS[name_or_file]
    steps = json.loads(Path(name_or_file).read_text())
    if not isinstance(steps, list) or not all(isinstance(s, dict) and "api" in s for s in steps):
        raise ValueError(f"{name_or_file}: a lesson is a JSON list of {{'step', 'api', 'args'}} objects")
    return steps


def _digit_file(folder: Path) -> Path:
    """A drawn '7': dark strokes on white, as a student's drawing arrives."""
    from PIL import Image, ImageDraw

    path = folder / "digit7.png"
    img = Image.new("RGB", (280, 280), "white")
    d = ImageDraw.Draw(img)
    d.line([(70, 60), (210, 60), (120, 230)], fill="black", width=22)
    img.save(path)
    return path


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _resolve(args: dict, files: dict[str, Path]):
    from gradio_client import handle_file

    out = {}
    for k, v in args.items():
        if isinstance(v, str) and v.startswith("@"):
            out[k] = handle_file(str(files[v[1:]]))
        else:
            out[k] = v
    return out


def run_class(server: Server, lesson: list[dict], students: int, files: dict[str, Path],
              *, call_timeout: float = 300.0, deadline: float | None = None, rounds: int = 1) -> dict:
    """Every student runs the lesson at once (a barrier starts them in the same instant);
    ``rounds`` such classes one after another, pooled (one burst is a noisy sample)."""
    records: list[dict] = []
    t_start = time.perf_counter()
    for _ in range(rounds):
        if deadline is not None and time.monotonic() > deadline:
            break
        records += _one_class(server, lesson, students, files, call_timeout=call_timeout, deadline=deadline)
    wall = time.perf_counter() - t_start
    return summarise(records, students, wall, server, rounds)


def _one_class(server: Server, lesson: list[dict], students: int, files: dict[str, Path],
               *, call_timeout: float, deadline: float | None) -> list[dict]:
    from gradio_client import Client

    records: list[dict] = []
    lock = threading.Lock()
    barrier = threading.Barrier(students)

    def student(i: int) -> None:
        t0 = time.perf_counter()
        try:
            client = Client(server.url, verbose=False, httpx_kwargs={"timeout": call_timeout})
            ok, err = True, ""
        except Exception as e:  # reported per step below
            client, ok, err = None, False, f"{type(e).__name__}: {e}"
        with lock:
            records.append({"step": "open the app", "api": "/config", "s": time.perf_counter() - t0, "ok": ok, "error": err})
        try:
            barrier.wait(timeout=call_timeout)
        except threading.BrokenBarrierError:
            pass
        if client is None:
            return
        for step in lesson:
            if deadline is not None and time.monotonic() > deadline:
                break
            t1 = time.perf_counter()
            try:
                job = client.submit(**_resolve(step.get("args", {}), files), api_name=step["api"])
                job.result(timeout=call_timeout)
                ok, err = True, ""
            except Exception as e:
                ok, err = False, f"{type(e).__name__}: {str(e)[:160]}"
            with lock:
                records.append({"step": step.get("step", step["api"]), "api": step["api"],
                                "s": time.perf_counter() - t1, "ok": ok, "error": err})

    threads = [threading.Thread(target=student, args=(i,), daemon=True) for i in range(students)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=call_timeout * (len(lesson) + 2))
    return records


def summarise(records: list[dict], students: int, wall: float, server: Server, rounds: int) -> dict:
    """Per endpoint: calls, errors, refusals (Gradio's "queue full", the answer a student
    over ``CNNDEMO_QUEUE_MAX`` gets), p50/p95/max latency of the successful calls."""
    per: dict[str, dict] = {}
    for api in dict.fromkeys(r["api"] for r in records):
        rs = [r for r in records if r["api"] == api]
        lat = sorted(r["s"] for r in rs if r["ok"])
        errors = [r["error"] for r in rs if not r["ok"]]
        refused = [e for e in errors if "Queue is full" in e]
        per[api] = {
            "step": rs[0]["step"],
            "calls": len(rs),
            "errors": len(errors) - len(refused),
            "refused_queue_full": len(refused),
            "first_errors": sorted(set(errors))[:3],
            "p50_s": round(_percentile(lat, 50), 3) if lat else None,
            "p95_s": round(_percentile(lat, 95), 3) if lat else None,
            "max_s": round(lat[-1], 3) if lat else None,
        }
    done = sum(1 for r in records if r["ok"] and r["api"] != "/config")
    return {
        "students": students,
        "rounds": rounds,
        "wall_s": round(wall, 2),
        "throughput_req_s": round(done / wall, 2) if wall > 0 else None,
        "server_rss_mb_now": round(server.rss_mb(), 1),
        "server_rss_mb_peak": round(server.peak_rss_mb, 1),
        "endpoints": per,
    }


def run_classroom(students: list[int], lesson: list[dict], *, env: dict[str, str] | None = None,
                  app_args: tuple[str, ...] = ("--offline",), time_limit: float = 1200.0,
                  call_timeout: float = 300.0, rounds: int = 1, progress=None) -> dict:
    """Start the app, warm it with one student, then run each class size in turn."""
    import tempfile

    import torch

    deadline = time.monotonic() + time_limit
    with tempfile.TemporaryDirectory(prefix="cnndemo-classroom-") as tmp:
        files = {p.name: p for p in EXAMPLES.iterdir()}
        files["digit"] = _digit_file(Path(tmp))
        server = start_server(env, app_args, watch=True)
        try:
            if progress:
                progress(f"warming up: one student runs the lesson at {server.url}")
            warm = run_class(server, lesson, 1, files, call_timeout=call_timeout)
            runs = []
            for n in students:
                if time.monotonic() > deadline:
                    break
                if progress:
                    progress(f"{n} students")
                runs.append(run_class(server, lesson, n, files, call_timeout=call_timeout, deadline=deadline,
                                      rounds=rounds))
        finally:
            server.stop()
    return {
        "lesson": [s.get("step", s["api"]) for s in lesson],
        "settings": {k: v for k, v in (env or {}).items()},
        "cpu_cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "warm_up": warm,
        "runs": runs,
    }
