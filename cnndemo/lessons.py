"""Lessons: the steps a teacher takes a class through, as API calls with their arguments.

A lesson is a list of steps, each ``{"step": label, "api": "/predict", "args": {...}}``. An
argument ``"@name"`` is a file to upload: an example photo by its name (``@cat.jpg``), a drawn
digit that the teacher hands round (``@digit``), each student's own photo (``@photo``, a
distinct crop, flip and colour shift of an example) or own drawing (``@drawing``, a 7 in a
hand of its own). ``bench-classroom`` runs a lesson with simulated students, and
``python app.py --warm LESSON`` computes one at start so that the first student finds it ready.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from .attribution import knobs
from .paths import EXAMPLES_DIR as EXAMPLES

# Each student's own image (a distinct crop, flip and colour shift of an example), and drawing.
PHOTO, DRAWING = "photo", "drawing"
OWN = (f"@{PHOTO}", f"@{DRAWING}")

# One lesson step: (label, api_name, keyword arguments; "@name" is an example file to upload).
DEFAULT_LESSON: list[dict] = [
    {"step": "predict an example", "api": "/predict", "args": {"image": "@cat.jpg", "model": "googlenet"}},
    {"step": "switch the branch block", "api": "/branches",
     "args": {"image": "@cat.jpg", "model": "googlenet", "block": "inception4c"}},
    {"step": "knock out a branch", "api": "/ablate",
     "args": {"image": "@cat.jpg", "model": "googlenet", "block": "inception4c", "branch": "3x3", "mode": "zero"}},
    {"step": "run Integrated Gradients", "api": "/attribute",
     "args": {"image": "@cat.jpg", "model": "googlenet", "method": "ig", "target": None, "layer": None,
              **{k.name: k.default for k in knobs().values()}}},
    {"step": "draw a digit", "api": "/digits", "args": {"image": "@digit"}},
]
PREDICT_LESSON: list[dict] = [DEFAULT_LESSON[0]]
# The default lesson with every student on a photo and a drawing of their own: nothing is shared.
PHOTO_LESSON: list[dict] = [
    {**step, "args": {k: {"@cat.jpg": f"@{PHOTO}", "@digit": f"@{DRAWING}"}.get(v, v) if isinstance(v, str) else v
                      for k, v in step["args"].items()}}
    for step in DEFAULT_LESSON
]
LESSONS = {"default": DEFAULT_LESSON, "predict": PREDICT_LESSON, "photo": PHOTO_LESSON}


def load_lesson(name_or_file: str) -> list[dict]:
    """A lesson by name (default, predict, photo) or from a JSON file (a list of steps as above)."""
    if name_or_file in LESSONS:
        return LESSONS[name_or_file]
    steps = json.loads(Path(name_or_file).read_text())
    if not isinstance(steps, list) or not all(isinstance(s, dict) and "api" in s for s in steps):
        raise ValueError(f"{name_or_file}: a lesson is a JSON list of {{'step', 'api', 'args'}} objects")
    return steps


def photo_variant(student: int, folder: Path) -> Path:
    """Student ``student``'s own photo: one of the colour examples, cropped to a box of its own
    (60-95 % of each side), maybe mirrored, and colour-shifted; the same student always gets
    the same photo, two students never the same pixels."""
    import random

    from PIL import Image, ImageEnhance, ImageOps

    path = folder / f"photo-{student}.jpg"
    if path.exists():
        return path
    rng = random.Random(student)
    sources = sorted(p for p in EXAMPLES.iterdir() if p.suffix.lower() == ".jpg")
    with Image.open(sources[student % len(sources)]) as src:
        img = ImageOps.exif_transpose(src).convert("RGB")
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.6, 0.95)), int(h * rng.uniform(0.6, 0.95))
    left, top = rng.randrange(0, w - cw + 1), rng.randrange(0, h - ch + 1)
    img = img.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.4))
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
    tint = [rng.uniform(0.85, 1.15) for _ in range(3)]
    img = Image.merge("RGB", [band.point(lambda v, f=f: min(255, int(v * f))) for band, f in zip(img.split(), tint)])
    _save_whole(img, path, quality=90)
    return path


def drawn_digit(folder: Path, student: int = 0) -> Path:
    """Student ``student``'s drawn '7': dark strokes on white, as a drawing arrives from the
    Sketchpad, in a hand of its own (where the strokes go, how thick, how slanted). No two
    students draw the same pixels, as in a real class."""
    import random

    from PIL import Image, ImageDraw

    path = folder / f"digit7-{student}.png"
    if path.exists():
        return path
    rng = random.Random(f"digit{student}")
    jitter = lambda v: v + rng.randint(-18, 18)  # noqa: E731
    img = Image.new("RGB", (280, 280), "white")
    d = ImageDraw.Draw(img)
    d.line([(jitter(70), jitter(60)), (jitter(210), jitter(60)), (jitter(120), jitter(230))], fill="black",
           width=rng.randint(16, 28))
    _save_whole(img.rotate(rng.uniform(-12, 12), fillcolor="white"), path)
    return path


def _save_whole(img, path: Path, **params) -> None:
    """Saved under a temporary name, then renamed: students asking for the same file at once
    never read one half written."""
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}")
    img.save(tmp, format=path.suffix.lstrip(".").replace("jpg", "jpeg"), **params)
    os.replace(tmp, path)


class Materials:
    """The files a lesson uploads: the examples by name (``@cat.jpg``), a drawn digit
    (``@digit``), and each student's own photo (``@photo``)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files = {p.name: p for p in EXAMPLES.iterdir()}

    def path(self, name: str, student: int) -> Path:
        if name == PHOTO:
            return photo_variant(student, self.folder)
        if name == DRAWING:
            return drawn_digit(self.folder, student)
        if name == "digit":
            return drawn_digit(self.folder, -1)
        return self.files[name]

    def resolve(self, args: dict, student: int) -> dict:
        from gradio_client import handle_file

        return {k: handle_file(str(self.path(v[1:], student))) if isinstance(v, str) and v.startswith("@") else v
                for k, v in args.items()}

    def as_photo(self, lesson: list[dict]) -> list[dict]:
        """The lesson with every image a student's own photo or drawing (to warm the server up,
        and to time one student alone, without filling the server's result cache for the class)."""
        def own(v):
            if not isinstance(v, str) or not v.startswith("@"):
                return v
            return f"@{DRAWING}" if v in ("@digit", f"@{DRAWING}") else f"@{PHOTO}"

        return [{**step, "args": {k: own(v) for k, v in step.get("args", {}).items()}} for step in lesson]
