"""Image files of every kind the app must handle, made on the fly (nothing is downloaded)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def gradient(w: int = 64, h: int = 48) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    rgb = np.stack([x, y, 255 - x], -1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def save(img: Image.Image, path: Path, fmt: str | None = None, **kw) -> Path:
    img.save(path, format=fmt, **kw)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path: Path, side: int = 30000) -> Path:
    """A 1-bit side x side PNG of zeros: a few hundred KB that would decode to side**2 pixels."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    parts = []
    block = row * 1000
    for _ in range(side // 1000):
        parts.append(comp.compress(block))
    parts.append(comp.compress(row * (side % 1000)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"".join(parts))
    path.write_bytes(data + png_chunk(b"IEND", b""))
    return path


def exif_rotated_jpeg(path: Path) -> Path:
    """A 60 x 30 JPEG stored landscape with EXIF orientation 6 (display rotated 90 degrees CW)."""
    img = gradient(60, 30)
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, "JPEG", exif=exif.tobytes())
    return path


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()
