"""The records that describe a zoo model: ``ModelSpec`` and the block/branch taps it declares.

Everything the app knows about an architecture is data in one frozen record; the code that
builds, loads, hooks and explains models reads these records and never branches on a key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal, Sequence

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


@dataclass(frozen=True)
class Merge:
    """How a block makes its output from its branch outputs: ``combine`` (what the block's
    forward does), how many branches it takes, and its label in the block diagram."""

    label: str
    combine: Callable[[Sequence[torch.Tensor]], torch.Tensor]
    min_branches: int
    max_branches: int | None = None


# Every merge a block may declare. A new kind of block (an inverted residual "add" without a
# ReLU, say) adds its entry here; a BlockSpec naming a kind not here is refused at import.
MERGES: dict[str, Merge] = {
    "concat": Merge("concatenate along channels", lambda bs: torch.cat(list(bs), 1), 2),
    "add_relu": Merge("add, then ReLU", lambda bs: torch.relu(bs[0] + bs[1]), 2, 2),
    "single": Merge("one path: no merge", lambda bs: bs[0], 1, 1),
}


class SpecError(NotFound):
    """A spec that cannot describe a real block or model (raised when the zoo is built)."""


@dataclass(frozen=True)
class BlockSpec:
    """A multi-branch block: where it is, how its branches combine, and the branches in order.

    ``merge`` names an entry of ``MERGES``: ``concat`` along channels (Inception, Fire),
    ``add_relu`` (ResNet: relu(residual + shortcut)), or ``single`` for a plain stage with one
    path (VGG's conv stages). Checked when the spec is made: the merge is known, it takes this
    many branches, and the branch names are distinct. That the branches' channels tile the
    block's output is checked on the meta device when the block is first described
    (``branches.block_infos``).
    """

    name: str
    path: str
    kind: str
    branches: tuple[BranchSpec, ...]
    merge: str = "concat"
    shared: tuple[str, ...] = ()

    def __post_init__(self):
        if self.merge not in MERGES:
            raise SpecError(f"block {self.name!r}: unknown merge {self.merge!r}; known: {', '.join(MERGES)} "
                            "(add a new one to specs.MERGES)")
        m = MERGES[self.merge]
        n = len(self.branches)
        if n < m.min_branches or (m.max_branches is not None and n > m.max_branches):
            want = m.min_branches if m.max_branches == m.min_branches else f"{m.min_branches} or more"
            raise SpecError(f"block {self.name!r}: a {self.merge} merge takes {want} branches, not {n}")
        names = [b.name for b in self.branches]
        if len(set(names)) != n:
            raise SpecError(f"block {self.name!r}: branch names repeat: {names}")

    def combine(self, branches: Sequence[torch.Tensor]) -> torch.Tensor:
        """The block's output from its branch outputs, as its forward makes it."""
        return MERGES[self.merge].combine(branches)


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

    def __post_init__(self):
        names = [b.name for b in self.blocks]
        if len(set(names)) != len(names):
            raise SpecError(f"{self.key}: block names repeat")
        if self.default_block is not None and self.default_block not in names:
            raise SpecError(f"{self.key}: default_block {self.default_block!r} is not one of its blocks")
        if self.blocks and self.default_block is None:
            raise SpecError(f"{self.key}: a model with blocks names the one every view opens with (default_block)")
        if not self.family:
            raise SpecError(f"{self.key}: no family (the model menus group by it)")

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
