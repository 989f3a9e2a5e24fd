"""Turning any drawn or photographed digit into an MNIST-style 28 x 28 image.

MNIST digits are white on black, size-normalised to fit a 20 x 20 box (keeping the aspect
ratio), and centred by their centre of mass in a 28 x 28 field. Drawings arrive as dark
strokes on a white or transparent canvas of any size, photos as ink on paper; all of them are
brought to that form here, so the networks see what they were trained on.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from .errors import BadRequest

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
LABELS = tuple(str(d) for d in range(10))

# Below this peak contrast there is no digit to read, just paper or an empty canvas.
MIN_CONTRAST = 0.12
MIN_INK_PIXELS = 4


class EmptyDrawing(BadRequest):
    """There is no ink to read."""


def ink_map(img: Image.Image) -> np.ndarray:
    """Ink intensity in [0, 1], whatever the polarity, colour or transparency of the input."""
    if img.mode == "RGBA" and img.getchannel("A").getextrema()[0] < 255:
        # Strokes on a transparent canvas: the ink is whatever is opaque, in any colour.
        return np.asarray(img.getchannel("A"), dtype=np.float32) / 255.0
    gray = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    h, w = gray.shape
    m = max(1, min(h, w) // 20)
    frame = np.concatenate(
        [gray[:m].ravel(), gray[-m:].ravel(), gray[:, :m].ravel(), gray[:, -m:].ravel()]
    )
    background = float(np.median(frame))
    # Dark strokes on light paper are inverted; light strokes on dark stay as they are.
    ink = background - gray if background >= 0.5 else gray - background
    return np.clip(ink, 0.0, 1.0)


# Share of mid-tone pixels (between paper and full ink) above which an input is a photograph:
# MNIST digits and canvas drawings stay under 0.13 (anti-aliased stroke edges); photos of
# scenes measure 0.25 and more. Colour (mean HSV saturation) is the second sign.
MAX_MIDTONES = 0.2
MAX_SATURATION = 0.25
PHOTO_WARNING = "⚠ this looks like a photo, not a handwritten digit"


def photo_warning(img: Image.Image, trained_on: str) -> str | None:
    """A warning when ``img`` is far from a digit drawing (a photo given to a digit network)."""
    ink = ink_map(img)
    peak = float(ink.max()) if ink.size else 0.0
    if peak < MIN_CONTRAST:
        return None
    ink = ink / peak
    midtones = float(((ink > 0.15) & (ink < 0.85)).mean())
    saturation = float(np.asarray(img.convert("RGB").convert("HSV"), dtype=np.float32)[..., 1].mean() / 255)
    if midtones <= MAX_MIDTONES and saturation <= MAX_SATURATION:
        return None
    why = f"{midtones:.0%} of its pixels are mid-tones" if midtones > MAX_MIDTONES else f"it is in colour (saturation {saturation:.2f})"
    return f"{PHOTO_WARNING} ({why}); this network was trained on {trained_on}, so its answer says little about this image"


def disagreement(readings: dict[str, tuple[str, float]]) -> str | None:
    """``{network name: (top-1 digit, probability)}`` -> a plain sentence when the networks do
    not all read the same digit; None when they agree."""
    if len({digit for digit, _ in readings.values()}) <= 1:
        return None
    return "The networks disagree: " + ", ".join(
        f"{name} reads {digit} ({prob:.0%})" for name, (digit, prob) in readings.items()) + "."


def normalize_digit(img: Image.Image) -> Image.Image:
    """A 28 x 28 'L' image, white digit on black, made the way MNIST was made."""
    ink = ink_map(img)
    peak = float(ink.max()) if ink.size else 0.0
    if peak < MIN_CONTRAST:
        raise EmptyDrawing("The canvas is empty: draw a digit (or upload a photo of one).")
    ink = ink / peak
    # Soft noise floor: paper texture and JPEG ringing are not ink.
    ink = np.clip((ink - 0.15) / 0.85, 0.0, 1.0)
    ys, xs = np.nonzero(ink > 0.1)
    if ys.size < MIN_INK_PIXELS:
        raise EmptyDrawing("There is too little ink to read a digit: draw it larger.")
    crop = ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = crop.shape
    scale = 20.0 / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = Image.fromarray((crop * 255).astype(np.uint8), "L").resize(
        (nw, nh), Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BILINEAR
    )
    arr = np.asarray(small, dtype=np.float32)
    total = arr.sum()
    cy, cx = (np.indices(arr.shape) * arr).reshape(2, -1).sum(1) / max(total, 1e-6)
    # Put the centre of mass at the centre of the 28 x 28 field.
    top = int(round(14.0 - 0.5 - cy))
    left = int(round(14.0 - 0.5 - cx))
    top = min(max(top, 0), 28 - nh)
    left = min(max(left, 0), 28 - nw)
    out = np.zeros((28, 28), dtype=np.float32)
    out[top : top + nh, left : left + nw] = arr
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "L")


class DigitTransform:
    """PIL image (any drawing or photo) -> normalised 1 x S x S tensor, as MNIST training saw it."""

    def __init__(self, size: int = 28):
        self.size = size
        steps = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        if size != 28:
            steps.insert(1, v2.Resize((size, size), antialias=True))
        steps.append(v2.Normalize(MNIST_MEAN, MNIST_STD))
        self.to_tensor = v2.Compose(steps)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.to_tensor(normalize_digit(img))

    def __repr__(self) -> str:
        return f"DigitTransform(size={self.size})"
