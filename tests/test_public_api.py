"""The public API as an attacker reaches it: raw `gradio_api/call/...` JSON over loopback HTTP.

Each test sends what an attacker would (a server path in a FileData without `meta`, a zip
bomb checkpoint, an inline data-URL bomb, a submit-then-cancel), and checks the answer, the
server's memory and CPU, and that it keeps serving everyone else.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from conftest import AppServer
from cnndemo.cli.diagnostics.server import cpu_seconds
from images_factory import bomb_png, gradient, save

from cnndemo.ui.serving import NOT_UPLOADED


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An app with its own upload folder, so the tests can look inside it."""
    uploads = tmp_path_factory.mktemp("gradio-uploads")
    s = AppServer(extra_env={"GRADIO_TEMP_DIR": str(uploads), "CNNDEMO_WORK_BUDGET_TFLOP": "6"})
    s.uploads = uploads
    yield s
    s.stop()


def call_events(server, api: str, data: list, timeout: float = 120, session: str | None = None):
    """POST /gradio_api/call/API, then read its event stream: each message as (kind, payload),
    'generating' ones, then the final 'complete' or 'error'. ``session``: the browser session
    it comes from (without one, the client is its address)."""
    with httpx.Client(base_url=server.url.rstrip("/"), timeout=timeout) as c:
        r = c.post(f"/gradio_api/call/{api}", json={"data": data, "session_hash": session})
        r.raise_for_status()
        event_id = r.json()["event_id"]
        kind = None
        with c.stream("GET", f"/gradio_api/call/{api}/{event_id}") as s:
            for line in s.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind in ("generating", "complete", "error"):
                    yield kind, json.loads(line[5:])
                    if kind in ("complete", "error"):
                        return


def raw_call(server, api: str, data: list, timeout: float = 120, session: str | None = None) -> tuple[str, object]:
    """``call_events``' final message: ('complete'|'error', payload)."""
    for kind, payload in call_events(server, api, data, timeout, session):
        if kind in ("complete", "error"):
            return kind, payload
    raise AssertionError(f"no final event from {api}")


def upload(server, path: Path) -> dict:
    """Upload a file the way the browser does; the FileData to send back."""
    with httpx.Client(base_url=server.url.rstrip("/"), timeout=60) as c, open(path, "rb") as f:
        r = c.post("/gradio_api/upload", files={"files": (path.name, f)})
        r.raise_for_status()
        return {"path": r.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def error_text(payload) -> str:
    return payload.get("error", "") if isinstance(payload, dict) else str(payload)


# ----------------------------------------------------------------------------- 1. file reads


def test_no_endpoint_opens_a_server_path(server, tmp_path, cat):
    secret = save(gradient(300, 300), tmp_path / "private.png")
    symlink = Path(server.uploads) / f"link-{uuid.uuid4().hex}.png"
    symlink.symlink_to(secret)
    paths = [str(secret), str(tmp_path / "missing.png"), "/etc/shadow", "/etc/passwd", str(symlink),
             str(Path(server.uploads) / ".." / secret.name)]
    calls = {
        "predict": lambda fd: [fd, "googlenet"],
        "branches": lambda fd: [fd, "googlenet", "inception3a"],
        "digits": lambda fd: [fd],
        "attribute": lambda fd: [fd, "squeezenet1_0", "saliency", None, None, 4, 1, 32, 24],
        "load_checkpoint": lambda fd: [fd, "squeezenet1_0"],
        "unit": lambda fd: [fd, "googlenet", "inception3a", "1x1", 0, 0, 0],
        "hide": lambda fd: [fd, "googlenet", "0 0 10 10"],
    }
    meta = {"_type": "gradio.FileData"}
    for api, data in calls.items():
        for variant in ({}, {"meta": meta}):
            answers = set()
            for p in paths:
                kind, payload = raw_call(server, api, data({"path": p, **variant}))
                assert kind == "error", (api, p, variant, payload)
                answers.add(error_text(payload) or "")
            # One answer, whatever exists at the path: nothing to learn about the server's files.
            assert len(answers) == 1, (api, variant, answers)
            if api != "load_checkpoint" and not variant:
                assert answers == {NOT_UPLOADED}
    # An upload still works, through the same route.
    kind, payload = raw_call(server, "predict", [upload(server, cat), "googlenet"])
    assert kind == "complete" and payload[4]["model"] == "googlenet"


# ----------------------------------------------------------------------------- 2. zip bombs


def zip_bomb_checkpoint(path: Path, inflated: int) -> Path:
    """A torch zip checkpoint whose one storage record is ``inflated`` bytes of zeros, deflated."""
    plain = path.with_suffix(".plain")
    torch.save({"features.0.weight": torch.zeros(2)}, plain)
    zero = bytes(1 << 20)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if "/data/" in info.filename:
                with dst.open(info.filename, "w", force_zip64=True) as out:
                    for _ in range(inflated >> 20):
                        out.write(zero)
            else:
                dst.writestr(info.filename, src.read(info.filename))
    plain.unlink()
    return path


def test_checkpoint_zip_bomb_is_refused_before_inflating(server, tmp_path):
    bomb = zip_bomb_checkpoint(tmp_path / "bomb.pth", 512 << 20)
    assert bomb.stat().st_size < 2 << 20
    fd = upload(server, bomb)
    before = server.rss_mb()
    t0 = time.monotonic()
    results = []

    def load():
        results.append(raw_call(server, "load_checkpoint", [fd, "squeezenet1_0"]))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert time.monotonic() - t0 < 20
    assert len(results) == 3
    for kind, payload in results:
        assert kind == "complete" and "Refused before unpacking" in payload[-2], payload
        assert "512.0 MB" in payload[-2]
    assert server.rss_mb() - before < 100


# ----------------------------------------------------------------------------- 3. cancellation, budget


def test_work_over_budget_is_refused_up_front(server, cat):
    fd = upload(server, cat)
    t0 = time.monotonic()
    kind, payload = raw_call(server, "attribute", [fd, "googlenet", "occlusion", None, None, 16, 8, 4, 2])
    assert kind == "error" and "TFLOP" in error_text(payload) and "limit of 6 TFLOP" in error_text(payload)
    assert time.monotonic() - t0 < 10
    # Occlusion at window 8 / stride 5: the map alone is ~5.8 TFLOP, with both scores ~11.7.
    # The map is streamed before the scores, so the refusal must come before the map.
    t0 = time.monotonic()
    kind, payload = raw_call(server, "attribute", [fd, "googlenet", "occlusion", None, None, 16, 8, 8, 5])
    assert kind == "error" and "with its sanity and deletion scores" in error_text(payload), payload
    assert time.monotonic() - t0 < 10


@pytest.mark.slow
def test_cancelled_training_stops_within_a_second(server):
    """Four submit-then-cancel trainings: every thread stops, and the CPU goes quiet."""
    session = uuid.uuid4().hex
    config = httpx.get(server.url + "config", timeout=30).json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "train_digits")
    with httpx.Client(base_url=server.url.rstrip("/"), timeout=30) as c:
        events = []
        for i in range(4):
            body = {"data": ["mnist_resnet", 5, 64, 0.05, 4000, {}], "fn_index": fn_index,
                    "session_hash": f"{session}{i}", "event_data": None, "trigger_id": None}
            events.append(c.post("/gradio_api/queue/join", json=body).json()["event_id"])
        time.sleep(4)  # two train (the group's limit), two wait
        busy0 = cpu_seconds(server.proc.pid)
        time.sleep(1)
        assert cpu_seconds(server.proc.pid) - busy0 > 0.5, "the trainings were not running"
        for i, ev in enumerate(events):
            c.post("/gradio_api/cancel", json={"session_hash": f"{session}{i}", "fn_index": fn_index, "event_id": ev})
    time.sleep(1.5)
    quiet0 = cpu_seconds(server.proc.pid)
    time.sleep(2)
    used = cpu_seconds(server.proc.pid) - quiet0
    assert used < 0.5, f"the server used {used:.2f} CPU seconds in the 2 s after the cancel"
    # The group is free again: a new training starts and finishes at once.
    kind, payload = raw_call(server, "train_digits", ["mnist_resnet", 1, 64, 0.05, 500, {}])
    assert kind == "complete", payload


# ----------------------------------------------------------------------------- 4. data URLs


def test_inline_image_bomb_is_refused_from_its_header(server, tmp_path):
    bomb = bomb_png(tmp_path / "bomb.png", side=13000)
    url = "data:image/png;base64," + base64.b64encode(bomb.read_bytes()).decode()
    before = server.rss_mb()
    t0 = time.monotonic()
    kind, payload = raw_call(server, "predict", [{"url": url, "path": None}, "googlenet"])
    assert kind == "error" and "megapixels" in error_text(payload), payload
    assert time.monotonic() - t0 < 5
    assert server.rss_mb() - before < 100
    small = tmp_path / "small.png"
    save(gradient(64, 64), small)
    ok = "data:image/png;base64," + base64.b64encode(small.read_bytes()).decode()
    kind, payload = raw_call(server, "predict", [{"url": ok, "path": None}, "squeezenet1_0"])
    assert kind == "complete" and payload[4]["model"] == "squeezenet1_0"


# ----------------------------------------------------------------------------- 5. smaller leaks


def test_input_notes_belong_to_the_request(server, tmp_path):
    pages = [gradient(60, 60), Image.new("RGB", (60, 60), "white")]
    tif = tmp_path / "pages.tif"
    pages[0].save(tif, save_all=True, append_images=pages[1:])
    png = save(pages[0], tmp_path / "same.png")
    first = raw_call(server, "predict", [upload(server, tif), "squeezenet1_0"])[1]
    second = raw_call(server, "predict", [upload(server, png), "squeezenet1_0"])[1]
    assert "2 pages" in first[2]
    assert "pages" not in second[2] and "no conversion needed" in second[2]


def test_attribution_downloads_live_in_gradios_cache(server, cat):
    import tempfile

    outside_before = set(Path(tempfile.gettempdir()).glob("cnndemo-*"))
    kind, payload = raw_call(server, "attribute", [upload(server, cat), "squeezenet1_0", "saliency", None, None, 4, 1, 32, 24])
    assert kind == "complete"
    files = payload[5]
    assert len(files) == 4  # the slide, the overlay, the signed map, the raw map
    slide = Path(files[0]["path"]).name
    assert f"squeezenet1_0_random_saliency_input_{payload[4]['target']}-" in slide and slide.endswith("_slide.png")
    for f in files:
        assert Path(f["path"]).resolve().is_relative_to(Path(server.uploads).resolve())
    assert set(Path(tempfile.gettempdir()).glob("cnndemo-*")) == outside_before


def test_unhelpful_checkpoint_messages_are_gone(server, tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    cplx = tmp_path / "complex.pth"
    from cnndemo.zoo import ZOO

    state = ZOO["squeezenet1_0"].build_meta().state_dict()
    torch.save({k: torch.zeros(v.shape, dtype=torch.complex64 if v.is_floating_point() else v.dtype)
                for k, v in state.items()}, cplx)
    expect = {junk: "is not a PyTorch checkpoint", empty: "is empty (0 bytes)", cplx: "complex-valued"}
    for path, words in expect.items():
        kind, payload = raw_call(server, "load_checkpoint", [upload(server, path), "squeezenet1_0"])
        assert kind == "complete" and words in payload[-2], payload
