"""One unit of one branch, step by step: the arithmetic that made its value, and where in the
image it looks.

A unit is one number on a branch's output map: (block, branch, output channel, y, x).
``unit`` runs the network once with the app's own taps (``taps.run_with_taps``: the value the
branch maps show) and, meanwhile, records every layer of the block, then recomputes that number
from the layers' own parameters: the input patch times the kernel slice, summed, plus the bias;
BatchNorm with its gamma, beta, running mean and variance; the ReLU; a final max pool (a plain
stage) picks its window's largest value. The recomputed value is checked against the captured
one (``UnitReport.agrees``).

Where it looks:

- the theoretical receptive field (``field_boxes``): the input pixels the unit can see at all,
  traced from every conv and pool's kernel, stride, padding and dilation, as a box per output
  position (``Box``);
- the effective receptive field (Luo et al. 2016): |d unit / d input| summed over the colours,
  from one backward pass that stops at the branch (the rest of the network never runs). The
  gradient is exactly zero outside the theoretical field, so any of its mass outside the box
  means the box is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from . import anatomy, cancel
from .cache import memo
from .errors import BadRequest, NotFound
from .pipeline import ImageLike, prepare, resolve
from .runtime import LoadedModel
from .specs import BlockSpec, BranchSpec, ModelSpec
from .taps import run_until, run_with_taps
from .zoo import get_spec

TOP_INPUTS = 6  # input channels shown one by one (the largest contributions)
_pair = anatomy._pair


# ----------------------------------------------------------------------------- the theoretical field


@dataclass(frozen=True)
class Box:
    """The theoretical receptive field of a map's positions, per axis (height, width): output
    position i sees input pixels ``i * stride + lo`` to ``i * stride + hi`` (inclusive; before
    clipping to the image, so ``lo`` is negative where padding is read)."""

    stride: tuple[int, int]
    lo: tuple[int, int]
    hi: tuple[int, int]
    whole: bool = False  # after a global pool or a linear layer

    @property
    def size(self) -> tuple[int, int]:
        return (self.hi[0] - self.lo[0] + 1, self.hi[1] - self.lo[1] + 1)

    def at(self, y: int, x: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) in input pixels, inclusive, not clipped."""
        return (y * self.stride[0] + self.lo[0], x * self.stride[1] + self.lo[1],
                y * self.stride[0] + self.hi[0], x * self.stride[1] + self.hi[1])


def _padding(node: fx.Node, mod: nn.Module | None, kernel, dilation) -> tuple[int, int]:
    pad = getattr(mod, "padding", None) if mod is not None else dict(
        zip(anatomy._POOLS.get(node.target, ()), node.args[1:]), **node.kwargs).get("padding", 0)
    if isinstance(pad, str):  # "same" pads (k - 1) x d in all, the smaller half first; "valid" none
        return tuple(((k - 1) * d) // 2 if pad == "same" else 0 for k, d in zip(kernel, dilation))
    return _pair(pad or 0)


def _union(boxes: list[Box]) -> Box:
    return Box(tuple(max(b.stride[a] for b in boxes) for a in (0, 1)),
               tuple(min(b.lo[a] for b in boxes) for a in (0, 1)),
               tuple(max(b.hi[a] for b in boxes) for a in (0, 1)), any(b.whole for b in boxes))


def field_boxes(spec: ModelSpec) -> dict[str, Box]:
    """Every module's output field (keyed by its path; ``"<path>:input"``: what the module
    reads), traced once per architecture with torch.fx on the meta device."""
    return _field_boxes(spec.key)


@memo(64, name="receptive field boxes")
def _field_boxes(key: str) -> dict[str, Box]:
    with anatomy._TRACE_LOCK:
        return _trace_boxes(get_spec(key))


def _trace_boxes(spec: ModelSpec) -> dict[str, Box]:
    model = spec.build_meta()
    graph = anatomy._ThisThreadTracer().trace(model)
    mods = dict(model.named_modules())
    state: dict[fx.Node, Box] = {}
    out: dict[str, Box] = {}
    for node in graph.nodes:
        mod = mods.get(node.target) if node.op == "call_module" else None
        inputs = [state[a] for a in node.all_input_nodes if a in state]
        if node.op == "placeholder":
            box = Box((1, 1), (0, 0), (0, 0))
        elif not inputs:
            continue
        else:
            box = _union(inputs)
            if anatomy._is_global(node, mod):
                box = Box(box.stride, box.lo, box.hi, True)
            elif (win := anatomy._window(node, mod)) is not None:
                k, st, d = win
                p = _padding(node, mod, k, d)
                box = Box(tuple(box.stride[a] * st[a] for a in (0, 1)),
                          tuple(box.lo[a] - p[a] * box.stride[a] for a in (0, 1)),
                          tuple(box.hi[a] + ((k[a] - 1) * d[a] - p[a]) * box.stride[a] for a in (0, 1)), box.whole)
        state[node] = box
        for path in node.meta.get("nn_module_stack", {}):
            if f"{path}:input" not in out and inputs:
                out[f"{path}:input"] = _union(inputs)
            out[path] = box
    return out


# ----------------------------------------------------------------------------- the arithmetic


@dataclass(frozen=True)
class Conv:
    """One output of a convolution, term by term."""

    path: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    in_channels: int  # the input channels this output reads (per group)
    first_channel: int  # where they start in the conv's input (grouped convs)
    at: tuple[int, int]  # the position in the conv's output
    patch: np.ndarray  # (in_channels, kh, kw): the input under the kernel (zeros where it is padding)
    kernel_slice: np.ndarray  # (in_channels, kh, kw): this output channel's weights
    contributions: np.ndarray  # (in_channels,): sum of patch x kernel per input channel
    bias: float
    value: float  # sum of every product, plus the bias

    def top_inputs(self, n: int = TOP_INPUTS) -> list[tuple[int, float]]:
        """(input channel, contribution) of the largest contributions, by size."""
        order = np.argsort(-np.abs(self.contributions))[:n]
        return [(int(self.first_channel + i), float(self.contributions[i])) for i in order]


@dataclass(frozen=True)
class BatchNorm:
    path: str
    gamma: float
    beta: float
    mean: float
    var: float
    eps: float
    before: float
    value: float


@dataclass(frozen=True)
class Pool:
    """A pool: the unit is its window's largest value (max) or their mean (average)."""

    path: str
    kind: str  # "max" or "mean"
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    window: np.ndarray  # the window's values (max: -inf, mean: 0 where it is padding)
    winner: tuple[int, int]  # max: where the maximum is, in the pool's input; mean: the window's corner
    value: float


@dataclass
class UnitReport:
    model: str
    block: str
    branch: str
    channel: int  # in the branch's output
    y: int
    x: int
    captured: float  # the activation the app's taps captured
    recomputed: float
    concat: str  # where the unit sits in the block's output
    conv: Conv | None = None
    bn: BatchNorm | None = None
    relu: tuple[float, float] | None = None  # (before, after)
    pool: Pool | None = None
    passthrough: str = ""  # a branch with no layers (an identity shortcut): what it passes on
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # the theoretical field, (top, left, bottom, right)
    theory: Box | None = None  # the theoretical field of the unit's map
    image_size: tuple[int, int] = (0, 0)
    erf: np.ndarray | None = field(default=None, repr=False)  # |d unit / d input| summed over colours
    erf_in_box: float | None = None  # the share of the gradient's mass inside the box
    erf_outside: float | None = None  # its mass outside the box (exactly zero when the box is right)
    erf_radius90: float | None = None  # the radius (px, from the box's centre) that holds 90% of it
    channel_map: np.ndarray | None = field(default=None, repr=False)  # the unit's channel, as captured

    @property
    def agrees(self) -> bool:
        return math.isclose(self.recomputed, self.captured, rel_tol=1e-4, abs_tol=1e-5)

    @property
    def clipped_box(self) -> tuple[int, int, int, int]:
        h, w = self.image_size
        t, l, b, r = self.box
        return (max(t, 0), max(l, 0), min(b, h - 1), min(r, w - 1))

    def lines(self) -> list[str]:
        """The steps as plain text (the command line; the app draws them as a table)."""
        spec = get_spec(self.model)
        out = [f"{spec.name} · {self.block} / {self.branch} · channel {self.channel} at ({self.y}, {self.x}): "
               f"{self.concat}"]
        if self.passthrough:
            out.append(f"no layers on this path: {self.passthrough}")
        if self.pool is not None:
            p = self.pool
            what = (f"the largest value of its window, {p.value:.6g} at ({p.winner[0]}, {p.winner[1]}) of the map "
                    "before it" if p.kind == "max" else f"the mean of its window, {p.value:.6g}")
            out.append(f"{p.kind} pool {p.path} ({'x'.join(map(str, p.kernel))}, stride {p.stride[0]}): {what}")
        if self.conv is not None:
            c = self.conv
            k = "x".join(map(str, c.kernel))
            what = ("a 1x1 convolution mixes the channels at one position" if c.kernel == (1, 1)
                    else f"a {k} convolution, stride {c.stride[0]}, padding {c.padding[0]}")
            out.append(f"{c.path}: {what}; at ({c.at[0]}, {c.at[1]}) it reads {c.in_channels} input channels")
            out.append(f"  sum of {c.patch.size:,} products (input x weight) = {c.value - c.bias:+.6g}")
            top = ", ".join(f"channel {i} {v:+.4g}" for i, v in c.top_inputs())
            out.append(f"  largest contributions: {top}")
            out.append(f"  + bias {c.bias:+.6g} = {c.value:+.6g}")
        if self.bn is not None:
            b = self.bn
            out.append(f"{b.path}: ({b.before:+.6g} - mean {b.mean:.4g}) / sqrt(var {b.var:.4g} + {b.eps:g}) "
                       f"x gamma {b.gamma:.4g} + beta {b.beta:+.4g} = {b.value:+.6g}")
        if self.relu is not None:
            out.append(f"ReLU: max(0, {self.relu[0]:+.6g}) = {self.relu[1]:.6g}")
        out.append(f"value {self.recomputed:.6g}; the app captured {self.captured:.6g} "
                   f"({'equal' if self.agrees else 'NOT equal'} to 1e-4)")
        if self.theory is not None:
            t, l, b_, r = self.box
            ct, cl, cb, cr = self.clipped_box
            h, w = self.theory.size
            out.append(f"theoretical receptive field: rows {t}..{b_}, columns {l}..{r} ({h} x {w} px, stride "
                       f"{self.theory.stride[0]}); on the {self.image_size[0]} x {self.image_size[1]} input: rows "
                       f"{ct}..{cb}, columns {cl}..{cr}")
        if self.erf_in_box is not None:
            out.append(f"effective receptive field: {self.erf_in_box:.1%} of |d unit / d input| inside that box; 90% "
                       f"within {self.erf_radius90:.0f} px of its centre")
        elif self.erf is not None:
            out.append("effective receptive field: none (the unit is 0 after its ReLU: no gradient reaches the image)")
        return out

    def to_json(self) -> dict:
        out = {"model": self.model, "block": self.block, "branch": self.branch, "channel": self.channel,
               "at": [self.y, self.x], "captured": self.captured, "recomputed": self.recomputed,
               "agrees": self.agrees, "concat": self.concat, "passthrough": self.passthrough or None}
        if self.conv is not None:
            c = self.conv
            out["conv"] = {"module": c.path, "kernel": list(c.kernel), "stride": list(c.stride),
                           "padding": list(c.padding), "dilation": list(c.dilation), "in_channels": c.in_channels,
                           "at": list(c.at), "sum_of_products": c.value - c.bias, "bias": c.bias, "value": c.value,
                           "top_inputs": [{"channel": i, "contribution": v} for i, v in c.top_inputs()]}
        if self.bn is not None:
            b = self.bn
            out["batchnorm"] = {"module": b.path, "gamma": b.gamma, "beta": b.beta, "running_mean": b.mean,
                                "running_var": b.var, "eps": b.eps, "before": b.before, "after": b.value}
        if self.relu is not None:
            out["relu"] = {"before": self.relu[0], "after": self.relu[1]}
        if self.pool is not None:
            out["pool"] = {"module": self.pool.path, "kind": self.pool.kind, "kernel": list(self.pool.kernel),
                           "stride": list(self.pool.stride), "winner": list(self.pool.winner), "value": self.pool.value}
        if self.theory is not None:
            out["field"] = {"box": list(self.box), "clipped": list(self.clipped_box),
                            "size": list(self.theory.size), "stride": list(self.theory.stride),
                            "image": list(self.image_size)}
        if self.erf is not None:
            out["effective_field"] = {"in_box": self.erf_in_box, "outside": self.erf_outside,
                                      "radius90_px": self.erf_radius90}
        return out


def find_branch(bspec: BlockSpec, name: str | None) -> BranchSpec:
    if name is None or name == "":
        if len(bspec.branches) == 1:
            return bspec.branches[0]
        raise BadRequest(f"block {bspec.name!r} has {len(bspec.branches)} branches: name one "
                         f"({', '.join(b.name for b in bspec.branches)})")
    for br in bspec.branches:
        if br.name == name:
            return br
    names = ", ".join(b.name for b in bspec.branches)
    raise NotFound(f"block {bspec.name!r} has no branch {name!r}; branches: {names}")


def tap_of(model: nn.Module, br: BranchSpec, channel: int, captured_shape) -> tuple[str | None, int]:
    """Which tap module (path) makes branch channel ``channel``, and its channel there."""
    if not br.tap_paths:
        return None, channel
    if len(br.tap_paths) == 1:
        return br.tap_paths[0], channel
    offset = 0
    for path in br.tap_paths:
        conv = [m for m in model.get_submodule(path).modules() if isinstance(m, nn.Conv2d)][-1]
        if channel < offset + conv.out_channels:
            return path, channel - offset
        offset += conv.out_channels
    raise BadRequest(f"channel {channel} is beyond the branch's {captured_shape[1]} channels")


@dataclass
class _Record:
    path: str
    module: nn.Module
    inp: torch.Tensor
    out: torch.Tensor


def _conv_at(rec: _Record, co: int, yo: int, xo: int) -> Conv:
    conv: nn.Conv2d = rec.module
    if conv.padding_mode != "zeros":
        raise BadRequest(f"{rec.path}: padding mode {conv.padding_mode!r} is not shown step by step")
    k, st, d = _pair(conv.kernel_size), _pair(conv.stride), _pair(conv.dilation)
    pad = _padding(None, conv, k, d)
    per_group = conv.out_channels // conv.groups
    cin = conv.in_channels // conv.groups
    first = (co // per_group) * cin
    xin = rec.inp[0, first:first + cin].double()
    xp = F.pad(xin, (pad[1], pad[1], pad[0], pad[0]))
    y0, x0 = yo * st[0], xo * st[1]
    patch = xp[:, y0:y0 + (k[0] - 1) * d[0] + 1:d[0], x0:x0 + (k[1] - 1) * d[1] + 1:d[1]]
    w = conv.weight[co].detach().double().cpu()
    patch = patch.cpu()
    contributions = (patch * w).sum(dim=(1, 2))
    bias = float(conv.bias[co].detach()) if conv.bias is not None else 0.0
    return Conv(rec.path, k, st, pad, d, cin, first, (yo, xo), patch.numpy(), w.numpy(), contributions.numpy(),
                bias, float(contributions.sum()) + bias)


def _bn_at(rec: _Record, c: int, before: float) -> BatchNorm:
    bn: nn.BatchNorm2d = rec.module
    gamma = float(bn.weight[c].detach()) if bn.weight is not None else 1.0
    beta = float(bn.bias[c].detach()) if bn.bias is not None else 0.0
    mean, var = float(bn.running_mean[c]), float(bn.running_var[c])
    value = (before - mean) / math.sqrt(var + bn.eps) * gamma + beta
    return BatchNorm(rec.path, gamma, beta, mean, var, bn.eps, before, value)


def _feeds(before: _Record, after: _Record) -> bool:
    """Whether ``after`` read what ``before`` wrote (an in-place ReLU's input is recorded as it
    left it)."""
    if torch.equal(before.out, after.inp):
        return True
    return isinstance(after.module, nn.ReLU) and torch.equal(torch.relu(before.out), after.inp)


def _chain(records: list[_Record], tap: str) -> tuple[list[_Record], _Record]:
    """The layers that made ``tap``'s output, from its last convolution on (in the order they
    ran), and the tap's own record."""
    own = [i for i, r in enumerate(records) if r.path == tap]
    if not own:
        raise NotFound(f"{tap} did not run")
    end_rec = records[own[-1]]
    leaves = [i for i, r in enumerate(records) if (r.path == tap or r.path.startswith(tap + "."))
              and not list(r.module.children())]
    # the leaves inside the tap (a conv-BN-ReLU module), or the tap itself and the leaves before it
    last = leaves[-1] if leaves else own[-1]
    chain = []
    i = last
    while i >= 0:
        r = records[i]
        if list(r.module.children()):
            i -= 1
            continue
        if chain and not _feeds(r, chain[0]):
            i -= 1  # another path's layer ran in between (a parallel branch)
            continue
        chain.insert(0, r)
        if isinstance(r.module, nn.Conv2d):
            return chain, end_rec
        if not isinstance(r.module, (nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Identity, nn.Dropout)):
            raise BadRequest(f"{r.path}: a {type(r.module).__name__} is not shown step by step")
        i -= 1
    if len(chain) == 1 and isinstance(chain[0].module, (nn.MaxPool2d, nn.AvgPool2d)):
        return chain, end_rec  # a path that only pools what the block reads
    raise BadRequest(f"no convolution makes {tap}")


def _pool_at(rec: _Record, c: int, y: int, x: int) -> Pool:
    pool = rec.module
    k, st = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size)
    d, pad = _pair(getattr(pool, "dilation", 1)), _pair(pool.padding)
    biggest = isinstance(pool, nn.MaxPool2d)
    src = F.pad(rec.inp[0, c].double(), (pad[1], pad[1], pad[0], pad[0]), value=-math.inf if biggest else 0.0)
    window = src[y * st[0]:y * st[0] + (k[0] - 1) * d[0] + 1:d[0], x * st[1]:x * st[1] + (k[1] - 1) * d[1] + 1:d[1]]
    top, left = y * st[0] - pad[0], x * st[1] - pad[1]
    if biggest:
        wy, wx = divmod(int(torch.argmax(window)), window.shape[1])
        return Pool(rec.path, "max", k, st, pad, window.cpu().numpy(), (top + wy * d[0], left + wx * d[1]),
                    float(window.max()))
    if pool.divisor_override:
        count = pool.divisor_override
    elif pool.count_include_pad:
        count = window.numel()
    else:  # only the image's own pixels count
        h, w = rec.inp.shape[2:]
        count = (min(top + k[0], h) - max(top, 0)) * (min(left + k[1], w) - max(left, 0))
    return Pool(rec.path, "mean", k, st, pad, window.cpu().numpy(), (top, left), float(window.sum()) / count)


def _recompute(chain: list[_Record], end: _Record, c: int, y: int, x: int, report: UnitReport) -> float:
    """Fill ``report`` with the chain's arithmetic for channel ``c`` at (y, x) of ``end``'s output."""
    ops = list(chain)
    pooling = (nn.MaxPool2d, nn.AvgPool2d)
    if isinstance(ops[-1].module, pooling) and (len(ops) > 1 or not isinstance(ops[0].module, nn.Conv2d)):
        report.pool = _pool_at(ops.pop(), c, y, x)  # a pool ends the path: its window's winner, or its mean
        if not ops:  # a path that only pools what the block reads
            return report.pool.value
        y, x = report.pool.winner
        if report.pool.kind != "max":
            raise BadRequest(f"{report.pool.path}: a mean pool after a convolution is not shown step by step")
    conv = _conv_at(ops[0], c, y, x)
    report.conv = conv
    value = conv.value
    for rec in ops[1:]:
        if isinstance(rec.module, nn.BatchNorm2d):
            report.bn = _bn_at(rec, c, value)
            value = report.bn.value
        elif isinstance(rec.module, nn.ReLU):
            report.relu = (value, max(value, 0.0))
            value = report.relu[1]
    # A functional ReLU at the end of a conv-BN-ReLU module (torchvision's BasicConv2d).
    if report.relu is None and report.pool is None:
        wanted = float(end.out[0, c, y, x])
        if value < 0 and math.isclose(wanted, 0.0, abs_tol=1e-6):
            report.relu = (value, 0.0)
            value = 0.0
        elif value >= 0 and end.module is not ops[-1].module and torch.all(end.out >= 0):
            report.relu = (value, value)
    return value


def unit(image: ImageLike, model: LoadedModel | str, block: str, branch: str | None, channel: int | None = None,
         y: int | None = None, x: int | None = None, *, effective: bool = True) -> UnitReport:
    """The arithmetic of one unit of a branch (``branch`` None: a plain stage's only path), its
    theoretical receptive field and (``effective``) its effective one. With no ``channel``: the
    branch's most active one (largest mean); with no position: the channel's strongest."""
    lm = resolve(model)
    spec = lm.spec
    bspec = spec.block(block)
    br = find_branch(bspec, branch)
    inp = prepare(image, lm)
    records: list[_Record] = []

    def record(path):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor) and args and isinstance(args[0], torch.Tensor):
                records.append(_Record(path, module, args[0].detach().clone(), output.detach().clone()))
        return hook

    # the block's layers (a plain stage's are its branch's modules, the block path its last one)
    roots = (bspec.path, *br.modules, *br.tap_paths)
    # Hooks live only while this request holds the model's lock (no other forward pass meets them).
    with cancel.holding(lm.lock), torch.inference_mode():
        handles = [m.register_forward_hook(record(p)) for p, m in lm.module.named_modules()
                   if any(p == r or p.startswith(r + ".") for r in roots)]
        try:
            _, raw = run_with_taps(lm.module, inp.x, [bspec], keep_outputs=False)
        finally:
            for h in handles:
                h.remove()
    index = [b.name for b in bspec.branches].index(br.name)
    out = raw[block].branches[index]
    n, h, w = out.shape[1:]
    if channel is None:
        channel = int(out[0].float().mean(dim=(1, 2)).argmax())
    if y is None or x is None:
        at = int(out[0, channel].argmax()) if 0 <= channel < n else 0
        y, x = divmod(at, w)
    if not (0 <= channel < n and 0 <= y < h and 0 <= x < w):
        raise BadRequest(f"{block} / {br.name}: the unit must be a channel below {n} at y below {h} and x below "
                         f"{w}; got channel {channel} at ({y}, {x})")
    captured = float(out[0, channel, y, x])
    channel_map = out[0, channel].float().cpu().numpy()
    offset = 0
    for b, t in zip(bspec.branches, raw[block].branches):
        if b.name == br.name:
            break
        offset += t.shape[1]
    concat = (f"channel {offset + channel} of {block}'s output (channel {channel} of branch {br.name})"
              if bspec.merge == "concat" else
              f"added to the other path's channel {channel}, then a ReLU, makes channel {channel} of {block}'s output"
              if bspec.merge == "add_relu" else f"channel {channel} of {block}'s output")
    report = UnitReport(spec.key, block, br.name, channel, y, x, captured, captured, concat,
                        image_size=tuple(inp.x.shape[2:]), channel_map=channel_map)
    tap, local = tap_of(lm.module, br, channel, out.shape)
    boxes = field_boxes(spec)
    if tap is None:  # a branch with no layers: it passes on what it reads (ResNet's identity)
        block_in = next(r for r in records if r.path.startswith(bspec.path + ".")).inp
        if isinstance(br.pre, (nn.MaxPool2d, nn.AvgPool2d)):  # a pool the block applies functionally
            pre = _Record(f"{bspec.path} ({type(br.pre).__name__})", br.pre, block_in, br.pre(block_in))
            report.pool = _pool_at(pre, channel, y, x)
            report.recomputed = report.pool.value
            report.theory = boxes.get(bspec.path)
        else:
            report.recomputed = float(br.pre(block_in)[0, channel, y, x])
            report.passthrough = f"the block's input, channel {channel} at ({y}, {x}), passed on unchanged"
            report.theory = boxes.get(f"{bspec.path}:input")
    else:
        chain, end = _chain(records, tap)
        report.recomputed = _recompute(chain, end, local, y, x, report)
        report.theory = boxes.get(tap)
    if report.theory is not None:
        report.box = report.theory.at(y, x)
    if effective:
        _effective_field(lm, inp.x, tap, bspec, br, local, channel, y, x, report)
    return report


def _effective_field(lm: LoadedModel, x: torch.Tensor, tap: str | None, bspec: BlockSpec, br: BranchSpec,
                     local: int, channel: int, y: int, xx: int, report: UnitReport) -> None:
    """|d unit / d input| summed over colours, from a forward pass that stops at the unit's
    branch, and how much of it lies in the theoretical box."""
    xg = x.detach().clone().requires_grad_(True)
    with cancel.holding(lm.lock), torch.enable_grad():
        if tap is not None:
            t = run_until(lm.module, xg, [tap])[tap]
        else:  # a path with no layers: what it passes on, from the block's input
            t = br.pre(run_until(lm.module, xg, [bspec.path], inputs=True)[bspec.path])
        (grad,) = torch.autograd.grad(t[0, local if tap is not None else channel, y, xx], xg)
    heat = grad[0].abs().sum(0).double().cpu().numpy()
    report.erf = heat.astype(np.float32)
    total = float(heat.sum())
    top, left, bottom, right = report.clipped_box
    inside = float(heat[top:bottom + 1, left:right + 1].sum())
    report.erf_outside = max(total - inside, 0.0)
    report.erf_in_box = inside / total if total > 0 else None
    if total > 0:
        cy, cx = (report.box[0] + report.box[2]) / 2, (report.box[1] + report.box[3]) / 2
        yy, xs = np.mgrid[0:heat.shape[0], 0:heat.shape[1]]
        r = np.hypot(yy - cy, xs - cx).ravel()
        order = np.argsort(r)
        cum = np.cumsum(heat.ravel()[order])
        report.erf_radius90 = float(r[order][np.searchsorted(cum, 0.9 * total)])
