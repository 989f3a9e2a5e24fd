"""The Gradio app: a thin shell of tabs over the cnndemo library."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import gradio as gr

from . import attributions, compare, digits, explore, room, start as start_panel, warm as warm_lesson
from .common import CSS, EXAMPLES_DIR, HEAVY_LANE, LIGHT, LOOK_JS, PRESENTER_JS, by_name, session_state, tune_allocator, weights_status
from .. import cancel
from .. import prefetch as weights_prefetch
from ..errors import UserError
from ..lessons import load_lesson
from ..ranking import app_index, image_files
from ..render import Look
from ..runtime import configure_threads
from .. import settings
from ..weights import is_offline
from ..zoo import DEFAULT_MODEL
from .serving import install_atomic_cache_writes
from . import apitypes, guard

def build_demo() -> gr.Blocks:
    """Build the Blocks app (not launched). Nothing here loads a model."""
    install_atomic_cache_writes()
    # Before any component: they read Gradio's cache folder, and the examples are cached into it
    # as they are built. What a killed server left there goes now.
    uploads = guard.UploadFolder.default()
    uploads.claim()
    with gr.Blocks(title="CNN Zoo Lab", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# CNN Zoo Lab\n"
            "Pick a classic CNN, give it an image, and see what it predicts, what every "
            "parallel branch saw, which pixels mattered, and what it costs."
        )
        with gr.Row(elem_classes=["cz-stack"]):
            status = gr.Markdown(elem_classes=["cz-note"])
            presenter = gr.Checkbox(label="Presenter mode (large text, high contrast)", value=False, scale=0,
                                    min_width=220, elem_id="presenter-toggle")
        # Kept in this browser: a projector's page reloaded stays in presenter mode.
        presenter_saved = gr.BrowserState(False, storage_key="cnndemo-presenter")
        presenter.input(None, [presenter], [presenter], js=PRESENTER_JS, api_visibility="private").then(
            lambda on: bool(on), [presenter], [presenter_saved], api_visibility="private", queue=False)
        # The page's look: written by the browser into a hidden box, kept per session in a State, so
        # handlers draw for it without it being a parameter of any API endpoint.
        look_box = gr.Textbox("light", visible="hidden", elem_id="cz-look", label="page look", max_length=40)
        look = session_state("light")
        look_box.change(lambda text: str(Look.parse(text)), [look_box], [look], api_visibility="private", queue=False)
        demo.load(lambda saved: bool(saved), [presenter_saved], [presenter], api_visibility="private",
                  queue=False).then(None, [presenter], [presenter], js=PRESENTER_JS, api_visibility="private").then(
            None, None, [look_box], js=LOOK_JS, api_visibility="private")
        classroom = room.build()
        start = start_panel.build()
        checkpoint = session_state(None)
        # Wrapped onto two lines on a phone rather than hidden behind a "more" menu: the Start panel
        # sends a class to the Digits tab by name.
        with gr.Tabs(overflow_behavior="wrap") as tabs:
            with gr.Tab("Explore", id="explore") as explore_tab:
                ex = explore.build(checkpoint, look, first=room.first_publish(classroom))
                attributions.compact_panel(ex, checkpoint, look)
            with gr.Tab("Attributions", id="attributions") as attr_tab:
                att = attributions.build(checkpoint, look, first=room.first_publish_attributions(classroom, ex))
            with gr.Tab("Compare", id="compare") as compare_tab:
                cmp = compare.build()
            with gr.Tab("Digits", id="digits") as digits_tab:
                digits.build(look)
        start_used = gr.BrowserState(False, storage_key="cnndemo-start-used")
        ticker = gr.Timer(2.0, active=False)
        # The panel starts shown; page load only ever hides it (a late answer never brings back a
        # panel that "hide" closed meanwhile).
        demo.load(lambda used: gr.Column(visible=False) if used else gr.skip(), [start_used], [start["panel"]],
                  api_visibility="private", queue=False)
        # The page's components by name, for the handlers that fill several of them.
        page = {**start, "model": ex["model"], "image": ex["image"], "tabs": tabs, "start_used": start_used,
                "status": status, "ticker": ticker}
        refresh, refreshed = by_name(start_panel.refresh, page, ("steps", "go"))
        demo.load(refresh, None, refreshed, api_visibility="private", queue=False)
        go, gone = by_name(start_panel.go, page, ("model", "tabs"))
        first_image, first_image_outputs = by_name(start_panel.image, page, ("image",))
        start["go"].click(go, [ex["model"]], gone, api_visibility="private", queue=False).then(
            first_image, None, first_image_outputs, api_visibility="private", queue=False).then(
            None, js=start_panel.SCROLL_TO_RESULT_JS, api_visibility="private")
        # Used to the end (a branch knocked out) or dismissed: the panel goes, for good in this browser.
        hide, hidden = by_name(lambda: {"panel": gr.Column(visible=False), "start_used": True}, page,
                               ("panel", "start_used"))
        gr.on([ex["ablate"].click, start["close"].click], hide, None, hidden, api_visibility="private", queue=False)
        # One image across Explore and Attributions: the tab opened shows the image last given.
        # (A page following a class is given the view's image by the class: see room.switch_tab.)
        attr_tab.select(carry_image, [ex["image"], att["image"], classroom["member"]], [att["image"]],
                        api_visibility="private", queue=False)
        explore_tab.select(carry_image, [att["image"], ex["image"], classroom["member"]], [ex["image"]],
                           api_visibility="private", queue=False)
        # The Sketchpad opens with no tool selected; pick the brush so a class can draw at once.
        digits_tab.select(None, None, None, js=digits.SELECT_BRUSH_JS, api_visibility="private")
        # While weights are fetched (or a lesson, or the exemplars, prepared) in the background, the status line
        # refreshes itself.
        line, line_outputs = by_name(weights_status, page, ("status", "ticker"))
        demo.load(line, None, line_outputs, api_visibility="private")
        # Each refresh shows no progress of its own: the line would flicker every two seconds.
        ticker.tick(line, None, line_outputs, api_visibility="private", show_progress="hidden")
        # A ranking of the folder of exemplars that Explore started shows in the header line too.
        ex["lookfor_timer"].tick(line, None, line_outputs, api_visibility="private", show_progress="hidden")
        room.wire(classroom, {"demo": demo, "tabs": tabs, "explore": ex, "attributions": att, "tab_explore": explore_tab,
                              "tab_attributions": attr_tab, "tab_compare": compare_tab, "tab_digits": digits_tab},
                  checkpoint, look)
        load, loaded = by_name(compare.on_load, cmp, compare.LOADED)
        demo.load(load, None, loaded, api_visibility="private")
        # Drawn for the model on screen, twice: the first pass (the first one on this server traces the
        # architecture, ~1 s) can land after a student has already picked another model; the second
        # reads the model again once the first is done, from the caches, and draws that one.
        load_explore, loaded_explore = by_name(explore.on_load, ex, ("arch", "diagram"))
        demo.load(load_explore, [ex["model"]], loaded_explore, api_visibility="private", queue=False).then(
            load_explore, [ex["model"]], loaded_explore, api_visibility="private", queue=False)
    # Classroom tuning (README): light events at once (the heavy lane sets its own limit), and how
    # long the queue may grow before new requests are turned away.
    demo.queue(max_size=settings.get().queue_max, default_concurrency_limit=settings.get().workers)
    guard.install_queue_limits(demo, {LIGHT, HEAVY_LANE}, HEAVY_LANE)
    guard.install_disconnect_cancel(demo)
    guard.install_session_context(demo)
    guard.install_input_checks(demo)
    apitypes.install(demo)
    demo.cnndemo_uploads = uploads
    return demo


def build_app() -> gr.Blocks:
    """The app's Blocks as ``python app.py`` serves it: Gradio's cache kept in a Space's
    persistent bucket when it has one. No model is loaded and the network is not touched."""
    home = weights_prefetch.persistent_torch_home()
    if home is not None:  # a Space's /data bucket survives restarts; its own disk does not
        settings.export_default("TORCH_HOME", str(home))
    return build_demo()


def serve(args, demo: gr.Blocks | None = None) -> int:
    """Launch the app for parsed options (``cnndemo.serve``: ``python app.py`` and ``cnndemo
    serve``); returns the exit status once the server stops (2: a lesson that cannot be read)."""
    # The app's own notes (a lesson warmed, an upload folder emptied, work stopped for a closed
    # tab, a failed weight fetch) go to the console; other libraries keep their own levels.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s cnndemo: %(message)s", "%H:%M:%S"))
    logging.getLogger("cnndemo").addHandler(handler)
    logging.getLogger("cnndemo").setLevel(logging.INFO)
    if args.offline:
        settings.configure(offline=True)
    if args.device:
        settings.configure(device=args.device)
    lesson = None
    if args.warm:
        try:
            lesson = load_lesson(args.warm)
        except (OSError, ValueError) as e:
            print(f"error: --warm {args.warm}: {e}", file=sys.stderr)
            return 2
    if args.exemplars:
        try:
            image_files(args.exemplars)
        except UserError as e:
            print(f"error: --exemplars {args.exemplars}: {e}", file=sys.stderr)
            return 2
        settings.configure(exemplars=str(Path(args.exemplars).resolve()))
    launch(demo if demo is not None else build_app(), host=args.host, port=args.port, share=args.share, mcp=args.mcp,
           prefetch=args.prefetch, warm=(args.warm, lesson) if args.warm else None)
    return 0


def carry_image(source: str | None, current: str | None, member: dict | None = None):
    """The other tab's image, unless there is none, it is already this one, or the page follows
    a class (whose view says which image each tab shows)."""
    if room.following(member) or not source or source == current:
        return gr.skip()
    return source


def launch(demo: gr.Blocks | None = None, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           *, mcp: bool = False, prefetch: bool = False, warm: tuple[str, list[dict]] | None = None,
           **kwargs) -> gr.Blocks:
    """Launch ``demo`` (built here if None) with the project's safety settings; return it.

    ``prefetch``: fetch the published weights in the background (a Space's disk is
    ephemeral). ``mcp``: also serve every named endpoint as an MCP tool. ``warm``: (name,
    steps) of a lesson to compute once the server answers (``ui.warm``).
    """
    from starlette.middleware import Middleware

    tune_allocator()
    configure_threads()
    demo = demo or build_demo()
    uploads = demo.cnndemo_uploads
    uploads.start_sweeper()
    app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
    app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), Middleware(guard.ClientGuard, uploads=uploads)]
    if prefetch and not is_offline():
        weights_prefetch.start()
    folder = app_index(settings.get().exemplars)
    if folder is not None:  # the first network a student sees is ranked first
        folder.start_with(DEFAULT_MODEL)
    if warm is not None:
        local = "127.0.0.1" if host in ("0.0.0.0", "::", "", None) else host
        warm_lesson.start(*warm, f"http://{local}:{port}/")
    if mcp:
        try:
            import mcp as _mcp  # noqa: F401  (gradio's MCP server needs it)
        except ImportError:
            raise SystemExit("--mcp needs Gradio's MCP extra: pip install \"gradio[mcp]==6.31.0\"") from None
        kwargs["mcp_server"] = True
    block = not kwargs.pop("prevent_thread_lock", False)
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        # Uploads of any kind (images are capped again by cnndemo.images). Checkpoints of every zoo
        # model but VGG-16 (528 MB: use the CLI's --weights) fit under the default.
        max_file_size=settings.get().max_upload,
        max_threads=settings.get().max_threads,
        allowed_paths=[str(EXAMPLES_DIR)],
        css=CSS,
        theme=gr.themes.Soft(),
        ssr_mode=False,
        footer_links=["api", "settings"],
        state_session_capacity=settings.get().sessions,
        app_kwargs=app_kwargs,
        prevent_thread_lock=True,
        **kwargs,
    )
    # Ctrl-C: uvicorn waits for open event streams (every page, every client) until Gradio stops
    # waiting, 5 s later; a second is enough for a reply in flight. Then the work that still runs
    # stops at its next check, instead of the process waiting for it to finish.
    if demo.server is not None:
        demo.server.config.timeout_graceful_shutdown = 1
    if block:
        demo.block_thread()
        cancel.stop_all()
    return demo


__all__ = ["build_demo", "launch"]
