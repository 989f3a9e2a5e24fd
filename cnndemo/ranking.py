"""Which inputs excite each branch channel most: the rankings behind the natural exemplars that
stand beside a feature visualisation (``featurevis``).

A ``Ranking`` keeps, for every branch of every block, each channel's best few inputs by the
channel's mean activation, and where on the channel's map the strongest unit was for each. It
is small whatever the number of inputs (``KEEP`` x channels per branch) and is built in one
pass through the network per batch, stopped after the deepest branch.

Its inputs are the held-out MNIST digits (``featurevis.held_out_ranking``) or the images of a
folder the teacher names (``folder_ranking``; in the app ``--exemplars DIR``, which
``FolderIndex`` ranks for each network in the background, with progress). A folder's ranking
is named by what it holds (each file's path, size and time), so a changed folder is ranked
again; for published weights it is also kept on disk beside the weights cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from . import cancel
from .cache import LRU
from .cancel import ProgressFn
from .errors import BadRequest, UserError
from .lanes import lower_priority
from .pipeline import prepare, resolve
from .runtime import LoadedModel
from .taps import run_until

LOG = logging.getLogger(__name__)
KEEP = 9  # the best inputs kept per channel
BATCH = 4  # images of a folder per forward pass (and per hold of the model's lock)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class Ranking:
    """For each branch ("block/branch"): each channel's best inputs, best first."""

    sources: list[str] = field(repr=False)  # what each input is: "held-out digit #12", a file's path
    top: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(repr=False)  # values, input, peak: KEEP x C
    shapes: dict[str, tuple[int, int]] = field(repr=False)  # each branch's map (H, W)
    skipped: list[str] = field(default_factory=list)  # files that could not be read as images

    def best(self, block: str, branch: str, channel: int, k: int = KEEP) -> list[tuple[int, float, tuple[int, int]]]:
        """(input index, mean activation, (y, x) of the strongest unit) of the channel's best
        ``k`` inputs (at most ``KEEP``)."""
        values, index, peak = self.top[f"{block}/{branch}"]
        w = self.shapes[f"{block}/{branch}"][1]
        return [(int(index[j, channel]), float(values[j, channel]), divmod(int(peak[j, channel]), w))
                for j in range(min(k, values.shape[0]))]

    def state(self) -> dict:
        return {"sources": self.sources, "skipped": self.skipped,
                "top": {b: {"values": v, "index": i, "peak": p, "shape": list(self.shapes[b])}
                        for b, (v, i, p) in self.top.items()}}

    @classmethod
    def from_state(cls, state: dict) -> Ranking:
        return cls(list(state["sources"]), {b: (t["values"], t["index"], t["peak"]) for b, t in state["top"].items()},
                   {b: tuple(t["shape"]) for b, t in state["top"].items()}, list(state["skipped"]))


class Ranker:
    """Builds a ``Ranking`` from batches of network inputs, keeping only each channel's best."""

    def __init__(self, lm: LoadedModel, keep: int = KEEP):
        self.lm, self.keep = lm, keep
        self.branches = [(f"{b.name}/{br.name}", br.tap_paths) for b in lm.spec.blocks for br in b.branches
                         if br.tap_paths]
        self.paths = {p for _, taps in self.branches for p in taps}
        self.top: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.shapes: dict[str, tuple[int, int]] = {}
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        """Rank a batch (N x C x H x W, as the network reads it); the model's lock is held for
        this batch only, so requests go on between batches."""
        with cancel.holding(self.lm.lock), torch.inference_mode():
            grab = run_until(self.lm.module, x.to(self.lm.device), self.paths)
            n = x.shape[0]
            for name, taps in self.branches:
                flat = torch.cat([grab[p] for p in taps], 1).float().flatten(2)
                values, peaks = flat.mean(2).cpu(), flat.argmax(2).cpu()
                index = torch.arange(self.count, self.count + n)[:, None].expand_as(values)
                if name in self.top:
                    old = self.top[name]
                    values, index, peaks = (torch.cat([a, b]) for a, b in zip(old, (values, index, peaks)))
                values, order = values.topk(min(self.keep, values.shape[0]), dim=0)
                self.top[name] = (values, index.gather(0, order), peaks.gather(0, order))
                self.shapes[name] = tuple(grab[taps[0]].shape[2:])
        self.count += n

    def ranking(self, sources: list[str], skipped: list[str] | None = None) -> Ranking:
        return Ranking(sources, self.top, self.shapes, skipped or [])


def image_files(folder: Path | str) -> list[Path]:
    """The images of a folder and its subfolders (by suffix), sorted; a clear refusal when the
    folder is missing or holds none."""
    root = Path(folder)
    if not root.is_dir():
        raise BadRequest(f"There is no folder {root}: name a folder of your images.")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise BadRequest(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return files


def fingerprint(files: Iterable[Path]) -> str:
    """Names what a folder holds: each file's path, size and modification time."""
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def cache_file(lm: LoadedModel, name: str) -> Path | None:
    """Where a ranking is kept on disk, beside the user's weights cache (torch's hub folder),
    named by the network's weights; None for weights of one session or one upload."""
    if lm.weights.kind != "pretrained":
        return None
    return Path(torch.hub.get_dir()).parent / "cnndemo" / "exemplars" / f"{lm.spec.key}-{lm.weights.ident}-{name}.pt"


def load_saved(path: Path | None) -> Ranking | None:
    """A ranking kept on disk; None when there is none, or it is damaged or of another kind."""
    if path is None or not path.is_file():
        return None
    try:
        return Ranking.from_state(torch.load(path, map_location="cpu", weights_only=True))
    except Exception:  # noqa: BLE001 (damaged or foreign: ranked again, and rewritten)
        return None


def save(ranking: Ranking, path: Path | None) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        torch.save(ranking.state(), tmp)
        os.replace(tmp, path)
    except OSError:  # a read-only cache: kept in memory only
        pass


_FOLDERS = LRU(8, name="folder rankings")


def _folder_name(files: list[Path]) -> str:
    return f"folder-{fingerprint(files)}"


def folder_file(lm: LoadedModel, folder: Path | str) -> Path | None:
    """Where ``folder_ranking`` keeps this folder's ranking, as it now stands (``cache_file``)."""
    return cache_file(lm, _folder_name(image_files(folder)))


def folder_ranking(model: LoadedModel | str, folder: Path | str, progress: ProgressFn | None = None) -> Ranking:
    """The images of a folder ranked for every branch channel of the network (each opened and
    prepared as the app does; unreadable files skipped and counted). Remembered, and kept on
    disk for published weights, until the folder changes."""
    lm = resolve(model)
    files = image_files(folder)
    name = _folder_name(files)
    key, path = (lm.ident, name), cache_file(lm, name)
    found = _FOLDERS.get(key) or load_saved(path)
    if found is None:
        found = _rank_files(lm, files, progress)
        save(found, path)
    _FOLDERS.put(key, found)
    return found


def _rank_files(lm: LoadedModel, files: list[Path], progress: ProgressFn | None) -> Ranking:
    ranker, sources, skipped, batch = Ranker(lm), [], [], []
    for n, path in enumerate(files):
        cancel.check()
        try:
            batch.append(prepare(path, lm).x)
            sources.append(str(path))
        except UserError:
            skipped.append(str(path))
        if batch and (len(batch) == BATCH or n == len(files) - 1):
            ranker.add(torch.cat(batch))
            batch = []
        if progress:
            progress((n + 1) / len(files), f"{n + 1} of {len(files)} images")
    if not sources:
        raise BadRequest(f"None of the {len(files)} files in {files[0].parent} could be read as an image.")
    return ranker.ranking(sources, skipped)


# ----------------------------------------------------------------------------- the app's folder


@dataclass
class Job:
    """One network's ranking of the folder, as far as it has got."""

    model: str  # the network's name
    fingerprint: str = ""  # what the folder held (``fingerprint``)
    done: int = 0
    total: int = 0
    ranking: Ranking | None = None
    error: str = ""
    started: bool = False  # the thread has taken it from the queue
    seconds: float | None = None  # set when finished

    @property
    def running(self) -> bool:
        return self.seconds is None


class FolderIndex:
    """The app's folder of exemplars, ranked for each network in one background thread (at a
    lower CPU priority, one batch at a time under the model's lock), in the order asked."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self._jobs: dict[tuple[str, str], Job] = {}
        self._queue: list[tuple[tuple[str, str], LoadedModel | str]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def name(self) -> str:
        """How the pages call the folder: its name only (the server's paths are not the class's business)."""
        return self.folder.name or str(self.folder)

    def _new_job(self, lm: LoadedModel) -> tuple[tuple[str, str], Job]:
        """(key, a job not started) for the folder as it now stands."""
        files = image_files(self.folder)
        fp = fingerprint(files)
        return (lm.ident, fp), Job(lm.spec.name, fp, total=len(files))

    def job(self, lm: LoadedModel) -> Job:
        """This network's ranking of the folder as it now stands, asked for if it was not."""
        key, new = self._new_job(lm)
        with self._cond:
            if key not in self._jobs:
                self._jobs[key] = new
                self._queue.append((key, lm))
                self._start()
                self._cond.notify_all()
            return self._jobs[key]

    def start_with(self, model: str) -> None:
        """Rank the folder for a network by its key (loaded in the background): the app's first."""
        with self._cond:
            self._queue.append((None, model))
            self._start()
            self._cond.notify_all()

    def jobs(self) -> list[Job]:
        with self._cond:
            return list(self._jobs.values())

    @property
    def running(self) -> bool:
        with self._cond:
            return bool(self._queue) or any(j.running for j in self._jobs.values())

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="cnndemo-exemplars", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        lower_priority()
        with cancel.cancellable(self._stop):
            while True:
                with self._cond:
                    while not self._queue and not self._stop.is_set():
                        self._cond.wait()
                    if self._stop.is_set():
                        return
                    key, model = self._queue.pop(0)
                try:
                    self._run(key, model)
                except cancel.Cancelled:
                    return

    def _run(self, key, model) -> None:
        if key is None:  # by name: load it here, then rank it unless asked for meanwhile
            try:
                lm = resolve(model)
                key, new = self._new_job(lm)
            except UserError as e:
                LOG.warning("exemplars from %s: %s", self.folder, e)
                return
            with self._cond:
                if key in self._jobs:
                    return
                self._jobs[key] = new
        else:
            lm = model
        job, t0 = self._jobs[key], time.perf_counter()
        job.started = True

        def progress(frac, _desc):
            job.done = round(frac * job.total)

        try:
            job.ranking = folder_ranking(lm, self.folder, progress)
            job.done = job.total
        except UserError as e:
            job.error = str(e)
        except cancel.Cancelled:
            job.error = "stopped"
            raise
        except Exception as e:  # noqa: BLE001 (told in the app, logged in full)
            LOG.exception("ranking %s for %s failed", self.folder, lm.spec.name)
            job.error = f"{type(e).__name__}: {e}"
        finally:
            job.seconds = time.perf_counter() - t0
        if job.ranking is not None:
            LOG.info("exemplars: %s ranked %d images of %s in %.1f s", lm.spec.name, job.total, self.folder,
                     job.seconds)

    def describe(self) -> str:
        """The header line's sentence ("" before anything was asked)."""
        with self._cond:
            jobs = list(self._jobs.values())
            waiting = len(self._queue)
        now = [j for j in jobs if j.running and j.started]  # a job asked for waits in the queue until then
        if now:
            j = now[0]
            return (f"Ranking the images of {self.name} for {j.model} in the background (the exemplars beside "
                    f"*What each branch looks for*): {j.done} of {j.total}"
                    + (f"; {waiting} more network{'s' if waiting != 1 else ''} waiting" if waiting else "") + ".")
        if waiting:
            return f"Ranking the images of {self.name} in the background: starting."
        done = [j for j in jobs if j.ranking is not None]
        failed = [j for j in jobs if j.error]
        if not jobs:
            return ""
        text = f"Exemplars from {self.name} ranked for {', '.join(j.model for j in done) or 'no network yet'}"
        if failed:
            text += f"; failed: {'; '.join(f'{j.model}: {j.error}' for j in failed)}"
        return text + "."


_INDEX: dict[str, FolderIndex] = {}
_INDEX_LOCK = threading.Lock()


def app_index(folder: str | Path | None) -> FolderIndex | None:
    """The app's one ``FolderIndex`` for ``folder`` (the setting); None when none is named."""
    if not folder:
        return None
    with _INDEX_LOCK:
        return _INDEX.setdefault(str(folder), FolderIndex(folder))
