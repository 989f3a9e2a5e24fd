"""The Hugging Face Space path: Space conventions, and weights fetched in the background."""

from __future__ import annotations

import hashlib
import http.server
import os
import statistics
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from cnndemo import prefetch
from cnndemo import weights as W
from cnndemo.predict import predict
from cnndemo.runtime import STORE
from cnndemo.zoo import ZOO


def test_space_conventions_for_host_and_port(monkeypatch, setenv):
    import app

    setenv("SPACE_ID", None)
    setenv("GRADIO_SERVER_NAME", None)
    setenv("GRADIO_SERVER_PORT", None)
    args = app.parse_args([])
    assert (args.host, args.port, args.prefetch, args.mcp) == ("127.0.0.1", 7860, False, False)
    setenv("SPACE_ID", "someone/cnn-zoo-lab")
    setenv("GRADIO_SERVER_PORT", "7999")
    args = app.parse_args([])
    assert (args.host, args.port, args.prefetch) == ("0.0.0.0", 7999, True)
    setenv("GRADIO_SERVER_NAME", "127.0.0.2")
    assert app.parse_args([]).host == "127.0.0.2"
    assert app.demo is not None  # built at import, for Spaces and `gradio app.py`


@pytest.mark.slow
def test_app_started_as_a_space_listens_everywhere_and_predicts(cat):
    from gradio_client import Client, handle_file

    from cnndemo.cli.diagnostics.server import start_server
    from cnndemo.cli.space import _listening_on_all_interfaces

    server = start_server(app_args=("--offline",), timeout=90, as_space=True)
    try:
        assert _listening_on_all_interfaces(server.port)
        raw = Client(server.url, verbose=False).predict(
            image=handle_file(str(cat)), model="googlenet", api_name="/predict")[-1]
        assert raw["model"] == "googlenet" and len(raw["top"]) == 5
    finally:
        server.stop()


class SlowMirror:
    """A local HTTP mirror that sends each file at about ``rate`` bytes per second."""

    def __init__(self, root: Path, rate: int):
        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **k):
                super().__init__(*a, directory=str(root), **k)

            def copyfile(self, source, outputfile):
                while chunk := source.read(rate // 20):
                    outputfile.write(chunk)
                    time.sleep(0.05)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def mirror_files(root: Path, sizes: dict[str, int]) -> list[tuple[str, W.TorchvisionWeights]]:
    """Files named the torchvision way (name-<sha256 prefix>.pth), each as a weights source."""
    root.mkdir(parents=True, exist_ok=True)
    sources = []
    for key, size in sizes.items():
        data = os.urandom(size)
        path = root / f"{key}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
        path.write_bytes(data)
        enum = SimpleNamespace(url=f"http://unused.invalid/{path.name}", name=key.upper(),
                               meta={"_file_size": size / 1e6})
        sources.append((key, W.TorchvisionWeights(enum)))
    return sources


@pytest.fixture
def private_hub(tmp_path, monkeypatch, setenv):
    setenv("TORCH_HOME", str(tmp_path / "torch"))
    setenv("CNNDEMO_OFFLINE", "0")
    W.forget_failures()
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_prefetch_fetches_smallest_first_verified(tmp_path, private_hub, monkeypatch, setenv, caplog):
    sources = mirror_files(tmp_path / "mirror", {"big": 300_000, "small": 20_000, "mid": 100_000})
    sources.sort(key=lambda kv: kv[1].meta["_file_size"])
    # One file is corrupted on the mirror: its hash no longer matches its name.
    bad = tmp_path / "mirror" / sources[1][1].filename
    bad.write_bytes(b"tampered" + bad.read_bytes()[8:])
    mirror = SlowMirror(tmp_path / "mirror", rate=4_000_000)
    setenv("CNNDEMO_WEIGHTS_URL", mirror.url)
    try:
        with caplog.at_level("WARNING", logger="cnndemo.prefetch"):
            state = prefetch.run(sources)
    finally:
        mirror.close()
    assert state.done == ["small", "big"] and list(state.failed) == ["mid"]
    assert "SHA-256" in state.failed["mid"]
    # The failure is logged for whoever runs the server, not only shown in the status line.
    assert [r.getMessage() for r in caplog.records] == [f"background fetch of mid's weights failed: {state.failed['mid']}"]
    assert sorted(p.name for p in private_hub.iterdir()) == sorted(s.filename for k, s in sources if k != "mid")
    assert "2 of 3 published checkpoints ready" in prefetch.describe() and "could not be fetched" in prefetch.describe()


def test_published_sources_are_ordered_by_size():
    keys = [k for k, _ in prefetch.published_sources()]
    sizes = [ZOO[k].weights.meta["_file_size"] for k in keys]
    assert sizes == sorted(sizes) and keys[0] == "squeezenet1_0" and keys[-1] == "vgg16"


def _latencies(cat, n: int = 15) -> list[float]:
    lm = STORE.get("mnist_resnet")
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        predict(cat, lm)
        out.append(time.perf_counter() - t0)
    return out


def test_prefetch_does_not_delay_a_first_request(tmp_path, private_hub, monkeypatch, cat, setenv):
    """A request during the prefetch takes about as long as without it (medians compared)."""
    sources = mirror_files(tmp_path / "mirror", {"a": 3_000_000, "b": 3_000_000})
    mirror = SlowMirror(tmp_path / "mirror", rate=1_500_000)
    setenv("CNNDEMO_WEIGHTS_URL", mirror.url)
    try:
        _latencies(cat, 3)  # warm
        alone = statistics.median(_latencies(cat))
        thread = prefetch.start(sources)
        time.sleep(0.3)
        assert prefetch.status().running
        during = statistics.median(_latencies(cat))
        assert prefetch.status().running, "the prefetch finished before the measurement did"
        thread.join(timeout=30)
    finally:
        mirror.close()
    assert prefetch.status().done == ["a", "b"]
    assert during < alone * 1.5 + 0.005, f"median {during * 1000:.1f} ms during the prefetch vs {alone * 1000:.1f} ms"


@pytest.mark.parametrize("profile", ["cpu", "gpu", "zerogpu"])
def test_space_config_writes_each_hardware_profile(profile, tmp_path, monkeypatch, capsys):
    """`space-config PROFILE --write`: requirements.txt and README's front matter for the
    Space's hardware; every package of requirements.txt is pinned in each profile."""
    from huggingface_hub import metadata_load

    from cnndemo.cli import main, space
    from conftest import ROOT

    for name in ("README.md", "requirements.txt"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    monkeypatch.setattr(space, "CHECKOUT", tmp_path)
    assert main(["space-config", profile, "--write"]) == 0
    meta = metadata_load(tmp_path / "README.md")
    assert meta["python_version"] == {"zerogpu": "3.10"}.get(profile, "3.12") and meta["sdk"] == "gradio"
    assert meta["suggested_hardware"] == {"cpu": "cpu-basic", "gpu": "t4-small", "zerogpu": "zero-a10g"}[profile]
    assert (tmp_path / "README.md").read_text().split("---", 2)[2] == (ROOT / "README.md").read_text().split("---", 2)[2]

    def pins(text):
        return dict(line.split("==") for line in text.splitlines() if "==" in line and not line.startswith("#"))

    base, written = pins((ROOT / "requirements.txt").read_text()), pins((tmp_path / "requirements.txt").read_text())
    if profile == "gpu":
        assert written == base
    elif profile == "cpu":
        assert written == {k: v + "+cpu" if k in ("torch", "torchvision") else v for k, v in base.items()}
        assert f"--extra-index-url {space.CPU_INDEX}" in (tmp_path / "requirements.txt").read_text()
    else:
        assert set(written) == set(base) | {"spaces"} and written["torch"] == "2.8.0"
