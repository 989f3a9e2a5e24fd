"""From an image to top-k predictions, with the weights and the time that produced them."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import cancel
from .digits import photo_warning
from .images import OpenedImage, open_image
from .runtime import STORE, LoadedModel
from .specs import ModelSpec
from .weights import WeightsInfo

ImageLike = str | Path | bytes | Image.Image | OpenedImage


@dataclass(frozen=True)
class TopClass:
    label: str
    index: int
    prob: float


@dataclass(frozen=True)
class Prediction:
    model: str
    weights: WeightsInfo
    top: tuple[TopClass, ...]
    ms: float

    def as_label(self) -> dict[str, float]:
        """For gr.Label: {label: probability}."""
        return {f"{t.label} ({t.index})": t.prob for t in self.top}

    def to_json(self, image: str | None = None) -> dict:
        """The CLI / API record: image, model, weights kind, top classes, forward time."""
        out = {"image": image} if image is not None else {}
        out.update(
            model=self.model,
            weights=self.weights.kind,
            top=[{"label": t.label, "index": t.index, "prob": round(t.prob, 6)} for t in self.top],
            ms=round(self.ms, 2),
        )
        return out


def load_for(spec: ModelSpec, image: ImageLike) -> OpenedImage:
    """Open an image the way this model needs it (digit models keep the alpha channel)."""
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
    x = spec.inputs.transform(opened.image)
    return x.unsqueeze(0).to(device)


def seen_image(spec: ModelSpec, x: torch.Tensor) -> Image.Image:
    """Undo the normalisation of a preprocessed batch: what the network actually saw."""
    t = x[0].detach().float().cpu()
    mean = torch.tensor(spec.inputs.mean).view(-1, 1, 1)
    std = torch.tensor(spec.inputs.std).view(-1, 1, 1)
    arr = ((t * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        return Image.fromarray(arr[:, :, 0], "L")
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def top_classes(logits: torch.Tensor, labels: tuple[str, ...], k: int) -> tuple[TopClass, ...]:
    probs = torch.softmax(logits.detach().float()[0], dim=0)
    k = max(1, min(k, probs.numel()))
    values, idx = probs.topk(k)
    return tuple(TopClass(labels[i], int(i), float(p)) for p, i in zip(values.tolist(), idx.tolist()))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_forward(model: LoadedModel, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    with cancel.holding(model.lock), torch.inference_mode():
        sync(model.device)
        t0 = time.perf_counter()
        logits = model.module(x)
        sync(model.device)
        return logits, (time.perf_counter() - t0) * 1000.0


def resolve(model: LoadedModel | str) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else STORE.get(model)


def predict(image: ImageLike, model: LoadedModel | str, *, top: int = 5) -> Prediction:
    """Top-``top`` classes for one image; ``ms`` is the forward pass alone."""
    lm = resolve(model)
    opened = load_for(lm.spec, image)
    x = to_batch(lm.spec, opened, lm.device)
    logits, ms = timed_forward(lm, x)
    return Prediction(lm.key, lm.weights, top_classes(logits, lm.spec.labels(), top), ms)
