"""Teaching a class: a room the class follows, polls, and links that open a view.

The teacher's page publishes its view (tab, model, image, block, branch, attribution method
and settings, and whether it ran Explain or a knock-out) whenever one of them changes. Every
page in a class holds a watch of the room (one streaming event, which looks at the room in
memory ten times a second and tells the page within 0.1 s when the view, the poll or the
number following changed) and, as a fallback, a slow ``gr.Timer`` (a server restart or a lost
watch is noticed within ``FALLBACK_S``). When the view's version moved on, a following page
sets its own controls to the teacher's and draws the results, which come from the shared
result caches: computed once for the room, never once per student. The room itself is
``cnndemo.rooms`` (in memory, bounded, secret-checked).

A link (``?tab=explore&model=googlenet&image=example:cat.jpg&block=inception4c``) opens a
view the same way, once, when the page loads; ``?class=K7PM3Q`` joins a class.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import html
import json
import threading
import time
from collections.abc import AsyncIterator

import anyio
import gradio as gr
import pandas as pd

from .. import cancel
from ..attribution import knobs
from ..branches import explore as explore_image
from ..rooms import SHELF, TABS, RoomError, View, branch_poll, normalise_code, prediction_poll, registry, text_poll
from ..zoo import ZOO
from . import attributions, explore
from .common import LIGHT, as_gr_error, by_name, get_model, heavy_lane, session_state, user_errors
from .guard import client_address

POLL_KINDS = {"What will the model say?": "predict", "Which branch carries most of this block?": "branch",
              "Free text": "text"}
# Copies the link the server wrote (a query string) as a full address of this page.
LINK_JS = "(q) => q ? window.location.origin + window.location.pathname + q : ''"
STUDENT_FIELDS = ("tabs", "ex_model", "ex_image", "ex_block", "ex_branch", "ex_mode", "ex_diagram", "at_model", "at_image",
                  "at_method", "at_target", "at_layer", *(f"knob_{k}" for k in knobs()))


def page_view(tab, ex_model, ex_image, ex_block, ex_branch, ex_mode, ex_diagram, at_model, at_image, at_method,
              at_target, at_layer, *knob_values) -> View:
    """The view a page shows now, from its controls (an uploaded image is put on the shelf). A
    branch is part of it once clicked in the diagram (the one the diagram shows selected; the
    ablation's branch always has a value)."""
    tab = tab if tab in TABS else "explore"
    if tab == "attributions":
        return View(tab=tab, model=at_model, image=SHELF.put(at_image), method=at_method or "ig",
                    target=str(at_target or ""), layer=str(at_layer or ""),
                    knobs=tuple(sorted((k, v) for k, v in zip(knobs(), knob_values) if v is not None)))
    spec = ZOO[ex_model]
    block = explore.valid_block(ex_model, ex_block)
    clicked = explore.selected_branch(ex_diagram)
    return View(tab=tab, model=ex_model, image=SHELF.put(ex_image), block=block if block != spec.default_block else "",
                branch=clicked if clicked in explore.branch_choices(ex_model, block) else "")


def _attr_fields(v: View) -> tuple:
    return (v.model, v.image, v.method, v.target, v.layer, v.knobs)


def _explore_fields(v: View) -> tuple:
    return (v.model, v.image, v.block, v.branch)


def carried(view: View, before: View | None, *, explain: bool | None = None, ablate: str | None = None) -> View:
    """``view`` with Explain's and the knock-out's flags: set by their buttons, kept while what
    they were run on stays the same, dropped when it changes."""
    if explain is None:
        explain = bool(before and before.explain and _attr_fields(before) == _attr_fields(view))
    if ablate is None:
        ablate = before.ablate if before and before.ablate and _explore_fields(before) == _explore_fields(view) else ""
    return view.changed(explain=explain, ablate=ablate if view.tab != "attributions" else "")


def apply_view(view: View, now: dict | None = None) -> dict:
    """The control updates that make a page that shows ``view.tab`` show ``view`` (the tab is
    switched a step before: ``switch_tab``). ``now``: the page's controls by name
    (``STUDENT_FIELDS``); only those that differ are set, because setting a control fires its
    change events (a new image empties every result on the page). Only the shown tab's
    controls are set: Compare and Digits take nothing from a view."""
    now = dict(now or {})
    out: dict = {}

    def differs(name, value) -> bool:
        return name not in now or now[name] != value

    if view.tab not in ("explore", "attributions"):
        return out
    attr = view.tab == "attributions"
    model, image_name = ("at_model", "at_image") if attr else ("ex_model", "ex_image")
    if differs(model, view.model):
        out[model] = view.model
    if image_name not in now or SHELF.ref(now[image_name]) != view.image:
        image = SHELF.path(view.image)
        out[image_name] = str(image) if image else None
    if attr:
        spec = ZOO[view.model]
        wanted = {"at_method": view.method, "at_target": view.target or None,
                  "at_layer": view.layer or spec.gradcam_layer,
                  **{f"knob_{name}": dict(view.knobs).get(name, k.default) for name, k in knobs().items()}}
        for name, value in wanted.items():
            if differs(name, value):
                out[name] = gr.Dropdown(value=value) if name in ("at_target", "at_layer") else value
        return out
    block = explore.valid_block(view.model, view.block)
    branches = explore.branch_choices(view.model, block)
    if model in out or differs("ex_block", block):
        out["ex_block"] = gr.Dropdown(choices=explore.block_choices(view.model), value=block)
    branch = view.branch or branches[0]
    if "ex_block" in out or differs("ex_branch", branch):
        out["ex_branch"] = gr.Dropdown(choices=branches, value=branch, interactive=ZOO[view.model].has_branches)
    if view.ablate and differs("ex_mode", view.ablate):
        out["ex_mode"] = view.ablate
    return out


# ---------------------------------------------------------------------------- the watch of a room


WATCH_TICK_S = 0.1  # how often a watch looks at its room (in memory, on the event loop)
WATCH_EXTRA = 5  # watches a room may have beyond its member cap (the teacher's, reloads)
_WATCHES: collections.Counter = collections.Counter()  # room code -> open watches
FALLBACK_S = 5.0  # the page's own look at the room when its watch is silent


async def room_changes(code: str, member: str | None = None, secret: str | None = None) -> AsyncIterator[dict]:
    """The room's state (``Rooms.state``) at once, and again whenever its view, its poll or
    the number following changed; then ``{"ended": why}`` once the room is gone or the page
    is no longer in it. Bounded per room: ``max_members + WATCH_EXTRA`` watches."""
    rooms = registry()
    st = rooms.state(code, member=member or None, secret=secret or None)  # a wrong code or member fails here
    code = st["code"]
    if _WATCHES[code] >= rooms.max_members + WATCH_EXTRA:
        raise RoomError(f"Class {code} already has {_WATCHES[code]} pages watching it, its limit.")
    _WATCHES[code] += 1
    try:
        seen = None
        while True:
            key = (st["version"], json.dumps(st["poll"], sort_keys=True, default=str), st["following"])
            if key != seen:
                yield st
                seen = key
            await asyncio.sleep(WATCH_TICK_S)
            try:
                st = rooms.state(code, member=member or None, secret=secret or None)
            except RoomError as e:
                yield {"code": code, "ended": str(e)}
                return
    finally:
        _WATCHES[code] -= 1
        if _WATCHES[code] <= 0:
            del _WATCHES[code]
            drop_room_results(code, "Every page left the class before these results were ready.")


# ---------------------------------------------------------------------------- what the page shows


def banner(member: dict, st: dict | None = None, note: str = "") -> str:
    """The class line: the code large (it is read off the projector) with the join link for the
    teacher; whether the page follows, for a student."""
    if not member.get("code"):
        return f"<div class='cz-room-note'>{html.escape(note)}</div>" if note else ""
    code = html.escape(member["code"])
    if member.get("role") == "teacher":
        n = st["following"] if st else 0
        return (f"<div class='cz-room' role='status'><div class='cz-room-label'>Class code</div>"
                f"<div class='cz-room-code' id='room-code'>{code}</div>"
                f"<div class='cz-room-how'>Students: open this page with <b id='room-join-link'>?class={code}</b> "
                f"at the end of its address, or type the code under <i>Teach a class</i>.</div>"
                f"<div class='cz-room-count' id='room-count'>{n} following</div></div>")
    state = "following the teacher" if member.get("following", True) else "exploring on your own"
    return (f"<div class='cz-room cz-room-student' role='status'>Class <b id='room-code'>{code}</b>: "
            f"<span id='room-follow'>{state}</span>{(' · ' + html.escape(note)) if note else ''}</div>")


def poll_outputs(member: dict, poll: dict | None) -> dict:
    """The poll as this page shows it: the question and a way to answer (a student who has not),
    the live counts (the teacher), the counts and the truth (everyone, once revealed)."""
    teacher = member.get("role") == "teacher"
    if not poll:
        return {"poll_group": gr.Group(visible=False), "poll_md": "", "poll_truth": ""}
    can_answer = not teacher and not poll["answered"] and not poll["revealed"]
    status = ("revealed" if poll["revealed"] else
              f"{poll['n']} answered" if teacher else "answered: wait for the reveal" if poll["answered"] else "open")
    counts = poll.get("counts")
    return {
        "poll_group": gr.Group(visible=True),
        "poll_md": f"**Poll {poll['id']}:** {html.escape(poll['question'])}  \n*{status}*",
        "poll_choice": gr.Radio(choices=poll["options"], value=None, visible=can_answer and bool(poll["options"])),
        "poll_text": gr.Textbox(visible=can_answer and not poll["options"], value=""),
        "poll_send": gr.Button(visible=can_answer),
        "poll_plot": (pd.DataFrame(counts or [], columns=["answer", "count"]) if counts is not None else None),
        "poll_truth": poll.get("truth", "") if poll["revealed"] else "",
    }


def following(member: dict | None) -> bool:
    """Whether a page (its ``member`` state) is a student's that follows the teacher."""
    return bool(member) and member.get("role") == "student" and bool(member.get("code")) and \
        member.get("following", True)


def _visibility(member: dict) -> dict:
    role = member.get("role")
    return {"teacher_row": gr.Row(visible=role == "teacher"), "student_row": gr.Row(visible=role == "student"),
            "timer": gr.Timer(active=bool(member.get("code")))}


def refresh(member: dict | None, applied: int | None, shown: list | None = None, behind: int | None = None, *,
            fallback: bool = False) -> dict:
    """One look at the room: the class line, the poll, and (for a following student whose view
    is behind ``applied``; None: leave the view alone) the teacher's view to apply. What did not
    change is skipped. ``fallback``: the slow timer's look, which applies a view only when it
    found the page behind on its previous look too (``behind``), i.e. the watch did not (a
    view applied twice at once would set the controls twice)."""
    member = dict(member or {})
    if not member.get("code"):
        return {"timer": gr.Timer(active=False)}
    try:
        st = registry().state(member["code"], member=member.get("member"), secret=member.get("secret"))
    except RoomError as e:
        return ended(member, str(e))
    out = {"banner": banner(member, st), **poll_outputs(member, st["poll"])}
    poll = st["poll"]
    # What is drawn (skipped when unchanged), and the answer widgets apart: they are sent again
    # only for a new poll, an answer or a reveal, or a half-made choice would be wiped whenever
    # another student answers.
    key = [repr((out["banner"], poll)), repr(poll and (poll["id"], poll["answered"], poll["revealed"]))]
    before = shown if isinstance(shown, list) and len(shown) == 2 else [None, None]
    if key[0] == before[0]:
        out = {}
    else:
        out["shown"] = key
        if key[1] == before[1]:
            for name in ("poll_group", "poll_choice", "poll_text", "poll_send"):
                out.pop(name, None)
    if following(member) and applied is not None and st["version"] != applied:
        if fallback and behind != st["version"]:
            out["behind"] = st["version"]
        else:
            out.update(to_apply(st["view"], st["version"]))
    return out


async def page_watch(member: dict | None):
    """A page's watch of its class (``room_changes``): a new ``room_signal`` whenever the room
    changed, on which the page looks (``refresh``); the last one when the class is gone."""
    member = dict(member or {})
    if not member.get("code"):
        return
    try:
        async for _ in room_changes(member["code"], member.get("member"), member.get("secret")):
            yield {"room_signal": time.monotonic()}
    except RoomError:  # gone already: the page's look says so
        yield {"room_signal": time.monotonic()}


def to_apply(view: View, version: int | None = None) -> dict:
    """A view for ``apply_controls`` (set off by the new ``view_version``: the controls are
    outputs of those steps alone, because a visible control that is an output of an event fires
    its change events even when the event leaves it as it is, and the tick runs every second).
    ``applying`` marks the application: the view's results are delivered in one step
    (``explore.class_delivers``)."""
    stamp = time.monotonic()
    out = {"view_state": view.to_json(), "view_version": stamp, "applying": stamp}
    if version is not None:
        out["applied"] = version
    return out


def switch_tab(view: View) -> dict:
    """The first step of applying ``view`` when the page shows another tab: the tab alone. The
    next step sets the controls once the tab is shown. An image is never set while its tab is
    hidden (nor in the same step that hides or shows it): Gradio then fires its change events
    again and again once the tab is shown (every event that reads the image sets it anew), and
    the page spends the lesson re-clearing its results."""
    return {"tabs": gr.Tabs(selected=view.tab)}


# A view is applied in up to three steps: the tab (when the page shows another), then (once it
# is shown) the image, then the rest. Each step sets the first of these that differs, so a view
# without a new tab or image is set in the first step. (Sent at once, or the model before the
# image while events that read the image still ran, a new image's change events fired again and
# again.) The view's results are drawn after the second step (``follow_explore``): by then the
# step that set a new image or model has emptied the old results.
APPLY_STEPS = 3
# Before the second step: wait (up to 5 s) until the tab's controls are on the page.
# A tab's controls are first put on the page when it is first shown, which can take longer than
# the server takes to answer; a value sent before that is kept and set later, and such an image
# fires its change events again and again.
SHOWN_JS = """async (view, ...rest) => {
  const probes = {explore: ['#explore-image', '#explore-model'], attributions: ['#attr-image', '#attr-model']};
  const wanted = probes[(view || {}).tab] || [];
  const ready = () => wanted.every((sel) => document.querySelector(sel));
  for (let i = 0; i < 100 && !ready(); i++) await new Promise((r) => setTimeout(r, 50));
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  return [view, ...rest];
}"""


def apply_controls(view_json: dict | None, tab: str, *controls, step: int = 0) -> dict:
    """Step ``step`` of applying a view (``APPLY_STEPS``): the tab (the first step only), else
    the image, else every other control that shows something else. The step that sets an
    Explore view's new image or model (the first or second: the results are drawn after it)
    also empties its results (``explore.results_pending``); the page's own chains skip while
    the class delivers them."""
    if not view_json:
        return {}
    view = View.parse(view_json)
    if step == 0 and tab != view.tab:
        return switch_tab(view)
    now = dict(zip(STUDENT_FIELDS[1:], controls), tab=view.tab)
    out = apply_view(view, now)
    image = {k: v for k, v in out.items() if k.endswith("_image")}
    setting = image or out
    if step < 2 and view.tab == "explore" and ("ex_image" in out or "ex_model" in out):
        shown = image.get("ex_image", now.get("ex_image"))
        setting.update(explore.results_pending(view.model, view.block, shown, new_model=False))
    elif step < 2 and view.tab == "explore" and "ex_block" in setting:
        # A new block: its maps emptied and its plots' order and colours set before its values
        # come (as the teacher's own block.input does; a value sent with them is not drawn).
        block = explore.valid_block(view.model, view.block)
        setting.update(explore.branches_pending(view.model, block, now.get("ex_image")))
    return setting


def ended(member: dict, why: str) -> dict:
    """The page leaves a class that is gone (ended, idle, or a server restart), saying so."""
    return {"member": {}, "banner": banner({}, note=f"Class {member.get('code', '')} has ended. {why}"),
            "poll_group": gr.Group(visible=False), "shown": None, "applying": None, **_visibility({})}


# ---------------------------------------------------------------------------- the buttons


def start_class(member, *controls):
    view = page_view(*controls)
    code, secret = registry().open(view)
    _leave(dict(member or {}))
    member = {"role": "teacher", "code": code, "secret": secret}
    return {"member": member, **refresh(member, 0), **_visibility(member), "tools": gr.Accordion(open=False)}


def _leave(member: dict) -> None:
    """The page leaves the class it was in (a teacher's ends it): its watch ends with it."""
    if member.get("role") == "teacher":
        try:
            registry().close(member["code"], member["secret"])
        except RoomError:
            pass
    elif member.get("code"):
        registry().leave(member["code"], member.get("member"))


def end_class(member):
    member = dict(member or {})
    _leave(member)
    return ended(member, "You ended it.") if member.get("role") == "teacher" else ended(member, "You left it.")


def join_class(code, member, request: gr.Request):
    """A student joins with the code (a rejoin keeps the member id it held)."""
    member = dict(member or {})
    same = member.get("code") == normalise_code(code)
    code, ident = registry().join(code, _client(request), member=member.get("member") if same else None)
    if not same:
        _leave(member)
    member = {"role": "student", "code": code, "member": ident, "following": True}
    return {"member": member, **refresh(member, 0), **_visibility(member), "tools": gr.Accordion(open=False)}


def _client(request: gr.Request | None) -> str | None:
    """The address wrong codes count against (None on loopback: ``guard.client_address``)."""
    raw = getattr(request, "request", None)
    return client_address(raw) if raw is not None else None


def break_away(member):
    member = {**(member or {}), "following": False}
    return {"member": member, "banner": banner(member), "shown": None, "applying": None}


def catch_up(member):
    member = {**(member or {}), "following": True}
    # Everything is set again: the page may have wandered anywhere on its own.
    return {"member": member, **refresh(member, 0)}


def make_poll(kind: str, question: str, checkpoint: dict | None, seed: str):
    """The function that builds a poll of ``kind`` for the room's view when the teacher opens it."""
    def make(ident: int, view: View):
        if kind == "text":
            return text_poll(ident, question)
        image = SHELF.path(view.image)
        if image is None:
            raise RoomError("Show the class an image first: the poll asks about this image.")
        lm = get_model(view.model, checkpoint)
        ex = explore_image(str(image), lm)  # the shared exploration: the class's own pages use it too
        if kind == "branch":
            if not lm.spec.has_branches:
                raise RoomError(f"{lm.spec.name} has no parallel branches to ask about.")
            block = explore.valid_block(view.model, view.block)
            return branch_poll(ident, block, [(b.info.name, b.share) for b in ex.blocks[block].branches])
        top = [(t.label, t.prob) for t in ex.prediction.top]
        return prediction_poll(ident, lm.spec.name, top, list(lm.spec.labels()), seed=seed)

    return make


def open_poll(member, kind_label, question, checkpoint):
    member = dict(member or {})
    make = make_poll(POLL_KINDS.get(kind_label, "predict"), question, checkpoint, member.get("code", ""))
    registry().open_poll(member.get("code", ""), member.get("secret", ""), make)
    return refresh(member, 0)


def reveal_poll(member):
    member = dict(member or {})
    registry().reveal(member.get("code", ""), member.get("secret", ""))
    return refresh(member, 0)


def end_poll(member):
    member = dict(member or {})
    registry().end_poll(member.get("code", ""), member.get("secret", ""))
    return refresh(member, 0)


def send_answer(member, choice, text):
    member = dict(member or {})
    registry().answer(member.get("code", ""), member.get("member", ""), choice or text or "")
    return refresh(member, None)


def publish(member, *controls, explain: bool | None = None, ablate: str | None = None,
            knocked: str | None = None) -> None:
    """The teacher's page: its view becomes the room's (nothing for any other page). A
    knock-out (``knocked``, the branch it removed) is shown to the class with that branch
    selected, whether or not the teacher clicked it in the diagram."""
    member = member or {}
    if member.get("role") != "teacher":
        return
    try:
        rooms = registry()
        before = rooms.state(member["code"], secret=member["secret"])["view"]
        view = page_view(*controls)
        if knocked and knocked in explore.branch_choices(view.model, explore.valid_block(view.model, view.block)):
            view = view.changed(branch=knocked)
        rooms.publish(member["code"], member["secret"], carried(view, before, explain=explain, ablate=ablate))
    except (RoomError, OSError):  # the class ended (the next tick says so), or the upload went
        pass


def publish_explore(member, tab, model, image, block, diagram, knocked: str | None = None, *,
                    ablate: str | None = None) -> None:
    """``publish`` for a change on the Explore tab (or a knock-out), from the controls that
    make its view."""
    if tab == "explore":
        publish(member, tab, model, image, block, None, None, diagram, *[None] * (len(STUDENT_FIELDS) - 7),
                ablate=ablate, knocked=knocked)


def publish_new_explore(member, tab, model, image, block) -> None:
    """``publish_explore`` for a new model, image or block: no branch is selected in it."""
    publish_explore(member, tab, model, image, block, None)


def first_publish(c: dict):
    """For ``explore.build(first=)``: the teacher's page publishes an Explore change (and a
    knock-out) before the tab's own events for it are sent (the browser sends a change's events
    in the order they were registered: a new image reached the class 0.9 s later when its
    publish came after the tab's seven)."""
    def wire_first(ex: dict) -> None:
        view = [c["member"], c["tab"], ex["model"], ex["image"], ex["block"], ex["diagram"]]
        # A new model, image or block is published with no branch: the page draws the diagram
        # again with nothing selected (``explore.diagram_reset``). Published with the diagram as
        # it still was (its change events come twice for a new image), the class was shown the
        # old branch for a moment, and every page applied the view twice.
        gr.on([ex["model"].change, ex["image"].change, ex["block"].change], publish_new_explore, view[:-1], None,
              queue=False, trigger_mode="always_last", api_visibility="private")
        ex["diagram"].change(publish_explore, view, None, queue=False, trigger_mode="always_last",
                             api_visibility="private")
        ex["ablate"].click(lambda *a: publish_explore(*a[:-1], ablate=a[-1] or "zero"),
                           [*view, ex["branch"], ex["mode"]], None, queue=False, api_visibility="private")
    return wire_first


def _controls(c: dict, ex: dict, at: dict) -> list:
    """What ``page_view`` reads, in its order."""
    return [c["tab"], ex["model"], ex["image"], ex["block"], ex["branch"], ex["mode"], ex["diagram"], at["model"],
            at["image"], at["method"], at["target"], at["layer"], *at["knobs"]]


def first_publish_attributions(c: dict, ex: dict):
    """For ``attributions.build(first=)``: the same for the Attributions tab. Explain's publish
    went out only once the teacher's own Explain had finished (the browser sent the click's
    next event after the queued one), so the class started 10 s late."""
    def wire_first(at: dict) -> None:
        controls = _controls(c, ex, at)
        gr.on([at["model"].change, at["image"].change, at["method"].change, at["target"].change, at["layer"].change,
               *(s.release for s in at["knobs"])],
              publish, [c["member"], *controls], None, queue=False, trigger_mode="always_last",
              api_visibility="private")
        at["run"].click(lambda m, *a: publish(m, *a, explain=True), [c["member"], *controls], None, queue=False,
                        api_visibility="private")
    return wire_first


def make_link(*controls):
    """A link to the view this page shows now (an upload is held on the shelf for it)."""
    view = page_view(*controls)
    return {"link_query": view.query()}


def open_page(member, request: gr.Request):
    """When a page opens: rejoin its class (a reload), join the one its link names
    (``?class=``), or show the view its link describes."""
    member = dict(member or {})
    params = dict(request.query_params) if request is not None else {}
    code = params.get("class")
    if code:
        try:
            return join_class(code, member, request)
        except RoomError as e:
            return {"banner": banner({}, note=str(e)), "member": {}}
    if member.get("code"):
        return {**refresh(member, 0), **_visibility(member)}
    if any(k in params for k in View.LINK):
        try:
            view = View.parse(params)
        except RoomError as e:
            return {"banner": banner({}, note=f"This link does not open a view: {e}")}
        return to_apply(view)
    return {}


# ---------------------------------------------------------------------------- results for a followed view


def follow_explore(view_json: dict | None, checkpoint, look, top5=None):
    """A followed (or linked) Explore view's results in one step, each from the shared caches:
    the top-5 (unless the page shows it: ``top5``, emptied by the step that set a new image or
    model), the block's maps, the diagram with the branch clicked, and the knock-out. (The
    page's own chains skip a new image or model meanwhile: ``explore.class_delivers``.)"""
    if not view_json or view_json.get("tab") == "attributions":
        return {}
    view = View.parse(view_json)
    image = SHELF.path(view.image)
    if image is None:
        return {}
    image = str(image)
    block = explore.valid_block(view.model, view.block)
    out = {} if top5 else dict(explore.prediction(image, view.model, checkpoint, progress=None))
    out.update(explore.branches_result(image, view.model, block, checkpoint, look))
    # The diagram of this block, with the clicked branch large (or none clicked).
    out.update(explore.branch_view(image, view.model, block, view.branch or None, checkpoint, look))
    out.pop("branch", None)
    if view.ablate and view.branch and ZOO[view.model].has_branches:
        out.update(explore.ablation_result(image, view.model, block, view.branch, view.ablate, checkpoint))
    return out


def follow_attribution(view_json: dict | None, checkpoint, look, image_now=None, model_now=None, method_now=None,
                       target_now=None, layer_now=None, progress=gr.Progress()):
    """A followed view's Explain result, from the shared results (the teacher's computation);
    marked as made for the page's controls (``*_now``, just set to the view's)."""
    view = View.parse(view_json) if view_json else None
    image = SHELF.path(view.image) if view else None
    if view is None or view.tab != "attributions" or not view.explain or image is None:
        yield {}  # nothing to show (a generator that yields nothing leaves its outputs pending)
        return
    yield from attributions.attribute_steps(str(image), view.model, view.method, view.target or None,
                                            view.layer or None, checkpoint, look, progress, **dict(view.knobs))
    yield {"shown": attributions.shown_for(image_now, model_now, method_now, target_now, layer_now)}


# ---------------------------------------------------------------------------- layout and wiring


def build() -> dict:
    """The class line (shown in a class), and the tools: start or join a class, link a view, polls."""
    c: dict = {}
    c["member"] = gr.BrowserState({}, storage_key="cnndemo-class")
    c["applied"] = session_state(0)  # the room's version this page follows
    c["tab"] = session_state("explore")  # the tab shown (set by the tabs' select events)
    c["shown"] = session_state(None)
    c["view_version"] = gr.Number(0, visible="hidden", elem_id="room-version", label="view version")
    c["link_query"] = gr.Textbox("", visible="hidden", label="link query", max_length=4000)
    c["timer"] = gr.Timer(FALLBACK_S, active=False)
    c["behind"] = session_state(None)  # the version the timer's last look found unapplied
    c["room_signal"] = gr.Number(0, visible="hidden", elem_id="room-signal", label="room changed")
    c["banner"] = gr.HTML("", elem_id="room-banner", js_on_load=None)
    with gr.Row(visible=False, elem_id="room-student") as c["student_row"]:
        c["own"] = gr.Button("Explore on my own", size="sm", elem_id="room-own")
        c["catch"] = gr.Button("Catch up with the teacher", size="sm", variant="primary", elem_id="room-catch")
        c["leave"] = gr.Button("Leave the class", size="sm", elem_id="room-leave")
    with gr.Row(visible=False, elem_id="room-teacher") as c["teacher_row"]:
        c["poll_kind"] = gr.Dropdown(list(POLL_KINDS), value="What will the model say?", label="Poll", scale=2,
                                     elem_id="room-poll-kind")
        c["poll_question"] = gr.Textbox(label="Question (free text polls)", max_length=200, scale=2)
        c["poll_open"] = gr.Button("Open poll", size="sm", elem_id="room-poll-open")
        c["poll_reveal"] = gr.Button("Reveal", size="sm", variant="primary", elem_id="room-poll-reveal")
        c["poll_end"] = gr.Button("Close poll", size="sm")
        c["end"] = gr.Button("End class", size="sm", variant="stop", elem_id="room-end")
    with gr.Group(visible=False, elem_id="room-poll") as c["poll_group"]:
        c["poll_md"] = gr.Markdown(elem_id="room-poll-question")
        c["poll_choice"] = gr.Radio([], label="Your answer", elem_id="room-poll-choice", visible=False)
        c["poll_choice"].choices_set_at_run_time = True  # guard.check_payload: the poll checks the answer
        c["poll_text"] = gr.Textbox(label="Your answer", max_length=60, visible=False, elem_id="room-poll-text")
        c["poll_send"] = gr.Button("Send my answer", visible=False, elem_id="room-poll-send")
        c["poll_plot"] = gr.BarPlot(x="answer", y="count", label="answers", elem_id="room-poll-plot", height=240,
                                    sort=None, x_label_angle=-40)
        c["poll_truth"] = gr.Markdown(elem_id="room-poll-truth")
    with gr.Accordion("Teach a class · link to this view", open=False, elem_id="room-tools") as c["tools"]:
        gr.Markdown("**Teachers:** *Start a class* shows a code for the projector; students who join follow your "
                    "tab, model, image, block, branch and Explain as you change them, and answer your polls.  \n"
                    "**Students:** type the code and press *Join*.  \n"
                    "**Slides:** *Link to this view* writes an address that opens this tab, model, image, block "
                    "and method.", elem_classes=["cz-note"])
        with gr.Row():
            c["start"] = gr.Button("Start a class", variant="primary", elem_id="room-start")
            c["code"] = gr.Textbox(label="Class code", placeholder="e.g. K7PM3Q", max_length=12, elem_id="room-code-in")
            c["join"] = gr.Button("Join", elem_id="room-join")
        with gr.Row():
            c["link_btn"] = gr.Button("Link to this view", elem_id="room-link-btn")
            c["link"] = gr.Textbox(label="Link to this view", interactive=False, buttons=["copy"], elem_id="room-link")
    return c


def wire(c: dict, page: dict, checkpoint, look) -> None:
    """Connect the class tools to the page. ``page``: the controls by name (``tabs``, the tab
    objects, Explore's and Attributions' components)."""
    ex, at = page["explore"], page["attributions"]
    c["view_state"] = ex["followed"]  # the view to show: Explore's resets keep its clicked branch
    c["applying"] = ex["applying"]  # a view was applied: Explore's own chains skip its results
    names = {"tabs": page["tabs"], "ex_model": ex["model"], "ex_image": ex["image"], "ex_block": ex["block"],
             "ex_branch": ex["branch"], "ex_mode": ex["mode"], "at_model": at["model"], "at_image": at["image"],
             "at_method": at["method"], "at_target": at["target"], "at_layer": at["layer"],
             **{f"knob_{k}": s for k, s in zip(knobs(), at["knobs"])}}
    every = {**c, **names}
    controls = _controls(c, ex, at)
    room_outputs = ("member", "banner", "poll_group", "poll_md", "poll_choice", "poll_text", "poll_send", "poll_plot",
                    "poll_truth", "shown", "applied", "behind", "view_state", "view_version", "applying", "teacher_row",
                    "student_row", "timer", "tools")
    private = dict(api_visibility="private")

    tick, tick_outputs = by_name(refresh, every, room_outputs)
    c["room_signal"].change(tick, [c["member"], c["applied"], c["shown"]], tick_outputs, queue=False,
                            show_progress="hidden", **private)
    slow, slow_outputs = by_name(functools.partial(refresh, fallback=True), every, room_outputs)
    c["timer"].tick(slow, [c["member"], c["applied"], c["shown"], c["behind"]], slow_outputs, queue=False,
                    show_progress="hidden", **private)
    watching, watching_outputs = by_name(user_errors(page_watch), every, ("room_signal",))
    watch = dict(fn=watching, inputs=[c["member"]], outputs=watching_outputs, show_progress="hidden",
                 concurrency_limit=None, **private)
    started, started_outputs = by_name(user_errors(start_class), every, room_outputs)
    c["start"].click(started, [c["member"], *controls], started_outputs, queue=False, **private).then(**watch)
    joined, joined_outputs = by_name(user_errors(join_class), every, room_outputs)
    gr.on([c["join"].click, c["code"].submit], joined, [c["code"], c["member"]], joined_outputs, queue=False,
          **private).then(**watch)
    left, left_outputs = by_name(end_class, every, room_outputs)
    gr.on([c["end"].click, c["leave"].click], left, [c["member"]], left_outputs, queue=False, **private)
    own, own_outputs = by_name(break_away, every, room_outputs)
    c["own"].click(own, [c["member"]], own_outputs, queue=False, **private)
    catch, catch_outputs = by_name(catch_up, every, room_outputs)
    c["catch"].click(catch, [c["member"]], catch_outputs, queue=False, **private)
    polled, polled_outputs = by_name(user_errors(open_poll), every, room_outputs)
    c["poll_open"].click(polled, [c["member"], c["poll_kind"], c["poll_question"], checkpoint], polled_outputs,
                         concurrency_id=LIGHT, **private)
    revealed, revealed_outputs = by_name(user_errors(reveal_poll), every, room_outputs)
    c["poll_reveal"].click(revealed, [c["member"]], revealed_outputs, queue=False, **private)
    closed, closed_outputs = by_name(user_errors(end_poll), every, room_outputs)
    c["poll_end"].click(closed, [c["member"]], closed_outputs, queue=False, **private)
    sent, sent_outputs = by_name(user_errors(send_answer), every, room_outputs)
    c["poll_send"].click(sent, [c["member"], c["poll_choice"], c["poll_text"]], sent_outputs, queue=False, **private)
    opened, opened_outputs = by_name(open_page, every, room_outputs)
    page["demo"].load(opened, [c["member"]], opened_outputs, queue=False, **private).then(**watch)

    # The teacher's page publishes what it shows as it changes (a no-op on any other page).
    for tab_id in TABS:
        page["tab_" + tab_id].select(lambda t=tab_id: t, None, [c["tab"]], queue=False, **private).then(
            publish, [c["member"], *controls], None, queue=False, **private)
    # (Explore's model, image, block, diagram and knock-out, and every Attributions control and
    # Explain: first_publish and first_publish_attributions, before the tabs' own events.)

    # A followed or linked view: its results, from the shared caches.
    shown_explore, explore_outputs = by_name(
        user_errors(follow_explore), ex,
        (*explore.PREDICTION, *explore.BRANCH_MAPS, "diagram", "branch_view", *explore.ABLATION))
    every_shown = {**every, **{k: ex[k] for k in explore.SHOWN}}
    applying = None
    for step in range(APPLY_STEPS):
        applied, applied_outputs = by_name(functools.partial(apply_controls, step=step), every_shown,
                                           (*names, *explore.SHOWN))
        applying = (c["view_version"].change if applying is None else applying.then)(
            applied, [c["view_state"], *controls], applied_outputs, queue=False, show_progress="hidden",
            js=SHOWN_JS if step == 1 else None, **private)
        if step == 1:
            applying.then(shown_explore, [c["view_state"], checkpoint, look, ex["label"]], explore_outputs,
                          concurrency_id=LIGHT, **private)
    shown_attr, attr_outputs = by_name(user_errors(follow_attribution), at, (*attributions.OUTPUTS, "shown"))
    applying.then(shown_attr, [c["view_state"], checkpoint, look, at["image"], at["model"], at["method"], at["target"],
                               at["layer"]], attr_outputs, **heavy_lane(), **private)
    install_api()
    linked, linked_outputs = by_name(user_errors(make_link), every, ("link_query",))
    c["link_btn"].click(linked, controls, linked_outputs, queue=False, **private).then(
        None, [c["link_query"]], [c["link"]], js=LINK_JS, **private)


__all__ = ["build", "wire", "page_view", "apply_view", "carried", "refresh", "following", "POLL_KINDS"]


# ---------------------------------------------------------------------------- the API (scripts, load tests)


def _view_record(view: View) -> dict:
    return {**view.to_json(), "link": view.query()}


def _state_record(st: dict) -> dict:
    """``Rooms.state`` as the API returns it (room_state, and each room_watch message)."""
    return {"code": st["code"], "version": st["version"], "view": _view_record(st["view"]), "poll": st["poll"],
            "following": st["following"]}


def api_open(view: str = "") -> dict:
    """Start a class showing a view (a link's query string, e.g. "?model=googlenet&image=example:cat.jpg").

    Args:
        view: the view's fields as a query string.
    Returns: {"code", "secret"}: keep the secret, it is what changes the class.
    """
    code, secret = registry().open(View.from_query(view))
    return {"code": code, "secret": secret}


def api_publish(code: str, secret: str, view: str) -> dict:
    """Show the class another view (the teacher's secret is required).

    Args:
        code: the class code.
        secret: the secret returned by room_open.
        view: the view's fields as a query string.
    """
    return {"version": registry().publish(code, secret, View.from_query(view))}


def api_join(code: str, request: gr.Request) -> dict:
    """Join a class as a student.

    Args:
        code: the class code (case and dashes do not matter).
    Returns: {"code", "member"}: the member id answers polls and keeps this client's place.
    """
    code, member = registry().join(code, _client(request))
    return {"code": code, "member": member}


def api_state(code: str, member: str = "", secret: str = "", results: bool = False) -> dict:
    """What the class shows now: the view, its version, the poll, and (``results``) the view's
    top-5 and branch shares from the shared results, as a following page gets them.

    Args:
        code: the class code.
        member: a student's member id (from room_join).
        secret: the teacher's secret (instead of member).
        results: also return the view's results.
    """
    st = registry().state(code, member=member or None, secret=secret or None)
    out = _state_record(st)
    if results:
        out["results"] = view_results(st["view"])
    return out


async def api_watch(code: str, member: str = "", secret: str = "", results: bool = True) -> AsyncIterator[dict]:
    """Follow a class without asking once a second: yields the class's state (as room_state)
    at once, and again within 0.1 s whenever the view or the poll changes, with the view's
    results (``results``) each time the view changed; computed once for every watch of the
    class. The last message is {"ended": why} when the class ends.

    Args:
        code: the class code.
        member: a student's member id (from room_join).
        secret: the teacher's secret (instead of member).
        results: also send the view's results when the view changes.
    """
    version = None
    async for st in room_changes(code, member, secret):
        if "ended" in st:
            yield st
            return
        out = _state_record(st)
        if results and st["version"] != version:
            out["results"] = await _room_results(st["code"], st["version"], st["view"])
        version = st["version"]
        yield out


_ROOM_RESULTS: collections.OrderedDict = collections.OrderedDict()  # room code -> (version, future, token)


async def _room_results(code: str, version: int, view: View) -> dict:
    """The view's results for every watch of a class: one computation per version (in a
    thread, from the shared caches), which a watch that goes away does not cancel. A newer
    version's results, or the class's last watch leaving, stop it (``drop_room_results``)."""
    held = _ROOM_RESULTS.get(code)
    if held is None or held[0] != version:
        drop_room_results(code, "The teacher moved on before these results were ready.")
        token = threading.Event()
        held = (version, asyncio.ensure_future(anyio.to_thread.run_sync(_results_or_error, view, token)), token)
        _ROOM_RESULTS[code] = held
        while len(_ROOM_RESULTS) > 2 * registry().max_rooms:
            drop_room_results(next(iter(_ROOM_RESULTS)), "Too many classes were computing at once.")
    _ROOM_RESULTS.move_to_end(code)
    return await asyncio.shield(held[1])


def drop_room_results(code: str, why: str) -> None:
    """Forget a class's results; work still running for them stops at its next check and says
    ``why``."""
    held = _ROOM_RESULTS.pop(code, None)
    if held is not None and not held[1].done():
        held[2].why = why
        held[2].set()


def _results_or_error(view: View, token: threading.Event) -> dict:
    with cancel.cancellable(token):
        try:
            return view_results(view)
        except cancel.Cancelled:
            return {"error": getattr(token, "why", "The results were cancelled.")}
        except Exception as e:  # the class still follows the view; its results say why they are missing
            return {"error": as_gr_error(e, "room_watch").message}


def view_results(view: View, progress=None) -> dict:
    """A view's results as data: its top-5, the block's branch shares, and the attribution's
    scores when it was run; each from the shared caches (the class computes it once)."""
    image = SHELF.path(view.image)
    if image is None:
        return {}
    lm = get_model(view.model)
    ex = explore_image(str(image), lm)
    out = {"top5": [{"label": t.label, "p": round(t.prob, 4)} for t in ex.prediction.top]}
    block = explore.valid_block(view.model, view.block)
    out["block"] = block
    out["shares"] = {b.info.name: round(b.share, 4) for b in ex.blocks[block].branches}
    if view.tab == "attributions" and view.explain:
        from ..attribution import Settings, attribute_shared
        from ..pipeline import prepare

        a = attribute_shared(prepare(str(image), lm), lm, view.method, target=view.target or None,
                             layer=view.layer or None, settings=Settings(**dict(view.knobs)), scores=True,
                             progress=progress)
        out["attribution"] = {k: v for k, v in a.to_json().items() if k in ("method", "target", "scores", "ms")}
    return out


def api_poll_open(code: str, secret: str, kind: str = "predict", question: str = "") -> dict:
    """Open a poll about the class's view (the teacher's secret is required).

    Args:
        code: the class code.
        secret: the teacher's secret.
        kind: "predict" (what will the model say?), "branch" (which branch carries most?) or "text".
        question: the question of a "text" poll.
    """
    if kind not in POLL_KINDS.values():
        raise RoomError(f"kind is one of {', '.join(POLL_KINDS.values())}, not {kind!r}.")
    poll = registry().open_poll(code, secret, make_poll(kind, question, None, code))
    return poll.public(None)


def api_answer(code: str, member: str, answer: str) -> dict:
    """Answer the class's open poll, once.

    Args:
        code: the class code.
        member: the member id from room_join.
        answer: one of the poll's options, or free text.
    """
    registry().answer(code, member, answer)
    return {"ok": True}


def api_reveal(code: str, secret: str) -> dict:
    """Reveal the poll's answers and the truth to the class (the teacher's secret is required).

    Args:
        code: the class code.
        secret: the teacher's secret.
    """
    registry().reveal(code, secret)
    return registry().state(code, secret=secret)["poll"]


def api_close(code: str, secret: str) -> dict:
    """End a class (the teacher's secret is required).

    Args:
        code: the class code.
        secret: the teacher's secret.
    """
    registry().close(code, secret)
    return {"ok": True}


API = {"room_open": api_open, "room_publish": api_publish, "room_join": api_join, "room_state": api_state,
       "room_watch": api_watch,
       "poll_open": api_poll_open, "poll_answer": api_answer, "poll_reveal": api_reveal, "room_close": api_close}


def install_api() -> None:
    """The class endpoints, for scripts (inside a Blocks context). Cheap ones run at once;
    ``room_state`` with results and ``poll_open`` may compute, in the light lane."""
    for name, fn in API.items():
        computes = name in ("room_state", "poll_open")
        gr.api(user_errors(fn), api_name=name, concurrency_id=LIGHT if computes else None,
               concurrency_limit="default" if computes else None)
