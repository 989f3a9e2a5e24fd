"""Every image case: formats, modes, orientation, and clear messages for what cannot be used."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnndemo.images import ImageError, open_image
from images_factory import bomb_png, exif_rotated_jpeg, gradient, jpeg_bytes, save


@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("BMP", "bmp"), ("TIFF", "tif")])
def test_common_formats_open_as_rgb(tmp_path, fmt, ext):
    img = gradient()
    opened = open_image(save(img, tmp_path / f"a.{ext}", fmt))
    assert opened.image.mode == "RGB" and opened.image.size == img.size
    assert opened.format == fmt
    diff = np.abs(np.asarray(opened.image, int) - np.asarray(img, int)).mean()
    assert diff < (8 if fmt in ("JPEG", "WEBP") else 0.01)


def test_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    opened = open_image(path)
    r, g, b = opened.image.getpixel((16, 16))
    assert r > 200 and g < 50 and b < 50
    assert any("first frame" in n for n in opened.notes)


def test_multipage_tiff_uses_the_first_page(tmp_path):
    pages = [Image.new("L", (20, 20), v) for v in (10, 200)]
    path = tmp_path / "pages.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    opened = open_image(path)
    assert opened.image.getpixel((5, 5)) == (10, 10, 10)
    assert any("first page" in n for n in opened.notes)


def test_exif_orientation_is_applied(tmp_path):
    opened = open_image(exif_rotated_jpeg(tmp_path / "rot.jpg"))
    assert opened.image.size == (30, 60)  # stored 60 x 30, shown rotated
    assert "EXIF orientation applied" in opened.notes


def test_alpha_is_composited_on_white(tmp_path):
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0, 255))
    opened = open_image(save(img, tmp_path / "a.png"))
    assert opened.image.getpixel((5, 5)) == (255, 255, 255)
    assert opened.image.getpixel((0, 0)) == (255, 0, 0)


def test_la_and_palette_with_transparency(tmp_path):
    la = Image.new("LA", (8, 8), (0, 0))
    assert open_image(save(la, tmp_path / "la.png")).image.getpixel((1, 1)) == (255, 255, 255)
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.putpixel((0, 0), 1)
    p.info["transparency"] = 0
    out = open_image(save(p, tmp_path / "p.png", transparency=0)).image
    assert out.getpixel((4, 4)) == (255, 255, 255) and out.getpixel((0, 0)) == (255, 0, 0)


def test_sixteen_bit_grayscale_is_rescaled_not_clamped(tmp_path):
    arr = np.full((8, 8), 32768, dtype=np.uint16)  # half of full scale
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    opened = open_image(save(img, tmp_path / "g16.png"))
    v = opened.image.getpixel((0, 0))[0]
    assert 126 <= v <= 129, v  # clamping would give 255
    assert "16-bit grayscale rescaled to 8-bit" in opened.notes


def test_float_tiff_is_rescaled(tmp_path):
    arr = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    opened = open_image(save(Image.fromarray(arr, "F"), tmp_path / "f.tif"))
    assert opened.image.getpixel((0, 0))[0] == 0 and opened.image.getpixel((7, 7))[0] == 255
    wide = np.linspace(-500.0, 1500.0, 64, dtype=np.float32).reshape(8, 8)
    px = open_image(save(Image.fromarray(wide, "F"), tmp_path / "w.tif")).image
    assert px.getpixel((0, 0))[0] == 0 and px.getpixel((7, 7))[0] == 255


def test_one_bit_cmyk_and_grayscale(tmp_path):
    one = Image.new("1", (8, 8), 1)
    assert open_image(save(one, tmp_path / "b.png")).image.getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    r, g, b = open_image(save(cmyk, tmp_path / "c.jpg", "JPEG", quality=95)).image.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60
    gray = Image.new("L", (8, 8), 77)
    assert open_image(save(gray, tmp_path / "g.png")).image.getpixel((0, 0)) == (77, 77, 77)


def test_png_data_with_a_jpg_name(tmp_path):
    path = tmp_path / "really_png.jpg"
    gradient().save(path, "PNG")
    assert open_image(path).format == "PNG"


@pytest.mark.parametrize(
    "name,data,expect",
    [
        ("empty.jpg", b"", "empty"),
        ("notes.jpg", b"just some text, not a picture\n", "text file"),
        ("doc.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "PDF"),
        ("logo.svg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
        ("junk.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "PNG"),
    ],
)
def test_unusable_files_get_specific_messages(tmp_path, name, data, expect):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ImageError, match=expect):
        open_image(path)


def test_truncated_jpeg(tmp_path):
    data = jpeg_bytes(gradient(200, 200), quality=95)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        open_image(path)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ImageError, match="too many pixels|megapixels"):
        open_image(path)


def test_pixel_cap_and_extreme_aspect(tmp_path):
    with pytest.raises(ImageError, match="aspect ratio"):
        open_image(save(Image.new("RGB", (4000, 3)), tmp_path / "strip.png"))
    big = tmp_path / "big.png"
    Image.new("1", (8000, 6000)).save(big)  # 48 MP, tiny on disk
    with pytest.raises(ImageError, match="megapixels"):
        open_image(big)


def test_file_size_cap(tmp_path):
    path = tmp_path / "huge.jpg"
    with open(path, "wb") as f:
        f.truncate(26 * 1024 * 1024)
    with pytest.raises(ImageError, match="limited to"):
        open_image(path)


@pytest.mark.parametrize("size", [(1, 1), (2, 2)])
def test_tiny_images_still_predict(tmp_path, size):
    from cnndemo.predict import predict

    path = save(Image.new("RGB", size, (200, 30, 30)), tmp_path / "tiny.png")
    pred = predict(path, "squeezenet1_0")
    assert len(pred.top) == 5 and abs(sum(t.prob for t in pred.top)) <= 1.0


def test_large_photo_predicts(tmp_path):
    from cnndemo.predict import predict

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (4000, 6000, 3), dtype=np.uint8)
    path = tmp_path / "photo.jpg"
    Image.fromarray(arr).save(path, quality=70)
    pred = predict(path, "squeezenet1_0")
    assert pred.top[0].prob > 0


def test_invalid_exif_orientation_is_reported_as_such(tmp_path):
    img = gradient(40, 30)
    exif = img.getexif()
    exif[0x0112] = 9
    path = tmp_path / "o9.jpg"
    img.save(path, exif=exif.tobytes())
    opened = open_image(path)
    assert opened.image.size == (40, 30)
    assert any("invalid value (9)" in n for n in opened.notes)
    assert not any(n == "EXIF orientation applied" for n in opened.notes)


def test_large_16bit_png_is_reduced_with_bounded_memory(tmp_path):
    import tracemalloc

    arr = (np.arange(6000 * 4000, dtype=np.uint32) % 65536).astype(np.uint16).reshape(4000, 6000)
    path = tmp_path / "big16.png"
    Image.fromarray(arr).save(path)
    del arr
    tracemalloc.start()
    opened = open_image(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert opened.image.mode == "RGB"
    # numpy allocations are traced: float64 copies of 24 MP would be ~190 MB each.
    assert peak < 150 * 2**20, f"peak {peak / 2**20:.0f} MB"
