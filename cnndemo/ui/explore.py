"""Explore tab: pick a model, give it an image, see top-5, what it saw, and its architecture."""

from __future__ import annotations

import html
import re

import gradio as gr

import pandas as pd

from .. import anatomy, render

from ..branches import ablate, block_infos, explore
from ..digits import PHOTO_WARNING
from ..errors import UserError
from ..specs import MERGES
from ..rooms import SHELF
from ..zoo import DEFAULT_MODEL, ZOO
from . import featureview, unitview
from .common import (
    LIGHT,
    branch_panel,
    by_name,
    session_state,
    examples,
    get_model,
    guard_files,
    image_input,
    log,
    model_choices,
    picture,
    user_errors,
    weights_banner,
    weights_kind,
)


def model_card(key: str) -> str:
    spec = ZOO[key]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in spec.notes)
    return (
        f"**{spec.name}** · {spec.family} · input {spec.input_size[1]}×{spec.input_size[2]}  \n"
        f"{spec.description}  \n"
        f"Trained on: {spec.inputs.trained_on}.  \n"
        f"Paper: [{spec.paper.title}]({spec.paper.url}) ({spec.paper.authors}, {spec.paper.year})"
        + (f"<ul class='cz-note'>{notes}</ul>" if notes else "")
    )


def architecture_rows(key: str) -> list[list]:
    spec = ZOO[key]
    fields = anatomy.receptive_fields(spec)
    paper = anatomy.paper_names(spec)
    rows = []
    for r in anatomy.architecture(spec):
        f = fields.get(r.name)
        rows.append([r.name, paper.get(r.name, "-"), r.layer, " × ".join(map(str, r.shape)), f"{r.params:,}",
                     f.describe() if f else "-", f"{f.stride[0]}" if f else "-"])
    return rows


@user_errors
def on_model_change(key: str, checkpoint: dict | None):
    info = None
    if checkpoint and checkpoint.get("key") == key:
        info = get_model(key, checkpoint).weights
    return {"card": model_card(key), "banner": weights_banner(info, key)}


def prediction(image: str | None, model: str, checkpoint: dict | None = None, progress=gr.Progress()):
    """Top-5 predictions for one image on one zoo model, with the image the network saw.

    Args:
        image: the image (an upload: JPEG, PNG, WebP, BMP, GIF or TIFF).
        model: a zoo key, e.g. "googlenet", "bn_inception", "inception_v3", "resnet50", "vgg16", "squeezenet1_0".
    """
    if not image:
        return {"label": None, "seen": None, "banner": weights_banner(None, model), "json": None,
                "info": "Give the model an image: upload one, use the webcam, paste, or pick an example."}
    lm = get_model(model, checkpoint, progress)
    if progress is not None:  # None: a step that shows no progress (a class's follow)
        progress(0.9, desc=f"running {lm.spec.name}")
    ex = explore(image, lm)
    pred = ex.prediction
    warnings = [n for n in ex.input_notes if n.startswith(PHOTO_WARNING)]
    notes = "; ".join(n for n in ex.input_notes if n not in warnings) or "no conversion needed"
    info = (
        "".join(f"**{html.escape(w)}.**  \n" for w in warnings)
        + f"**{lm.spec.name}** ({weights_kind(lm.weights)}): {pred.timing(lm.device.type.upper())}"
        + ("" if pred.cached else " (with every branch captured: the maps below need no second pass)") + ".  \n"
        f"**Input:** {notes}."
    )
    seen = picture(("seen", ex.model, ex.weights_ident, ex.image_digest), lambda: render.enlarged(ex.seen))
    return {"label": pred.as_label(), "seen": seen, "info": info,
            "banner": weights_banner(lm.weights, model), "json": pred.to_json()}


predict = user_errors(prediction)


def class_delivers(image, model: str, followed: dict | None, applying) -> bool:
    """Whether a class (or a link) applied a view of this model and image to the page
    (``applying``: set by the application, ended by the page's own next image or model, by
    leaving or breaking away from the class; ``followed``: its view). The view's top-5 and maps
    then come in one step from the room (``ui.room.follow_explore``), and the page's own chains
    for the new image or model skip their work: a following page draws each result once. (Its
    change events can reach the server seconds after the view's results.)"""
    if not applying or not followed or followed.get("tab") == "attributions" or followed.get("model") != model:
        return False
    return bool(image) and SHELF.ref(image) == followed.get("image")


@user_errors
def predict_unless_delivered(image, model: str, checkpoint, followed, applying, progress=gr.Progress()):
    """The top-5 of a new image or model (``prediction``), unless the class delivers it."""
    if class_delivers(image, model, followed, applying):
        return {k: gr.skip() for k in PREDICTION}
    return prediction(image, model, checkpoint, progress)


@user_errors
def branches_unless_delivered(image, model: str, block: str, checkpoint, look, followed, applying):
    """The block's maps after a prediction (``branches_result``), unless the class delivers them."""
    if class_delivers(image, model, followed, applying):
        return {k: gr.skip() for k in BRANCH_MAPS}
    return branches_result(image, model, block, checkpoint, look)


@user_errors
def on_checkpoint(file: str | None, model: str):
    """Load your own state_dict for one architecture, for this session only.

    Args:
        file: a .pth / .pt / .safetensors state_dict (loaded with weights_only: pickled code never runs).
        model: the zoo key it was trained for.
    """
    if not file:
        return {"checkpoint": None, "banner": weights_banner(None, model),
                "ckpt_status": "No checkpoint: the model uses its published weights (or random init)."}
    from pathlib import Path

    state = {"key": model, "path": file, "name": Path(file).name}
    try:
        lm = get_model(model, state)
    except Exception as e:  # refused (a UserError says why), or a bug: logged with its traceback
        if not isinstance(e, UserError):
            log.error("loading a checkpoint failed", exc_info=e)
        gr.Warning(str(e))
        return {"checkpoint": None, "ckpt_status": f"**Refused:** {html.escape(str(e))}",
                "banner": weights_banner(None, model)}
    msg = f"Loaded **{html.escape(state['name'])}** into {lm.spec.name} for this session only."
    return {"checkpoint": state, "ckpt_status": msg, "banner": weights_banner(lm.weights, model)}


def block_choices(key: str) -> list[str]:
    return [b.name for b in ZOO[key].blocks]


def valid_block(key: str, block: str | None) -> str:
    """``block`` if the model has it, else the model's default block."""
    return block if block in block_choices(key) else ZOO[key].default_block


def branch_choices(key: str, block: str) -> list[str]:
    return [b.name for b in ZOO[key].block(valid_block(key, block)).branches]


def ablation_cleared(key: str):
    """No ablation result (it named another model, image or block); the button off, with the
    reason, where the model has no branches to knock out."""
    spec = ZOO[key]
    if spec.has_branches:
        msg = ""
    else:
        others = ", ".join(z.name for z in ZOO.values() if z.has_branches and z.inputs.kind == spec.inputs.kind)
        msg = (f"*{spec.name} has no parallel branches: each stage is a single path, so there is no "
               f"branch to knock out. Models with branches: {others}.*")
    return {"before": None, "after": None, "ablate_msg": msg, "ablate_json": None,
            "ablate": gr.Button(interactive=spec.has_branches)}


def results_pending(key: str, block: str | None, image: str | None, followed: dict | None = None,
                    applying=None, *, new_model: bool) -> dict:
    """The moment the model or image changes, nothing from the last one stays readable: every
    result is emptied and the note says what is being computed (no network runs here). A new
    model also shows its own blocks at once. (Nothing here while a class delivers the view: the
    step that set its image or model emptied the results, ``ui.room.apply_controls``.)"""
    if class_delivers(image, key, followed, applying):
        return {}
    spec = ZOO[key]
    # Any other image or model (the page's own) ends the application: a later return to its
    # model and image is computed here again.
    ended = {"applying": None} if applying else {}
    # A new model keeps the block on screen when it has one of that name (a followed or linked
    # view sets both at once); otherwise it shows its default block.
    block = valid_block(key, block)
    note = f"*Computing {spec.name}'s top-5 and branch maps...*" if image else ""
    out = {"label": None, "seen": None, "info": note, "json": None, **branches_pending(key, block, image),
           **dict.fromkeys(unitview.HIDE_OUTPUTS)}  # (a painted try on the last image or model)
    if new_model:
        branches = branch_choices(key, block)
        out["block"] = gr.Dropdown(choices=block_choices(key), value=block)
        out["branch"] = gr.Dropdown(choices=branches, value=branches[0], interactive=spec.has_branches)
    if followed_branch(image, key, block, followed):
        out.pop("branch_view")  # the followed view's branch stays on screen
        out.pop("branch", None)
    return {**out, **ended}


def share_chart_style(key: str, block: str) -> dict:
    """The block-share bars in the block's own order and the diagram's colours (a native plot
    otherwise sorts them alphabetically, in one colour). Set before the values arrive, in a
    private step, so the "branches" endpoint keeps returning the plain table."""
    names = branch_choices(key, block)
    colours = render.branch_colours_hex()
    return dict(sort=names, color="branch", color_map={n: colours[i % len(colours)] for i, n in enumerate(names)},
                colors_in_legend=[])  # the axis names each bar


def depth_chart_style(key: str) -> dict:
    """The shares-by-depth bars: blocks in forward order, each bar split by branch in the
    diagram's colours. Set with the block chart's, before the values arrive (a native plot
    keeps the colour domain it was first drawn with)."""
    names = list(dict.fromkeys(b.name for block in ZOO[key].blocks for b in block.branches))
    colours = render.branch_colours_hex()
    return dict(sort=[b.name for b in ZOO[key].blocks],
                color_map={n: colours[i % len(colours)] for i, n in enumerate(names)})


def depth_frame(ex) -> pd.DataFrame:
    """Each block's output energy split by branch, blocks in forward order (stacked bars)."""
    return pd.DataFrame([{"block": name, "branch": b.info.name, "share": b.share}
                         for name, bm in ex.blocks.items() for b in bm.branches])


def branches_pending(key: str, block: str, image: str | None) -> dict:
    """The branch outputs emptied, saying which block's maps are on their way."""
    note = f"*Computing the maps of {html.escape(str(block))} ({ZOO[key].name})...*" if image else ""
    return {"panel": None, "block_note": note, "share_plot": gr.BarPlot(None, **share_chart_style(key, block)),
            "depth_plot": gr.BarPlot(None, **depth_chart_style(key)), "branch_table": None, "branch_json": None,
            "branch_view": None, **dict.fromkeys(UNIT_SHOWN), **dict.fromkeys(featureview.OUTPUTS)}


@user_errors
def on_block(key: str, block: str):
    branches = branch_choices(key, block)
    return {"branch": gr.Dropdown(choices=branches, value=branches[0])}


# Clicking a branch column of the diagram sends its name to the server (Gradio's HTML events).
DIAGRAM_JS = """
element.addEventListener('click', (e) => {
  const col = e.target.closest('[data-branch]');
  if (col) trigger('click', {branch: col.dataset.branch});
});
"""


def block_diagram(key: str, block: str, selected: str | None = None) -> str:
    """The block drawn from its spec: one column per branch (each layer with its kernel and
    channels, the branch's output shape), the shared layers above, the merge below."""
    spec = ZOO[key]
    block = valid_block(key, block)
    info = next(i for i in block_infos(spec) if i.name == block)
    colours = render.branch_colours_hex()
    cols = []
    for i, b in enumerate(info.branches):
        layers = "".join(f"<div class='cz-layer'>{html.escape(part)}</div>" for part in b.path.split(" -> "))
        ch = f"channels {b.channels[0]}–{b.channels[1]}" if b.channels else "full width"
        sel = " cz-selected" if b.name == selected else ""
        cols.append(
            f"<button type='button' class='cz-branch{sel}' data-branch='{html.escape(b.name)}' "
            f"style='border-top-color:{colours[i % len(colours)]}' title='show what {html.escape(b.name)} saw'>"
            f"<div class='cz-bname'>{html.escape(b.name)}</div>{layers}"
            f"<div class='cz-shape'>→ {' × '.join(map(str, b.shape))}<br>{ch}</div></button>"
        )
    merge = MERGES[info.merge].label
    shared = (f"<div class='cz-shared'>shared: {html.escape(info.shared)}</div>" if info.shared else "")
    return (
        f"<div class='cz-diagram' role='group' aria-label='block diagram of {html.escape(info.name)}'>"
        f"<div class='cz-io'>input of {html.escape(info.name)}</div>{shared}"
        f"<div class='cz-cols'>{''.join(cols)}</div>"
        f"<div class='cz-io'>{merge} → output {' × '.join(map(str, info.shape))}</div></div>"
    )


_SELECTED = re.compile(r"cz-selected' data-branch='([^']*)'")


def selected_branch(diagram: str | None) -> str:
    """The branch selected in a diagram drawn by ``block_diagram`` ("" when none is)."""
    found = _SELECTED.search(str(diagram or ""))
    return html.unescape(found.group(1)) if found else ""


def _block_note(spec, info) -> str:
    head = f"**{info.name}** · {info.kind} · output {' × '.join(map(str, info.shape))} · {info.params:,} parameters"
    if not spec.has_branches:
        head = (
            f"**{spec.name} has no parallel branches.** Shown instead: its conv stages, one at a time "
            f"(the output of {info.module}).  \n" + head
        )
    if info.shared:
        head += f"  \nShared by both branches before the split: {info.shared}."
    if info.merge == "add_relu":
        head += "  \nThe block outputs relu(residual + shortcut): both branches have the full width."
    notes = [f"*{b.name}*: {b.note}" for b in info.branches if b.note]
    return head + ("  \n" + "  \n".join(notes) if notes else "")


def branches_result(image: str | None, model: str, block: str, checkpoint: dict | None = None, look: str | None = None):
    """Every branch of one block for one image: maps, energy shares, and the shares across depth.

    Args:
        image: the image (an upload).
        model: a zoo key, e.g. "googlenet".
        block: a block name, e.g. "inception4c" (`python -m cnndemo blocks --model KEY` lists them).
    """
    shape = render.Look.parse(look)
    spec = ZOO[model]
    block = valid_block(model, block)
    if not image:
        return {"panel": None, "block_note": "Give the model an image to see its branches.", "share_plot": None,
                "depth_plot": None, "branch_table": None, "branch_json": None}
    lm = get_model(model, checkpoint)
    ex = explore(image, lm)  # cached by the predict step: no second forward pass
    bm = ex.blocks[block]
    rows = [
        [
            b.info.name,
            b.info.path,
            f"{b.info.channels[0]}-{b.info.channels[1]}" if b.info.channels
            else ("all (one path)" if bm.info.merge == "single" else "all (added)"),
            " × ".join(map(str, b.info.shape)),
            f"{b.info.params:,}",
            f"{b.share:.1%}",
        ]
        for b in bm.branches
    ]
    share = pd.DataFrame({"branch": [b.info.name for b in bm.branches], "share": [b.share for b in bm.branches]})
    data = {
        "model": model,
        "weights": lm.weights.kind,
        "block": block,
        # The CLI's "path" is renamed: gradio_client takes any object with a string "path"
        # for a file to download.
        "branches": bm.branches_json(path_key="kernel_path"),
    }
    return {"panel": branch_panel(ex, block, shape), "block_note": _block_note(spec, bm.info), "share_plot": share,
            "depth_plot": depth_frame(ex),
            "branch_table": rows, "branch_json": data}


show_branches = user_errors(branches_result)


def branch_view(image: str | None, model: str, block: str, branch: str | None, checkpoint: dict | None = None,
                look: str | None = None):
    """The block diagram with ``branch`` selected, that branch's maps large, and the ablation's
    branch set to it: what a click on its column shows."""
    block = valid_block(model, block)
    shown = {"diagram": block_diagram(model, block, branch), "branch_view": None, "branch": gr.skip()}
    if not image:
        return shown
    ex = explore(image, get_model(model, checkpoint))
    bm = ex.blocks[block]
    # The clicked branch alone, with its 4 most active channels, about as tall as wide: readable on a phone.
    one = [b for b in bm.branches if b.info.name == branch]
    if not one:
        return shown
    shape = render.Look.parse(look)
    card = picture(("card", ex.model, ex.weights_ident, ex.image_digest, block, branch, shape),
                   lambda: render.branch_card(bm, one[0], ex.seen, look=shape))
    return {**shown, "branch_view": card, "branch": gr.Dropdown(value=branch)}


@user_errors
def on_diagram_click(image, model, block, checkpoint, look, evt: gr.EventData):
    return branch_view(image, model, block, getattr(evt, "branch", None), checkpoint, look)


@user_errors
def on_look(image, model, block, branch, diagram, checkpoint, look):
    """The pictures on screen drawn again for a new look (theme or presenter mode). No network
    runs (the maps come from the cached exploration); a branch view is drawn only if one is shown."""
    if not image:
        return {}
    maps = branches_result(image, model, block, checkpoint, look)
    shown = bool(selected_branch(diagram))
    card = branch_view(image, model, block, branch, checkpoint, look)["branch_view"] if shown else gr.skip()
    return {"panel": maps["panel"], "branch_view": card}


def ablation_result(image: str | None, model: str, block: str, branch: str, mode: str = "zero",
                    checkpoint: dict | None = None):
    """Knock one branch of a block out (zeros, or its per-channel mean) and compare the top-5.

    Args:
        image: the image (an upload).
        model: a zoo key with multi-branch blocks (not "vgg16").
        block: a block name, e.g. "inception4c".
        branch: a branch of that block, e.g. "3x3".
        mode: "zero" or "mean".
    """
    if not image:
        raise gr.Error("Give the model an image first.")
    lm = get_model(model, checkpoint)
    res = ablate(image, lm, block, branch, mode=mode)
    before = res.before.top[0]
    p_after = before.prob + res.top1_delta
    msg = (
        f"**{lm.spec.name}** ({weights_kind(lm.weights)}): knocking out **{block}/{branch}** ({'zeros' if mode == 'zero' else 'per-channel mean'}) "
        f"moves the probability of **{before.label}** from {before.prob:.2%} to {p_after:.2%} "
        f"(**{res.top1_delta:+.2%}**). The shared model is untouched: the change lives in a hook "
        "that existed only for this run."
    )
    return {"before": res.before.as_label(), "after": res.after.as_label(), "ablate_msg": msg, "ablate_json": res.to_json()}


run_ablation = user_errors(ablation_result)  # the event's handler (a followed view calls ablation_result)


def on_load(key: str) -> dict:
    """The model's architecture table and block diagram, filled when a page opens (traced once,
    then cached) rather than while the app starts."""
    return {"arch": architecture_rows(key), "diagram": block_diagram(key, ZOO[key].default_block)}


def followed_branch(image, model: str, block: str | None, followed: dict | None) -> str | None:
    """The branch a followed (or linked) view has clicked, when the page shows that view's
    model, image and block: its change events (which can arrive after the view's results) then
    keep the click instead of clearing it."""
    if not followed or followed.get("tab") == "attributions" or not followed.get("branch"):
        return None
    if followed.get("model") != model or valid_block(model, followed.get("block")) != valid_block(model, block):
        return None
    return followed["branch"] if SHELF.ref(image) == followed.get("image") else None


def diagram_reset(image, model: str, block: str, ckpt, followed: dict | None = None) -> dict:
    """A new block or image: the diagram drawn again with nothing selected (or with the
    followed view's branch, whose large view then stays)."""
    branch = followed_branch(image, model, block, followed)
    if branch:
        return {"diagram": block_diagram(model, block, branch), "branch_view": gr.skip(), "branch": gr.skip()}
    return {"diagram": block_diagram(model, block), "branch_view": None, "branch": gr.skip()}


# The tab's outputs by name, in the order each endpoint returns them.
PREDICTION = ("label", "seen", "info", "banner", "json")
BRANCH_MAPS = ("panel", "block_note", "share_plot", "depth_plot", "branch_table", "branch_json")
ABLATION = ("before", "after", "ablate_msg", "ablate_json")
# Everything a new model or image makes stale (emptied first, see results_pending).
UNIT_SHOWN = unitview.OUTPUTS[:3]  # a picked unit's pictures and steps, emptied with the maps
SHOWN = ("label", "seen", "info", "json", *BRANCH_MAPS, "branch_view", *UNIT_SHOWN, *unitview.HIDE_OUTPUTS,
         *featureview.OUTPUTS)


def build(checkpoint_state: gr.State, look: gr.State, first=None) -> dict:
    """Lay out the Explore tab, section by section, each wiring its own events; return its
    components for the other views to wire into. ``first(c)``: wires events that must be
    registered before the tab's own (the page's browser sends a change's events in that
    order), once the model, image, block, diagram and the knock-out's controls exist."""
    # The view a class or a link made this page show (``ui.room``): its clicked branch survives
    # the change events that setting it fires.
    # ``applying``: that view was applied, until the page's own next image or model (its results
    # come in one step meanwhile: ``class_delivers``).
    c: dict = {"checkpoint": checkpoint_state, "look": look, "followed": session_state(None),
               "applying": session_state(None)}
    _prediction_section(c)
    _architecture_section(c)
    _branches_section(c)
    _ablation_section(c, first)
    unitview.build(c)
    unitview.build_hide(c)
    featureview.build(c)
    unitview.build_api(c)
    _branch_events(c)
    _chains(c)
    return c


def _prediction_section(c: dict) -> None:
    """Model, image, examples, your own weights; top-5, what the network saw, timing."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            c["model"] = gr.Dropdown(
                model_choices(), value=DEFAULT_MODEL, label="Model", info="grouped by family", elem_id="explore-model"
            )
            c["card"] = gr.Markdown(model_card(DEFAULT_MODEL))
            c["image"] = image_input(
                sources=["upload", "webcam", "clipboard"],
                label="Image (upload, webcam or paste)",
                elem_id="explore-image",
                height=320,
            )
            c["examples"] = gr.Examples(examples(), inputs=[c["image"]], label="Example photos")
            c["run"] = gr.Button("Predict", variant="primary")
            with gr.Accordion("Your own weights (a state_dict for the selected model)", open=False):
                c["ckpt_file"] = guard_files(gr.File(
                    file_types=[".pth", ".pt", ".safetensors", ".bin", ".ckpt"],
                    label="Checkpoint (.pth / .pt / .safetensors); loaded with weights_only, never unpickled",
                ))
                c["ckpt_status"] = gr.Markdown(label="checkpoint status", value="No checkpoint: the model uses its published weights (or random init).")
        with gr.Column(scale=6):
            c["banner"] = gr.HTML(weights_banner(None, DEFAULT_MODEL), label="weights in use", elem_id="explore-banner")
            c["label"] = gr.Label(num_top_classes=5, label="Top-5 predictions", elem_id="explore-top5")
            with gr.Row(elem_classes=["cz-stack"]):
                # Titled above the picture, not over it, with one button: nothing hides the image.
                with gr.Column(min_width=200):
                    gr.Markdown("**What the network saw** (after preprocessing)", elem_classes=["cz-caption"])
                    c["seen"] = gr.Image(label="What the network saw (after preprocessing)", show_label=False,
                                         height=240, interactive=False, buttons=["download"], elem_id="explore-seen",
                                         alt_text="The image after preprocessing, as the network received it")
                c["info"] = gr.Markdown(label="timing and input notes", elem_id="explore-info")
            with gr.Accordion("Raw result (same JSON as the CLI)", open=False):
                c["json"] = gr.JSON(label="prediction")
    handler, outputs = by_name(on_checkpoint, c, ("checkpoint", "ckpt_status", "banner"))
    c["ckpt_file"].change(handler, [c["ckpt_file"], c["model"]], outputs, api_name="load_checkpoint",
                          concurrency_id=LIGHT)


def _architecture_section(c: dict) -> None:
    """The stage-by-stage table (filled when the page opens, and after a new model's prediction)."""
    with gr.Accordion("Architecture: stage by stage", open=False):
        gr.Markdown("Stages are named as torchvision builds them, with the paper's name beside where it differs "
                    "(VGG-16's conv5_3 is torchvision's features.28; ResNet's conv4_x is layer3). "
                    "Receptive field: how many input pixels (per side) one output position can see; stride: "
                    "how far apart, in input pixels, neighbouring output positions are. Both are computed from "
                    "the modules (each k×k conv or pool adds (k−1) × the stride so far; where branches merge, the "
                    "widest counts). This is the theoretical field: the weights concentrate on its centre.",
                    elem_classes=["cz-note"])
        c["arch"] = gr.Dataframe(
            headers=["stage (torchvision)", "paper's name", "layer", "output shape (C × H × W)", "parameters", "receptive field (px)", "stride (px)"],
            interactive=False,
            wrap=True,
        )


def _branches_section(c: dict) -> None:
    """The block picker, its diagram (click a branch), the branch maps, shares and table."""
    gr.Markdown("## Branches: what each parallel path of a block saw")
    with gr.Row(elem_classes=["cz-stack"]):
        c["block"] = gr.Dropdown(
            block_choices(DEFAULT_MODEL), value=ZOO[DEFAULT_MODEL].default_block, label="Block", scale=2, elem_id="explore-block", allow_custom_value=True
        )
        c["block_note"] = gr.Markdown(scale=5, elem_id="explore-block-note", label="block notes")
    with gr.Row(elem_classes=["cz-stack"]):
        c["diagram"] = gr.HTML(js_on_load=DIAGRAM_JS,
                               elem_id="explore-diagram", label="block diagram (click a branch)", scale=1,
                               padding=False, min_width=300)
        with gr.Column(scale=1, min_width=300):
            gr.Markdown("**The branch you clicked:** its mean map and its 4 most active channels",
                        elem_classes=["cz-caption"])
            c["branch_view"] = gr.Image(label="The branch you clicked", show_label=False, interactive=False,
                                        elem_id="explore-branch-view", buttons=["download", "fullscreen"],
                                        alt_text="The clicked branch: its mean activation over the image and its "
                                                 "most active channels")
    c["panel"] = gr.Image(label="Branch maps", show_label=False, interactive=False, buttons=["download", "fullscreen"], elem_id="explore-panel",
                          alt_text="Every branch of the block: its facts, its mean activation over the image, and "
                                   "its most active channels, one row per branch")
    with gr.Row(elem_classes=["cz-stack"]):
        c["share_plot"] = gr.BarPlot(
            x="branch", y="share", title="Share of the block's output energy", label="block shares",
            y_lim=[0, 1], height=320, x_label_angle=0, y_title="share of energy", elem_id="explore-shares",
            elem_classes=["cz-plot"],
            **share_chart_style(DEFAULT_MODEL, ZOO[DEFAULT_MODEL].default_block),
        )
        # Drawn by the browser (in the page's theme): the server sends a small table.
        c["depth_plot"] = gr.BarPlot(
            x="block", y="share", color="branch", title="Which branch dominates, block by block",
            label="shares by depth", y_lim=[0, 1], height=320, x_label_angle=-45, y_title="share of block energy",
            elem_id="explore-depth", elem_classes=["cz-plot"], color_title="branch",
            **depth_chart_style(DEFAULT_MODEL),
        )
    c["branch_table"] = gr.Dataframe(
        headers=["branch", "kernel path", "channels", "output shape", "parameters", "energy share"],
        label="branch table",
        interactive=False,
        wrap=True,
    )
    with gr.Accordion("Branches as JSON (same as the CLI)", open=False):
        c["branch_json"] = gr.JSON(label="branches")


def _ablation_section(c: dict, first=None) -> None:
    """Knock one branch out and compare the top-5; cleared whenever what it named changes.
    ``first``: see ``build``, called once this section's controls exist."""
    with gr.Accordion("Ablation: knock one branch out and re-run from that block on", open=True):
        with gr.Row():
            branches = branch_choices(DEFAULT_MODEL, ZOO[DEFAULT_MODEL].default_block)
            c["branch"] = gr.Dropdown(branches, value=branches[0], label="Branch", allow_custom_value=True)
            c["mode"] = gr.Radio(["zero", "mean"], value="zero", label="Replace it by", info="zeros, or its per-channel mean")
            c["ablate"] = gr.Button("Knock it out", variant="secondary", elem_id="explore-ablate")
        with gr.Row():
            c["before"] = gr.Label(num_top_classes=5, label="Top-5 as is")
            c["after"] = gr.Label(num_top_classes=5, label="Top-5 with the branch knocked out", elem_id="explore-after")
        c["ablate_msg"] = gr.Markdown(label="ablation summary")
        c["ablate_json"] = gr.JSON(label="ablation", visible=False)
    if first is not None:
        first(c)
    handler, outputs = by_name(run_ablation, c, ABLATION)
    c["ablate"].click(handler, [c["image"], c["model"], c["block"], c["branch"], c["mode"], c["checkpoint"]],
                      outputs, api_name="ablate", concurrency_id=LIGHT)
    cleared, cleared_outputs = by_name(ablation_cleared, c, (*ABLATION, "ablate"))
    gr.on([c["model"].change, c["image"].change, c["block"].input, c["branch"].input, c["mode"].input],
          cleared, [c["model"]], cleared_outputs, api_visibility="private", queue=False)


def _branch_events(c: dict) -> None:
    """The diagram's clicks, a new block's maps, and pictures redrawn for a new look (they also set
    the ablation's branch, so they are wired once both sections exist)."""
    branch_inputs = [c["image"], c["model"], c["block"], c["checkpoint"]]
    clicked, clicked_outputs = by_name(on_diagram_click, c, ("diagram", "branch_view", "branch"))
    c["diagram"].click(clicked, [*branch_inputs, c["look"]], clicked_outputs, api_visibility="private",
                       concurrency_id=LIGHT)
    # A new block, model or image: the diagram is redrawn with nothing selected.
    reset, reset_outputs = by_name(diagram_reset, c, ("diagram", "branch_view", "branch"))
    gr.on([c["block"].input, c["image"].change], reset, [*branch_inputs, c["followed"]], reset_outputs,
          api_visibility="private", queue=False)
    for_model, _ = by_name(lambda image, model, block, ckpt, followed: diagram_reset(
        image, model, valid_block(model, block), ckpt, followed), c, ("diagram", "branch_view", "branch"))
    c["model"].change(for_model, [*branch_inputs, c["followed"]], reset_outputs, api_visibility="private",
                      queue=False)
    pending, pending_outputs = by_name(branches_pending, c, (*BRANCH_MAPS, "branch_view", *UNIT_SHOWN,
                                                             *featureview.OUTPUTS))
    maps, maps_outputs = by_name(show_branches, c, BRANCH_MAPS)
    picked, picked_outputs = by_name(on_block, c, ("branch",))
    c["block"].input(
        pending, [c["model"], c["block"], c["image"]], pending_outputs, api_visibility="private", queue=False,
        show_progress="hidden",
    ).then(
        maps, [*branch_inputs, c["look"]], maps_outputs, api_name="branches", concurrency_id=LIGHT,
    ).then(picked, [c["model"], c["block"]], picked_outputs, api_visibility="private")
    redrawn, redrawn_outputs = by_name(on_look, c, ("panel", "branch_view"))
    c["look"].change(redrawn, [c["image"], c["model"], c["block"], c["branch"], c["diagram"], c["checkpoint"],
                               c["look"]], redrawn_outputs, api_visibility="private", concurrency_id=LIGHT,
                     show_progress="hidden")


def _chains(c: dict) -> None:
    """The chains that span the sections: a new image (or Predict) empties every result, predicts,
    then draws the block's maps; a new model also shows its card and then its architecture. (A
    new image or model that a class or a link set skips its work: ``class_delivers``.)"""
    predicted, prediction_outputs = by_name(predict, c, PREDICTION)
    maps, maps_outputs = by_name(show_branches, c, BRANCH_MAPS)
    # After every prediction, the branch maps of the block on screen (no API endpoint of its own).
    then_branches = dict(fn=maps, inputs=[c["image"], c["model"], c["block"], c["checkpoint"], c["look"]],
                         outputs=maps_outputs, api_visibility="private", concurrency_id=LIGHT)
    followed = [c["followed"], c["applying"]]
    own, own_outputs = by_name(predict_unless_delivered, c, PREDICTION)
    own_maps, _ = by_name(branches_unless_delivered, c, BRANCH_MAPS)
    then_own_branches = dict(then_branches, fn=own_maps, inputs=[*then_branches["inputs"], *followed])
    # Results are emptied first, in the same chain: an emptying that raced the prediction could
    # land after it and hide a finished result.
    pending_inputs = [c["model"], c["block"], c["image"], *followed]
    image_pending, outputs_i = by_name(
        lambda key, block, image, followed, applying: results_pending(key, block, image, followed, applying,
                                                                      new_model=False), c, (*SHOWN, "applying"))
    pending = dict(fn=image_pending, inputs=pending_inputs, outputs=outputs_i, api_visibility="private", queue=False,
                   show_progress="hidden")
    c["run"].click(**pending).then(
        fn=predicted, inputs=[c["image"], c["model"], c["checkpoint"]], outputs=prediction_outputs,
        api_name="predict", concurrency_id=LIGHT,
    ).then(**then_branches)
    # "once", as a click's: a change while the chain runs is dropped. (A change event's own default,
    # "always_last", runs the chain again after it, and each run re-reads the image, which Gradio
    # can report as another change: a new image after a new block then looped every 2-3 s.)
    c["image"].change(**pending, trigger_mode="once").then(
        fn=own, inputs=[c["image"], c["model"], c["checkpoint"], *followed], outputs=own_outputs,
        api_visibility="private", concurrency_id=LIGHT,
    ).then(**then_own_branches)
    model_pending, outputs_m = by_name(
        lambda key, block, image, followed, applying: results_pending(key, block, image, followed, applying,
                                                                      new_model=True), c,
        (*SHOWN, "block", "branch", "applying"))
    card, card_outputs = by_name(on_model_change, c, ("card", "banner"))
    c["model"].change(
        model_pending, pending_inputs, outputs_m, api_visibility="private", queue=False, show_progress="hidden"
    ).then(
        card, [c["model"], c["checkpoint"]], card_outputs, api_visibility="private"
    ).then(
        own, [c["image"], c["model"], c["checkpoint"], *followed], own_outputs, api_visibility="private",
        concurrency_id=LIGHT,
    ).then(**then_own_branches).then(
        user_errors(architecture_rows), [c["model"]], [c["arch"]], api_visibility="private"
    )
