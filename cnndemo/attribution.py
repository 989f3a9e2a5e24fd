"""Which pixels drove a prediction: Captum's methods, made correct on every zoo model, and scored.

Every method runs through Captum on a per-model copy whose non-linearities are all modules,
used once (``archs.module_relu``): that is what Guided Backprop, Guided Grad-CAM and DeepLift
need to be right on torchvision's GoogLeNet, Inception-v3 and ResNet. The copy computes the
same logits, has its own lock (Captum hooks it), and leaves the model that serves predictions
free for other users.

Each map comes with the scores in ``scores.SCORES`` (sanity and deletion).

A method is one ``Method`` entry in ``METHODS``: its Captum call, the images that call pushes
through the network, the knobs it reads (``Knob``: the sliders, the API parameters, the CLI
flags and their ranges are built from them), and the models it supports.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import cancel
from . import settings as server_settings
from .errors import BadRequest, NotFound
from .cancel import ProgressFn
from .cache import memo
from .archs.module_relu import with_module_relus
from .costs import module_flops
from .pipeline import ImageLike, Input, load_for, prepare, resolve, timed
from .runtime import LoadedModel
from .scores import SANITY_SEED, SANITY_THRESHOLD, SCORES, Allowance, Deletion, Sanity, ScoreInput
from .lanes import HEAVY, Lane
from .shared import RESULTS
from .specs import ModelSpec
from .weights import WeightsInfo
from .zoo import get_spec

# Batch of perturbed inputs per forward/backward (IG steps, SmoothGrad samples, occlusion
# windows, deletion images). Measured with `python -m cnndemo bench-attribution --sweep-batch`
# (GoogLeNet, IG 32 steps, 2-core CPU): 2.17 s at 1, 1.78 s at 4, 1.66 s at 8, 1.68 s at 16,
# 2.03 s at 32. 8 is the fastest, keeps one request's activation memory small, and gives the
# progress bar a step every 8 IG steps.
INTERNAL_BATCH = 8


@dataclass(frozen=True)
class Knob:
    """A setting a method reads: its name (the ``Settings`` value, the API parameter and the CLI
    flag ``--name``), its label, its range and default, and what it does."""

    name: str
    label: str
    low: float
    high: float
    default: float
    help: str
    integer: bool = True

    def clamp(self, value) -> float:
        v = min(max(float(value), self.low), self.high)
        return int(round(v)) if self.integer else v

    def check(self, value) -> float:
        """``value`` if it is in range, else a ``BadRequest`` that gives the range."""
        if not self.low <= float(value) <= self.high:
            raise BadRequest(f"{self.name} ({self.label}) must be {self.low:g}-{self.high:g}; got {value:g}")
        return int(value) if self.integer else float(value)

    def describe(self) -> str:
        return f"{self.help} ({self.low:g}-{self.high:g}, default {self.default:g})"


def knobs() -> dict[str, Knob]:
    """Every method's knobs, in method order (a knob shared by two methods appears once)."""
    out: dict[str, Knob] = {}
    for m in METHODS.values():
        for k in m.knobs:
            out.setdefault(k.name, k)
    return out


class Settings:
    """One request's settings: a value for every method's knob (``knobs()``), the noise level of
    the noisy methods and the batch of perturbed inputs per pass. Immutable; unknown names refuse."""

    __slots__ = ("_values",)
    # Not knobs: fixed by the app (the noise level, as a fraction of the input's range).
    FIXED = {"noise": 0.15, "internal_batch": INTERNAL_BATCH}

    def __init__(self, **values):
        defaults = {**{k.name: k.default for k in knobs().values()}, **self.FIXED}
        unknown = sorted(set(values) - set(defaults))
        if unknown:
            raise BadRequest(f"unknown attribution settings {', '.join(unknown)}; known: {', '.join(defaults)}")
        object.__setattr__(self, "_values", {**defaults, **values})

    def __getattr__(self, name: str):
        try:
            return object.__getattribute__(self, "_values")[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError("Settings are immutable")

    def __eq__(self, other) -> bool:
        return isinstance(other, Settings) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._values.items())))

    def __repr__(self) -> str:
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"

    def clamp(self) -> Settings:
        """Every knob within its declared range (the sliders' and the CLI's), the batch within 1-64."""
        ks = knobs()
        v = {name: ks[name].clamp(value) if name in ks else value for name, value in self._values.items()}
        v["noise"] = float(min(max(v["noise"], 0.0), 1.0))
        v["internal_batch"] = int(min(max(v["internal_batch"], 1), 64))
        return Settings(**v)


def heat_of(attr: np.ndarray) -> np.ndarray:
    """An attribution as an H x W signed map: a pixel method's channels summed, a CAM as it is."""
    return attr if attr.ndim == 2 else attr.sum(0)


# Integrated Gradients' authors: the attributions should add up to within 5% of
# f(x) - f(baseline); beyond that, raise the number of steps (Sundararajan et al. 2017, sec. 5).
COMPLETENESS_TOLERANCE = 0.05


@dataclass(frozen=True)
class Completeness:
    """IG's completeness check for one map: the attributions' sum against the target's
    f(x) - f(baseline). Captum's convergence delta is their difference."""

    total: float  # the attributions' sum
    delta: float  # Captum's convergence delta: total - (f(x) - f(baseline))
    steps: int

    @property
    def difference(self) -> float:
        """f(x) - f(baseline) for the target (the model's logit)."""
        return self.total - self.delta

    @property
    def relative_error(self) -> float | None:
        """|delta| / |f(x) - f(baseline)|; None when that difference is about zero (the output
        does not depend on the input, and no relative error means anything)."""
        scale = abs(self.difference)
        return None if scale <= 1e-6 * max(1.0, abs(self.total)) else abs(self.delta) / scale

    @property
    def within(self) -> bool | None:
        rel = self.relative_error
        return None if rel is None else rel <= COMPLETENESS_TOLERANCE

    def sentence(self) -> str:
        rel = self.relative_error
        head = (f"Completeness: the attributions add up to {self.total:+.4g}; f(x) − f(baseline) = "
                f"{self.difference:+.4g}")
        if rel is None:
            return head + " (about 0: the output does not depend on the input, so no error can be stated)."
        if rel <= COMPLETENESS_TOLERANCE:
            return head + f", off by {rel:.1%} with {self.steps} steps (within {COMPLETENESS_TOLERANCE:.0%})."
        return (head + f": ⚠ off by {rel:.1%} with {self.steps} steps, over the {COMPLETENESS_TOLERANCE:.0%} "
                       "the method's authors allow. Raise Steps.")

    def to_json(self) -> dict:
        rel = self.relative_error
        return {"sum": self.total, "difference": self.difference, "delta": self.delta, "steps": self.steps,
                "relative_error": None if rel is None else round(rel, 6), "tolerance": COMPLETENESS_TOLERANCE,
                "within": self.within}


@dataclass(frozen=True, eq=False)
class Attribution:
    model: str
    method: str
    target: int
    label: str
    prob: float
    layer: str | None
    attr: np.ndarray  # C x H x W for pixel methods, H x W for CAMs (at input resolution)
    ms: float
    weights: WeightsInfo
    seen: object  # PIL image the network saw
    settings: Settings
    scores: dict = field(default_factory=dict)  # by ``scores.SCORES`` key: Sanity, Deletion, ...
    completeness: Completeness | None = None  # Integrated Gradients only

    @property
    def sanity(self) -> Sanity | None:
        return self.scores.get("sanity")

    @property
    def deletion(self) -> Deletion | None:
        return self.scores.get("deletion")

    @property
    def heat(self) -> np.ndarray:
        """H x W signed map (channels summed) for display and scoring."""
        return heat_of(self.attr)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "method": self.method,
            "target": self.target,
            "label": self.label,
            "prob": round(self.prob, 6),
            "layer": self.layer,
            "weights": self.weights.kind,
            "ms": round(self.ms, 1),
            **{key: self.scores[key].to_json() if key in self.scores else None for key in SCORES},
            "completeness": self.completeness.to_json() if self.completeness else None,
        }


def score_sentences(a, bold=str) -> list[str]:
    """The sanity and deletion scores as sentences (those computed), and IG's completeness;
    ``bold`` marks the deletion score (Markdown on the page, nothing on a slide)."""
    lines = []
    if a.sanity:
        mark = "⚠ " if a.sanity.passed is False else ""
        lines.append(f"Sanity: rank correlation {a.sanity.summary()} → {mark}{a.sanity.verdict} "
                     f"(pass within ±{SANITY_THRESHOLD}: this app's threshold; the paper defines none).")
    if a.deletion:
        d = a.deletion
        score = "undefined" if d.score is None else bold(f"{d.score:+.3f}")
        lines.append(f"Deletion: AUC {d.auc:.4f} against {d.orders} random orders (mean {d.random_auc:.4f}, "
                     f"range {min(d.random_aucs):.4f} to {max(d.random_aucs):.4f}), score {score}: {d.verdict}.")
    if a.completeness:
        lines.append(a.completeness.sentence())
    return lines


# ----------------------------------------------------------------------------- model copies

def attribution_model(lm: LoadedModel) -> nn.Module:
    """The model with every non-linearity a module used once; same logits, its own parameters."""
    return lm.variant("module_relu", with_module_relus)


def randomized_model(lm: LoadedModel, seed: int = SANITY_SEED) -> nn.Module:
    """The attribution copy with the spec's top layers re-initialised from ``seed``.

    One copy serves every seed: it is re-initialised in place on each call, so call it under
    ``lm.attr_lock`` and finish with the copy before asking for another seed.
    """

    def reinit(model: nn.Module) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for path in lm.spec.top_layers:
                for m in model.get_submodule(path).modules():
                    if hasattr(m, "reset_parameters"):
                        m.reset_parameters()
                    if hasattr(m, "reset_running_stats"):
                        m.reset_running_stats()
        return model

    return reinit(lm.variant("randomized_top", with_module_relus))


# ----------------------------------------------------------------------------- targets, layers


MAX_TARGET_CHARS = 200  # the longest ImageNet class name has 121


@memo(64, name="lowered labels")
def _lowered(key: str) -> tuple[str, ...]:
    return tuple(label.lower() for label in get_spec(key).labels())


def resolve_target(spec: ModelSpec, target: int | str | None, logits: torch.Tensor) -> int:
    """None -> the top prediction; an index; or a class name (exact, else unique substring)."""
    labels = spec.labels()
    if target is None or (isinstance(target, str) and not target.strip()):
        return int(logits.argmax(1)[0])
    if isinstance(target, (int, np.integer)) or (isinstance(target, str) and target.strip().isdigit()):
        idx = int(target)
        if not 0 <= idx < len(labels):
            raise BadRequest(f"target index {idx} is out of range 0-{len(labels) - 1}")
        return idx
    name = str(target).strip()
    if len(name) > MAX_TARGET_CHARS:
        raise BadRequest(f"a target class is a name or an index of at most {MAX_TARGET_CHARS} characters "
                         f"(got {len(name):,})")
    if name.endswith(")") and "(" in name:  # "golden retriever (207)" as shown in the UI
        inner = name[name.rindex("(") + 1 : -1]
        if inner.isdigit():
            return resolve_target(spec, int(inner), logits)
    lowered = _lowered(spec.key)
    if name.lower() in lowered:
        return lowered.index(name.lower())
    hits = [i for i, label in enumerate(lowered) if name.lower() in label]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise BadRequest(f"no class named like {name!r}")
    shown = ", ".join(f"{labels[i]} ({i})" for i in hits[:5])
    raise BadRequest(f"{name!r} matches {len(hits)} classes, e.g. {shown}: be more specific")


def layer_choices(spec: ModelSpec) -> list[str]:
    """Grad-CAM layers: the default, every block, and every branch that has modules of its own."""
    out = [spec.gradcam_layer]
    for b in spec.blocks:
        if b.name not in out:
            out.append(b.name)
        if b.merge == "single":
            continue
        out += [f"{b.name}/{br.name}" for br in b.branches if br.tap_paths]
    return out


def resolve_layer(spec: ModelSpec, model: nn.Module, layer: str | None) -> tuple[str, tuple[str, ...]]:
    """A layer name -> (display name, module paths whose outputs are summed by Grad-CAM)."""
    name = layer or spec.gradcam_layer
    if "/" in name:
        block_name, branch_name = name.split("/", 1)
        block = spec.block(block_name)
        branch = next((br for br in block.branches if br.name == branch_name), None)
        if branch is None:
            raise NotFound(f"{block_name} has no branch {branch_name!r}")
        if not branch.tap_paths:
            raise BadRequest(
                f"{name} has no module of its own (it is computed functionally from the block input), "
                "so Grad-CAM has nothing to hook: choose the whole block or another branch"
            )
        return name, branch.tap_paths
    block = next((b for b in spec.blocks if b.name == name), None)
    path = block.path if block else name
    try:
        model.get_submodule(path)
    except AttributeError:
        raise NotFound(f"{spec.name} has no layer {name!r}; try one of: {', '.join(layer_choices(spec)[:8])} ...") from None
    return name, (path,)


# ----------------------------------------------------------------------------- running Captum


def _baseline(spec: ModelSpec, x: torch.Tensor) -> torch.Tensor:
    """Photos: the mean colour (0 after normalisation). Digits: a black canvas."""
    if spec.inputs.kind == "digit":
        mean = torch.tensor(spec.inputs.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(spec.inputs.std, device=x.device).view(1, -1, 1, 1)
        return ((0.0 - mean) / std).expand_as(x).contiguous()
    return torch.zeros_like(x)


def _check_grad(grad):
    cancel.check()  # returns None: the gradient is left as it is


def _check_forward(_module, _inputs, output):
    cancel.check()
    if isinstance(output, torch.Tensor) and output.requires_grad:
        output.register_hook(_check_grad)  # checked again when the backward pass gets here


class _ForwardCounter:
    """Counts forward passes of a module to report progress, and stops a cancelled request
    within a fraction of a pass: the model's forward pass (every Captum method runs its
    batches through it) and each of its top-level stages check, on the way forward and on the
    way back (a pass over a batch of 16 GoogLeNet inputs takes seconds on 2 cores)."""

    def __init__(self, model: nn.Module, expected: int, label: str, progress: ProgressFn | None):
        self.model, self.expected, self.label, self.progress = model, max(1, expected), label, progress
        self.calls = 0
        self.handles: list = []

    def __enter__(self):
        cancel.check()
        self.handles = [self.model.register_forward_pre_hook(self._tick),
                        *(child.register_forward_hook(_check_forward) for child in self.model.children())]
        return self

    def _tick(self, _m, _inputs):
        cancel.check()
        self.calls += 1
        if self.progress:
            self.progress(min(self.calls / self.expected, 0.99), f"{self.label}: pass {self.calls} of ~{self.expected}")

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def occlusion_window(s: Settings, x: torch.Tensor) -> tuple[int, int]:
    """The window and stride actually used: scaled down for small inputs such as 28 x 28 digits."""
    win = max(2, min(s.window, min(x.shape[-2:]) // 4))
    if win < s.window:  # scaled down: keep the windows overlapping by half
        return win, max(1, win // 2)
    return win, min(s.stride, win)


def images_per_call(method: str, s: Settings, x: torch.Tensor) -> tuple[int, int]:
    """(images through forward only, images through forward and backward) of one method call."""
    return get_method(method).passes(s, x)


def _expected_passes(method: str, s: Settings, x: torch.Tensor) -> int:
    fwd, grad = images_per_call(method, s, x)
    return max(1, math.ceil(fwd / s.internal_batch) + math.ceil(grad / s.internal_batch))


def estimated_tflop(spec: ModelSpec, method: str, s: Settings, x: torch.Tensor, *, scores: bool) -> float:
    """Arithmetic one attribution request asks for: a backward pass counts twice a forward.

    With scores: each score's minimum (``Score.images``: one re-initialised run of the method for
    the sanity check, the map's curve and one random order for the deletion score); the scores
    add more only within what the budget leaves (``_allowance``).
    """
    return _tflop_per_image(spec, x) * _request_images(method, s, x, scores=scores)


def _tflop_per_image(spec: ModelSpec, x: torch.Tensor) -> float:
    scale = (x.shape[-2] * x.shape[-1]) / (spec.input_size[1] * spec.input_size[2])
    return module_flops(spec.key)[0] * scale / 1e12


def _request_images(method: str, s: Settings, x: torch.Tensor, *, scores: bool) -> int:
    """Images through the network (a backward pass counts twice a forward) of one request, with
    each score's minimum when ``scores``."""
    fwd, grad = images_per_call(method, s, x)
    images = 1 + fwd + 3 * grad
    if scores:
        images += sum(sc.images(fwd, grad) for sc in SCORES.values())
    return images


def request_tflop(spec: ModelSpec, method: str, settings: Settings | None = None, *, scores: bool = True) -> float:
    """The estimated arithmetic of one attribution at the model's own input size."""
    return estimated_tflop(spec, method, (settings or Settings()).clamp(), spec.meta_input(), scores=scores)


def _allowance(spec: ModelSpec, method: str, s: Settings, x: torch.Tensor) -> Allowance:
    """What the scores may spend beyond the request's estimate (which counts one draw of each):
    what the work budget leaves, of which at most ``score_extra_tflop`` past their minimum."""
    per_image = _tflop_per_image(spec, x)
    spare = cancel.work_budget_tflop() - estimated_tflop(spec, method, s, x, scores=True)
    return Allowance(max(0, math.floor(spare / per_image)),
                     max(0, math.floor(server_settings.get().score_extra_tflop / per_image)))


def check_budget(spec: ModelSpec, method: str, settings: Settings | None = None, *, scores: bool = True) -> None:
    """Refuse up front (``cancel.OverBudget``) settings whose estimated cost is over the budget."""
    what = f"{get_method(method).name} on {spec.name}" + (" with its sanity and deletion scores" if scores else "")
    cancel.check_budget(request_tflop(spec, method, settings, scores=scores), what)


def _quiet_captum() -> None:
    """Captum announces every hook it sets; those notices are expected here, so hide them.
    (``warnings.filterwarnings`` puts each filter once: calling it again changes nothing.)"""
    for msg in ("Input Tensor .* did not already require gradients", "Setting .*hooks", "Setting forward, backward hooks"):
        warnings.filterwarnings("ignore", message=msg, category=UserWarning)


# ----------------------------------------------------------------------------- methods


def ca():
    """Captum's ``captum.attr``, imported on first use (it is slow to import)."""
    from captum import attr

    return attr


@dataclass(frozen=True)
class Call:
    """What one Captum call gets: the model (the attribution copy), the input (requiring
    gradients), the target class, the baseline, the noise level and the Grad-CAM layer."""

    model: nn.Module
    x: torch.Tensor
    target: int
    base: torch.Tensor
    sigma: float
    layer_paths: tuple[str, ...]
    settings: Settings
    notes: dict = field(default_factory=dict)  # what a method reports besides its map (IG: "delta")


def _one_backward(s: Settings, x: torch.Tensor) -> tuple[int, int]:
    return 0, 1


@dataclass(frozen=True)
class Method:
    """One attribution method: its labels, its Captum call, and how many images that call
    pushes through the network (progress and the work budget read it)."""

    key: str
    name: str
    kind: str  # "pixel": C x H x W; "cam": H x W from a layer
    uses_layer: bool
    explain: str
    run: Callable[[Call], torch.Tensor]
    passes: Callable[[Settings, torch.Tensor], tuple[int, int]] = _one_backward  # (forward only, forward + backward)
    noisy: bool = False  # reads Settings.noise (as a fraction of the input's range)
    knobs: tuple[Knob, ...] = ()  # the settings it reads: sliders, API parameters and CLI flags come from them
    # Why it cannot explain a model (None: it can). Run before any work, shown as the refusal.
    supports: Callable[[ModelSpec], str | None] = lambda spec: None


def _ig(c: Call) -> torch.Tensor:
    attr, delta = ca().IntegratedGradients(c.model).attribute(
        c.x, baselines=c.base, target=c.target, n_steps=c.settings.steps, internal_batch_size=c.settings.internal_batch,
        return_convergence_delta=True,
    )
    c.notes["delta"] = float(delta.detach().reshape(-1)[0])
    return attr


def _saliency(c: Call) -> torch.Tensor:
    return ca().Saliency(c.model).attribute(c.x, target=c.target, abs=True)


def _smoothgrad(c: Call) -> torch.Tensor:
    s = c.settings
    return ca().NoiseTunnel(ca().Saliency(c.model)).attribute(
        c.x, nt_type="smoothgrad", nt_samples=s.samples, nt_samples_batch_size=s.internal_batch,
        stdevs=c.sigma, target=c.target,
    )


def _gradcam(c: Call) -> torch.Tensor:
    cams = [
        ca().LayerGradCam(c.model, c.model.get_submodule(p)).attribute(c.x, target=c.target, relu_attributions=False)
        for p in c.layer_paths
    ]
    # A split branch (Inception-v3's E blocks) is two modules concatenated: sum their
    # weighted activations before the ReLU, as Grad-CAM on the concatenation would.
    cam = F.relu(torch.stack([m.sum(1, keepdim=True) for m in cams]).sum(0))
    return ca().LayerAttribution.interpolate(cam, tuple(c.x.shape[-2:]), "bilinear")[:, 0]


def _guided_gradcam(c: Call) -> torch.Tensor:
    if len(c.layer_paths) != 1:
        raise BadRequest("Guided Grad-CAM needs a single layer; choose the block, or a branch with one output")
    return ca().GuidedGradCam(c.model, c.model.get_submodule(c.layer_paths[0])).attribute(
        c.x, target=c.target, interpolate_mode="bilinear"
    )


def _occlusion(c: Call) -> torch.Tensor:
    ch = c.x.shape[1]
    win, stride = occlusion_window(c.settings, c.x)
    return ca().Occlusion(c.model).attribute(
        c.x, sliding_window_shapes=(ch, win, win), strides=(ch, stride, stride),
        baselines=c.base, target=c.target, perturbations_per_eval=c.settings.internal_batch,
    )


def _occlusion_passes(s: Settings, x: torch.Tensor) -> tuple[int, int]:
    h, w = x.shape[-2:]
    win, stride = occlusion_window(s, x)
    return 1 + ((h - win) // stride + 1) * ((w - win) // stride + 1), 0


def _gradient_shap(c: Call) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(0)
    noisy = c.base + 0.3 * torch.randn(4, *c.x.shape[1:], generator=gen).to(c.x.device)
    return ca().GradientShap(c.model).attribute(
        c.x, baselines=torch.cat([c.base, noisy]), n_samples=c.settings.samples, stdevs=c.sigma, target=c.target,
    )


STEPS = Knob("steps", "Integrated Gradients steps", 4, 128, 16, "Integrated Gradients steps")
SAMPLES = Knob("samples", "SmoothGrad / GradientSHAP samples", 1, 32, 8, "SmoothGrad / GradientSHAP samples")
WINDOW = Knob("window", "Occlusion window (px)", 4, 96, 32, "occlusion window in pixels")
STRIDE = Knob("stride", "Occlusion stride (px)", 2, 64, 24, "occlusion stride in pixels")


def _relu_modules_only(method: str, allowed: tuple[type, ...] = (nn.ReLU,)) -> Callable[[ModelSpec], str | None]:
    """A ``supports`` for methods that change the backward pass of ReLU modules only (Guided
    Backprop, Guided Grad-CAM): any other activation module would pass its gradients unguided,
    and the map would silently be a plain gradient there. ``with_module_relus`` makes the
    functional ReLUs of torchvision's models modules; other activations cannot be converted."""

    def supports(spec: ModelSpec) -> str | None:
        others = sorted({type(m).__name__ for m in spec.build_meta().modules()
                         if isinstance(m, ACTIVATIONS) and not isinstance(m, allowed)})
        if not others:
            return None
        return (f"{method} changes the gradient of ReLU modules only, and {spec.name} also uses "
                f"{', '.join(others)}: those would pass their gradients unguided. Use another method")

    return supports


# Activation modules a network may use: anything here but nn.ReLU refuses the guided methods.
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU,
               nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Softplus, nn.Sigmoid, nn.Tanh)


METHODS: dict[str, Method] = {
    m.key: m
    for m in (
        Method("ig", "Integrated Gradients", "pixel", False,
               "gradients averaged along a straight path from a baseline image to the input",
               # Its convergence delta runs f(x) and f(baseline) besides the path's gradients.
               _ig, lambda s, x: (2, s.steps), knobs=(STEPS,)),
        Method("saliency", "Saliency", "pixel", False,
               "absolute gradient of the class score with respect to each pixel", _saliency),
        Method("smoothgrad", "SmoothGrad", "pixel", False,
               "saliency averaged over noisy copies of the input (NoiseTunnel)",
               _smoothgrad, lambda s, x: (0, s.samples), noisy=True, knobs=(SAMPLES,)),
        Method("gradcam", "Grad-CAM", "cam", True,
               "a layer's activations weighted by their mean gradient, upsampled to the image", _gradcam),
        Method("guided_gradcam", "Guided Grad-CAM", "pixel", True,
               "Grad-CAM times Guided Backprop: where, and which edges", _guided_gradcam, lambda s, x: (0, 2),
               supports=_relu_modules_only("Guided Grad-CAM")),
        Method("occlusion", "Occlusion", "pixel", False,
               "how much the class score drops when a window of the image is hidden", _occlusion, _occlusion_passes,
               knobs=(WINDOW, STRIDE)),
        Method("guided_backprop", "Guided Backprop", "pixel", False,
               "gradients with negative signals stopped at every ReLU on the way back",
               lambda c: ca().GuidedBackprop(c.model).attribute(c.x, target=c.target),
               supports=_relu_modules_only("Guided Backprop")),
        Method("deeplift", "DeepLift", "pixel", False,
               "differences from a baseline propagated with DeepLift's rescale rules",
               lambda c: ca().DeepLift(c.model).attribute(c.x, baselines=c.base, target=c.target),
               lambda s, x: (0, 2)),
        Method("gradient_shap", "GradientSHAP", "pixel", False,
               "expected gradients x (input - baseline) over noisy baselines (SHAP approximation)",
               _gradient_shap, lambda s, x: (0, s.samples), noisy=True, knobs=(SAMPLES,)),
    )
}


def get_method(key: str) -> Method:
    """The method called ``key``, or a KeyError that lists them all."""
    try:
        return METHODS[key]
    except KeyError:
        raise NotFound(f"unknown method {key!r}; choose one of: {', '.join(METHODS)}") from None


def supported(method: Method, spec: ModelSpec) -> str | None:
    """Why ``method`` cannot explain ``spec`` (None: it can); asked once per pair."""
    return _supported(method.key, spec.key)


@memo(256, name="method support")
def _supported(method: str, model: str) -> str | None:
    return get_method(method).supports(get_spec(model))


def run_method(
    model: nn.Module,
    spec: ModelSpec,
    method_key: str,
    x: torch.Tensor,
    target: int,
    *,
    layer_paths: tuple[str, ...] = (),
    settings: Settings = Settings(),
    notes: dict | None = None,
) -> np.ndarray:
    """One Captum call on ``model`` (hold its lock). Returns C x H x W, or H x W for Grad-CAM.
    ``notes``: filled with what the method reports besides the map (IG: its convergence delta)."""
    m = get_method(method_key)
    _quiet_captum()
    s = settings
    # The noise level, for the noisy methods only: reading it waits for the device.
    sigma = s.noise * float(x.max() - x.min()) if m.noisy else 0.0
    call = Call(model, x.detach().clone().requires_grad_(), target, _baseline(spec, x), sigma, layer_paths, s,
                {} if notes is None else notes)
    return m.run(call).detach()[0].float().cpu().numpy()


def request_key(image: ImageLike, model: LoadedModel, method: str, *, target: int | str | None = None,
                layer: str | None = None, settings: Settings | None = None) -> tuple:
    """What an attribution request computes, as a key for ``shared.RESULTS``: the model and
    its weights, the pixels (of the image as opened, before the model's preprocessing), the
    method, its settings (clamped, as they run), the target and the layer. Nothing about who
    asked or how their file was named."""
    wanted = None if target is None or not str(target).strip() else str(target).strip()
    uses_layer = get_method(method).uses_layer
    return ("attribution", model.ident, load_for(model.spec, image).digest, method, wanted,
            layer if uses_layer else None, (settings or Settings()).clamp())


def attribute_shared(image: ImageLike, model: LoadedModel, method: str, *, target: int | str | None = None,
                     layer: str | None = None, settings: Settings | None = None, scores: bool = False,
                     progress: ProgressFn | None = None, lane: Lane | None = HEAVY) -> Attribution:
    """``attribute`` computed once for identical requests (``shared.RESULTS``): a request that
    arrives while the same one runs waits for its result; a finished one is reused. With
    ``scores``, the map and its scores are two shared steps (a map already computed is not
    computed again for its scores). The computation holds a worker of ``lane`` (None: the
    tiny maps of the digit networks, computed in the light lane)."""
    opened = load_for(model.spec, image)
    key = request_key(opened, model, method, target=target, layer=layer, settings=settings)
    if scores and (done := RESULTS.peek((*key, "scored"))) is not None:
        return done
    def prepared() -> Input:  # the model's preprocessing runs only when something is computed
        return prepare(image, model, opened=opened)

    a = RESULTS.get(key, lambda p: attribute(prepared(), model, method, target=target, layer=layer, settings=settings,
                                             scores=False, progress=p), progress=progress, lane=lane)
    if scores:
        a = RESULTS.get((*key, "scored"), lambda p: add_scores(a, prepared(), model, progress=p), progress=progress,
                        lane=lane)
    return a


def attribute(
    image: ImageLike,
    model: LoadedModel | str,
    method: str,
    *,
    target: int | str | None = None,
    layer: str | None = None,
    settings: Settings | None = None,
    scores: bool = True,
    progress: ProgressFn | None = None,
    seed: int = SANITY_SEED,
) -> Attribution:
    """An attribution map for one image, model, method and target, with its two scores
    (``seed``: their first re-initialisation's and random order's)."""
    meta = get_method(method)
    lm = resolve(model)
    spec = lm.spec
    refusal = supported(meta, spec)
    if refusal:
        raise BadRequest(refusal)
    s = (settings or Settings()).clamp()
    check_budget(spec, method, s, scores=scores)
    inp = prepare(image, lm)
    x = inp.x
    with cancel.holding(lm.attr_lock):
        m = attribution_model(lm)
        layer_name, paths = resolve_layer(spec, m, layer) if meta.uses_layer else (None, ())
        with torch.no_grad():
            probs = torch.softmax(m(x).float(), 1).cpu()  # one copy to the host: target and probability
        idx = resolve_target(spec, target, probs)
        prob = float(probs[0, idx])
        notes: dict = {}
        with timed(lm.device) as t, _ForwardCounter(m, _expected_passes(method, s, x), meta.name, progress):
            attr = run_method(m, spec, method, x, idx, layer_paths=paths, settings=s, notes=notes)
        check = (Completeness(float(attr.astype(np.float64).sum()), notes["delta"], s.steps)
                 if "delta" in notes else None)
        result = Attribution(
            lm.key, method, idx, spec.labels()[idx], prob, layer_name, attr, t.ms, lm.weights, inp.seen(), s,
            completeness=check,
        )
    return add_scores(result, inp, lm, progress=progress, seed=seed) if scores else result


def add_scores(
    a: Attribution,
    image: ImageLike,
    model: LoadedModel | str,
    *,
    progress: ProgressFn | None = None,
    seed: int = SANITY_SEED,
) -> Attribution:
    """``a`` with every score in ``scores.SCORES`` (sanity: runs of the method on copies with
    re-initialised top layers; deletion: the map's curve against random orders).

    ``seed``: the first re-initialisation's and random order's seed (the others follow it).

    ``image``: the image ``a`` was computed on; pass the ``pipeline.Input`` to skip decoding it again.
    """
    lm = resolve(model)
    check_budget(lm.spec, a.method, a.settings, scores=True)
    inp = prepare(image, lm)
    x = inp.x
    m_paths = ()
    with cancel.holding(lm.attr_lock):
        m = attribution_model(lm)
        if get_method(a.method).uses_layer:
            _, m_paths = resolve_layer(lm.spec, m, a.layer)

        def rerun(other: nn.Module) -> np.ndarray:
            with _ForwardCounter(other, _expected_passes(a.method, a.settings, x), "sanity check", None):
                return heat_of(run_method(other, lm.spec, a.method, x, a.target, layer_paths=m_paths,
                                          settings=a.settings))

        fwd, grad = images_per_call(a.method, a.settings, x)
        given = ScoreInput(m, x, a.target, a.heat, _baseline(lm.spec, x), a.settings.internal_batch, rerun,
                           lambda s: randomized_model(lm, s), lm.spec.top_layers, lm.weights.trained,
                           rerun_images=fwd + 3 * grad, allowance=_allowance(lm.spec, a.method, a.settings, x),
                           seed=seed, cache_key=(lm.ident, inp.opened.digest, tuple(x.shape)))
        results = {}
        for key, score in SCORES.items():
            if progress:
                progress(None, score.progress)
            results[key] = score.run(given)
    return replace(a, scores=results)
