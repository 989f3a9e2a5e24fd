"""The app through gradio_client, against a launched `python app.py`."""

from __future__ import annotations

import pytest
from gradio_client import handle_file


def test_app_starts_quickly(app_server):
    # Cold start to first HTTP 200 (the figure itself is measured by `python -m cnndemo bench-startup`).
    assert app_server.startup_s < 60


def test_predict_endpoint(client, cat):
    label, seen, info, banner, raw = client.predict(image=handle_file(str(cat)), model="googlenet", api_name="/predict")
    assert len(label["confidences"]) == 5
    assert raw["model"] == "googlenet" and raw["weights"] == "random" and len(raw["top"]) == 5
    assert "Untrained weights" in banner
    assert seen and "ms" in info


def test_predict_endpoint_rejects_non_images_clearly(client, tmp_path, cat):
    bad = tmp_path / "notes.jpg"
    bad.write_text("hello, not an image")
    with pytest.raises(Exception, match="text file"):
        client.predict(image=handle_file(str(bad)), model="googlenet", api_name="/predict")
    # ...and the server keeps serving.
    raw = client.predict(image=handle_file(str(cat)), model="squeezenet1_0", api_name="/predict")[4]
    assert raw["model"] == "squeezenet1_0"


def test_branches_and_ablate_endpoints(client, cat):
    img = handle_file(str(cat))
    panel, note, share, depth, table, data = client.predict(
        image=img, model="googlenet", block="inception4c", api_name="/branches"
    )
    assert data["block"] == "inception4c" and [b["name"] for b in data["branches"]] == ["1x1", "3x3", "3x3b", "pool_proj"]
    assert data["branches"][1]["channels"] == [128, 383]
    assert panel and "inception4c" in note
    before, after, msg, res = client.predict(
        image=img, model="googlenet", block="inception4c", branch="1x1", mode="zero", api_name="/ablate"
    )
    assert res["branch"] == "1x1" and len(res["before"]) == 5 and len(res["after"]) == 5
    assert "untouched" in msg
    note_vgg = client.predict(image=img, model="vgg16", block="stage3", api_name="/branches")[1]
    assert "no parallel branches" in note_vgg


def test_training_lab_model_serves_only_its_own_session(app_server, tmp_path):
    from gradio_client import Client
    from PIL import Image, ImageDraw

    digit = tmp_path / "one.png"
    img = Image.new("RGB", (200, 200), "white")
    ImageDraw.Draw(img).line([(100, 30), (100, 170)], fill="black", width=16)
    img.save(digit)
    trainer, other = Client(app_server.url, verbose=False), Client(app_server.url, verbose=False)
    loss, acc, msg = trainer.predict(key="mnist_resnet", epochs=1, batch_size=64, lr=0.05, limit=500,
                                     api_name="/train_digits")
    assert "held-out accuracy" in msg and "shipped weights are unchanged" in msg
    mine = trainer.predict(image=handle_file(str(digit)), api_name="/digits")[-1]
    theirs = other.predict(image=handle_file(str(digit)), api_name="/digits")[-1]
    assert mine["mnist_resnet"]["weights"] == "custom" and "this session" in mine["mnist_resnet"]["source"]
    assert theirs["mnist_resnet"]["weights"] == "pretrained"


def test_unit_and_hide_endpoints_mirror_the_library(client, examples, cat):
    """/unit returns the same unit as ``cnndemo.units.unit`` (the shipped digit weights), its
    value recomputed; /hide hides exactly the rectangles' share of the image."""
    from cnndemo.units import unit

    six = examples / "digits" / "six.png"
    got = client.predict(image=handle_file(str(six)), model="mnist_inception", block="incept1", branch="5x5",
                         channel=3, y=4, x=5, api_name="/unit")
    mine = unit(six, "mnist_inception", "incept1", "5x5", 3, 4, 5)
    assert got["weights"] == "pretrained" and got["agrees"] is True
    assert got["at"] == [4, 5] and got["channel"] == 3
    assert abs(got["captured"] - mine.captured) <= 1e-5 * max(1.0, abs(mine.captured))
    assert got["field"]["box"] == list(mine.box)
    # Empty channel and position: the branch's most active channel at its strongest point.
    strongest = client.predict(image=handle_file(str(six)), model="mnist_inception", block="incept1",
                               branch="5x5", channel=None, y=None, x=None, api_name="/unit")
    auto = unit(six, "mnist_inception", "incept1", "5x5")
    assert (strongest["channel"], strongest["at"]) == (auto.channel, [auto.y, auto.x])
    with pytest.raises(Exception, match="no branch '7x7'"):
        client.predict(image=handle_file(str(six)), model="mnist_inception", block="incept1", branch="7x7",
                       channel=0, y=0, x=0, api_name="/unit")
    with pytest.raises(Exception, match="channel below"):
        client.predict(image=handle_file(str(six)), model="mnist_inception", block="incept1", branch="5x5",
                       channel=9999, y=0, x=0, api_name="/unit")

    from PIL import Image
    w, h = Image.open(cat).size
    res = client.predict(image=handle_file(str(cat)), model="googlenet", rects="0 0 99 199; 0 0 9 9",
                         api_name="/hide")
    assert res["hidden_share"] == pytest.approx(100 * 200 / (w * h))
    assert len(res["before"]) == 5 and len(res["after"]) == 5 and res["fill_kind"] == "mean colour"
    assert res["p_after"] == pytest.approx(res["target"]["prob"] + res["delta"])
    for bad, says in (("1 2 3", "four whole numbers"), ("", "at least one rectangle"),
                      (f"{h} 0 {h + 5} 5", "outside"), ("5 5 1 1", "empty")):
        with pytest.raises(Exception, match=says):
            client.predict(image=handle_file(str(cat)), model="googlenet", rects=bad, api_name="/hide")
