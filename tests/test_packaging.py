"""cnndemo as an installed package: a wheel carries its assets (package data), runs from a
``pip install --target`` folder with its bundled digit weights, and starts the app with
``cnndemo serve``; a missing shipped file is an error, not random weights; ``--help`` is quick."""

from __future__ import annotations

import os
import subprocess
import sys
import json
import time

import pytest

from cnndemo import weights as W
from cnndemo.cli.diagnostics.server import free_port, local_get
from cnndemo.runtime import build_random, load_published
from cnndemo.zoo import ZOO
from conftest import ROOT


def test_the_package_list_names_every_package():
    """pyproject lists the packages (assets/ installs as ``cnndemo.assets``): a new subpackage
    left out would be missing from the wheel."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11's TOML reader")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "cnndemo").rglob("__init__.py")}
    assert listed == found | {"cnndemo.assets"}


def test_a_missing_bundled_weight_file_is_an_error_not_random_weights(tmp_path, monkeypatch):
    spec, shipped = ZOO["mnist_resnet"], W.BUNDLED_DIR
    for kept in ("", ".json"):  # nothing at all; the training record without its weights
        folder = tmp_path / f"weights{kept}"
        folder.mkdir()
        if kept:
            (folder / "mnist_resnet.json").write_bytes((shipped / "mnist_resnet.json").read_bytes())
        monkeypatch.setattr(W, "BUNDLED_DIR", folder)
        with pytest.raises(W.IncompleteInstall, match="installation is incomplete"):
            load_published(spec, build_random(spec))


def test_help_imports_neither_torch_nor_gradio():
    """``python app.py --help`` answers before the app is built (it took a minute when the demo
    was built first)."""
    probe = ("import runpy, sys\nsys.argv = ['app.py', '--help']\ntry:\n    runpy.run_path('app.py', run_name='__main__')\n"
             "except SystemExit:\n    pass\nprint('heavy:', sorted(m for m in ('torch', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "--warm LESSON" in out.stdout and "heavy: []" in out.stdout, out.stdout + out.stderr


@pytest.mark.slow
def test_a_wheel_installed_with_target_reads_a_drawn_zero_and_serves(tmp_path, examples):
    wheels, target = tmp_path / "wheels", tmp_path / "target"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels), str(ROOT)],
                   check=True, timeout=300)
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), *map(str, wheels.glob("*.whl"))],
                   check=True, timeout=300)
    assert not (target / "assets").exists() and (target / "cnndemo" / "assets" / "weights").is_dir()
    env = {**os.environ, "PYTHONPATH": str(target), "CNNDEMO_OFFLINE": "1"}
    where = subprocess.run([sys.executable, "-c", "import cnndemo.paths as p; print(p.ASSETS)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60).stdout.strip()
    assert where == str(target / "cnndemo" / "assets")  # the wheel's own copy, not the checkout's
    zero = ROOT / "tests" / "fixtures" / "drawn_digits" / "0_drawn_000.png"
    read = subprocess.run([sys.executable, "-m", "cnndemo", "predict", "--model", "mnist_inception", "--json", str(zero)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert read.returncode == 0, read.stderr
    row = json.loads(read.stdout)
    assert row["weights"] == "pretrained" and row["top"][0]["label"] == "0"
    port = free_port()
    app = subprocess.Popen([sys.executable, "-m", "cnndemo", "serve", "--offline", "--host", "127.0.0.1", "--port",
                            str(port)], cwd=tmp_path, env={**env, "GRADIO_TEMP_DIR": str(tmp_path / "uploads")},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 180:
            assert app.poll() is None, app.stdout.read()
            try:
                if local_get(port, "/", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        from gradio_client import Client, handle_file

        raw = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            image=handle_file(str(examples / "cat.jpg")), model="squeezenet1_0", api_name="/predict")[-1]
        assert raw["model"] == "squeezenet1_0" and len(raw["top"]) == 5
    finally:
        app.terminate()
        app.wait(timeout=60)
