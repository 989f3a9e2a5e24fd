"""The records that describe a zoo model: ``ModelSpec`` and the block/branch taps it declares.

Everything the app knows about an architecture is data in one frozen record; the code that
builds, loads, hooks and explains models reads these records and never branches on a key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

import torch
from PIL import Image
from torch import nn

from .errors import NotFound

if TYPE_CHECKING:
    from .weights import WeightSource


@dataclass(frozen=True)
class Paper:
    title: str
    authors: str
    year: int
    url: str


@dataclass(frozen=True)
class BranchSpec:
    """One parallel path of a block.

    ``modules`` are the modules on this path, in order, as full paths from the model root. ``taps`` are the modules whose outputs, concatenated, are the branch's output; by
    default the last of ``modules``. ``pre`` is an operation the block applies functionally
    before ``modules`` (torchvision's Inception-v3 calls ``F.avg_pool2d`` / ``F.max_pool2d``);
    it is kept as a module so that it can be described and, for a branch with no modules at
    all, applied to the block input to recompute the branch output.
    """

    name: str
    modules: tuple[str, ...] = ()
    taps: tuple[str, ...] | None = None
    pre: nn.Module | None = None
    note: str = ""

    @property
    def tap_paths(self) -> tuple[str, ...]:
        if self.taps is not None:
            return self.taps
        return self.modules[-1:]


Merge = Literal["concat", "add_relu", "single"]


@dataclass(frozen=True)
class BlockSpec:
    """A multi-branch block: where it is, how its branches combine, and the branches in order.

    ``merge`` says how the block output is made from the branch outputs: ``concat`` along
    channels (Inception, Fire), ``add_relu`` (ResNet: relu(residual + shortcut)), or
    ``single`` for a plain stage with one path (VGG's conv stages).
    """

    name: str
    path: str
    kind: str
    branches: tuple[BranchSpec, ...]
    merge: Merge = "concat"
    shared: tuple[str, ...] = ()


@dataclass(frozen=True)
class InputSpec:
    """What the network reads: size (C, H, W), normalisation, and the transform from a PIL image."""

    size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    transform: Callable[[Image.Image], torch.Tensor]
    kind: Literal["photo", "digit"] = "photo"
    trained_on: str = "ImageNet-1k photos (1.28 million images, 1,000 classes)"
    min_side: int = 32  # the smallest input side the architecture runs on (resolution sweeps)


@dataclass(frozen=True)
class ModelSpec:
    key: str
    name: str
    description: str
    family: str
    builder: Callable[[], nn.Module]
    weights: WeightSource | None  # published (torchvision) or bundled weights, or None
    inputs: InputSpec
    labels: Callable[[], tuple[str, ...]]
    paper: Paper
    reference: str = ""
    blocks: tuple[BlockSpec, ...] = ()
    gradcam_layer: str | None = None
    notes: tuple[str, ...] = ()
    # State-dict keys to drop from a published checkpoint: heads the eval model does not build.
    drop_keys: tuple[str, ...] = ()
    # Classifier layers that the sanity check re-initialises ("top layers", Adebayo et al.).
    top_layers: tuple[str, ...] = ()
    default_block: str | None = None

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.inputs.size

    @property
    def has_branches(self) -> bool:
        return any(b.merge != "single" for b in self.blocks)

    def block(self, name: str) -> BlockSpec:
        for b in self.blocks:
            if b.name == name:
                return b
        known = ", ".join(b.name for b in self.blocks) or "none"
        raise NotFound(f"{self.name} has no block {name!r}; blocks: {known}")

    def build(self) -> nn.Module:
        """A fresh, randomly initialised module in eval mode."""
        return self.builder().eval()

    def build_meta(self) -> nn.Module:
        """The architecture on the meta device: shapes and counts without memory or compute."""
        with torch.device("meta"):
            return self.builder().eval()

    def meta_input(self) -> torch.Tensor:
        """A batch of one at the input size, on the meta device."""
        return torch.zeros(1, *self.input_size, device="meta")
