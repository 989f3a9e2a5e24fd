"""Resolving weights honestly: published (torchvision, verified), bundled, the user's own, or random.

Published weights go through torchvision's weights API (URL, categories, metrics) into torch's
hub cache, but the download and the verification are done here because torch.hub has no
timeout and does not re-verify a cached file: every load checks the file against the SHA-256
prefix in its name, and every ``torch.load`` uses ``weights_only=True`` so that no pickled code
runs. Nothing here touches the network at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import nn

from . import cancel
from .paths import WEIGHTS_DIR as BUNDLED_DIR

ProgressFn = Callable[[float | None, str], None]

# Without a single byte for this long, a download is given up (a black-holed network hangs).
STALL_TIMEOUT_S = float(os.environ.get("CNNDEMO_DOWNLOAD_TIMEOUT", "10"))
# After a failed download, do not try the network again for this model for a while.
RETRY_AFTER_S = 300.0

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


class WeightsError(Exception):
    """A human-readable reason why weights could not be used."""


def is_offline() -> bool:
    return os.environ.get("CNNDEMO_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Accuracy:
    """A weights file's published accuracy, and on what it was measured."""

    acc1: float | None
    acc5: float | None
    on: str


class WeightSource(ABC):
    """Where a model's own weights come from: one interface for published and bundled files."""

    downloadable: bool = False  # published on the internet (fetch-weights and prefetch get it)

    @property
    @abstractmethod
    def path(self) -> Path: ...

    @abstractmethod
    def describe(self) -> str:
        """One line for people: which weights, which file."""

    @abstractmethod
    def load(self, progress: ProgressFn | None = None) -> tuple[dict[str, torch.Tensor], str]:
        """The verified state_dict and a short identity of the file (``WeightsError`` if none)."""

    @abstractmethod
    def metrics(self) -> Accuracy: ...

    @abstractmethod
    def fix(self, model_key: str) -> str:
        """What a person can do when these weights cannot be loaded."""

    def availability(self) -> str:
        """'cached' when the file is on disk now, 'pretrained' when it can be downloaded, 'none'."""
        if self.path.exists():
            return "cached"
        return "pretrained" if self.downloadable else "none"


@dataclass(frozen=True)
class TorchvisionWeights(WeightSource):
    """Published ImageNet weights, described by torchvision's weights enum."""

    enum: object  # a torchvision WeightsEnum member
    downloadable = True

    @property
    def name(self) -> str:
        return f"{type(self.enum).__name__}.{self.enum.name}"

    @property
    def url(self) -> str:
        mirror = os.environ.get("CNNDEMO_WEIGHTS_URL", "").strip()
        if mirror:
            return mirror.rstrip("/") + "/" + self.filename
        return self.enum.url

    @property
    def filename(self) -> str:
        return self.enum.url.rsplit("/", 1)[-1]

    @property
    def hash_prefix(self) -> str:
        m = torch.hub.HASH_REGEX.search(self.filename)
        return m.group(1) if m else ""

    @property
    def path(self) -> Path:
        return hub_checkpoint_dir() / self.filename

    @property
    def meta(self) -> dict:
        return self.enum.meta

    def metrics(self) -> Accuracy:
        m = self.enum.meta.get("_metrics", {}).get("ImageNet-1K", {})
        return Accuracy(m.get("acc@1"), m.get("acc@5"), "ImageNet-1K val (torchvision metadata)")

    def describe(self) -> str:
        return f"torchvision {self.enum.name} ({self.filename})"

    def load(self, progress: ProgressFn | None = None) -> tuple[dict[str, torch.Tensor], str]:
        path = fetch(self, progress=progress)
        return torch.load(path, map_location="cpu", weights_only=True), f"tv-{self.hash_prefix}"

    def fix(self, model_key: str) -> str:
        return (
            f"On a machine with internet run `python -m cnndemo fetch-weights --models {model_key}`, "
            f"then copy {hub_checkpoint_dir()} to the same place here (or point TORCH_HOME at "
            "the copy). You can also load your own checkpoint."
        )


@dataclass(frozen=True)
class BundledWeights(WeightSource):
    """Weights trained by this project and shipped in ``assets/weights`` with a training record."""

    filename: str

    @property
    def path(self) -> Path:
        return BUNDLED_DIR / self.filename

    @property
    def record_path(self) -> Path:
        return self.path.with_suffix(".json")

    def record(self) -> dict:
        try:
            return json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return {}

    def metrics(self) -> Accuracy:
        acc = self.record().get("test_acc")
        return Accuracy(acc, None, "MNIST held-out 1,000 (trained here)" if acc is not None else "-")

    def describe(self) -> str:
        record = self.record()
        acc = record.get("test_acc")
        tail = f", held-out MNIST accuracy {acc:.1f}%" if acc is not None else ""
        extra = " + printed and scikit-learn digits" if record.get("settings", {}).get("extra") else ""
        return f"trained here on MNIST{extra} ({self.filename}{tail})"

    def load(self, progress: ProgressFn | None = None) -> tuple[dict[str, torch.Tensor], str]:
        state, digest = read_bundled(self)
        return state, f"bundled-{digest[:10]}"

    def fix(self, model_key: str) -> str:
        return f"Restore {self.path} from the repository, or retrain it with `python -m cnndemo train`."


WeightsKind = Literal["pretrained", "custom", "random"]


@dataclass(frozen=True)
class WeightsInfo:
    """Which weights a model really runs with, and why."""

    kind: WeightsKind
    source: str
    ident: str
    reason: str = ""
    fix: str = ""

    @property
    def trained(self) -> bool:
        return self.kind != "random"


# --------------------------------------------------------------------------- downloads

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
_failures: dict[str, tuple[float, str]] = {}


def _lock_for(name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(name, threading.Lock())


def download(
    url: str,
    dest: Path,
    *,
    hash_prefix: str = "",
    stall_timeout: float | None = None,
    progress: ProgressFn | None = None,
) -> Path:
    """Download ``url`` to ``dest`` atomically, checking the SHA-256 prefix.

    Gives up with ``WeightsError`` when no byte arrives for ``stall_timeout`` seconds.
    """
    stall_timeout = STALL_TIMEOUT_S if stall_timeout is None else stall_timeout
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{uuid.uuid4().hex[:8]}.partial")
    digest = hashlib.sha256()
    done = 0
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "cnndemo"})
        with urllib.request.urlopen(req, timeout=stall_timeout) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            while True:
                chunk = resp.read(1 << 16)
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    frac = done / total if total else None
                    progress(frac, f"downloading {dest.name}: {done / 1e6:.1f} MB")
        if total and done != total:
            raise WeightsError(f"download of {url} stopped at {done} of {total} bytes")
        got = digest.hexdigest()
        if hash_prefix and not got.startswith(hash_prefix):
            raise WeightsError(
                f"downloaded file from {url} has SHA-256 {got[:12]}..., expected {hash_prefix}..."
            )
        os.replace(tmp, dest)
        return dest
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError) or isinstance(e, TimeoutError):
            raise WeightsError(
                f"no answer from {urllib.parse.urlsplit(url).netloc} for {stall_timeout:g} s; gave up"
            ) from e
        raise WeightsError(f"could not download {url}: {reason}") from e
    finally:
        tmp.unlink(missing_ok=True)


def verify_cached(src: TorchvisionWeights) -> str | None:
    """None if the cached file matches the hash prefix in its name, else why not."""
    if not src.hash_prefix:
        return None
    got = sha256_file(src.path)
    if got.startswith(src.hash_prefix):
        return None
    return (
        f"the cached file {src.path} failed its SHA-256 check "
        f"(expected {src.hash_prefix}..., got {got[:len(src.hash_prefix)]}...)"
    )


def fetch(src: TorchvisionWeights, *, progress: ProgressFn | None = None, force: bool = False) -> Path:
    """Make sure a verified copy of ``src`` is in the hub cache; return its path.

    A cached file that fails its hash check is fetched again (or refused when offline).
    Raises ``WeightsError`` with the reason when no verified file can be had.
    """
    with _lock_for(src.filename):
        problem = None
        if src.path.exists():
            problem = verify_cached(src)
            if problem is None and not force:
                return src.path
        if is_offline():
            if problem:
                raise WeightsError(f"{problem}; refused (offline, so it cannot be fetched again)")
            raise WeightsError("offline (CNNDEMO_OFFLINE=1), and the file is not in the cache")
        failed = _failures.get(src.url)
        if failed and time.monotonic() - failed[0] < RETRY_AFTER_S and not force:
            wait = RETRY_AFTER_S - (time.monotonic() - failed[0])
            raise WeightsError(f"{failed[1]} (not retried for another {wait:.0f} s)")
        try:
            path = download(src.url, src.path, hash_prefix=src.hash_prefix, progress=progress)
        except WeightsError as e:
            msg = f"{problem}; fetching it again failed: {e}" if problem else str(e)
            _failures[src.url] = (time.monotonic(), msg)
            raise WeightsError(msg) from e
        _failures.pop(src.url, None)
        return path


def availability(source: WeightSource | None) -> str:
    """'cached' when weights are on disk now, 'pretrained' when published but not here, 'none'."""
    return "none" if source is None else source.availability()


def forget_failures() -> None:
    """Forget failed downloads, so the next request tries again at once (tests; a fixed network)."""
    _failures.clear()


# --------------------------------------------------------------------------- state dicts


# Checkpoint loads at once (each may hold up to twice a model's weights in memory).
MAX_CONCURRENT_LOADS = int(os.environ.get("CNNDEMO_MAX_CHECKPOINT_LOADS", "2"))
_LOAD_SLOTS = threading.BoundedSemaphore(MAX_CONCURRENT_LOADS)
# A zip checkpoint may declare at most this multiple of the architecture's tensor bytes
# (2: a float64 copy of a float32 model still loads) plus a little slack for metadata.
ZIP_SLACK_FACTOR = 2.0
ZIP_SLACK_BYTES = 1 << 20
MAX_PICKLE_RECORD = 16 << 20


@dataclass(frozen=True)
class ExpectedTensors:
    """What an architecture's state_dict holds: the budget a checkpoint is checked against."""

    count: int
    total_bytes: int
    largest_bytes: int

    @classmethod
    def of(cls, model: nn.Module) -> ExpectedTensors:
        sizes = [t.numel() * t.element_size() for t in model.state_dict().values()]
        return cls(len(sizes), sum(sizes), max(sizes, default=0))

    @property
    def limit_bytes(self) -> int:
        """The most tensor data a checkpoint of this architecture may hold."""
        return int(self.total_bytes * ZIP_SLACK_FACTOR) + ZIP_SLACK_BYTES

    @property
    def record_limit_bytes(self) -> int:
        """The most one stored tensor of this architecture may take."""
        return int(self.largest_bytes * ZIP_SLACK_FACTOR) + ZIP_SLACK_BYTES


def check_torch_zip(path: Path, expected: ExpectedTensors, model_name: str = "this model") -> None:
    """Refuse a zip checkpoint from its directory alone, before anything is inflated.

    A zip entry declares its unpacked size, and both Python's and torch's zip readers stop
    there, so a 2 MB upload that would inflate to 2 GB is refused by arithmetic.
    """
    import zipfile

    def mb(n: int) -> str:
        return f"{n / 2**20:,.1f} MB"

    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise WeightsError(f"{path.name} is a damaged zip checkpoint ({e})") from None
    if len(infos) > 4 * expected.count + 32:
        raise WeightsError(
            f"{path.name} holds {len(infos):,} zip entries; a checkpoint for {model_name} has about "
            f"{expected.count + 4}. Refused before unpacking."
        )
    records = [i for i in infos if "/data/" in i.filename]
    total = sum(i.file_size for i in records)
    limit = expected.limit_bytes
    if total > limit:
        raise WeightsError(
            f"{path.name} declares {mb(total)} of tensor data once unpacked; the weights of {model_name} "
            f"take {mb(expected.total_bytes)} (limit {mb(limit)}). Refused before unpacking."
        )
    for i in infos:
        cap = expected.record_limit_bytes if i in records else MAX_PICKLE_RECORD
        if i.file_size > cap:
            raise WeightsError(
                f"{path.name}: the entry {i.filename} declares {mb(i.file_size)} once unpacked, more than "
                f"any tensor of {model_name} needs ({mb(cap)}). Refused before unpacking."
            )


def _sniff_checkpoint(path: Path) -> str:
    """'zip' (torch.save since 1.6), 'legacy' (a pickle stream) or 'safetensors'; else a refusal."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise WeightsError(f"{path.name} is empty (0 bytes)")
    if path.suffix.lower() == ".safetensors":
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:
        return "legacy"
    raise WeightsError(
        f"{path.name} is not a PyTorch checkpoint: torch.save writes a zip archive (or, before "
        "PyTorch 1.6, a pickle stream), and this file is neither. Save it with "
        "torch.save(model.state_dict(), 'file.pth') or as .safetensors."
    )


def read_state_dict(
    path: str | Path, expected: ExpectedTensors | None = None, model_name: str = "this model"
) -> dict[str, torch.Tensor]:
    """Read a checkpoint as a flat dict of tensors without running any pickled code.

    With ``expected`` (what the architecture holds), a zip checkpoint whose declared sizes do
    not fit is refused before it is unpacked. At most ``MAX_CONCURRENT_LOADS`` files are read
    at once.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no such checkpoint file: {path}")
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise WeightsError(
            f"{path.name}: expected a state_dict file ({', '.join(CHECKPOINT_SUFFIXES)})"
        )
    kind = _sniff_checkpoint(path)
    if kind == "zip" and expected is not None:
        check_torch_zip(path, expected, model_name)
    if kind == "legacy" and expected is not None:
        # A pickle stream stores tensors uncompressed: memory follows the file size.
        if path.stat().st_size > expected.limit_bytes:
            raise WeightsError(f"{path.name} is larger than any checkpoint of {model_name} can be; refused")
    with cancel.holding(_LOAD_SLOTS):
        try:
            if kind == "safetensors":
                from safetensors.torch import load_file

                obj = load_file(str(path), device="cpu")
                if any(k.endswith(_SCALE) for k in obj):  # this app's own packed file (train --out)
                    obj = unpack_state(obj)
            else:
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else "unsupported object"
            raise WeightsError(
                f"{path.name} was refused: it holds pickled Python objects, not just tensors, and "
                f"loading it could run code ({first}). Save it with torch.save(model.state_dict()) "
                "or as .safetensors."
            ) from e
        except Exception as e:  # corrupt zip, truncated file, wrong format
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise WeightsError(f"{path.name} could not be read as a checkpoint: {reason}") from e
    return _unwrap(obj, path.name)


def _unwrap(obj: object, name: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(wrapper)
            if isinstance(inner, dict) and inner and all(
                isinstance(v, torch.Tensor) for v in inner.values()
            ):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"{name} does not contain a state_dict (a dict of tensors)")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{name}: entries that are not tensors: {', '.join(map(str, bad[:3]))}")
    # nn.DataParallel / DistributedDataParallel checkpoints prefix every key with "module.".
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def drop_prefixes(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict:
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], model_name: str) -> None:
    """Raise ``WeightsError`` naming the first mismatching keys and shapes."""
    want = model.state_dict()
    complex_keys = [k for k, v in state.items() if v.is_complex()]
    if complex_keys:
        raise WeightsError(
            f"this checkpoint holds complex-valued tensors ({', '.join(complex_keys[:3])}); the weights "
            f"of {model_name} are real numbers, and casting would silently drop the imaginary parts"
        )
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [
        f"{k} (checkpoint {list(state[k].shape)}, model {list(want[k].shape)})"
        for k in want
        if k in state and state[k].shape != want[k].shape
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    raise WeightsError(f"this checkpoint does not fit {model_name}: " + "; ".join(parts))


def load_into(model: nn.Module, state: dict[str, torch.Tensor], model_name: str) -> None:
    check_fits(model, state, model_name)
    model.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- bundled weights
# Small networks trained here ship as safetensors. Large float tensors are stored as int8 with
# one float scale per output channel (the d2l GoogLeNet would be 24 MB in float32, 6 MB so);
# the accuracy in the training record is measured on the weights after this round trip.

QUANT_MIN_NUMEL = 32_768
_SCALE = "::scale"


def pack_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    packed: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        v = v.detach().cpu().contiguous()
        if v.is_floating_point() and v.dim() >= 2 and v.numel() >= QUANT_MIN_NUMEL:
            flat = v.float().reshape(v.shape[0], -1)
            scale = flat.abs().amax(dim=1).clamp_min(1e-12) / 127.0
            q = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8)
            packed[k] = q.reshape(v.shape).contiguous()
            packed[k + _SCALE] = scale.float()
        else:
            packed[k] = v
    return packed


def unpack_state(packed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for k, v in packed.items():
        if k.endswith(_SCALE):
            continue
        scale = packed.get(k + _SCALE)
        if scale is not None:
            shape = (-1,) + (1,) * (v.dim() - 1)
            v = v.float() * scale.reshape(shape)
        state[k] = v
    return state


def save_bundled(state: dict[str, torch.Tensor], path: Path) -> str:
    """Write ``state`` packed as safetensors; return the file's SHA-256."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(pack_state(state), str(tmp))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return sha256_file(path)


def read_bundled(src: BundledWeights) -> tuple[dict[str, torch.Tensor], str]:
    """The bundled state_dict after checking the file against its training record."""
    if not src.path.is_file():
        raise WeightsError(f"the bundled weights file {src.path.name} is missing")
    digest = sha256_file(src.path)
    expected = src.record().get("sha256")
    if not expected:
        raise WeightsError(f"no training record with a SHA-256 for {src.path.name}")
    if digest != expected:
        raise WeightsError(
            f"{src.path.name} failed its SHA-256 check against its training record "
            f"(expected {expected[:12]}..., got {digest[:12]}...); refused"
        )
    from safetensors.torch import load_file

    return unpack_state(load_file(str(src.path), device="cpu")), digest
