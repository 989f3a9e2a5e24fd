"""Attributions tab (and the compact panel in Explore): which pixels drove the prediction."""

from __future__ import annotations

import functools
import html
import inspect
import io
import re

import gradio as gr
import numpy as np
import pandas as pd

from .. import render
from ..branches import explore
from ..attribution import (METHODS, Settings, attribute_shared, check_budget, get_method, knobs,
                           layer_choices, score_sentences, request_key, request_tflop)
from ..cancel import Cancelled, work_budget_tflop, check_budget as check_budget_total
from ..errors import UserError
from ..pipeline import prepare
from ..scores import DELETION_MAX_ORDERS, DELETION_ORDERS, SANITY_MAX_SEEDS, SANITY_MIN_SEEDS, SANITY_THRESHOLD
from ..lanes import HEAVY
from ..shared import RESULTS
from ..zoo import DEFAULT_MODEL, ZOO
from .serving import encode_picture, shared_download
from .common import (LIGHT, by_name, heavy_lane, session_state, examples, get_model, gr_progress, image_input, log, model_choices, user_errors,
                     weights_banner, weights_kind)

SCORE_HELP = (
    "**Sanity** (Adebayo et al. 2018): rank correlation between this map and the same method's map "
    f"after the model's top layers are re-initialised, repeated with {SANITY_MIN_SEEDS} to {SANITY_MAX_SEEDS} seeds "
    f"(one seed is a coin flip on a coarse map). It passes when the mean's 95% interval lies within ±{SANITY_THRESHOLD}, "
    "fails when it lies beyond, and is inconclusive when it straddles the threshold.  \n"
    "**Deletion**: the class probability as the most-attributed pixels are replaced first, against "
    f"{DELETION_ORDERS} to {DELETION_MAX_ORDERS} random orders (their mean, and the 5th and 95th percentiles that bound "
    "90% of them). A positive score means the map's pixels took the probability down faster than random ones on "
    "average; the verdict is given only when at most 5% of random orders did as well (a permutation test, p ≤ 0.05)."
)

ALT_OVERLAY = ("How strongly each pixel drove the explained class, as a heat map over the image (bright: strong); "
               "the method and target are in its title, the scores in the text beside it")
ALT_SIGNED = "The same attribution with its sign: pixels for the class in orange, against it in purple"


def method_choices() -> list[tuple[str, str]]:
    return [(m.name, m.key) for m in METHODS.values()]


def target_choices(image, key: str, checkpoint: dict | None = None) -> list[str]:
    """The image's top-5 classes on this model, as the dropdown offers them. Any other class is
    typed (a name, part of one, or an index): listing all 1,000 ImageNet classes would put
    100 KB into the page every visitor downloads."""
    if not image:
        return []
    pred = explore(image, get_model(key, checkpoint)).prediction
    return [f"{t.label} ({t.index})" for t in pred.top]


def scores_markdown(a) -> str:
    lines = [f"**{ZOO[a.model].name}** ({weights_kind(a.weights)}) · "
             f"**{METHODS[a.method].name}** for **{html.escape(a.label)}** (class {a.target}, p = {a.prob:.2%}) "
             f"in {a.ms:.0f} ms" + (f", layer `{a.layer}`" if a.layer else "") + ".",
             *score_sentences(a, bold=lambda s: f"**{s}**")]
    if not a.weights.trained:
        lines.append("⚠ Random weights: the map explains an untrained network.")
    return "  \n".join(lines)


def slide_title(a) -> str:
    """Model, weights, method, layer, target: everything a slide needs to be read on its own."""
    spec, w = ZOO[a.model], a.weights
    weights = weights_kind(w) + (f" ({w.source})" if w.kind == "custom" else "")
    at = f" at {a.layer}" if a.layer else ""
    return f"{spec.name} · {weights} · {METHODS[a.method].name}{at} · target: {a.label} ({a.target}), p = {a.prob:.2%}"


def _file_name(*parts) -> str:
    """Parts joined into one file name a file system allows (a branch layer's "/" included)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(map(str, parts))).strip("-")[:160]


def slide_name(a) -> str:
    """The slide's file name: the same facts as its title."""
    return _file_name(a.model, a.weights.kind, a.method, a.layer or "input", f"{a.target}-{a.label}", "slide.png")


def slide(a, look: str | None = None):
    """The attribution as a 1920 x 1080 slide, with its scores and an unmissable random-weights mark."""
    lines = [*score_sentences(a), f"{a.ms:.0f} ms on this server; CNN Zoo Lab"]
    warning = None if a.weights.trained else "RANDOM WEIGHTS: this map explains an untrained network"
    return render.attribution_slide(a, slide_title(a), lines, warning=warning, look=render.Look.parse(look))


# The map's curve, the random orders' mean, and the band that holds 90% of them (one grey).
DELETION_SERIES = ("most attributed first", "random orders: mean", "random orders: 5th percentile",
                   "random orders: 95th percentile")
DELETION_COLOURS = dict(zip(DELETION_SERIES, ("#0072B2", "#E69F00", "#999999", "#999999")))


def deletion_frame(a) -> pd.DataFrame | None:
    if not a.deletion:
        return None
    d = a.deletion
    rows = [{"removed": f, "probability": p, "order": DELETION_SERIES[0]} for f, p in zip(d.fractions, d.probs)]
    for name, curve in zip(DELETION_SERIES[1:], (d.random_probs, d.random_low, d.random_high)):
        rows += [{"removed": f, "probability": p, "order": name} for f, p in zip(d.fractions, curve)]
    return pd.DataFrame(rows)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def attribute_steps(
    image: str | None,
    model: str,
    method: str = "ig",
    target: str | None = None,
    layer: str | None = None,
    checkpoint: dict | None = None,
    look: str | None = None,
    progress=gr.Progress(),
    **knob_values,
):
    """An attribution map (which pixels drove the prediction) with its sanity and deletion scores.

    Args:
        image: the image (an upload).
        model: a zoo key.
        method: {methods}.
        target: a class index or name; empty for the top prediction.
        layer: the Grad-CAM layer (a block, or block/branch); empty for the model's default.
        {knobs}
    """
    if not image:
        raise gr.Error("Give the model an image first.")
    lm = get_model(model, checkpoint, progress)
    layer = layer if (layer and get_method(method).uses_layer) else None
    settings = Settings(**knob_values)  # clamped to each knob's range by check_budget and attribute
    # The map is shown before its scores; refuse now if map and scores together are over budget.
    check_budget(lm.spec, method, settings, scores=True)
    inp = prepare(image, lm)  # decoded once, for the map and for its scores
    key = request_key(inp, lm, method, target=target, layer=layer, settings=settings)
    banner = weights_banner(lm.weights, model)
    # Identical requests (a class on the teacher's example) share one computation and its pictures.
    a = RESULTS.peek((*key, "scored"))
    if a is None:
        a = attribute_shared(inp, lm, method, target=target or None, layer=layer, settings=settings,
                             progress=gr_progress(progress))
        overlay, signed = _views(a, key, look)
        yield {"overlay": overlay, "signed": signed, "json": a.to_json(), "files": None, "banner": banner,
               "scores": scores_markdown(a) + "  \n*Computing the sanity and deletion scores...*", "deletion": None}
        a = attribute_shared(inp, lm, method, target=target or None, layer=layer, settings=settings, scores=True,
                             progress=gr_progress(progress))
    overlay, signed = _views(a, key, look)
    # Written once per result and offered to everyone who asked for it.
    name = functools.partial(_file_name, a.model, a.method, a.layer or "input", a.target)
    drawn = (*key, render.Look.parse(look))  # the two maps as this page draws them
    files = [shared_download(key, slide_name(a), lambda: encode_picture(slide(a), "png")),
             shared_download(drawn, name("overlay.png"), lambda: encode_picture(overlay, "png")),
             shared_download(drawn, name("signed.png"), lambda: encode_picture(signed, "png")),
             shared_download(key, name("attr.npy"), lambda: _npy(a.attr))]
    yield {"overlay": overlay, "signed": signed, "json": a.to_json(), "files": files, "banner": banner,
           "scores": scores_markdown(a), "deletion": deletion_frame(a)}


def _views(a, key: tuple, look: str | None):
    """The overlay and the signed map for this page's look, drawn once per result and look."""
    shape = render.Look.parse(look)
    return RESULTS.get(("views", *key, shape), lambda _p: render.attribution_views(a, shape))


def with_knob_parameters(fn, after: str = "layer"):
    """``fn`` (taking the knob values as ``**knob_values``) as the handler Gradio calls: one
    parameter per knob (``attribution.knobs()``, in method order) right after ``after``, with the
    knob's default, documented from its declaration. The API's parameters, the sliders and the
    input checks (each slider's range) all come from the methods' ``knobs``."""
    ks = list(knobs().values())
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    at = [p.name for p in params].index(after) + 1
    knob_params = [inspect.Parameter(k.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=k.default,
                                     annotation=float) for k in ks]
    signature = sig.replace(parameters=params[:at] + knob_params + params[at:])

    def split(args, kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        return values, {k.name: values.pop(k.name) for k in ks}

    if inspect.isgeneratorfunction(fn):
        def handler(*args, **kwargs):
            values, knob_values = split(args, kwargs)
            yield from fn(**values, **knob_values)
    else:
        def handler(*args, **kwargs):
            values, knob_values = split(args, kwargs)
            return fn(**values, **knob_values)
    functools.update_wrapper(handler, fn)
    del handler.__wrapped__  # Gradio reads the signature below, not fn's
    handler.__signature__ = signature
    handler.__doc__ = (fn.__doc__ or "").format(
        methods=", ".join(METHODS), knobs="\n        ".join(f"{k.name}: {k.describe()}." for k in ks))
    return handler


@user_errors
def run_all_methods(image: str | None, model: str, target: str | None = None, layer: str | None = None,
                    checkpoint: dict | None = None, look: str | None = None, progress=gr.Progress()):
    """Every attribution method on one image and model, in one grid (fast settings, no scores).

    Args:
        image: the image (an upload).
        model: a zoo key.
        target: a class index or name; empty for the top prediction.
        layer: the Grad-CAM layer; empty for the model's default.
    """
    if not image:
        raise gr.Error("Give the model an image first.")
    lm = get_model(model, checkpoint, progress)
    inp = prepare(image, lm)
    shape = render.Look.parse(look)
    # One grid per model, weights, pixels, target, layer, budget and look, drawn once for a class;
    # each cell is also the shared result of that method's default request.
    key = ("grid", lm.ident, inp.opened.digest, str(target or "").strip() or None, layer or None,
           work_budget_tflop(), shape)
    return RESULTS.get(key, lambda p: _all_methods(inp, target, layer, shape, p), progress=gr_progress(progress),
                       lane=HEAVY)


def _all_methods(inp, target, layer, shape, progress):
    """The grid's cells, in method order, while the request's budget lasts: planned up front,
    the rest are shown as skipped, with their cost."""
    left = work_budget_tflop()
    costs = {key: request_tflop(inp.spec, key, None, scores=False) for key in METHODS}
    items, titles = [], []
    for i, (key, meth) in enumerate(METHODS.items()):
        progress(i / len(METHODS), f"{meth.name} ({i + 1} of {len(METHODS)})")
        if costs[key] > left:
            items.append(None)
            titles.append(f"{meth.name}: skipped\n~{costs[key]:.1f} TFLOP, over what is left of this\n"
                          f"request's {work_budget_tflop():g} TFLOP budget")
            continue
        left -= costs[key]
        try:
            a = attribute_shared(inp, inp.model, key, target=target or None, layer=layer if meth.uses_layer else None)
            items.append(a)
            titles.append(f"{meth.name}\n{a.label} · {a.ms:.0f} ms")
        except Cancelled:
            raise
        except UserError as e:  # this method refuses this model, layer or target: said in its cell
            items.append(None)
            titles.append(f"{meth.name}: refused\n{e}")
        except Exception as e:  # a bug in one method: its cell says so, the log has the traceback
            log.error("%s failed in the all-methods grid", meth.name, exc_info=e)
            items.append(None)
            titles.append(f"{meth.name}: failed\n{type(e).__name__}: {str(e)[:80]}")
    return render.attribution_grid(items, titles, cols=3, look=shape)


@user_errors
def run_compare(image: str | None, models: list[str] | None, method: str = "gradcam", target: str | None = None,
                look: str | None = None, progress=gr.Progress()):
    """One attribution method across 2 to 6 zoo models on the same image: each explains its own
    top-1, or all explain one shared target class.

    Args:
        image: the image (an upload).
        models: 2 to 6 zoo keys.
        method: an attribution method key, e.g. "gradcam".
        target: a class index or name every model explains (they share the ImageNet classes); empty: each its own top-1.
    """
    if not image:
        raise gr.Error("Give the models an image first.")
    models = list(models or [])
    if not 2 <= len(models) <= 6:
        raise gr.Error("Pick between 2 and 6 models to compare.")
    if len(set(models)) != len(models):
        raise gr.Error("Each model once: the same model twice would only draw the same map again.")
    check_budget_total(sum(request_tflop(ZOO[k], method, None, scores=False) for k in models),
                       f"{get_method(method).name} on {len(models)} models")
    items, titles, rows = [], [], []
    for i, key in enumerate(models):
        progress(i / len(models), desc=f"{ZOO[key].name} ({i + 1} of {len(models)})")
        lm = get_model(key, None, progress)
        a = attribute_shared(image, lm, method, target=target or None)
        items.append(a)
        flag = "" if lm.weights.trained else " [random weights]"
        titles.append(f"{ZOO[key].name}{flag}\n{'target' if target else 'its top-1'}: {a.label} (p = {a.prob:.1%})")
        rows.append([ZOO[key].name, a.label, f"{a.prob:.1%}", lm.weights.kind, f"{a.ms:.0f}"])
    cols = 3 if len(items) > 4 else len(items)
    shared = f"shared target: {items[0].label} ({items[0].target})" if target else "each model explains its own top-1"
    title = f"{get_method(method).name} · {shared}"
    return {"cmp_grid": render.attribution_grid(items, titles, cols=cols, title=title, look=render.Look.parse(look)),
            "cmp_table": rows}


OUTPUTS = ("overlay", "signed", "scores", "deletion", "json", "files", "banner")


def shown_for(image, model, method, target, layer) -> list:
    """What a map on screen was made for: the page's image (as it holds it), model and settings."""
    return [str(image or ""), model, method, str(target or ""), str(layer or "")]


def _cleared(model: str, image=None, method=None, target=None, layer=None, shown: list | None = None) -> dict:
    """Empty results, and the banner of the model now selected (no result, no stale names).
    Nothing is cleared when the map on screen was made for exactly these controls: a control
    set again to what it held fires its change event too (a page following a class)."""
    if shown is not None and shown == shown_for(image, model, method, target, layer):
        return {}
    return {"overlay": None, "signed": None, "scores": "", "deletion": None, "json": None, "files": None,
            "banner": weights_banner(None, model), "grid": None, "shown": None}


def _layer_update(key: str):
    spec = ZOO[key]
    return gr.Dropdown(choices=layer_choices(spec), value=spec.gradcam_layer)


@user_errors
def _target_update(image, key: str, checkpoint: dict | None = None):
    return gr.Dropdown(choices=target_choices(image, key, checkpoint), value=None)


@user_errors
def _shared_target_update(image, models: list[str] | None):
    return gr.Dropdown(choices=target_choices(image, models[0]) if models else [], value=None)


def knob_sliders() -> list[gr.Slider]:
    """One slider per method knob, from its declaration (range, default, label)."""
    with gr.Accordion("Quality knobs", open=False):
        return [gr.Slider(k.low, k.high, value=k.default, step=1 if k.integer else None, precision=0 if k.integer else None,
                          label=k.label)
                for k in knobs().values()]


def build(checkpoint_state: gr.State, look: gr.State, first=None) -> dict:
    """Lay out the Attributions tab and wire its events; return its components. ``first(c)``:
    wires events that must be registered before the tab's own (the browser sends a click's or
    a change's events in that order)."""
    c: dict = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=4):
            c["image"] = image_input(sources=["upload", "webcam", "clipboard"], label="Image", height=280, elem_id="attr-image")
            gr.Examples(examples(), inputs=[c["image"]], label="Example photos")
            c["model"] = gr.Dropdown(model_choices(), value=DEFAULT_MODEL, label="Model", elem_id="attr-model")
            c["method"] = gr.Dropdown(method_choices(), value="ig", label="Method", elem_id="attr-method")
            c["layer"] = gr.Dropdown(layer_choices(ZOO[DEFAULT_MODEL]), value=ZOO[DEFAULT_MODEL].gradcam_layer,
                                     label="Grad-CAM layer (a block, or one branch of it)", allow_custom_value=True)
            c["target"] = gr.Dropdown([], value=None, allow_custom_value=True,
                                      filterable=True, label="Target class (empty: the top prediction; or type any class name or index)")
            c["knobs"] = knob_sliders()
            with gr.Row():
                c["run"] = gr.Button("Explain", variant="primary", elem_id="attr-run")
                c["grid_btn"] = gr.Button("All methods at once")
        with gr.Column(scale=6):
            c["banner"] = gr.HTML(label="weights in use")
            with gr.Row():
                c["overlay"] = gr.Image(label="|attribution| over the image", show_label=False, interactive=False, buttons=["download"], elem_id="attr-overlay",
                                        alt_text=ALT_OVERLAY)
                c["signed"] = gr.Image(label="signed map", show_label=False, interactive=False, buttons=["download"], alt_text=ALT_SIGNED)
            c["scores"] = gr.Markdown(elem_id="attr-scores", label="scores")
            gr.Markdown(SCORE_HELP, elem_classes=["cz-note"])
            c["deletion"] = gr.LinePlot(x="removed", y="probability", color="order", color_map=DELETION_COLOURS,
                                        height=260, elem_id="attr-deletion",
                                        elem_classes=["cz-plot"], color_title="pixels removed",
                                        title="Deletion curve", x_title="fraction of pixels removed", label="deletion curve")
            c["files"] = gr.File(label="Downloads: a 1920 × 1080 slide (maps, model, weights, method, layer, target, scores), overlay PNG, signed PNG, raw attribution (.npy)", file_count="multiple")
            with gr.Accordion("Result as JSON (same as the CLI)", open=False):
                c["json"] = gr.JSON(label="attribution")
    c["grid"] = gr.Image(label="All methods on this image", show_label=False, interactive=False, buttons=["download"],
                         alt_text="Every attribution method's map over the image, one panel per method, each titled")
    gr.Markdown("### Side by side: one method across models")
    with gr.Row():
        c["cmp_models"] = gr.Dropdown(
            model_choices("photo"), value=[DEFAULT_MODEL, "bn_inception", "resnet50"], multiselect=True,
            max_choices=6, label="Models (2 to 6)", scale=4,
        )
        c["cmp_method"] = gr.Dropdown(method_choices(), value="gradcam", label="Method", scale=2)
        c["cmp_target"] = gr.Dropdown([], value=None, allow_custom_value=True, filterable=True, scale=3,
                                      label="Shared target class (empty: each model explains its own top-1)",
                                      elem_id="attr-cmp-target")
        c["cmp_run"] = gr.Button("Compare", scale=1)
    c["cmp_grid"] = gr.Image(label="Side by side", show_label=False, interactive=False, buttons=["download"],
                             alt_text="One attribution method's map over the image for each model compared, "
                                      "each titled with the model and the class it explains")
    c["cmp_table"] = gr.Dataframe(headers=["model", "class explained", "probability", "weights", "ms"],
                                  interactive=False, label="class explained per model")

    if first is not None:
        first(c)
    knob_list = list(c["knobs"])
    run, outputs = by_name(with_knob_parameters(attribute_steps), c, OUTPUTS)
    c["shown"] = session_state(None)  # what the map on screen was made for (shown_for)
    c["run_event"] = c["run"].click(
        user_errors(run),
        [c["image"], c["model"], c["method"], c["target"], c["layer"], *knob_list, checkpoint_state, look],
        outputs,
        api_name="attribute",
        **heavy_lane(),
    )
    c["grid_btn"].click(
        run_all_methods, [c["image"], c["model"], c["target"], c["layer"], checkpoint_state, look], [c["grid"]],
        api_name="attribute_grid", **heavy_lane(),
    )
    compared, compared_outputs = by_name(run_compare, c, ("cmp_grid", "cmp_table"))
    c["cmp_run"].click(
        compared, [c["image"], c["cmp_models"], c["cmp_method"], c["cmp_target"], look], compared_outputs,
        api_name="attribute_compare", **heavy_lane(),
    )
    c["model"].change(_layer_update, [c["model"]], [c["layer"]], api_visibility="private")
    # A map belongs to one model, image and setting: when any of them changes, it goes.
    made_for = [c["image"], c["model"], c["method"], c["target"], c["layer"]]
    c["run_event"].success(shown_for, made_for, [c["shown"]], api_visibility="private", queue=False)
    cleared, cleared_outputs = by_name(_cleared, c, (*OUTPUTS, "grid", "shown"))
    gr.on([c["model"].change, c["image"].change, c["method"].input, c["target"].input, c["layer"].input],
          cleared, [c["model"], c["image"], c["method"], c["target"], c["layer"], c["shown"]], cleared_outputs,
          api_visibility="private", queue=False, show_progress="hidden")
    cmp_cleared, cmp_cleared_outputs = by_name(lambda: {"cmp_grid": None, "cmp_table": None}, c,
                                               ("cmp_grid", "cmp_table"))
    gr.on([c["image"].change, c["cmp_models"].change, c["cmp_method"].input, c["cmp_target"].input],
          cmp_cleared, None, cmp_cleared_outputs, api_visibility="private", queue=False)
    gr.on([c["model"].change, c["image"].change], _target_update, [c["image"], c["model"], checkpoint_state],
          [c["target"]], api_visibility="private", concurrency_id=LIGHT)
    # The shared target's suggestions: the image's top-5 on the first model compared (the photo
    # models share ImageNet's classes; any other is typed).
    gr.on([c["image"].change, c["cmp_models"].change], _shared_target_update, [c["image"], c["cmp_models"]],
          [c["cmp_target"]], api_visibility="private", concurrency_id=LIGHT)
    return c


def compact_panel(explore: dict, checkpoint_state: gr.State, look: gr.State) -> None:
    """A small attribution panel under Explore's predictions (same handler as the tab)."""
    with gr.Accordion("Which pixels mattered? (attribution for the top prediction)", open=False):
        with gr.Row():
            method = gr.Dropdown(method_choices(), value="gradcam", label="Method", scale=3)
            go = gr.Button("Explain this prediction", scale=1)
        with gr.Row():
            overlay = gr.Image(label="|attribution| over the image", show_label=False, interactive=False, buttons=["download"],
                               alt_text=ALT_OVERLAY)
            signed = gr.Image(label="signed map", show_label=False, interactive=False, buttons=["download"], alt_text=ALT_SIGNED)
        scores = gr.Markdown()
        gr.Markdown(SCORE_HELP, elem_classes=["cz-note"])
    shown = {"overlay": overlay, "signed": signed, "scores": scores}

    def compact(image, model, meth, checkpoint, look, progress=gr.Progress()):
        for out in attribute_steps(image, model, meth, None, None, checkpoint, look, progress=progress):
            yield {k: out[k] for k in shown}

    handler, outputs = by_name(compact, shown, shown)
    go.click(
        user_errors(handler), [explore["image"], explore["model"], method, checkpoint_state, look], outputs,
        api_name="attribute_compact", api_visibility="private", **heavy_lane(),
    )
    cleared, cleared_outputs = by_name(lambda: {"overlay": None, "signed": None, "scores": ""}, shown, shown)
    gr.on([explore["model"].change, explore["image"].change, method.input], cleared, None, cleared_outputs,
          api_visibility="private", queue=False)
