"""Limits that keep one client from costing the whole class.

- ``ClientGuard`` (ASGI middleware): a ``session_hash`` is 1-64 letters, digits, ``-`` or
  ``_`` wherever it arrives (path, query, JSON or form body), so a request cannot make Gradio
  keep a session under a megabyte-long name. Bodies of the queue, the component server and
  cancel are capped before Gradio reads them. Uploads are refused once the upload folder
  holds its quota (``settings``).
- ``install_queue_limits``: a browser session may hold ``queue_per_session`` network-running
  events (queued or running), and a client address ``queue_per_ip``; the rest of the queue
  stays free for everybody else. Refusals say why, with a 429.
- ``SessionBlobs``: the Sketchpad uploads its layers through ``accept_blobs`` before an
  event reads them. Gradio's store is process-wide, unbounded, and keyed by an id the client
  chooses; this one is keyed by (session, id), caps each blob, each session and the total,
  and forgets what is not used within ``BLOB_TTL_S``.
- ``install_disconnect_cancel``: a client that goes away (tab closed, connection dropped)
  has its running work cancelled, as an explicit cancel would.
- ``install_input_checks``: every input of every event is checked against its component
  (type, choices, range, length) before Gradio converts it, and a refusal names the
  parameter and what it accepts.
- ``UploadFolder``: the app's own upload folder, emptied at start (what a killed server left),
  with abandoned partial uploads swept.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import inspect
import ipaddress
import json
import logging
import math
import re
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path
from urllib.parse import parse_qs

import gradio as gr
from fastapi import HTTPException
from gradio.components.image_editor import EditorDataBlobs
from gradio.utils import InvalidPathError

from .. import settings
from .serving import NOT_UPLOADED, PRIVATE_URL

log = logging.getLogger("cnndemo")


SESSION_HASH = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The limits (settings.py): events a session / an address may hold at once (of them, heavy ones:
# attributions, benchmarks, training), proxies in front of the app, gr.State's time to live
# (a trained network is ~43 MB), sessions Gradio keeps (each ~375 KB of config copies: 1,000
# sessions measured +366 MB, so Gradio's default of 10,000 could hold 3.7 GB), the upload quota.
# Text a person types (a class name, a block or layer name): no real one is longer.
MAX_TEXT = 200
# The Sketchpad's blobs: a 280 x 280 canvas is ~50 KB as PNG.
BLOB_MAX_BYTES = 2 << 20
BLOB_SESSION_BYTES = 8 << 20
BLOB_TOTAL_BYTES = 64 << 20
BLOB_MAX_LAYERS = 4
BLOB_TTL_S = 600.0
# Request bodies Gradio would read whole: an inline image may be 25 MB, so ~34 MB as base64.
BODY_CAPS = {"/queue/join": 40 << 20, "/call/": 40 << 20, "/component_server": BLOB_MAX_BYTES + (64 << 10),
             "/cancel": 64 << 10}

# The session of the request being handled (set by the middleware and around each event).
CLIENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("cnndemo_client", default=None)


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_session_hash(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not SESSION_HASH.fullmatch(value):
        shown = f"{len(value):,} characters" if isinstance(value, str) else type(value).__name__
        raise Refused(400, f"session_hash must be 1-64 letters, digits, '-' or '_' (got {shown}).")


_SESSION_IN_JSON = re.compile(rb'(?<!\\)"session_hash"\s*:\s*("(?:[^"\\]|\\.)*"|null|-?[\d.]+|true|false)')
_SESSION_IN_FORM = re.compile(rb'name="session_hash"\r\n\r\n([^\r]*)\r\n')


def sessions_in_body(body: bytes, content_type: str) -> list[object]:
    """Every ``session_hash`` a body carries (all of them are checked: a nested decoy cannot
    hide a bad top-level one)."""
    if content_type.startswith("multipart/form-data"):
        return [m.decode("utf-8", "replace") for m in _SESSION_IN_FORM.findall(body)]
    out = []
    for raw in _SESSION_IN_JSON.findall(body):
        try:
            out.append(json.loads(raw))
        except ValueError:
            out.append(raw.decode("utf-8", "replace"))
    return out


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}


def client_address(scope_or_request) -> str | None:
    """The client's address where it is known: the peer, or the address the last of
    ``PROXY_HOPS`` proxies saw. A loopback peer with no proxy header is not a client address
    (a reverse proxy on this machine, or the tests): None."""
    scope = getattr(scope_or_request, "scope", scope_or_request)
    headers = _headers(scope)
    peer = (scope.get("client") or (None,))[0]
    hops_n = settings.get().hops
    if hops_n > 0:
        hops = [h.strip() for h in headers.get("x-forwarded-for", "").split(",") if h.strip()]
        if len(hops) >= hops_n:
            return hops[-hops_n]
    try:
        if peer is None or ipaddress.ip_address(peer).is_loopback:
            return None
    except ValueError:
        return None
    return peer


class UploadFolder:
    """Gradio's upload folder as this app uses it: owned by one running server (a lock file),
    emptied at start, bounded by a byte quota, with abandoned partial uploads swept."""

    # A temporary upload file not written for this long is abandoned; the sweep looks this often.
    def __init__(self, path: Path, quota: int | None = None):
        self.path = Path(path)
        self.quota = settings.get().upload_quota_bytes if quota is None else quota
        self.partial_after_s = settings.get().partial_upload_s
        self.sweep_every_s = self.partial_after_s / 5
        self._lock_file = None
        self._used = 0
        self._measured_at = -math.inf
        self._in_flight = 0
        self._guard = threading.Lock()

    @classmethod
    def default(cls) -> UploadFolder:
        """``GRADIO_TEMP_DIR``, or a folder of this app's own (set for Gradio before any
        component is built, so Gradio's shared /tmp/gradio is never emptied)."""
        settings.export_default("GRADIO_TEMP_DIR", str(settings.get().upload_folder))
        return cls(settings.get().upload_folder)

    def claim(self) -> bool:
        """Own the folder for this server; empty it unless another live server owns it. Call
        it before any component is built (they cache the example files there)."""
        if self._lock_file is not None:
            return True
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / ".cnndemo-server.lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            log.warning("%s is in use by another running server: not emptied. Give each server its own "
                        "GRADIO_TEMP_DIR.", self.path)
            return False
        self._lock_file = f
        removed = self.clear()
        if removed:
            log.info("emptied %s: %.1f MB left by an earlier run", self.path, removed / 2**20)
        return True

    def clear(self) -> int:
        """Remove everything in the folder but the lock file; return the bytes removed."""
        removed = 0
        for entry in self.path.iterdir():
            if entry.name == ".cnndemo-server.lock":
                continue
            removed += self._size(entry)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        self._measured_at = -math.inf
        return removed

    @staticmethod
    def _size(entry: Path) -> int:
        try:
            if entry.is_file() or entry.is_symlink():
                return entry.lstat().st_size
            return sum(p.lstat().st_size for p in entry.rglob("*") if p.is_file())
        except OSError:
            return 0

    def used(self, max_age_s: float = 2.0) -> int:
        """Bytes in the folder (re-measured at most every ``max_age_s``), uploads in flight included."""
        now = time.monotonic()
        if now - self._measured_at > max_age_s:
            total = sum(self._size(e) for e in self.path.iterdir()) if self.path.is_dir() else 0
            with self._guard:
                self._used, self._measured_at = total, now
        return self._used + self._in_flight

    def sweep_partials(self) -> int:
        """Remove Gradio's temporary upload files (``tmp*`` at the top of the folder) that no
        upload has written to for ``partial_after_s``: a client that went away half-way."""
        removed = 0
        cutoff = time.time() - self.partial_after_s
        for entry in self.path.glob("tmp*"):
            try:
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    removed += entry.stat().st_size
                    entry.unlink()
            except OSError:
                pass
        return removed

    @contextlib.contextmanager
    def admit(self, declared: int):
        """Hold ``declared`` bytes for one upload, or raise ``Refused`` (507) over the quota."""
        if self.used() + declared > self.quota:
            self.sweep_partials()
            if self.used(max_age_s=0) + declared > self.quota:
                raise Refused(507, f"The server's upload space is full ({self.quota / 2**20:,.0f} MB in use). "
                                   "Try again in a few minutes, when older uploads have been cleared.")
        with self._guard:
            self._in_flight += declared
        try:
            yield
        finally:
            with self._guard:
                self._in_flight -= declared
            self._measured_at = -math.inf

    def start_sweeper(self) -> None:
        def loop():
            while True:
                time.sleep(self.sweep_every_s)
                with contextlib.suppress(OSError):
                    self.sweep_partials()

        threading.Thread(target=loop, name="cnndemo-upload-sweeper", daemon=True).start()


async def _reply(send, status: int, message: str) -> None:
    body = json.dumps({"detail": message, "error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class ClientGuard:
    """ASGI middleware: session names, body caps and the upload quota (see the module doc)."""

    def __init__(self, app, uploads: UploadFolder | None = None):
        self.app = app
        self.uploads = uploads

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            path = scope.get("path", "")
            for value in parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_hash", []):
                check_session_hash(value)
            for marker in ("/heartbeat/", "/stream/"):
                if marker in path:
                    check_session_hash(path.split(marker, 1)[1].split("/", 1)[0])
            if scope.get("method") != "POST":
                return await self.app(scope, receive, send)
            headers = _headers(scope)
            if path.endswith("/upload") and self.uploads is not None:
                declared = int(headers.get("content-length") or 0)
                with self.uploads.admit(declared):
                    return await self.app(scope, receive, send)
            route = path.rstrip("/")
            cap = next((c for part, c in BODY_CAPS.items() if route.endswith(part) or (part.endswith("/") and part in route)),
                       None)
            if cap is None:
                return await self.app(scope, receive, send)
            body = await self._read(receive, cap)
        except Refused as e:
            return await _reply(send, e.status, str(e))
        except ValueError:
            return await _reply(send, 400, "Content-Length is not a number.")
        if body is None:
            return  # the client went away
        try:
            found = sessions_in_body(body, headers.get("content-type", ""))
            for value in found:
                check_session_hash(value)
        except Refused as e:
            return await _reply(send, e.status, str(e))
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        token = CLIENT.set(found[0] if found and isinstance(found[0], str) else None)
        try:
            await self.app(scope, replay, send)
        finally:
            CLIENT.reset(token)

    @staticmethod
    async def _read(receive, cap: int) -> bytes | None:
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > cap:
                raise Refused(413, f"The request is over {cap / 2**20:.1f} MB, the limit for this route.")
            chunks.append(chunk)
            if not msg.get("more_body"):
                return b"".join(chunks)


# ----------------------------------------------------------------------------- the queue


def install_queue_limits(demo: gr.Blocks, groups: set[str], heavy: str) -> None:
    """Refuse an event (429, with the reason) when its client already holds ``queue_per_session``
    events of ``groups`` (queued or running), ``heavy_per_session`` of the ``heavy`` lane, or
    its address ``queue_per_ip`` (``settings``). The client is the browser session; a
    request without one (``/gradio_api/call/...``) is its peer's address. Gradio's own
    queue-wide ``max_size`` stays as the last resort."""
    queue = demo._queue
    stock = queue.push
    owners: dict[str, tuple[str, str | None, bool]] = {}  # event id -> (client, known address, heavy)

    def refuse(held: int, limit: int, what: str, who: str):
        verb = "have" if who == "You" else "has"
        raise HTTPException(429, f"{who} already {verb} {held} {what} waiting or running (the limit is {limit}). "
                                 f"Wait for {'it' if limit == 1 else 'one'} to finish, then try again.")

    async def push(body, request, username):
        fn = demo.fns.get(body.fn_index) if body.fn_index is not None else None
        if fn is None or fn.concurrency_id not in groups:
            return await stock(body, request, username)
        for event_id in [e for e in owners if e not in queue.event_ids_to_events]:
            owners.pop(event_id, None)
        address = client_address(request)
        peer = (request.scope.get("client") or ("?",))[0]
        client = f"session:{body.session_hash}" if body.session_hash else f"address:{address or peer}"
        who = "You" if body.session_hash else "This client (no session)"
        is_heavy = fn.concurrency_id == heavy
        mine = [h for c, _a, h in owners.values() if c == client]
        limits = settings.get()
        if limits.queue_per_session > 0 and len(mine) >= limits.queue_per_session:
            refuse(len(mine), limits.queue_per_session, "requests", who)
        if is_heavy and limits.heavy_per_session > 0 and sum(mine) >= limits.heavy_per_session:
            refuse(sum(mine), limits.heavy_per_session, "long job (an attribution, a benchmark or a training)", who)
        if address is not None and limits.queue_per_ip > 0:
            held = sum(1 for _c, a, _h in owners.values() if a == address)
            if held >= limits.queue_per_ip:
                refuse(held, limits.queue_per_ip, "requests", "Your network address")
        ok, event_id, state = await stock(body, request, username)
        if ok:
            owners[event_id] = (client, address, is_heavy)
        return ok, event_id, state

    queue.push = push


def install_disconnect_cancel(demo: gr.Blocks) -> None:
    """Stop the work of a client that went away (tab closed, connection dropped) as an explicit
    cancel does. Gradio notices the lost event stream and marks the client's running jobs as
    no longer alive, but lets them run to the end; here their tasks are cancelled too, which
    sets each request's ``cnndemo.cancel`` token (``serving.cancellable``). Work that an
    identical request still waits for goes on for it (``shared``)."""
    queue = demo._queue
    stock = queue.clean_events

    async def clean_events(*, session_hash: str | None = None, event_id: str | None = None) -> None:
        gone = {job._id for jobs in queue.active_jobs if jobs for job in jobs
                if job.session_hash == session_hash or job._id == event_id}
        await stock(session_hash=session_hash, event_id=event_id)
        if not gone:
            return
        for task in asyncio.all_tasks():
            name = task.get_name()
            if "<gradio-sep>" in name and name.rsplit("<gradio-sep>", 1)[1] in gone:
                log.info("cancelling event %s: its client went away", name.rsplit("<gradio-sep>", 1)[1])
                task.cancel()

    queue.clean_events = clean_events


def install_session_context(demo: gr.Blocks) -> None:
    """Each event's pre-processing runs with ``CLIENT`` set to its session (the Sketchpad's
    blobs are looked up by it)."""
    stock = demo.process_api

    async def process_api(*args, **kwargs):
        token = CLIENT.set(kwargs.get("session_hash"))
        try:
            return await stock(*args, **kwargs)
        finally:
            CLIENT.reset(token)

    demo.process_api = process_api


# ----------------------------------------------------------------------------- Sketchpad blobs


class SessionBlobs:
    """Stands in for ``ImageEditor.blob_storage``: keyed by (session, id), bounded in bytes per
    blob, per session and in total, and forgotten after ``BLOB_TTL_S``."""

    def __init__(self):
        self._items: OrderedDict[tuple, tuple[EditorDataBlobs, float]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(blob_id) -> tuple:
        return (CLIENT.get(), str(blob_id))

    @staticmethod
    def _bytes(blobs: EditorDataBlobs) -> int:
        return sum(len(b) for b in (blobs.background, blobs.composite, *blobs.layers) if b)

    def _expire(self) -> None:
        cutoff = time.monotonic() - BLOB_TTL_S
        while self._items and next(iter(self._items.values()))[1] < cutoff:
            self._items.popitem(last=False)

    def get(self, blob_id, default=None):
        with self._lock:
            self._expire()
            item = self._items.get(self._key(blob_id))
            return item[0] if item else default

    def __contains__(self, blob_id) -> bool:
        return self.get(blob_id) is not None

    def pop(self, blob_id, default=None):
        with self._lock:
            item = self._items.pop(self._key(blob_id), None)
            return item[0] if item else default

    def total_bytes(self) -> int:
        with self._lock:
            return sum(self._bytes(b) for b, _t in self._items.values())

    def put(self, blob_id: str, kind: str, index: int | None, data: bytes) -> None:
        if CLIENT.get() is None:
            raise HTTPException(400, "A drawing must be sent with its session_hash.")
        if not isinstance(blob_id, str) or not SESSION_HASH.fullmatch(blob_id):
            raise HTTPException(400, "The drawing's id must be 1-64 letters, digits, '-' or '_'.")
        if kind not in ("background", "layer", "composite"):
            raise HTTPException(400, "A drawing part is a background, a layer or a composite.")
        if kind == "layer" and (index is None or not 0 <= index < BLOB_MAX_LAYERS):
            raise HTTPException(400, f"A drawing has at most {BLOB_MAX_LAYERS} layers (index 0-{BLOB_MAX_LAYERS - 1}).")
        if len(data) > BLOB_MAX_BYTES:
            raise HTTPException(413, f"A drawing part is over {BLOB_MAX_BYTES / 2**20:.0f} MB.")
        with self._lock:
            self._expire()
            key = self._key(blob_id)
            blobs = self._items.pop(key, (EditorDataBlobs(background=None, layers=[], composite=None), 0))[0]
            if kind == "layer":
                blobs.layers.extend([None] * (index + 1 - len(blobs.layers)))
                blobs.layers[index] = data
            else:
                setattr(blobs, kind, data)
            session_bytes = self._bytes(blobs) + sum(self._bytes(b) for (s, _i), (b, _t) in self._items.items()
                                                     if s == key[0])
            if session_bytes > BLOB_SESSION_BYTES:
                raise HTTPException(413, f"Your drawings take over {BLOB_SESSION_BYTES / 2**20:.0f} MB on the server; "
                                         "send one before starting the next.")
            self._items[key] = (blobs, time.monotonic())
            total = sum(self._bytes(b) for b, _t in self._items.values())
            while total > BLOB_TOTAL_BYTES and len(self._items) > 1:  # the oldest drawings go first
                _k, (old, _t) = self._items.popitem(last=False)
                total -= self._bytes(old)


def bound_blobs(editor: gr.ImageEditor) -> gr.ImageEditor:
    """Give a Sketchpad / ImageEditor the bounded, per-session blob store (on the instance)."""
    store = SessionBlobs()
    editor.blob_storage = store

    async def accept_blobs(data):
        fields = getattr(data, "data", None) or {}
        files = getattr(data, "files", None) or []
        if not isinstance(fields, dict) or len(files) != 1:
            raise HTTPException(400, "A drawing part is sent as one file with its type, index and id.")
        raw_index = fields.get("index")
        try:
            index = int(raw_index) if raw_index not in (None, "", "null") else None
        except (TypeError, ValueError):
            raise HTTPException(400, "A drawing layer's index is a whole number.") from None
        store.put(fields.get("id"), fields.get("type"), index, files[0][1])

    accept_blobs._is_server_fn = True
    editor.accept_blobs = accept_blobs
    return editor


# ----------------------------------------------------------------------------- input checks


def _param_names(fn, n: int) -> list[str | None]:
    """The handler's parameter names for its ``n`` inputs (Request and Progress skipped)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return [None] * n
    names = [p.name for p in params
             if not isinstance(p.default, gr.Progress) and p.annotation not in (gr.Request, "gr.Request")
             and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return names[:n] + [None] * (n - len(names[:n]))


def _choices(comp) -> list:
    return [value for _label, value in (getattr(comp, "choices", None) or [])]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _shown(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else f"{type(v).__name__} of {len(v) if hasattr(v, '__len__') else '?'} items"


def check_payload(comp, value, name: str) -> None:
    """Raise ``gr.Error`` naming ``name`` and what it accepts when ``value`` cannot be this
    component's input. ``None`` is left to the handler (which says what is missing)."""
    if value is None:
        return

    def refuse(allowed: str):
        raise gr.Error(f"{name}: {allowed}; got {_shown(value)}.", print_exception=False)

    if isinstance(comp, (gr.Dropdown, gr.CheckboxGroup)):
        choices = _choices(comp)
        listed = ", ".join(map(str, choices[:12])) + (" ..." if len(choices) > 12 else "")
        custom = getattr(comp, "allow_custom_value", False)
        if isinstance(comp, gr.CheckboxGroup) or comp.multiselect:
            if not isinstance(value, list):
                refuse(f"a list of values ({listed})")
            limit = getattr(comp, "max_choices", None) or len(choices) or 32
            if len(value) > limit:
                refuse(f"at most {limit} values")
            items = value
        else:
            if isinstance(value, (list, dict, bool)):
                refuse(f"one value ({listed})" if choices else "one value (text)")
            items = [value]
        for item in items:
            if not isinstance(item, (str, int, float)) or isinstance(item, bool):
                refuse(f"values are text or numbers ({listed})")
            if isinstance(item, str) and len(item) > MAX_TEXT:
                refuse(f"at most {MAX_TEXT} characters")
            if not custom and item not in choices:
                refuse(f"one of {listed}")
    elif isinstance(comp, (gr.Slider, gr.Number)):
        lo, hi = comp.minimum, comp.maximum
        rng = f" from {lo:g} to {hi:g}" if lo is not None and hi is not None else ""
        if not _is_number(value):
            refuse(f"a number{rng}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            refuse(f"a number{rng}")
    elif isinstance(comp, gr.Radio):
        choices = _choices(comp)
        if isinstance(value, (list, dict, bool)):
            refuse(f"one of {', '.join(map(str, choices))}")
        if getattr(comp, "choices_set_at_run_time", False):  # a poll's answers: its handler checks them
            if not isinstance(value, str) or len(value) > MAX_TEXT:
                refuse(f"one answer of at most {MAX_TEXT} characters")
        elif value not in choices:
            refuse(f"one of {', '.join(map(str, choices))}")
    elif isinstance(comp, gr.Checkbox):
        if not isinstance(value, bool):
            refuse("true or false")
    elif isinstance(comp, gr.Textbox):
        if not isinstance(value, str):
            refuse("text")
        if len(value) > MAX_TEXT:
            refuse(f"at most {MAX_TEXT} characters")
    elif isinstance(comp, (gr.Image, gr.File, gr.ImageEditor)):
        if isinstance(comp, gr.File) and comp.file_count != "single" and isinstance(value, list):
            value = value[0] if value else None
        if not isinstance(value, dict):
            refuse("a file (an upload: {\"path\": ..., \"meta\": {\"_type\": \"gradio.FileData\"}})"
                   if not isinstance(comp, gr.ImageEditor) else "a drawing (background, layers, composite)")


def install_input_checks(demo: gr.Blocks) -> None:
    """Check every event's raw inputs (``check_payload``) before Gradio converts them; any other
    failure to read an input becomes a sentence rather than "Internal error"."""
    names: dict[int, list] = {}
    for fn in demo.fns.values():
        names[fn._id] = _param_names(fn.fn, len(fn.inputs)) if fn.fn is not None else [None] * len(fn.inputs)
    stock = demo.preprocess_data

    async def preprocess_data(block_fn, inputs, state, explicit_call=False):
        labels = names.get(block_fn._id) or [None] * len(block_fn.inputs)
        for comp, value, name in zip(block_fn.inputs, inputs or [], labels):
            if getattr(comp, "stateful", False):
                continue
            check_payload(comp, value, name or getattr(comp, "label", None) or type(comp).__name__.lower())
        try:
            return await stock(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except Exception as e:  # a payload of the right type but the wrong shape (pydantic, Gradio)
            # Gradio's own messages can echo a server path: say what is wrong, never what was sent.
            if "not uploaded" in str(e) or isinstance(e, InvalidPathError):
                raise gr.Error(NOT_UPLOADED, print_exception=False) from None
            if isinstance(e, ValueError) and str(e).startswith("Hostname ") and "failed validation" in str(e):
                # Gradio's guard against server-side request forgery: no fetch from a private address.
                raise gr.Error(PRIVATE_URL, print_exception=False) from None
            raise gr.Error(f"An input of this request is not in the form its parameter takes ({type(e).__name__}); "
                           "the API page lists each parameter's form.", print_exception=False) from None

    demo.preprocess_data = preprocess_data
