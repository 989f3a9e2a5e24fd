"""Paint to hide: occlusion that the student steers by hand.

The painted pixels are replaced by the image's mean colour (each channel's mean over the whole
image: a grey that carries no edge or texture) and the network runs once on the result. A digit
is hidden with its paper's colour instead (the image's median: the background most of its pixels
are): the digit pipeline stretches contrast, so a mean grey on white paper would stay ink. The
top-k before comes from the image's exploration (computed once, shared); the change that
matters is the probability of the class the intact image was given.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .branches import explore
from .errors import BadRequest
from .pipeline import ImageLike, load_for, prepare, resolve, timed_forward
from .predict import Prediction, TopClass, top_classes
from .runtime import LoadedModel


@dataclass(frozen=True)
class HideResult:
    before: Prediction
    after: Prediction
    target: TopClass  # the intact image's top class
    p_after: float  # its probability with the painted part hidden
    hidden: float  # the share of the image's pixels hidden
    fill: tuple[int, ...]  # the colour the hidden pixels were given
    fill_kind: str  # "mean colour" (a photo) or "paper colour" (a digit: the image's median)
    ms: float  # the whole try, from the painted mask to both top-k lists
    picture: Image.Image  # the image as the network got it, hidden part filled

    @property
    def delta(self) -> float:
        return self.p_after - self.target.prob

    def to_json(self) -> dict:
        return {"before": self.before.to_json()["top"], "after": self.after.to_json()["top"],
                "target": {"label": self.target.label, "index": self.target.index, "prob": self.target.prob},
                "p_after": self.p_after, "delta": self.delta, "hidden_share": self.hidden,
                "fill": list(self.fill), "fill_kind": self.fill_kind, "ms": round(self.ms, 2),
                "forward_ms": round(self.after.ms, 2)}


def hide(image: ImageLike, model: LoadedModel | str, mask: np.ndarray, *, top: int = 5) -> HideResult:
    """Hide the ``mask``'s pixels (True: hidden; resized to the image when it was painted at
    another size) and compare the top-``top`` before and after."""
    t0 = time.perf_counter()
    lm = resolve(model)
    opened = load_for(lm.spec, image)
    img = opened.image
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise BadRequest("The mask must be one 2-D layer (True where the image is hidden).")
    if mask.shape != (img.height, img.width):
        mask = np.asarray(Image.fromarray(mask).resize(img.size, Image.Resampling.NEAREST))
    if not mask.any():
        raise BadRequest("Paint over part of the image first: nothing is hidden yet.")
    if mask.all():
        raise BadRequest("The whole image is painted over: leave some of it to see what it still shows.")
    before = explore(opened, lm, top=top).prediction
    pixels = np.array(img)
    flat = pixels.reshape(-1, pixels.shape[-1] if pixels.ndim == 3 else 1)
    digit = lm.spec.inputs.kind == "digit"
    fill = tuple(int(round(v)) for v in (np.median(flat, axis=0) if digit else flat.mean(axis=0)))
    pixels[mask] = fill if pixels.ndim == 3 else fill[0]
    hidden_img = Image.fromarray(pixels, img.mode)
    inp = prepare(hidden_img, lm)
    logits, ms, first_run = timed_forward(lm, inp.x)
    after = Prediction(lm.key, lm.weights, top_classes(logits, lm.spec.labels(), top), ms, first_run)
    target = before.top[0]
    p_after = float(torch.softmax(logits.detach().float()[0], 0)[target.index])
    return HideResult(before, after, target, p_after, float(mask.mean()), fill,
                      "paper colour" if digit else "mean colour", (time.perf_counter() - t0) * 1000, hidden_img)


Rect = tuple[int, int, int, int]  # top, left, bottom, right: image pixels, inclusive


def parse_rects(text: str) -> list[Rect]:
    """Rectangles written as ``"TOP LEFT BOTTOM RIGHT"``, several separated by ``;``
    (commas allowed between the numbers), as the API takes them."""
    rects = []
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        fields = part.replace(",", " ").split()
        if len(fields) != 4 or not all(re.fullmatch(r"[+-]?\d+", f) for f in fields):
            raise BadRequest(f"A rectangle is four whole numbers, TOP LEFT BOTTOM RIGHT; got {part.strip()!r}")
        rects.append(tuple(int(f) for f in fields))
    if not rects:
        raise BadRequest("Name at least one rectangle to hide: TOP LEFT BOTTOM RIGHT, in the image's pixels.")
    return rects


def rect_mask(size: tuple[int, int], rects: list[Rect]) -> np.ndarray:
    """The mask (True: hidden) of an image of ``size`` (width, height) with ``rects`` hidden;
    a rectangle is clipped to the image, and one wholly outside it is an error."""
    width, height = size
    mask = np.zeros((height, width), bool)
    for top, left, bottom, right in rects:
        if bottom < top or right < left:
            raise BadRequest(f"The rectangle {top} {left} {bottom} {right} is empty: BOTTOM must be at least TOP "
                             "and RIGHT at least LEFT.")
        if top >= height or left >= width or bottom < 0 or right < 0:
            raise BadRequest(f"The rectangle {top} {left} {bottom} {right} lies outside the {width}x{height} image.")
        mask[max(top, 0):bottom + 1, max(left, 0):right + 1] = True
    return mask
