"""``python app.py --warm LESSON``: the app computes a lesson's steps in the background at
start, through its own API (each step in its own lane, as a student's request), so that the
first student finds every result ready in the shared results. The header line shows how far
it has got.

Steps on each student's own photo or drawing (``@photo``, ``@drawing``) cannot be computed
ahead, and are skipped.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..lessons import OWN, Materials

log = logging.getLogger("cnndemo")


@dataclass
class WarmState:
    lesson: str
    steps: list[str]
    done: int = 0
    current: str = ""
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float | None = None  # set when finished

    @property
    def running(self) -> bool:
        return self.seconds is None


_STATE: WarmState | None = None


def status() -> WarmState | None:
    return _STATE


def describe(s: WarmState | None = None) -> str:
    """The header line's sentence ("" when no lesson is warmed)."""
    s = s or _STATE
    if s is None:
        return ""
    total = len(s.steps)
    if s.running:
        return (f"Preparing the lesson *{s.lesson}*: step {min(s.done + 1, total)} of {total} "
                f"({s.current or 'starting'})...")
    computed = s.done - len(s.errors) - len(s.skipped)
    text = f"Lesson *{s.lesson}* ready: {computed} of {total} steps computed in {s.seconds:.0f} s"
    if s.skipped:
        text += f"; not computed ahead (each student's own photo or drawing): {', '.join(s.skipped)}"
    if s.errors:
        text += f"; failed: {'; '.join(s.errors)}"
    return text + "."


def _uses_own_photo(step: dict) -> bool:
    return any(v in OWN for v in step.get("args", {}).values())


def _wait_for(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 (this app, on loopback)
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    return False


def run(lesson_name: str, steps: list[dict], url: str, *, timeout: float = 600.0) -> WarmState:
    """Run every step once against the app at ``url``; record how it went."""
    global _STATE
    state = _STATE = WarmState(lesson_name, [s.get("step", s["api"]) for s in steps])
    t0 = time.monotonic()
    try:
        if not _wait_for(url, 120):
            state.errors.append(f"the app did not answer at {url}")
            return state
        from gradio_client import Client

        client = Client(url, verbose=False, download_files=False, httpx_kwargs={"timeout": timeout})
        with tempfile.TemporaryDirectory(prefix="cnndemo-warm-") as tmp:
            files = Materials(Path(tmp))
            for step, label in zip(steps, state.steps):
                state.current = label
                if _uses_own_photo(step):
                    state.skipped.append(label)
                else:
                    try:
                        client.submit(**files.resolve(step.get("args", {}), 0), api_name=step["api"]).result(
                            timeout=timeout)
                    except Exception as e:  # the step's own answer, shown in the header line
                        log.warning("warming the lesson: %s failed: %s", label, e)
                        state.errors.append(f"{label} ({str(e)[:120]})")
                state.done += 1
    finally:
        state.current = ""
        state.seconds = time.monotonic() - t0
        log.info("warming the lesson %s: %s", lesson_name, describe(state))
    return state


def start(lesson_name: str, steps: list[dict], url: str) -> threading.Thread:
    thread = threading.Thread(target=run, args=(lesson_name, steps, url), name="cnndemo-warm", daemon=True)
    thread.start()
    return thread
