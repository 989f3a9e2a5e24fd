"""A lesson for a whole class against a real server: light events never wait behind heavy
ones, identical heavy requests are computed once, and work stops when its client goes away."""

from __future__ import annotations

import json
import threading
import time
import uuid

import httpx
import pytest
from PIL import Image, ImageOps

from test_public_api import cpu_seconds, raw_call, upload


def fn_index(server, api: str) -> int:
    config = httpx.get(server.url + "config", timeout=30).json()
    return next(d["id"] for d in config["dependencies"] if d.get("api_name") == api)


def ig_args(fd: dict, steps: int = 64, model: str = "googlenet", *, states: bool = False) -> list:
    """/attribute's inputs: IG with ``steps`` steps, the other knobs at their defaults
    (``states``: with the two session states the browser sends too, for the queue)."""
    from cnndemo.attribution import knobs

    values = {k.name: k.default for k in knobs().values()}
    values["steps"] = steps
    return [fd, model, "ig", None, None, *values.values(), *([None, None] if states else [])]


class Streamed:
    """One queued request whose event stream this test holds open (and may drop)."""

    def __init__(self, server, api: str, data: list):
        self.session = uuid.uuid4().hex
        self.client = httpx.Client(base_url=server.url.rstrip("/"), timeout=60)
        body = {"data": data, "fn_index": fn_index(server, api), "session_hash": self.session,
                "event_data": None, "trigger_id": None}
        r = self.client.post("/gradio_api/queue/join", json=body)
        r.raise_for_status()
        self.messages: list[dict] = []
        self._stream = self.client.stream("GET", "/gradio_api/queue/data", params={"session_hash": self.session})
        self._response = self._stream.__enter__()
        self._lines = self._response.iter_lines()

    def read_until(self, msg: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        for line in self._lines:
            if line.startswith("data:"):
                m = json.loads(line[5:])
                self.messages.append(m)
                if m.get("msg") == msg:
                    return m
            if time.monotonic() > deadline:
                break
        raise AssertionError(f"no {msg!r} message; got {[m.get('msg') for m in self.messages]}")

    def drop(self) -> None:
        """Close the connection, as a closed tab does."""
        self._response.close()
        self.client.close()


def busy_cpu(server, seconds: float = 1.0) -> float:
    c0 = cpu_seconds(server.proc.pid)
    time.sleep(seconds)
    return (cpu_seconds(server.proc.pid) - c0) / seconds


def wait_for_quiet(server, within: float, threshold: float = 0.35) -> float:
    """Seconds until the server uses under ``threshold`` of a core over a 0.5 s window."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within + 5:
        if busy_cpu(server, 0.5) < threshold:
            return time.monotonic() - t0
    return float("inf")


@pytest.mark.slow
def test_a_dropped_connection_stops_its_heavy_work(app_server, cat):
    """IG with many steps, then the client's connection goes: the server's CPU falls back
    within 2 s (Gradio alone only marks the job as not alive, and the work ran to its end)."""
    fd = upload(app_server, cat)
    raw_call(app_server, "predict", [fd, "googlenet"])  # the model loaded
    job = Streamed(app_server, "attribute", ig_args(fd, steps=128, states=True))
    job.read_until("process_starts")
    deadline = time.monotonic() + 60
    while busy_cpu(app_server, 0.5) < 0.8:
        assert time.monotonic() < deadline, "the attribution never got busy"
    job.drop()
    quiet_after = wait_for_quiet(app_server, within=2.0)
    assert quiet_after <= 2.5, f"the server was still busy {quiet_after:.1f} s after the client went away"
    # The lane is free again: a short request is served at once.
    kind, payload = raw_call(app_server, "attribute", ig_args(fd, steps=4, model="mnist_inception"))
    assert kind == "complete", payload


@pytest.mark.slow
def test_ten_identical_explain_clicks_cost_about_one(app_server, cat, tmp_path):
    """Ten students press Explain on the same image at once: the server's CPU for all ten is
    close to one request's (each alone would cost ten), and every one gets the whole answer."""
    with Image.open(cat) as im:
        ImageOps.mirror(im).save(tmp_path / "solo.png")
        ImageOps.flip(im).save(tmp_path / "class.png")
    solo, shared = upload(app_server, tmp_path / "solo.png"), upload(app_server, tmp_path / "class.png")
    raw_call(app_server, "predict", [solo, "googlenet"])
    c0 = cpu_seconds(app_server.proc.pid)
    kind, payload = raw_call(app_server, "attribute", ig_args(solo, steps=16))
    one = cpu_seconds(app_server.proc.pid) - c0
    assert kind == "complete", payload
    out: list = []
    barrier = threading.Barrier(10)

    def student(i):
        barrier.wait(30)
        out.append(raw_call(app_server, "attribute", ig_args(shared, steps=16), timeout=300, session=f"s{i}{uuid.uuid4().hex[:6]}"))

    c0 = cpu_seconds(app_server.proc.pid)
    threads = [threading.Thread(target=student, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    ten = cpu_seconds(app_server.proc.pid) - c0
    assert [k for k, _ in out] == ["complete"] * 10, [p for k, p in out if k != "complete"][:2]
    assert len({json.dumps(p[4]) for _k, p in out}) == 1  # the same result, as JSON
    assert ten < 2.5 * one, f"ten identical requests used {ten:.1f} CPU s; one used {one:.1f}"


@pytest.mark.slow
def test_a_digit_is_answered_in_under_2_s_while_two_heavy_requests_run(app_server, cat, tmp_path):
    fd = upload(app_server, cat)
    raw_call(app_server, "predict", [fd, "googlenet"])
    from cnndemo.lessons import drawn_digit

    digit = upload(app_server, drawn_digit(tmp_path))
    raw_call(app_server, "digits", [digit])  # the digit nets loaded
    heavy = [Streamed(app_server, "attribute", ig_args(fd, steps=128 + i, states=True)) for i in range(2)]
    try:
        heavy[0].read_until("process_starts")
        assert busy_cpu(app_server, 0.5) > 0.8, "the heavy requests are not running"
        times = []
        for _ in range(3):
            t0 = time.monotonic()
            kind, payload = raw_call(app_server, "digits", [digit])
            times.append(time.monotonic() - t0)
            assert kind == "complete", payload
        assert busy_cpu(app_server, 0.5) > 0.8, "the heavy requests finished before the digits were timed"
    finally:
        for h in heavy:
            h.drop()
    assert max(times) < 2.0, f"digit requests took {', '.join(f'{t:.2f}' for t in times)} s beside two IGs"
    wait_for_quiet(app_server, within=3.0)


@pytest.mark.slow
def test_a_warmed_lesson_is_ready_for_the_first_student(tmp_path, cat):
    """``--warm LESSON``: the steps are computed at start through the app's own API; the first
    student's prediction is the shared result (no forward pass of its own), and a step on each
    student's own photo is said to be skipped."""
    from conftest import AppServer

    lesson = tmp_path / "lesson.json"
    lesson.write_text(json.dumps([
        {"step": "predict the cat", "api": "/predict", "args": {"image": "@cat.jpg", "model": "googlenet"}},
        {"step": "your own photo", "api": "/predict", "args": {"image": "@photo", "model": "googlenet"}},
    ]))
    server = AppServer(args=("--offline", "--warm", str(lesson)))
    try:
        deadline = time.monotonic() + 120
        while "ready: 1 of 2 steps computed" not in server.log.read_text():
            assert time.monotonic() < deadline, server.log.read_text()[-2000:]
            time.sleep(0.2)
        assert "not computed ahead (each student's own photo or drawing): your own photo" in server.log.read_text()
        kind, payload = raw_call(server, "predict", [upload(server, cat), "googlenet"], session="first")
        assert kind == "complete", payload
        assert payload[4]["cached"] is True, payload[4]
    finally:
        server.stop()


def test_a_lesson_that_cannot_be_read_stops_the_app_with_the_reason(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    bad = tmp_path / "lesson.json"
    bad.write_text('{"not": "a list"}')
    for arg, said in ((str(tmp_path / "missing.json"), "No such file"), (str(bad), "a lesson is a JSON list")):
        r = subprocess.run([sys.executable, str(ROOT / "app.py"), "--offline", "--warm", arg], capture_output=True,
                           text=True, timeout=120, cwd=ROOT)
        assert r.returncode == 2 and f"--warm {arg}" in r.stderr and said in r.stderr, r.stderr[-500:]
