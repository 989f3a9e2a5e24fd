"""Explore's "one unit, step by step": pick a point on a branch's channel map and see the
arithmetic that made its value, the box of input pixels it can see, and where its gradient
actually lands (``cnndemo.units``). And "paint to hide": brush over part of the image and see
the top-5 with that part hidden (``cnndemo.hide``)."""

from __future__ import annotations

import html

import gradio as gr
import numpy as np

from .. import render
from ..branches import branch_info, explore
from ..errors import BadRequest
from ..hide import hide, parse_rects, rect_mask
from ..pipeline import load_for, prepare
from ..units import UnitReport, unit
from ..zoo import ZOO
from .common import LIGHT, by_name, get_model, picture, user_errors
from .digits import select_brush_js
from .guard import bound_blobs
from .serving import guard_files, image_input

OUTPUTS = ("unit_pick", "unit_field", "unit_steps", "unit_channel")
PICK_SIDE = 320  # the pick map is drawn at least this wide (a whole factor): a click maps back to a unit

INTRO = (
    "Every number on a branch's map is a sum: the input patch under the kernel, times the kernel, "
    "plus a bias, then BatchNorm and a ReLU. Click any map in the branch-maps panel above, or a point on "
    "the channel's map (left), to see that sum for the unit there, recomputed from the layer's own weights "
    "and checked against the value the network produced. On the right: the **box** is every input pixel the unit can see at all (its "
    "theoretical receptive field: dashed where it reaches past the image, whose padding it reads); "
    "the **heat** is how much each pixel actually moves it (|d unit / d input|, the effective receptive "
    "field), and the circle holds 90% of that.")

RESNET_NOTE = (
    "Why 427 px here and 483 px in Distill's table for ResNet-50's last stage: torchvision puts each "
    "stage's stride-2 in the 3x3 convolution of its first unit (ResNet v1.5); TF-Slim, which the table "
    "traced, puts it in the last unit. A stride taken earlier makes every later 3x3 step smaller "
    "in input pixels, so the same layers add up to a smaller field.")


# Once the steps are on the page (the event's outputs are drawn a moment after it returns).
SHOW_SECTION_JS = """() => {
  let tries = 0;
  const go = () => {
    const section = document.querySelector('#explore-unit');
    if (section && (document.querySelector('#explore-unit-steps .cz-unit-head') || tries > 60)) {
      section.scrollIntoView({behavior: 'smooth', block: 'start'});
    } else if (tries++ <= 60) {
      setTimeout(go, 50);
    }
  };
  go();
}"""


def _grid(values: np.ndarray, fmt: str = "{:+.3f}") -> str:
    rows = "".join("<tr>" + "".join(f"<td>{fmt.format(v)}</td>" for v in row) + "</tr>" for row in values)
    return f"<table class='cz-grid'>{rows}</table>"


def steps_html(r: UnitReport) -> str:
    """The unit's arithmetic for the page: the 3x3 (or smaller) case in full for the input
    channel that contributes most, larger kernels and 1x1 channel mixing summarised."""
    lines = r.lines()
    parts = [f"<p class='cz-unit-head'><b>{html.escape(lines[0])}</b></p>"]
    if r.conv is not None:
        c = r.conv
        top, value = c.top_inputs(1)[0]
        i = top - c.first_channel
        if c.kernel == (1, 1):
            rows = "".join(f"<tr><td>channel {ch}</td><td>{c.patch[ch - c.first_channel, 0, 0]:+.4f}</td>"
                           f"<td>{c.kernel_slice[ch - c.first_channel, 0, 0]:+.4f}</td><td>{v:+.4f}</td></tr>"
                           for ch, v in c.top_inputs())
            parts.append("<p>A 1x1 convolution mixes the channels at one position: each input channel's value "
                         f"times its weight, summed over all {c.in_channels}. The largest terms:</p>"
                         "<table class='cz-grid cz-terms'><tr><th>input</th><th>value</th><th>weight</th>"
                         f"<th>product</th></tr>{rows}</table>")
        elif c.kernel[0] * c.kernel[1] <= 9:
            parts.append(
                f"<p>Input channel {top}, the largest of {c.in_channels} contributions: its "
                f"{c.kernel[0]}x{c.kernel[1]} patch times the kernel, element by element, sums to {value:+.4f}.</p>"
                "<div class='cz-arith'>"
                f"<figure>{_grid(c.patch[i])}<figcaption>input patch</figcaption></figure><span>x</span>"
                f"<figure>{_grid(c.kernel_slice[i])}<figcaption>kernel</figcaption></figure><span>=</span>"
                f"<figure>{_grid(c.patch[i] * c.kernel_slice[i])}<figcaption>products</figcaption></figure>"
                f"<span>&Sigma; = {value:+.4f}</span></div>")
        else:
            parts.append(f"<p>A {c.kernel[0]}x{c.kernel[1]} kernel: {c.kernel[0] * c.kernel[1]} products per input "
                         f"channel; input channel {top} contributes most ({value:+.4f}).</p>")
    parts.append("<ol class='cz-unit-steps'>" + "".join(f"<li>{html.escape(ln.strip())}</li>" for ln in lines[1:])
                 + "</ol>")
    if r.model == "resnet50":
        parts.append(f"<p class='cz-note'>{html.escape(RESNET_NOTE)}</p>")
    return "<div class='cz-unit'>" + "".join(parts) + "</div>"


def _branch_of(model: str, block: str, branch: str | None) -> str | None:
    spec = ZOO[model]
    names = [b.name for b in spec.block(block).branches]
    return branch if branch in names else names[0]


def show_unit(image, model: str, block: str, branch: str | None, checkpoint, look, channel=None,
              at: tuple[int, int] | None = None) -> dict:
    """One unit of the branch on screen (default: its most active channel's strongest point)."""
    if not image:
        raise gr.Error("Give the model an image first.")
    lm = get_model(model, checkpoint)
    channel = None if channel is None or channel == "" else int(channel)
    inp = prepare(image, lm)  # opened once: ``unit`` reuses it, and its digest keys the pictures
    r = unit(inp, lm, block, _branch_of(model, block, branch), channel, *(at or (None, None)))
    seen = inp.seen()
    shape = render.Look.parse(look)
    centre = ((r.box[0] + r.box[2]) / 2, (r.box[1] + r.box[3]) / 2)
    key = (lm.ident, inp.opened.digest, r.block, r.branch, r.channel, r.y, r.x, str(shape))
    pick = picture(("unit-pick", *key), lambda: render.unit_pick(seen, r.channel_map, centre, look=shape,
                                                                 at_least=PICK_SIDE))
    field = picture(("unit-field", *key), lambda: render.unit_field(seen, r.erf, r.box, r.erf_radius90, look=shape,
                                                                    at_least=PICK_SIDE))
    return {"unit_pick": pick, "unit_field": field, "unit_steps": steps_html(r), "unit_channel": r.channel}


def pick_unit(image, model: str, block: str, branch: str | None, checkpoint, look, channel, evt: gr.SelectData):
    """A click on the channel's map: the unit under it (the map is the input image scaled up by
    a whole factor, and each unit covers an equal share of it)."""
    if not image or evt is None or not evt.index:
        return {}
    spec = ZOO[model]
    x_px, y_px = evt.index[:2]
    seen_h, seen_w = spec.input_size[1:]
    factor = render.enlarge_factor((seen_w, seen_h), PICK_SIDE)  # as unit_pick drew it
    _, h, w = branch_info(spec, block, _branch_of(model, block, branch)).shape
    y = min(h - 1, max(0, int(y_px / factor * h / seen_h)))
    x = min(w - 1, max(0, int(x_px / factor * w / seen_w)))
    return show_unit(image, model, block, branch, checkpoint, look, channel, (y, x))


def panel_unit(image, model: str, block: str, checkpoint, look, evt: gr.SelectData):
    """A click on the branch-maps panel: the unit under it, in the branch of that row (on a
    channel's map: that channel; on the branch's mean map: its most active channel there). The
    section opens on it, and the branch becomes the one the section and the ablation name."""
    if not image or evt is None or not evt.index:
        return {}
    lm = get_model(model, checkpoint)
    bm = explore(image, lm).blocks[block]  # the exploration the panel was drawn from (cached)
    hit = render.panel_layout(bm, look=render.Look.parse(look)).spot_at(*evt.index[:2])
    if hit is None:  # the text beside the maps
        return {}
    i, channel, fy, fx = hit
    b = bm.branches[i]
    _, h, w = b.info.shape
    at = (min(h - 1, int(fy * h)), min(w - 1, int(fx * w)))
    shown = show_unit(image, model, block, b.info.name, checkpoint, look, channel, at)
    return {**shown, "branch": gr.Dropdown(value=b.info.name), "unit_section": gr.Accordion(open=True)}


def build(c: dict) -> None:
    """The section (closed until opened) and its events; ``c``: Explore's components."""
    with gr.Accordion("One unit, step by step: its arithmetic and where it looks", open=False,
                      elem_id="explore-unit") as c["unit_section"]:
        gr.Markdown(INTRO, elem_classes=["cz-note"])
        with gr.Row(elem_classes=["cz-stack"]):
            c["unit_channel"] = gr.Number(label="Channel of the branch (type one and press Enter)", precision=0,
                                          minimum=0, elem_id="explore-unit-channel")
            c["unit_go"] = gr.Button("Step through this branch's strongest unit", variant="primary",
                                     elem_id="explore-unit-go")
        with gr.Row(elem_classes=["cz-stack"]):
            c["unit_pick"] = gr.Image(label="The channel's map: click a point", interactive=False,
                                      elem_id="explore-unit-pick", buttons=["fullscreen"],
                                      alt_text="The picked channel's activation over the image; a cross marks the unit")
            c["unit_field"] = gr.Image(label="Where the unit looks", interactive=False, elem_id="explore-unit-field",
                                       buttons=["download", "fullscreen"],
                                       alt_text="The unit's receptive field: the box it can see and the "
                                                "gradient's heat")
        c["unit_steps"] = gr.HTML(elem_id="explore-unit-steps")
    inputs = [c["image"], c["model"], c["block"], c["branch"], c["checkpoint"], c["look"]]
    # The button: the branch's most active channel at its strongest point. A channel typed in:
    # its strongest point. A click on the map: the unit there, in the channel shown.
    strongest, outputs = by_name(user_errors(show_unit), c, OUTPUTS)
    c["unit_go"].click(strongest, inputs, outputs, api_visibility="private", concurrency_id=LIGHT)
    c["unit_channel"].submit(strongest, [*inputs, c["unit_channel"]], outputs, api_visibility="private",
                             concurrency_id=LIGHT)
    picked, _ = by_name(user_errors(pick_unit), c, OUTPUTS)
    c["unit_pick"].select(picked, [*inputs, c["unit_channel"]], outputs, api_visibility="private",
                          concurrency_id=LIGHT)
    on_panel, panel_outputs = by_name(user_errors(panel_unit), c, (*OUTPUTS, "branch", "unit_section"))
    # The section opens below the panel, out of sight: the page scrolls to it (Gradio's own
    # scroll_to_output finds nothing to scroll to inside a section that was closed).
    c["panel"].select(on_panel, [c["image"], c["model"], c["block"], c["checkpoint"], c["look"]], panel_outputs,
                      api_visibility="private", concurrency_id=LIGHT).success(
        None, js=SHOW_SECTION_JS, api_visibility="private")


# ---------------------------------------------------------------------------- paint to hide

HIDE_OUTPUTS = ("hide_before", "hide_after", "hide_note")


def hide_canvas(image):
    """The Explore image, to paint on (nothing painted yet)."""
    if not image:
        raise gr.Error("Give the model an image first.")
    return {"hide_editor": {"background": image, "layers": [], "composite": image},
            **dict.fromkeys(HIDE_OUTPUTS)}


def painted_mask(editor) -> np.ndarray | None:
    """Where any layer of an ImageEditor value was painted (its alpha), at the layer's size."""
    layers = [layer for layer in (editor or {}).get("layers") or [] if layer is not None]
    if not layers:
        return None
    masks = [np.asarray(layer.convert("RGBA"))[..., 3] > 0 for layer in layers]
    return np.logical_or.reduce([m for m in masks if m.shape == masks[0].shape])


def try_hidden(image, model: str, checkpoint, editor) -> dict:
    """One forward pass with the painted part hidden: the top-5 before and after, and how the
    intact image's top class moved."""
    if not image:
        raise gr.Error("Give the model an image first.")
    mask = painted_mask(editor)
    if mask is None:
        raise gr.Error("Press 'Paint on this image', brush over part of it, then Try.")
    r = hide(image, get_model(model, checkpoint), mask)
    fill = ", ".join(map(str, r.fill))
    note = (f"**{r.target.label}**: {r.target.prob:.1%} → **{r.p_after:.1%}** ({100 * r.delta:+.1f} points) with "
            f"{r.hidden:.0%} of the image hidden (filled with its {r.fill_kind}, ({fill})). The network ran once: "
            f"{r.after.ms:.0f} ms; the whole try {r.ms:.0f} ms.")
    return {"hide_before": r.before.as_label(), "hide_after": r.after.as_label(), "hide_note": note}


def build_hide(c: dict) -> None:
    with gr.Accordion("Paint to hide: cover part of the image and see what the model says", open=False,
                      elem_id="explore-hide"):
        gr.Markdown("Press *Paint on this image*, brush over what you think the model looks at, then *Try*. "
                    "The painted part is filled with the image's mean colour (a digit's: its paper's) and the network "
                    "runs once: "
                    "occlusion that you steer by hand.", elem_classes=["cz-note"])
        with gr.Row(elem_classes=["cz-stack"]):
            c["hide_editor"] = guard_files(bound_blobs(gr.ImageEditor(
                type="pil", image_mode="RGBA", sources=(), transforms=(), layers=False, label="Paint over what to hide",
                brush=gr.Brush(default_size=32, colors=["#ff00ff"], color_mode="fixed"), elem_id="explore-hide-editor",
                height=420)), images=True)
            with gr.Column():
                with gr.Row():
                    c["hide_load"] = gr.Button("Paint on this image", elem_id="explore-hide-load")
                    c["hide_try"] = gr.Button("Try", variant="primary", elem_id="explore-hide-try")
                c["hide_note"] = gr.Markdown(elem_id="explore-hide-note")
                with gr.Row(elem_classes=["cz-stack"]):
                    c["hide_before"] = gr.Label(num_top_classes=5, label="Top-5 as it is",
                                                elem_id="explore-hide-before")
                    c["hide_after"] = gr.Label(num_top_classes=5, label="Top-5 with the painted part hidden",
                                               elem_id="explore-hide-after")
    canvas, canvas_outputs = by_name(user_errors(hide_canvas), c, ("hide_editor", *HIDE_OUTPUTS))
    c["hide_load"].click(canvas, [c["image"]], canvas_outputs, api_visibility="private", queue=False).then(
        None, js=select_brush_js("explore-hide-editor", press=True), api_visibility="private")
    tried, tried_outputs = by_name(user_errors(try_hidden), c, HIDE_OUTPUTS)
    c["hide_try"].click(tried, [c["image"], c["model"], c["checkpoint"], c["hide_editor"]], tried_outputs,
                        api_visibility="private", concurrency_id=LIGHT)


# ---------------------------------------------------------------------------- the API

def api_unit(image, model: str, block: str, branch: str, channel, y, x, checkpoint) -> dict:
    """One unit step by step, as ``python -m cnndemo unit --json`` prints it: the value the
    network produced, the value recomputed from the layer's weights and its terms (the top input
    channels' contributions, bias, BatchNorm's parameters, the ReLU), the theoretical receptive
    field in input pixels, and the effective field's in-box share and 90% radius.

    Args:
        image: the image.
        model: a model key (as /predict takes it).
        block: one of the model's blocks, or a plain stage; empty: the model's default block.
        branch: the block's branch; empty for a plain stage (a block of one path).
        channel: the output channel in the branch; empty: the branch's most active channel.
        y: the row on the branch's map; empty (with x): the channel's strongest point.
        x: the column on the branch's map.
    """
    if not image:
        raise BadRequest("Send an image.")
    lm = get_model(model, checkpoint)
    # channel, y, x: whole numbers or None already (their Number inputs round, precision 0)
    r = unit(image, lm, block or lm.spec.default_block or "", branch or None, channel, y, x)
    return {"weights": lm.weights.kind, **r.to_json()}


def api_hide(image, model: str, rects: str, checkpoint) -> dict:
    """Paint to hide, from a script: the top-5 with rectangles of the image hidden (filled with
    its mean colour, a digit's with its paper's), the intact top class's probability before and
    after, and the time of the try (as ``python -m cnndemo hide --json`` prints it).

    Args:
        image: the image.
        model: a model key (as /predict takes it).
        rects: the rectangles to hide, "TOP LEFT BOTTOM RIGHT" in the image's pixels (inclusive), several
            separated by ";".
    """
    if not image:
        raise BadRequest("Send an image.")
    lm = get_model(model, checkpoint)
    opened = load_for(lm.spec, image)  # opened once: ``hide`` takes it as it is
    mask = rect_mask(opened.image.size, parse_rects(rects))
    return {"weights": lm.weights.kind, **hide(opened, lm, mask).to_json()}


def build_api(c: dict) -> None:
    """``/unit`` and ``/hide``: endpoints for scripts, on inputs of their own that no page shows
    (the page's own events pick a unit by a click and read a painted layer)."""
    with gr.Group(visible=False):
        image = image_input(label="image")
        model = gr.Textbox(label="model")
        block = gr.Textbox(label="block")
        branch = gr.Textbox(label="branch")
        channel, y, x = (gr.Number(label=name, precision=0) for name in ("channel", "y", "x"))
        rects = gr.Textbox(label="rects")
        unit_json = gr.JSON(label="unit")
        hide_json = gr.JSON(label="hide")
    gr.on([], user_errors(api_unit), [image, model, block, branch, channel, y, x, c["checkpoint"]], [unit_json],
          api_name="unit", concurrency_id=LIGHT)
    gr.on([], user_errors(api_hide), [image, model, rects, c["checkpoint"]], [hide_json],
          api_name="hide", concurrency_id=LIGHT)
