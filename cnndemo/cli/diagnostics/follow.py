"""A class following its teacher, through ``gradio_client`` (no browsers): follow latency.

``run_follow`` starts ``python app.py`` on loopback, opens a room as the teacher, lets N
students join (each its own ``gradio_client`` session) and follow the room, in one of two ways:

- ``watch`` (default): each student holds one ``room_watch`` stream, which sends the room's
  state with the view's results (the top-5, the block's branch shares, and the attribution when
  Explain ran; computed once for the room) whenever the view changes.
- ``poll``: what a browser page does: ask for the room's state once a second and, when the view
  moved on, fetch that view's results (``room_state`` with ``results``, from the shared caches).

The teacher then makes a series of changes, each published once every student has the
previous one (or after a wait), and computes each view's results as its own page does.

Follow latency: from the teacher's publish returning to a student holding the new view's
results. "Behind the teacher": from the teacher holding them (a view that takes seconds to
compute takes them for the teacher too). Also reported: errors, the server's resident memory
and CPU seconds, the students'.
"""

from __future__ import annotations

import functools
import threading
import time

from .classroom import _percentile
from .server import cpu_seconds, start_server

# Ten changes a teacher makes in a lecture: blocks, a branch, images, models, two Explains.
CHANGES = [
    "?model=googlenet&image=example:cat.jpg&block=inception3a",
    "?model=googlenet&image=example:cat.jpg&block=inception4a",
    "?model=googlenet&image=example:cat.jpg&block=inception4a&branch=3x3",
    "?model=googlenet&image=example:coffee.jpg&block=inception4a&branch=3x3",
    "?model=squeezenet1_0&image=example:coffee.jpg",
    "?model=squeezenet1_0&image=example:coffee.jpg&block=fire3",
    "?model=resnet50&image=example:coffee.jpg",
    "?model=resnet50&image=example:cat.jpg",
    "?tab=attributions&model=resnet50&image=example:cat.jpg&method=gradcam&explain=1",
    "?tab=attributions&model=resnet50&image=example:cat.jpg&method=saliency&explain=1",
]
FIRST = "?model=googlenet&image=example:cat.jpg"


class HttpClient:
    """``--client http``: a page's own requests (``POST /gradio_api/call/API``, then its event
    stream), without ``gradio_client``'s ~0.15 s of CPU per call on the same two cores."""

    def __init__(self, url: str, verbose: bool = False):
        import httpx

        import uuid

        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=120)
        self.session = uuid.uuid4().hex[:12]  # a session of its own, as a page has

    def _messages(self, api: str, kwargs: dict, timeout: float | None = 120):
        """A call's event stream, as (kind, data): "generating" messages, then "complete" (or
        an error, raised)."""
        import json

        data = [kwargs.get(n, default) for n, default in _parameters(api)]
        r = self.http.post(f"/gradio_api/call/{api}", json={"data": data, "session_hash": self.session})
        r.raise_for_status()
        kind = None
        with self.http.stream("GET", f"/gradio_api/call/{api}/{r.json()['event_id']}", timeout=timeout) as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind in ("generating", "complete", "error"):
                    payload = json.loads(line[5:])
                    if kind == "error":
                        raise RuntimeError(str(payload))
                    yield kind, payload
                    if kind == "complete":
                        return

    def predict(self, api_name: str, **kwargs):
        api = api_name.lstrip("/")
        for kind, payload in self._messages(api, kwargs):
            if kind == "complete":
                return payload[0]
        raise RuntimeError(f"no answer from {api}")

    def watch(self, **kwargs):
        """``room_watch``'s messages, as they come."""
        for _kind, payload in self._messages("room_watch", kwargs, timeout=None):
            if payload:
                yield payload[0]


@functools.lru_cache(maxsize=None)
def _parameters(api: str) -> tuple[tuple[str, object], ...]:
    """An endpoint's parameters with their defaults, in order (read once per endpoint)."""
    import inspect

    from ...ui.room import API

    return tuple((n, p.default) for n, p in inspect.signature(API[api]).parameters.items() if n != "request")


def _watch(client, **kwargs):
    if isinstance(client, HttpClient):
        return client.watch(**kwargs)
    return iter(client.submit(**kwargs, api_name="/room_watch"))


def run_follow(students: int = 30, changes: list[str] | None = None, *, poll_s: float = 1.0,
               settle_s: float = 30.0, env: dict | None = None, progress=None, client: str = "gradio",
               transport: str = "watch") -> dict:
    if client == "gradio":
        from gradio_client import Client
    else:
        Client = HttpClient

    changes = changes or CHANGES
    server = start_server(env, ("--offline",), watch=True)
    try:
        teacher = Client(server.url, verbose=False)
        room = teacher.predict(view=FIRST, api_name="/room_open")
        code, secret = room["code"], room["secret"]
        # The first view's results once, as the teacher's own page computes them.
        teacher.predict(code=code, secret=secret, results=True, api_name="/room_state")
        published: dict[int, float] = {}
        teacher_s: dict[int, float] = {}
        got: dict[int, dict[int, float]] = {}
        errors: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()
        calls = [0]
        ready: set[int] = set()  # students that hold the first view: changes start once all do

        def student(i: int) -> None:
            try:
                client = Client(server.url, verbose=False)
                member = client.predict(code=code, api_name="/room_join")["member"]
            except Exception as e:
                with lock:
                    errors.append(f"join: {type(e).__name__}: {str(e)[:120]}")
                return
            seen = 1
            if transport == "watch":
                try:
                    for msg in _watch(client, code=code, member=member, results=True):
                        if "ended" in msg or stop.is_set():
                            break
                        with lock:
                            calls[0] += 1
                            ready.add(i)
                            if msg["version"] != seen and "results" in msg:
                                seen = msg["version"]
                                got.setdefault(seen, {})[i] = time.perf_counter()
                except Exception as e:
                    if not stop.is_set():
                        with lock:
                            errors.append(f"watch: {type(e).__name__}: {str(e)[:120]}")
                return
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    state = client.predict(code=code, member=member, results=False, api_name="/room_state")
                    with lock:
                        calls[0] += 1
                        ready.add(i)
                    if state["version"] != seen:
                        client.predict(code=code, member=member, results=True, api_name="/room_state")
                        seen = state["version"]
                        with lock:
                            calls[0] += 1
                            got.setdefault(seen, {})[i] = time.perf_counter()
                except Exception as e:
                    with lock:
                        errors.append(f"{type(e).__name__}: {str(e)[:120]}")
                stop.wait(max(0.0, poll_s - (time.perf_counter() - t)))

        cpu_students, cpu_server = cpu_seconds(), cpu_seconds(server.proc.pid)
        threads = [threading.Thread(target=student, args=(i,), daemon=True) for i in range(students)]
        for t in threads:
            t.start()
        deadline = time.perf_counter() + settle_s
        while len(ready) < students and time.perf_counter() < deadline:
            time.sleep(0.1)
        time.sleep(poll_s)  # and the clients' own start-up work is done
        t_start = time.perf_counter()
        version = 1
        for n, view in enumerate(changes, 1):
            if progress:
                progress(f"change {n}/{len(changes)}: {view}")
            version = teacher.predict(code=code, secret=secret, view=view, api_name="/room_publish")["version"]
            published[version] = time.perf_counter()
            # The teacher's own page computes the view's results: the time the class cannot beat.
            teacher.predict(code=code, secret=secret, results=True, api_name="/room_state")
            teacher_s[version] = time.perf_counter() - published[version]
            deadline = time.perf_counter() + settle_s
            while time.perf_counter() < deadline and len(got.get(version, {})) < students:
                time.sleep(0.1)
        wall = time.perf_counter() - t_start
        stop.set()
        if transport == "poll":  # pages that poll stop first; the class's end is what ends a watch
            for t in threads:
                t.join(timeout=30)
        teacher.predict(code=code, secret=secret, api_name="/room_close")
        for t in threads:
            t.join(timeout=30)
        cpu_students = cpu_seconds() - cpu_students
        cpu_server = cpu_seconds(server.proc.pid) - cpu_server
        def lag(v, i):  # publish -> this student holds the results
            return got[v][i] - published[v]

        def late(v, i):  # the teacher holds the results -> this student does
            return max(0.0, lag(v, i) - teacher_s[v])

        def p95(values):
            return round(_percentile(sorted(values), 95), 2) if values else None

        lags = sorted(lag(v, i) for v in published for i in got.get(v, {}))
        missed = sum(students - len(got.get(v, {})) for v in published)
        behind = [late(v, i) for v in published for i in got.get(v, {})]
        per_change = [{"view": view, "p95_s": p95([lag(v, i) for i in got.get(v, {})]),
                       "behind_teacher_p95_s": p95([late(v, i) for i in got.get(v, {})]),
                       "teacher_s": round(teacher_s[v], 2), "students": len(got.get(v, {}))}
                      for view, v in zip(changes, sorted(published))]
        return {
            "client": client,
            "transport": transport,
            "behind_teacher_p95_s": p95(behind),
            "students": students,
            "changes": len(changes),
            "poll_s": poll_s,
            "follow_p50_s": round(_percentile(lags, 50), 2) if lags else None,
            "follow_p95_s": round(_percentile(lags, 95), 2) if lags else None,
            "follow_max_s": round(lags[-1], 2) if lags else None,
            "missed": missed,
            "errors": len(errors),
            "first_errors": sorted(set(errors))[:3],
            "calls": calls[0],
            "wall_s": round(wall, 1),
            "server_rss_mb_peak": round(server.peak_rss_mb, 1),
            "server_rss_mb_now": round(server.rss_mb(), 1),
            "server_cpu_s": round(cpu_server, 1),
            "students_cpu_s": round(cpu_students, 1),
            "per_change": per_change,
        }
    finally:
        server.stop()
