"""What a branch channel looks for: an input optimised to excite it, and the held-out digits
that excite it most.

**Feature visualisation** (Olah et al. 2017, "Feature Visualization", Distill) maximises a
channel's mean activation over an input that is

- parameterised in a decorrelated Fourier basis: the image is the inverse real FFT of a
  learned spectrum, each frequency scaled by 1 / its magnitude (so that every frequency moves
  about equally per step and high-frequency noise does not win), with the colours decorrelated
  by the square root of ImageNet's colour correlation, then squashed into [0, 1] by a sigmoid;
- seen through a random jitter, scale and rotation at every step (one affine warp), so that the
  result is a pattern the channel answers wherever and however large it appears, not an
  adversarial texture that only works pixel-exactly.

Adam moves the spectrum; the image is optimised at a small side (128 px for photo networks, the
digits' own 28 px) and upsampled to what the network reads, through the same normalisation
the app uses. Several channels are optimised at once, one image each, in one batch.

**Natural exemplars**: the held-out MNIST digits (the 1,000 that no digit network trained on)
ranked by the same measure, the channel's mean activation, with the position of the channel's
strongest unit and that unit's receptive field, to crop the digit to what the unit can see.

The activation an optimised image reaches is measured without the random transforms, on the
image as it is shown, so it compares directly with the exemplars'.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import cancel
from .branches import branch_info
from .cache import memo
from .cancel import ProgressFn
from .errors import BadRequest, UserError
from .pipeline import prepare, resolve
from .runtime import LoadedModel
from .taps import run_until
from .training import shipped_digits, to_input
from .units import field_boxes, find_branch, tap_of

# The square root of ImageNet's colour correlation (the SVD's U S^1/2, as Lucid measured it),
# scaled so that its largest column has norm 1: it maps decorrelated channels to RGB.
_COLOUR = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOUR = _COLOUR / _COLOUR.norm(dim=0).max()


@dataclass(frozen=True)
class VisSettings:
    """None: the default for the network's kind (photo / digit)."""

    steps: int = 256
    size: int | None = None  # the side it is optimised at (128 px; a digit network's 28)
    lr: float | None = None  # Adam's step (0.05; 0.1 for a digit's 28 px, whose few pixels move slowly)
    jitter: float | None = None  # the largest shift, as a share of the side (6%; 3%: a pixel of a digit)
    scale: float | None = None  # the largest change of size, either way (10%; 5%)
    degrees: float | None = None  # the largest rotation, either way (10; 5)
    seed: int = 0

    def resolved(self, digit: bool) -> VisSettings:
        own = {"size": 28, "lr": 0.1, "jitter": 0.03, "scale": 0.05, "degrees": 5.0} if digit else \
            {"size": 128, "lr": 0.05, "jitter": 0.06, "scale": 0.1, "degrees": 10.0}
        return VisSettings(**{k: (own[k] if v is None and k in own else v) for k, v in self.__dict__.items()})


@dataclass
class Visualisation:
    model: str
    weights: str  # "pretrained", "custom" or "random"
    block: str
    branch: str
    channels: list[int]
    images: list[Image.Image] = field(repr=False)
    activations: list[float]  # each channel's mean activation on its image, as shown
    settings: VisSettings
    seconds: float

    def to_json(self) -> dict:
        return {"model": self.model, "weights": self.weights, "block": self.block, "branch": self.branch,
                "channels": self.channels, "activations": [round(a, 6) for a in self.activations],
                "steps": self.settings.steps, "size": self.settings.size, "seconds": round(self.seconds, 3)}


def branch_maps(lm: LoadedModel, x: torch.Tensor, block: str, branch: str | None) -> tuple[torch.Tensor, str]:
    """The branch's output for the batch ``x`` (N x C x H x W: its taps' outputs side by side,
    the channels the app's branch maps number). Also the branch's name."""
    br = find_branch(lm.spec.block(block), branch)
    if not br.tap_paths:
        raise_no_layers(block, br.name)
    grab = run_until(lm.module, x, br.tap_paths)
    return torch.cat([grab[p] for p in br.tap_paths], 1), br.name


def raise_no_layers(block: str, branch: str):
    raise BadRequest(f"{block} / {branch} has no layers of its own (it passes its input on): there is no channel "
                     "of its own to visualise; pick the block's other path")


def _layered(spec, block: str, branch: str | None, channel: int):
    """The branch, checked to have layers of its own and the channel to be one of its own."""
    br = find_branch(spec.block(block), branch)
    if not br.tap_paths:
        raise_no_layers(block, br.name)
    width = branch_info(spec, block, br.name).shape[0]
    if not 0 <= channel < width:
        raise BadRequest(f"{block} / {br.name} has channels 0 to {width - 1}; got {channel}")
    return br


def _freqs(h: int, w: int) -> torch.Tensor:
    return torch.sqrt(torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.rfftfreq(w)[None, :] ** 2)


def _image(spectrum: torch.Tensor, scale: torch.Tensor, h: int, w: int, colour: bool) -> torch.Tensor:
    """The spectrum (N x C x H x W/2+1 x 2) as images in [0, 1] (N x C x H x W)."""
    img = torch.fft.irfft2(torch.view_as_complex(spectrum) * scale, s=(h, w)) / 4.0
    if colour:
        img = torch.einsum("nchw,rc->nrhw", img, _COLOUR)
    return torch.sigmoid(img)


def _warp(img: torch.Tensor, s: VisSettings, gen: torch.Generator) -> torch.Tensor:
    """One random jitter, scale and rotation per image (bilinear, the border reflected)."""
    n = img.shape[0]
    u = torch.rand(n, 4, generator=gen) * 2 - 1
    angle = u[:, 0] * math.radians(s.degrees)
    zoom = 1 + u[:, 1] * s.scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, u[:, 2] * 2 * s.jitter], 1),
                         torch.stack([sin, cos, u[:, 3] * 2 * s.jitter], 1)], 1)
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def network_input(lm: LoadedModel, img01: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (N x C x h x w) as the network reads them: the app's own size and
    normalisation (a digit network's: ``training.to_input``)."""
    spec = lm.spec
    if spec.inputs.kind == "digit":
        return to_input(img01, spec)
    size = spec.inputs.size[1:]
    if tuple(img01.shape[-2:]) != tuple(size):
        img01 = F.interpolate(img01, size=size, mode="bilinear", align_corners=False)
    mean = torch.tensor(spec.inputs.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.inputs.std).view(1, -1, 1, 1)
    return (img01 - mean) / std


Target = tuple[str, str | None, int]  # (block, branch, channel)


def visualize(model: LoadedModel | str, block: str, branch: str | None, channels: list[int],
              settings: VisSettings | None = None, progress: ProgressFn | None = None) -> Visualisation:
    """Optimise one image per channel of the branch (Fourier basis, random transforms, Adam)."""
    lm = resolve(model)
    if not channels:
        raise BadRequest("Name at least one channel.")
    return visualize_targets(lm, [(block, branch, c) for c in channels], settings, progress)[0]


def visualize_targets(model: LoadedModel | str, targets: list[Target], settings: VisSettings | None = None,
                      progress: ProgressFn | None = None) -> list[Visualisation]:
    """Optimise one image per (block, branch, channel), all in one batch: one forward pass per
    step, stopped after the deepest of their layers. One Visualisation per (block, branch)."""
    t0 = time.perf_counter()
    lm = resolve(model)
    spec = lm.spec
    s = (settings or VisSettings()).resolved(spec.inputs.kind == "digit")
    c, side, n = spec.inputs.size[0], s.size, len(targets)
    picks = []  # per image: (tap path, channel there)
    names = []
    for block, branch, channel in targets:
        br = _layered(spec, block, branch, channel)
        picks.append(tap_of(lm.module, br, channel, (1, *branch_info(spec, block, br.name).shape)))
        names.append(br.name)
    gen = torch.Generator().manual_seed(s.seed)
    freqs = _freqs(side, side)
    scale = ((1.0 / torch.clamp(freqs, min=1.0 / side)) * side)[None, None]  # 1 / frequency, times sqrt(h * w)
    spectrum = (torch.randn(n, c, *freqs.shape, 2, generator=gen) * 0.01).requires_grad_(True)
    opt = torch.optim.Adam([spectrum], lr=s.lr)

    def objective(x):  # each image's own channel, its mean over the map
        grab = run_until(lm.module, x.to(lm.device), {p for p, _ in picks})
        return torch.stack([grab[p][i, local].mean() for i, (p, local) in enumerate(picks)])

    with cancel.holding(lm.lock), torch.enable_grad():
        params = [p.requires_grad for p in lm.module.parameters()]
        for p in lm.module.parameters():
            p.requires_grad_(False)
        try:
            for step in range(s.steps):
                cancel.check()
                loss = -objective(network_input(lm, _warp(_image(spectrum, scale, side, side, c == 3), s, gen))).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if progress and (step % 16 == 0 or step == s.steps - 1):
                    progress((step + 1) / s.steps, f"optimising: step {step + 1} of {s.steps}")
            with torch.no_grad():
                # As shown: 8-bit pixels, no transform.
                final = (_image(spectrum, scale, side, side, c == 3) * 255).round() / 255
                acts = objective(network_input(lm, final)).float().cpu().tolist()
        finally:
            for p, was in zip(lm.module.parameters(), params):
                p.requires_grad_(was)
    pics = (final.detach().cpu() * 255).round().byte()
    images = [Image.fromarray(pics[i, 0].numpy(), "L") if c == 1 else Image.fromarray(pics[i].permute(1, 2, 0).numpy(), "RGB")
              for i in range(n)]
    seconds = time.perf_counter() - t0
    out: dict[tuple[str, str], Visualisation] = {}
    for (block, _, channel), name, img, act in zip(targets, names, images, acts):
        vis = out.setdefault((block, name), Visualisation(spec.key, lm.weights.kind, block, name, [], [], [], s, seconds))
        vis.channels.append(channel)
        vis.images.append(img)
        vis.activations.append(act)
    return list(out.values())


# ----------------------------------------------------------------------------- natural exemplars


@dataclass
class Exemplars:
    """The held-out digits that excite one branch channel most, by its mean activation."""

    model: str
    block: str
    branch: str
    channel: int
    indices: list[int]  # into ``held_out_digits()``
    activations: list[float]  # the channel's mean activation on each
    peaks: list[tuple[int, int]]  # where on the channel's map each digit's strongest unit is
    boxes: list[tuple[int, int, int, int]]  # that unit's receptive field, in the digit's 28 x 28 pixels
    images: list[Image.Image] = field(repr=False)  # each cropped to that field, the unit's centre marked
    sources: list[str] = field(default_factory=list)  # where each came from (a held-out digit, a file)
    skipped: int = 0  # files of the folder that could not be read as images

    @property
    def best(self) -> float:
        return self.activations[0]

    def to_json(self) -> dict:
        return {"model": self.model, "block": self.block, "branch": self.branch, "channel": self.channel,
                "sources": self.sources, "activations": [round(a, 6) for a in self.activations],
                "peaks": [list(p) for p in self.peaks], "boxes": [list(b) for b in self.boxes],
                "skipped": self.skipped}


def held_out_digits() -> torch.Tensor:
    """The 1,000 held-out MNIST digits (1 x 28 x 28, white on black, in [0, 1]; 3 MB)."""
    return shipped_digits().x_test


def stats_file(lm: LoadedModel) -> Path | None:
    """Where a network's held-out statistics are kept on disk, beside the user's weights cache
    (torch's hub folder), named by its weights; None for weights of one session or one upload."""
    if lm.weights.kind != "pretrained":
        return None
    return Path(torch.hub.get_dir()).parent / "cnndemo" / "exemplars" / f"{lm.spec.key}-{lm.weights.ident}.pt"


@memo(4, name="held-out digit branch statistics")
def _held_out_stats(lm: LoadedModel) -> dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, tuple]]:
    """For the 1,000 held-out digits, every branch of every block, each channel: its mean
    activation and where its strongest unit is (N x C each: small, not the maps), and the
    map's (H, W); one pass through the network for all of them, kept on disk (``stats_file``)."""
    path = stats_file(lm)
    if path is not None and path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            return {(b, br): (v["means"], v["peaks"], tuple(v["shape"])) for (b, br), v in
                    ((tuple(k.split("/", 1)), v) for k, v in saved.items())}
        except Exception:  # noqa: BLE001 (a damaged or foreign file: computed again, and rewritten)
            pass
    stats = _compute_held_out_stats(lm)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            torch.save({f"{b}/{br}": {"means": m, "peaks": p, "shape": list(hw)} for (b, br), (m, p, hw) in stats.items()},
                       tmp)
            os.replace(tmp, path)
        except OSError:  # a read-only cache: kept in memory only
            pass
    return stats


def _compute_held_out_stats(lm: LoadedModel) -> dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, tuple]]:
    digits = held_out_digits()
    branches = [(b.name, br) for b in lm.spec.blocks for br in b.branches if br.tap_paths]
    paths = {p for _, br in branches for p in br.tap_paths}
    stats: dict = {}
    with cancel.holding(lm.lock), torch.inference_mode():
        for i in range(0, len(digits), 250):
            cancel.check()
            grab = run_until(lm.module, network_input(lm, digits[i:i + 250]).to(lm.device), paths)
            for block, br in branches:
                flat = torch.cat([grab[p] for p in br.tap_paths], 1).float().flatten(2)
                stats.setdefault((block, br.name), []).append((flat.mean(2).cpu(), flat.argmax(2).cpu(),
                                                               tuple(grab[br.tap_paths[0]].shape[2:])))
    return {k: (torch.cat([m for m, _, _ in v]), torch.cat([a for _, a, _ in v]), v[0][2]) for k, v in stats.items()}


def exemplars(model: LoadedModel | str, block: str, branch: str | None, channel: int, k: int = 9) -> Exemplars:
    """The ``k`` held-out digits with the highest mean activation of the branch channel."""
    lm = resolve(model)
    if lm.spec.inputs.kind != "digit":
        raise BadRequest(f"{lm.spec.name} reads photos: its exemplars come from a folder of your images, not from "
                         "the held-out digits")
    br = _layered(lm.spec, block, branch, channel)
    name = br.name
    means, peaks_at, (h, w) = _held_out_stats(lm)[(block, name)]
    order = torch.argsort(means[:, channel], descending=True)[:k].tolist()
    tap, _ = tap_of(lm.module, br, channel, means.shape)
    field = field_boxes(lm.spec).get(tap)
    digits = held_out_digits()
    side = lm.spec.inputs.size[-1]
    f = 28 / side  # the field is in the network's input pixels; the digit is 28 x 28
    peaks, boxes, images = [], [], []
    for i in order:
        y, x = divmod(int(peaks_at[i, channel]), w)
        peaks.append((y, x))
        box = field.at(y, x) if field is not None else (0, 0, side - 1, side - 1)
        top, left = max(0, int(box[0] * f)), max(0, int(box[1] * f))
        bottom, right = min(27, math.ceil(box[2] * f)), min(27, math.ceil(box[3] * f))
        boxes.append((top, left, bottom, right))
        images.append(_shaded_crop(digits[i, 0].numpy(), (top, left, bottom, right), ((y + 0.5) / h, (x + 0.5) / w)))
    return Exemplars(lm.spec.key, block, name, channel, order, [float(means[i, channel]) for i in order], peaks, boxes,
                     images, [f"held-out digit #{i}" for i in order])


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def folder_exemplars(model: LoadedModel | str, block: str, branch: str | None, channel: int, folder: Path | str,
                     k: int = 6, progress: ProgressFn | None = None) -> Exemplars:
    """The ``k`` images of a folder (searched through its subfolders) with the highest mean
    activation of the branch channel, each cropped to the receptive field of the channel's
    strongest unit in the image as the network saw it. Files that are not readable images are
    skipped and counted."""
    lm = resolve(model)
    root = Path(folder)
    if not root.is_dir():
        raise BadRequest(f"There is no folder {root}: name a folder of your images.")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise BadRequest(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    br = _layered(lm.spec, block, branch, channel)
    scored, skipped, shape = [], 0, None
    with cancel.holding(lm.lock), torch.inference_mode():
        for n, path in enumerate(files):
            cancel.check()
            try:
                inp = prepare(path, lm)
            except UserError:
                skipped += 1
                continue
            m = branch_maps(lm, inp.x, block, br.name)[0][0, channel].float()
            shape = tuple(m.shape)
            scored.append((float(m.mean()), int(m.argmax()), path, inp))
            scored = sorted(scored, key=lambda t: -t[0])[:k]  # keeps only the best few inputs in memory
            if progress:
                progress((n + 1) / len(files), f"{n + 1} of {len(files)} images")
    if not scored:
        raise BadRequest(f"None of the {len(files)} files in {root} could be read as an image.")
    tap, _ = tap_of(lm.module, br, channel, (1, *branch_info(lm.spec, block, br.name).shape))
    field_of = field_boxes(lm.spec).get(tap)
    h, w = shape
    peaks, boxes, images = [], [], []
    for _, at, _, inp in scored:
        y, x = divmod(at, w)
        seen = np.asarray(inp.seen().convert("RGB"), np.float32) / 255.0
        side_h, side_w = seen.shape[:2]
        box = field_of.at(y, x) if field_of is not None else (0, 0, side_h - 1, side_w - 1)
        box = (max(0, box[0]), max(0, box[1]), min(side_h - 1, box[2]), min(side_w - 1, box[3]))
        peaks.append((y, x))
        boxes.append(box)
        images.append(_shaded_crop(seen, box, ((y + 0.5) / h, (x + 0.5) / w)))
    return Exemplars(lm.spec.key, block, br.name, channel, list(range(len(scored))), [t[0] for t in scored], peaks,
                     boxes, images, [str(t[2]) for t in scored], skipped)


def _shaded_crop(pixels: np.ndarray, box: tuple[int, int, int, int], centre: tuple[float, float]) -> Image.Image:
    """An image in [0, 1] (a digit, H x W, white on black; or H x W x 3) cropped to ``box``,
    the unit's centre (fractions of the map) tinted orange."""
    top, left, bottom, right = box
    rgb = pixels.copy() if pixels.ndim == 3 else np.stack([pixels] * 3, -1)
    cy, cx = int(centre[0] * rgb.shape[0]), int(centre[1] * rgb.shape[1])
    yy, xx = np.ogrid[:rgb.shape[0], :rgb.shape[1]]
    radius = min(bottom - top, right - left) // 8  # a pixel in a small field, a little more in a large one
    near = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    rgb[near] = 0.6 * rgb[near] + 0.4 * np.array([1.0, 0.55, 0.0])
    crop = rgb[top:bottom + 1, left:right + 1]
    return Image.fromarray((crop * 255).round().astype(np.uint8), "RGB")  # shown enlarged (``render``)
