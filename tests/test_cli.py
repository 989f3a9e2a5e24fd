"""The CLI's JSON contract (other tools and checks rely on it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from cnndemo.cli import main
from cnndemo.runtime import build_random
from cnndemo.zoo import ZOO
from conftest import ROOT
from images_factory import gradient, save


def run_json(capsys, *argv) -> tuple[int, list]:
    rc = main(list(argv))
    out = capsys.readouterr().out.strip().splitlines()
    return rc, [json.loads(line) for line in out]


def test_models_json(capsys):
    rc, (rows,) = run_json(capsys, "models", "--json")
    assert rc == 0
    by_key = {r["key"]: r for r in rows}
    assert set(by_key) == set(ZOO)
    for r in rows:
        assert {"key", "name", "family", "params", "input_size", "weights"} <= set(r)
        assert r["weights"] in {"pretrained", "cached", "none"}
    assert by_key["bn_inception"]["params"] == 10_876_968
    assert by_key["bn_inception"]["weights"] == "none"
    assert by_key["googlenet"]["weights"] == "pretrained"  # published, not in this test's cache
    assert by_key["inception_v3"]["input_size"] == [3, 299, 299]


def test_predict_json_one_line_per_image(capsys, tmp_path, cat):
    other = save(gradient(), tmp_path / "g.png")
    rc, rows = run_json(capsys, "predict", "--model", "squeezenet1_0", "--top", "3", "--json", str(cat), str(other))
    assert rc == 0 and len(rows) == 2
    for row, img in zip(rows, (str(cat), str(other))):
        assert row["image"] == img and row["model"] == "squeezenet1_0"
        assert row["weights"] == "random"
        assert len(row["top"]) == 3 and {"label", "index", "prob"} == set(row["top"][0])
        assert row["top"][0]["prob"] >= row["top"][1]["prob"] and row["ms"] > 0


def test_predict_errors_are_json_and_exit_nonzero(capsys, tmp_path, cat):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    rc, rows = run_json(capsys, "predict", "--model", "squeezenet1_0", "--json", str(cat), str(bad))
    assert rc == 1
    assert "top" in rows[0]
    assert rows[1]["image"] == str(bad) and "text file" in rows[1]["error"]


def test_predict_with_own_weights(capsys, tmp_path, cat):
    model = build_random(ZOO["squeezenet1_0"])
    ckpt = tmp_path / "sq.pth"
    torch.save(model.state_dict(), ckpt)
    rc, rows = run_json(capsys, "predict", "--model", "squeezenet1_0", "--weights", str(ckpt), "--json", str(cat))
    assert rc == 0 and rows[0]["weights"] == "custom"
    wrong = tmp_path / "wrong.pth"
    torch.save(build_random(ZOO["mnist_resnet"]).state_dict(), wrong)
    rc, rows = run_json(capsys, "predict", "--model", "squeezenet1_0", "--weights", str(wrong), "--json", str(cat))
    assert rc == 2 and "does not fit" in rows[0]["error"]


def test_fetch_weights_offline_fails_honestly(capsys):
    rc, rows = run_json(capsys, "fetch-weights", "--models", "squeezenet1_0", "bn_inception", "--json")
    assert rc == 1
    assert rows[0]["status"] == "failed" and "offline" in rows[0]["error"]
    assert rows[1]["status"] == "skipped"


def test_module_entry_point(cat):
    out = subprocess.run(
        [sys.executable, "-m", "cnndemo", "--offline", "predict", "--model", "squeezenet1_0", "--json", str(cat)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert row["model"] == "squeezenet1_0" and len(row["top"]) == 5


def test_attribute_shows_its_progress_on_stderr(capsys, cat):
    """A long attribution shows a bar (tqdm, on stderr) of its passes and scores; stdout keeps
    only the JSON."""
    rc = main(["attribute", "--model", "mnist_resnet", "--method", "ig", "--steps", "16",
               "--json", str(cat)])
    captured = capsys.readouterr()
    assert rc == 0 and json.loads(captured.out)["method"]
    assert "Integrated Gradients: pass" in captured.err and "%" in captured.err


def test_exemplars_ranks_a_folder_ahead_and_keeps_it_for_published_weights(capsys, tmp_path, examples, monkeypatch):
    """``exemplars`` ranks a folder as the app's --exemplars does: kept on disk for the shipped
    digit weights (read back, not ranked again), not for random weights; ``visualize --exemplars``
    then names the folder's best image per channel."""
    from cnndemo import ranking

    digits = examples / "digits"
    rc, (first,) = run_json(capsys, "exemplars", "--model", "mnist_inception", "--folder", str(digits), "--json")
    assert rc == 0 and first["weights"] == "pretrained" and first["images"] == len(list(digits.glob("*.png")))
    kept = Path(first["kept"])
    stamp = kept.stat().st_mtime_ns
    ranking._FOLDERS.clear()
    monkeypatch.setattr(ranking, "_rank_files", lambda *a: (_ for _ in ()).throw(AssertionError("ranked again")))
    rc, (again,) = run_json(capsys, "exemplars", "--model", "mnist_inception", "--folder", str(digits), "--json")
    assert rc == 0 and again["kept"] == first["kept"] and kept.stat().st_mtime_ns == stamp
    rc, (vis,) = run_json(capsys, "visualize", "--model", "mnist_inception", "--block", "incept1", "--branch", "5x5",
                          "--channel", "3", "--steps", "8", "--exemplars", str(digits), "--json")
    assert rc == 0 and vis["best_exemplar"][0]["source"].startswith(str(digits))
    monkeypatch.undo()
    (tmp_path / "a.jpg").write_bytes((examples / "cat.jpg").read_bytes())
    (tmp_path / "b.png").write_text("not an image")
    rc, (photo,) = run_json(capsys, "exemplars", "--model", "squeezenet1_0", "--folder", str(tmp_path), "--json")
    assert rc == 0 and photo["weights"] == "random" and photo["kept"] is None
    assert photo["images"] == 1 and photo["skipped"] == [str(tmp_path / "b.png")]
    rc, (bad,) = run_json(capsys, "exemplars", "--model", "squeezenet1_0", "--folder", str(tmp_path / "no"), "--json")
    assert rc == 2 and "There is no folder" in bad["error"]
