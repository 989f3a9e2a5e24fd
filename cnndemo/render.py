"""Pictures: heat maps, overlays, channel grids and plots, as PIL images or Figure objects.

No pyplot: every figure is a ``matplotlib.figure.Figure`` rendered with the Agg canvas, so
concurrent requests never share plotting state.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageOps


@dataclass(frozen=True)
class Look:
    """How a picture is drawn for the page it lands on: dark or light theme, and presenter mode
    (text about 1.6 times larger, for a projector at the back of a room)."""

    dark: bool = False
    presenter: bool = False

    @classmethod
    def parse(cls, text: str | None) -> "Look":
        """From the page's words, e.g. "dark presenter"; anything unknown is ignored."""
        words = set(str(text or "").lower().split())
        return cls("dark" in words, "presenter" in words)

    def __str__(self) -> str:
        return ("dark" if self.dark else "light") + (" presenter" if self.presenter else "")

    @property
    def scale(self) -> float:
        return 1.6 if self.presenter else 1.0

    # Gradio's own background and text colours for the theme (Soft), so a picture sits in the page.
    @property
    def paper(self) -> str:
        return "#0b0f19" if self.dark else "#ffffff"

    @property
    def ink(self) -> str:
        return "#f4f4f5" if self.dark else "#111827"

    @property
    def muted(self) -> str:
        return "#a1a1aa" if self.dark else "#52525b"

    @property
    def accent(self) -> str:
        return "#fbbf24" if self.dark else "#b45309"


LIGHT = Look()


# Colour-blind-safe choices (about 1 in 12 men cannot tell red from green): a diverging
# purple-white-orange map for signed values, perceptually uniform maps for magnitudes, and
# matplotlib's petroff10 cycle (designed for colour-vision deficiencies) for branches.
SIGNED_CMAP = "PuOr_r"  # negative purple, zero white, positive orange
MAGNITUDE_CMAP = "inferno"
SIGNED_LEGEND = "orange +, purple -"


def _branch_colours() -> list:
    from matplotlib import color_sequences

    return list(color_sequences["petroff10"])


def branch_colours_hex() -> list[str]:
    from matplotlib.colors import to_hex

    return [to_hex(c) for c in _branch_colours()]


def _cmap(name: str):
    from matplotlib import colormaps

    return colormaps[name]


def colorize(arr: np.ndarray, cmap: str = "inferno", vmin: float | None = None, vmax: float | None = None) -> Image.Image:
    """A 2-D array as an RGB image through a colormap (min-max scaled unless given limits)."""
    a = np.asarray(arr, dtype=np.float32)
    lo = float(np.nanmin(a)) if vmin is None else vmin
    hi = float(np.nanmax(a)) if vmax is None else vmax
    scaled = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    rgba = _cmap(cmap)(np.clip(scaled, 0, 1))
    return Image.fromarray((rgba[..., :3] * 255).astype(np.uint8), "RGB")


def overlay(base: Image.Image, arr: np.ndarray, *, alpha: float = 0.55, cmap: str = "inferno") -> Image.Image:
    """A heat map resized (bilinear) onto ``base`` and blended over it."""
    heat = colorize(arr, cmap).resize(base.size, Image.Resampling.BILINEAR)
    return Image.blend(base.convert("RGB"), heat, alpha)


def enlarge_factor(size: tuple[int, int], at_least: int = 224) -> int:
    """The whole factor ``enlarged`` scales a picture of ``size`` by (1: left as it is)."""
    return max(1, -(-at_least // max(size)))


def enlarged(img: Image.Image, at_least: int = 224) -> Image.Image:
    """A small picture (a 28 x 28 digit) scaled up by a whole factor, pixels kept sharp, so a
    browser shows its pixels rather than a smudge; larger pictures are returned as they are."""
    factor = enlarge_factor(img.size, at_least)
    if factor == 1:
        return img
    return img.resize((img.size[0] * factor, img.size[1] * factor), Image.Resampling.NEAREST)


def new_figure(width: float, height: float, dpi: int = 100, layout: str | None = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def figure_to_image(fig) -> Image.Image:
    """The figure cropped to what is drawn, titles and colour bars included (``bbox_inches=
    "tight"`` grows the canvas for text outside it). PNG at the fastest compression: the
    file is only a way to hand the pixels over."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pil_kwargs={"compress_level": 1})
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def apply_look(fig, look: Look = LIGHT):
    """Restyle a drawn figure for ``look``: larger text in presenter mode; in dark mode the
    theme's background, with dark text, ticks, spines and legend frames turned light."""
    from matplotlib.colors import to_rgb
    from matplotlib.text import Text

    if look == LIGHT:
        return fig
    ticks = {id(t) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis) for t in axis.get_ticklabels(which="both")}
    texts = [t for t in fig.findobj(Text) if t.get_text() and id(t) not in ticks]
    if look.presenter:  # text grows by the full scale, the canvas by its square root: room to lay out
        w, h = fig.get_size_inches()
        fig.set_size_inches(w * look.scale ** 0.5, h * look.scale ** 0.5)
        for ax in fig.axes:
            for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
                labels = axis.get_ticklabels()
                if labels:
                    ax.tick_params(axis=name, labelsize=labels[0].get_fontsize() * look.scale)
    for t in texts:
        if look.presenter:
            t.set_fontsize(t.get_fontsize() * look.scale)
        if look.dark and t.get_bbox_patch() is None and sum(to_rgb(t.get_color())) < 1.5:
            t.set_color(look.ink)
    if look.dark:
        fig.set_facecolor(look.paper)
        for ax in fig.axes:
            ax.set_facecolor(look.paper)
            ax.tick_params(colors=look.muted, labelcolor=look.ink)
            for spine in ax.spines.values():
                spine.set_color(look.muted)
            ax.xaxis.label.set_color(look.ink)
            ax.yaxis.label.set_color(look.ink)
            ax.title.set_color(look.ink)
        for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes)]:
            if legend is not None:
                legend.get_frame().set_facecolor(look.paper)
                legend.get_frame().set_edgecolor(look.muted)
                for t in [*legend.get_texts(), legend.get_title()]:
                    t.set_color(look.ink)
    return fig


def training_curves(history: Sequence[dict], steps: Sequence[tuple[int, float]], title: str):
    """Loss (per step and per epoch) and accuracy (train, held-out) curves of one run."""
    fig = new_figure(10, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    if steps:
        s, loss = zip(*steps)
        ax1.plot(s, loss, lw=0.6, alpha=0.5, label="batch loss")
    per_epoch = max(1, len(steps) // max(1, len(history)))
    ep_steps = [h["epoch"] * per_epoch for h in history]
    ax1.plot(ep_steps, [h["loss"] for h in history], "o-", label="train loss (epoch)")
    ax1.plot(ep_steps, [h["test_loss"] for h in history], "s-", label="held-out loss")
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("cross-entropy")
    ax1.set_yscale("log")
    ax1.legend(fontsize=8)
    epochs = [h["epoch"] for h in history]
    ax2.plot(epochs, [h["train_acc"] for h in history], "o-", label="train (augmented)")
    ax2.plot(epochs, [h["test_acc"] for h in history], "s-", label="held-out")
    ax2.set_xticks(epochs)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    ax2.set_ylim(0, 100)
    ax2.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


@functools.lru_cache(maxsize=64)
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _branch_lines(block, b, look: Look, z: float | None = None) -> list[tuple[str, int, str]]:
    """The facts beside a branch's maps: (text, font size, colour); ``z`` scales the text
    (default: the look's own scale)."""
    info = b.info
    if info.channels:
        ch = f"channels {info.channels[0]}-{info.channels[1]}"
    elif block.info.merge == "single":
        ch = "the stage's only path: all channels"
    else:
        ch = "added to the other branch: full width"
    z = look.scale if z is None else z
    return [
        (info.name, round(16 * z), look.ink),
        (info.path, round(13 * z), look.ink),
        (ch, round(13 * z), look.ink),
        (f"{'x'.join(map(str, info.shape))} | {info.params:,} params", round(13 * z), look.ink),
        (f"share of block energy: {b.share:.1%}", round(13 * z), look.accent),
    ]


def _draw_lines(draw, lines, x: int, y: int, width: int) -> int:
    """Draw wrapped lines from (x, y); return the y below the last one."""
    for text, size, color in lines:
        font = _font(size)
        for part in _wrap(draw, text, font, width):
            draw.text((x, y), part, fill=color, font=font)
            y += size + 4
    return y


def _lines_height(draw, lines, width: int) -> int:
    return sum((size + 4) * len(_wrap(draw, text, _font(size), width)) for text, size, _ in lines)


def unit_pick(seen: Image.Image, channel_map: np.ndarray, at: tuple[float, float], *, look: Look = LIGHT,
              at_least: int = 320) -> Image.Image:
    """A channel's map over the image the network saw, scaled up by a whole factor (a click's
    pixel maps back to the unit), with a cross on the picked unit's centre (input pixels)."""
    img = enlarged(overlay(seen, channel_map), at_least)
    f = img.size[0] / seen.size[0]
    draw = ImageDraw.Draw(img)
    cy, cx = (at[0] + 0.5) * f, (at[1] + 0.5) * f
    arm, width = max(8, round(10 * look.scale * f ** 0.3)), max(2, round(2 * look.scale))
    for colour, grow in (("#000000", width + 2), ("#ffffff", width)):
        draw.line([(cx - arm, cy), (cx + arm, cy)], fill=colour, width=grow)
        draw.line([(cx, cy - arm), (cx, cy + arm)], fill=colour, width=grow)
    return img


def unit_field(seen: Image.Image, erf: np.ndarray | None, box: tuple[int, int, int, int],
               radius90: float | None, *, look: Look = LIGHT, at_least: int = 320) -> Image.Image:
    """Where a unit looks: the effective field (|gradient|, square-rooted so its faint tail
    shows) over the image, the theoretical box (clipped to the image; dashed where it reaches
    past it) and the circle that holds 90% of the gradient."""
    base = seen.convert("RGB")
    if erf is not None and erf.max() > 0:
        heat = colorize(np.sqrt(erf / erf.max()), "inferno", 0.0, 1.0)
        mask = Image.fromarray((np.sqrt(erf / erf.max()) * 220).astype(np.uint8), "L")
        base = Image.composite(heat, Image.blend(base, Image.new("RGB", base.size, "#000000"), 0.35), mask)
    img = enlarged(base, at_least)
    f = img.size[0] / seen.size[0]
    h, w = seen.size[1], seen.size[0]
    t, left, b, r = box
    draw = ImageDraw.Draw(img)
    width = max(2, round(2 * look.scale))
    edges = [((left, t), (r + 1, t), t < 0), ((left, b + 1), (r + 1, b + 1), b >= h),
             ((left, t), (left, b + 1), left < 0), ((r + 1, t), (r + 1, b + 1), r >= w)]
    for (x0, y0), (x1, y1), outside in edges:
        pts = [(min(max(x0, 0) * f, img.size[0] - 1), min(max(y0, 0) * f, img.size[1] - 1)),
               (min(max(x1, 0) * f, img.size[0] - 1), min(max(y1, 0) * f, img.size[1] - 1))]
        if outside:  # the box's side lies beyond the image: drawn dashed along the image's edge
            (ax, ay), (bx, by) = pts
            n = max(1, int(max(abs(bx - ax), abs(by - ay)) // 12))
            for i in range(0, n, 2):
                draw.line([(ax + (bx - ax) * i / n, ay + (by - ay) * i / n),
                           (ax + (bx - ax) * (i + 1) / n, ay + (by - ay) * (i + 1) / n)], fill="#22d3ee", width=width)
        else:
            draw.line(pts, fill="#22d3ee", width=width)
    if radius90:
        cy, cx = (t + b + 1) / 2 * f, (left + r + 1) / 2 * f
        rr = radius90 * f
        draw.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], outline="#ffffff", width=max(1, width - 1))
    return img


@dataclass(frozen=True)
class PanelLayout:
    """Where ``block_panel`` puts everything: the canvas, the header's height, and for each
    branch its text lines and the square of every map (x, y, side) with the channel it shows
    (None: the branch's mean map)."""
    width: int
    height: int
    head: int
    head_lines: list
    rows: list  # per branch: (its text lines, the y of its row)
    spots: list  # per branch: [(channel or None, (x, y, side)), ...], mean map first
    pad: int  # the margin, and the gap between the parts
    text_w: int  # the width of the text column
    label_h: int  # the height of a channel's label above its map

    def spot_at(self, x: float, y: float) -> tuple[int, int | None, float, float] | None:
        """The map under the panel pixel (x, y): (branch index, channel or None, fractions down
        and across the map), or None off every map."""
        for i, maps in enumerate(self.spots):
            for channel, (x0, y0, side) in maps:
                if x0 <= x < x0 + side and y0 <= y < y0 + side:
                    return i, channel, (y - y0) / side, (x - x0) / side
        return None


def panel_layout(block, *, tile: int = 92, look: Look = LIGHT) -> PanelLayout:
    """``block_panel``'s layout, without drawing (a click on the panel maps back through it)."""
    z = look.scale
    k = max(len(b.top_channels) for b in block.branches)
    big, pad = int(tile * 1.7), 8
    text_w, label_h = int(300 * z), round(11 * z) + 5
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = [_branch_lines(block, b, look) for b in block.branches]
    row_hs = [max(big, label_h + tile, _lines_height(probe, ls, text_w - pad)) + 2 * pad for ls in lines]
    width = text_w + big + pad * 3 + k * (tile + 4)
    subtitle = (f"left: mean activation over the image, over all its channels; right: the {k} most active "
                "channels of each branch")
    head_lines = [(f"{block.info.name} · {block.info.kind}", round(17 * z), look.ink), (subtitle, round(12 * z), look.muted)]
    head = _lines_height(probe, head_lines, width - 2 * pad) + 2 * pad
    rows, spots, y0 = [], [], head
    for b, ls, row_h in zip(block.branches, lines, row_hs):
        y = y0 + pad
        rows.append((ls, y))
        x0 = text_w + big + pad * 2
        spots.append([(None, (text_w, y, big))] + [(chan, (x0 + c * (tile + 4), y + label_h, tile))
                                                    for c, chan in enumerate(b.top_channels)])
        y0 += row_h
    return PanelLayout(width, y0, head, head_lines, rows, spots, pad, text_w, label_h)


def block_panel(block, seen: Image.Image, *, cmap: str = "inferno", tile: int = 92, look: Look = LIGHT) -> Image.Image:
    """One row per branch: facts, its mean activation over the input image, its top channels.

    Composed with Pillow (tens of milliseconds) rather than a 40-axes figure (over a second);
    drawn for ``look`` (the theme's background, and larger text in presenter mode), where
    ``panel_layout`` says.
    """
    lay = panel_layout(block, tile=tile, look=look)
    pad = lay.pad
    canvas = Image.new("RGB", (lay.width, lay.height), look.paper)
    draw = ImageDraw.Draw(canvas)
    _draw_lines(draw, lay.head_lines, pad, pad, lay.width - 2 * pad)
    label = _font(round(11 * look.scale))
    for b, (lines, y), maps in zip(block.branches, lay.rows, lay.spots):
        _draw_lines(draw, lines, pad, y, lay.text_w - pad)
        for (chan, (x, y0, side)), m in zip(maps, [b.mean_map, *b.top_maps]):
            if chan is None:
                canvas.paste(overlay(seen, m, cmap=cmap).resize((side, side)), (x, y0))
            else:
                canvas.paste(colorize(m, cmap).resize((side, side), Image.Resampling.NEAREST), (x, y0))
                draw.text((x, y0 - lay.label_h), f"#{chan}", fill=look.muted, font=label)
    return canvas


def tile_grid(rows: Sequence[tuple[str, Sequence[tuple[Image.Image, str]]]], *, tile: int = 128,
              look: Look = LIGHT) -> Image.Image:
    """Rows of pictures with a caption under each, a row's label on its left: each picture
    scaled to fit ``tile`` pixels square in its own shape (small ones kept sharp)."""
    z, pad = look.scale, 8
    label_w, cap = int(130 * z), round(11 * z)
    cols = max((len(cells) for _, cells in rows), default=1)
    row_h = tile + 2 * (cap + 4) + pad
    canvas = Image.new("RGB", (label_w + cols * (tile + pad) + pad, pad + len(rows) * row_h), look.paper)
    draw = ImageDraw.Draw(canvas)
    small = _font(cap)
    for r, (label, cells) in enumerate(rows):
        y = pad + r * row_h
        _draw_lines(draw, [(label, round(13 * z), look.ink)], pad, y + tile // 3, label_w - pad)
        for c, (img, caption) in enumerate(cells):
            x = label_w + c * (tile + pad)
            pic = img.convert("RGB")  # kept in shape (a field cut by the image's edge is not square)
            pic = ImageOps.contain(pic, (tile, tile), Image.Resampling.NEAREST if max(pic.size) < tile
                                   else Image.Resampling.LANCZOS)
            canvas.paste(pic, (x + (tile - pic.width) // 2, y + (tile - pic.height) // 2))
            for i, part in enumerate(_wrap(draw, caption, small, tile)[:2]):
                draw.text((x, y + tile + 2 + i * (cap + 4)), part, fill=look.muted, font=small)
    return canvas


def _rgb(colour: str) -> tuple[int, int, int]:
    return ImageColor.getrgb(colour)[:3]


def _confusion_geometry(look: Look) -> tuple[int, int, int]:
    """(left, top, cell) of ``confusion_matrix``'s grid, in pixels."""
    z = look.scale
    return int(70 * z), int(56 * z), int(34 * z)


def confusion_matrix(matrix: np.ndarray, look: Look = LIGHT, title: str = "") -> Image.Image:
    """A 10 x 10 confusion matrix: rows the true digit, columns the one read, each cell its
    count, shaded by its share of its row (the diagonal in the accent colour)."""
    left, top, cell = _confusion_geometry(look)
    z = look.scale
    canvas = Image.new("RGB", (left + 10 * cell + 12, top + 10 * cell + 12), look.paper)
    draw = ImageDraw.Draw(canvas)
    font, small = _font(round(12 * z)), _font(round(11 * z))
    draw.text((left, 4), title or "read as", fill=look.ink, font=font)
    draw.text((4, top + 5 * cell - 6), "true", fill=look.ink, font=font)
    rows = matrix.sum(1, keepdims=True).clip(min=1)
    paper = np.array(_rgb(look.paper))
    accent, wrong = np.array(_rgb(look.accent)), np.array([0xd6, 0x2d, 0x20])
    for j in range(10):
        draw.text((left + j * cell + cell // 2 - 3, top - round(16 * z)), str(j), fill=look.muted, font=small)
        draw.text((left - round(14 * z), top + j * cell + cell // 2 - 6), str(j), fill=look.muted, font=small)
    for i in range(10):
        for j in range(10):
            share = matrix[i, j] / rows[i, 0]
            # A mistake shows even when it is one digit in a hundred.
            strength = share if i == j else (0.3 + 0.7 * min(1.0, 4 * share) if matrix[i, j] else 0.0)
            tint = (accent if i == j else wrong) * strength + paper * (1 - strength)
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 2, y0 + cell - 2], fill=tuple(int(v) for v in tint))
            if matrix[i, j]:
                light = tint @ np.array([0.299, 0.587, 0.114]) > 140
                draw.text((x0 + 4, y0 + cell // 2 - 6), str(int(matrix[i, j])),
                          fill="#111827" if light else "#f4f4f5", font=small)
    return canvas


def confusion_cell(look: Look, x: float, y: float) -> tuple[int, int] | None:
    """(true digit, digit read) of the cell under (x, y) on ``confusion_matrix``, or None."""
    left, top, cell = _confusion_geometry(look)
    i, j = int((y - top) // cell), int((x - left) // cell)
    return (i, j) if 0 <= i < 10 and 0 <= j < 10 and x >= left and y >= top else None


def branch_card(block, branch, seen: Image.Image, *, cmap: str = "inferno", n: int = 4, look: Look = LIGHT) -> Image.Image:
    """One branch, about as tall as it is wide, so it stays readable on a phone: its facts on
    top, its mean map over the image on the left, its ``n`` most active channels in a 2-column
    grid on the right."""
    from PIL import ImageDraw

    # Text 1.35 times the panel's: the card is shown at phone width, about 0.65 of its own.
    z, pad = look.scale * 1.35, 10
    big, tile = 240, 112
    label_h = round(12 * z) + 6
    chans = list(zip(branch.top_channels, branch.top_maps))[:n]
    rows = max(1, (len(chans) + 1) // 2)
    grid_h = rows * (label_h + tile + 6)
    width = pad * 3 + big + 2 * (tile + 6)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = _branch_lines(block, branch, look, z)
    lines[1:4] = [(" · ".join(t for t, _, _ in lines[1:4]), lines[1][1], look.ink)]
    head = _lines_height(probe, lines, width - 2 * pad) + pad * 2
    canvas = Image.new("RGB", (width, head + max(big + label_h, grid_h) + pad), look.paper)
    draw = ImageDraw.Draw(canvas)
    _draw_lines(draw, lines, pad, pad, width - 2 * pad)
    small = _font(round(12 * z))
    draw.text((pad, head), "mean over its channels", fill=look.muted, font=small)
    canvas.paste(overlay(seen, branch.mean_map, cmap=cmap).resize((big, big)), (pad, head + label_h))
    x0 = pad * 2 + big
    for i, (chan, m) in enumerate(chans):
        x, y = x0 + (i % 2) * (tile + 6), head + (i // 2) * (label_h + tile + 6)
        draw.text((x, y), f"channel #{chan}", fill=look.muted, font=small)
        canvas.paste(colorize(m, cmap).resize((tile, tile), Image.Resampling.NEAREST), (x, y + label_h))
    return canvas


def _wrap(draw, text: str, font, width: int) -> list[str]:
    """``text`` broken into lines no wider than ``width`` pixels in ``font``. Measuring text is
    most of a panel's drawing time, and the same labels come back in every panel: remembered."""
    return list(_wrapped(text, font, width))


@functools.lru_cache(maxsize=4096)
def _wrapped(text: str, font, width: int) -> tuple[str, ...]:
    words, lines, cur = text.split(" "), [], ""
    for w in words:
        trial = f"{cur} {w}".strip()
        if font.getlength(trial) <= width or not cur:
            cur = trial
        else:
            lines.append(cur)
            cur = w
    return tuple(lines + [cur] if cur else lines)


# ----------------------------------------------------------------------------- attributions


def _hwc(attr: np.ndarray) -> np.ndarray:
    a = np.asarray(attr, dtype=np.float32)
    return a[:, :, None] if a.ndim == 2 else np.transpose(a, (1, 2, 0))


def _rgb01(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _captum_view(fig, ax, attr: np.ndarray, img: np.ndarray | None, **kw) -> None:
    """Captum's ``visualize_image_attr`` on our axes; a map that is (almost) all zeros, which
    Captum cannot scale, is drawn as the plain image with a note saying so."""
    from captum.attr import visualization as viz

    try:
        viz.visualize_image_attr(attr, img, plt_fig_axis=(fig, ax), use_pyplot=False, **kw)
    except AssertionError:
        if img is not None:
            ax.imshow(img)
        ax.text(0.5, 0.5, "attribution is zero almost everywhere:\nthe class score does not depend\non these pixels",
                ha="center", va="center", fontsize=8, transform=ax.transAxes,
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "#999"})
        ax.set_xticks([])
        ax.set_yticks([])
        if kw.get("title"):
            ax.set_title(kw["title"])


def _attribution_title(a) -> str:
    from .attribution import METHODS

    at = f" at {a.layer}" if a.layer else ""
    return f"{METHODS[a.method].name}{at}\ntarget: {a.label} ({a.target})"


def _draw_overlay(fig, ax, a, subtitle: str = "") -> None:
    """|attribution| blended over the image the network saw, with a colour bar (Captum's
    ``visualize_image_attr`` on a Figure of ours: no pyplot)."""
    _captum_view(fig, ax, _hwc(a.attr), _rgb01(a.seen), method="blended_heat_map", sign="absolute_value",
                 show_colorbar=True, cmap=MAGNITUDE_CMAP, alpha_overlay=0.55,
                 title="|attribution| over the image" + subtitle)


def _draw_signed(fig, ax, a, subtitle: str = "") -> None:
    """The map with its sign (a diverging scale when it has negative values), with a colour bar."""
    attr = _hwc(a.attr)
    has_negative = bool(np.nanmin(attr) < 0)
    _captum_view(fig, ax, attr, None, method="heat_map", sign="all" if has_negative else "positive",
                 show_colorbar=True, cmap=SIGNED_CMAP if has_negative else MAGNITUDE_CMAP,
                 title=(f"signed map ({SIGNED_LEGEND})" if has_negative else "map (all values >= 0)") + subtitle)


def attribution_overlay(a, look: Look = LIGHT) -> Image.Image:
    """|attribution| over the image, titled with its method, layer and target."""
    fig = new_figure(4.6, 4.2)
    _draw_overlay(fig, fig.add_subplot(1, 1, 1), a, "\n" + _attribution_title(a))
    return figure_to_image(apply_look(fig, look))


def attribution_signed(a, look: Look = LIGHT) -> Image.Image:
    """The signed map, titled with its method, layer and target."""
    fig = new_figure(4.6, 4.2)
    _draw_signed(fig, fig.add_subplot(1, 1, 1), a, "\n" + _attribution_title(a))
    return figure_to_image(apply_look(fig, look))


def attribution_views(a, look: Look = LIGHT) -> tuple[Image.Image, Image.Image]:
    """(overlay of |attribution| on the image, signed map), each with a colour bar."""
    return attribution_overlay(a, look), attribution_signed(a, look)


SLIDE_SIZE = (1920, 1080)


def attribution_slide(a, title: str, lines: Sequence[str], *, warning: str | None = None,
                      look: Look = LIGHT) -> Image.Image:
    """One attribution as a 1920 x 1080 slide: ``title`` (model, weights, method, layer, target)
    on top, the |map| overlay and the signed map side by side, ``lines`` (the scores) below,
    and ``warning`` in red when the map explains an untrained network."""
    w, h = SLIDE_SIZE
    dpi = 120
    fig = new_figure(w / dpi, h / dpi, dpi=dpi)
    gs = fig.add_gridspec(3, 2, height_ratios=[0.14, 0.58, 0.28], hspace=0.16, wspace=0.12,
                          left=0.04, right=0.96, top=0.97, bottom=0.03)
    head = fig.add_subplot(gs[0, :])
    head.axis("off")
    head.text(0, 0.95, title, fontsize=20, fontweight="bold", va="top", wrap=True)
    if warning:
        head.text(0, 0.12, warning, fontsize=16, color="white", va="bottom", fontweight="bold",
                  bbox={"facecolor": "#b91c1c", "edgecolor": "#7f1d1d", "pad": 4})
    _draw_overlay(fig, fig.add_subplot(gs[1, 0]), a)
    _draw_signed(fig, fig.add_subplot(gs[1, 1]), a)
    foot = fig.add_subplot(gs[2, :])
    foot.axis("off")
    foot.text(0, 1, "\n".join(lines), fontsize=13, va="top", wrap=True, linespacing=1.4)
    for ax in fig.axes:
        ax.tick_params(labelsize=12)
        if ax.get_title():
            ax.title.set_fontsize(16)
    apply_look(fig, Look(look.dark, False))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)  # the full canvas: a slide keeps its 16:9 size
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def attribution_grid(items: list, titles: list[str], *, cols: int = 3, look: Look = LIGHT,
                     title: str | None = None) -> Image.Image:
    """Several attributions as |map| overlays in a grid, one title and colour bar each (None: a
    text cell). Each map is scaled by Captum to its own 98th percentile, which the caption says."""
    rows = (len(items) + cols - 1) // cols
    fig = new_figure(3.6 * cols, 4.0 * rows + 0.5, layout="constrained")
    for i, (a, t) in enumerate(zip(items, titles)):
        ax = fig.add_subplot(rows, cols, i + 1)
        if a is None:
            ax.text(0.5, 0.5, t, ha="center", va="center", wrap=True, fontsize=9)
            ax.axis("off")
            continue
        _captum_view(fig, ax, _hwc(a.attr), _rgb01(a.seen), method="blended_heat_map", sign="absolute_value",
                     cmap=MAGNITUDE_CMAP, alpha_overlay=0.55, show_colorbar=True)
        ax.set_title(t, fontsize=9)
    fig.suptitle((title + "\n" if title else "") + "|attribution|, each map scaled to its own 98th percentile "
                 "(1 = its strongest pixels)", fontsize=10)
    return figure_to_image(apply_look(fig, look))


def timing_curve(points: list[dict], x: str, y: str, lo: str, hi: str, *, xlabel: str, ylabel: str, title: str,
                 log_x: bool = False):
    """A measured curve: the median of each point, with its p10-p90 spread as a bar."""
    fig = new_figure(5.6, 3.3, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    colours = _branch_colours()
    xs = [p[x] for p in points]
    mid = [p[y] for p in points]
    err = [[m - p[lo] for m, p in zip(mid, points)], [p[hi] - m for m, p in zip(mid, points)]]
    ax.errorbar(xs, mid, yerr=err, fmt="o-", capsize=4, color=colours[0], ecolor=colours[1],
                label="median, bar: p10 to p90")
    if log_x:
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(v) for v in xs])
    else:
        ax.set_xticks(xs)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig
