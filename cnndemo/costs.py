"""What a network costs: parameters, weight size, FLOPs (per model, stage, branch), and what
its design choices save. Everything is computed from the modules.

FLOPs follow ``torch.utils.flop_counter``: one multiply-add counts as 2 FLOPs (torchvision's
``_ops`` "GFLOPS" are multiply-adds, i.e. half of these). Only convolutions and matrix
multiplies are counted, as both tools do. Counting runs on the meta device: no memory, no
compute, no weights needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from .anatomy import architecture, branch_params, describe_branch
from .cache import memo
from .specs import ModelSpec
from .weights import Accuracy
from .zoo import get_spec

FLOPS_CONVENTION = "FLOPs: 2 per multiply-add, as torch.utils.flop_counter counts (torchvision's GMACs x 2)"


def count_model_params(spec: ModelSpec) -> int:
    """Total parameters of the architecture, counted on the meta device (no memory, no init)."""
    return sum(p.numel() for p in spec.build_meta().parameters())


def count_flops(model: nn.Module, x: torch.Tensor) -> tuple[int, dict[str, int]]:
    """(total FLOPs, FLOPs per module path) of one forward pass.

    ``FlopCounterMode`` counts ops in this thread only (dispatch modes are thread-local), but it
    tells modules apart with process-wide forward hooks, so a network running in another
    thread meanwhile moves FLOPs between stages. Its totals are used, and nothing else: each
    module's inputs are recorded with hooks on this model alone, and each module is counted on
    its own by re-running it on those inputs (meta tensors: no memory, no compute).
    """
    calls: dict[str, list[tuple[tuple, dict]]] = {}

    def record(name):
        def hook(_module, args, kwargs):
            calls.setdefault(name, []).append((args, kwargs))
        return hook

    handles = [m.register_forward_pre_hook(record(name), with_kwargs=True) for name, m in model.named_modules() if name]
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    per = {}
    with torch.no_grad():
        for name, inputs in calls.items():
            module = model.get_submodule(name)
            with FlopCounterMode(display=False) as own:
                for args, kwargs in inputs:
                    module(*args, **kwargs)
            per[name] = int(own.get_total_flops())
    return int(counter.get_total_flops()), per


@memo(64, name="module FLOPs")
def module_flops(key: str) -> tuple[int, dict[str, int]]:
    """(total FLOPs, FLOPs per module path) of a zoo model at its own input size, counted once."""
    spec = get_spec(key)
    return count_flops(spec.build_meta(), spec.meta_input())


@memo(64, name="forward FLOPs")
def forward_flops(key: str, height: int, width: int) -> int:
    """FLOPs of one batch-1 forward at ``height`` x ``width`` (counted on the meta device)."""
    spec = get_spec(key)
    return count_flops(spec.build_meta(), torch.zeros(1, spec.input_size[0], height, width, device="meta"))[0]


@dataclass(frozen=True)
class ModelStats:
    key: str
    name: str
    params: int
    weight_mb: float  # MiB of float32 parameters and buffers (torchvision's _file_size is MiB too)
    flops: int
    acc1: float | None
    acc5: float | None
    accuracy_on: str  # "ImageNet-1K (torchvision)", "MNIST held-out (trained here)" or "-"
    # The published file's MiB when it holds heads this app does not build (``ModelSpec.drop_keys``).
    file_mb: float | None = None

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "name": self.name,
            "params": self.params,
            "weight_mb": round(self.weight_mb, 3),
            "flops": self.flops,
            "gflops": round(self.gflops, 4),
            "flops_convention": FLOPS_CONVENTION,
            "acc1": self.acc1,
            "acc5": self.acc5,
            "accuracy_on": self.accuracy_on,
            "file_mb": self.file_mb,
        }


class _OpCounter(TorchDispatchMode):
    """Counts the tensor operations a forward dispatches: in eager mode on a GPU, each is at
    least one kernel the CPU must launch, one after another."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func not in _FREE_OPS:
            self.ops += 1
        return func(*args, **(kwargs or {}))


# Metadata-only operations: they change a tensor's view, and launch no kernel.
_FREE_OPS = {torch.ops.aten.view.default, torch.ops.aten.t.default, torch.ops.aten.detach.default,
             torch.ops.aten._unsafe_view.default, torch.ops.aten.expand.default, torch.ops.aten.slice.Tensor,
             torch.ops.aten.unsqueeze.default, torch.ops.aten.select.int, torch.ops.aten.alias.default,
             torch.ops.aten.permute.default, torch.ops.aten.transpose.int, torch.ops.aten.reshape.default}


@memo(64, name="operations per forward")
def ops_per_forward(key: str) -> int:
    """Tensor operations one batch-1 forward dispatches (counted on the meta device)."""
    spec = get_spec(key)
    model = spec.build_meta()
    counter = _OpCounter()
    with counter, torch.no_grad():
        model(spec.meta_input())
    return counter.ops


@memo(64, name="model stats")
def model_stats(key: str) -> ModelStats:
    spec = get_spec(key)
    model = spec.build_meta()
    params = sum(p.numel() for p in model.parameters())
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    flops, _ = module_flops(key)
    acc = spec.weights.metrics() if spec.weights is not None else Accuracy(None, None, "-")
    file_mb = getattr(spec.weights, "file_mb", None) if spec.drop_keys else None
    return ModelStats(spec.key, spec.name, params, nbytes / 2**20, flops, acc.acc1, acc.acc5, acc.on, file_mb)


# ----------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class StageCost:
    name: str
    layer: str
    shape: tuple[int, ...]
    params: int
    flops: int


def stage_costs(spec: ModelSpec) -> list[StageCost]:
    """The shape trace with parameters and FLOPs for each stage."""
    _, per = module_flops(spec.key)
    return [StageCost(r.name, r.layer, r.shape, r.params, per.get(r.name, 0)) for r in architecture(spec)]


@dataclass(frozen=True)
class BranchCost:
    block: str
    branch: str
    path: str
    params: int
    flops: int


def branch_costs(spec: ModelSpec, block: str) -> list[BranchCost]:
    """Parameters and FLOPs of each branch of one block (shared layers excluded)."""
    model = spec.build_meta()
    _, per = module_flops(spec.key)
    b = spec.block(block)
    out = []
    for br in b.branches:
        paths = tuple(dict.fromkeys(br.modules + br.tap_paths))
        flops = sum(per.get(p, 0) for p in paths)
        out.append(BranchCost(b.name, br.name, describe_branch(model, br), branch_params(model, br), flops))
    return out


PARAMS_CONVENTION = (
    "Parameters: every learned number of the layers, BatchNorm's scale and shift (2 per channel) "
    "included, in every table; a plain alternative gets the same BatchNorm as the layer it replaces"
)


@dataclass(frozen=True)
class Saving:
    """A design choice, measured: the path as built vs. the plain alternative it replaces,
    with the same input and output widths.

    ``textbook_saved``: the saving the paper's argument gives at equal widths (weights only;
    None where no single ratio exists); ``why``: one line on why the as-built figure differs.
    """

    model: str
    where: str
    choice: str
    built: str
    alternative: str
    params_built: int
    params_alt: int
    flops_built: int
    flops_alt: int
    textbook_saved: float | None = None
    why: str = ""

    @property
    def params_saved(self) -> float:
        return 1 - self.params_built / self.params_alt if self.params_alt else 0.0

    @property
    def flops_saved(self) -> float:
        return 1 - self.flops_built / self.flops_alt if self.flops_alt else 0.0

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d.update(params_saved=round(self.params_saved, 4), flops_saved=round(self.flops_saved, 4))
        return d


def _batchnorms(model: nn.Module) -> dict[int, nn.BatchNorm2d]:
    """Each conv's BatchNorm (the next BatchNorm2d registered after it, of its output width)."""
    out, last = {}, None
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            last = m
        elif isinstance(m, nn.BatchNorm2d) and last is not None and m.num_features == last.out_channels:
            out[id(last)] = m
            last = None
    return out


def _cost(layers: list[nn.Module], x: torch.Tensor, bns: dict[int, nn.BatchNorm2d]) -> tuple[int, int]:
    """(params, FLOPs) of running ``layers`` in sequence on ``x`` (meta tensors); each conv's
    BatchNorm counts toward the parameters (BatchNorm adds no multiply-adds to the count)."""
    seq = nn.Sequential(*layers)
    flops, _ = count_flops(seq, x)
    params = sum(p.numel() for p in seq.parameters())
    params += sum(p.numel() for m in layers if id(m) in bns for p in bns[id(m)].parameters())
    return params, flops


def _convs(model: nn.Module, paths: tuple[str, ...]) -> list[nn.Conv2d]:
    return [c for p in paths for c in model.get_submodule(p).modules() if isinstance(c, nn.Conv2d)]


def _input_of(model: nn.Module, spec: ModelSpec, module: nn.Module) -> torch.Tensor:
    """The (meta) tensor ``module`` receives in a forward pass, captured by a pre-hook."""
    seen = {}
    h = module.register_forward_pre_hook(lambda m, i: seen.setdefault("x", i[0]))
    try:
        with torch.no_grad():
            model(spec.meta_input())
    finally:
        h.remove()
    return seen["x"]


def _fmt(c: nn.Conv2d) -> str:
    kh, kw = c.kernel_size
    return f"{kh}x{kw} {c.in_channels}->{c.out_channels}"


def _conv_like(c: nn.Conv2d, bns: dict, *, cin: int | None = None, kernel=None, padding=None,
               cout: int | None = None) -> nn.Conv2d:
    """A plain conv in place of ``c``'s path, registered with a BatchNorm when ``c`` has one."""
    with torch.device("meta"):
        conv = nn.Conv2d(
            cin or c.in_channels, cout or c.out_channels, kernel or c.kernel_size,
            stride=c.stride, padding=c.padding if padding is None else padding, bias=c.bias is not None,
        )
        if id(c) in bns:
            bns[id(conv)] = nn.BatchNorm2d(conv.out_channels)
    return conv


def _measure(spec, where, choice, built: list[nn.Module], alt: list[nn.Module], x, bns,
             built_txt=None, alt_txt=None, textbook=None, why="") -> Saving:
    pb, fb = _cost(built, x, bns)
    pa, fa = _cost(alt, x, bns)
    return Saving(
        spec.key, where, choice,
        built_txt or " -> ".join(_fmt(c) for c in built), alt_txt or " -> ".join(_fmt(c) for c in alt),
        pb, pa, fb, fa, textbook, why,
    )


def reduction_savings(spec: ModelSpec, block: str) -> list[Saving]:
    """Each chain-shaped branch that starts with a 1x1 reduce: as built vs. without the reduce
    (its next conv reading the block input directly, same output width)."""
    model = spec.build_meta()
    bns = _batchnorms(model)
    b = spec.block(block)
    x = _input_of(model, spec, model.get_submodule(b.path))
    out = []
    for br in b.branches:
        convs = _convs(model, br.modules)
        if len(br.tap_paths) != 1 or len(convs) < 2 or convs[0].kernel_size != (1, 1):
            continue
        direct = _conv_like(convs[1], bns, cin=x.shape[1])
        red = convs[0]
        k = f"{convs[1].kernel_size[0]}x{convs[1].kernel_size[1]}"
        widens = red.out_channels > red.in_channels
        why = (f"the 1x1 widens {red.in_channels} channels to {red.out_channels} before the {k}: not a reduction, "
               f"it costs more than the {k} reading the block input directly" if widens else
               f"the 1x1 narrows {red.in_channels} channels to {red.out_channels} before the {k}; the saving "
               "grows with that ratio")
        stride = convs[1].stride[0]
        if stride > 1:  # torchvision's ResNet v1.5: the stride sits in the 3x3, after the 1x1
            why += (f". The 1x1 runs at {x.shape[2]}x{x.shape[3]}, before the stride-{stride} {k} shrinks the map: "
                    f"each of its weights costs {stride * stride}x the FLOPs of one after the stride, so FLOPs fall "
                    "far less than parameters")
        out.append(_measure(spec, f"{block}/{br.name}", "1x1 widening" if widens else "1x1 reduction", convs,
                            [direct, *convs[2:]], x, bns, why=why))
    return out


def _width_note(cin: int, mid: int, cout: int) -> str:
    """Why a two-conv stack saves more or less than at equal widths."""
    if cin == mid == cout:
        return f"equal widths ({cin}): the as-built saving is the textbook one, give or take BatchNorm"
    if mid > cin:
        return (f"the intermediate width ({mid}) is wider than the input ({cin}), so the first conv "
                "costs more than at equal widths")
    if mid < cin:
        return (f"the intermediate width ({mid}) is narrower than the input ({cin}), so the first conv "
                "costs less than at equal widths")
    return f"the output width ({cout}) differs from the input and intermediate width ({cin})"


def _pairs(model: nn.Module, spec: ModelSpec):
    """(where, first conv, second conv) for consecutive convs of each branch, in order."""
    for b in spec.blocks:
        for br in b.branches:
            convs = _convs(model, br.modules)
            for c1, c2 in zip(convs, convs[1:]):
                yield f"{b.name}/{br.name}", c1, c2


def _triples(model: nn.Module, spec: ModelSpec):
    """(where, first, second, third conv) for three consecutive convs of each branch."""
    for b in spec.blocks:
        for br in b.branches:
            convs = _convs(model, br.modules)
            for c1, c2, c3 in zip(convs, convs[1:], convs[2:]):
                yield f"{b.name}/{br.name}", c1, c2, c3


def _first_equal_width(pairs: list):
    """The first pair whose widths are all equal (the paper's own comparison), else the first."""
    return next((p for p in pairs if p[1].in_channels == p[1].out_channels == p[2].out_channels), pairs[0])


def factorisation_savings(spec: ModelSpec) -> list[Saving]:
    """The model's factorisations, found in its conv chains: two stacked 3x3 convs vs one 5x5,
    a 1xk then kx1 pair vs one kxk (each on an equal-width use where the model has one, else
    its first use, with the intermediate width stated), and a Fire module vs a plain 3x3 conv
    of the same output width."""
    model = spec.build_meta()
    bns = _batchnorms(model)
    found: list[Saving] = []
    pairs = list(_pairs(model, spec))
    stacked = [p for p in pairs if p[1].kernel_size == p[2].kernel_size == (3, 3)
               and p[1].stride == p[2].stride == (1, 1) and p[2].in_channels == p[1].out_channels]
    if stacked:
        where, c1, c2 = _first_equal_width(stacked)
        alt = _conv_like(c2, bns, cin=c1.in_channels, kernel=(5, 5), padding=(2, 2))
        found.append(_measure(spec, where, "two 3x3 convs in place of one 5x5", [c1, c2], [alt],
                              _input_of(model, spec, c1), bns, textbook=1 - 18 / 25,
                              why=_width_note(c1.in_channels, c1.out_channels, c2.out_channels)))
    # VGG's own argument (Simonyan & Zisserman 2015, sec. 2.3): three stacked 3x3 convs see 7x7
    # with 27 weights per channel pair instead of 49.
    three = [t for t in _triples(model, spec) if all(c.kernel_size == (3, 3) and c.stride == (1, 1) for c in t[1:])
             and t[2].in_channels == t[1].out_channels and t[3].in_channels == t[2].out_channels]
    if three:
        where, c1, c2, c3 = next((t for t in three if t[1].in_channels == t[1].out_channels == t[3].out_channels),
                                 three[0])
        alt = _conv_like(c3, bns, cin=c1.in_channels, kernel=(7, 7), padding=(3, 3))
        found.append(_measure(spec, where, "three 3x3 convs in place of one 7x7", [c1, c2, c3], [alt],
                              _input_of(model, spec, c1), bns, textbook=1 - 27 / 49,
                              why=_width_note(c1.in_channels, c1.out_channels, c3.out_channels)))
    split = [p for p in pairs if p[1].kernel_size[0] == 1 and p[1].kernel_size[1] > 1
             and p[2].kernel_size == p[1].kernel_size[::-1]]
    if split:
        where, c1, c2 = _first_equal_width(split)
        k = c1.kernel_size[1]
        alt = _conv_like(c2, bns, cin=c1.in_channels, kernel=(k, k), padding=(k // 2, k // 2))
        found.append(_measure(spec, where, f"1x{k} + {k}x1 in place of one {k}x{k}", [c1, c2], [alt],
                              _input_of(model, spec, c1), bns, textbook=1 - 2 / k,
                              why=_width_note(c1.in_channels, c1.out_channels, c2.out_channels)))
    fire = next((b for b in spec.blocks if b.shared and b.merge == "concat"), None)
    if fire is not None:
        fm = model.get_submodule(fire.path)
        x = _input_of(model, spec, fm)
        width = sum(model.get_submodule(br.modules[0]).out_channels for br in fire.branches)
        squeeze = _convs(model, fire.shared)[0]
        with torch.device("meta"):
            plain = nn.Conv2d(x.shape[1], width, 3, padding=1)
        found.append(_measure(
            spec, fire.name, "Fire module in place of a plain 3x3 conv", [fm], [plain], x, bns,
            built_txt=f"squeeze {_fmt(squeeze)}, expand 1x1 || 3x3 -> {width}",
            alt_txt=f"3x3 {x.shape[1]}->{width}",
            why=f"the squeeze to {squeeze.out_channels} channels and the half-1x1 expand set the saving",
        ))
    return found
