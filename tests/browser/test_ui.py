"""The app in a real browser: Debian's chromium driven by Playwright.

Run alone with `python -m pytest -m browser`. Screenshots go to artifacts/screenshots/
(not committed).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / "artifacts" / "screenshots"
LONG = 120_000  # ms: a cold model load on a busy 2-core machine


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser, app_server, request):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(LONG)
    pg.goto(app_server.url)
    pg.wait_for_selector("#explore-image")
    yield pg
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"{request.node.name}.png"), full_page=True)
    ctx.close()


def choose(page, elem_id: str, option: str) -> None:
    """Pick an option in a Gradio dropdown the way a person does: click, type, Enter."""
    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill(option)
    page.locator("ul[role=listbox] li", has_text=option).first.click()


def tap_when_still(page, selector: str, at: tuple[float, float] | None = None) -> None:
    """Click ``selector`` once it has stayed in place for half a second. A chain's late steps (a
    model's architecture table, a chart) change the layout above it; a click aimed while the
    page moves lands wherever the element was, as a person's tap would."""
    page.wait_for_function(
        """(sel) => {
          const el = document.querySelector(sel);
          if (!el) return false;
          const r = el.getBoundingClientRect(), now = [r.x, r.y, r.width, r.height, window.scrollY].join();
          const seen = window.__czStill || (window.__czStill = {});
          if (seen[sel] && seen[sel].at === now) return performance.now() - seen[sel].since > 500;
          seen[sel] = {at: now, since: performance.now()};
          return false;
        }""", arg=selector, polling=100)
    if at is None:
        page.locator(selector).click()
    else:  # a point inside it, as fractions of its width and height
        box = page.locator(selector).bounding_box()
        page.locator(selector).click(position={"x": box["width"] * at[0], "y": box["height"] * at[1]})


def test_predict_an_example(page, examples):
    choose(page, "explore-model", "SqueezeNet 1.0")
    page.set_input_files("#explore-image input[type=file]", str(examples / "coffee.jpg"))
    top5 = page.locator("#explore-top5")
    top5.locator(".output-class, h2, [data-testid='label-output-value']").first.wait_for()
    # Offline: random ImageNet weights, said loudly beside the top-5 (checked together: both
    # model and image changes re-run the prediction, so the label is briefly empty in between).
    page.wait_for_function("document.querySelector('#explore-top5').innerText.includes('%')"
                           " && document.body.innerText.includes('Untrained weights')"
                           " && document.querySelector('#explore-info').innerText.includes('SqueezeNet')")
    # The block diagram is SqueezeNet's too: the page's first fill (the default model's diagram)
    # never lands over the model picked at once.
    page.wait_for_function("document.querySelector('#explore-block-note').innerText.includes('fire5')"
                           " && !document.querySelector('#explore-block-note').innerText.includes('Computing')")
    diagram = page.inner_text("#explore-diagram")
    assert "expand1x1" in diagram and "inception4c" not in diagram, diagram


def test_switching_blocks_changes_the_branch_maps(page, examples):
    page.set_input_files("#explore-image input[type=file]", str(examples / "cat.jpg"))
    note = page.locator("#explore-block-note")
    done = ("(b) => { const n = document.querySelector('#explore-block-note').innerText; "
            "return n.includes(b) && !n.includes('Computing'); }")
    page.wait_for_function(done, arg="inception4c")
    first = page.locator("#explore-panel img").get_attribute("src")
    choose(page, "explore-block", "inception3a")
    page.wait_for_function(done, arg="inception3a")
    page.wait_for_function(
        "(src) => { const i = document.querySelector('#explore-panel img'); return i && i.src !== src; }", arg=first
    )
    assert "inception3a" in note.inner_text()
    assert page.locator("#explore-panel img").get_attribute("src") != first


def test_a_click_on_a_channel_map_steps_through_the_unit_under_it(page, examples, app_server):
    """One unit: the strongest unit first, then the unit under a click (the map is the input
    scaled by a whole factor); its steps agree with the captured value. A new block empties
    them."""
    from test_class import settles

    page.set_input_files("#explore-image input[type=file]", str(examples / "cat.jpg"))
    page.wait_for_function("document.querySelector('#explore-block-note').innerText.includes('inception4c')"
                           " && !document.querySelector('#explore-block-note').innerText.includes('Computing')")
    # A new image's change events come up to three times (Gradio's image), each emptying the
    # results again: let them pass.
    settles([page], app_server, window_s=1.5)
    page.locator("#explore-unit").click()
    tap_when_still(page, "#explore-unit-go")
    head = page.locator("#explore-unit-steps .cz-unit-head")
    head.wait_for()
    first = head.inner_text()
    assert "inception4c / 1x1" in first and "equal to 1e-4" in page.inner_text("#explore-unit-steps")
    page.wait_for_function("(() => { const i = document.querySelector('#explore-unit-pick img');"
                           " return i && i.complete && i.naturalWidth >= 320; })()")
    tap_when_still(page, "#explore-unit-pick img", at=(0.3, 0.7))  # inception4c: 14 x 14 units
    page.wait_for_function("(b) => { const h = document.querySelector('#explore-unit-steps .cz-unit-head');"
                           " return h && h.innerText !== b; }", arg=first)
    assert "at (9, 4)" in head.inner_text() and "equal to 1e-4" in page.inner_text("#explore-unit-steps")
    # A click on a channel's map in the branch-maps panel: that branch, that channel, that point.
    from cnndemo import render
    from cnndemo.branches import explore

    bm = explore(examples / "cat.jpg", "googlenet").blocks["inception4c"]  # the server's seeded weights
    lay = render.panel_layout(bm)
    channel, (x, y, side) = lay.spots[2][1]
    page.evaluate("document.querySelector('#explore-panel').scrollIntoView()")
    tap_when_still(page, "#explore-panel img", at=((x + 0.75 * side) / lay.width, (y + 0.25 * side) / lay.height))
    want = f"inception4c / {bm.branches[2].info.name} · channel {channel} at (3, 10)"
    page.wait_for_function("(w) => (document.querySelector('#explore-unit-steps .cz-unit-head') || {}).innerText"
                           "?.includes(w)", arg=want)
    assert "equal to 1e-4" in page.inner_text("#explore-unit-steps")
    # The section, below the panel, comes into view.
    page.wait_for_function("Math.abs(document.querySelector('#explore-unit').getBoundingClientRect().top) < 40")
    choose(page, "explore-block", "inception3a")
    page.wait_for_function("!document.querySelector('#explore-unit-steps .cz-unit-head')")
    # Paint to hide is checked through its handler (tests/test_units.py): in headless Chromium
    # the editor's first stroke after a new background is sometimes not in the value it sends.


def test_switching_model_leaves_no_stale_result(page, examples):
    """Results name the model that made them; switching model clears what it no longer shows."""
    page.set_input_files("#explore-image input[type=file]", str(examples / "cat.jpg"))
    page.wait_for_function("document.querySelector('#explore-block-note').innerText.includes('inception4c')")
    tap_when_still(page, "#explore-ablate")
    page.wait_for_function("document.body.innerText.includes('knocking out')")
    assert "GoogLeNet" in page.inner_text("body")
    choose(page, "explore-model", "VGG-16")
    # At once, before VGG-16's results: GoogLeNet's are gone, and the page says what is coming.
    page.wait_for_function("document.querySelector('#explore-info').innerText.includes(\"Computing VGG-16's top-5\")"
                           " && !document.querySelector('#explore-top5').innerText.includes('%')")
    page.wait_for_function("document.querySelector('#explore-block-note').innerText.includes('stage')")
    body = page.inner_text("body")
    assert "knocking out" not in body and "inception4c" not in page.inner_text("#explore-block-note")
    assert "no parallel branches" in body
    assert page.get_by_role("button", name="Knock it out").is_disabled()
    # The image goes with the class to Attributions; a map there belongs to the model that made it.
    page.get_by_role("tab", name="Attributions").click()
    page.wait_for_selector("#attr-image img")
    page.locator("#attr-run").click()
    page.wait_for_function("document.querySelector('#attr-scores').innerText.includes('GoogLeNet')")
    choose(page, "attr-model", "ResNet-50")
    page.wait_for_function("!document.querySelector('#attr-scores').innerText.includes('GoogLeNet')")
    assert page.locator("#attr-overlay img").count() == 0


def test_attribution_shows_a_map(page, examples):
    page.get_by_role("tab", name="Attributions").click()
    page.set_input_files("#attr-image input[type=file]", str(examples / "cat.jpg"))
    page.locator("#attr-run").click()
    page.wait_for_selector("#attr-overlay img")
    page.wait_for_function("document.querySelector('#attr-scores').innerText.includes('Sanity')")
    assert "Deletion" in page.inner_text("#attr-scores")


def _stroke(page, points) -> None:
    """One mouse stroke through ``points`` (fractions of the canvas), as a student draws."""
    canvas = page.locator("#digits-sketch canvas").first
    canvas.wait_for()
    box = canvas.bounding_box()
    x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
    page.mouse.move(x0 + w * points[0][0], y0 + h * points[0][1])
    page.mouse.down()
    for (xa, ya), (xb, yb) in zip(points, points[1:]):
        for i in range(1, 11):
            page.mouse.move(x0 + w * (xa + (xb - xa) * i / 10), y0 + h * (ya + (yb - ya) * i / 10))
    page.mouse.up()


def _headline_digit(page) -> str:
    lines = [ln.strip() for ln in page.inner_text("#digits-mnist_inception").splitlines() if ln.strip()]
    digits = [ln for ln in lines if ln in [str(d) for d in range(10)]]
    assert digits, lines
    return digits[0]


def test_draw_a_digit_with_the_mouse(page):
    page.get_by_role("tab", name="Digits").click()
    # A "1": one long vertical stroke through the middle of the canvas.
    _stroke(page, [(0.5, 0.2), (0.5, 0.8)])
    page.wait_for_function("document.querySelector('#digits-mnist_inception').innerText.includes('%')")
    assert _headline_digit(page) == "1"  # the vertical stroke reads as a 1
    page.wait_for_selector("#digits-seen img")


def test_redraw_after_clear_canvas(page):
    """A teacher redraws all the time: after "Clear canvas" the brush must still draw."""
    page.get_by_role("tab", name="Digits").click()
    _stroke(page, [(0.5, 0.2), (0.5, 0.8)])
    page.wait_for_function("document.querySelector('#digits-mnist_inception').innerText.includes('%')")
    first = page.locator("#digits-seen img").get_attribute("src")
    page.locator('#digits-sketch button[aria-label="Clear canvas"]').click()
    page.wait_for_function(
        "document.querySelector('#digits-sketch button[aria-label=\"Brush\"]').classList.contains('highlight')")
    # A "7": the bar, then the slanted stroke, drawn on the cleared canvas.
    _stroke(page, [(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)])
    page.wait_for_function(
        "(src) => { const i = document.querySelector('#digits-seen img'); return i && i.src !== src; }", arg=first)
    assert _headline_digit(page) == "7"


def test_compare_tab_shows_its_plots(page):
    page.get_by_role("tab", name="Compare").click()
    page.wait_for_function("document.querySelector('#compare-stats').innerText.includes('GoogLeNet')")
    page.wait_for_selector("#compare-params canvas, #compare-params svg")
    assert "SqueezeNet" in page.inner_text("#compare-stats")


def test_offline_the_start_panel_leads_a_phone_to_a_trained_networks_result(browser, app_server):
    """The first lesson offline: a digit network that has learned, and the result in view on a phone."""
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = ctx.new_page()
    page.set_default_timeout(LONG)
    try:
        page.goto(app_server.url)
        page.wait_for_selector("#start-cat")
        assert "Show me a digit" in page.inner_text("#start-cat")
        assert "not available" in page.inner_text("#start-here")
        page.locator("#start-cat").click()
        page.wait_for_function("document.querySelector('#explore-top5').innerText.includes('%')"
                               " && document.querySelector('#explore-info').innerText.includes('MNIST Inception')")
        # Scrolled to the result: the top-5 (three screens below the panel on a phone) is on screen.
        page.wait_for_function("(() => { const r = document.querySelector('#explore-top5').getBoundingClientRect();"
                               " return r.top > -20 && r.top < window.innerHeight / 2; })()")
        page.wait_for_function("document.querySelector('#explore-top5').innerText.includes('6 (6)')")
        page.wait_for_function("!document.querySelector('#explore-block-note').innerText.includes('Computing')"
                               " && document.querySelector('#explore-block-note').innerText.includes('incept1')")
        tap_when_still(page, "#explore-diagram [data-branch='1x1']")
        img = page.locator("#explore-branch-view img")
        img.wait_for(state="attached")
        page.wait_for_function("(() => { const i = document.querySelector('#explore-branch-view img');"
                               " return i && i.naturalWidth > 0; })()")
        box = img.bounding_box()
        assert box["width"] > 300 and box["height"] > 200  # large enough to read, not a thin strip
        assert page.locator("#explore-seen img").get_attribute("alt").startswith("The image after preprocessing")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "phone-start-digit.png"))
    finally:
        ctx.close()


def test_presenter_mode_survives_a_reload_and_pictures_follow_the_look(page):
    page.locator("#presenter-toggle input").check()
    page.wait_for_function("document.body.classList.contains('cz-presenter')")
    # The hidden look box follows <body>'s classes: pictures are drawn for presenter mode.
    page.wait_for_function("document.querySelector('#cz-look textarea, #cz-look input').value === 'light presenter'")
    page.wait_for_timeout(300)  # the saved setting is written by a (queue-free) event of its own
    page.reload()
    page.wait_for_selector("#explore-image")
    page.wait_for_function("document.body.classList.contains('cz-presenter')"
                           " && document.querySelector('#presenter-toggle input').checked")
    page.locator("#presenter-toggle input").uncheck()
    page.wait_for_function("!document.body.classList.contains('cz-presenter')")


def test_what_each_branch_looks_for_on_a_digit_network(page, examples):
    """The block's most active channels for this digit, each an optimised image beside the
    held-out digits that excite it most, with a verdict per channel."""
    choose(page, "explore-model", "MNIST Inception net")
    page.wait_for_function("document.querySelector('#explore-model input').value.includes('MNIST')")
    page.set_input_files("#explore-image input[type=file]", str(examples / "digits" / "six.png"))
    page.wait_for_function("document.querySelector('#explore-block-note').innerText.includes('incept1')"
                           " && !document.querySelector('#explore-block-note').innerText.includes('Computing')")
    page.locator("#explore-lookfor").click()
    tap_when_still(page, "#explore-lookfor-go")
    page.wait_for_function("(document.querySelector('#explore-lookfor-note') || {}).innerText?.includes('channel')")
    note = page.inner_text("#explore-lookfor-note")
    assert "12 channels, 256 steps at 28 px" in note
    assert note.count("beats every held-out digit") + note.count("weak") == 12
    page.wait_for_function("(() => { const i = document.querySelector('#explore-lookfor-grid img');"
                           " return i && i.complete && i.naturalWidth > 500; })()")


def test_the_training_labs_mistakes_open_from_its_confusion_matrix(page):
    """After a short training run: the held-out confusion matrix, and a click on a cell shows
    that cell's digits, each with its attribution map."""
    from cnndemo import render

    page.get_by_role("tab", name="Digits").click()
    limit = page.get_by_label("Training digits").first
    limit.fill("500")
    limit.press("Enter")
    page.get_by_label("Epochs").first.fill("1")
    page.get_by_role("button", name="Train", exact=True).click()
    page.wait_for_function("(document.querySelector('#digits-cell-note') || {}).innerText?.includes('read wrongly')")
    page.wait_for_function("(() => { const i = document.querySelector('#digits-confusion img');"
                           " return i && i.complete && i.naturalWidth > 300; })()")
    left, top, cell = render._confusion_geometry(render.LIGHT)
    size = page.evaluate("(() => { const i = document.querySelector('#digits-confusion img');"
                         " return [i.naturalWidth, i.naturalHeight]; })()")
    # The diagonal cell of the 1s: digits read correctly.
    tap_when_still(page, "#digits-confusion img", at=((left + 1.5 * cell) / size[0], (top + 1.5 * cell) / size[1]))
    page.wait_for_function("(document.querySelector('#digits-cell-note') || {}).innerText?.includes('held-out 1s')")
    assert "read correctly" in page.inner_text("#digits-cell-note")
    page.wait_for_function("(() => { const i = document.querySelector('#digits-cell img');"
                           " return i && i.complete && i.naturalWidth > 200; })()")
