"""Opening user images safely and turning every Pillow mode into what a network reads.

``open_image`` refuses what it cannot read with a specific, human message (``ImageError``),
caps the file size and the pixel count before decoding (decompression bombs), applies the
EXIF orientation, takes the first frame of animations and multi-page files, and converts
every mode correctly: alpha is composited on white, 16-bit and float data are rescaled rather
than clamped, and CMYK, palette, 1-bit and grayscale images become RGB.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import settings
from .errors import BadRequest

# A 224 x 224 centre crop of a 4000 x 3 strip would resize it to 256 x 341,333 first.
MAX_ASPECT = 25.0

ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
# Short side a JPEG is at least decoded at (the networks read 224-299 px; the display ~600 px).
DRAFT_SIDE = 1024


class ImageError(BadRequest):
    """The input is not an image we can use; the message says why, for a person."""


@dataclass(frozen=True)
class OpenedImage:
    """A decoded image in RGB (or RGBA/LA when alpha was asked for), and what was done to it."""

    image: Image.Image
    format: str
    original_size: tuple[int, int]
    original_mode: str
    notes: tuple[str, ...] = field(default=())

    @functools.cached_property
    def digest(self) -> str:
        """Content hash of the decoded pixels (not of the file bytes); hashed once per image
        (a request keys its shared results, explorations and pictures by it several times)."""
        return pixel_digest(self.image)


def pixel_digest(image: Image.Image) -> str:
    h = hashlib.sha256()
    h.update(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()[:32]


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def _sniff(head: bytes) -> str | None:
    """A human name for common non-image (or unsupported) contents, from the first bytes."""
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    low = stripped[:512].lower()
    if low.startswith(b"%pdf"):
        return "a PDF document"
    if b"<svg" in low or (low.startswith(b"<?xml") and b"svg" in low):
        return "an SVG vector drawing (export it as PNG or JPEG first)"
    if low.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    if stripped.startswith(b"PK\x03\x04"):
        return "a ZIP archive (or an Office document)"
    if stripped.startswith((b"\x1f\x8b",)):
        return "a gzip archive"
    if stripped[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "a HEIC/AVIF photo, which this app cannot decode (save it as JPEG or PNG)"
    if stripped[4:8] == b"ftyp":
        return "a video or MP4-style container"
    try:
        text = stripped[:256].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text and all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        return "a text file"
    return None


def _read_source(src: str | os.PathLike | bytes) -> tuple[bytes, str]:
    if isinstance(src, (bytes, bytearray)):
        data = bytes(src)
        name = "the upload"
    else:
        path = Path(src)
        name = path.name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ImageError(f"{name}: file not found") from None
        if not path.is_file():
            raise ImageError(f"{name}: not a file")
        if size > settings.get().max_image_bytes:
            raise ImageError(
                f"{name} is {_mb(size)}; images are limited to {_mb(settings.get().max_image_bytes)}. "
                "Resize or re-save it as JPEG."
            )
        data = path.read_bytes()
    if not data:
        raise ImageError(f"{name} is empty (0 bytes)")
    if len(data) > settings.get().max_image_bytes:
        raise ImageError(f"{name} is {_mb(len(data))}; images are limited to {_mb(settings.get().max_image_bytes)}")
    return data, name


def open_image(
    src: str | os.PathLike | bytes | Image.Image, *, keep_alpha: bool = False
) -> OpenedImage:
    """Decode, validate and normalise an image. Raises ``ImageError`` with a specific message."""
    if isinstance(src, Image.Image):
        im, name, fmt = src, "the image", src.format or "PIL"
    else:
        data, name = _read_source(src)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(
                f"{name} declares too many pixels to decode safely "
                f"(limit {settings.get().max_pixels / 1e6:.0f} megapixels): possibly a decompression bomb"
            ) from None
        except UnidentifiedImageError:
            kind = _sniff(data[:1024])
            what = f"it looks like {kind}" if kind else "its contents are not a known image format"
            raise ImageError(_corrupt_signature(data, name) or (
                f"{name} is not an image this app can read: {what}. "
                "Use JPEG, PNG, WebP, BMP, GIF or TIFF.")) from None
        except Exception as e:  # Pillow raises SyntaxError, ValueError, OSError for broken headers
            # A PNG or JPEG signature followed by junk fails either way, depending on the junk
            # ("Truncated File Read" for about 1 in 100 random tails): it is named the same.
            raise ImageError(f"{_corrupt_signature(data, name) or f'{name} could not be opened as an image'}: {e}"
                             ) from None
        fmt = im.format or "unknown"
    return _normalise(im, name, fmt, keep_alpha)


def _corrupt_signature(data: bytes, name: str) -> str | None:
    """'NAME starts like a PNG (JPEG) but its data is corrupt' when it does; None otherwise."""
    for signature, fmt in ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8", "JPEG")):
        if data.startswith(signature):
            return f"{name} starts like a {fmt} but its data is corrupt"
    return None


def check_header(data: bytes, name: str = "the image") -> None:
    """Refuse, from the header alone, an image too large to decode (``ImageError``); decode
    nothing. Contents Pillow cannot identify pass: ``open_image`` names them later."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageError(
            f"{name} declares too many pixels to decode safely "
            f"(limit {settings.get().max_pixels / 1e6:.0f} megapixels): possibly a decompression bomb"
        ) from None
    except Exception:
        return
    with im:
        _check_size(im, name)


def _check_size(im: Image.Image, name: str) -> None:
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageError(f"{name} has no pixels ({w} x {h})")
    if w * h > settings.get().max_pixels:
        raise ImageError(
            f"{name} is {w} x {h} = {w * h / 1e6:.0f} megapixels; the limit is "
            f"{settings.get().max_pixels / 1e6:.0f} megapixels. Downscale it first."
        )
    aspect = max(w, h) / min(w, h)
    if aspect > MAX_ASPECT:
        raise ImageError(
            f"{name} is {w} x {h} pixels: an aspect ratio of {aspect:.0f}:1 cannot be "
            f"centre-cropped to a square input (limit {MAX_ASPECT:.0f}:1). Crop it first."
        )


def _normalise(im: Image.Image, name: str, fmt: str, keep_alpha: bool) -> OpenedImage:
    notes: list[str] = []
    _check_size(im, name)
    w, h = im.size
    if fmt == "JPEG" and min(w, h) > 2 * DRAFT_SIDE:
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (never below DRAFT_SIDE on the short
        # side): a 24-megapixel photo then costs a few MB instead of ~70 MB to decode.
        scale = min(w, h) / DRAFT_SIDE
        im.draft("RGB", (int(w / scale), int(h / scale)))
        if im.size != (w, h):
            notes.append(f"large JPEG decoded at {im.size[0]} x {im.size[1]}")
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        im.seek(0)
        unit = "page" if fmt == "TIFF" else "frame"
        notes.append(f"{fmt} with {frames} {unit}s: used the first {unit}")
    original_mode = im.mode
    try:
        im.load()
    except Exception as e:
        raise ImageError(f"{name}: the image data is truncated or corrupt ({e})") from None
    im = _reduce_large(im, notes)
    orientation = _exif_orientation(im)
    if orientation not in (None, 1) and not 2 <= orientation <= 8:
        notes.append(f"EXIF orientation tag has an invalid value ({orientation}); used the pixels as stored")
    else:
        try:
            im = ImageOps.exif_transpose(im)
            if orientation not in (None, 1):
                notes.append("EXIF orientation applied")
        except Exception:
            notes.append("EXIF orientation could not be read; used the pixels as stored")
    im = _to_display_mode(im, notes, keep_alpha)
    return OpenedImage(im, fmt, (w, h), original_mode, tuple(notes))


def _exif_orientation(im: Image.Image) -> int | None:
    try:
        value = im.getexif().get(0x0112)
        return int(value) if value is not None else None
    except Exception:
        return None


def _reduce_large(im: Image.Image, notes: list[str]) -> Image.Image:
    """Shrink a huge decoded image by an integer factor at once (Pillow's ``reduce``): every
    later step (mode conversion, alpha, EXIF rotation) then works on a few MB, not hundreds.
    JPEGs were already decoded reduced by ``draft``."""
    w, h = im.size
    factor = min(w, h) // DRAFT_SIDE
    if factor < 2:
        return im
    try:
        small = im.reduce(factor)
    except (ValueError, OSError):  # modes reduce() does not support: keep the full image
        return im
    notes.append(f"large image reduced to {small.size[0]} x {small.size[1]} after decoding")
    return small


_RESCALE_ROWS = 256  # rows converted at a time: float32 copies of a band, never of the whole image


def _float_rows(arr: np.ndarray, r0: int) -> np.ndarray:
    """Rows ``r0`` onwards (one band) as float32, non-finite values set to 0."""
    band = arr[r0:r0 + _RESCALE_ROWS].astype(np.float32)
    if arr.dtype.kind == "f":
        band[~np.isfinite(band)] = 0.0
    return band


def _rescale_to_8bit(arr: np.ndarray, full_scale: float | None) -> Image.Image:
    """Scale integer or float pixels to 8 bits, a band of rows at a time in float32 (a
    40-megapixel image would otherwise need several whole float copies: ~2 GB in float64)."""
    bands = range(0, arr.shape[0], _RESCALE_ROWS)
    if full_scale is None:  # float data: [0, 1] is the convention, anything else is min-max
        lo = min((float(_float_rows(arr, r).min()) for r in bands), default=0.0)
        hi = max((float(_float_rows(arr, r).max()) for r in bands), default=0.0)
        if lo >= 0.0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
    else:
        lo, hi = 0.0, full_scale
    out = np.zeros(arr.shape[:2], np.uint8)
    if hi > lo:
        for r in bands:
            band = _float_rows(arr, r)
            band -= lo
            band *= 255.0 / (hi - lo)
            np.rint(band, out=band)
            np.clip(band, 0, 255, out=band)
            out[r:r + _RESCALE_ROWS] = band
    return Image.fromarray(out, "L")


def _to_display_mode(im: Image.Image, notes: list[str], keep_alpha: bool) -> Image.Image:
    mode = im.mode
    if mode.startswith("I;16"):
        im = _rescale_to_8bit(np.asarray(im), 65535.0)
        notes.append("16-bit grayscale rescaled to 8-bit")
    elif mode == "I":
        arr = np.asarray(im)
        top = 255.0 if arr.max(initial=0) <= 255 and arr.min(initial=0) >= 0 else None
        if top is None and arr.min(initial=0) >= 0 and arr.max(initial=0) <= 65535:
            top = 65535.0
        im = _rescale_to_8bit(arr, top) if top else _rescale_to_8bit(arr.astype(float), None)
        notes.append("32-bit integer image rescaled to 8-bit")
    elif mode == "F":
        im = _rescale_to_8bit(np.asarray(im), None)
        notes.append("floating-point image rescaled to 8-bit")
    elif mode == "P":
        has_alpha = "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode == "CMYK":
        im = im.convert("RGB")
        notes.append("CMYK converted to RGB")
    elif mode in ("RGBa", "La", "PA"):
        im = im.convert("RGBA")
    elif mode not in ("RGB", "RGBA", "LA", "L"):
        try:
            im = im.convert("RGB")
        except (ValueError, OSError) as e:
            raise ImageError(f"images in mode {mode} cannot be converted to RGB ({e})") from None

    if im.mode in ALPHA_MODES:
        rgba = im.convert("RGBA")
        alpha = rgba.getchannel("A")
        if alpha.getextrema()[0] < 255:
            if keep_alpha:
                return rgba
            notes.append("transparent areas composited on white")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return im.convert("RGB")
