"""A class in real browsers: a teacher page and N student pages in Chromium follow eight changes.

``run_browser_follow`` starts ``python app.py`` on loopback, opens a teacher page that starts a
class and N student pages that join it (the second at 390 px, as a phone), then makes eight
changes on the teacher's page the way a person does: two images, a block, a branch, two models,
and back. Each change is timed on every page, from the teacher's action to the page showing it:

- a new image or model: the top-5 of the new view (its text changed, with percentages);
- a block: the block's note names it (its maps are drawn);
- a branch: the diagram shows it selected.

Each page notes that moment itself (``WATCH_JS``, in the machine's clock, which every page here
shares) and the run reads the notes four times a second.

Each change is measured alone: the next starts once every page shows it and the pages have
sent nothing for ``QUIET_S``. Also reported per change: the CPU seconds the server and the
browsers (every Chromium process of this run) spent meanwhile. On one machine the browsers'
drawing competes with the server for the same cores, as it would not in a classroom where
every student has a device of their own; the CPU split says how much of a latency that is.

Needs Playwright (``pip install -r requirements-dev.txt``) and a Chromium (``--chromium``, or
Playwright's own).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ...paths import EXAMPLES_DIR
from .server import cpu_seconds, local_get, start_server

QUIET_S = 1.5  # a change is over when no page has sent an event for this long (besides its looks at the room)
SHOWN_LIMIT_S = 60.0

CHANGES = [  # (what, how the teacher does it, what every page then shows)
    ("image cat.jpg", ("image", "cat.jpg"), "top5"),
    ("block inception4a", ("block", "inception4a"), "block"),
    ("branch 3x3", ("branch", "3x3"), "branch"),
    ("image coffee.jpg", ("image", "coffee.jpg"), "top5"),
    ("model SqueezeNet 1.0 (its first load)", ("model", "SqueezeNet 1.0"), "top5"),
    ("block fire3", ("block", "fire3"), "block"),
    ("image cat.jpg", ("image", "cat.jpg"), "top5"),
    ("model GoogLeNet", ("model", "GoogLeNet"), "top5"),
]

# Put in each page before a change: notes (in the page's own clock, ``Date.now()``) when the page
# first shows it. It reads text, not layout (``textContent``), ten times a second, so that the
# measuring does not slow the pages it measures.
WATCH_JS = """([kind, value]) => {
  const text = (sel) => ((document.querySelector(sel) || {}).textContent || '');
  const branch = () => { const s = document.querySelector('#explore-diagram .cz-selected'); return s ? s.dataset.branch : ''; };
  // The top-5's own rows: a progress bar over the component shows percentages of its own.
  const top5 = () => Array.from(document.querySelectorAll('#explore-top5 dl')).map((d) => d.textContent).join('|');
  const before = top5();
  const shown = {
    top5: () => top5().includes('%') && top5() !== before,
    block: () => text('#explore-block-note').includes(value + ' \u00b7') && !text('#explore-block-note').includes('Computing'),
    branch: () => branch() === value,
  }[kind];
  window.__czShown = null;
  clearInterval(window.__czWatch);
  window.__czWatch = setInterval(() => { if (shown()) { window.__czShown = Date.now(); clearInterval(window.__czWatch); } }, 100);
}"""


def _browser_cpu() -> float:
    """CPU seconds of every Chromium process that descends from this one (Playwright's)."""
    me, parents, names = os.getpid(), {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            parents[int(pid)] = int(stat.rsplit(")", 1)[1].split()[1])
            names[int(pid)] = stat[stat.index("(") + 1:stat.rindex(")")]
        except (OSError, ValueError, IndexError):
            continue
    total = 0.0
    for pid, name in names.items():
        if "chrom" not in name.lower() and "headless" not in name.lower():
            continue
        p, seen = pid, 0
        while p in parents and p != me and seen < 64:
            p, seen = parents[p], seen + 1
        if p == me:
            try:
                total += cpu_seconds(pid)
            except OSError:
                pass
    return total


def run_browser_follow(students: int = 3, *, chromium: str | None = None, env: dict | None = None,
                       examples: Path | None = None, progress=None) -> dict:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:  # a measurement tool: the app itself never needs it
        raise SystemExit("bench-follow needs Playwright: pip install -r requirements-dev.txt") from e

    examples = Path(examples or EXAMPLES_DIR)
    say = progress or (lambda _m: None)
    server = start_server(env, ("--offline",), watch=True)
    sent = [0.0]  # when a page last sent an event other than a look at the room
    counts: dict[int, int] = {}  # events each page sent (besides its looks at the room)
    config = json.loads(local_get(server.port, "/config")[1])
    watched = {c["id"] for c in config["components"]
               if c["type"] == "timer" or c.get("props", {}).get("elem_id") == "room-signal"}
    looks = {i for i, d in enumerate(config["dependencies"]) if any(t[0] in watched for t in d["targets"])}

    def listener(index: int):
        def on_request(request):
            if request.method == "POST" and ("/queue/join" in request.url or "/run/predict" in request.url):
                try:
                    fn = json.loads(request.post_data or "{}").get("fn_index")
                except ValueError:
                    return
                if fn is not None and fn not in looks:
                    sent[0] = time.perf_counter()
                    counts[index] = counts.get(index, 0) + 1
        return on_request

    try:
        with sync_playwright() as pw:
            launch = dict(args=["--no-sandbox", "--disable-gpu"], headless=True)
            if chromium:
                launch["executable_path"] = chromium
            browser = pw.chromium.launch(**launch)

            def page(width=1280, height=900, query=""):
                ctx = browser.new_context(viewport={"width": width, "height": height}, is_mobile=width < 500,
                                          has_touch=width < 500)
                pg = ctx.new_page()
                pg.set_default_timeout(SHOWN_LIMIT_S * 1000)
                pg.on("request", listener(len(counts)))
                counts[len(counts)] = 0
                pg.goto(server.url.rstrip("/") + "/" + query)
                pg.wait_for_selector("#explore-image")
                return pg

            teacher = page()
            teacher.locator("#room-tools").click()
            teacher.locator("#room-start").click()
            teacher.wait_for_selector("#room-code")
            code = teacher.inner_text("#room-code").strip()
            pages = [teacher] + [page(*((390, 844) if i == 1 else (1280, 900)), query=f"?class={code}")
                                 for i in range(students)]
            for p in pages[1:]:
                p.wait_for_selector("#room-follow")
            say(f"class {code}: a teacher and {students} student pages")
            _quiet(teacher, sent)
            rows = []
            for what, (how, value), kind in CHANGES:
                for p in pages:
                    p.evaluate(WATCH_JS, [kind, value])
                c0, b0, t0 = cpu_seconds(server.proc.pid), _browser_cpu(), time.time()
                sent_before = dict(counts)
                _act(teacher, how, value, examples)
                seen: dict[int, float] = {}
                while len(seen) < len(pages) and time.time() - t0 < SHOWN_LIMIT_S:
                    teacher.wait_for_timeout(250)
                    for i, p in enumerate(pages):
                        at = None if i in seen else p.evaluate("window.__czShown")
                        if at:
                            seen[i] = at / 1000 - t0
                wall = time.time() - t0
                cpu_server, cpu_browsers = cpu_seconds(server.proc.pid) - c0, _browser_cpu() - b0
                missed = [i for i in range(len(pages)) if i not in seen]
                row = {"change": what, "teacher_s": round(seen.get(0, wall), 2),
                       "students_s": [round(seen[i], 2) if i in seen else None for i in range(1, len(pages))],
                       "missed": len(missed), "server_cpu_s": round(cpu_server, 2),
                       "browsers_cpu_s": round(cpu_browsers, 2), "wall_s": round(wall, 2)}
                done = [s for s in row["students_s"] if s is not None]
                row["slowest_student_s"] = max(done) if done else None
                row["behind_teacher_s"] = round(max(done) - row["teacher_s"], 2) if done else None
                _quiet(teacher, sent)
                row["events_per_page"] = [counts[i] - sent_before.get(i, 0) for i in sorted(counts)]
                rows.append(row)
                say(f"  {what}: teacher {row['teacher_s']} s, students {row['students_s']} s; CPU server "
                    f"{row['server_cpu_s']} s, browsers {row['browsers_cpu_s']} s in {row['wall_s']} s; events "
                    f"{row['events_per_page']}")
            browser.close()
        students_all = [s for r in rows for s in r["students_s"] if s is not None]
        return {"students": students, "pages": students + 1, "cores": os.cpu_count(), "changes": rows,
                "slowest_student_max_s": max(students_all) if students_all else None,
                "missed": sum(r["missed"] for r in rows),
                "server_cpu_s": round(sum(r["server_cpu_s"] for r in rows), 2),
                "browsers_cpu_s": round(sum(r["browsers_cpu_s"] for r in rows), 2),
                "server_rss_mb_peak": round(server.peak_rss_mb)}
    finally:
        server.stop()


def _act(teacher, how: str, value: str, examples: Path) -> None:
    """One change on the teacher's page, as a person makes it."""
    if how == "image":
        teacher.set_input_files("#explore-image input[type=file]", str(examples / value))
    elif how == "branch":
        teacher.locator(f"#explore-diagram [data-branch='{value}']").click()
    else:
        box = teacher.locator(f"#explore-{how} input")
        box.click()
        box.fill(value)
        teacher.locator("ul[role=listbox] li", has_text=value).first.click()


def _quiet(teacher, sent: list) -> None:
    """Wait until no page has sent an event for ``QUIET_S`` (at most ``SHOWN_LIMIT_S``)."""
    t0 = time.perf_counter()
    while time.perf_counter() - max(sent[0], t0) < QUIET_S and time.perf_counter() - t0 < SHOWN_LIMIT_S:
        teacher.wait_for_timeout(100)
