"""Class rooms: a teacher's view that a class follows, polls, and links that open a view.

Everything lives in this process's memory: a restart ends every room (pages say so when
they next ask). A room is opened by a teacher, who receives its secret; only requests
carrying that secret change what the room shows or run its polls. Students join with the
room's short code and receive a member id of their own, used only to answer polls once.

- ``View``: what one page shows, as plain fields (tab, model, image reference, block, branch,
  attribution method and settings, and whether Explain or a knock-out was run). ``View.parse``
  checks every field against the zoo and turns a link's query string into a view;
  ``View.query`` does the reverse.
- ``Shelf``: images a teacher showed or linked, kept by digest, so that a link or a room
  names an upload without the file travelling through anyone else's browser.
- ``Rooms``: the bounded registry (rooms, members per room, idle expiry, wrong-code rate
  limit per address).
- ``Poll``: "what will the model say?" (top-5 shuffled among distractors), "which branch
  carries most of this block?", or free text; one answer per member; counts; a reveal.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
import shutil
import tempfile
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from .errors import UserError
from .paths import EXAMPLES_DIR as EXAMPLES
from .zoo import DEFAULT_MODEL, ZOO

# No 0/O, 1/I/L: a code read off a projector is typed right. 31**6 is about 8.9e8 codes.
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LEN = 6
TABS = ("explore", "attributions", "compare", "digits")
DIGEST_CHARS = 20  # hex characters of sha256 naming a held upload (80 bits: not guessable)
MAX_TEXT = 60  # characters of a free-text answer, a target or a question kept


class RoomError(UserError):
    """A room request refused, with a sentence for the person who made it."""


def normalise_code(raw: str | None) -> str:
    """A typed code as the registry keys it: upper case, spaces and dashes dropped."""
    return "".join(ch for ch in str(raw or "").upper() if ch not in " -_\t")[: CODE_LEN * 2]


# ---------------------------------------------------------------------------- views


@dataclass(frozen=True)
class View:
    """What one page shows. Empty strings mean "the default" (a model's default block, the top
    prediction as target, and so on)."""

    tab: str = "explore"
    model: str = DEFAULT_MODEL
    image: str = ""  # "example:cat.jpg", "sha256:<hex>", or "" (no image)
    block: str = ""
    branch: str = ""
    ablate: str = ""  # "zero" or "mean" when the branch was knocked out
    method: str = "ig"
    target: str = ""
    layer: str = ""
    knobs: tuple[tuple[str, float], ...] = ()
    explain: bool = False  # the attribution was run (followers show its result)

    # Fields a link carries, in the order it writes them.
    LINK = ("tab", "model", "image", "block", "branch", "ablate", "method", "target", "layer", "explain")

    @classmethod
    def parse(cls, params: dict, shelf: Shelf | None = None) -> View:
        """A view from a link's (or a request's) fields, each checked: an unknown model, block,
        branch, method or image is refused with a sentence that says which and what exists."""
        from .attribution import METHODS, knobs as knob_specs

        raw = {k: str(v)[:200] for k, v in dict(params).items() if v is not None}
        tab = raw.get("tab") or "explore"
        if tab not in TABS:
            raise RoomError(f"Unknown tab {tab!r}: one of {', '.join(TABS)}.")
        model = raw.get("model") or DEFAULT_MODEL
        if model not in ZOO:
            raise RoomError(f"Unknown model {model!r}: one of {', '.join(ZOO)}.")
        spec = ZOO[model]
        block = raw.get("block") or ""
        names = [b.name for b in spec.blocks]
        if block and block not in names:
            raise RoomError(f"{spec.name} has no block {block!r}: it has {', '.join(names)}.")
        branch = raw.get("branch") or ""
        if branch:
            branches = [b.name for b in spec.block(block or spec.default_block).branches]
            if branch not in branches:
                raise RoomError(f"Block {block or spec.default_block} of {spec.name} has no branch {branch!r}: "
                                f"it has {', '.join(branches)}.")
        ablate = raw.get("ablate") or ""
        if ablate not in ("", "zero", "mean"):
            raise RoomError(f"ablate is 'zero' or 'mean', not {ablate!r}.")
        method = raw.get("method") or "ig"
        if method not in METHODS:
            raise RoomError(f"Unknown method {method!r}: one of {', '.join(METHODS)}.")
        image = raw.get("image") or ""
        if image and (shelf or SHELF).path(image) is None:
            raise RoomError(f"The image {image!r} is not on this server (an example name, or an upload it "
                            "still holds: uploads are kept while the server runs).")
        specs = knob_specs()
        values = []
        for name, value in raw.items():
            if name in specs:
                try:
                    number = float(value)
                except ValueError:
                    raise RoomError(f"{specs[name].label} is a number, not {value!r}.") from None
                values.append((name, min(max(number, specs[name].low), specs[name].high)))
        return cls(tab=tab, model=model, image=image, block=block, branch=branch, ablate=ablate, method=method,
                   target=raw.get("target", "")[:MAX_TEXT], layer=raw.get("layer", "")[:MAX_TEXT],
                   knobs=tuple(sorted(values)), explain=raw.get("explain", "") in ("1", "true", "True"))

    @classmethod
    def from_query(cls, query: str, shelf: Shelf | None = None) -> View:
        return cls.parse(dict(parse_qsl(query.lstrip("?"))), shelf)

    def fields(self) -> dict[str, str]:
        """The view's non-default fields, as a link writes them."""
        base = View()
        out = {}
        for name in self.LINK:
            value = getattr(self, name)
            if value != getattr(base, name) or name in ("tab", "model"):
                out[name] = ("1" if value else "") if isinstance(value, bool) else value
        out.update({k: f"{v:g}" for k, v in self.knobs})
        return {k: v for k, v in out.items() if v != ""}

    def query(self) -> str:
        return "?" + urlencode(self.fields())

    def changed(self, **kw) -> View:
        return replace(self, **kw)

    def to_json(self) -> dict:
        return {f.name: (dict(self.knobs) if f.name == "knobs" else getattr(self, f.name)) for f in fields(self)}


# ---------------------------------------------------------------------------- held images


class Shelf:
    """Images shown in a room or named by a link: examples by name, uploads by the digest of
    their bytes, copied into a folder of its own (Gradio's cache sweeps uploads after an hour).
    At most ``limit`` uploads are held; the least recently shared goes first."""

    def __init__(self, limit: int = 64, folder: Path | None = None):
        self.limit = limit
        self._folder = folder
        self._held: OrderedDict[str, Path] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def folder(self) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="cnndemo-shared-"))
        return self._folder

    @staticmethod
    def _named(path: str | Path | None) -> tuple[str, bytes | None]:
        """(reference, the file's bytes when it is named by their digest): one read of the file."""
        if not path:
            return "", None
        path = Path(path)
        example = EXAMPLES / path.name
        if example.is_file() and _same_file(path, example):
            return f"example:{path.name}", None
        try:
            data = path.read_bytes()
        except OSError:
            return "", None
        return f"sha256:{hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]}", data

    @classmethod
    def ref(cls, path: str | Path | None) -> str:
        """The reference that would name ``path`` (nothing is kept): an example by name, any
        other file by the digest of its bytes; "" for no image or a file that is gone."""
        return cls._named(path)[0]

    def put(self, path: str | Path | None) -> str:
        """The reference that names ``path`` in a view ("" for no image), held from now on."""
        ref, data = self._named(path)
        if data is None:
            return ref
        digest = ref.split(":", 1)[1]
        with self._lock:
            if ref in self._held and self._held[ref].is_file():
                self._held.move_to_end(ref)
                return ref
            kept = self.folder / f"{digest}{Path(path).suffix.lower()[:8]}"
            tmp = kept.with_suffix(kept.suffix + ".part")
            tmp.write_bytes(data)
            tmp.replace(kept)
            self._held[ref] = kept
            while len(self._held) > self.limit:
                _, old = self._held.popitem(last=False)
                old.unlink(missing_ok=True)
        return ref

    def path(self, ref: str | None) -> Path | None:
        """The file a reference names, or None when this server does not hold it."""
        ref = str(ref or "")
        if ref.startswith("example:"):
            name = ref.split(":", 1)[1]
            candidate = EXAMPLES / name
            ok = name == Path(name).name and candidate.suffix.lower() in (".jpg", ".jpeg", ".png")
            return candidate if ok and candidate.is_file() else None
        with self._lock:
            held = self._held.get(ref)
        return held if held is not None and held.is_file() else None

    def clear(self) -> None:
        with self._lock:
            self._held.clear()
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)
                self._folder = None


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


SHELF = Shelf()

# ---------------------------------------------------------------------------- polls


@dataclass
class Poll:
    """One question to the class. ``options`` empty: free text (answers normalised, the eight
    most common counted). ``truth`` is shown with the counts when the teacher reveals."""

    ident: int
    question: str
    options: list[str]
    truth: str = ""
    answers: dict[str, str] = field(default_factory=dict)
    revealed: bool = False

    def answer(self, member: str, choice: str) -> None:
        if self.revealed:
            raise RoomError("This poll is closed: the answers have been revealed.")
        if member in self.answers:
            raise RoomError("You have already answered this poll (one answer each).")
        choice = " ".join(str(choice or "").split())[:MAX_TEXT]
        if self.options and choice not in self.options:
            raise RoomError(f"Pick one of the offered answers: {', '.join(self.options)}.")
        if not choice:
            raise RoomError("Write an answer first.")
        self.answers[member] = choice if self.options else choice.lower()

    def counts(self) -> list[tuple[str, int]]:
        tally = Counter(self.answers.values())
        if self.options:
            return [(o, tally.get(o, 0)) for o in self.options]
        return tally.most_common(8)

    def public(self, member: str | None = None) -> dict:
        """What a page may see: the question and options; the counts and truth once revealed
        (the teacher's page asks with ``member=None`` and always sees the counts)."""
        out = {"id": self.ident, "question": self.question, "options": list(self.options),
               "answered": member is not None and member in self.answers, "revealed": self.revealed,
               "n": len(self.answers)}
        if self.revealed or member is None:
            out["counts"] = self.counts()
        if self.revealed:
            out["truth"] = self.truth
        return out


def prediction_poll(ident: int, model_name: str, top: list[tuple[str, float]], labels: list[str],
                    distractors: int = 3, seed: str = "") -> Poll:
    """"What will the model say?": its top-5 labels shuffled among a few other classes of the
    same label set; the truth is the real top-5 with probabilities."""
    rng = random.Random(f"{seed}:{ident}")
    mine = [label for label, _ in top]
    pool = [lab for lab in labels if lab not in mine]
    options = mine + rng.sample(pool, min(distractors, len(pool)))
    rng.shuffle(options)
    truth = f"**{model_name} said:** " + ", ".join(f"{i}. {label} ({p:.1%})" for i, (label, p) in enumerate(top, 1))
    return Poll(ident, f"What will {model_name} say? Pick its top answer.", options, truth)


def branch_poll(ident: int, block: str, shares: list[tuple[str, float]]) -> Poll:
    """"Which branch carries most of this block?": the truth is every branch's energy share."""
    best = max(shares, key=lambda s: s[1])[0] if shares else ""
    truth = (f"**{best}** carries most of {block}: "
             + ", ".join(f"{name} {share:.1%}" for name, share in shares))
    return Poll(ident, f"Which branch carries most of {block}'s output for this image?", [n for n, _ in shares], truth)


def text_poll(ident: int, question: str) -> Poll:
    question = " ".join(str(question or "").split())[:200]
    if not question:
        raise RoomError("Type the question first.")
    return Poll(ident, question, [])


# ---------------------------------------------------------------------------- rooms


@dataclass
class Room:
    code: str
    secret: str
    view: View
    version: int = 1
    touched: float = 0.0  # the teacher's last request
    members: dict[str, float] = field(default_factory=dict)  # member -> last seen
    poll: Poll | None = None
    polls: int = 0

    def following(self, now: float, within_s: float = 30.0) -> int:
        return sum(1 for seen in self.members.values() if now - seen <= within_s)


class Rooms:
    """The server's rooms, bounded: at most ``max_rooms`` at once, ``max_members`` per room
    (members not seen for ``member_idle_s`` free their place), each gone after ``idle_s``
    without a request from its teacher. Wrong codes are limited per address: ``wrong_codes``
    within a minute, then every join from that address is refused for the rest of it."""

    def __init__(self, max_rooms: int = 20, max_members: int = 60, idle_s: float = 3600.0,
                 wrong_codes: int = 10, member_idle_s: float = 120.0, clock=time.monotonic):
        self.max_rooms, self.max_members, self.idle_s = max_rooms, max_members, idle_s
        self.wrong_codes, self.member_idle_s, self.clock = wrong_codes, member_idle_s, clock
        self._rooms: dict[str, Room] = {}
        self._wrong: dict[str, deque] = {}
        self._lock = threading.Lock()

    # -- registry
    def _sweep(self, now: float) -> None:
        for code in [c for c, r in self._rooms.items() if now - r.touched > self.idle_s]:
            del self._rooms[code]
        for client in [c for c, q in self._wrong.items() if not q or now - q[-1] > 60]:
            del self._wrong[client]

    def _room(self, code: str) -> Room:
        room = self._rooms.get(normalise_code(code))
        if room is None:
            raise RoomError(f"There is no class {normalise_code(code) or '(no code)'} on this server: it ended, it was idle "
                            f"for over {self.idle_s / 60:.0f} minutes, or the server restarted.")
        return room

    def _teacher(self, code: str, secret: str | None) -> Room:
        room = self._room(code)
        if not secret or not hmac.compare_digest(str(secret), room.secret):
            raise RoomError("Only the teacher's browser can change this class.")
        room.touched = self.clock()
        return room

    def __len__(self) -> int:
        with self._lock:
            self._sweep(self.clock())
            return len(self._rooms)

    def open(self, view: View) -> tuple[str, str]:
        """A new room showing ``view``: (code, secret)."""
        with self._lock:
            now = self.clock()
            self._sweep(now)
            if len(self._rooms) >= self.max_rooms:
                raise RoomError(f"This server already runs {self.max_rooms} classes, its limit: try again when one "
                                "ends (CNNDEMO_ROOMS raises it).")
            code = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LEN))
            while code in self._rooms:
                code = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LEN))
            secret = secrets.token_urlsafe(24)
            self._rooms[code] = Room(code, secret, view, touched=now)
            return code, secret

    def close(self, code: str, secret: str) -> None:
        with self._lock:
            room = self._teacher(code, secret)
            del self._rooms[room.code]

    def join(self, code: str, client: str | None = None, member: str | None = None) -> tuple[str, str]:
        """(code, member id) for a student; ``member`` rejoins with the id held before (a
        reload). Wrong codes count against ``client``'s address."""
        client = client or "unknown"
        with self._lock:
            now = self.clock()
            self._sweep(now)
            wrong = self._wrong.setdefault(client, deque())
            while wrong and now - wrong[0] > 60:
                wrong.popleft()
            if len(wrong) >= self.wrong_codes:
                raise RoomError(f"Too many wrong class codes from this address: wait a minute "
                                f"({self.wrong_codes} per minute).")
            try:
                room = self._room(code)
            except RoomError:
                wrong.append(now)
                raise
            for m in [m for m, seen in room.members.items() if now - seen > self.member_idle_s]:
                del room.members[m]
            if member not in room.members:
                if len(room.members) >= self.max_members:
                    raise RoomError(f"Class {room.code} is full ({self.max_members} pages follow it).")
                member = secrets.token_urlsafe(12)
            room.members[member] = now
            return room.code, member

    def leave(self, code: str, member: str | None) -> None:
        """A student's page leaves: its place is freed (and its watch ends)."""
        with self._lock:
            room = self._rooms.get(normalise_code(code))
            if room is not None and member:
                room.members.pop(member, None)

    # -- the teacher's view
    def publish(self, code: str, secret: str, view: View) -> int:
        with self._lock:
            room = self._teacher(code, secret)
            if view != room.view:
                room.view = view
                room.version += 1
            return room.version

    def state(self, code: str, member: str | None = None, secret: str | None = None) -> dict:
        """What a page in the room shows now: the view (with its version), the poll as that page
        may see it, and how many pages follow. A teacher's request (with the secret) keeps the
        room alive; a student's keeps that student's place."""
        with self._lock:
            now = self.clock()
            self._sweep(now)
            room = self._room(code)
            teacher = bool(secret) and hmac.compare_digest(str(secret), room.secret)
            if teacher:
                room.touched = now
            elif member in room.members:
                room.members[member] = now
            else:
                raise RoomError(f"This page is not in class {room.code}: join it with its code.")
            return {"code": room.code, "version": room.version, "view": room.view,
                    "poll": room.poll.public(None if teacher else member) if room.poll else None,
                    "following": room.following(now), "teacher": teacher}

    # -- polls
    def open_poll(self, code: str, secret: str, make) -> Poll:
        """``make(ident, view)`` builds the poll for the room's current view."""
        with self._lock:
            room = self._teacher(code, secret)
            room.polls += 1
            view = room.view
        poll = make(room.polls, view)  # may compute a prediction: outside the lock
        with self._lock:
            room.poll = poll
        return poll

    def answer(self, code: str, member: str, choice: str) -> None:
        with self._lock:
            room = self._room(code)
            if member not in room.members:
                raise RoomError(f"This page is not in class {room.code}: join it with its code.")
            if room.poll is None:
                raise RoomError("No poll is open in this class.")
            room.members[member] = self.clock()
            room.poll.answer(member, choice)

    def reveal(self, code: str, secret: str) -> None:
        with self._lock:
            room = self._teacher(code, secret)
            if room.poll is None:
                raise RoomError("No poll is open in this class.")
            room.poll.revealed = True

    def end_poll(self, code: str, secret: str) -> None:
        with self._lock:
            self._teacher(code, secret).poll = None


def registry() -> Rooms:
    """The process's rooms, sized by the settings (``CNNDEMO_ROOMS``, ``CNNDEMO_ROOM_MEMBERS``,
    ``CNNDEMO_ROOM_IDLE``)."""
    global _REGISTRY
    if _REGISTRY is None:
        from . import settings

        s = settings.get()
        _REGISTRY = Rooms(s.rooms, s.room_members, s.room_idle_s)
    return _REGISTRY


_REGISTRY: Rooms | None = None
