"""Explore's "what each branch looks for": for the block on screen, the channels of each
branch that this image excites most, each beside an input optimised to excite it
(``cnndemo.featurevis``) and the real inputs that excite it most: on the digit networks the
held-out digits, on a photo network the crops of the folder the app was started with
(``--exemplars DIR``, ranked in the background: the view fills them in when they are ready)."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from .. import render
from ..branches import explore
from ..cancel import check_budget
from ..costs import stage_costs
from .. import settings as app_settings
from ..featurevis import VisSettings, exemplars, ranked_exemplars, visualize_targets
from ..errors import UserError
from ..lanes import HEAVY
from ..ranking import FolderIndex, Job, app_index
from ..shared import RESULTS
from .common import by_name, get_model, gr_progress, heavy_lane, picture, user_errors

OUTPUTS = ("lookfor_grid", "lookfor_note", "lookfor_timer")

INTRO = (
    "The branch maps show where a branch fired on *your* image. Here, for the block on screen: the channels of "
    "each branch that this image excites most, and for each an image **optimised to excite that channel** as much "
    "as it can (started from noise; a random shift, scale and rotation at every step, so that it shows a pattern, "
    "not a trick of single pixels). On the digit networks, the **held-out digits** that excite the channel most "
    "stand beside it, cropped to what the channel's strongest unit can see (its centre shaded); on a photo network, "
    "the best crops of the photos the app was started with (`--exemplars DIR`). People guess a "
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


def _request(image, model: str, block: str, checkpoint, progress=None):
    """The model, the channels to show (this image's most active ones, per branch) and the
    settings, for the block on screen."""
    if not image:
        raise gr.Error("Give the model an image first.")
    lm = get_model(model, checkpoint, progress)
    digit = lm.spec.inputs.kind == "digit"
    bm = explore(image, lm).blocks[block]  # this image's most active channels (cached)
    per, settings = _settings(digit)
    layered = {br.name for br in lm.spec.block(block).branches if br.tap_paths}
    targets = [(block, b.info.name, ch) for b in bm.branches if b.info.name in layered for ch in b.top_channels[:per]]
    if not targets:
        raise gr.Error(f"{block} has no branch with layers of its own to visualise.")
    return lm, tuple(targets), settings


def look_for(image, model: str, block: str, checkpoint, look, progress=gr.Progress()) -> dict:
    lm, targets, settings = _request(image, model, block, checkpoint, progress)
    check_budget(_tflop(lm, block, len(targets), settings.steps), f"Visualising {len(targets)} channels",
                 hint="Pick an earlier block, or use the command line (python -m cnndemo visualize).")
    digit = lm.spec.inputs.kind == "digit"
    if not digit:
        _folder_job(lm)  # the folder's ranking for this network, if it is not ready, starts now, beside this

    def compute(p):
        vis = visualize_targets(lm, list(targets), settings, p)
        ex = {(v.branch, c): exemplars(lm, block, v.branch, c, k=3) for v in vis for c in v.channels} if digit else {}
        return vis, ex

    found = RESULTS.get(("look for", lm.ident, targets, settings), compute, progress=gr_progress(progress), lane=HEAVY)
    return _show(lm, block, targets, settings, found, look)


def refresh(image, model: str, block: str, checkpoint, look) -> dict:
    """The timer's tick while the folder of exemplars is ranked for this network: the same view,
    its exemplars filled in once they are ready (nothing is optimised here)."""
    try:
        lm, targets, settings = _request(image, model, block, checkpoint)
    except gr.Error:
        return {"lookfor_timer": gr.Timer(active=False)}
    found = RESULTS.peek(("look for", lm.ident, targets, settings))
    if found is None:  # another image, block or model since: its own button press shows it
        return {"lookfor_timer": gr.Timer(active=False)}
    shown = _show(lm, block, targets, settings, found, look)
    if shown["lookfor_timer"].active:  # still ranking: the timer runs on as it is
        shown["lookfor_timer"] = gr.skip()
    return shown


def _show(lm, block: str, targets, settings, found, look) -> dict:
    """The grid and the note: each channel's optimised image, then its exemplars (the held-out
    digits, or the app's folder of photos once it is ranked for this network)."""
    vis, ex = found
    spec, digit = lm.spec, lm.spec.inputs.kind == "digit"
    note, ranking, waiting = [], None, False
    if not digit:
        folder, job = _folder_job(lm)
        if folder is None:
            note.append("No real examples are shown: no folder of photos was named. Start the app with "
                        "`--exemplars DIR` (or set `CNNDEMO_EXEMPLARS`) and each channel's most exciting crops of "
                        "those photos stand beside its optimised image.")
        else:
            ranking, waiting = job.ranking, job.running
            if job.error:
                note.append(f"The photos of {folder.name} could not be ranked: {job.error}")
            elif ranking is None:
                note.append(f"Ranking the photos of {folder.name} for {spec.name} in the background: {job.done} "
                            f"of {job.total}. Their best crops appear here when it is done.")
            elif ranking.skipped:
                note.append(f"{len(ranking.skipped)} file(s) of {folder.name} could not be read as images and "
                            "were skipped.")
        if ranking is not None:  # each crop opens its photo again: done once for every student on this view
            ex = RESULTS.get(("look for photos", lm.ident, targets, job.fingerprint), lambda _p: {
                (v.branch, c): ranked_exemplars(lm, ranking, block, v.branch, c, 3) for v in vis for c in v.channels})
    shape = render.Look.parse(look)
    rows, lines = [], []
    for v in vis:
        for c, img, reached in zip(v.channels, v.images, v.activations):
            cells = [(img, f"optimised: {reached:.3g}")]
            verdict = ""
            if ex:
                e = ex[(v.branch, c)]
                cells += [(crop, f"{_caption(src)}: {a:.3g}") for crop, src, a in zip(e.images, e.sources, e.activations)]
                real = "held-out digit" if digit else "photo"
                verdict = (f" · beats every {real} (best {e.best:.3g})" if reached > e.best else
                           f" · **weak**: a real {real} excites it more ({e.best:.3g})")
            rows.append((f"{v.branch} #{c}", cells))
            lines.append(f"- **{html.escape(v.branch)}**, channel {c}: mean activation {reached:.3g}{verdict}")
    key = ("look for", lm.ident, targets, settings, str(shape), ranking is not None and job.fingerprint)
    grid = picture(key, lambda: render.tile_grid(rows, tile=112 if digit else 160, look=shape))
    note.insert(0, f"{spec.name}, {block}: {len(targets)} channels, {settings.steps} steps at "
                   f"{vis[0].settings.size} px, optimised together in {vis[0].seconds:.1f} s.")
    if lm.weights.kind == "random":
        note.insert(0, "**Untrained weights**: these images show what a randomly initialised network's channels "
                       "answer, not what a trained network learned.")
    return {"lookfor_grid": grid, "lookfor_note": "  \n".join(note) + "\n\n" + "\n".join(lines),
            "lookfor_timer": gr.Timer(active=waiting)}


def _folder_job(lm) -> tuple[FolderIndex | None, Job | None]:
    """The app's folder of photos (None when none was named) and this network's ranking of it."""
    folder = app_index(app_settings.get().exemplars)
    if folder is None:
        return None, None
    try:
        return folder, folder.job(lm)
    except UserError as e:  # the folder went away, or was emptied, since the app started
        return folder, Job(lm.spec.name, error=str(e), seconds=0.0)


def _caption(source: str) -> str:
    """A held-out digit's number, or a photo's file name."""
    return source.removeprefix("held-out ") if source.startswith("held-out ") else Path(source).name


def build(c: dict) -> None:
    with gr.Accordion("What each branch looks for: optimised images and the real images that excite it", open=False,
                      elem_id="explore-lookfor"):
        gr.Markdown(INTRO, elem_classes=["cz-note"])
        c["lookfor_go"] = gr.Button("Show what this block's branches look for", variant="primary",
                                    elem_id="explore-lookfor-go")
        c["lookfor_grid"] = gr.Image(label="What each branch looks for", show_label=False, interactive=False,
                                     elem_id="explore-lookfor-grid", buttons=["download", "fullscreen"],
                                     alt_text="One row per channel: an image optimised to excite it, then the "
                                              "real images that excite it most (held-out digits, or the app's "
                                              "folder of photos)")
        c["lookfor_note"] = gr.Markdown(elem_id="explore-lookfor-note")
        c["lookfor_timer"] = gr.Timer(2.0, active=False)
    inputs = [c["image"], c["model"], c["block"], c["checkpoint"], c["look"]]
    handler, outputs = by_name(user_errors(look_for), c, OUTPUTS)
    c["lookfor_go"].click(handler, inputs, outputs, api_visibility="private", **heavy_lane())
    handler, outputs = by_name(user_errors(refresh), c, OUTPUTS)
    c["lookfor_timer"].tick(handler, inputs, outputs, api_visibility="private", show_progress="hidden")
