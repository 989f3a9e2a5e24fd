"""Digits: shipped weights, MNIST-style normalisation of drawings, and training that learns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from cnndemo.cli import main
from cnndemo.digits import EmptyDrawing, normalize_digit
from cnndemo.predict import predict
from cnndemo.runtime import STORE
from cnndemo.training import evaluate, load_digits, train
from cnndemo.zoo import DIGIT_KEYS, ZOO


@pytest.fixture(scope="module")
def data():
    return load_digits()


@pytest.mark.slow
@pytest.mark.parametrize("key", DIGIT_KEYS)
def test_shipped_weights_reach_the_recorded_accuracy(data, key):
    record = ZOO[key].weights.record()
    assert record["split"]["test_indices_sha256"] == data.split["test_indices_sha256"]
    assert record["split"]["test"] == 1000 and record["split"]["train"] == 4000
    lm = STORE.get(key)
    assert lm.weights.kind == "pretrained", lm.weights.reason
    _, acc = evaluate(lm.module, lm.spec, data.x_test, data.y_test)
    assert abs(acc - record["test_acc"]) <= 0.5
    assert acc >= 95.0


def test_best_shipped_net_reaches_97_percent():
    assert max(ZOO[k].weights.record()["test_acc"] for k in DIGIT_KEYS) >= 97.0


def strokes(draw: ImageDraw.ImageDraw, fill) -> None:
    """A hand-drawn-looking 7 on a 400 x 400 canvas."""
    draw.line([(110, 90), (300, 90), (190, 330)], fill=fill, width=26, joint="curve")
    draw.line([(160, 200), (250, 200)], fill=fill, width=22)


def canvas(mode: str, bg, fg) -> Image.Image:
    img = Image.new(mode, (400, 400), bg)
    strokes(ImageDraw.Draw(img), fg)
    return img


def test_polarity_and_transparency_normalise_alike():
    black_on_white = np.asarray(normalize_digit(canvas("RGB", "white", "black")), float)
    on_transparent = np.asarray(normalize_digit(canvas("RGBA", (0, 0, 0, 0), (20, 20, 20, 255))), float)
    white_on_black = np.asarray(normalize_digit(canvas("L", 0, 255)), float)
    grey_strokes = np.asarray(normalize_digit(canvas("RGBA", (255, 255, 255, 0), (90, 90, 90, 255))), float)
    for other in (on_transparent, white_on_black, grey_strokes):
        assert np.abs(black_on_white - other).mean() < 4.0
    assert black_on_white.shape == (28, 28)
    # MNIST layout: white digit on black, inside the central 20 x 20, centred by mass.
    assert black_on_white[0].max() == 0 and black_on_white[:, 0].max() == 0
    ys, xs = np.nonzero(black_on_white > 25)
    assert max(ys.max() - ys.min(), xs.max() - xs.min()) <= 20
    cy, cx = (np.indices(black_on_white.shape) * black_on_white).reshape(2, -1).sum(1) / black_on_white.sum()
    assert abs(cy - 13.5) <= 1.0 and abs(cx - 13.5) <= 1.0


@pytest.mark.parametrize("img", [
    Image.new("RGB", (300, 300), "white"),
    Image.new("RGBA", (300, 300), (0, 0, 0, 0)),
    Image.new("L", (50, 50), 0),
])
def test_empty_canvas_is_a_friendly_message(img):
    with pytest.raises(EmptyDrawing, match="empty|too little"):
        normalize_digit(img)


def test_drawn_digits_are_read(tmp_path):
    one = Image.new("RGBA", (400, 400), (0, 0, 0, 0))
    ImageDraw.Draw(one).line([(200, 60), (205, 340)], fill=(0, 0, 0, 255), width=24)
    zero = Image.new("RGB", (400, 400), "white")
    ImageDraw.Draw(zero).ellipse([(120, 70), (280, 330)], outline="black", width=24)
    for img, digit in ((one, "1"), (zero, "0")):
        path = tmp_path / f"{digit}.png"
        img.save(path)
        votes = [predict(path, key).top[0].label for key in ("mnist_inception", "mnist_resnet")]
        assert votes == [digit, digit]


def test_cli_predict_uses_the_same_normalisation(tmp_path, capsys):
    path = tmp_path / "seven.png"
    canvas("RGBA", (0, 0, 0, 0), (0, 0, 0, 255)).save(path)
    assert main(["predict", "--model", "mnist_inception", "--json", str(path)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["weights"] == "pretrained" and row["top"][0]["label"] in [str(d) for d in range(10)]
    assert row["top"][0]["label"] == predict(canvas("RGB", "white", "black"), "mnist_inception").top[0].label


def test_short_training_run_lowers_the_loss(data):
    model_loss_before, _ = evaluate(STORE.get("mnist_resnet").spec.build(), ZOO["mnist_resnet"], data.x_test, data.y_test)
    seen = []
    result = train("mnist_resnet", epochs=1, batch_size=32, lr=0.05, data=data, limit=320, on_step=seen.append)
    assert len(result.history) == 1 and result.history[0].test_loss < model_loss_before
    steps = [s for s in seen if "step" in s]
    assert len(steps) == 10 and all(s["ex_per_s"] > 0 for s in steps)
    assert np.mean([s["loss"] for s in steps[-3:]]) < np.mean([s["loss"] for s in steps[:3]])


def test_training_refuses_imagenet_models_and_bad_settings(data):
    with pytest.raises(ValueError, match="ImageNet"):
        train("googlenet", data=data)
    with pytest.raises(ValueError):
        train("mnist_resnet", epochs=0, data=data)


def test_sweep_writes_one_plot_per_setting(tmp_path, capsys):
    out = tmp_path / "sweep"
    rc = main(["train", "--sweep", "--model", "mnist_resnet", "--epochs", "1", "--limit", "256",
               "--batch-sizes", "16", "128", "--out", str(out), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    runs = {r["batch_size"]: r for r in summary["runs"]}
    assert runs[16]["updates"] == 16 and runs[128]["updates"] == 2
    for r in summary["runs"]:
        assert r["examples_per_s"] > 0
        assert Image.open(r["plot"]).size[0] > 300
    assert (out / "sweep.json").exists()


def test_training_never_touches_the_shipped_file(data):
    path = ZOO["mnist_resnet"].weights.path
    before = path.read_bytes()
    train("mnist_resnet", epochs=1, batch_size=64, data=data, limit=128)
    assert path.read_bytes() == before
    served = STORE.get("mnist_resnet").module.state_dict()
    shipped, _ident = ZOO["mnist_resnet"].weights.load()
    assert shipped.keys() == served.keys()
    assert all(torch.equal(served[k], v) for k, v in shipped.items())  # the served model kept the shipped weights


DRAWN = Path(__file__).parent / "fixtures" / "drawn_digits"


def test_the_drawn_digit_benchmark_is_what_it_says():
    manifest = json.loads((DRAWN / "manifest.json").read_text())["digits"]
    drawn = [d for d in manifest if d["source"] == "sketchpad"]
    printed = [d for d in manifest if d["source"] == "typeface"]
    assert len(drawn) >= 300 and len(printed) >= 100
    assert {d["digit"] for d in drawn} == set(range(10)) and min(
        sum(d["digit"] == k for d in drawn) for k in range(10)) >= 30
    assert {"with bar", "plain"} <= {d["way"] for d in drawn if d["digit"] == 7}
    assert {"open", "closed"} <= {d["way"] for d in drawn if d["digit"] == 4}
    assert {"stroke", "flag and base"} <= {d["way"] for d in drawn if d["digit"] == 1}
    assert {d["canvas"] for d in printed} == {"dark on white", "dark on transparent", "light on black"}
    from cnndemo.training import TRAIN_FACES

    assert not {d["face"] for d in printed} & set(TRAIN_FACES)  # printed test digits: typefaces not trained on
    for d in manifest:
        assert (DRAWN / d["file"]).is_file()
        assert d["file"].startswith(str(d["digit"]))


def test_the_networks_read_drawn_and_printed_digits(capsys):
    """The shipped networks on the drawn-digit benchmark (drawings and typefaces none of them was
    trained on): every network >= 95%, the best >= 98%."""
    assert main(["digits-benchmark", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    acc = {k: r["accuracy"] for k, r in res["networks"].items()}
    assert set(acc) == set(DIGIT_KEYS)
    assert max(acc.values()) >= 98.0, acc
    assert min(acc.values()) >= 95.0, acc
    assert all(set(r["per_digit"]) == {str(d) for d in range(10)} for r in res["networks"].values())


def test_disagreement_is_said_plainly():
    from cnndemo.digits import disagreement

    assert disagreement({"A": ("7", 0.9), "B": ("7", 0.6)}) is None
    said = disagreement({"A": ("7", 0.62), "B": ("1", 0.8), "C": ("7", 0.55)})
    assert said == "The networks disagree: A reads 7 (62%), B reads 1 (80%), C reads 7 (55%)."


def test_the_labs_confusion_matrix_and_cells_run_the_shared_network_under_its_lock():
    """The shipped network is shared: other requests hook it (branch maps, units) while they
    hold its lock. Every forward pass of the lab's confusion matrix and of a cell's maps holds
    that lock too (another thread cannot take it meanwhile)."""
    import threading
    from types import SimpleNamespace

    from cnndemo import render
    from cnndemo.runtime import STORE
    from cnndemo.shared import RESULTS
    from cnndemo.ui import digits

    lm = STORE.get("mnist_inception")
    held = []

    def others_can_take_it() -> bool:
        box = []

        def attempt():
            got = lm.lock.acquire(blocking=False)
            if got:
                lm.lock.release()
            box.append(got)

        t = threading.Thread(target=attempt)
        t.start()
        t.join()
        return box[0]

    handle = lm.module.register_forward_pre_hook(lambda _m, _args: held.append(not others_can_take_it()))
    RESULTS.clear()  # the matrix is computed here, not found
    try:
        shown = digits.lab_confusion("mnist_inception", None, None)
        assert held and all(held) and "held-out digits read wrongly" in shown["t_cell_note"]
        held.clear()
        left, top, cell = render._confusion_geometry(render.LIGHT)
        picked = digits.lab_cell("mnist_inception", None, None,
                                 SimpleNamespace(index=[left + 1.5 * cell, top + 1.5 * cell]))
        assert held and all(held) and picked["t_cell"] is not None
    finally:
        handle.remove()


def test_the_labs_confusion_matrix_agrees_with_the_training_record_and_its_maps_add_up():
    """The held-out confusion matrix of the shipped MNIST Inception net: its diagonal is the
    accuracy its training record states (the same 1,000 digits); each digit's Integrated
    Gradients map sums to its logit minus the black baseline's (completeness, to IG's error)."""
    from cnndemo.runtime import STORE
    from cnndemo.training import confusion, digit_attributions, load_digits, to_input
    from cnndemo.weights import BUNDLED_DIR

    lm = STORE.get("mnist_inception")
    data = load_digits()
    matrix, pred, prob = confusion(lm.module, lm.spec, data.x_test, data.y_test)
    assert matrix.sum() == 1000 and (matrix.sum(1) == 100).all()
    record = json.loads((BUNDLED_DIR / "mnist_inception.json").read_text())
    assert 100 * matrix.trace() / 1000 == pytest.approx(record["test_acc"], abs=0.05)
    x = data.x_test[:4]
    attr = digit_attributions(lm.module, lm.spec, x, pred[:4].tolist(), steps=64)
    with torch.no_grad():
        gap = (lm.module(to_input(x, lm.spec)) - lm.module(to_input(torch.zeros_like(x), lm.spec)))
    want = gap[torch.arange(4), torch.as_tensor(pred[:4])].numpy()
    assert attr.reshape(4, -1).sum(1) == pytest.approx(want, rel=0.05, abs=0.05)
