"""Pieces every tab uses: the safe image input, the model picker, banners and error handling."""

from __future__ import annotations

import contextlib
import functools
import html
import inspect
import logging
import threading

import gradio as gr

from .. import settings
from ..cancel import Cancelled
from ..errors import UserError
from ..ranking import app_index
from ..runtime import STORE, LoadedModel
from ..shared import RESULTS
from .. import render
from .. import prefetch
from . import warm
from ..weights import WeightsInfo, availability, is_offline
from ..zoo import ZOO, families
from .serving import EXAMPLES_DIR, cancellable, guard_files, image_input  # noqa: F401 (re-exported)

log = logging.getLogger("cnndemo")

# The two lanes (README, "Lanes"): light events (a prediction, branch maps, an ablation, a digit)
# never wait behind heavy ones (attributions, benchmarks, training). The heavy lane admits
# ``settings.heavy_lane`` requests; of them ``lanes.HEAVY`` computes ``CNNDEMO_HEAVY_WORKERS`` at once.
LIGHT = "light"
HEAVY_LANE = "heavy"


def session_state(value=None) -> gr.State:
    """A ``gr.State`` of one browser session, gone ``CNNDEMO_STATE_TTL`` seconds after its last
    update (every session State is bounded so: README, "Deploying safely")."""
    return gr.State(value, time_to_live=settings.get().state_ttl_s)


def heavy_lane() -> dict:
    """The event arguments of a heavy event."""
    return {"concurrency_id": HEAVY_LANE, "concurrency_limit": settings.get().heavy_lane}


def as_gr_error(e: Exception, where: str) -> gr.Error:
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, Cancelled):
        return gr.Error("The request was cancelled before it finished.", print_exception=False)
    if isinstance(e, UserError):  # the library's own refusals: a sentence for the user
        return gr.Error(str(e), print_exception=False)
    # Anything else is a bug: its traceback goes to the log, the user is told it was one.
    log.error("unexpected error in %s", where, exc_info=e)
    return gr.Error(f"Internal error ({type(e).__name__}): {e}")


def tune_allocator() -> bool:
    """Keep a long-running server's resident memory flat (glibc only; a no-op elsewhere).

    Gradio answers from many threads, and glibc gives each its own malloc arena; freed
    activations then stay mapped in whichever arena held them. Two arenas, and a fixed mmap
    threshold (so that big tensors are always mmap'ed and unmapped when freed), keep memory
    near its baseline at a small cost in page faults.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8
        return bool(libc.mallopt(M_ARENA_MAX, 2)) and bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 20))
    except (OSError, AttributeError):
        return False


def _libc_trim():
    """glibc's malloc_trim: hand freed heap pages back to the OS (None elsewhere)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _libc_trim()


def release_memory() -> None:
    """After a request: big decoded images and activations leave freed pages in glibc's heap;
    returning them keeps a long-running server's resident memory near its baseline."""
    if _TRIM is not None:
        _TRIM(0)


@contextlib.contextmanager
def _handling(name: str):
    """One request's handler: counted while it runs, library errors turned into gr.Error,
    freed heap pages returned afterwards."""
    _running(+1)
    try:
        yield
    except Exception as e:
        raise as_gr_error(e, name) from None
    finally:
        _running(-1)
        release_memory()


def user_errors(fn):
    """Turn the library's human-readable errors into gr.Error; log anything unexpected.

    The handler also becomes cancellable (``serving.cancellable``): when its client goes away,
    the library's long loops stop within a batch.
    """
    if inspect.isasyncgenfunction(fn):  # waits on the event loop (a watch): no thread, not counted as work

        @functools.wraps(fn)
        async def agen_wrapper(*args, **kwargs):
            try:
                async for item in fn(*args, **kwargs):
                    yield item
            except Exception as e:
                raise as_gr_error(e, fn.__name__) from None

        return agen_wrapper

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            with _handling(fn.__name__):
                yield from fn(*args, **kwargs)

        return cancellable(gen_wrapper)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _handling(fn.__name__):
            return fn(*args, **kwargs)

    return cancellable(wrapper)


def by_name(fn, c: dict, names):
    """Gradio's ``{component: value}`` returns, for a handler that returns (or yields) a dict
    by name: ``fn`` returns ``{"overlay": img, ...}`` and the wrapped handler gives Gradio
    ``{c["overlay"]: img, ...}``. ``names``: the outputs it may fill. Returns
    ``(handler, outputs)``: pass both to the event.
    """
    components = {name: c[name] for name in names}
    where = getattr(fn, "__qualname__", repr(fn))

    def convert(values: dict) -> dict:
        if not isinstance(values, dict):  # one style: a handler never returns a tuple
            raise TypeError(f"{where} must return {{name: value}}, not {type(values).__name__}")
        unknown = set(values) - set(components)
        if unknown:
            raise KeyError(f"{where} returned outputs it does not declare: {sorted(unknown)}")
        if not values:  # nothing to change (Gradio reads an empty dict as one output's value)
            return {next(iter(components.values())): gr.skip()}
        return {components[name]: value for name, value in values.items()}

    if inspect.isasyncgenfunction(fn):  # a cancellable generator (user_errors)

        @functools.wraps(fn)
        async def handler(*args, **kwargs):
            async for values in fn(*args, **kwargs):
                yield convert(values)
    elif inspect.iscoroutinefunction(fn):  # a cancellable handler (user_errors)

        @functools.wraps(fn)
        async def handler(*args, **kwargs):
            return convert(await fn(*args, **kwargs))
    elif inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def handler(*args, **kwargs):
            for values in fn(*args, **kwargs):
                yield convert(values)
    else:

        @functools.wraps(fn)
        def handler(*args, **kwargs):
            return convert(fn(*args, **kwargs))

    handler.__by_name__ = tuple(names)
    return handler, list(components.values())


class _Running:
    """How many handlers are running right now, in this process."""

    def __init__(self):
        self.count = 0
        self.lock = threading.Lock()

    def add(self, delta: int) -> None:
        with self.lock:
            self.count += delta

    def value(self) -> int:
        with self.lock:
            return self.count


_RUNNING = _Running()


def _running(delta: int) -> None:
    _RUNNING.add(delta)


def requests_running() -> int:
    """How many handlers are running right now, in this process (the caller included)."""
    return _RUNNING.value()


def picture(key: tuple, draw):
    """A picture drawn once per ``key`` (what it shows and the page's look) and shared by every
    request that shows the same: the same object is also encoded only once (``serving``)."""
    return RESULTS.get(("picture", *key), lambda _progress: draw())


def branch_panel(ex, block: str, look, **draw):
    """An exploration's branch panel for ``block`` (``draw``: ``render.block_panel``'s options),
    drawn once per (image, model, weights, block, look, options) whichever tab shows it."""
    return picture(("panel", ex.model, ex.weights_ident, ex.image_digest, block, look, *sorted(draw.items())),
                   lambda: render.block_panel(ex.blocks[block], ex.seen, look=look, **draw))


def model_choices(kind: str | None = None) -> list[tuple[str, str]]:
    """Dropdown choices grouped by family: ('Inception · GoogLeNet (Inception v1)', 'googlenet')."""
    out = []
    for fam in families():
        for spec in ZOO.values():
            if spec.family == fam and (kind is None or spec.inputs.kind == kind):
                out.append((f"{fam} · {spec.name}", spec.key))
    return out


def gr_progress(progress: gr.Progress | None):
    if progress is None:
        return None
    return lambda frac, desc: progress(frac, desc=desc)


def get_model(key: str, checkpoint: dict | None = None, progress: gr.Progress | None = None) -> LoadedModel:
    """The model for ``key``; the session's own checkpoint applies only to its architecture."""
    if not key:
        raise gr.Error("Pick a model first.")
    if checkpoint and checkpoint.get("key") == key:
        return STORE.get(key, checkpoint=checkpoint["path"])
    return STORE.get(key, progress=gr_progress(progress))


def weights_kind(info: WeightsInfo) -> str:
    """Which weights produced a result, in three words."""
    return {"pretrained": "pretrained weights", "custom": "your own weights", "random": "random weights"}[info.kind]


def weights_banner(info: WeightsInfo | None, spec_key: str) -> str:
    """HTML banner: which weights are in use; unmissable when they are random."""
    spec = ZOO[spec_key]
    if info is None:
        avail = availability(spec.weights)
        text = {
            "cached": "published weights are in the local cache and will be verified on first use",
            "pretrained": "published weights will be downloaded on first use",
            "none": "no published weights: it will run with random weights unless you load a checkpoint",
        }[avail]
        if avail == "pretrained" and is_offline():
            text = ("offline, and its published weights are not cached here: it will run with random "
                    "weights (see the header line)")
        return f'<div class="cz-banner cz-pending"><b>{html.escape(spec.name)}</b>: {text}.</div>'
    if info.kind == "random":
        return (
            '<div class="cz-banner cz-random" role="alert">'
            f"<b>⚠ Untrained weights: these predictions are meaningless.</b><br>"
            f"{html.escape(spec.name)} runs untrained because {html.escape(info.reason)}: "
            f"{html.escape(info.source.removeprefix('untrained: '))}.<br>"
            "The architecture, branch structure, parameters, FLOPs and latency shown are still real.<br>"
            f"<b>To fix:</b> {html.escape(info.fix)}</div>"
        )
    cls = "cz-custom" if info.kind == "custom" else "cz-ok"
    label = "Your own weights" if info.kind == "custom" else "Pretrained weights"
    return f'<div class="cz-banner {cls}"><b>✓ {label}:</b> {html.escape(info.source)}</div>'


def weights_status():
    """The header line: which weights this machine has (no network needed), the background
    fetch's progress while it runs, and the timer that refreshes this line until it is done."""
    marks = {"cached": "✓ on this machine", "pretrained": "⤓ downloads on first use", "none": "✗ none: random init"}
    if is_offline():
        marks["pretrained"] = "✗ not cached, and offline: random init"
    parts = [f"{ZOO[k].name}: {marks[availability(ZOO[k].weights)]}" for k in ZOO]
    head = "**Weights on this machine**" + (" (offline mode: nothing is downloaded)" if is_offline() else "")
    line = head + " · " + " · ".join(parts)
    fetching = prefetch.status()
    if fetching.total:
        line = f"{prefetch.describe(fetching)}.  \n" + line
    lesson = warm.status()
    if lesson is not None:
        line = f"{warm.describe(lesson)}  \n" + line
    folder = app_index(settings.get().exemplars)
    if folder is not None and (ranked := folder.describe()):
        line = f"{ranked}  \n" + line
    running = fetching.running or (lesson is not None and lesson.running) or (folder is not None and folder.running)
    return {"status": line, "ticker": gr.Timer(active=running)}


def examples() -> list[str]:
    return sorted(
        str(p) for p in EXAMPLES_DIR.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"}
    )


CSS = """
.cz-banner {padding: 10px 14px; border-radius: 8px; font-size: 1.05em; line-height: 1.45;}
.cz-random {background: #b91c1c; color: #fff; border: 3px solid #7f1d1d; font-size: 1.15em;}
.cz-ok {background: #dcfce7; color: #14532d; border: 1px solid #86efac;}
.cz-custom {background: #dbeafe; color: #1e3a8a; border: 1px solid #93c5fd;}
.cz-pending {background: #f4f4f5; color: #27272a; border: 1px dashed #a1a1aa;}
/* Secondary text follows the theme's own colours, so it keeps its contrast in dark mode. */
.cz-note, .cz-note p {color: var(--body-text-color-subdued); font-size: 0.95em;}
.dark .cz-ok {background: #14532d; color: #dcfce7; border-color: #22c55e;}
.dark .cz-custom {background: #1e3a8a; color: #dbeafe; border-color: #60a5fa;}
.dark .cz-pending {background: #27272a; color: #f4f4f5; border-color: #71717a;}
/* The block diagram: one column per branch, drawn from the spec. */
.cz-diagram {display: flex; flex-direction: column; gap: 6px; padding: 8px; overflow-x: auto;}
.cz-cols {display: flex; flex-wrap: wrap; gap: 8px; align-items: stretch;}
.cz-branch {flex: 1 1 100px; min-width: 100px; border: 1px solid var(--border-color-primary); border-top: 6px solid;
  border-radius: 6px; padding: 6px; background: var(--block-background-fill); color: var(--body-text-color);
  cursor: pointer; text-align: center; font: inherit; display: flex; flex-direction: column; gap: 3px;}
.cz-branch:hover, .cz-branch:focus-visible {outline: 2px solid var(--color-accent); outline-offset: 1px;}
.cz-branch.cz-selected {box-shadow: 0 0 0 3px var(--color-accent);}
.cz-bname {font-weight: 700;}
.cz-layer {border: 1px solid var(--border-color-primary); border-radius: 4px; padding: 2px 4px; font-size: 0.9em;
  font-family: var(--font-mono);}
.cz-shape {font-size: 0.85em; color: var(--body-text-color-subdued); margin-top: auto;}
.cz-io, .cz-shared {text-align: center; padding: 4px; border-radius: 4px; background: var(--background-fill-secondary);
  font-size: 0.9em;}
/* Native plots draw their colour legend below the chart, past the block's fixed height, where it
   was cut off (only its title showed): the block grows by the legend's height instead. */
.cz-plot {overflow: visible !important; box-sizing: content-box !important; padding-bottom: 44px !important;}
.cz-caption p {margin: 0 0 2px 0; font-size: 0.95em;}
.cz-start {border: 2px solid var(--color-accent); border-radius: 10px; padding: 6px 12px;}
/* A class: the code is read off the projector from the back of the room. */
.cz-room {display: flex; flex-wrap: wrap; align-items: baseline; gap: 4px 18px; padding: 8px 14px;
  border: 2px solid var(--color-accent); border-radius: 10px; background: var(--background-fill-secondary);}
.cz-room-label {font-size: 1.1em; font-weight: 600;}
.cz-room-code {font-family: var(--font-mono); font-size: 2.6em; font-weight: 800; letter-spacing: 0.12em;}
body.cz-presenter .cz-room-code {font-size: 4.2em;}
.cz-room-how {flex: 1 1 260px; overflow-wrap: anywhere;}
.cz-unit .cz-arith {display: flex; flex-wrap: wrap; align-items: center; gap: 6px 14px; margin: 6px 0;}
.cz-unit .cz-arith figure {margin: 0;}
.cz-unit .cz-arith figcaption {text-align: center; font-size: 0.85em; color: var(--body-text-color-subdued);}
.cz-unit .cz-arith > span {font-size: 1.4em; font-weight: 700;}
.cz-unit table.cz-grid {border-collapse: collapse; font-family: var(--font-mono); font-size: 0.95em;}
.cz-unit table.cz-grid td, .cz-unit table.cz-grid th {border: 1px solid var(--border-color-primary);
  padding: 2px 6px; text-align: right;}
.cz-unit ol.cz-unit-steps {margin: 6px 0 0 1.2em; font-family: var(--font-mono); font-size: 0.92em;
  overflow-wrap: anywhere;}
body.cz-presenter .cz-unit {font-size: 1.35em;}
.cz-room-count {font-weight: 600;}
.cz-room.cz-room-student {display: block; font-size: 1.05em;}
.cz-room-note {padding: 6px 12px; border: 1px dashed var(--border-color-primary); border-radius: 8px;}
/* Presenter mode: larger type and full contrast, for a projector at the back of the room. */
body.cz-presenter .gradio-container {--text-xxs: 13px; --text-xs: 15px; --text-sm: 17px; --text-md: 20px;
  --text-lg: 23px; --text-xl: 28px; --text-xxl: 34px; --block-label-text-size: 17px; --block-info-text-size: 16px;
  --body-text-color-subdued: var(--body-text-color); --border-color-primary: var(--body-text-color);}
body.cz-presenter .gradio-container:not(.dark .gradio-container) {--body-text-color: #000; --background-fill-primary: #fff;}
.dark body.cz-presenter .gradio-container, body.cz-presenter.dark .gradio-container {--body-text-color: #fff;
  --background-fill-primary: #000; --block-background-fill: #000;}
body.cz-presenter .cz-layer {font-size: 1em;}
/* Phones (a Space opened on one): rows stack, wide pictures scroll instead of shrinking. */
@media (max-width: 640px) {
  .cz-stack {flex-direction: column !important;}
  .cz-stack > * {min-width: 0 !important; width: 100% !important;}
  #explore-panel .image-container, #explore-panel .image-frame {overflow-x: auto !important;}
  #explore-panel img {min-width: 760px; max-width: none !important;}
  .cz-branch {min-width: 96px;}
}
"""

# Presenter mode is a class on <body>, toggled in the browser only (no server round trip).
PRESENTER_JS = "(on) => { document.body.classList.toggle('cz-presenter', !!on); return on; }"

# The page's look ("light" or "dark", plus "presenter"), read from <body>'s classes when the page
# opens and written into a hidden textbox whenever they change (the theme switched in Gradio's
# settings, presenter mode toggled): pictures with text in them are drawn for it.
LOOK_JS = """
() => {
  const read = () => (document.body.classList.contains('dark') ? 'dark' : 'light')
    + (document.body.classList.contains('cz-presenter') ? ' presenter' : '');
  if (!window.czLook) {
    window.czLook = new MutationObserver(() => {
      const box = document.querySelector('#cz-look textarea, #cz-look input');
      if (box && box.value !== read()) {
        box.value = read();
        box.dispatchEvent(new Event('input', {bubbles: true}));
      }
    });
    window.czLook.observe(document.body, {attributes: true, attributeFilter: ['class']});
  }
  return read();
}
"""
