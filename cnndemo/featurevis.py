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

**Natural exemplars**: the held-out MNIST digits (the 1,000 that no digit network trained on),
or the images of a folder, ranked by the same measure, the channel's mean activation
(``ranking``), with the position of the channel's strongest unit and that unit's receptive
field, to crop each to what the unit can see.

The activation an optimised image reaches is measured without the random transforms, on the
image as it is shown, so it compares directly with the exemplars'.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import cancel
from .branches import branch_info
from .cache import memo
from .cancel import ProgressFn
from .errors import BadRequest
from .pipeline import prepare, resolve
from .ranking import Ranker, Ranking, cache_file, folder_ranking, load_saved, save
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
    br = _with_layers(lm.spec, block, branch)
    grab = run_until(lm.module, x, br.tap_paths)
    return torch.cat([grab[p] for p in br.tap_paths], 1), br.name


def _with_layers(spec, block: str, branch: str | None):
    """The branch, checked to have layers of its own (channels to visualise)."""
    br = find_branch(spec.block(block), branch)
    if not br.tap_paths:
        raise BadRequest(f"{block} / {br.name} has no layers of its own (it passes its input on): there is no "
                         "channel of its own to visualise; pick the block's other path")
    return br


def _channel_tap(lm: LoadedModel, block: str, branch: str | None, channel: int):
    """(the branch, (the tap that makes the channel, its channel there)), the branch checked to
    have layers of its own and the channel to be one of its own."""
    br = _with_layers(lm.spec, block, branch)
    shape = branch_info(lm.spec, block, br.name).shape
    if not 0 <= channel < shape[0]:
        raise BadRequest(f"{block} / {br.name} has channels 0 to {shape[0] - 1}; got {channel}")
    return br, tap_of(lm.module, br, channel, (1, *shape))


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
        br, pick = _channel_tap(lm, block, branch, channel)
        picks.append(pick)
        names.append(br.name)
    gen = torch.Generator().manual_seed(s.seed)
    freqs = _freqs(side, side)
    scale = ((1.0 / torch.clamp(freqs, min=1.0 / side)) * side)[None, None]  # 1 / frequency, times sqrt(h * w)
    spectrum = (torch.randn(n, c, *freqs.shape, 2, generator=gen) * 0.01).requires_grad_(True)
    opt = torch.optim.Adam([spectrum], lr=s.lr)

    def objective(x):  # each image's own channel, its mean over the map
        grab = run_until(lm.module, x.to(lm.device, memory_format=torch.channels_last), {p for p, _ in picks})
        return torch.stack([grab[p][i, local].mean() for i, (p, local) in enumerate(picks)])

    with cancel.holding(lm.lock), channels_last(lm.module), torch.enable_grad():
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


@contextlib.contextmanager
def channels_last(module: torch.nn.Module):
    """The module's weights laid out channels-last for the body, then as they were: oneDNN's
    convolutions run a forward and backward pass through GoogLeNet about a third faster so on a
    CPU. Call it holding the model's lock (nobody else runs the module meanwhile)."""
    module.to(memory_format=torch.channels_last)
    try:
        yield module
    finally:
        module.to(memory_format=torch.contiguous_format)


# ----------------------------------------------------------------------------- natural exemplars


@dataclass
class Exemplars:
    """The inputs that excite one branch channel most, by its mean activation."""

    model: str
    block: str
    branch: str
    channel: int
    indices: list[int]  # into the ranking's inputs (for the held-out digits, into ``held_out_digits()``)
    activations: list[float]  # the channel's mean activation on each
    peaks: list[tuple[int, int]]  # where on the channel's map each input's strongest unit is
    boxes: list[tuple[int, int, int, int]]  # that unit's receptive field, in the input's pixels (a digit's 28 x 28)
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


@memo(4, name="held-out digit rankings")
def held_out_ranking(lm: LoadedModel) -> Ranking:
    """The 1,000 held-out digits ranked for every branch channel of a digit network: one pass
    through the network, kept on disk beside the weights cache for published weights."""
    path = cache_file(lm, "held-out")
    found = load_saved(path)
    if found is None:
        digits, ranker = held_out_digits(), Ranker(lm)
        for i in range(0, len(digits), 250):
            cancel.check()
            ranker.add(network_input(lm, digits[i:i + 250]))
        found = ranker.ranking([f"held-out digit #{i}" for i in range(len(digits))])
        save(found, path)
    return found


def exemplars(model: LoadedModel | str, block: str, branch: str | None, channel: int, k: int = 9) -> Exemplars:
    """The ``k`` (at most ``ranking.KEEP``) held-out digits with the highest mean activation of
    the branch channel."""
    lm = resolve(model)
    if lm.spec.inputs.kind != "digit":
        raise BadRequest(f"{lm.spec.name} reads photos: its exemplars come from a folder of your images, not from "
                         "the held-out digits")
    digits = held_out_digits()
    return ranked_exemplars(lm, held_out_ranking(lm), block, branch, channel, k, lambda i: digits[i, 0].numpy())


def folder_exemplars(model: LoadedModel | str, block: str, branch: str | None, channel: int, folder: Path | str,
                     k: int = 6, progress: ProgressFn | None = None) -> Exemplars:
    """The ``k`` images of a folder (searched through its subfolders) with the highest mean
    activation of the branch channel (``ranking.folder_ranking``: every channel of the network
    ranked at once, and remembered). Files that are not readable images are skipped and counted."""
    lm = resolve(model)
    _channel_tap(lm, block, branch, channel)  # a wrong channel is told before the folder is ranked
    return ranked_exemplars(lm, folder_ranking(lm, folder, progress), block, branch, channel, k)


def ranked_exemplars(lm: LoadedModel, ranking: Ranking, block: str, branch: str | None, channel: int, k: int,
                     pixels: Callable[[int], np.ndarray] | None = None) -> Exemplars:
    """A channel's best ``k`` inputs of a ranking, each cropped to the receptive field of the
    channel's strongest unit, that unit's centre shaded. ``pixels(i)``: input ``i`` in [0, 1]
    (H x W, or H x W x 3), by default the image its source file gives, as the network saw it."""
    br, (tap, _) = _channel_tap(lm, block, branch, channel)
    if pixels is None:
        def pixels(i):
            return np.asarray(prepare(ranking.sources[i], lm).seen().convert("RGB"), np.float32) / 255.0
    field_of = field_boxes(lm.spec).get(tap)
    side_h, side_w = lm.spec.inputs.size[1:]
    h, w = ranking.shapes[f"{block}/{br.name}"]
    best = ranking.best(block, br.name, channel, k)
    boxes, images = [], []
    for i, _, (y, x) in best:
        pic = pixels(i)
        fy, fx = pic.shape[0] / side_h, pic.shape[1] / side_w  # the field is in the network's input pixels
        box = field_of.at(y, x) if field_of is not None else (0, 0, side_h - 1, side_w - 1)
        box = (max(0, int(box[0] * fy)), max(0, int(box[1] * fx)),
               min(pic.shape[0] - 1, math.ceil(box[2] * fy)), min(pic.shape[1] - 1, math.ceil(box[3] * fx)))
        boxes.append(box)
        images.append(_shaded_crop(pic, box, ((y + 0.5) / h, (x + 0.5) / w)))
    return Exemplars(lm.spec.key, block, br.name, channel, [i for i, _, _ in best], [a for _, a, _ in best],
                     [p for _, _, p in best], boxes, images, [ranking.sources[i] for i, _, _ in best],
                     len(ranking.skipped))


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
