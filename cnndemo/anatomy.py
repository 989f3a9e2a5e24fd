"""Reading an architecture off its modules: kernel paths, parameter counts, the shape trace.

Everything here is derived from the module objects (kernel sizes, strides, channel counts),
never typed in, so a label always says what the code really does.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .cache import memo
from .specs import BlockSpec, BranchSpec, ModelSpec
from .zoo import get_spec

_SKIP = (nn.ReLU, nn.BatchNorm2d, nn.Dropout, nn.Identity, nn.Flatten)


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def describe_layer(m: nn.Module) -> str | None:
    """'3x3/2 128' for a conv, '3x3 max-pool' for a pool; None for layers that keep the shape."""
    if isinstance(m, nn.Conv2d):
        kh, kw = _pair(m.kernel_size)
        sh, _ = _pair(m.stride)
        stride = f"/{sh}" if sh > 1 else ""
        return f"{kh}x{kw}{stride} {m.out_channels}"
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        kh, kw = _pair(m.kernel_size)
        sh, _ = _pair(m.stride if m.stride is not None else m.kernel_size)
        stride = f"/{sh}" if sh > 1 else ""
        kind = "max" if isinstance(m, nn.MaxPool2d) else "avg"
        return f"{kh}x{kw}{stride} {kind}-pool"
    if isinstance(m, nn.Linear):
        return f"linear {m.out_features}"
    return None


def _leaf_descriptions(m: nn.Module) -> list[str]:
    leaves = [x for x in m.modules() if not list(x.children())] or [m]
    return [d for x in leaves if not isinstance(x, _SKIP) and (d := describe_layer(x))]


def _mark_reduce(parts: list[str]) -> list[str]:
    # A 1x1 conv that feeds further convs on the same path is a channel reduction.
    if len(parts) > 1 and parts[0].startswith("1x1 ") and "pool" not in parts[1]:
        return ["1x1 reduce " + parts[0][4:]] + parts[1:]
    return parts


def describe_branch(model: nn.Module, branch: BranchSpec) -> str:
    """The kernel path of a branch, e.g. '1x1 reduce 96 -> 3x3 128'."""
    parts: list[str] = []
    if branch.pre is not None:
        parts += _leaf_descriptions(branch.pre) or ["identity"]
    taps = set(branch.tap_paths) if len(branch.tap_paths) > 1 else set()
    for path in branch.modules:
        if path not in taps:
            parts += _leaf_descriptions(model.get_submodule(path))
    if taps:
        split = " || ".join(
            " -> ".join(_leaf_descriptions(model.get_submodule(t))) for t in branch.tap_paths
        )
        parts.append(f"({split})")
    parts = _mark_reduce(parts)
    return " -> ".join(parts) if parts else "identity"


def count_params(model: nn.Module, paths: tuple[str, ...]) -> int:
    seen: set[int] = set()
    total = 0
    for path in paths:
        for p in model.get_submodule(path).parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def branch_params(model: nn.Module, branch: BranchSpec) -> int:
    return count_params(model, tuple(dict.fromkeys(branch.modules + branch.tap_paths)))


def describe_shared(model: nn.Module, block: BlockSpec) -> str:
    parts: list[str] = []
    for path in block.shared:
        parts += _leaf_descriptions(model.get_submodule(path))
    return " -> ".join(parts)


@dataclass(frozen=True)
class StageRow:
    name: str
    layer: str
    shape: tuple[int, ...]
    params: int


def _trace_targets(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level children, with nn.Sequential containers opened one level."""
    out = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            out += [(f"{name}.{n}", c) for n, c in child.named_children()]
        else:
            out.append((name, child))
    return out


def shape_trace(model: nn.Module, input_size: tuple[int, int, int]) -> list[StageRow]:
    """Each top-level stage that runs, in order, with its output shape and parameter count.

    Layers that neither change the shape nor hold parameters (ReLU, dropout) are left out.
    """
    rows: list[StageRow] = []
    handles = []

    def record(name: str, m: nn.Module):
        def hook(_m, _inp, out):
            if isinstance(out, torch.Tensor):
                rows.append(StageRow(name, type(m).__name__, tuple(out.shape[1:]), _own_params(m)))

        return hook

    try:
        for name, m in _trace_targets(model):
            if isinstance(m, (nn.ReLU, nn.Dropout)):
                continue
            handles.append(m.register_forward_hook(record(name, m)))
        device = next(model.parameters()).device
        with torch.inference_mode():
            model(torch.zeros(1, *input_size, device=device))
    finally:
        for h in handles:
            h.remove()
    return rows


def _own_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def architecture(spec: ModelSpec) -> tuple[StageRow, ...]:
    """The shape trace of a zoo model, cached per architecture (weights do not change it).

    Runs on the meta device: shapes and parameter counts without memory or compute.
    """
    return _architecture(spec.key)


@memo(64, name="shape traces")
def _architecture(key: str) -> tuple[StageRow, ...]:
    spec = get_spec(key)
    return tuple(shape_trace(spec.build_meta(), spec.input_size))


def paper_names(spec: ModelSpec) -> dict[str, str]:
    """torchvision's module name -> the name the model's paper uses, where they differ: VGG's
    conv5_3 for ``features.28`` (Simonyan & Zisserman, Table 1), ResNet's conv4_x blocks for
    ``layer3`` (He et al., Table 1), SqueezeNet's fire9 for ``features.12`` (Iandola et al.,
    Table 1). Inception models use the papers' own block names already; others map to nothing."""
    rows = architecture(spec)
    out: dict[str, str] = {}
    if spec.family == "Plain":
        stage, conv, fc = 1, 0, 6
        for r in rows:
            if r.layer == "Conv2d":
                conv += 1
                out[r.name] = f"conv{stage}_{conv}"
            elif r.layer == "MaxPool2d":
                out[r.name] = f"pool{stage}"
                stage, conv = stage + 1, 0
            elif r.layer == "Linear":
                out[r.name] = f"fc{fc}"
                fc += 1
    elif spec.family == "Residual":
        for r in rows:
            parts = r.name.split(".")
            if parts[0].startswith("layer") and len(parts) == 2:
                out[r.name] = f"conv{int(parts[0][5:]) + 1}_x, block {int(parts[1]) + 1}"
    elif spec.family == "Compact":
        n = 0
        for r in rows:
            if r.layer in ("Conv2d", "Fire"):
                n = n + 1 if n else 1
                out[r.name] = f"conv{n}" if r.layer == "Conv2d" else f"fire{n}"
            elif r.layer in ("MaxPool2d", "AdaptiveAvgPool2d"):
                out[r.name] = f"{'maxpool' if r.layer == 'MaxPool2d' else 'avgpool'}{n}"
    return out


def total_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- receptive field

_GLOBAL = 10**9  # a global pooling or a linear layer: every output sees the whole input
_POOLS = {F.max_pool2d: ("kernel_size", "stride", "padding", "dilation"),
          F.avg_pool2d: ("kernel_size", "stride", "padding")}


def _window(node: fx.Node, mod: nn.Module | None) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None:
    """(kernel, stride, dilation) of a conv or pool node, per axis; None for other nodes."""
    if isinstance(mod, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        k = _pair(mod.kernel_size)
        st = _pair(mod.stride if mod.stride is not None else mod.kernel_size)
        d = _pair(getattr(mod, "dilation", 1))
        return k, st, d
    if node.op == "call_function" and node.target in _POOLS:
        names = _POOLS[node.target]
        given = dict(zip(names, node.args[1:]), **node.kwargs)
        k = _pair(given["kernel_size"])
        st = _pair(given.get("stride") or given["kernel_size"])
        return k, st, _pair(given.get("dilation", 1))
    return None


def _is_global(node: fx.Node, mod: nn.Module | None) -> bool:
    if isinstance(mod, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Linear)):
        return True
    return node.op == "call_function" and node.target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.linear)


@dataclass(frozen=True)
class Field:
    """Receptive field (input pixels one output position can see) and stride (input pixels
    between neighbouring output positions), per axis (height, width)."""

    size: tuple[int, int]
    stride: tuple[int, int]

    @property
    def whole_image(self) -> bool:
        return max(self.size) >= _GLOBAL

    def describe(self) -> str:
        if self.whole_image:
            return "whole image"
        h, w = self.size
        return f"{h}" if h == w else f"{h}x{w}"


# torch.fx patches nn.Module.__call__ and __getattr__ for the whole process while it traces, and
# restores what it found: two traces at once could leave a tracer's wrapper installed for good.
_TRACE_LOCK = threading.Lock()


class _ThisThreadTracer(fx.Tracer):
    """An fx tracer that records only its own thread's module calls. While it traces, requests
    in other threads run networks through the patched ``__call__``; those calls (and their
    parameter lookups) pass through untouched instead of failing or entering the graph."""

    def __init__(self):
        super().__init__()
        self._thread = threading.get_ident()

    def call_module(self, m, forward, args, kwargs):
        if threading.get_ident() != self._thread:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if threading.get_ident() != self._thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


def receptive_fields(spec: ModelSpec) -> dict[str, Field]:
    """The receptive field and stride of every stage output, traced once per architecture
    (see ``_trace_fields``)."""
    return _receptive_fields(spec.key)


@memo(64, name="receptive fields")
def _receptive_fields(key: str) -> dict[str, Field]:
    with _TRACE_LOCK:
        return _trace_fields(get_spec(key))


def _trace_fields(spec: ModelSpec) -> dict[str, Field]:
    """The receptive field and stride of every stage output, computed from the modules.

    The model is traced with torch.fx; each conv and pool grows the field by (k - 1) x dilation
    x the stride so far and multiplies the stride; where paths merge (concat, add), the widest
    path counts. The theoretical field: the effective one, weighted by the weights, is smaller.
    """
    model = spec.build_meta()
    graph = _ThisThreadTracer().trace(model)
    mods = dict(model.named_modules())
    state: dict[fx.Node, Field] = {}
    last_in: dict[str, fx.Node] = {}
    for node in graph.nodes:
        mod = mods.get(node.target) if node.op == "call_module" else None
        inputs = [state[a] for a in node.all_input_nodes if a in state]
        if node.op == "placeholder":
            f = Field((1, 1), (1, 1))
        elif not inputs:
            continue
        else:
            size = tuple(max(i.size[a] for i in inputs) for a in (0, 1))
            stride = tuple(max(i.stride[a] for i in inputs) for a in (0, 1))
            if _is_global(node, mod):
                size = (_GLOBAL, _GLOBAL)
            elif (win := _window(node, mod)) is not None:
                k, st, d = win
                size = tuple(min(_GLOBAL, size[a] + (k[a] - 1) * d[a] * stride[a]) for a in (0, 1))
                stride = tuple(stride[a] * st[a] for a in (0, 1))
            f = Field(size, stride)
        state[node] = f
        for path in node.meta.get("nn_module_stack", {}):
            last_in[path] = node
    out = {}
    for row in architecture(spec):
        node = last_in.get(row.name)
        if node is not None:
            out[row.name] = state[node]
    return out
