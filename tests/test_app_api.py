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
