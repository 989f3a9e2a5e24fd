"""Digits tab: draw (or photograph) a digit, see all three small networks, their branches and
pixels; and a training lab that trains a fresh network for this session only."""

from __future__ import annotations

import contextvars
import queue
import threading
import time
import uuid

import gradio as gr
import pandas as pd
from PIL import Image

from .. import render
from ..attribution import attribute_shared, request_key
from ..branches import explore
from ..digits import EmptyDrawing, disagreement, normalize_digit
from ..images import open_image
from ..runtime import STORE, LoadedModel
from ..shared import RESULTS
from ..training import confusion, digit_attributions, shipped_digits, train, training_tflop
from .. import cancel
from ..cancel import check_budget
from ..lanes import HEAVY, lower_priority
from ..weights import WeightsInfo
from ..zoo import DIGIT_KEYS, DIGIT_SHOWCASE, ZOO
from .common import (LIGHT, branch_panel, by_name, gr_progress, heavy_lane, picture, session_state, guard_files,
                     image_input, user_errors, weights_kind)
from .guard import bound_blobs

# The Sketchpad opens with no tool selected, and "Clear canvas" (and undo/redo) deselects the
# brush, so the next stroke would draw nothing. Select the brush once the tab renders (wait for
# the button, up to 10 s, instead of guessing a delay), and again after each of those buttons,
# unless a tool (brush or eraser) is still selected. ``press``: click the brush once even when
# it looks selected (an ImageEditor given a new background shows it selected, yet its first
# stroke is often lost until the tool is pressed).
def select_brush_js(elem_id: str, *, press: bool = False) -> str:
    return """() => {
  const q = (s) => document.querySelector('#ELEM ' + s);
  const toolOn = () => ['Brush', 'Erase'].some((n) => {
    const b = q(`button[aria-label="${n}"]`); return b && b.classList.contains('highlight'); });
  const ensure = () => { const b = q('button[aria-label="Brush"]'); if (b && !toolOn()) b.click(); };
  const t0 = Date.now();
  const tick = () => {
    const root = document.querySelector('#ELEM');
    if (root && q('button[aria-label="Brush"]')) {
      if (PRESS) q('button[aria-label="Brush"]').click();
      ensure();
      if (!root.dataset.czBrushKeeper) {
        root.dataset.czBrushKeeper = '1';
        root.addEventListener('click', (e) => {
          const t = e.target.closest('button');
          if (t && ['Clear canvas', 'Undo', 'Redo'].includes(t.getAttribute('aria-label'))) {
            setTimeout(ensure, 50); setTimeout(ensure, 400);
          }
        }, true);
      }
      return;
    }
    if (Date.now() - t0 < 10000) setTimeout(tick, 100);
  };
  tick();
}""".replace("ELEM", elem_id).replace("PRESS", "true" if press else "false")


SELECT_BRUSH_JS = select_brush_js("digits-sketch")


def _models(session: dict | None) -> dict[str, LoadedModel]:
    """The three digit networks: shipped weights, or this session's freshly trained one."""
    out = {k: STORE.get(k) for k in DIGIT_KEYS}
    for key, lm in (session or {}).items():
        out[key] = lm
    return out


def _as_image(value) -> Image.Image | str | None:
    """A Sketchpad value (dict with a composite) or an uploaded file path."""
    if value is None:
        return None
    if isinstance(value, dict):
        comp = value.get("composite")
        if comp is None:
            return None
        return comp if isinstance(comp, Image.Image) else Image.open(comp)
    return value


LABELS = tuple(f"label_{k}" for k in DIGIT_KEYS)
PANELS = tuple(f"panel_{b.name}" for b in ZOO[DIGIT_SHOWCASE].blocks)
SHOWN = ("seen", "note", *LABELS, *PANELS, "ig")


def _message(msg: str) -> dict:
    """Every display output emptied, and ``msg`` in the note (and in the JSON)."""
    return {**dict.fromkeys(SHOWN), "note": msg, "json": {"error": msg}}


def _classify(value, session, look: str | None = None) -> dict:
    """The display outputs by name, and "json": the top-3 of each network."""
    img = _as_image(value)
    if img is None:
        return _message("Draw a digit on the canvas, or upload a photo of one.")
    opened = open_image(img, keep_alpha=True)  # opened once; every network below reuses it
    try:  # the same drawing (a teacher's, handed round) is normalised once
        digit = RESULTS.get(("normalized digit", opened.digest), lambda _p: normalize_digit(opened.image))
    except EmptyDrawing as e:
        return _message(str(e))
    models = _models(session)
    out, result, explored = {}, {}, {}
    for key in DIGIT_KEYS:
        lm = models[key]
        explored[key] = explore(opened, lm, top=3)
        pred = explored[key].prediction
        out[f"label_{key}"] = {t.label: t.prob for t in pred.top}
        result[key] = {"weights": lm.weights.kind, "source": lm.weights.source,
                       "top": [{"label": t.label, "index": t.index, "prob": round(t.prob, 6)} for t in pred.top]}
    shown, shape = explored[DIGIT_SHOWCASE], render.Look.parse(look)
    for b in ZOO[DIGIT_SHOWCASE].blocks:
        out[f"panel_{b.name}"] = branch_panel(shown, b.name, shape, tile=64)
    # Light work (a digit net's map takes milliseconds), shared by identical drawings.
    showcase = models[DIGIT_SHOWCASE]
    ig = attribute_shared(opened, showcase, "ig", lane=None)
    out["ig"] = picture(("overlay", *request_key(opened, showcase, "ig"), shape),
                        lambda: render.attribution_overlay(ig, shape))
    note = "  \n".join(
        f"**{ZOO[k].name}**: {models[k].weights.source}" + (" (trained in this session)" if k in (session or {}) else "")
        for k in DIGIT_KEYS
    )
    split = disagreement({ZOO[k].name: (explored[k].prediction.top[0].label, explored[k].prediction.top[0].prob)
                          for k in DIGIT_KEYS})
    if split:
        note = f"**⚠ {split}**  \n{note}"
    out["seen"] = picture(("digit", opened.digest), lambda: digit.resize((168, 168), Image.Resampling.NEAREST))
    out["note"] = note
    out["json"] = result
    return out


def classify_sketch(sketch: dict | None, session: dict | None = None, look: str | None = None) -> dict:
    out = _classify(sketch, session, look)
    del out["json"]
    return out


def classify_upload(image: str | None, session: dict | None = None, look: str | None = None) -> dict:
    """All three digit networks' top-3 for one image of a digit, with their branch maps.

    Args:
        image: an image of a single digit, any size, dark on light or light on dark.
    """
    return _classify(image, session, look)


# ----------------------------------------------------------------------------- training lab


@user_errors
def train_lab(key: str, epochs: float, batch_size: float, lr: float, limit: float, session: dict | None,
              progress=gr.Progress()):
    """Train a fresh digit network for this session only, streaming the loss and accuracy curves.

    Args:
        key: "mnist_inception", "mnist_resnet" or "d2l_googlenet".
        epochs: passes over the training digits (1-5).
        batch_size: examples per step.
        lr: initial learning rate (cosine decay to 0).
        limit: how many of the 4,000 training digits to use.
    """
    session = dict(session or {})
    check_budget(training_tflop(key, epochs=int(epochs), limit=int(limit)), f"Training {ZOO[key].name}",
                 hint="Use fewer epochs or fewer training digits.")
    with HEAVY.slot(gr_progress(progress)):  # one of the heavy lane's workers, waiting in line for it
        data = shipped_digits()
        updates: queue.Queue = queue.Queue()
        box: dict = {}

        def work():
            lower_priority()  # beside the light events, as every heavy computation runs
            try:
                box["result"] = train(key, epochs=int(epochs), batch_size=int(batch_size), lr=float(lr),
                                      data=data, limit=int(limit), on_step=updates.put)
            except Exception as e:  # reported to the user below
                box["error"] = e
            finally:
                updates.put(None)

        # The thread carries this request's context: its cancellation token stops the training.
        threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True).start()
        steps, epochs_done = [], []
        last = 0.0
        while True:
            item = updates.get()
            if item is None:
                break
            if "initial" in item:
                epochs_done.append({"epoch": 0, **item["initial"]})
            elif "epoch_done" in item:
                epochs_done.append(item["epoch_done"])
            else:
                steps.append({"step": item["step"], "loss": item["loss"], "train accuracy %": item["train_acc"]})
                progress(item["step"] / item["total_steps"], desc=f"epoch {item['epoch']}/{item['epochs']}: "
                         f"loss {item['loss']:.3f}, {item['ex_per_s']:.0f} examples/s")
            if time.monotonic() - last > 0.7:
                last = time.monotonic()
                yield _lab_outputs(steps, epochs_done, session, "training...")
    if "error" in box:
        raise box["error"]
    result = box["result"]
    spec = ZOO[key]
    info = WeightsInfo("custom", f"trained in this session ({int(epochs)} epochs, held-out {result.test_acc:.1f}%)",
                       f"session-{uuid.uuid4().hex}")  # never reused, unlike id(): it keys shared caches
    session[key] = LoadedModel(spec, result.model.eval(), info, STORE.device)
    done = (f"Done in {result.wall_s:.1f} s: held-out accuracy **{result.test_acc:.1f}%**. The Digits panel above now "
            f"uses this {spec.name} for your session; the shipped weights are unchanged.")
    yield _lab_outputs(steps, epochs_done, session, done)


def _lab_outputs(steps, epochs_done, session, msg):
    loss = pd.DataFrame(steps)[["step", "loss"]] if steps else None
    acc = None
    if steps:
        rows = [{"step": s["step"], "accuracy": s["train accuracy %"], "curve": "train, running"}
                for s in steps]
        done = [e for e in epochs_done if e["epoch"] > 0]
        per_epoch = len(steps) // len(done) if done else 0
        rows += [{"step": e["epoch"] * per_epoch, "accuracy": e["test_acc"], "curve": "held-out"}
                 for e in epochs_done]
        acc = pd.DataFrame(rows)
    if len(epochs_done) > 1:
        e = epochs_done[-1]
        msg += (f"  \nEpoch {e['epoch']}: loss {e['loss']:.3f}, train {e['train_acc']:.1f}%, held-out "
                f"{e['test_acc']:.1f}%, {e['ex_per_s']:.0f} examples/s")
    return {"t_plot": loss, "t_acc": acc, "t_msg": msg, "session": session}


def _lab_model(key: str, session: dict | None) -> LoadedModel:
    """The network the lab trained in this session, else the shipped one."""
    return (session or {}).get(key) or STORE.get(key)


def _confusion_of(lm: LoadedModel):
    """The network's held-out confusion matrix, readings and probabilities (computed once)."""
    data = shipped_digits()

    def compute(_p):
        with cancel.holding(lm.lock):  # a shipped network is shared: nobody else hooks it meanwhile
            return confusion(lm.module, lm.spec, data.x_test, data.y_test)

    return RESULTS.get(("confusion", lm.weights.ident), compute)


def lab_confusion(key: str, session: dict | None, look) -> dict:
    """The held-out confusion matrix of the lab's network (the one trained in this session)."""
    lm = _lab_model(key, session)
    matrix, _, _ = _confusion_of(lm)
    shape = render.Look.parse(look)
    title = f"{lm.spec.name}, {weights_kind(lm.weights)}: 1,000 held-out digits; columns: the digit read"
    img = picture(("confusion", lm.weights.ident, str(shape)), lambda: render.confusion_matrix(matrix, shape, title))
    wrong = int(matrix.sum() - matrix.trace())
    return {"t_confusion": img, "t_cell": None,
            "t_cell_note": f"{wrong} of {int(matrix.sum())} held-out digits read wrongly. Click a cell to see those "
                           "digits, each with the pixels that drove its reading (Integrated Gradients)."}


def lab_cell(key: str, session: dict | None, look, evt: gr.SelectData) -> dict:
    """The held-out digits of one cell (true row, read column), each beside its attribution map."""
    if evt is None or not evt.index:
        return {}
    shape = render.Look.parse(look)
    cell = render.confusion_cell(shape, *evt.index[:2])
    if cell is None:
        return {}
    lm = _lab_model(key, session)
    data = shipped_digits()
    _, pred, prob = _confusion_of(lm)
    true, read = cell
    every = [i for i in range(len(pred)) if int(data.y_test[i]) == true and int(pred[i]) == read]
    picked = every[:8]
    if not picked:
        return {"t_cell": None, "t_cell_note": f"No held-out {true} was read as {read}."}
    with cancel.holding(lm.lock):
        attr = digit_attributions(lm.module, lm.spec, data.x_test[picked], [read] * len(picked))
    rows = []
    for i, a in zip(picked, attr):
        digit = Image.fromarray((data.x_test[i, 0].numpy() * 255).round().astype("uint8"), "L")
        heat = render.colorize(a, render.SIGNED_CMAP, vmin=-abs(a).max(), vmax=abs(a).max())
        rows.append((f"#{i}", [(digit, f"read {read} ({prob[i]:.0%})"), (heat, "orange: for it, purple: against")]))
    what = "read correctly" if true == read else f"read as {read}"
    note = (f"{len(every)} held-out {true}s {what}" + (f"; the first {len(picked)}" if len(every) > len(picked) else "")
            + f", each beside its Integrated Gradients map for '{read}' (a black baseline, 32 steps).")
    return {"t_cell": render.tile_grid(rows, tile=112, look=shape), "t_cell_note": note}


@user_errors
def forget_session(session: dict | None):
    return {"session": {}, "t_msg": "Back to the shipped weights."}


def build(look: gr.State) -> dict:
    c: dict = {}
    c["session"] = session_state({})
    gr.Markdown("Draw a digit (0-9) with the mouse, or upload a photo of one. It is normalised the way MNIST "
                "was made (white on black, fit into 20x20, centred by mass in 28x28) and read by all three networks.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            c["sketch"] = guard_files(bound_blobs(gr.Sketchpad(
                type="pil", image_mode="RGBA", canvas_size=(280, 280), label="Draw a digit", elem_id="digits-sketch",
                brush=gr.Brush(default_size=22, colors=["#000000"], color_mode="fixed"), height=340,
            )), images=True)
            c["upload"] = image_input(sources=["upload", "webcam", "clipboard"], label="...or a photo of a digit", height=200)
        with gr.Column(scale=6):
            with gr.Row():
                with gr.Column(min_width=180):
                    gr.Markdown("**What the networks saw** (28 × 28)", elem_classes=["cz-caption"])
                    c["seen"] = gr.Image(label="What the networks saw (28 x 28)", show_label=False, interactive=False,
                                         height=190, elem_id="digits-seen", buttons=["download"],
                                         alt_text="The digit after MNIST-style normalisation: 28 x 28, white on black")
                c["note"] = gr.Markdown(label="weights")
            with gr.Row():
                for key in DIGIT_KEYS:
                    # Named above, not by a label drawn over the box (it hid the headline digit).
                    with gr.Column(min_width=140):
                        gr.Markdown(f"**{ZOO[key].name}**", elem_classes=["cz-caption"])
                        c[f"label_{key}"] = gr.Label(num_top_classes=3, label=ZOO[key].name, show_label=False,
                                                     elem_id=f"digits-{key}")
            c["json"] = gr.JSON(label="top-3 of each network", visible=False)
    showcase = ZOO[DIGIT_SHOWCASE]
    gr.Markdown(f"#### What each branch of the {showcase.name}'s {len(showcase.blocks)} blocks saw")
    # One under the other, each at the page's full width: side by side, their text was too small to read.
    with gr.Column():
        for b in showcase.blocks:
            c[f"panel_{b.name}"] = gr.Image(label=f"branch maps of {showcase.name} {b.name}", show_label=False,
                                            interactive=False,
                                            alt_text=f"What each branch of {b.name} saw: facts, mean map and top channels")
    # Titled above the picture: a label drawn over it hid the start of the map's own title.
    gr.Markdown(f"**Which pixels mattered** (Integrated Gradients, {showcase.name})", elem_classes=["cz-caption"])
    c["ig"] = gr.Image(label=f"Which pixels mattered (Integrated Gradients, {showcase.name})", interactive=False,
                       show_label=False, height=360, elem_id="digits-ig",
                       alt_text="Integrated Gradients over the digit: how strongly each pixel drove the top guess")
    sketch, sketch_outputs = by_name(classify_sketch, c, SHOWN)
    c["sketch"].change(user_errors(sketch), [c["sketch"], c["session"], look], sketch_outputs, trigger_mode="always_last",
                       api_visibility="private", concurrency_id=LIGHT)
    upload, upload_outputs = by_name(classify_upload, c, (*SHOWN, "json"))
    c["upload"].change(user_errors(upload), [c["upload"], c["session"], look], upload_outputs, api_name="digits",
                       concurrency_id=LIGHT)

    gr.Markdown("### Training lab\nTrain a fresh network on the 4,000 training digits, watch it learn, then try it "
                "above. It lives in your session only; nobody else's model (and no file) changes.")
    with gr.Row():
        c["t_model"] = gr.Dropdown([(ZOO[k].name, k) for k in DIGIT_KEYS], value="mnist_resnet", label="Network")
        c["t_epochs"] = gr.Slider(1, 5, value=2, step=1, precision=0, label="Epochs")
        c["t_batch"] = gr.Dropdown([8, 16, 32, 64, 128, 256], value=64, label="Batch size")
        c["t_lr"] = gr.Number(value=0.05, minimum=0.0001, maximum=1.0, label="Learning rate")
        c["t_limit"] = gr.Slider(500, 4000, value=2000, step=100, precision=0, label="Training digits")
    with gr.Row():
        c["t_go"] = gr.Button("Train", variant="primary")
        c["t_forget"] = gr.Button("Use the shipped weights again")
    c["t_msg"] = gr.Markdown(label="training status")
    with gr.Row():
        c["t_plot"] = gr.LinePlot(x="step", y="loss", title="Training loss (per batch)", height=320, label="loss curve")
        c["t_acc"] = gr.LinePlot(x="step", y="accuracy", color="curve", title="Accuracy (%)", height=320,
                                 y_lim=[0, 100], label="accuracy curve", elem_classes=["cz-plot"],
                                 color_title="measured on", elem_id="digits-acc")
    # Titled above the pictures (a label drawn over a picture hides the start of its own title).
    with gr.Row(elem_classes=["cz-stack"]):
        with gr.Column():
            gr.Markdown("**Held-out confusion matrix** (after training): click a cell", elem_classes=["cz-caption"])
            c["t_confusion"] = gr.Image(label="Held-out confusion matrix: click a cell", show_label=False,
                                        interactive=False, elem_id="digits-confusion", buttons=["download", "fullscreen"],
                                        alt_text="Rows: the true digit; columns: the digit read; each cell its count")
        with gr.Column():
            c["t_cell_note"] = gr.Markdown(elem_id="digits-cell-note")
            c["t_cell"] = gr.Image(label="The digits of that cell", show_label=False, interactive=False,
                                   elem_id="digits-cell", buttons=["download", "fullscreen"],
                                   alt_text="Each digit of the cell beside the pixels that drove its reading")
    trained, trained_outputs = by_name(train_lab, c, ("t_plot", "t_acc", "t_msg", "session"))
    confused, confused_outputs = by_name(user_errors(lab_confusion), c, ("t_confusion", "t_cell", "t_cell_note"))
    c["t_go"].click(trained, [c["t_model"], c["t_epochs"], c["t_batch"], c["t_lr"], c["t_limit"], c["session"]],
                    trained_outputs, api_name="train_digits", **heavy_lane()).success(
        confused, [c["t_model"], c["session"], look], confused_outputs, api_visibility="private", concurrency_id=LIGHT)
    celled, celled_outputs = by_name(user_errors(lab_cell), c, ("t_cell", "t_cell_note"))
    c["t_confusion"].select(celled, [c["t_model"], c["session"], look], celled_outputs, api_visibility="private",
                            concurrency_id=LIGHT)
    forgot, forgot_outputs = by_name(forget_session, c, ("session", "t_msg"))
    c["t_forget"].click(forgot, [c["session"]], forgot_outputs, api_visibility="private")
    return c

