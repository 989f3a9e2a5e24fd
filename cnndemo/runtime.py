"""Loaded models: built lazily, cached per (model, weights, device), each with its own lock.

``LoadedModel.lock`` guards every piece of code that hooks or runs the shared module, so two
requests on the same model never see each other's hooks; different models run in parallel.
"""

from __future__ import annotations

import copy
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import settings, zerogpu
from .errors import BadRequest
from .cancel import ProgressFn
from . import weights as W
from .specs import ModelSpec
from .untrained import make_untrained
from .zoo import get_spec

RANDOM_SEED = 0


def cpu_cores() -> int:
    """Cores this process may use: ``CPU_CORES`` (set on Hugging Face Spaces), else the affinity mask."""
    if settings.get().cpu_cores > 0:
        return settings.get().cpu_cores
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_threads() -> int:
    """Set torch's intra-op threads for the server; return the count.

    The cores this process may really use (``cpu_cores``): a container often reports the
    host's cores, and torch would start that many threads per op. Not fewer per worker: on
    the 2-core reference machine, with 2 workers, 1 thread per event was slower than 2
    (`bench-classroom`, README "Classroom capacity"). ``CNNDEMO_TORCH_THREADS`` overrides.
    """
    threads = settings.get().torch_threads or cpu_cores()
    torch.set_num_threads(threads)
    return threads


def pick_device(name: str | None = None) -> torch.device:
    """'auto' (or None): CUDA when present, else CPU. Honours CNNDEMO_DEVICE. On ZeroGPU the
    process has a GPU only inside a ``spaces.GPU`` task (``cnndemo.zerogpu``): "auto" is the CPU
    outside one, and "cuda" names the task's GPU."""
    name = (name or settings.get().device or "auto").lower()
    if zerogpu.available():
        if name == "auto":
            return torch.device("cuda" if zerogpu.inside else "cpu")
        if name.startswith("cuda"):
            return torch.device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadRequest("CUDA was asked for, but torch sees no CUDA device here")
    return torch.device(name)


@dataclass(eq=False)
class LoadedModel:
    spec: ModelSpec
    module: nn.Module
    weights: W.WeightsInfo
    device: torch.device
    lock: threading.RLock = field(default_factory=threading.RLock)
    # False until the first forward pass has run: that one includes one-time set-up (kernel
    # choice, allocations) and is labelled so wherever its time is shown.
    warm: bool = False
    # Guards the attribution copies (Captum hooks them); separate, so predictions go on meanwhile.
    attr_lock: threading.Lock = field(default_factory=threading.Lock)
    weights_file_state: tuple | None = None
    _variants: dict[str, nn.Module] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def ident(self) -> str:
        """Identifies what this model computes: architecture + weights (for result caches)."""
        return f"{self.spec.key}@{self.weights.ident}"

    def variant(self, name: str, make: Callable[[nn.Module], nn.Module]) -> nn.Module:
        """A cached derived copy (module ReLUs, re-initialised top layers...), built once.

        The copy has its own parameters: hooking or changing it never touches ``module``.
        Call under ``self.lock`` when the variant is hooked.
        """
        with self.lock:
            if name not in self._variants:
                self._variants[name] = make(copy.deepcopy(self.module)).eval()
            return self._variants[name]

    def modules(self) -> list[nn.Module]:
        """The serving module and every derived copy built so far (to check them for hooks)."""
        with self.lock:
            return [self.module, *self._variants.values()]


def build_random(spec: ModelSpec) -> nn.Module:
    """The architecture with a fixed-seed random init, so results are reproducible."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return spec.build()


def _random_info(spec: ModelSpec, module: nn.Module, reason: str) -> W.WeightsInfo:
    """Make ``module`` an untrained network that still computes (``untrained.make_untrained``),
    and say so, why, and how to get weights."""
    what = make_untrained(spec, module, RANDOM_SEED)
    if spec.weights is None:
        fix = (
            "Load a state_dict trained for this architecture: the checkpoint box in the app, "
            "or --weights FILE on the command line."
        )
    else:
        fix = spec.weights.fix(spec.key)
    return W.WeightsInfo("random", what, f"untrained{RANDOM_SEED}", reason, fix)


def load_published(
    spec: ModelSpec, module: nn.Module, progress: ProgressFn | None = None
) -> W.WeightsInfo:
    """Load the spec's published or bundled weights into ``module``; if there are none, make it an
    untrained network that still computes, and say why."""
    src = spec.weights
    if src is None:
        return _random_info(spec, module, f"no published weights exist for {spec.name}")
    try:
        state, ident = src.load(progress)
        W.load_into(module, W.drop_prefixes(state, spec.drop_keys), spec.name)
    except W.WeightsError as e:
        return _random_info(spec, module, str(e))
    return W.WeightsInfo("pretrained", src.describe(), ident)


def _file_state(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


class ModelStore:
    """Process-wide cache of loaded models. Published weights are resolved on first use."""

    def __init__(self, device: str | None = None, max_custom: int = 4):
        self._device_name = device
        self._models: dict[tuple, LoadedModel] = {}
        self._custom: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self._max_custom = max_custom
        self._guard = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}

    @property
    def device(self) -> torch.device:
        return pick_device(self._device_name)

    def _lock(self, k: tuple) -> threading.Lock:
        with self._guard:
            return self._key_locks.setdefault(k, threading.Lock())

    def get(
        self,
        key: str,
        *,
        checkpoint: str | Path | None = None,
        progress: ProgressFn | None = None,
    ) -> LoadedModel:
        """The model ``key`` with its published weights, or with the user's ``checkpoint``.

        A bad checkpoint raises ``WeightsError``; missing published weights give random init
        with the reason in ``weights``.
        """
        spec = get_spec(key)
        device = self.device
        if checkpoint is not None:
            return self._get_custom(spec, Path(checkpoint), device)
        k = (key, str(device))
        with self._lock(k):
            cached = self._models.get(k)
            if cached is not None and not self._worth_retry(cached):
                return cached
            module = build_random(spec)
            src = spec.weights
            before = _file_state(src.path) if src is not None else None
            info = load_published(spec, module, progress)
            loaded = LoadedModel(spec, module.to(device).eval(), info, device)
            loaded.weights_file_state = before
            self._models[k] = loaded
            return loaded

    def _worth_retry(self, cached: LoadedModel) -> bool:
        """A random-init fallback is retried once its weights file has appeared or changed."""
        src = cached.spec.weights
        if cached.weights.kind != "random" or src is None:
            return False
        return _file_state(src.path) != cached.weights_file_state

    def _get_custom(self, spec: ModelSpec, path: Path, device: torch.device) -> LoadedModel:
        if not path.is_file():
            raise W.WeightsError(f"no such checkpoint file: {path}")
        digest = W.sha256_file(path)
        k = (spec.key, digest, str(device))
        with self._lock(k):
            if k in self._custom:
                self._custom.move_to_end(k)
                return self._custom[k]
            module = spec.build_meta()  # no memory until the checkpoint's own tensors are assigned
            expected = W.ExpectedTensors.of(module, ignored=spec.drop_keys)
            state = W.drop_prefixes(W.read_state_dict(path, expected, spec.name), spec.drop_keys)
            W.load_into(module, state, spec.name, assign=True)
            # Named by content, not by file name: a second user who loads the same bytes gets this
            # model (and the results computed with it) without the first user's file name.
            info = W.WeightsInfo("custom", f"your checkpoint (sha256 {digest[:12]})", f"custom-{digest[:16]}")
            loaded = LoadedModel(spec, module.to(device).eval(), info, device)
            self._custom[k] = loaded
            while len(self._custom) > self._max_custom:
                self._custom.popitem(last=False)
            return loaded

    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values()) + list(self._custom.values())


STORE = ModelStore()
