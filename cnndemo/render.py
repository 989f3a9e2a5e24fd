"""Pictures: heat maps, overlays, channel grids and plots, as PIL images or Figure objects.

No pyplot: every figure is a ``matplotlib.figure.Figure`` rendered with the Agg canvas, so
concurrent requests never share plotting state.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image


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


def new_figure(width: float, height: float, dpi: int = 100, layout: str | None = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def figure_to_image(fig) -> Image.Image:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    buf.seek(0)
    return Image.open(buf).convert("RGB")


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


def shares_by_depth(ex):
    """Stacked bars: each block's output energy split by branch, blocks in forward order."""
    blocks = list(ex.blocks.values())
    names = list(dict.fromkeys(b.info.name for bm in blocks for b in bm.branches))
    fig = new_figure(max(5.5, 0.45 * len(blocks) + 2.4), 3.8, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    bottom = np.zeros(len(blocks))
    colors = _branch_colours()
    for i, name in enumerate(names):
        vals = np.array([bm.shares().get(name, 0.0) for bm in blocks])
        ax.bar(range(len(blocks)), vals, bottom=bottom, label=name, color=colors[i % len(colors)], width=0.8)
        bottom += vals
    ax.set_xticks(range(len(blocks)))
    ax.set_xticklabels([bm.info.name for bm in blocks], rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of block energy")
    ax.set_title("Which branch dominates, block by block", fontsize=10)
    # Outside the axes, and laid out with them (constrained layout): never over the title.
    fig.legend(fontsize=7, loc="outside right upper", title="branch", title_fontsize=8)
    return fig


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def block_panel(block, seen: Image.Image, *, cmap: str = "inferno", tile: int = 92) -> Image.Image:
    """One row per branch: facts, its mean activation over the input image, its top channels.

    Composed with Pillow (tens of milliseconds) rather than a 40-axes figure (over a second).
    """
    from PIL import ImageDraw

    k = max(len(b.top_channels) for b in block.branches)
    big, text_w, pad, head = int(tile * 1.7), 300, 8, 52
    row_h = big + 2 * pad
    width = text_w + big + pad * 3 + k * (tile + 4)
    height = head + row_h * len(block.branches)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 8), f"{block.info.name} · {block.info.kind}", fill="black", font=_font(17))
    draw.text(
        (pad, 32),
        f"left: mean activation over the image, over all its channels; right: the {k} most active channels of each branch",
        fill="#52525b",
        font=_font(12),
    )
    small, label = _font(13), _font(11)
    for r, b in enumerate(block.branches):
        y = head + r * row_h + pad
        info = b.info
        if info.channels:
            ch = f"channels {info.channels[0]}-{info.channels[1]}"
        elif block.info.merge == "single":
            ch = "the stage's only path: all channels"
        else:
            ch = "added to the other branch: full width"
        lines = [
            (info.name, _font(16), "black"),
            (info.path, small, "#1f2937"),
            (ch, small, "#1f2937"),
            (f"{'x'.join(map(str, info.shape))} | {info.params:,} params", small, "#1f2937"),
            (f"share of block energy: {b.share:.1%}", small, "#b45309"),
        ]
        ty = y
        for text, font, color in lines:
            for part in _wrap(draw, text, font, text_w - pad):
                draw.text((pad, ty), part, fill=color, font=font)
                ty += font.size + 4
        canvas.paste(overlay(seen, b.mean_map, cmap=cmap).resize((big, big)), (text_w, y))
        x0 = text_w + big + pad * 2
        for c, (chan, m) in enumerate(zip(b.top_channels, b.top_maps)):
            x = x0 + c * (tile + 4)
            canvas.paste(colorize(m, cmap).resize((tile, tile), Image.Resampling.NEAREST), (x, y + 16))
            draw.text((x, y), f"#{chan}", fill="#374151", font=label)
    return canvas


def _wrap(draw, text: str, font, width: int) -> list[str]:
    words, lines, cur = text.split(" "), [], ""
    for w in words:
        trial = f"{cur} {w}".strip()
        if draw.textlength(trial, font=font) <= width or not cur:
            cur = trial
        else:
            lines.append(cur)
            cur = w
    return lines + [cur] if cur else lines


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


def attribution_views(a) -> tuple[Image.Image, Image.Image]:
    """(overlay of |attribution| on the image, signed map), each with a colour bar.

    Drawn by Captum's own ``visualize_image_attr`` on Figure objects of ours (no pyplot).
    """
    img = _rgb01(a.seen)
    attr = _hwc(a.attr)
    title = f"{a.method} · {a.label} ({a.target})"
    fig1 = new_figure(4.6, 4.2)
    _captum_view(
        fig1, fig1.add_subplot(1, 1, 1), attr, img, method="blended_heat_map", sign="absolute_value",
        show_colorbar=True, cmap=MAGNITUDE_CMAP, alpha_overlay=0.55, title=f"|attribution| over the image\n{title}",
    )
    fig2 = new_figure(4.6, 4.2)
    has_negative = bool(np.nanmin(attr) < 0)
    _captum_view(
        fig2, fig2.add_subplot(1, 1, 1), attr, None, method="heat_map", sign="all" if has_negative else "positive",
        show_colorbar=True, cmap=SIGNED_CMAP if has_negative else MAGNITUDE_CMAP,
        title=(f"signed map ({SIGNED_LEGEND})\n{title}" if has_negative else f"map (all values >= 0)\n{title}"),
    )
    return figure_to_image(fig1), figure_to_image(fig2)


def attribution_grid(items: list, titles: list[str], *, cols: int = 3) -> Image.Image:
    """Several attributions as |map| overlays in a grid, one title each (None: a text cell)."""
    rows = (len(items) + cols - 1) // cols
    fig = new_figure(3.3 * cols, 3.5 * rows)
    for i, (a, t) in enumerate(zip(items, titles)):
        ax = fig.add_subplot(rows, cols, i + 1)
        if a is None:
            ax.text(0.5, 0.5, t, ha="center", va="center", wrap=True, fontsize=8)
            ax.axis("off")
            continue
        _captum_view(fig, ax, _hwc(a.attr), _rgb01(a.seen), method="blended_heat_map", sign="absolute_value",
                     cmap=MAGNITUDE_CMAP, alpha_overlay=0.55)
        ax.set_title(t, fontsize=8)
    fig.tight_layout()
    return figure_to_image(fig)


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
