"""A class in Chromium: one teacher page, three students (one on a phone), following, breaking
away, catching up, Explain computed once, and a poll."""

from __future__ import annotations

import json
import time

import pytest
from PIL import Image, ImageOps

from cnndemo.cli.diagnostics.server import cpu_seconds
from conftest import AppServer, local_get
from test_public_api import raw_call, upload
from test_ui import LONG, SHOTS, browser, choose, tap_when_still  # noqa: F401 (browser: the fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SAME = """(want) => {
  const v = (sel) => { const e = document.querySelector(sel); return e ? e.value : null; };
  const sel = document.querySelector('#explore-diagram .cz-selected');
  const tab = document.querySelector('[role=tab][aria-selected=true]');
  const now = {model: v('#explore-model input'), block: v('#explore-block input'),
               branch: sel ? sel.dataset.branch : '', tab: tab ? tab.innerText.trim() : '',
               top5: Array.from(document.querySelectorAll('#explore-top5 dl')).map((d) => d.textContent).join('|'),
               knocked: ((document.querySelector('#explore-after') || {}).innerText || '').includes('%')};
  return Object.entries(want).every(([k, x]) => ['top5', 'model'].includes(k) ? (now[k] || '').includes(x) : now[k] === x);
}"""


def follow(pages, want: dict) -> float:
    """Seconds until every page shows ``want`` (fields of SAME)."""
    t0 = time.perf_counter()
    for p in pages:
        p.wait_for_function(SAME, arg=want)
    return time.perf_counter() - t0


def settles(pages, server, window_s: float = 3.0, within_s: float = 60.0) -> None:
    """Wait until every page sends no request but its looks at the room (its watch's signal,
    its timer) for ``window_s`` (a page that re-fires change events on its own never does)."""
    config = json.loads(local_get(server.port, "/config")[1])
    names = {c["id"]: c.get("props", {}).get("elem_id") or c.get("props", {}).get("label") or c["type"]
             for c in config["components"]}
    timers = {c["id"] for c in config["components"]
              if c["type"] == "timer" or c.get("props", {}).get("elem_id") == "room-signal"}
    sent = []

    def watch(i):
        def on_request(request):
            if request.method == "POST" and ("/run/predict" in request.url or "/queue/join" in request.url):
                targets = config["dependencies"][json.loads(request.post_data or "{}")["fn_index"]]["targets"]
                if not any(t[0] in timers for t in targets):
                    sent.append((round(time.perf_counter() - t0, 1), i, [(names.get(t[0]), t[1]) for t in targets][:2]))
        return on_request

    t0 = time.perf_counter()
    listeners = [watch(i) for i in range(len(pages))]
    for p, listen in zip(pages, listeners):
        p.on("request", listen)
    try:
        seen = []
        while True:
            del sent[:]
            pages[0].wait_for_timeout(window_s * 1000)
            if not sent:
                return
            seen += sent
            assert time.perf_counter() - t0 < within_s, f"the pages kept sending events on their own: {seen}"
    finally:
        for p, listen in zip(pages, listeners):
            p.remove_listener("request", listen)


@pytest.fixture
def class_server():
    """A server of the class test's own. A class's results for each view it followed are computed
    for the room and not cancelled when its pages leave; on the shared server that work ran on
    into the next tests (a phone's branch view then waited over 120 s)."""
    server = AppServer()
    yield server
    server.stop()


def test_a_class_follows_the_teacher(browser, class_server, examples, tmp_path):
    app_server = class_server
    contexts, lag = [], {}

    def page(width=1280, height=900, query=""):
        ctx = browser.new_context(viewport={"width": width, "height": height}, is_mobile=width < 500,
                                  has_touch=width < 500)
        contexts.append(ctx)
        pg = ctx.new_page()
        pg.set_default_timeout(LONG)
        pg.goto(app_server.url + query)
        pg.wait_for_selector("#explore-image")
        return pg

    try:
        teacher = page()
        teacher.locator("#room-tools").click()
        teacher.locator("#room-start").click()
        teacher.wait_for_selector("#room-code")
        code = teacher.inner_text("#room-code").strip()
        students = [page(query=f"?class={code}"), page(390, 844, query=f"?class={code}"), page()]
        typed = students[2]  # the third types the code
        typed.locator("#room-tools").click()
        typed.locator("#room-code-in input, #room-code-in textarea").first.fill(code.lower())
        typed.locator("#room-join").click()
        for s in students:
            s.wait_for_selector("#room-follow")
        teacher.wait_for_function("document.querySelector('#room-count').innerText.startsWith('3 ')")

        choose(teacher, "explore-model", "SqueezeNet 1.0")
        lag["model"] = follow(students, {"model": "SqueezeNet 1.0"})
        teacher.set_input_files("#explore-image input[type=file]", str(examples / "cat.jpg"))
        lag["image: the teacher's own page"] = follow([teacher], {"top5": "%"})
        lag["image: behind the teacher"] = follow(students, {"model": "SqueezeNet 1.0", "top5": "%"})
        lag["image"] = lag["image: the teacher's own page"] + lag["image: behind the teacher"]
        choose(teacher, "explore-block", "fire3")
        lag["block"] = follow(students, {"block": "fire3"})
        teacher.wait_for_function("!document.querySelector('#explore-block-note').innerText.includes('Computing')")
        tap_when_still(teacher, "#explore-diagram [data-branch='expand3x3']")
        lag["branch"] = follow(students, {"block": "fire3", "branch": "expand3x3"})
        for s in students:
            s.locator("#explore-branch-view img").wait_for(state="attached")
        teacher.locator("#explore-ablate").click()  # the knock-out of the branch clicked
        lag["knock-out"] = follow(students, {"branch": "expand3x3", "knocked": True})

        # One student explores on their own, then catches up.
        away = students[0]
        away.locator("#room-own").click()
        away.wait_for_function("document.querySelector('#room-follow').innerText.includes('on your own')")
        choose(teacher, "explore-block", "fire5")
        follow(students[1:], {"block": "fire5"})
        time.sleep(1.5)  # two of its ticks: a page on its own stays where it is
        assert away.evaluate("document.querySelector('#explore-block input').value") == "fire3"
        away.locator("#room-catch").click()
        lag["catch up"] = follow([away], {"block": "fire5"})
        # A reload keeps the page in the class (its membership is kept in the browser).
        phone = students[1]
        phone.reload()
        phone.wait_for_selector("#room-follow")
        lag["after a reload"] = follow([phone], {"model": "SqueezeNet 1.0", "block": "fire5", "top5": "%"})

        # Explain: the teacher's computation serves the class.
        with Image.open(examples / "cat.jpg") as im:
            ImageOps.mirror(im).save(tmp_path / "solo.png")
        args = [upload(app_server, tmp_path / "solo.png"), "squeezenet1_0", "ig", None, None, 48, 1, 32, 24]
        c0 = cpu_seconds(app_server.proc.pid)
        assert raw_call(app_server, "attribute", args)[0] == "complete"
        solo = cpu_seconds(app_server.proc.pid) - c0
        teacher.get_by_role("tab", name="Attributions").click()
        follow(students, {"tab": "Attributions"})
        for s in students:
            s.locator("#attr-image img").wait_for(state="attached")
        settles(students, app_server)
        choose(teacher, "attr-model", "SqueezeNet 1.0")
        teacher.locator("#attr-method input").click()
        teacher.locator("#attr-method input").fill("Integrated")
        teacher.locator("ul[role=listbox] li", has_text="Integrated Gradients").first.click()
        teacher.locator("#attr-run").click()
        c0 = cpu_seconds(app_server.proc.pid)
        t0 = time.perf_counter()
        for p in [teacher, *students]:
            p.wait_for_function("document.querySelector('#attr-scores').innerText.includes('Sanity')")
            lag.setdefault("explain: the teacher's own page", time.perf_counter() - t0)
        lag["explain"] = time.perf_counter() - t0
        classwide = cpu_seconds(app_server.proc.pid) - c0
        assert classwide < 2.0 * solo, f"four pages used {classwide:.1f} CPU s for one Explain; one costs {solo:.1f}"

        # A poll: three answers, a live count for the teacher, then the reveal for everyone.
        teacher.get_by_role("tab", name="Explore").click()
        follow(students, {"tab": "Explore"})
        settles(students, app_server)
        teacher.locator("#room-poll-open").click()
        for s in students:
            s.wait_for_selector("#room-poll-choice label")
            s.locator("#room-poll-choice label").first.click()
            s.locator("#room-poll-send").click()
            s.wait_for_function("document.querySelector('#room-poll-question').innerText.includes('wait for the reveal')")
        teacher.wait_for_function("document.querySelector('#room-poll-question').innerText.includes('3 answered')")
        teacher.locator("#room-poll-reveal").click()
        for s in students:
            s.wait_for_function("document.querySelector('#room-poll-truth').innerText.includes('said')")
            s.wait_for_selector("#room-poll-plot canvas, #room-poll-plot svg")
        SHOTS.mkdir(parents=True, exist_ok=True)
        teacher.screenshot(path=str(SHOTS / "class-teacher.png"))
        students[1].screenshot(path=str(SHOTS / "class-phone.png"))
        print("follow seconds:", {k: round(v, 2) for k, v in lag.items()})
    finally:
        for ctx in contexts:
            ctx.close()


def test_a_link_opens_its_view_and_the_page_settles(browser, app_server):
    """A slide's link to an Attributions view: the tab, model, image and method, set step by
    step, and a page that then stays quiet (no change event fires itself again)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = ctx.new_page()
        page.set_default_timeout(LONG)
        page.goto(app_server.url.rstrip("/") + "/?tab=attributions&model=squeezenet1_0&image=example:cat.jpg"
                  "&method=saliency")
        page.wait_for_selector("#explore-image")
        page.wait_for_function("(document.querySelector('[role=tab][aria-selected=true]') || {}).innerText === 'Attributions'")
        page.locator("#attr-image img").wait_for(state="attached")
        page.wait_for_function("document.querySelector('#attr-model input').value.includes('SqueezeNet')")
        page.wait_for_function("document.querySelector('#attr-method input').value === 'Saliency'")
        settles([page], app_server)
    finally:
        ctx.close()


def test_a_new_image_after_a_new_block_settles(browser, app_server, examples):
    """One page, no class: a new image after a new block draws its results once, and the page
    then falls quiet (the image's chain had run again and again, every 2-3 s, for as long as the
    page was open)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = ctx.new_page()
        page.set_default_timeout(LONG)
        page.goto(app_server.url)
        page.wait_for_selector("#explore-image")
        page.set_input_files("#explore-image input[type=file]", str(examples / "cat.jpg"))
        follow([page], {"top5": "%"})
        choose(page, "explore-block", "inception4a")
        page.wait_for_function("document.querySelector('#explore-block-note').innerText.startsWith('inception4a')")
        page.set_input_files("#explore-image input[type=file]", str(examples / "coffee.jpg"))
        page.wait_for_function("document.querySelector('#explore-block-note').innerText.startsWith('inception4a')")
        settles([page], app_server, within_s=30.0)
    finally:
        ctx.close()
