"""What each parallel branch saw: per-branch maps, energy shares across depth, and ablation.

``explore`` runs ONE forward pass per (image, model, weights) that yields the top-5 and a
summary of every branch of every block; the result is cached, so switching the block or the
branch on screen never runs the network again. ``ablate`` re-runs with one branch knocked out
by a hook that lives only for that call; the shared model is never modified.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from . import anatomy, cancel, settings
from .errors import BadRequest, NotFound
from .cache import memo
from .pipeline import ImageLike, load_for, prepare, resolve, timed, timed_forward
from .predict import Prediction, top_classes
from .runtime import LoadedModel
from .shared import RESULTS, SharedResults
from .specs import BlockSpec, ModelSpec, SpecError
from .taps import Ablation, RawBlock, run_with_taps
from .zoo import get_spec

TOP_CHANNELS = 8


@dataclass(frozen=True)
class BranchInfo:
    """A branch as the architecture defines it (no image needed)."""

    name: str
    path: str
    params: int
    note: str
    shape: tuple[int, int, int]
    channels: tuple[int, int] | None  # inclusive range in the block output; None if summed


@dataclass(frozen=True)
class BlockInfo:
    name: str
    module: str
    kind: str
    merge: str
    shape: tuple[int, int, int]
    params: int
    shared: str
    branches: tuple[BranchInfo, ...]

    def to_json(self) -> dict:
        return {
            "block": self.name,
            "module": self.module,
            "kind": self.kind,
            "merge": self.merge,
            "shape": list(self.shape),
            "params": self.params,
            "shared": self.shared or None,
            "branches": [
                {
                    "name": b.name,
                    "path": b.path,
                    "channels": list(b.channels) if b.channels else None,
                    "shape": list(b.shape),
                    "params": b.params,
                    "note": b.note or None,
                }
                for b in self.branches
            ],
        }


@dataclass(frozen=True, eq=False)
class BranchMap:
    info: BranchInfo
    share: float  # fraction of the block's output energy (sum of squares) this branch carries
    mean_map: np.ndarray  # H x W, mean over channels
    top_channels: tuple[int, ...]  # indices within the branch, most active first
    top_maps: np.ndarray  # k x H x W


@dataclass(frozen=True, eq=False)
class BlockMaps:
    info: BlockInfo
    branches: tuple[BranchMap, ...]

    def shares(self) -> dict[str, float]:
        return {b.info.name: b.share for b in self.branches}

    def branches_json(self, path_key: str = "path") -> list[dict]:
        """The CLI's branch records: name, kernel path, channel range, shape, parameters, share."""
        return [
            {
                "name": b.info.name,
                path_key: b.info.path,
                "channels": list(b.info.channels) if b.info.channels else None,
                "shape": list(b.info.shape),
                "params": b.info.params,
                "share": round(b.share, 6),
            }
            for b in self.branches
        ]


@dataclass(frozen=True, eq=False)
class Exploration:
    """Everything one forward pass tells about one image on one model."""

    model: str
    weights_ident: str
    image_digest: str
    prediction: Prediction
    seen: object  # PIL image the network saw
    blocks: dict[str, BlockMaps] = field(default_factory=dict)
    input_notes: tuple[str, ...] = ()  # what opening the image did (EXIF, first frame, rescaling...)


# ----------------------------------------------------------------------------- static info

def _channel_ranges(block: BlockSpec, branches: list[torch.Tensor]) -> list[tuple[int, int] | None]:
    if block.merge != "concat":
        return [None] * len(branches)
    out, lo = [], 0
    for t in branches:
        out.append((lo, lo + t.shape[1] - 1))
        lo += t.shape[1]
    return out


def block_infos(spec: ModelSpec) -> tuple[BlockInfo, ...]:
    """Kernel paths, channel ranges, shapes and parameters of every block (architecture only).

    Computed on the meta device, so it needs no weights, memory or compute.
    """
    return _block_infos(spec.key)


def branch_info(spec: ModelSpec, block: str, branch: str) -> BranchInfo:
    """One branch's description (its output shape among them), from ``block_infos``."""
    info = next(b for b in block_infos(spec) if b.name == block)
    return next(b for b in info.branches if b.name == branch)


@memo(64, name="block descriptions")
def _block_infos(key: str) -> tuple[BlockInfo, ...]:
    spec = get_spec(key)
    model = spec.build_meta()
    _, raw = run_with_taps(model, spec.meta_input(), spec.blocks)
    infos = []
    for block in spec.blocks:
        rb = raw[block.name]
        merged = tuple(block.combine(rb.branches).shape)
        if merged != tuple(rb.output.shape):  # the branches do not tile the block's output
            raise SpecError(f"{spec.key}/{block.name}: its branches, merged ({block.merge}), give {merged}, "
                            f"but the block outputs {tuple(rb.output.shape)}: a branch is missing or mis-tapped")
        ranges = _channel_ranges(block, rb.branches)
        branches = tuple(
            BranchInfo(
                br.name,
                anatomy.describe_branch(model, br),
                anatomy.branch_params(model, br),
                br.note,
                tuple(t.shape[1:]),
                rng,
            )
            for br, t, rng in zip(block.branches, rb.branches, ranges)
        )
        infos.append(
            BlockInfo(
                block.name,
                block.path,
                block.kind,
                block.merge,
                tuple(rb.output.shape[1:]),
                # The block's module, and for a plain stage (whose path is its last layer) every
                # layer of its one path: the same count as the branch table's.
                anatomy.count_params(model, (block.path, *block.shared,
                                             *(m for br in block.branches for m in br.modules + br.tap_paths))),
                anatomy.describe_shared(model, block),
                branches,
            )
        )
    return tuple(infos)


# ----------------------------------------------------------------------------- summaries


def _summarise_all(raw: dict[str, RawBlock], infos: dict[str, BlockInfo]) -> dict[str, BlockMaps]:
    """Every block's branch shares, mean maps and strongest channels. All of it is computed on
    the model's device and brought to the host in one copy: on a GPU, one synchronisation for the
    whole exploration instead of four per branch."""
    parts: list[torch.Tensor] = []
    for rb in raw.values():
        acts = [t[0].float() for t in rb.branches]  # C x H x W each
        parts.append(torch.stack([torch.linalg.vector_norm(a) ** 2 for a in acts]))
        for a in acts:
            idx = a.mean(dim=(1, 2)).topk(min(TOP_CHANNELS, a.shape[0])).indices
            parts += [a.mean(0), idx.float(), a[idx]]  # channel indices are exact in float32
    host = torch.cat([p.reshape(-1) for p in parts]).cpu().numpy() if parts else np.zeros(0, np.float32)
    chunks = iter(np.split(host, np.cumsum([p.numel() for p in parts])[:-1]))
    shapes = iter([tuple(p.shape) for p in parts])

    def take() -> np.ndarray:
        return next(chunks).reshape(next(shapes))

    out = {}
    for name, rb in raw.items():
        energies = take().astype(np.float64)
        total = float(energies.sum()) or 1.0
        maps = []
        for e, binfo in zip(energies, infos[name].branches):
            mean_map, idx, top = take(), take(), take()
            maps.append(BranchMap(binfo, float(e) / total, mean_map, tuple(int(i) for i in idx), top))
        out[name] = BlockMaps(infos[name], tuple(maps))
    return out


# Results of recent (image, model) pairs: what makes switching blocks free, and what a class
# predicting the same example computes once. Bounded in bytes, because a ResNet-50 exploration
# (56 x 56 maps in 16 blocks) is ~20x a digit net's.
EXPLORATIONS = SharedResults(48 * 2**20, name="explorations")


def explore(
    image: ImageLike, model: LoadedModel | str, *, top: int = 5, use_cache: bool = True
) -> Exploration:
    """Top-k plus every block's branch maps and shares, from one forward pass (shared: the
    same pixels on the same model and weights are computed once, whoever asks)."""
    lm = resolve(model)
    opened = load_for(lm.spec, image)

    def compute(_progress=None) -> Exploration:
        inp = prepare(image, lm, opened=opened)
        pred, blocks, _ms = explore_tensor(lm, inp.x, top)
        return Exploration(lm.key, lm.weights.ident, opened.digest, pred, inp.seen(), blocks, ())

    if not use_cache:
        return replace(compute(), input_notes=opened.notes)
    key = (opened.digest, lm.ident, top)
    # The result is keyed by pixels and shared by every user: the notes about how *this* file
    # was opened (first page of a TIFF, EXIF...) are this request's own.
    if (hit := EXPLORATIONS.peek(key)) is not None:
        return replace(hit, input_notes=opened.notes, prediction=replace(hit.prediction, cached=True))
    return replace(EXPLORATIONS.get(key, compute), input_notes=opened.notes)


def explore_tensor(lm: LoadedModel, x: torch.Tensor, top: int = 5) -> tuple[Prediction, dict[str, BlockMaps], float]:
    """The one forward pass on a preprocessed image (1 x C x H x W): top-k, and every block's
    branch summaries. With batching on (``batching_on``), requests for the same model that
    arrive while its forward pass runs go through the next pass together."""
    if batching_on(lm.device):
        return BATCHER.run(lm, x, top)
    return _explore_batch(lm, [x], top)[0]


def _explore_batch(lm: LoadedModel, xs: list[torch.Tensor], top: int):
    """One forward pass over several images; each image's own prediction and summaries."""
    infos = {i.name: i for i in block_infos(lm.spec)}
    x = xs[0] if len(xs) == 1 else torch.cat(xs)
    (logits, raw), ms, first_run = timed_forward(lm, x, lambda m, x: run_with_taps(m, x, lm.spec.blocks,
                                                                                   keep_outputs=False))
    out = []
    with torch.inference_mode():
        for i in range(len(xs)):
            mine = {name: RawBlock(rb.spec, None, [t[i:i + 1] for t in rb.branches]) for name, rb in raw.items()}
            pred = Prediction(lm.key, lm.weights, top_classes(logits[i:i + 1], lm.spec.labels(), top), ms, first_run,
                              batch=len(xs))
            out.append((pred, _summarise_all(mine, infos), ms))
    return out


def batching_on(device: torch.device) -> bool:
    """``CNNDEMO_BATCH``: on, off, or auto (on with CUDA, where a batch costs about what one image
    does; off on a CPU, where it measured slower: README, "Batching")."""
    mode = settings.get().batch.lower()
    return mode in ("on", "1", "true") or (mode == "auto" and device.type == "cuda")


class Batcher:
    """Concurrent forward passes on one model, run as one batch. No request waits for others
    to arrive: whoever holds the model's lock runs every image that queued meanwhile (up to
    ``max_batch``), so an idle server answers at once and a busy one batches by itself. If a
    batch fails, each of its images is run alone, so one bad request fails only itself."""

    def __init__(self, max_batch: int = 16):
        self.max_batch = max_batch
        self._pending: dict[tuple, list[_Queued]] = {}
        self._guard = threading.Lock()

    def run(self, lm: LoadedModel, x: torch.Tensor, top: int):
        mine = _Queued(x)
        key = (id(lm), tuple(x.shape), top)
        with self._guard:
            self._pending.setdefault(key, []).append(mine)
        try:
            while not mine.done.is_set():
                if lm.lock.acquire(timeout=0.05):
                    try:
                        if not mine.done.is_set():
                            self._run_pending(lm, key, top)
                    finally:
                        lm.lock.release()
                cancel.check()
        finally:
            with self._guard:  # cancelled while queued: leave the queue
                queued = self._pending.get(key, [])
                if mine in queued:
                    queued.remove(mine)
        if mine.error is not None:
            raise mine.error
        return mine.result

    def _run_pending(self, lm: LoadedModel, key: tuple, top: int) -> None:
        with self._guard:
            queued = self._pending.get(key, [])
            batch, self._pending[key] = queued[:self.max_batch], queued[self.max_batch:]
        if not batch:
            return
        try:
            results: list = _explore_batch(lm, [q.x for q in batch], top)
        except Exception as e:
            results = [e] if len(batch) == 1 else [self._alone(lm, q.x, top) for q in batch]
        for q, r in zip(batch, results):
            if isinstance(r, Exception):
                q.error = r
            else:
                q.result = r
            q.done.set()


    @staticmethod
    def _alone(lm: LoadedModel, x: torch.Tensor, top: int):
        """One image's result, or its error (after a batch failed: each request gets its own)."""
        try:
            return _explore_batch(lm, [x], top)[0]
        except Exception as e:
            return e


class _Queued:
    def __init__(self, x: torch.Tensor):
        self.x = x
        self.result = None
        self.error: BaseException | None = None
        self.done = threading.Event()


BATCHER = Batcher()


@dataclass(frozen=True)
class AblationResult:
    ablation: Ablation
    before: Prediction
    after: Prediction
    top1_delta: float  # change in the probability of the un-ablated top-1 class

    def to_json(self) -> dict:
        return {
            "block": self.ablation.block,
            "branch": self.ablation.branch,
            "mode": self.ablation.mode,
            "before": self.before.to_json()["top"],
            "after": self.after.to_json()["top"],
            "top1_delta": round(self.top1_delta, 6),
        }


def ablate(
    image: ImageLike,
    model: LoadedModel | str,
    block: str,
    branch: str,
    *,
    mode: str = "zero",
    top: int = 5,
) -> AblationResult:
    """Re-run with one branch replaced by zeros (or its per-channel mean) from that block on."""
    lm = resolve(model)
    spec = lm.spec
    bspec = spec.block(block)
    if bspec.merge == "single":
        raise BadRequest(f"{spec.name} has no parallel branches to knock out in {block}")
    if branch not in [b.name for b in bspec.branches]:
        names = ", ".join(b.name for b in bspec.branches)
        raise NotFound(f"{block} has no branch {branch!r}; branches: {names}")
    if mode not in ("zero", "mean"):
        raise BadRequest(f"unknown ablation mode {mode!r}: use zero or mean")
    opened = load_for(spec, image)
    key = ("ablation", opened.digest, lm.ident, block, branch, mode, top)
    explored = EXPLORATIONS.peek((opened.digest, lm.ident, top))  # the intact pass, if a prediction made it
    return RESULTS.get(key, lambda _progress: _ablate(prepare(image, lm, opened=opened).x,
                                                      lm, Ablation(block, branch, mode), top,
                                                      explored.prediction if explored else None))


def _ablate(x: torch.Tensor, lm: LoadedModel, abl: Ablation, top: int, before: Prediction | None = None) -> AblationResult:
    """``before``: the prediction of the intact network on ``x`` when it is known already (the
    exploration a prediction left): then only the ablated pass runs."""
    spec = lm.spec
    bspec = spec.block(abl.block)
    labels = spec.labels()
    with cancel.holding(lm.lock), torch.inference_mode():
        if before is None:
            with timed(lm.device) as t_base:
                base = lm.module(x)
            before = Prediction(lm.key, lm.weights, top_classes(base, labels, top), t_base.ms)
        with timed(lm.device) as t_knocked:
            knocked, _ = run_with_taps(lm.module, x, [bspec], ablation=abl)
    after = Prediction(lm.key, lm.weights, top_classes(knocked, labels, top), t_knocked.ms)
    top1 = before.top[0].index
    p_after = float(torch.softmax(knocked.float()[0], 0)[top1])
    return AblationResult(abl, before, after, p_after - before.top[0].prob)
