"""Hostile inputs, concurrent students, black-holed networks, code safety and exposure."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from cnndemo.cli import main
from conftest import ROOT, AppServer, local_get
from images_factory import bomb_png, exif_rotated_jpeg, gradient, jpeg_bytes, save


def _hostile(d: Path) -> dict[str, tuple[Path, str | None]]:
    """name -> (file, None if it must work, else a substring of the expected message)."""
    cases: dict[str, tuple[Path, str | None]] = {}

    def add(name, path, expect=None):
        cases[name] = (path, expect)

    (d / "empty.jpg").write_bytes(b"")
    add("empty", d / "empty.jpg", "empty")
    (d / "text.jpg").write_text("this is a note, not a photo\n")
    add("text named .jpg", d / "text.jpg", "text file")
    data = jpeg_bytes(gradient(300, 300), quality=95)
    (d / "cut.jpg").write_bytes(data[: len(data) // 2])
    add("truncated JPEG", d / "cut.jpg", "truncated or corrupt")
    (d / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2048))
    add("random bytes after a PNG signature", d / "junk.png", "PNG")
    (d / "x.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    add("SVG", d / "x.svg", "SVG")
    (d / "doc.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n")
    add("PDF", d / "doc.pdf", "PDF")
    add("1x1", save(Image.new("RGB", (1, 1), (9, 99, 199)), d / "1x1.png"))
    add("2x2", save(Image.new("RGB", (2, 2), (9, 99, 199)), d / "2x2.png"))
    add("4000x3 strip", save(Image.new("RGB", (4000, 3), "gray"), d / "strip.png"), "aspect ratio")
    add("30000x30000 bomb", bomb_png(d / "bomb.png"), "pixels")
    big = Image.fromarray(np.asarray(gradient(600, 400).resize((6000, 4000))))
    add("6000x4000 photo", save(big, d / "big.jpg", quality=80))
    add("16-bit grayscale", save(Image.fromarray(np.full((40, 40), 40000, np.uint16)), d / "g16.png"))
    add("float TIFF", save(Image.fromarray(np.random.rand(40, 40).astype(np.float32), "F"), d / "f.tif"))
    add("1-bit", save(Image.new("1", (40, 40), 1), d / "b.png"))
    add("CMYK JPEG", save(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), d / "cmyk.jpg", "JPEG"))
    p = Image.new("P", (40, 40), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    add("palette with transparency", save(p, d / "p.png", transparency=0))
    add("RGBA", save(Image.new("RGBA", (40, 40), (255, 0, 0, 128)), d / "rgba.png"))
    add("LA", save(Image.new("LA", (40, 40), (128, 200)), d / "la.png"))
    frames = [Image.new("RGB", (30, 30), c) for c in ("red", "green", "blue")]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], loop=0)
    add("animated GIF", d / "anim.gif")
    pages = [Image.new("L", (30, 30), v) for v in (10, 200)]
    pages[0].save(d / "pages.tif", save_all=True, append_images=pages[1:])
    add("multi-page TIFF", d / "pages.tif")
    add("EXIF-rotated JPEG", exif_rotated_jpeg(d / "rot.jpg"))
    gradient().save(d / "png_named.jpg", "PNG")
    add("PNG data with a .jpg name", d / "png_named.jpg")
    add("WebP", save(gradient(), d / "w.webp", "WEBP"))
    add("BMP", save(gradient(), d / "b.bmp", "BMP"))
    return cases


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return _hostile(tmp_path_factory.mktemp("hostile"))


def test_hostile_inputs_through_the_cli(hostile, capsys):
    names = list(hostile)
    paths = [str(hostile[n][0]) for n in names]
    rc = main(["predict", "--model", "squeezenet1_0", "--json", *paths])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert rc == 1 and len(rows) == len(names)
    for name, row in zip(names, rows):
        expect = hostile[name][1]
        if expect is None:
            assert "top" in row, f"{name}: {row}"
        else:
            assert expect in row.get("error", ""), f"{name}: {row}"


def test_hostile_inputs_through_the_api(hostile, app_server, client, examples):
    client.predict(image=handle_file(str(examples / "cat.jpg")), model="squeezenet1_0", api_name="/predict")
    before = app_server.rss_mb()
    for name, (path, expect) in hostile.items():
        if expect is None:
            raw = client.predict(image=handle_file(str(path)), model="squeezenet1_0", api_name="/predict")[4]
            assert len(raw["top"]) == 5, name
        else:
            with pytest.raises(Exception, match=expect):
                client.predict(image=handle_file(str(path)), model="squeezenet1_0", api_name="/predict")
    # The server keeps serving, and gives the memory back.
    raw = client.predict(image=handle_file(str(examples / "coffee.jpg")), model="squeezenet1_0", api_name="/predict")[4]
    assert raw["model"] == "squeezenet1_0"
    assert app_server.rss_mb() - before <= 100, "resident memory grew by more than 100 MB"


def test_pickle_payload_upload_is_refused_and_never_runs(client, tmp_path):
    import torch

    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    torch.save({"features.0.weight": torch.zeros(1), "x": Payload()}, evil)
    status, banner = client.predict(file=handle_file(str(evil)), model="squeezenet1_0", api_name="/load_checkpoint")
    assert "Refused" in status and "pickled" in status
    assert not marker.exists()


def _concurrent_jobs(examples):
    cat, coffee = handle_file(str(examples / "cat.jpg")), handle_file(str(examples / "coffee.jpg"))
    return [
        ("predict", dict(image=cat, model="googlenet", api_name="/predict"), 4),
        ("predict", dict(image=coffee, model="squeezenet1_0", api_name="/predict"), 4),
        ("branches", dict(image=cat, model="googlenet", block="inception4c", api_name="/branches"), 5),
        ("branches", dict(image=coffee, model="bn_inception", block="inception3c", api_name="/branches"), 5),
        ("ablate", dict(image=cat, model="googlenet", block="inception4a", branch="3x3", mode="zero", api_name="/ablate"), 3),
        ("ablate", dict(image=coffee, model="bn_inception", block="inception4c", branch="pool_proj", mode="mean", api_name="/ablate"), 3),
        ("attribute", dict(image=cat, model="googlenet", method="gradcam", target=None, layer="inception4d/3x3", api_name="/attribute"), 4),
        ("attribute", dict(image=coffee, model="squeezenet1_0", method="guided_backprop", target=None, layer=None, api_name="/attribute"), 4),
    ]


@pytest.mark.slow
def test_eight_concurrent_clients_match_their_solo_results(app_server, examples):
    jobs = _concurrent_jobs(examples)
    solo_client = Client(app_server.url, verbose=False)
    solo = [solo_client.predict(**kw)[idx] for _, kw, idx in jobs]
    results: dict = {}
    errors: list = []

    def student(i: int):
        c = Client(app_server.url, verbose=False)
        for k in range(2):
            j = (i + k) % len(jobs)
            try:
                results[(i, k)] = (j, c.predict(**jobs[j][1])[jobs[j][2]])
            except Exception as e:  # pragma: no cover - reported below
                errors.append(f"{jobs[j][0]}: {e}")

    threads = [threading.Thread(target=student, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert len(results) == 16
    for j, got in results.values():
        assert _strip_time(got) == _strip_time(solo[j]), jobs[j][0]


def _strip_time(d):
    if isinstance(d, dict):
        # Timing and its provenance (first run on this server, or served from the cache) depend on
        # who asked first; the result itself must not.
        return {k: _strip_time(v) for k, v in d.items() if k not in ("ms", "cached", "first_run")}
    if isinstance(d, list):
        return [_strip_time(v) for v in d]
    return d


@pytest.mark.slow
def test_black_holed_network_never_blocks_start_or_other_users(tmp_path, examples):
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    port = hole.getsockname()[1]
    server = AppServer(
        extra_env={"CNNDEMO_OFFLINE": "0", "CNNDEMO_WEIGHTS_URL": f"http://127.0.0.1:{port}/",
                   "TORCH_HOME": str(tmp_path / "torch")},
        args=(),
    )
    try:
        # Start must not wait on the weights host: nothing connected to it while the app started
        # (a start that tried would also have waited the 10 s stall timeout).
        hole.setblocking(False)
        with pytest.raises(BlockingIOError):
            hole.accept()
        hole.setblocking(True)
        assert server.startup_s < 30, f"start took {server.startup_s:.1f} s"
        out: dict = {}

        def slow():
            t0 = time.monotonic()
            c = Client(server.url, verbose=False)
            out["banner"] = c.predict(image=handle_file(str(examples / "cat.jpg")), model="googlenet", api_name="/predict")[3]
            out["slow_s"] = time.monotonic() - t0

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(1.0)
        t0 = time.monotonic()
        digits = Client(server.url, verbose=False).predict(image=handle_file(str(examples / "camera_gray.png")), api_name="/digits")
        fast_s = time.monotonic() - t0
        t.join(timeout=60)
        assert digits[-1]["mnist_resnet"]["weights"] == "pretrained"
        assert fast_s < 8, f"another user's request waited {fast_s:.1f} s"
        assert out["slow_s"] < 20 and "no answer" in out["banner"] and "Untrained weights" in out["banner"]
    finally:
        server.stop()
        hole.close()


def test_only_the_apps_own_assets_are_served(app_server, examples):
    from urllib.parse import quote

    def status(path: str) -> int:
        return local_get(app_server.port, "/gradio_api/file=" + quote(path))[0]

    assert status(str(examples / "cat.jpg")) == 200
    assert status("/etc/passwd") in (403, 404)
    assert status(str(ROOT / "app.py")) in (403, 404)
    assert status(str(ROOT / "assets" / "weights" / "mnist_resnet.json")) in (403, 404)


def test_limits_and_binding(app_server, monkeypatch, setenv):
    config = json.loads(local_get(app_server.port, "/config")[1])
    assert config["max_file_size"] == 120 * 1024 * 1024
    import app

    setenv("SPACE_ID", None)
    assert app.parse_args([]).host == "127.0.0.1" and not app.parse_args([]).share
    setenv("SPACE_ID", "someone/cnn-zoo-lab")
    assert app.parse_args([]).host == "0.0.0.0"


def test_views_leave_no_hooks_on_the_model_or_its_copies(examples):
    """Explore, ablate and two attributions in this process; afterwards neither the serving
    module nor any attribution copy carries a hook (the soak command checks a live server)."""
    from cnndemo.attribution import attribute
    from cnndemo.branches import ablate, explore
    from cnndemo.runtime import STORE
    from cnndemo.taps import hook_count

    cat = str(examples / "cat.jpg")
    explore(cat, "googlenet", use_cache=False)
    ablate(cat, "googlenet", "inception4c", "1x1")
    attribute(cat, "googlenet", "gradcam", layer="inception4c/3x3")
    attribute(cat, "googlenet", "guided_backprop", scores=False)
    assert len(STORE.get("googlenet").modules()) > 1  # its attribution copies were built: checked too
    for lm in STORE.loaded():
        for m in lm.modules():
            assert hook_count(m) == 0
