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

from ...lessons import Materials
from .server import Server, cpu_seconds, local_get, start_server

def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run_class(server: Server, lesson: list[dict], students: int, files: Materials,
              *, call_timeout: float = 300.0, deadline: float | None = None, rounds: int = 1,
              first_student: int = 0, client: str = "browser") -> dict:
    """Every student runs the lesson at once (a barrier starts them in the same instant);
    ``rounds`` such classes one after another, pooled (one burst is a noisy sample). The
    students' own CPU (this process) and the server's are reported apart: they share the cores."""
    records: list[dict] = []
    t_start = time.perf_counter()
    cpu_client, cpu_server = cpu_seconds(), cpu_seconds(server.proc.pid)
    for r in range(rounds):
        if deadline is not None and time.monotonic() > deadline:
            break
        records += _one_class(server, lesson, students, files, call_timeout=call_timeout, deadline=deadline,
                              first_student=first_student + r * students, client=client)
    wall = time.perf_counter() - t_start
    out = summarise(records, students, wall, server, rounds)
    out["students_cpu_s"] = round(cpu_seconds() - cpu_client, 1)
    out["server_cpu_s"] = round(cpu_seconds(server.proc.pid) - cpu_server, 1)
    return out


class BrowserStudent:
    """One student as a browser is one: a session of its own, each file uploaded once and
    then referred to by its server path, every step sent through the queue with the session
    (``POST /gradio_api/call/API``, then its event stream) and its answer read, not downloaded.
    Plain HTTP: ``gradio_client`` spends ~160 ms of CPU per call (it uploads the file again
    for every call), on the same two cores as the server."""

    def __init__(self, url: str, session: str, api: dict, timeout: float):
        import httpx

        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
        self.session, self.api = session, api
        self.uploaded: dict[str, dict] = {}

    def open(self) -> None:
        """What opening the page costs the server: its config, and the session's state, which
        Gradio builds on the session's first event (~50 ms of the server's event loop; a browser
        starts it with the page's load events): here one prediction without an image."""
        self.http.get("/config").raise_for_status()
        self.call("/predict", {"image": None}, None, 0)

    def _file(self, path: Path) -> dict:
        if str(path) not in self.uploaded:
            with open(path, "rb") as f:
                r = self.http.post("/gradio_api/upload", files={"files": (path.name, f)})
            r.raise_for_status()
            self.uploaded[str(path)] = {"path": r.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}
        return self.uploaded[str(path)]

    def call(self, api: str, args: dict, files: Materials, student: int) -> None:
        import json as _json

        params = self.api[api]["parameters"]
        data = []
        for p in params:
            name = p["parameter_name"]
            v = args.get(name, p.get("parameter_default"))
            if isinstance(v, str) and v.startswith("@"):
                v = self._file(files.path(v[1:], student))
            data.append(v)
        r = self.http.post(f"/gradio_api/call{api}", json={"data": data, "session_hash": self.session})
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:160]}")
        event = None
        with self.http.stream("GET", f"/gradio_api/call{api}/{r.json()['event_id']}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    if event == "error":
                        raise RuntimeError(_json.loads(line[5:]) or "the app reported an error")
                    return
        raise RuntimeError("the event stream ended without an answer")

    def close(self) -> None:
        self.http.close()


class GradioClientStudent:
    """A student through ``gradio_client`` (``--client gradio``): what a script would use."""

    def __init__(self, url: str, timeout: float):
        from gradio_client import Client

        self.client = Client(url, verbose=False, httpx_kwargs={"timeout": timeout})
        self.timeout = timeout

    def open(self) -> None:
        pass

    def call(self, api: str, args: dict, files: Materials, student: int) -> None:
        self.client.submit(**files.resolve(args, student), api_name=api).result(timeout=self.timeout)

    def close(self) -> None:
        pass


def _api_info(server: Server) -> dict:
    return json.loads(local_get(server.port, "/gradio_api/info", timeout=60)[1])["named_endpoints"]


def _one_class(server: Server, lesson: list[dict], students: int, files: Materials,
               *, call_timeout: float, deadline: float | None, first_student: int = 0,
               client: str = "browser") -> list[dict]:
    import uuid

    records: list[dict] = []
    lock = threading.Lock()
    barrier = threading.Barrier(students)
    api = _api_info(server) if client == "browser" else {}

    def student(i: int) -> None:
        t0 = time.perf_counter()
        try:
            if client == "browser":
                who = BrowserStudent(server.url, f"student{first_student + i}{uuid.uuid4().hex[:8]}", api, call_timeout)
            else:
                who = GradioClientStudent(server.url, call_timeout)
            who.open()
            ok, err = True, ""
        except Exception as e:  # reported per step below
            who, ok, err = None, False, f"{type(e).__name__}: {e}"
        with lock:
            records.append({"step": "open the app", "api": "/config", "s": time.perf_counter() - t0, "ok": ok,
                            "error": err, "start": t0, "end": time.perf_counter()})
        try:
            barrier.wait(timeout=call_timeout)
        except threading.BrokenBarrierError:
            pass
        if who is None:
            return
        try:
            for step in lesson:
                if deadline is not None and time.monotonic() > deadline:
                    break
                t1 = time.perf_counter()
                try:
                    who.call(step["api"], step.get("args", {}), files, first_student + i)
                    ok, err = True, ""
                except Exception as e:
                    ok, err = False, f"{type(e).__name__}: {str(e)[:160]}"
                t2 = time.perf_counter()
                with lock:
                    records.append({"step": step.get("step", step["api"]), "api": step["api"],
                                    "s": t2 - t1, "ok": ok, "error": err, "start": t1, "end": t2})
        finally:
            who.close()

    threads = [threading.Thread(target=student, args=(i,), daemon=True) for i in range(students)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=call_timeout * (len(lesson) + 2))
    return records


def summarise(records: list[dict], students: int, wall: float, server: Server, rounds: int) -> dict:
    """Per endpoint: calls, errors, refusals (Gradio's "queue full", the answer a student
    over ``CNNDEMO_QUEUE_MAX`` gets), p50/p95/max latency of the successful calls, and its
    wall time (first call sent to last answer in)."""
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
            "wall_s": round(max(r["end"] for r in rs) - min(r["start"] for r in rs), 2),
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
                  call_timeout: float = 300.0, rounds: int = 1, progress=None, client: str = "browser") -> dict:
    """Start the app, warm it with one student, time one student alone, then run each class
    size in turn. The warm-up and the solo student use photos of their own (``@photo``), so
    nothing they computed is waiting in the server's result cache when the class starts."""
    import tempfile

    import torch

    deadline = time.monotonic() + time_limit
    with tempfile.TemporaryDirectory(prefix="cnndemo-classroom-") as tmp:
        files = Materials(Path(tmp))
        server = start_server(env, app_args, watch=True)
        alone = files.as_photo(lesson)
        try:
            if progress:
                progress(f"warming up: one student runs the lesson at {server.url}")
            warm = run_class(server, alone, 1, files, call_timeout=call_timeout, first_student=10_000, client=client)
            if progress:
                progress("one student alone, on a photo of their own")
            solo = run_class(server, alone, 1, files, call_timeout=call_timeout, first_student=10_001, client=client)
            runs = []
            for n in students:
                if time.monotonic() > deadline:
                    break
                if progress:
                    progress(f"{n} students")
                runs.append(run_class(server, lesson, n, files, call_timeout=call_timeout, deadline=deadline,
                                      rounds=rounds, client=client))
        finally:
            server.stop()
    return {
        "lesson": [s.get("step", s["api"]) for s in lesson],
        "settings": {k: v for k, v in (env or {}).items()},
        "client": client,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "warm_up": warm,
        "solo": solo,
        "runs": runs,
    }
