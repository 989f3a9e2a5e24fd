"""Which pixels drove a prediction: Captum's methods, made correct on every zoo model, and scored.

Every method runs through Captum on a per-model copy whose non-linearities are all modules,
used once (``archs.module_relu``): that is what Guided Backprop, Guided Grad-CAM and DeepLift
need to be right on torchvision's GoogLeNet, Inception-v3 and ResNet. The copy computes the
same logits, has its own lock (Captum hooks it), and leaves the model that serves predictions
free for other users.

Each map comes with two scores:

- sanity (Adebayo et al. 2018): the Spearman rank correlation between the map and the same
  method's map on a copy whose top layers are re-initialised. A map that barely changes does
  not depend on what the network learned, and is flagged.
- deletion: the target probability as the most-attributed pixels are replaced by the baseline
  first, against a random order; the score is the area between the two curves (Captum ships
  no deletion metric, so this one is computed here, in one batched pass per curve).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import cancel
from .archs.module_relu import with_module_relus
from .costs import module_flops
from .pipeline import ImageLike, prepare, resolve, timed
from .runtime import LoadedModel
from .specs import ModelSpec
from .weights import WeightsInfo
from .zoo import get_spec

ProgressFn = Callable[[float | None, str], None]

# Batch of perturbed inputs per forward/backward (IG steps, SmoothGrad samples, occlusion
# windows, deletion images). Measured with `python -m cnndemo bench-attribution --sweep-batch`
# (GoogLeNet, IG 32 steps, 2-core CPU): 2.17 s at 1, 1.78 s at 4, 1.66 s at 8, 1.68 s at 16,
# 2.03 s at 32. 8 is the fastest, keeps one request's activation memory small, and gives the
# progress bar a step every 8 IG steps.
INTERNAL_BATCH = 8
SANITY_THRESHOLD = 0.5
SANITY_THRESHOLD_SOURCE = ("this app's choice: Adebayo et al. (2018) compare the maps visually and by rank "
                           "correlation, and define no pass mark")


@dataclass(frozen=True)
class Settings:
    """The quality knobs, with defaults that finish in seconds on a 2-core CPU."""

    steps: int = 16  # Integrated Gradients
    samples: int = 8  # SmoothGrad, GradientSHAP
    noise: float = 0.15  # SmoothGrad / GradientSHAP noise, as a fraction of the input range
    window: int = 32  # Occlusion window (pixels; at most a quarter of the input side)
    stride: int = 24  # Occlusion stride (pixels; at most half the window)
    internal_batch: int = INTERNAL_BATCH

    def clamp(self) -> Settings:
        return Settings(
            steps=int(min(max(self.steps, 2), 256)),
            samples=int(min(max(self.samples, 1), 64)),
            noise=float(min(max(self.noise, 0.0), 1.0)),
            window=int(min(max(self.window, 2), 128)),
            stride=int(min(max(self.stride, 1), 128)),
            internal_batch=int(min(max(self.internal_batch, 1), 64)),
        )


@dataclass(frozen=True)
class Sanity:
    """Spearman rank correlation (tie-aware) of |map| with the re-initialised model's |map|.

    ``rank_correlation`` and ``passed`` are None when undefined: a constant map (all zeros,
    say) has no ranking to compare. ``untrained``: the network itself has random weights, so
    both maps describe noise and the verdict says nothing about the method.
    """

    rank_correlation: float | None
    passed: bool | None
    randomized: tuple[str, ...]
    untrained: bool = False

    @property
    def verdict(self) -> str:
        if self.rank_correlation is None:
            return "undefined: one of the two maps is constant, so it ranks no pixel above another"
        v = "passes" if self.passed else "fails: the map barely changes when the top layers are re-initialised"
        if self.untrained:
            v += " (but the network is untrained: both maps describe noise)"
        return v

    def to_json(self) -> dict:
        rho = None if self.rank_correlation is None else round(self.rank_correlation, 4)
        return {"rank_correlation": rho, "passed": self.passed, "verdict": self.verdict,
                "threshold": SANITY_THRESHOLD, "threshold_source": SANITY_THRESHOLD_SOURCE,
                "untrained_network": self.untrained, "randomized_layers": list(self.randomized)}


@dataclass(frozen=True)
class Deletion:
    fractions: tuple[float, ...]
    probs: tuple[float, ...]
    random_probs: tuple[float, ...]
    auc: float
    random_auc: float
    flat: bool = False  # the map is constant: it orders no pixel before another
    untrained: bool = False

    @property
    def score(self) -> float | None:
        """(random AUC - attribution AUC) / initial probability: > 0 means the map found pixels
        that matter more than random ones. None (undefined) for a constant map, or when the
        class had no probability to lose."""
        p0 = self.probs[0]
        if self.flat or p0 <= 0:
            return None
        return (self.random_auc - self.auc) / p0

    @property
    def verdict(self) -> str:
        if self.flat:
            return "undefined: the map is constant, so it ranks no pixel above another"
        if self.score is None:
            return "undefined: the class starts at probability 0"
        v = "the map's pixels matter more than random ones" if self.score > 0 else "no better than random pixels"
        if self.untrained:
            v += " (but the network is untrained: the curve describes noise)"
        return v

    def to_json(self) -> dict:
        score = None if self.score is None else round(self.score, 4)
        return {"auc": round(self.auc, 6), "random_auc": round(self.random_auc, 6), "score": score,
                "verdict": self.verdict, "untrained_network": self.untrained}


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
    sanity: Sanity | None = None
    deletion: Deletion | None = None

    @property
    def heat(self) -> np.ndarray:
        """H x W signed map (channels summed) for display and scoring."""
        return self.attr if self.attr.ndim == 2 else self.attr.sum(0)

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
            "sanity": self.sanity.to_json() if self.sanity else None,
            "deletion": self.deletion.to_json() if self.deletion else None,
        }


# ----------------------------------------------------------------------------- model copies

def attribution_model(lm: LoadedModel) -> nn.Module:
    """The model with every non-linearity a module used once; same logits, its own parameters."""
    return lm.variant("module_relu", with_module_relus)


def randomized_model(lm: LoadedModel) -> nn.Module:
    """The attribution copy with the spec's top layers re-initialised (fixed seed)."""

    def make(model: nn.Module) -> nn.Module:
        model = with_module_relus(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)
            for path in lm.spec.top_layers:
                for m in model.get_submodule(path).modules():
                    if hasattr(m, "reset_parameters"):
                        m.reset_parameters()
                    if hasattr(m, "reset_running_stats"):
                        m.reset_running_stats()
        return model

    return lm.variant("randomized_top", make)


# ----------------------------------------------------------------------------- targets, layers


MAX_TARGET_CHARS = 200  # the longest ImageNet class name has 121


@functools.lru_cache(maxsize=None)
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
            raise ValueError(f"target index {idx} is out of range 0-{len(labels) - 1}")
        return idx
    name = str(target).strip()
    if len(name) > MAX_TARGET_CHARS:
        raise ValueError(f"a target class is a name or an index of at most {MAX_TARGET_CHARS} characters "
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
        raise ValueError(f"no class named like {name!r}")
    shown = ", ".join(f"{labels[i]} ({i})" for i in hits[:5])
    raise ValueError(f"{name!r} matches {len(hits)} classes, e.g. {shown}: be more specific")


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
            raise KeyError(f"{block_name} has no branch {branch_name!r}")
        if not branch.tap_paths:
            raise ValueError(
                f"{name} has no module of its own (it is computed functionally from the block input), "
                "so Grad-CAM has nothing to hook: choose the whole block or another branch"
            )
        return name, branch.tap_paths
    block = next((b for b in spec.blocks if b.name == name), None)
    path = block.path if block else name
    try:
        model.get_submodule(path)
    except AttributeError:
        raise KeyError(f"{spec.name} has no layer {name!r}; try one of: {', '.join(layer_choices(spec)[:8])} ...") from None
    return name, (path,)


# ----------------------------------------------------------------------------- running Captum


def _baseline(spec: ModelSpec, x: torch.Tensor) -> torch.Tensor:
    """Photos: the mean colour (0 after normalisation). Digits: a black canvas."""
    if spec.inputs.kind == "digit":
        mean = torch.tensor(spec.inputs.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(spec.inputs.std, device=x.device).view(1, -1, 1, 1)
        return ((0.0 - mean) / std).expand_as(x).contiguous()
    return torch.zeros_like(x)


class _ForwardCounter:
    """Counts forward passes of a module to report progress, and stops a cancelled request
    between two batches (every Captum method runs its batches through ``forward``)."""

    def __init__(self, model: nn.Module, expected: int, label: str, progress: ProgressFn | None):
        self.model, self.expected, self.label, self.progress = model, max(1, expected), label, progress
        self.calls = 0
        self.handle = None

    def __enter__(self):
        cancel.check()
        self.handle = self.model.register_forward_pre_hook(self._tick)
        return self

    def _tick(self, _m, _inputs):
        cancel.check()
        self.calls += 1
        if self.progress:
            self.progress(min(self.calls / self.expected, 0.99), f"{self.label}: pass {self.calls} of ~{self.expected}")

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.remove()


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


DELETION_STEPS = 10


def estimated_tflop(spec: ModelSpec, method: str, s: Settings, x: torch.Tensor, *, scores: bool) -> float:
    """Arithmetic one attribution request asks for: a backward pass counts twice a forward.

    With scores: the method runs again on the re-initialised copy (sanity), and two deletion
    curves of ``DELETION_STEPS + 1`` images each are evaluated.
    """
    fwd, grad = images_per_call(method, s, x)
    images = 1 + fwd + 3 * grad
    if scores:
        images += fwd + 3 * grad + 2 * (DELETION_STEPS + 1)
    scale = (x.shape[-2] * x.shape[-1]) / (spec.input_size[1] * spec.input_size[2])
    return module_flops(spec.key)[0] * scale * images / 1e12


def request_tflop(spec: ModelSpec, method: str, settings: Settings | None = None, *, scores: bool = True) -> float:
    """The estimated arithmetic of one attribution at the model's own input size."""
    return estimated_tflop(spec, method, (settings or Settings()).clamp(), spec.meta_input(), scores=scores)


def check_budget(spec: ModelSpec, method: str, settings: Settings | None = None, *, scores: bool = True) -> None:
    """Refuse up front (``cancel.OverBudget``) settings whose estimated cost is over the budget."""
    what = f"{get_method(method).name} on {spec.name}" + (" with its sanity and deletion scores" if scores else "")
    cancel.check_budget(request_tflop(spec, method, settings, scores=scores), what)


_QUIET = []


def _quiet_captum() -> None:
    """Captum announces every hook it sets; those notices are expected here, so hide them once."""
    if not _QUIET:
        import warnings

        for msg in ("Input Tensor .* did not already require gradients", "Setting .*hooks", "Setting forward, backward hooks"):
            warnings.filterwarnings("ignore", message=msg, category=UserWarning)
        _QUIET.append(True)


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


def _ig(c: Call) -> torch.Tensor:
    return ca().IntegratedGradients(c.model).attribute(
        c.x, baselines=c.base, target=c.target, n_steps=c.settings.steps, internal_batch_size=c.settings.internal_batch
    )


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
        raise ValueError("Guided Grad-CAM needs a single layer; choose the block, or a branch with one output")
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


METHODS: dict[str, Method] = {
    m.key: m
    for m in (
        Method("ig", "Integrated Gradients", "pixel", False,
               "gradients averaged along a straight path from a baseline image to the input",
               _ig, lambda s, x: (0, s.steps)),
        Method("saliency", "Saliency", "pixel", False,
               "absolute gradient of the class score with respect to each pixel", _saliency),
        Method("smoothgrad", "SmoothGrad", "pixel", False,
               "saliency averaged over noisy copies of the input (NoiseTunnel)",
               _smoothgrad, lambda s, x: (0, s.samples), noisy=True),
        Method("gradcam", "Grad-CAM", "cam", True,
               "a layer's activations weighted by their mean gradient, upsampled to the image", _gradcam),
        Method("guided_gradcam", "Guided Grad-CAM", "pixel", True,
               "Grad-CAM times Guided Backprop: where, and which edges", _guided_gradcam, lambda s, x: (0, 2)),
        Method("occlusion", "Occlusion", "pixel", False,
               "how much the class score drops when a window of the image is hidden", _occlusion, _occlusion_passes),
        Method("guided_backprop", "Guided Backprop", "pixel", False,
               "gradients with negative signals stopped at every ReLU on the way back",
               lambda c: ca().GuidedBackprop(c.model).attribute(c.x, target=c.target)),
        Method("deeplift", "DeepLift", "pixel", False,
               "differences from a baseline propagated with DeepLift's rescale rules",
               lambda c: ca().DeepLift(c.model).attribute(c.x, baselines=c.base, target=c.target),
               lambda s, x: (0, 2)),
        Method("gradient_shap", "GradientSHAP", "pixel", False,
               "expected gradients x (input - baseline) over noisy baselines (SHAP approximation)",
               _gradient_shap, lambda s, x: (0, s.samples), noisy=True),
    )
}


def get_method(key: str) -> Method:
    """The method called ``key``, or a KeyError that lists them all."""
    try:
        return METHODS[key]
    except KeyError:
        raise KeyError(f"unknown method {key!r}; choose one of: {', '.join(METHODS)}") from None


def run_method(
    model: nn.Module,
    spec: ModelSpec,
    method_key: str,
    x: torch.Tensor,
    target: int,
    *,
    layer_paths: tuple[str, ...] = (),
    settings: Settings = Settings(),
) -> np.ndarray:
    """One Captum call on ``model`` (hold its lock). Returns C x H x W, or H x W for Grad-CAM."""
    m = get_method(method_key)
    _quiet_captum()
    s = settings
    # The noise level, for the noisy methods only: reading it waits for the device.
    sigma = s.noise * float(x.max() - x.min()) if m.noisy else 0.0
    call = Call(model, x.detach().clone().requires_grad_(), target, _baseline(spec, x), sigma, layer_paths, s)
    return m.run(call).detach()[0].float().cpu().numpy()


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
) -> Attribution:
    """An attribution map for one image, model, method and target, with its two scores."""
    meta = get_method(method)
    lm = resolve(model)
    spec = lm.spec
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
        with timed(lm.device) as t, _ForwardCounter(m, _expected_passes(method, s, x), meta.name, progress):
            attr = run_method(m, spec, method, x, idx, layer_paths=paths, settings=s)
        result = Attribution(
            lm.key, method, idx, spec.labels()[idx], prob, layer_name, attr, t.ms, lm.weights, inp.seen(), s,
        )
    return add_scores(result, inp, lm, progress=progress) if scores else result


def add_scores(
    a: Attribution,
    image: ImageLike,
    model: LoadedModel | str,
    *,
    progress: ProgressFn | None = None,
) -> Attribution:
    """``a`` with its sanity and deletion scores (another run of the method, and two curves).

    ``image``: the image ``a`` was computed on; pass the ``pipeline.Input`` to skip decoding it again.
    """
    lm = resolve(model)
    check_budget(lm.spec, a.method, a.settings, scores=True)
    x = prepare(image, lm).x
    m_paths = ()
    with cancel.holding(lm.attr_lock):
        m = attribution_model(lm)
        if get_method(a.method).uses_layer:
            _, m_paths = resolve_layer(lm.spec, m, a.layer)
        if progress:
            progress(None, "sanity check: the same method on a copy with re-initialised top layers")
        sanity = sanity_check(lm, a.method, x, a.target, m_paths, a.settings, a.heat)
        if progress:
            progress(None, "deletion curve: removing the most attributed pixels first")
        deletion = deletion_curve(m, x, a.target, a.heat, _baseline(lm.spec, x), batch=a.settings.internal_batch)
    return replace(a, sanity=sanity, deletion=replace(deletion, untrained=not lm.weights.trained))


# ----------------------------------------------------------------------------- scores


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation with tied values given their average rank (scipy), so two
    mostly-zero maps are compared by where their non-zero pixels are, not by pixel position.
    None when either map is constant: a correlation is undefined there."""
    from scipy.stats import spearmanr  # scipy.stats takes 1.4 s to import: not at start-up

    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def sanity_check(
    lm: LoadedModel, method: str, x: torch.Tensor, target: int, paths: tuple[str, ...], s: Settings, heat: np.ndarray
) -> Sanity:
    """Rank correlation of |map| with the same method's |map| on the re-initialised copy."""
    rnd = randomized_model(lm)
    with _ForwardCounter(rnd, _expected_passes(method, s, x), "sanity check", None):
        other = run_method(rnd, lm.spec, method, x, target, layer_paths=paths, settings=s)
    other_heat = other if other.ndim == 2 else other.sum(0)
    rho = spearman(np.abs(heat), np.abs(other_heat))
    return Sanity(rho, None if rho is None else abs(rho) < SANITY_THRESHOLD, lm.spec.top_layers,
                  untrained=not lm.weights.trained)


@torch.no_grad()
def deletion_curve(
    model: nn.Module, x: torch.Tensor, target: int, heat: np.ndarray, baseline: torch.Tensor,
    *, steps: int = DELETION_STEPS, batch: int = INTERNAL_BATCH, seed: int = 0,
) -> Deletion:
    """Target probability as pixels are replaced by the baseline, most attributed first vs random."""
    h, w = x.shape[-2:]
    n = h * w
    rnd = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    # Most attributed first; pixels with equal attribution go in the random order's sequence,
    # not top-left first. So a constant map deletes exactly as the random order does.
    place_in_random = np.empty(n, dtype=np.int64)
    place_in_random[rnd.numpy()] = np.arange(n)
    magnitude = np.abs(heat).ravel()
    order = torch.from_numpy(np.lexsort((place_in_random, -magnitude)).copy())
    fractions = [i / steps for i in range(steps + 1)]

    def masked(perm: torch.Tensor) -> torch.Tensor:
        imgs = []
        for f in fractions:
            mask = torch.zeros(n, device=x.device)
            mask[perm[: int(round(f * n))].to(x.device)] = 1.0
            mask = mask.view(1, 1, h, w)
            imgs.append(x * (1 - mask) + baseline * mask)
        return torch.cat(imgs)

    def probs(batch_x: torch.Tensor) -> list[float]:
        out = []
        for i in range(0, len(batch_x), batch):
            cancel.check()
            out += torch.softmax(model(batch_x[i : i + batch]).float(), 1)[:, target].tolist()
        return out

    p_attr, p_rand = probs(masked(order)), probs(masked(rnd))
    auc = float(np.trapezoid(p_attr, fractions))
    rauc = float(np.trapezoid(p_rand, fractions))
    return Deletion(tuple(fractions), tuple(p_attr), tuple(p_rand), auc, rauc, flat=bool(np.ptp(magnitude) == 0))
