"""A class clicking the same example at once: every student gets a whole answer."""

from __future__ import annotations

import io
import threading
import time

import httpx
import pytest
from PIL import Image
from conftest import AppServer
from test_public_api import raw_call, upload

STUDENTS = 30
ROUNDS = 5


@pytest.mark.slow
def test_thirty_identical_predictions_all_download_whole(app_server, cat):
    """Identical requests produce identical output images, which Gradio names by their hash:
    written in place, one request truncated another's download. Each answer's image must
    arrive whole (its Content-Length, and an image that decodes)."""
    fd = upload(app_server, cat)
    raw_call(app_server, "predict", [fd, "googlenet"])  # load the model once
    failures: list[str] = []
    for rnd in range(ROUNDS):
        barrier = threading.Barrier(STUDENTS)

        def student(i: int):
            try:
                barrier.wait(timeout=60)
                kind, payload = raw_call(app_server, "predict", [fd, "googlenet"], session=f"student{i}r{rnd}")
                assert kind == "complete", payload
                url = payload[1]["url"]
                with httpx.Client(timeout=60) as c:
                    r = c.get(url)
                declared = int(r.headers["content-length"])
                assert len(r.content) == declared, f"{len(r.content)} of {declared} bytes"
                Image.open(io.BytesIO(r.content)).load()
            except Exception as e:  # collected and reported below
                failures.append(f"round {rnd}, student {i}: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=student, args=(i,)) for i in range(STUDENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    assert not failures, failures[:5]


@pytest.mark.slow
def test_a_student_over_the_queue_limit_is_told_the_queue_is_full(cat):
    """One worker, a waiting room of 3: of 10 students clicking at once, the ones that find
    the queue full are told so at once (HTTP 503, Gradio's message), and the rest are served."""
    server = AppServer(extra_env={"CNNDEMO_WORKERS": "1", "CNNDEMO_QUEUE_MAX": "3"})
    try:
        fd = upload(server, cat)
        raw_call(server, "predict", [fd, "googlenet"])
        barrier = threading.Barrier(10)
        served, refused, other = [], [], []

        def student(i: int):
            barrier.wait(timeout=60)
            t0 = time.monotonic()
            try:
                kind, payload = raw_call(server, "predict", [fd, "googlenet"], session=f"student{i}")
                (served if kind == "complete" else other).append(payload)
            except httpx.HTTPStatusError as e:
                body = e.response.json()
                refused.append((e.response.status_code, body, time.monotonic() - t0))

        threads = [threading.Thread(target=student, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    finally:
        server.stop()
    assert not other, other
    assert refused, "nobody was turned away"
    assert len(served) >= 4 and len(served) + len(refused) == 10
    for code, body, seconds in refused:
        assert code == 503 and "Queue is full" in str(body), body
        assert seconds < 5, f"told only after {seconds:.1f} s"
