"""What one client may cost the class, probed through the raw HTTP API as an attacker sends it:
checkpoints small on the wire and huge in memory, queue floods, budgets, session names,
Sketchpad blobs, the upload folder, and malformed payloads."""

from __future__ import annotations

import io
import json
import shutil
import socket
import time
import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from cnndemo import hostile
from cnndemo.cli.diagnostics.server import proc_status_mb
from conftest import AppServer
from test_public_api import error_text, raw_call, upload

WEIGHTS_MB = hostile.expected("resnet50").total_bytes / 2**20
QUOTA_MB = 64


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uploads")
    # What a killed server left behind: a cached upload and a partial one.
    (folder / ("a" * 40)).mkdir()
    (folder / ("a" * 40) / "old.png").write_bytes(b"x" * (2 << 20))
    (folder / "tmpleftover").write_bytes(b"y" * (1 << 20))
    s = AppServer(extra_env={
        "GRADIO_TEMP_DIR": str(folder), "CNNDEMO_UPLOAD_QUOTA": f"{QUOTA_MB}mb", "CNNDEMO_PARTIAL_UPLOAD_S": "3",
        "CNNDEMO_PROXY_HOPS": "1", "CNNDEMO_QUEUE_PER_IP": "3", "CNNDEMO_WORK_BUDGET_TFLOP": "2",
    })
    s.uploads = folder
    yield s
    s.stop()


def fn_index(server, api_name: str | None = None, elem_id: str | None = None) -> int:
    """The event id of a named endpoint, or of the event whose first input has ``elem_id``."""
    cfg = httpx.get(server.url + "config", timeout=30).json()
    ids = {c["id"]: c["props"].get("elem_id") for c in cfg["components"]}
    for dep in cfg["dependencies"]:
        if api_name and dep.get("api_name") == api_name:
            return dep["id"]
        if elem_id and dep["inputs"] and ids.get(dep["inputs"][0]) == elem_id and dep.get("queue") is not False:
            return dep["id"]
    raise KeyError(api_name or elem_id)


def join(c: httpx.Client, fn: int, data: list, session: str | None, headers: dict | None = None) -> httpx.Response:
    return c.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn, "session_hash": session,
                                                  "event_data": None, "trigger_id": None}, headers=headers or {})


def results(c: httpx.Client, session: str, count: int, timeout: float = 180) -> list[dict]:
    """Read the session's event stream until ``count`` events have finished."""
    done = []
    with c.stream("GET", f"/gradio_api/queue/data?session_hash={session}", timeout=timeout) as s:
        for line in s.iter_lines():
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    done.append(msg)
                    if len(done) == count:
                        return done
    return done


# ----------------------------------------------------------------------------- 1. checkpoints


@pytest.mark.parametrize("make, expect", [
    (lambda d: hostile.packed_broadcast(d, "resnet50"), "does not fit"),
    (lambda d: hostile.legacy_empty_dicts(d), "Refused before unpickling"),
    (lambda d: hostile.zip_pickle_bomb(d), "Refused before unpacking"),
], ids=["packed broadcast safetensors", "legacy pickle of empty dicts", "zip with a 16 MB data.pkl"])
def test_a_small_checkpoint_never_costs_gigabytes(server, tmp_path, make, expect):
    path = make(tmp_path)
    sent = upload(server, path)
    Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")  # restart the peak-memory count
    before = proc_status_mb(server.proc.pid, "VmRSS")
    t0 = time.monotonic()
    kind, payload = raw_call(server, "load_checkpoint", [sent, "resnet50"])
    seconds = time.monotonic() - t0
    peak_mb = proc_status_mb(server.proc.pid, "VmHWM") - before
    assert kind == "complete", payload
    assert expect in payload[-2], payload[-2]
    # Goal: < 2x the weights (195 MB). Before the header checks: +2.1 GB, +2.9 GB and +1.2 GB.
    assert peak_mb < 2 * WEIGHTS_MB, f"peak +{peak_mb:.0f} MB"
    assert seconds < 30, f"{seconds:.1f} s"  # before: 3.7 s, 171 s and 49 s


# ----------------------------------------------------------------------------- 2. one client, the whole queue


def test_one_session_cannot_fill_the_queue_and_others_are_served(server, cat, examples):
    predict, attribute = fn_index(server, "predict"), fn_index(server, "attribute")
    image = upload(server, cat)
    # Two other sessions' long jobs hold both workers, so what follows stays queued.
    occlusion = [image, "googlenet", "occlusion", None, None, 16, 8, 32, 24, None, None]  # + checkpoint, look
    blockers = [uuid.uuid4().hex for _ in range(2)]
    flood, heavy_user, student = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    photos = [upload(server, p) for p in sorted(examples.glob("*.jpg"))]
    with httpx.Client(base_url=server.url.rstrip("/"), timeout=60) as c:
        held = [(b, join(c, attribute, occlusion, b)) for b in blockers]
        assert all(r.status_code == 200 for _b, r in held)
        codes = [join(c, predict, [photos[i % len(photos)], "vgg16", None], flood).status_code for i in range(12)]
        assert codes == [200] * 4 + [429] * 8, codes  # CNNDEMO_QUEUE_PER_SESSION's default
        refused = join(c, predict, [image, "vgg16", None], flood)
        assert refused.status_code == 429 and "limit is 4" in refused.json()["detail"]
        # One long job per session (CNNDEMO_HEAVY_PER_SESSION).
        first = join(c, attribute, occlusion, heavy_user)
        assert first.status_code == 200
        second = join(c, attribute, occlusion, heavy_user)
        assert second.status_code == 429 and "long job" in second.json()["detail"], second.text
        for session, r in [*held, (heavy_user, first)]:  # the long jobs have made their point
            c.post("/gradio_api/cancel", json={"session_hash": session, "fn_index": attribute,
                                               "event_id": r.json()["event_id"]})
        # Everybody else is still served.
        assert join(c, predict, [image, "squeezenet1_0", None], student).status_code == 200
        mine = results(c, student, 1)
        assert mine[0]["success"], mine
        assert mine[0]["output"]["data"][4]["model"] == "squeezenet1_0"
        results(c, flood, 4)  # the flood's four finish; the next may join again
        assert join(c, predict, [image, "squeezenet1_0", None], flood).status_code == 200
        results(c, flood, 1)


def test_sessionless_calls_and_one_address_share_a_limit(server, cat):
    attribute = fn_index(server, "attribute")
    image = upload(server, cat)
    occlusion = [image, "googlenet", "occlusion", None, None, 16, 8, 32, 24]  # ~10 s, never cached
    with httpx.Client(base_url=server.url.rstrip("/"), timeout=60) as c:
        # /gradio_api/call without a session: the client is its address (loopback here).
        calls = [c.post("/gradio_api/call/attribute", json={"data": occlusion}) for _ in range(3)]
        assert [r.status_code for r in calls] == [200, 429, 429], [r.text for r in calls]
        assert "no session" in calls[1].json()["detail"]
        # Behind a proxy (CNNDEMO_PROXY_HOPS=1): sessions from one address share CNNDEMO_QUEUE_PER_IP (3).
        spoof = {"X-Forwarded-For": "203.0.113.7"}
        sessions = [uuid.uuid4().hex for _ in range(5)]
        joined = [join(c, attribute, [*occlusion, None, None], s, spoof) for s in sessions[:4]]
        assert [r.status_code for r in joined] == [200, 200, 200, 429], [r.text for r in joined]
        assert "network address" in joined[3].json()["detail"]
        other = join(c, attribute, [*occlusion, None, None], sessions[4], {"X-Forwarded-For": "203.0.113.8"})
        assert other.status_code == 200
        for session, r in [*zip(sessions[:3], joined), (sessions[4], other)]:
            c.post("/gradio_api/cancel", json={"session_hash": session, "fn_index": attribute,
                                               "event_id": r.json()["event_id"]})
        event = calls[0].json()["event_id"]  # a sessionless event's session is its own id
        c.post("/gradio_api/cancel", json={"session_hash": event, "fn_index": attribute, "event_id": event})


# ----------------------------------------------------------------------------- 3. budgets and text


@pytest.mark.parametrize("api, data, expect", [
    ("compare", [["googlenet", "inception_v3", "resnet50", "vgg16"], "cpu", [1, 8, 32, 64], "fp32", False, False, 50],
     "Benchmarking 4 models would cost about"),
    ("train_digits", ["d2l_googlenet", 5, 256, 0.05, 4000, {}], "Training d2l GoogLeNet"),
    ("attribute_compare", [None, ["vgg16", "vgg16"], "occlusion", None], "Each model once"),
    ("scaling", ["vgg16"], "Scaling curves for VGG-16 would cost about"),
], ids=["compare", "train_digits", "attribute_compare twice", "scaling"])
def test_every_network_endpoint_checks_the_whole_request(server, cat, api, data, expect):
    if data[0] is None:
        data[0] = upload(server, cat)
    t0 = time.monotonic()
    kind, payload = raw_call(server, api, data)
    assert kind == "error" and expect in error_text(payload), payload
    assert time.monotonic() - t0 < 20


def test_attribute_compare_is_budgeted_as_a_whole(server, cat):
    kind, payload = raw_call(server, "attribute_compare", [upload(server, cat), ["vgg16", "inception_v3"], "occlusion", None])
    assert kind == "error" and "on 2 models would cost about" in error_text(payload), payload


def test_a_20_mb_target_is_refused_at_once(server, cat):
    t0 = time.monotonic()
    kind, payload = raw_call(server, "attribute", [upload(server, cat), "squeezenet1_0", "saliency", "x" * (20 << 20),
                                                   None, 16, 8, 32, 24])
    assert kind == "error" and "target: at most 200 characters" in error_text(payload), payload
    assert time.monotonic() - t0 < 20  # before: 84 s


# ----------------------------------------------------------------------------- 4. sessions and blobs


def test_session_names_are_bounded_everywhere(server):
    huge = "s" * (1 << 20)
    with httpx.Client(base_url=server.url.rstrip("/"), timeout=30) as c:
        r = c.post("/gradio_api/component_server", json={"data": None, "component_id": 999999, "fn_name": "nope",
                                                          "session_hash": huge})
        assert r.status_code == 400 and "session_hash" in r.json()["detail"]
        assert c.get(f"/gradio_api/queue/data?session_hash={'q' * 100}").status_code == 400
        assert c.get(f"/gradio_api/heartbeat/{'h' * 100}").status_code == 400
        r = join(c, fn_index(server, "predict"), [None, "googlenet", None], "bad session!")
        assert r.status_code == 400
        # A nested decoy does not hide a bad top-level one.
        body = json.dumps({"data": [{"session_hash": "ok"}, "googlenet", None], "fn_index": 2,
                           "session_hash": "z" * 65})
        r = c.post("/gradio_api/queue/join", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400


def _digit_png() -> bytes:
    img = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    ImageDraw.Draw(img).line([(140, 40), (140, 240)], fill=(0, 0, 0, 255), width=24)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _blob(c: httpx.Client, comp: int, session: str, blob_id: str, kind: str, index, data: bytes) -> httpx.Response:
    fields = {"component_id": str(comp), "session_hash": session, "fn_name": "accept_blobs", "type": kind,
              "index": "null" if index is None else str(index), "id": blob_id}
    return c.post("/gradio_api/component_server", data=fields, files={"file": ("blob", data, "image/png")})


def test_sketchpad_blobs_are_bounded_and_belong_to_their_session(server):
    cfg = httpx.get(server.url + "config", timeout=30).json()
    comp = next(x["id"] for x in cfg["components"] if x["props"].get("elem_id") == "digits-sketch")
    fn = fn_index(server, elem_id="digits-sketch")
    owner, other, blob_id = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    with httpx.Client(base_url=server.url.rstrip("/"), timeout=60) as c:
        assert _blob(c, comp, owner, blob_id, "composite", None, _digit_png()).status_code == 200
        # Another session that learns the id reads nothing, and does not wipe the drawing.
        assert join(c, fn, [{"id": blob_id}, {}, None], other).status_code == 200
        theirs = results(c, other, 1)[0]
        assert theirs["success"] and "Draw a digit" in json.dumps(theirs["output"]["data"]), theirs
        assert join(c, fn, [{"id": blob_id}, {}, None], owner).status_code == 200
        mine = results(c, owner, 1)[0]
        assert mine["success"] and "Draw a digit" not in json.dumps(mine["output"]["data"]), mine
        # Bounded: a layer index is small, a part is small, and refusals keep nothing.
        before = server.rss_mb()
        assert _blob(c, comp, owner, blob_id, "layer", 20_000_000, b"x").status_code == 400  # +153 MB before
        assert _blob(c, comp, owner, blob_id, "composite", None, b"x" * (3 << 20)).status_code == 413
        for _ in range(8):  # 8 x 20 MB gave +161 MB before
            assert _blob(c, comp, owner, uuid.uuid4().hex, "composite", None, b"x" * (20 << 20)).status_code == 413
    assert server.rss_mb() - before < 30


# ----------------------------------------------------------------------------- 5. the upload folder


def test_the_upload_folder_is_emptied_at_start_and_has_a_quota(server, tmp_path):
    assert not (server.uploads / ("a" * 40)).exists() and not (server.uploads / "tmpleftover").exists()
    chunk = tmp_path / "chunk.bin"
    chunk.write_bytes(b"\0" * (10 << 20))
    codes = []
    with httpx.Client(base_url=server.url.rstrip("/"), timeout=60) as c:
        for i in range(QUOTA_MB // 10 + 3):
            with open(chunk, "rb") as f:
                r = c.post("/gradio_api/upload", files={"files": (f"c{i}.bin", f)})
            codes.append(r.status_code)
            if r.status_code == 507:
                assert "upload space is full" in r.json()["detail"]
                break
    assert codes[-1] == 507 and codes.count(200) <= QUOTA_MB // 10, codes
    for entry in server.uploads.iterdir():  # as Gradio's hourly sweep would: room for the next tests
        if entry.is_dir() and any(entry.glob("c*.bin")):
            shutil.rmtree(entry)


def test_an_abandoned_upload_leaves_nothing(server):
    boundary = "cnndemo"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"half.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall((f"POST /gradio_api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {10 << 20}\r\n"
                   f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode() + head + b"z" * (1 << 20))
        deadline = time.monotonic() + 30
        while not list(server.uploads.glob("tmp*")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(server.uploads.glob("tmp*")), "the partial upload never reached the folder"
    deadline = time.monotonic() + 60  # CNNDEMO_PARTIAL_UPLOAD_S=3: swept within a few seconds
    while list(server.uploads.glob("tmp*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not list(server.uploads.glob("tmp*"))


# ----------------------------------------------------------------------------- 7. malformed payloads


@pytest.mark.parametrize("api, data, expect", [
    ("predict", [None, ["googlenet"], None], "model: one value"),
    ("predict", [None, "alexnet", None], "model: one of googlenet"),
    ("predict", [None, 3.5, None], "model: one of googlenet"),
    ("predict", [42, "googlenet", None], "image: a file"),
    ("attribute", [None, "googlenet", "ig", None, None, "many", 8, 32, 24], "steps: a number from 4 to 128"),
    ("attribute", [None, "googlenet", "ig", None, None, [16], 8, 32, 24], "steps: a number from 4 to 128"),
    ("attribute", [None, "googlenet", "ig", None, None, 1e9, 8, 32, 24], "steps: a number from 4 to 128"),
    ("attribute", [None, "googlenet", "ig", {"a": 1}, None, 16, 8, 32, 24], "target: one value"),
    ("attribute", [None, "googlenet", "ig", None, None, 16, True, 32, 24], "samples: a number from 1 to 32"),
    ("load_checkpoint", ["weights.pth", "googlenet"], "file: a file"),
    ("compare", [["googlenet"], "cpu", ["1"], "fp32", False, False, 10], "batch_sizes: one of 1, 8"),
    ("compare", [["googlenet"], "tpu", [1], "fp32", False, False, 10], "device: one of"),
    ("compare", [["googlenet"], "cpu", [1], "fp32", "yes", False, 10], "channels_last: true or false"),
    ("ablate", [None, "googlenet", "inception4a", "1x1", "half", None], "mode: one of zero, mean"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 20 else None)
def test_malformed_payloads_get_a_sentence_naming_the_parameter(server, api, data, expect):
    kind, payload = raw_call(server, api, data)
    assert kind == "error", payload
    text = error_text(payload)
    assert text and expect in text and "Internal error" not in text, text


# ----------------------------------------------------------------------------- 4 and 6. state in the process


def test_session_state_expires_and_sessions_are_capped():
    import app
    from cnndemo import settings

    config = app.demo.get_config_file()
    states = [c for c in config["components"] if c["type"] == "state"]
    assert states and all(c["props"]["time_to_live"] == settings.get().state_ttl_s == 1800 for c in states)
    assert settings.get().sessions < 10_000  # Gradio's default would hold ~3.3 GB of sessions


def test_lab_networks_never_share_a_cache_name(monkeypatch):
    """CPython reuses freed objects' addresses: names from id() repeated (18 names for 30
    trainings). Each trained network gets its own name, so the shared caches never mix them."""
    from cnndemo.runtime import build_random
    from cnndemo.training import TrainResult
    from cnndemo.ui import digits
    from cnndemo.zoo import get_spec

    def fake_train(key, **_kw):  # no learning needed to name a result
        return TrainResult(model=build_random(get_spec(key)))

    monkeypatch.setattr(digits, "train", fake_train)
    monkeypatch.setattr(digits, "shipped_digits", lambda: None)
    names = set()
    for _ in range(30):
        *_, last = digits.train_lab.__wrapped__("mnist_resnet", 1, 64, 0.05, 500, None)
        names.add(last["session"]["mnist_resnet"].weights.ident)
    assert len(names) == 30
