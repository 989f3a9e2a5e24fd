"""Explore's "what each branch looks for": for the block on screen, the channels of each
branch that this image excites most, each beside an input optimised to excite it
(``cnndemo.featurevis``) and, on the digit networks, the held-out digits that excite it most."""

from __future__ import annotations

import html

import gradio as gr

from .. import render
from ..branches import explore
from ..cancel import check_budget
from ..costs import stage_costs
from ..featurevis import VisSettings, exemplars, visualize_targets
from ..lanes import HEAVY
from ..shared import RESULTS
from .common import by_name, get_model, gr_progress, heavy_lane, picture, user_errors

OUTPUTS = ("lookfor_grid", "lookfor_note")

INTRO = (
    "The branch maps show where a branch fired on *your* image. Here, for the block on screen: the channels of "
    "each branch that this image excites most, and for each an image **optimised to excite that channel** as much "
    "as it can (started from noise; a random shift, scale and rotation at every step, so that it shows a pattern, "
    "not a trick of single pixels). On the digit networks, the **held-out digits** that excite the channel most "
    "stand beside it, cropped to what the channel's strongest unit can see (its centre shaded). People guess a "
    "channel's job better from real examples than from optimised images alone: look at both.")


def _settings(digit: bool) -> tuple[int, VisSettings]:
    """Channels per branch and the optimisation: a digit's 28 px is cheap, a photo's is not."""
    return (3, VisSettings(steps=256)) if digit else (1, VisSettings(steps=128))


def _tflop(lm, block: str, n: int, steps: int) -> float:
    """An upper bound of the work: a forward and a backward pass (about 3 forwards) per image
    and step, through the network's stages up to and including the block."""
    upto = 0
    for stage in stage_costs(lm.spec):
        upto += stage.flops
        if stage.name == block:
            break
    return 3 * upto * n * steps / 1e12


def look_for(image, model: str, block: str, checkpoint, look, progress=gr.Progress()) -> dict:
    if not image:
        raise gr.Error("Give the model an image first.")
    lm = get_model(model, checkpoint, progress)
    spec, digit = lm.spec, lm.spec.inputs.kind == "digit"
    bm = explore(image, lm).blocks[block]  # this image's most active channels (cached)
    per, settings = _settings(digit)
    layered = {br.name for br in spec.block(block).branches if br.tap_paths}
    targets = [(block, b.info.name, ch) for b in bm.branches if b.info.name in layered for ch in b.top_channels[:per]]
    if not targets:
        raise gr.Error(f"{block} has no branch with layers of its own to visualise.")
    check_budget(_tflop(lm, block, len(targets), settings.steps), f"Visualising {len(targets)} channels",
                 hint="Pick an earlier block, or use the command line (python -m cnndemo visualize).")

    def compute(p):
        vis = visualize_targets(lm, targets, settings, p)
        ex = {(v.branch, c): exemplars(lm, block, v.branch, c, k=3) for v in vis for c in v.channels} if digit else {}
        return vis, ex

    vis, ex = RESULTS.get(("look for", lm.ident, tuple(targets), settings), compute, progress=gr_progress(progress),
                          lane=HEAVY)
    shape = render.Look.parse(look)
    rows, lines = [], []
    for v in vis:
        for c, img, reached in zip(v.channels, v.images, v.activations):
            cells = [(img, f"optimised: {reached:.3g}")]
            verdict = ""
            if digit:
                e = ex[(v.branch, c)]
                cells += [(crop, f"digit #{i}: {a:.3g}") for crop, i, a in zip(e.images, e.indices, e.activations)]
                verdict = " · beats every held-out digit" if reached > e.best else " · **weak**: a real digit excites it more"
            rows.append((f"{v.branch} #{c}", cells))
            lines.append(f"- **{html.escape(v.branch)}**, channel {c}: mean activation {reached:.3g}{verdict}")
    key = ("look for", lm.ident, tuple(targets), settings, str(shape))
    grid = picture(key, lambda: render.tile_grid(rows, tile=112 if digit else 160, look=shape))
    seconds = vis[0].seconds
    note = [f"{spec.name}, {block}: {len(targets)} channels, {settings.steps} steps at {vis[0].settings.size} px, "
            f"optimised together in {seconds:.1f} s."]
    if lm.weights.kind == "random":
        note.insert(0, "**Untrained weights**: these images show what a randomly initialised network's channels "
                       "answer, not what a trained network learned.")
    if not digit:
        note.append("No real examples are shown for photo networks: the held-out digits serve the digit networks "
                    "only.")
    return {"lookfor_grid": grid, "lookfor_note": "  \n".join(note) + "\n\n" + "\n".join(lines)}


def build(c: dict) -> None:
    with gr.Accordion("What each branch looks for: optimised images and the digits that excite it", open=False,
                      elem_id="explore-lookfor"):
        gr.Markdown(INTRO, elem_classes=["cz-note"])
        c["lookfor_go"] = gr.Button("Show what this block's branches look for", variant="primary",
                                    elem_id="explore-lookfor-go")
        c["lookfor_grid"] = gr.Image(label="What each branch looks for", interactive=False,
                                     elem_id="explore-lookfor-grid", buttons=["download", "fullscreen"],
                                     alt_text="One row per channel: an image optimised to excite it, then the "
                                              "held-out digits that excite it most")
        c["lookfor_note"] = gr.Markdown(elem_id="explore-lookfor-note")
    handler, outputs = by_name(user_errors(look_for), c, OUTPUTS)
    c["lookfor_go"].click(handler, [c["image"], c["model"], c["block"], c["checkpoint"], c["look"]], outputs,
                          api_visibility="private", **heavy_lane())
