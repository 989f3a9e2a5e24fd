"""Class rooms: who may change a room, bounds, expiry, polls, links (library and raw HTTP API)."""

from __future__ import annotations

import pytest

from cnndemo.rooms import ALPHABET, CODE_LEN, RoomError, Rooms, Shelf, View, prediction_poll, text_poll
from test_public_api import call_events, error_text, raw_call


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


CAT = View(model="googlenet", image="example:cat.jpg")


def test_only_the_secret_changes_a_room_and_students_get_their_own_ids():
    rooms = Rooms()
    code, secret = rooms.open(CAT)
    assert len(code) == CODE_LEN and set(code) <= set(ALPHABET)
    _, a = rooms.join(code.lower())
    _, b = rooms.join(f"{code[:3]}-{code[3:]}")  # typed with a dash
    assert a != b
    for wrong in ("", "x" * 32, secret[:-1] + ("A" if secret[-1] != "A" else "B")):
        with pytest.raises(RoomError, match="Only the teacher"):
            rooms.publish(code, wrong, CAT.changed(block="inception3a"))
    assert rooms.state(code, member=a)["version"] == 1
    assert rooms.publish(code, secret, CAT.changed(block="inception3a")) == 2
    assert rooms.publish(code, secret, CAT.changed(block="inception3a")) == 2  # the same view: no new version
    st = rooms.state(code, member=b)
    assert st["view"].block == "inception3a" and not st["teacher"]
    with pytest.raises(RoomError, match="not in class"):
        rooms.state(code, member="made-up")


def test_wrong_codes_are_limited_per_address():
    rooms = Rooms(wrong_codes=10)
    code, _ = rooms.open(CAT)
    for _ in range(10):
        with pytest.raises(RoomError, match="There is no class"):
            rooms.join("ZZZZZZ", client="10.0.0.7")
    with pytest.raises(RoomError, match="Too many wrong class codes"):
        rooms.join(code, client="10.0.0.7")  # even the right one, for the rest of the minute
    assert rooms.join(code, client="10.0.0.8")[0] == code  # another address is not affected


def test_rooms_expire_and_the_caps_hold():
    clock = Clock()
    rooms = Rooms(max_rooms=2, max_members=2, idle_s=60, clock=clock)
    first, secret = rooms.open(CAT)
    rooms.open(CAT)
    with pytest.raises(RoomError, match="limit"):
        rooms.open(CAT)
    rooms.join(first)
    rooms.join(first)
    with pytest.raises(RoomError, match="full"):
        rooms.join(first)
    clock.now += 30
    rooms.state(first, secret=secret)  # the teacher's page keeps its room alive
    clock.now += 45
    assert len(rooms) == 1  # the other room was idle for 75 s
    with pytest.raises(RoomError, match="There is no class"):
        rooms.publish("ZZZZZZ", secret, CAT)
    clock.now += 61
    with pytest.raises(RoomError, match="idle"):
        rooms.state(first, secret=secret)
    rooms.open(CAT)  # places free again


def test_a_poll_takes_one_answer_each_and_reveals_the_truth():
    rooms = Rooms()
    code, secret = rooms.open(CAT)
    members = [rooms.join(code)[1] for _ in range(3)]
    top = [("tabby", 0.5), ("tiger cat", 0.2), ("Egyptian cat", 0.1), ("lynx", 0.05), ("Persian cat", 0.02)]
    labels = [f"class {i}" for i in range(50)] + [t for t, _ in top]
    rooms.open_poll(code, secret, lambda ident, view: prediction_poll(ident, "GoogLeNet", top, labels, seed=code))
    poll = rooms.state(code, member=members[0])["poll"]
    assert set(t for t, _ in top) < set(poll["options"]) and len(poll["options"]) == 8
    assert "counts" not in poll  # a student sees no counts before the reveal
    for m, choice in zip(members, ("tabby", "tabby", "lynx")):
        rooms.answer(code, m, choice)
    with pytest.raises(RoomError, match="already answered"):
        rooms.answer(code, members[0], "lynx")
    with pytest.raises(RoomError, match="Pick one of"):
        rooms.answer(code, rooms.join(code)[1], "dog")
    with pytest.raises(RoomError, match="Only the teacher"):
        rooms.reveal(code, "guess")
    rooms.reveal(code, secret)
    seen = rooms.state(code, member=members[2])["poll"]
    assert dict(seen["counts"])["tabby"] == 2 and dict(seen["counts"])["lynx"] == 1
    assert "tabby (50.0%)" in seen["truth"]


def test_free_text_answers_are_counted_together():
    poll = text_poll(1, "What does the 1x1 branch do?")
    for m, text in enumerate(["Mixes channels", "mixes   channels", "reduces depth"]):
        poll.answer(str(m), text)
    assert poll.counts()[0] == ("mixes channels", 2)


def test_links_round_trip_and_bad_fields_are_named():
    view = View.from_query("?tab=attributions&model=resnet50&image=example:cat.jpg&method=occlusion&window=24"
                           "&explain=1")
    assert View.from_query(view.query()) == view
    assert dict(view.knobs) == {"window": 24}
    for query, says in [("?model=alexnet", "Unknown model 'alexnet'"), ("?model=googlenet&block=layer9", "no block"),
                        ("?model=googlenet&branch=7x7", "no branch"), ("?image=sha256:" + "0" * 20, "not on this server"),
                        ("?image=example:../../etc/passwd", "not on this server"), ("?steps=many", "is a number")]:
        with pytest.raises(RoomError, match=says):
            View.from_query(query)


def test_an_upload_is_named_by_its_digest_and_held_by_a_bounded_shelf(tmp_path):
    shelf = Shelf(limit=2, folder=tmp_path / "shelf")
    (tmp_path / "shelf").mkdir()
    refs = []
    for i in range(3):
        f = tmp_path / f"upload{i}.png"
        f.write_bytes(bytes([i]) * 100)
        refs.append(shelf.put(f))
    assert refs[0].startswith("sha256:") and shelf.path(refs[0]) is None  # the oldest went
    assert shelf.path(refs[2]).read_bytes() == bytes([2]) * 100
    assert View.parse({"image": refs[2]}, shelf).image == refs[2]


# ----------------------------------------------------------------------------- through the raw HTTP API


def test_the_room_api_refuses_without_the_secret(app_server):
    kind, opened = raw_call(app_server, "room_open", ["?model=squeezenet1_0&image=example:cat.jpg"])
    assert kind == "complete", opened
    code, secret = opened[0]["code"], opened[0]["secret"]
    kind, joined = raw_call(app_server, "room_join", [code])
    member = joined[0]["member"]
    # A student (or anyone) without the secret: refused, and the view is unchanged.
    for who in (member, "", "x" * 40):
        kind, payload = raw_call(app_server, "room_publish", [code, who, "?model=vgg16"])
        assert kind == "error" and "Only the teacher" in error_text(payload)
        kind, payload = raw_call(app_server, "poll_open", [code, who, "text", "hi?"])
        assert kind == "error" and "Only the teacher" in error_text(payload)
    kind, state = raw_call(app_server, "room_state", [code, member, "", False])
    assert state[0]["view"]["model"] == "squeezenet1_0" and state[0]["version"] == 1
    # The teacher: accepted; a bad view is refused with its reason.
    kind, payload = raw_call(app_server, "room_publish", [code, secret, "?model=nope"])
    assert kind == "error" and "Unknown model 'nope'" in error_text(payload)
    kind, payload = raw_call(app_server, "room_publish", [code, secret, "?model=vgg16&image=example:cat.jpg"])
    assert kind == "complete" and payload[0]["version"] == 2
    kind, payload = raw_call(app_server, "room_close", [code, member])
    assert kind == "error"
    kind, payload = raw_call(app_server, "room_close", [code, secret])
    assert kind == "complete"
    kind, payload = raw_call(app_server, "room_state", [code, member, "", False])
    assert kind == "error" and "There is no class" in error_text(payload)


def test_guessing_codes_over_http_is_bounded():
    """Ten wrong codes a minute per address (tests arrive from loopback: one address)."""
    from conftest import AppServer

    server = AppServer()
    try:
        answers = [raw_call(server, "room_join", [f"ZZZZ{i:02d}"]) for i in range(11)]
        assert all(kind == "error" for kind, _ in answers)
        assert "There is no class" in error_text(answers[0][1])
        assert "Too many wrong class codes" in error_text(answers[-1][1])
    finally:
        server.stop()


def watch_messages(server, data: list, into: list, timeout: float = 120) -> None:
    """Read a room_watch stream over raw HTTP: each message (generating, complete or error) is
    appended to ``into`` as (kind, payload) until the stream ends."""
    for message in call_events(server, "room_watch", data, timeout):
        into.append(message)  # as it comes: the test reads ``into`` while the stream is open


def test_a_watch_streams_each_change_with_its_results_and_ends_with_the_class(app_server):
    """room_watch: the state at once, each published view with its results (no polling), and a
    last message when the class ends; a page not in the class is refused."""
    import threading

    from test_shared import wait_until

    kind, opened = raw_call(app_server, "room_open", ["?model=squeezenet1_0&image=example:cat.jpg"])
    code, secret = opened[0]["code"], opened[0]["secret"]
    kind, payload = raw_call(app_server, "room_watch", [code, "made-up", "", True])
    assert kind == "error" and "not in class" in error_text(payload)
    member = raw_call(app_server, "room_join", [code])[1][0]["member"]
    got: list = []
    reader = threading.Thread(target=watch_messages, args=(app_server, [code, member, "", True], got), daemon=True)
    reader.start()
    wait_until(lambda: got, timeout=120, what="the watch's first message")
    kind, first = got[0]
    assert kind == "generating" and first[0]["version"] == 1 and first[0]["view"]["model"] == "squeezenet1_0"
    assert len(first[0]["results"]["top5"]) == 5 and first[0]["results"]["block"] != "fire3"
    raw_call(app_server, "room_publish", [code, secret, "?model=squeezenet1_0&image=example:cat.jpg&block=fire3"])
    wait_until(lambda: any(m[0]["version"] == 2 for k, m in got if k == "generating"), timeout=60,
               what="the published view on the watch")
    second = next(m[0] for k, m in got if k == "generating" and m[0]["version"] == 2)
    assert second["view"]["block"] == "fire3" and second["results"]["block"] == "fire3"
    assert sum(second["results"]["shares"].values()) == pytest.approx(1, abs=0.01)
    assert second["results"]["top5"] == first[0]["results"]["top5"]  # same image and model: the same prediction
    raw_call(app_server, "room_close", [code, secret])
    reader.join(timeout=60)
    assert not reader.is_alive(), "the watch did not end with the class"
    ended = [m[0] for k, m in got if k in ("generating", "complete") and m and "ended" in m[0]]
    assert ended and "There is no class" in ended[0]["ended"]


def test_a_page_watch_signals_changes_and_ends_when_its_page_leaves(monkeypatch):
    """room_changes: the state at once, a message per change (a view, a poll), none while nothing
    changes, and the last one when the page leaves; the watches per room are bounded."""
    import asyncio

    from cnndemo.ui import room as ui_room

    rooms = Rooms(max_members=1)
    monkeypatch.setattr(ui_room, "registry", lambda: rooms)
    monkeypatch.setattr(ui_room, "WATCH_TICK_S", 0.01)
    code, secret = rooms.open(CAT)
    _, member = rooms.join(code)

    async def scenario():
        got = []

        async def watch():
            async for st in ui_room.room_changes(code, member):
                got.append(st)

        task = asyncio.ensure_future(watch())
        await asyncio.sleep(0.1)
        assert [s["version"] for s in got] == [1]  # once, not once per look
        rooms.publish(code, secret, CAT.changed(block="inception4a"))
        await asyncio.sleep(0.1)
        rooms.open_poll(code, secret, lambda ident, view: text_poll(ident, "Why?"))
        await asyncio.sleep(0.1)
        assert [s["version"] for s in got] == [1, 2, 2] and got[-1]["poll"]["question"] == "Why?"
        # One page beyond the member cap and the extra watches: refused.
        extra = [asyncio.ensure_future(anext(ui_room.room_changes(code, secret=secret)))
                 for _ in range(ui_room.WATCH_EXTRA)]
        await asyncio.sleep(0.05)
        with pytest.raises(RoomError, match="watching it"):
            await anext(ui_room.room_changes(code, secret=secret))
        for e in extra:
            e.cancel()
        rooms.leave(code, member)
        await asyncio.wait_for(task, 2)
        assert "not in class" in got[-1]["ended"]

    asyncio.run(scenario())


def test_a_followed_view_is_applied_in_steps_and_its_results_come_once():
    """A view with a new image: the tab first when it differs, then the image with the old
    results emptied, then the rest; the page's own chains skip that image and model while the
    class delivers them, and compute again after the page's own next change."""
    from cnndemo.rooms import SHELF
    from cnndemo.ui import explore
    from cnndemo.ui.room import STUDENT_FIELDS, apply_controls

    cat, rocket = (str(SHELF.path(f"example:{n}")) for n in ("cat.jpg", "rocket.jpg"))
    view = View(model="googlenet", image="example:cat.jpg", block="inception4a")
    page = dict.fromkeys(STUDENT_FIELDS[1:])
    page.update(ex_model="googlenet", ex_image=rocket, ex_block="inception4c", ex_branch="1x1")

    def step(n, tab="explore"):
        return apply_controls(view.to_json(), tab, *(page[k] for k in STUDENT_FIELDS[1:]), step=n)

    assert set(step(0, tab="attributions")) == {"tabs"}
    first = step(0)
    assert first["ex_image"] == cat and first["label"] is None and "ex_block" not in first
    assert "Computing" in first["block_note"]
    page["ex_image"] = cat
    second = step(1)
    assert second["ex_block"].value == "inception4a" and "ex_image" not in second and "label" not in second
    # The page's own chains, fired by the image set above, leave the view's results to the class.
    followed, applying = view.to_json(), 12.5
    assert explore.class_delivers(cat, "googlenet", followed, applying)
    assert explore.results_pending("googlenet", "inception4a", cat, followed, applying, new_model=False) == {}
    # The page's own next image ends that: the results are emptied and the application forgotten.
    mine = explore.results_pending("googlenet", "inception4a", rocket, followed, applying, new_model=False)
    assert mine["label"] is None and mine["applying"] is None
    assert not explore.class_delivers(cat, "googlenet", followed, None)
    assert not explore.class_delivers(cat, "vgg16", followed, applying)


def test_a_classs_results_stop_when_the_teacher_moves_on_or_every_watch_leaves(monkeypatch):
    """The results computed once for a class's watches: a newer view's results stop the older
    ones' work, and the last watch leaving stops what is still running (nobody would read it)."""
    import asyncio
    import threading

    from cnndemo import cancel
    from cnndemo.ui import room as ui_room

    rooms = Rooms(max_members=2)
    monkeypatch.setattr(ui_room, "registry", lambda: rooms)
    monkeypatch.setattr(ui_room, "WATCH_TICK_S", 0.01)
    started = threading.Semaphore(0)

    def slow(view, progress=None):  # work that stops only when it is cancelled (or after 30 s)
        started.release()
        for _ in range(3000):
            cancel.check()
            threading.Event().wait(0.01)
        return {"top5": "finished"}

    monkeypatch.setattr(ui_room, "view_results", slow)
    code, secret = rooms.open(CAT)

    async def scenario():
        first = asyncio.ensure_future(ui_room._room_results(code, 1, CAT))
        await asyncio.to_thread(started.acquire)
        second = asyncio.ensure_future(ui_room._room_results(code, 2, CAT.changed(block="inception4a")))
        assert "moved on" in (await asyncio.wait_for(first, 10))["error"]
        await asyncio.to_thread(started.acquire)
        watch = ui_room.room_changes(code, secret=secret)
        await anext(watch)  # a watch of the class, then it leaves: the last one
        await watch.aclose()
        assert "Every page left" in (await asyncio.wait_for(second, 10))["error"]
        assert code not in ui_room._ROOM_RESULTS

    asyncio.run(scenario())


def test_the_teachers_publish_is_the_first_event_of_an_explore_change_and_reads_the_diagrams_branch():
    """The browser sends a change's events in the order they were registered: a new image, model,
    block or branch click, and Explain, reach the class before the teacher's own events for them."""
    from cnndemo.ui import build_demo, explore
    from cnndemo.ui.room import page_view, publish_explore, publish_new_explore

    demo = build_demo()
    ids = {b.elem_id: i for i, b in demo.blocks.items() if getattr(b, "elem_id", None)}
    def first(elem, event):
        return next(bf for bf in demo.fns.values() if any(t[0] == ids[elem] and t[1] == event for t in bf.targets))

    for elem in ("explore-image", "explore-model", "explore-block"):
        assert first(elem, "change").fn.__name__ == publish_new_explore.__name__, elem
    assert first("explore-diagram", "change").fn.__name__ == publish_explore.__name__
    assert "first_publish" in first("explore-ablate", "click").fn.__qualname__
    for elem, event in (("attr-image", "change"), ("attr-model", "change"), ("attr-method", "change"), ("attr-run", "click")):
        fn = first(elem, event).fn
        assert fn.__module__ == "cnndemo.ui.room" and (fn.__name__ == "publish" or "publish" in fn.__qualname__), \
            (elem, event, fn.__qualname__)
    diagram = explore.block_diagram("googlenet", "inception4a", "3x3")
    assert explore.selected_branch(diagram) == "3x3"
    assert explore.selected_branch(explore.block_diagram("googlenet", "inception4a")) == ""
    view = page_view("explore", "googlenet", None, "inception4a", "pool", "zero", diagram, *[None] * 5)
    assert view.branch == "3x3" and view.block == "inception4a"  # the diagram's, not the ablation's "pool"


def test_a_new_image_model_or_block_reaches_the_class_once_without_the_old_branch(monkeypatch):
    """The teacher's diagram still shows the old branch when a new image's change events come
    (twice), and is drawn again with nothing selected a moment later: the class gets one new view,
    with no branch, not the old branch first."""
    from cnndemo.rooms import SHELF
    from cnndemo.ui import explore
    from cnndemo.ui import room as ui_room

    rooms = Rooms()
    monkeypatch.setattr(ui_room, "registry", lambda: rooms)
    code, secret = rooms.open(CAT)
    teacher = {"code": code, "secret": secret, "role": "teacher"}
    cat, coffee = (str(SHELF.path(f"example:{n}")) for n in ("cat.jpg", "coffee.jpg"))
    clicked = explore.block_diagram("googlenet", "inception4a", "3x3")
    ui_room.publish_explore(teacher, "explore", "googlenet", cat, "inception4a", clicked)
    assert rooms.state(code, secret=secret)["view"].branch == "3x3"
    version = rooms.state(code, secret=secret)["version"]
    for _ in range(2):  # the new image's change events
        ui_room.publish_new_explore(teacher, "explore", "googlenet", coffee, "inception4a")
    # then the diagram, drawn again with nothing selected: the view the class has already
    ui_room.publish_explore(teacher, "explore", "googlenet", coffee, "inception4a",
                            explore.block_diagram("googlenet", "inception4a"))
    st = rooms.state(code, secret=secret)
    assert st["view"].image == "example:coffee.jpg" and st["view"].branch == ""
    assert st["version"] == version + 1
