"""From an image to top-k predictions, with the weights and the time that produced them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .pipeline import ImageLike, prepare, timed_forward
from .runtime import LoadedModel
from .weights import WeightsInfo


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
    first_run: bool = False  # the model's first forward pass on this server: one-time set-up included
    cached: bool = False  # served from the result cache: ``ms`` is the time of the pass that made it
    batch: int = 1  # images in the forward pass that computed it (concurrent requests batched together)

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
            first_run=self.first_run,
            cached=self.cached,
            batch=self.batch,
        )
        return out

    def timing(self, device: str) -> str:
        """The forward time as a person should read it: this request's, a first run's, or a
        cached result's (never shown as if this request had run it)."""
        if self.cached:
            when = "its first run on this server" if self.first_run else "an earlier request"
            return (f"no forward pass for this request: the same image on the same model was computed by {when} "
                    f"({self.ms:.1f} ms on {device} then)")
        shared = f" for a batch of {self.batch} requests' images" if self.batch > 1 else ""
        if self.first_run:
            return (f"forward pass {self.ms:.1f} ms on {device}{shared}, the model's first run on this server: "
                    "one-time set-up included, later passes are faster")
        return f"forward pass {self.ms:.1f} ms on {device}{shared}"


def top_classes(logits: torch.Tensor, labels: tuple[str, ...], k: int) -> tuple[TopClass, ...]:
    probs = torch.softmax(logits.detach().float()[0], dim=0)
    k = max(1, min(k, probs.numel()))
    values, idx = probs.topk(k)
    return tuple(TopClass(labels[i], int(i), float(p)) for p, i in zip(values.tolist(), idx.tolist()))


def predict(image: ImageLike, model: LoadedModel | str, *, top: int = 5) -> Prediction:
    """Top-``top`` classes for one image; ``ms`` is the forward pass alone."""
    inp = prepare(image, model)
    lm = inp.model
    logits, ms, first_run = timed_forward(lm, inp.x)
    return Prediction(lm.key, lm.weights, top_classes(logits, lm.spec.labels(), top), ms, first_run)
