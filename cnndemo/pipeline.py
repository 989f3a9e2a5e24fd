"""An image on a model: the one input pipeline every view uses, and the timed forward pass.

``prepare`` resolves the model, opens the image the way that model needs it and builds the
batch the network reads. Its result (``Input``) can be handed to any view in place of the
image, so one request decodes its image once however many views it feeds. ``timed`` and
``timed_forward`` measure a forward pass between two device synchronisations, so a CUDA
time is the work's, not the launch's.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from . import cancel
from .digits import photo_warning
from .images import OpenedImage, open_image
from .runtime import STORE, LoadedModel
from .specs import ModelSpec


@dataclass(frozen=True)
class Input:
    """An image opened and preprocessed for one model: what every view starts from."""

    model: LoadedModel
    opened: OpenedImage
    x: torch.Tensor  # 1 x C x H x W on the model's device

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec

    def seen(self) -> Image.Image:
        return seen_image(self.spec, self.x)


ImageLike = str | Path | bytes | Image.Image | OpenedImage | Input


def resolve(model: LoadedModel | str) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else STORE.get(model)


def load_for(spec: ModelSpec, image: ImageLike) -> OpenedImage:
    """Open an image the way this model needs it (digit models keep the alpha channel)."""
    if isinstance(image, Input):
        image = image.opened
    if isinstance(image, OpenedImage):
        if spec.inputs.kind == "digit" or image.image.mode == "RGB":
            return image
        image = image.image
    opened = open_image(image, keep_alpha=spec.inputs.kind == "digit")
    if spec.inputs.kind == "digit" and (warning := photo_warning(opened.image, spec.inputs.trained_on)):
        opened = replace(opened, notes=(*opened.notes, warning))
    return opened


def to_batch(spec: ModelSpec, opened: OpenedImage, device: torch.device) -> torch.Tensor:
    """The 1 x C x H x W tensor the network reads (the spec's own preprocessing)."""
    return spec.inputs.transform(opened.image).unsqueeze(0).to(device)


def prepare(image: ImageLike, model: LoadedModel | str, *, opened: OpenedImage | None = None) -> Input:
    """Resolve the model, open the image for it and build its batch (reused when already done).
    ``opened``: ``image`` as ``load_for`` already opened it for this model (not opened again)."""
    lm = resolve(model)
    if isinstance(image, Input) and image.model is lm:
        return image
    opened = opened or load_for(lm.spec, image)
    return Input(lm, opened, to_batch(lm.spec, opened, lm.device))


def seen_image(spec: ModelSpec, x: torch.Tensor) -> Image.Image:
    """Undo the normalisation of a preprocessed batch: what the network actually saw."""
    t = x[0].detach().float().cpu()
    mean = torch.tensor(spec.inputs.mean).view(-1, 1, 1)
    std = torch.tensor(spec.inputs.std).view(-1, 1, 1)
    arr = ((t * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        return Image.fromarray(arr[:, :, 0], "L")
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def sync(device: torch.device) -> None:
    """Wait for the device: CUDA runs asynchronously, so a clock read without this times the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    ms: float = 0.0


@contextmanager
def timed(device: torch.device) -> Iterator[Timing]:
    """Wall time of the block in ``Timing.ms``, with the device synchronised before and after."""
    t = Timing()
    sync(device)
    t0 = time.perf_counter()
    yield t
    sync(device)
    t.ms = (time.perf_counter() - t0) * 1000.0


def timed_forward(model: LoadedModel, x: torch.Tensor, forward: Callable | None = None):
    """``(output, ms, first_run)`` of one forward pass under the model's lock (``forward``: another
    way to run ``model.module`` on ``x``, e.g. with taps). ``first_run``: the model's first pass,
    one-time set-up included; decided under the lock, so exactly one caller sees it."""
    with cancel.holding(model.lock):
        first_run, model.warm = not model.warm, True
        with torch.inference_mode(), timed(model.device) as t:
            out = forward(model.module, x) if forward else model.module(x)
    return out, t.ms, first_run
