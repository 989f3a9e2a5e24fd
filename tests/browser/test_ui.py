"""The app in a real browser: Debian's chromium driven by Playwright.

Run alone with `python -m pytest -m browser`. Screenshots go to artifacts/screenshots/
(not committed).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / "artifacts" / "screenshots"
EX = ROOT / "assets" / "examples"
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


def test_predict_an_example(page):
    choose(page, "explore-model", "SqueezeNet 1.0")
    page.set_input_files("#explore-image input[type=file]", str(EX / "coffee.jpg"))
    top5 = page.locator("#explore-top5")
    top5.locator(".output-class, h2, [data-testid='label-output-value']").first.wait_for()
    page.wait_for_function("document.querySelector('#explore-top5').innerText.includes('%')")
    assert "%" in top5.inner_text()
    assert "Untrained weights" in page.inner_text("body")  # offline: random ImageNet weights, said loudly


def test_switching_blocks_changes_the_branch_maps(page):
    page.set_input_files("#explore-image input[type=file]", str(EX / "cat.jpg"))
    note = page.locator("#explore-block-note")
    page.wait_for_function("document.querySelector('#explore-block-note').innerText.includes('inception4c')")
    first = page.locator("#explore-panel img").get_attribute("src")
    choose(page, "explore-block", "inception3a")
    page.wait_for_function("document.querySelector('#explore-block-note').innerText.includes('inception3a')")
    page.wait_for_function(
        "(src) => { const i = document.querySelector('#explore-panel img'); return i && i.src !== src; }", arg=first
    )
    assert "inception3a" in note.inner_text()
    assert page.locator("#explore-panel img").get_attribute("src") != first


def test_attribution_shows_a_map(page):
    page.get_by_role("tab", name="Attributions").click()
    page.set_input_files("#attr-image input[type=file]", str(EX / "cat.jpg"))
    page.locator("#attr-run").click()
    page.wait_for_selector("#attr-overlay img")
    page.wait_for_function("document.querySelector('#attr-scores').innerText.includes('Sanity')")
    assert "Deletion" in page.inner_text("#attr-scores")


def test_draw_a_digit_with_the_mouse(page):
    page.get_by_role("tab", name="Digits").click()
    canvas = page.locator("#digits-sketch canvas").first
    canvas.wait_for()
    box = canvas.bounding_box()
    x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
    # A "1": one long vertical stroke through the middle of the canvas.
    page.mouse.move(x0 + w * 0.5, y0 + h * 0.2)
    page.mouse.down()
    for i in range(1, 21):
        page.mouse.move(x0 + w * 0.5, y0 + h * (0.2 + 0.6 * i / 20))
    page.mouse.up()
    page.wait_for_function("document.querySelector('#digits-inception').innerText.includes('%')")
    lines = [ln.strip() for ln in page.inner_text("#digits-inception").splitlines() if ln.strip()]
    digits = [ln for ln in lines if ln in [str(d) for d in range(10)]]
    assert digits and digits[0] == "1", lines  # the headline class: the vertical stroke reads as a 1
    page.wait_for_selector("#digits-seen img")


def test_compare_tab_shows_its_plots(page):
    page.get_by_role("tab", name="Compare").click()
    page.wait_for_function("document.querySelector('#compare-stats').innerText.includes('GoogLeNet')")
    page.wait_for_selector("#compare-params canvas, #compare-params svg")
    assert "SqueezeNet" in page.inner_text("#compare-stats")
