"""Explore tab: pick a model, give it an image, see top-5, what it saw, and its architecture."""

from __future__ import annotations

import html

import gradio as gr

from .. import anatomy
from ..branches import explore
from ..zoo import ZOO
from .common import (
    MODEL_GROUP,
    examples,
    get_model,
    image_input,
    model_choices,
    user_errors,
    weights_banner,
)


def model_card(key: str) -> str:
    spec = ZOO[key]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in spec.notes)
    return (
        f"**{spec.name}** · {spec.family} · input {spec.input_size[1]}×{spec.input_size[2]}  \n"
        f"{spec.description}  \n"
        f"Paper: [{spec.paper.title}]({spec.paper.url}) ({spec.paper.authors}, {spec.paper.year})"
        + (f"<ul class='cz-note'>{notes}</ul>" if notes else "")
    )


def architecture_rows(key: str) -> list[list]:
    rows = anatomy.architecture(ZOO[key])
    return [[r.name, r.layer, " × ".join(map(str, r.shape)), f"{r.params:,}"] for r in rows]


@user_errors
def on_model_change(key: str, checkpoint: dict | None):
    info = None
    if checkpoint and checkpoint.get("key") == key:
        info = get_model(key, checkpoint).weights
    return model_card(key), weights_banner(info, key)


@user_errors
def predict(image: str | None, model: str, checkpoint: dict | None = None, progress=gr.Progress()):
    """Top-5 for one image on one zoo model.

    image: path of the uploaded image file. model: a zoo key, e.g. "googlenet".
    """
    if not image:
        return None, None, "Give the model an image: upload one, use the webcam, paste, or pick an example.", weights_banner(None, model), None
    lm = get_model(model, checkpoint, progress)
    progress(0.9, desc=f"running {lm.spec.name}")
    ex = explore(image, lm)
    pred = ex.prediction
    notes = "; ".join(load_notes(image, lm)) or "no conversion needed"
    info = (
        f"**Forward pass:** {pred.ms:.1f} ms on {lm.device.type.upper()} "
        f"(with every branch captured: the maps below need no second pass).  \n"
        f"**Input:** {notes}."
    )
    return pred.as_label(), ex.seen, info, weights_banner(lm.weights, model), pred.to_json()


@user_errors
def on_checkpoint(file: str | None, model: str):
    """Validate an uploaded state_dict for the selected architecture; keep it for this session."""
    if not file:
        return None, "No checkpoint: the model uses its published weights (or random init).", weights_banner(None, model)
    from pathlib import Path

    state = {"key": model, "path": file, "name": Path(file).name}
    try:
        lm = get_model(model, state)
    except Exception as e:
        gr.Warning(str(e))
        return None, f"**Refused:** {html.escape(str(e))}", weights_banner(None, model)
    msg = f"Loaded **{html.escape(state['name'])}** into {lm.spec.name} for this session only."
    return state, msg, weights_banner(lm.weights, model)


def load_notes(image: str, lm) -> tuple[str, ...]:
    from ..predict import load_for

    return load_for(lm.spec, image).notes


def build(checkpoint_state: gr.State) -> dict:
    """Lay out the Explore tab; return its components for the other views to wire into."""
    c: dict = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            c["model"] = gr.Dropdown(
                model_choices(), value="googlenet", label="Model", info="grouped by family"
            )
            c["card"] = gr.Markdown(model_card("googlenet"))
            c["image"] = image_input(
                sources=["upload", "webcam", "clipboard"],
                label="Image (upload, webcam or paste)",
                height=320,
            )
            c["examples"] = gr.Examples(examples(), inputs=[c["image"]], label="Example photos")
            c["run"] = gr.Button("Predict", variant="primary")
            with gr.Accordion("Your own weights (a state_dict for the selected model)", open=False):
                c["ckpt_file"] = gr.File(
                    file_types=[".pth", ".pt", ".safetensors", ".bin", ".ckpt"],
                    label="Checkpoint (.pth / .pt / .safetensors); loaded with weights_only, never unpickled",
                )
                c["ckpt_status"] = gr.Markdown("No checkpoint: the model uses its published weights (or random init).")
        with gr.Column(scale=6):
            c["banner"] = gr.HTML(weights_banner(None, "googlenet"), label="weights in use")
            c["label"] = gr.Label(num_top_classes=5, label="Top-5 predictions")
            with gr.Row():
                c["seen"] = gr.Image(label="What the network saw (after preprocessing)", height=240, interactive=False)
                c["info"] = gr.Markdown(label="timing and input notes")
            with gr.Accordion("Raw result (same JSON as the CLI)", open=False):
                c["json"] = gr.JSON(label="prediction")
    with gr.Accordion("Architecture: stage by stage", open=False):
        c["arch"] = gr.Dataframe(
            architecture_rows("googlenet"),
            headers=["stage", "layer", "output shape (C × H × W)", "parameters"],
            interactive=False,
            wrap=True,
        )
    outputs = [c["label"], c["seen"], c["info"], c["banner"], c["json"]]
    c["predict_event"] = gr.on(
        triggers=[c["run"].click, c["image"].change],
        fn=predict,
        inputs=[c["image"], c["model"], checkpoint_state],
        outputs=outputs,
        api_name="predict",
        concurrency_id=MODEL_GROUP,
    )
    c["ckpt_file"].change(
        on_checkpoint,
        [c["ckpt_file"], c["model"]],
        [checkpoint_state, c["ckpt_status"], c["banner"]],
        api_visibility="private",
        concurrency_id=MODEL_GROUP,
    )
    c["model"].change(
        on_model_change, [c["model"], checkpoint_state], [c["card"], c["banner"]], api_visibility="private"
    ).then(
        predict,
        [c["image"], c["model"], checkpoint_state],
        outputs,
        api_visibility="private",
        concurrency_id=MODEL_GROUP,
    ).then(
        user_errors(architecture_rows), [c["model"]], [c["arch"]], api_visibility="private"
    )
    return c
