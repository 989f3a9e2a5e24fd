"""A class clicking the same example at once: every student gets a whole answer."""

from __future__ import annotations

import io
import threading

import httpx
from PIL import Image

from conftest import ROOT
from test_public_api import raw_call, upload

CAT = ROOT / "assets" / "examples" / "cat.jpg"
STUDENTS = 30
ROUNDS = 5


def test_thirty_identical_predictions_all_download_whole(app_server):
    """Identical requests produce identical output images, which Gradio names by their hash:
    written in place, one request truncated another's download. Each answer's image must
    arrive whole (its Content-Length, and an image that decodes)."""
    fd = upload(app_server, CAT)
    raw_call(app_server, "predict", [fd, "googlenet"])  # load the model once
    failures: list[str] = []
    for rnd in range(ROUNDS):
        barrier = threading.Barrier(STUDENTS)

        def student(i: int):
            try:
                barrier.wait(timeout=60)
                kind, payload = raw_call(app_server, "predict", [fd, "googlenet"])
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
