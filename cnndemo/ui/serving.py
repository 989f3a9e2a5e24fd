"""What a public server needs around the handlers: file inputs that open only uploads, work
that stops when its client goes away, and output files that concurrent requests cannot
truncate.

- ``guard_files``: Gradio checks that an input file lies in its upload folder only for
  payloads that carry ``meta: {"_type": "gradio.FileData"}``. A payload without ``meta``
  reaches ``preprocess`` with any server path, and stock components open it. Every file
  input of this app is wrapped so that it opens only Gradio's uploads or the shipped
  examples, and refuses anything else with one message that does not depend on what exists.
  Inline ``data:`` images are decoded here, so the pixel cap is checked on their header
  before any decoding.
- ``cancellable``: Gradio cancels the asyncio task of an abandoned request, but a sync
  handler's thread runs on. The wrapper runs the handler in a thread that carries a
  ``cnndemo.cancel`` token and sets it when the task is cancelled; the library's long loops
  then stop within a batch.
- ``install_atomic_cache_writes``: Gradio names an output image by a hash of its bytes and
  writes it in place, so two requests that produce the same image truncate each other's
  download. Writing to a temporary name and renaming makes every reader see a whole file.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import functools
import hashlib
import inspect
import io
import os
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Callable

import anyio
import gradio as gr
from gradio import processing_utils
from gradio import utils as gr_utils
from gradio.data_classes import FileData, GradioModel, GradioRootModel

from .. import cancel
from ..paths import EXAMPLES_DIR
from .. import settings
from ..images import ImageError, check_header
from ..shared import RESULTS

NOT_UPLOADED = (
    "This file was not uploaded to the app. Send the file itself (as an upload), not a path on the server."
)
PRIVATE_URL = (
    "The file's URL is on a private address (this server, or a machine on its network), which the app does not "
    "fetch from. Send the file itself (an upload, or a data: URL), or a public URL."
)


# ----------------------------------------------------------------------------- file inputs


def upload_roots() -> list[Path]:
    """Where a request's input files may lie: Gradio's upload folder and the shipped examples."""
    return [Path(gr_utils.get_upload_folder()).resolve(), EXAMPLES_DIR.resolve()]


def check_uploaded(path: str | os.PathLike) -> str:
    """The real path of an uploaded file, or ``gr.Error(NOT_UPLOADED)`` for anything else.

    Symbolic links are resolved first, and the refusal is the same whether or not the path
    exists, so the answer reveals nothing about the server's files.
    """
    try:
        real = Path(os.fspath(path)).resolve()
    except (OSError, RuntimeError, TypeError, ValueError):
        raise gr.Error(NOT_UPLOADED, print_exception=False) from None
    if not any(real.is_relative_to(root) for root in upload_roots()):
        raise gr.Error(NOT_UPLOADED, print_exception=False)
    return str(real)


def decode_data_url(url: str) -> bytes:
    """The bytes of an inline ``data:...;base64,`` image, size-capped before decoding."""
    head, _, body = url.partition(",")
    if not head.startswith("data:") or not head.endswith(";base64"):
        raise gr.Error("Inline images must be base64 data URLs.", print_exception=False)
    if len(body) > (settings.get().max_image_bytes * 4) // 3 + 4:
        raise gr.Error(
            f"The inline image is over {settings.get().max_image_bytes / 2**20:.1f} MB, the limit for images.", print_exception=False
        )
    try:
        return base64.b64decode(body, validate=False)
    except (binascii.Error, ValueError):
        raise gr.Error("The inline image is not valid base64.", print_exception=False) from None


def check_image_header(data: bytes) -> None:
    """Refuse an image whose header declares too many pixels, before anything decodes it."""
    try:
        check_header(data, "the inline image")
    except ImageError as e:
        raise gr.Error(str(e), print_exception=False) from None


def _walk_files(payload, visit) -> None:
    """Call ``visit`` on every FileData inside a component payload."""
    if payload is None:
        return
    if isinstance(payload, FileData):
        visit(payload)
    elif isinstance(payload, GradioRootModel):
        _walk_files(payload.root, visit)
    elif isinstance(payload, GradioModel):
        for name in type(payload).model_fields:
            _walk_files(getattr(payload, name), visit)
    elif isinstance(payload, (list, tuple)):
        for item in payload:
            _walk_files(item, visit)


def guard_files(component: gr.components.Component, *, images: bool = False):
    """Wrap ``component.preprocess`` so it opens only uploaded files (and checks image headers).

    Set on the instance: a subclass would make Gradio write a .pyi stub next to this file.
    """
    stock = component.preprocess

    def visit(fd: FileData) -> None:
        if fd.url and fd.url.startswith("data:"):
            if images:
                check_image_header(decode_data_url(fd.url))
            return
        fd.path = check_uploaded(fd.path)

    def preprocess(payload):
        _walk_files(payload, visit)
        blobs = getattr(component, "blob_storage", None)
        if images and blobs is not None and getattr(payload, "id", None):
            cached = blobs.get(payload.id)
            for data in (getattr(cached, "background", None), getattr(cached, "composite", None),
                         *(getattr(cached, "layers", None) or [])):
                if data:
                    check_image_header(bytes(data))
        return stock(payload)

    component.preprocess = preprocess
    return component


def image_input(**kwargs) -> gr.Image:
    """A ``gr.Image`` that hands the handler the uploaded file untouched (or an inline image's
    bytes): ``cnndemo.images`` then says exactly what is wrong with a bad one, and checks the
    pixel count from the header before decoding. Only uploads and the examples are opened."""
    comp = gr.Image(type="filepath", image_mode=None, **kwargs)

    def preprocess(payload):
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            return decode_data_url(payload.url)
        if payload.path is None:
            raise gr.Error("No image was sent.", print_exception=False)
        return check_uploaded(payload.path)

    comp.preprocess = preprocess
    return comp


# ----------------------------------------------------------------------------- cancellation


async def _in_thread(ctx: contextvars.Context, call):
    """Run ``call`` in Gradio's worker pool (anyio's limiter, sized by ``max_threads``), in
    ``ctx``; a cancelled await returns at once and leaves the thread to stop at its next check."""
    return await anyio.to_thread.run_sync(ctx.run, call, abandon_on_cancel=True)


def cancellable(fn):
    """Run a sync handler (or generator) in a worker thread that stops when the request is
    cancelled: the thread carries a ``cnndemo.cancel`` token, set as soon as Gradio cancels
    the request's task. Gradio still injects ``gr.Progress`` and ``gr.Request`` (the
    signature is kept)."""

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        async def agen(*args, **kwargs):
            token = threading.Event()
            with cancel.cancellable(token):
                ctx = contextvars.copy_context()
            gen = ctx.run(fn, *args, **kwargs)
            done = object()
            try:
                while True:
                    item = await _in_thread(ctx, lambda: next(gen, done))
                    if item is done:
                        return
                    yield item
            finally:  # finished, failed, or cancelled (CancelledError / GeneratorExit)
                token.set()
                try:
                    gen.close()
                except ValueError:  # a step is still running: it stops at its next check
                    pass

        return agen

    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        token = threading.Event()
        with cancel.cancellable(token):
            ctx = contextvars.copy_context()
        try:
            return await _in_thread(ctx, functools.partial(fn, *args, **kwargs))
        except asyncio.CancelledError:
            token.set()
            raise

    return wrapper


# ----------------------------------------------------------------------------- output files


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# Pictures already encoded, by the image object: a shared result (the same panel for a whole
# class) is sent as the file encoded for the first request instead of being encoded again
# (a large panel takes ~0.3 s to encode). Entries go with their image.
_ENCODED: dict[int, tuple[weakref.ref, dict]] = {}
_ENCODED_LOCK = threading.Lock()


def _forget(image_id: int):
    def callback(_ref):
        with _ENCODED_LOCK:
            _ENCODED.pop(image_id, None)

    return callback


def encode_picture(img, format: str = "webp") -> bytes:
    """An output picture's bytes. WebP at the fastest effort (``method=0``): a 1248 x 741 branch
    panel takes 38 ms instead of 118 for a file about a quarter larger, at the same quality."""
    if format.lower() != "webp":
        return processing_utils.encode_pil_to_bytes(img, format)
    buf = io.BytesIO()
    img.save(buf, format="webp", method=0, quality=80)
    return buf.getvalue()


def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """Gradio's ``save_pil_to_cache`` (same content-hash naming), written atomically; an image
    object encoded before (and still in Gradio's cache) is not encoded again. Pictures are
    never drawn on after they are made, so the same object means the same pixels."""
    key = (str(cache_dir), name, format)
    with _ENCODED_LOCK:
        ref, paths = _ENCODED.get(id(img), (None, {}))
        known = paths.get(key) if ref is not None and ref() is img else None
    if known is not None and os.path.exists(known):
        return known
    data = encode_picture(img, format)
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    path = (folder / f"{name}.{format}").resolve()
    _atomic_write(path, data)
    try:
        with _ENCODED_LOCK:
            entry = _ENCODED.get(id(img))
            if entry is None or entry[0]() is not img:
                entry = _ENCODED[id(img)] = (weakref.ref(img, _forget(id(img))), {})
            entry[1][key] = str(path)
    except TypeError:  # an image type that cannot be weakly referenced: encoded every time
        pass
    return str(path)


def save_bytes_to_cache(data: bytes, file_name: str, cache_dir: str) -> str:
    """Gradio's ``save_bytes_to_cache`` (same naming), written atomically."""
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    if not Path(file_name).suffix:
        file_name += processing_utils.detect_audio_format(data)
    path = folder / Path(file_name).name
    _atomic_write(path, data)
    return str(path.resolve())


def install_atomic_cache_writes() -> None:
    """Replace Gradio's two in-place cache writers (every component looks them up on the
    module, so this covers images, galleries and byte outputs alike). Idempotent."""
    processing_utils.save_pil_to_cache = save_pil_to_cache
    processing_utils.save_bytes_to_cache = save_bytes_to_cache


def shared_download(key: tuple, name: str, make: Callable[[], bytes]) -> str:
    """The file every request for the same result is offered (``key``: what was computed, never
    who asked): written once, atomically, inside Gradio's cache, in a folder named by the
    result, and written again if Gradio's sweep has removed it since. Gradio serves a file
    already in its cache as it is (no copy), and its ``delete_cache`` sweep removes it with
    Gradio's own files; nothing is left elsewhere in /tmp."""
    folder = Path(gr_utils.get_upload_folder()) / "cnndemo-downloads" / hashlib.sha256(repr(key).encode()).hexdigest()[:20]
    path = folder / name

    def write(_progress=None) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, make())
        return str(path)

    # Drawn once for a class that asks at the same moment (a slide takes ~0.5 s to draw).
    written = RESULTS.get(("download", key, name), write)
    return written if path.is_file() else write()
