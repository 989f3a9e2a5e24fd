"""Weights: published (verified), the user's own, or random, and the app always says which.

Checkpoints are created in the tests and served from a local HTTP server; nothing here
reaches the internet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import os
import pickle
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cnndemo import weights as W
from cnndemo.runtime import ModelStore, build_random, load_published
from cnndemo.ui.common import weights_banner
from cnndemo.zoo import ZOO

SQ = ZOO["squeezenet1_0"]


@pytest.fixture
def hub(tmp_path, monkeypatch, setenv):
    """A private torch hub dir for one test (torch reads TORCH_HOME on every lookup)."""
    setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def online(monkeypatch, setenv):
    setenv("CNNDEMO_OFFLINE", "0")
    W.forget_failures()


def published_checkpoint(tmp_path: Path) -> tuple[Path, str, dict]:
    """A squeezenet state_dict saved the way torchvision publishes them: name-<sha256 prefix>.pth."""
    model = build_random(SQ)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    state = model.state_dict()
    raw = tmp_path / "raw.pth"
    torch.save(state, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    served = tmp_path / "srv" / f"squeezenet_test-{digest[:8]}.pth"
    served.parent.mkdir()
    raw.rename(served)
    return served, digest, state


class Server:
    def __init__(self, root: Path):
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def fake_source(url: str) -> W.TorchvisionWeights:
    enum = SimpleNamespace(url=url, name="TEST_V1", meta=dict(SQ.weights.meta))
    return W.TorchvisionWeights(enum)


def test_offline_fallback_is_random_and_says_so(hub):
    module = build_random(SQ)
    info = load_published(SQ, module)
    assert info.kind == "random" and not info.trained
    assert "offline" in info.reason
    assert "fetch-weights" in info.fix
    banner = weights_banner(info, SQ.key)
    assert "Untrained weights: these predictions are meaningless" in banner
    assert "parameters, FLOPs and latency shown are still real" in banner
    assert "To fix" in banner


def test_no_published_weights_banner():
    info = load_published(ZOO["bn_inception"], build_random(ZOO["bn_inception"]))
    assert info.kind == "random" and "no published weights" in info.reason
    assert "checkpoint" in info.fix


def test_download_verify_cache_and_load(tmp_path, hub, online):
    served, digest, state = published_checkpoint(tmp_path)
    srv = Server(served.parent)
    try:
        src = fake_source(srv.url + served.name)
        seen = []
        path = W.fetch(src, progress=lambda f, d: seen.append(f))
        assert path == hub / served.name and path.exists()
        assert seen and seen[-1] == pytest.approx(1.0)
        spec = dataclasses.replace(SQ, weights=src)
        module = build_random(spec)
        info = load_published(spec, module)
        assert info.kind == "pretrained" and served.name in info.source
        assert torch.equal(module.state_dict()["classifier.1.weight"], state["classifier.1.weight"])
    finally:
        srv.close()


def test_tampered_cache_is_refused_offline_and_fetched_again_online(tmp_path, hub, monkeypatch, online, setenv):
    served, digest, state = published_checkpoint(tmp_path)
    hub.mkdir(parents=True)
    cached = hub / served.name
    cached.write_bytes(served.read_bytes()[:-10] + b"tampered!!")
    src = fake_source("http://127.0.0.1:9/" + served.name)
    setenv("CNNDEMO_OFFLINE", "1")
    with pytest.raises(W.WeightsError, match="failed its SHA-256 check.*refused"):
        W.fetch(src)
    spec = dataclasses.replace(SQ, weights=src)
    info = load_published(spec, build_random(spec))
    assert info.kind == "random" and "SHA-256" in info.reason
    setenv("CNNDEMO_OFFLINE", "0")
    srv = Server(served.parent)
    try:
        W.fetch(fake_source(srv.url + served.name))
    finally:
        srv.close()
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == digest


@pytest.mark.slow
def test_black_holed_network_gives_up_quickly(tmp_path, hub, online):
    """A server that accepts connections and never answers: the fetch must give up."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    port = sock.getsockname()[1]
    try:
        src = fake_source(f"http://127.0.0.1:{port}/squeezenet_test-0123abcd.pth")
        t0 = time.monotonic()
        with pytest.raises(W.WeightsError, match="no answer"):
            W.fetch(src)
        assert time.monotonic() - t0 < 15
        # A second attempt right after does not hang again: the failure is remembered.
        t1 = time.monotonic()
        with pytest.raises(W.WeightsError, match="not retried"):
            W.fetch(src)
        assert time.monotonic() - t1 < 1
    finally:
        sock.close()


def test_own_checkpoint_round_trip(tmp_path):
    model = build_random(SQ)
    with torch.no_grad():
        model.classifier[1].bias.fill_(0.5)
    pth = tmp_path / "mine.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, pth)
    from safetensors.torch import save_file

    st = tmp_path / "mine.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
    store = ModelStore(device="cpu")
    x = torch.randn(1, 3, 224, 224)
    for path in (pth, st):
        lm = store.get(SQ.key, checkpoint=path)
        # Named by content: a second user loading the same bytes shares this model, never this file name.
        assert lm.weights.kind == "custom" and path.name not in lm.weights.source
        assert W.sha256_file(path)[:12] in lm.weights.source
        with torch.inference_mode():
            assert torch.allclose(lm.module(x), model(x))


def test_checkpoint_mismatch_names_the_first_mismatches(tmp_path):
    other = build_random(ZOO["mnist_resnet"])
    path = tmp_path / "wrong.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(W.WeightsError) as err:
        ModelStore(device="cpu").get(SQ.key, checkpoint=path)
    msg = str(err.value)
    assert "does not fit SqueezeNet 1.0" in msg
    assert "missing: features.0.weight" in msg and "unexpected: conv1.weight" in msg


def test_checkpoint_shape_mismatch(tmp_path):
    state = build_random(SQ).state_dict()
    state["classifier.1.weight"] = torch.zeros(10, 512, 1, 1)
    state["classifier.1.bias"] = torch.zeros(10)
    path = tmp_path / "ten_classes.pth"
    torch.save(state, path)
    with pytest.raises(W.WeightsError, match=r"wrong shape: classifier.1.weight \(checkpoint \[10, 512, 1, 1\], model \[1000, 512, 1, 1\]\)"):
        ModelStore(device="cpu").get(SQ.key, checkpoint=path)


class Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "x": Payload(str(marker))}, path)
    with pytest.raises(W.WeightsError, match="refused: it holds pickled Python objects"):
        W.read_state_dict(path)
    assert not marker.exists()
    # Plain pickle (not even a torch zip) is refused as well.
    path2 = tmp_path / "evil2.pt"
    path2.write_bytes(pickle.dumps(Payload(str(marker))))
    with pytest.raises(W.WeightsError):
        W.read_state_dict(path2)
    assert not marker.exists()


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(W.WeightsError, match="expected a state_dict file"):
        W.read_state_dict(path)
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(W.WeightsError, match="could not be read"):
        W.read_state_dict(bad)


def test_store_retries_when_weights_appear(tmp_path, hub, monkeypatch):
    served, digest, state = published_checkpoint(tmp_path)
    src = fake_source("http://127.0.0.1:9/" + served.name)
    monkeypatch.setitem(ZOO, "sq_test", dataclasses.replace(SQ, key="sq_test", weights=src))
    store = ModelStore(device="cpu")
    assert store.get("sq_test").weights.kind == "random"
    hub.mkdir(parents=True, exist_ok=True)
    (hub / served.name).write_bytes(served.read_bytes())  # e.g. copied from a USB stick
    assert store.get("sq_test").weights.kind == "pretrained"


@pytest.mark.parametrize("key", list(ZOO))
def test_untrained_networks_still_compute(key):
    """Offline, torchvision's own init left GoogLeNet's logits independent of the image (a
    difference of 4.5e-13) and Inception-v3's at about 3e11. An untrained network is a Kaiming
    init with BatchNorm recalibrated on the example images: finite logits that vary with the input."""
    from cnndemo.pipeline import load_for, to_batch
    from cnndemo.untrained import batchnorms, make_untrained

    spec = ZOO[key]
    module = build_random(spec)
    what = make_untrained(spec, module, 0)
    assert what.startswith("untrained: Kaiming") and ("BatchNorm" in what) == bool(batchnorms(module))
    images = (["assets/examples/cat.jpg", "assets/examples/rocket.jpg"] if spec.inputs.kind == "photo"
              else ["assets/examples/digits/six.png", "tests/fixtures/drawn_digits/3_drawn_090.png"])
    with torch.no_grad():
        a, b = (module(to_batch(spec, load_for(spec, p), torch.device("cpu")))[0] for p in images)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert a.abs().max() < 100  # no overflow: Inception-v3 reached 3e11
    assert (a - b).abs().max() > 0.1 * a.std()  # the logits depend on the image
    assert a.std() > 1e-3  # and do not collapse towards zero (GoogLeNet: about 1e-12 by inception5b)


def test_the_fallback_is_the_untrained_network_and_says_so():
    spec = ZOO["inception_v3"]
    info = load_published(dataclasses.replace(spec, weights=None), build_random(spec))
    assert info.kind == "random" and info.source.startswith("untrained: Kaiming")
    assert "BatchNorm statistics recalibrated on 6 example images" in info.source
