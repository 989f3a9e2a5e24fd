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
import math
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
from typing import Literal

import torch
from torch import nn

from . import cancel, settings
from .cancel import ProgressFn
from .errors import UserError
from .paths import WEIGHTS_DIR as BUNDLED_DIR

# After a failed download, do not try the network again for this model for a while.
RETRY_AFTER_S = 300.0

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


class WeightsError(UserError):
    """A human-readable reason why weights could not be used."""


class IncompleteInstall(RuntimeError):
    """A file that ships with cnndemo is missing: the installation is broken. Not a reason to
    fall back to random weights (the digit networks would then answer at chance, quietly)."""


def is_offline() -> bool:
    return settings.get().offline


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
        mirror = settings.get().weights_url.strip()
        if mirror:
            return mirror.rstrip("/") + "/" + self.filename
        return self.enum.url

    @property
    def filename(self) -> str:
        return self.enum.url.rsplit("/", 1)[-1]

    @property
    def file_mb(self) -> float | None:
        """The published file's size in MiB (torchvision's ``meta["_file_size"]``)."""
        return self.enum.meta.get("_file_size")

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

# One download lock per file, and the downloads that failed recently (url -> (when, why)): both
# are read and written by request threads and the background prefetch, under _locks_guard.
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
    # Without a single byte for this long, a download is given up (a black-holed network hangs).
    stall_timeout = settings.get().download_timeout_s if stall_timeout is None else stall_timeout
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
        failed = _recent_failure(src.url)
        if failed and not force:
            msg, wait = failed
            raise WeightsError(f"{msg} (not retried for another {wait:.0f} s)")
        try:
            path = download(src.url, src.path, hash_prefix=src.hash_prefix, progress=progress)
        except WeightsError as e:
            msg = f"{problem}; fetching it again failed: {e}" if problem else str(e)
            with _locks_guard:
                _failures[src.url] = (time.monotonic(), msg)
            raise WeightsError(msg) from e
        with _locks_guard:
            _failures.pop(src.url, None)
        return path


def availability(source: WeightSource | None) -> str:
    """'cached' when weights are on disk now, 'pretrained' when published but not here, 'none'."""
    return "none" if source is None else source.availability()


def why_unavailable(source: WeightSource | None) -> str | None:
    """Why a model would run with random weights if loaded now (None when its weights are on
    disk, or can be fetched): no published weights, offline, or a download that just failed."""
    avail = availability(source)
    if avail == "cached":
        return None
    if avail == "none":
        return "it has no published weights"
    if is_offline():
        return "this machine is offline and its published weights are not cached here"
    failed = _recent_failure(source.url)
    return f"its weights could not be fetched ({failed[0]})" if failed else None


def _recent_failure(url: str) -> tuple[str, float] | None:
    """(why, seconds until a retry) for a download of ``url`` that failed less than
    ``RETRY_AFTER_S`` ago; None otherwise."""
    with _locks_guard:
        failed = _failures.get(url)
    if failed is None:
        return None
    wait = RETRY_AFTER_S - (time.monotonic() - failed[0])
    return (failed[1], wait) if wait > 0 else None


def forget_failures() -> None:
    """Forget failed downloads, so the next request tries again at once (tests; a fixed network)."""
    with _locks_guard:
        _failures.clear()


# --------------------------------------------------------------------------- state dicts


# Checkpoint loads at once (each may hold up to twice a model's weights in memory).
_LOAD_SLOTS = threading.BoundedSemaphore(settings.get().max_checkpoint_loads)
# A checkpoint may hold at most this multiple of the architecture's tensor bytes (2: a float64
# copy of a float32 model still loads) plus a little slack for metadata.
ZIP_SLACK_FACTOR = 2.0
ZIP_SLACK_BYTES = 1 << 20
# The pickle (or safetensors JSON header) that describes a state_dict takes ~140 bytes per
# tensor (torchvision's models: 122-161). torch's weights-only unpickler is pure Python, keeps
# tens of bytes per pickle byte and cannot be interrupted, so the description is bounded by
# what this architecture needs before it is parsed: 512 bytes per tensor (3x the most seen) plus
# 16 KB. Walking a legacy file's opcodes up to that bound takes ~0.3 s for ResNet-50.
PICKLE_BYTES_PER_TENSOR = 512
PICKLE_SLACK_BYTES = 16 << 10
# Keys of a checkpoint beyond the architecture's (auxiliary heads, an optimiser's scalars).
EXTRA_ENTRIES = 64


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


@dataclass(frozen=True, eq=False)
class ExpectedTensors:
    """What an architecture's state_dict holds (each key's shape and dtype): every checkpoint
    is checked against it from its header before a tensor is built."""

    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]
    ignored: tuple[str, ...] = ()  # key prefixes a checkpoint may carry and the model drops

    @classmethod
    def of(cls, model: nn.Module, ignored: tuple[str, ...] = ()) -> ExpectedTensors:
        return cls({k: (tuple(t.shape), t.dtype) for k, t in model.state_dict().items()}, tuple(ignored))

    @property
    def count(self) -> int:
        return len(self.shapes)

    def _nbytes(self, shape: tuple[int, ...], dtype: torch.dtype) -> int:
        return math.prod(shape) * dtype.itemsize

    @property
    def total_bytes(self) -> int:
        return sum(self._nbytes(*v) for v in self.shapes.values())

    @property
    def largest_bytes(self) -> int:
        return max((self._nbytes(*v) for v in self.shapes.values()), default=0)

    @property
    def limit_bytes(self) -> int:
        """The most tensor data a checkpoint of this architecture may hold."""
        return int(self.total_bytes * ZIP_SLACK_FACTOR) + ZIP_SLACK_BYTES

    @property
    def record_limit_bytes(self) -> int:
        """The most one stored tensor of this architecture may take."""
        return int(self.largest_bytes * ZIP_SLACK_FACTOR) + ZIP_SLACK_BYTES

    @property
    def header_limit_bytes(self) -> int:
        """The most a checkpoint's description (pickle, safetensors header) may take."""
        return PICKLE_BYTES_PER_TENSOR * (self.count + EXTRA_ENTRIES) + PICKLE_SLACK_BYTES


_FLOATS = {torch.float16, torch.bfloat16, torch.float32, torch.float64}
_SCALE = "::scale"  # this app's packed format (see pack_state)


def check_entries(
    entries: dict[str, tuple[tuple[int, ...], torch.dtype]], expected: ExpectedTensors, model_name: str
) -> None:
    """Refuse a checkpoint whose keys, shapes or dtypes do not fit the architecture.

    ``entries`` comes from a header (safetensors) or a load onto the meta device (torch
    files): nothing has been allocated yet. Keys under ``expected.ignored`` are allowed
    (auxiliary heads the model drops); the app's packed format (int8 + ``::scale``) is
    recognised and its scales are checked too, so unpacking cannot broadcast.
    """
    complex_keys = [k for k, (_s, dt) in entries.items() if dt.is_complex]
    if complex_keys:
        raise WeightsError(
            f"this checkpoint holds complex-valued tensors ({', '.join(complex_keys[:3])}); the weights "
            f"of {model_name} are real numbers, and casting would silently drop the imaginary parts"
        )
    want = expected.shapes
    scales = {k[: -len(_SCALE)]: v for k, v in entries.items() if k.endswith(_SCALE)}
    missing = [k for k in want if k not in entries]
    unexpected = [k for k in entries if k not in want and not k.endswith(_SCALE) and not k.startswith(expected.ignored)]
    unexpected += [k + _SCALE for k in scales if k not in want]
    if len(entries) > expected.count + EXTRA_ENTRIES + len(scales):
        unexpected = unexpected or list(entries)
    wrong: list[str] = []  # shapes
    dtypes: list[str] = []
    for k, (shape, dtype) in want.items():
        if k not in entries:
            continue
        got_shape, got_dtype = entries[k]
        if got_shape != shape:
            wrong.append(f"{k} (checkpoint {list(got_shape)}, model {list(shape)})")
        elif k in scales:
            s_shape, s_dtype = scales[k]
            if got_dtype != torch.int8 or len(shape) < 2 or s_shape != (shape[0],) or s_dtype != torch.float32:
                dtypes.append(f"{k} (packed as {got_dtype}, scale {list(s_shape)} {s_dtype}; "
                             f"expected int8 and a float32 scale of [{shape[0]}])")
        elif dtype.is_floating_point and got_dtype not in _FLOATS:
            dtypes.append(f"{k} (dtype {got_dtype}, model {dtype})")
        elif not dtype.is_floating_point and (got_dtype.is_floating_point or got_dtype == torch.bool):
            dtypes.append(f"{k} (dtype {got_dtype}, model {dtype})")
    if not (missing or unexpected or wrong or dtypes):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong),
                         ("wrong dtype", dtypes)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    raise WeightsError(f"this checkpoint does not fit {model_name}: " + "; ".join(parts))


def check_torch_zip(path: Path, expected: ExpectedTensors, model_name: str = "this model") -> None:
    """Refuse a zip checkpoint from its directory alone, before anything is inflated.

    A zip entry declares its unpacked size, and both Python's and torch's zip readers stop
    there, so a 2 MB upload that would inflate to 2 GB is refused by arithmetic; and the
    pickle that describes the tensors may not be larger than this architecture's needs.
    """
    import zipfile

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
            f"{path.name} declares {_mb(total)} of tensor data once unpacked; the weights of {model_name} "
            f"take {_mb(expected.total_bytes)} (limit {_mb(limit)}). Refused before unpacking."
        )
    for i in infos:
        if i in records:
            cap, what = expected.record_limit_bytes, "any tensor of"
        else:  # data.pkl, version, byteorder...: descriptions, bounded by the tensor count
            cap, what = expected.header_limit_bytes, "the description of the weights of"
        if i.file_size > cap:
            raise WeightsError(
                f"{path.name}: the entry {i.filename} declares {_mb(i.file_size)} once unpacked, more than "
                f"{what} {model_name} needs ({_mb(cap)}). Refused before unpacking."
            )


def check_legacy_pickles(path: Path, expected: ExpectedTensors, model_name: str = "this model") -> None:
    """A pre-zip (PyTorch < 1.6) checkpoint is five pickles and then raw storages. Walk the
    pickles' opcodes (nothing is built) and refuse once they pass what this architecture's
    description needs, before torch's unpickler sees them."""
    import pickletools

    cap = expected.header_limit_bytes
    with open(path, "rb") as f:
        for _ in range(5):
            try:
                for _op, _arg, _pos in pickletools.genops(f):
                    if f.tell() > cap:
                        raise WeightsError(
                            f"{path.name}: its pickled description runs past {_mb(cap)}, more than a state_dict "
                            f"of {model_name} needs ({expected.count} tensors). Refused before unpickling."
                        )
            except (ValueError, EOFError) as e:
                raise WeightsError(f"{path.name} is a damaged checkpoint ({e})") from None


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "C64": torch.complex64,
}


def safetensors_entries(path: Path, expected: ExpectedTensors, model_name: str = "this model") -> dict:
    """Keys, shapes and dtypes from a safetensors header (8-byte length, then JSON), read only
    after its length is checked against what this architecture's header needs."""
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= expected.header_limit_bytes:
            raise WeightsError(
                f"{path.name}: its safetensors header declares {n:,} bytes; a file for {model_name} needs at most "
                f"{expected.header_limit_bytes:,}. Refused before reading it."
            )
        try:
            header = json.loads(f.read(n))
            entries = {}
            for k, v in header.items():
                if k == "__metadata__":
                    continue
                dtype = _SAFETENSORS_DTYPES.get(v["dtype"])
                if dtype is None:
                    raise WeightsError(f"{path.name}: {k} has the dtype {v['dtype']}, which no weights of {model_name} use")
                entries[k] = (tuple(int(d) for d in v["shape"]), dtype)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise WeightsError(f"{path.name} has a damaged safetensors header ({type(e).__name__})") from None
    return entries


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


def _torch_load(path: Path, map_location: str) -> object:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
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


def read_state_dict(
    path: str | Path, expected: ExpectedTensors | None = None, model_name: str = "this model"
) -> dict[str, torch.Tensor]:
    """Read a checkpoint as a flat dict of tensors without running any pickled code.

    With ``expected`` (what the architecture holds), everything is checked before a tensor
    is built: a zip's declared sizes, the size of the pickled description, and then every
    key, shape and dtype (from the safetensors header, or from a load onto the meta device,
    which reads no tensor data). At most ``settings.max_checkpoint_loads`` files are read at once.
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
    if expected is not None:
        if path.stat().st_size > expected.limit_bytes + expected.header_limit_bytes:
            raise WeightsError(
                f"{path.name} is {_mb(path.stat().st_size)}, larger than any checkpoint of {model_name} can be "
                f"({_mb(expected.total_bytes)} of weights); refused"
            )
        if kind == "zip":
            check_torch_zip(path, expected, model_name)
        elif kind == "legacy":
            check_legacy_pickles(path, expected, model_name)
    with cancel.holding(_LOAD_SLOTS):
        if kind == "safetensors":
            if expected is not None:
                check_entries(safetensors_entries(path, expected, model_name), expected, model_name)
            from safetensors.torch import load_file

            try:
                obj = load_file(str(path), device="cpu")
            except Exception as e:  # offsets that do not add up, a truncated file
                raise WeightsError(f"{path.name} could not be read as safetensors: {str(e)[:200]}") from e
            if any(k.endswith(_SCALE) for k in obj):  # this app's own packed file (train --out)
                obj = unpack_state(obj)
        else:
            if expected is not None:
                meta = _unwrap(_torch_load(path, "meta"), path.name)
                check_entries({k: (tuple(v.shape), v.dtype) for k, v in meta.items()}, expected, model_name)
            obj = _torch_load(path, "cpu")
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
    """Raise ``WeightsError`` naming the first mismatching keys, shapes and dtypes."""
    check_entries({k: (tuple(v.shape), v.dtype) for k, v in state.items()}, ExpectedTensors.of(model), model_name)


def load_into(model: nn.Module, state: dict[str, torch.Tensor], model_name: str, *, assign: bool = False) -> None:
    """Copy ``state`` into ``model``; with ``assign`` (a model built on the meta device), take the
    checkpoint's tensors as the parameters, cast to the model's dtypes, so one copy is held."""
    check_fits(model, state, model_name)
    if assign:
        want = model.state_dict()
        state = {k: v.to(want[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=assign)
    if assign and any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise WeightsError(f"{model_name} has tensors that a state_dict does not carry; load it into a built model")


# --------------------------------------------------------------------------- bundled weights
# Small networks trained here ship as safetensors. Large float tensors are stored as int8 with
# one float scale per output channel (the d2l GoogLeNet would be 24 MB in float32, 6 MB so);
# the accuracy in the training record is measured on the weights after this round trip.

QUANT_MIN_NUMEL = 32_768


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
            if v.dim() < 2 or tuple(scale.shape) != (v.shape[0],):  # one scale per output channel, no broadcast
                raise WeightsError(f"{k}: a packed tensor of shape {list(v.shape)} with a scale of {list(scale.shape)}")
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
    for shipped in (src.path, src.record_path):
        if not shipped.is_file():
            raise IncompleteInstall(
                f"{shipped} is missing: it ships with cnndemo, so the installation is incomplete. Reinstall "
                "cnndemo, or restore assets/weights from the repository.")
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
