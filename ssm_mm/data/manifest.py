"""The dataset manifest (SPEC §4): one JSON object per line, one line per stream. Reader, validator, writer.

A line::

    {"id": "s0001", "video": "media/s0001.mp4", "audio": null, "duration": 30.0, "t0": 0.0,
     "dialogue": [{"t": 12.5, "role": "user", "text": "how many times did the dog bark?", "type": "count"},
                  {"t": 12.5, "role": "assistant", "text": "3"}],
     "segments": [{"start": 3.0, "end": 5.5, "label": "dog"}]}

Fields:

* ``id`` (required, unique non-empty string), ``duration`` (required, seconds > 0).
* ``video``, ``audio``: paths relative to the manifest's folder (absolute paths also work); at least one.
  ``audio: null`` (or no ``audio`` key) with a video means the video file's own audio track;
  ``audio: false`` declares a video-only stream.
* ``t0`` (optional, default 0): clock time of media time 0 (docs/design.md).
* ``dialogue`` (optional): turns ``{"t", "role": "user"|"assistant", "text", "type"?}`` sorted by
  ``t`` in ``[0, duration]``; ``type`` is an optional question type ("count", "color", "order", ...).
* ``segments`` (optional): ``{"start", "end", "label"}`` with ``0 <= start < end <= duration``, and
  optionally ``"attributes"``: string values describing the event (e.g. ``{"color": "brown", "size":
  "small"}``, the look of the dog that barked), targets of the recall-attribute head
  (``model.recall_attribute(s)``).

Keys the format does not define (the rule, so that a typo never silently drops data while users can
still carry their own metadata):

* A key that looks like a misspelling of a defined key *missing from the same object* is an error
  (bad input, so skipped under ``on_error="skip"``): ``"segmnets"`` without ``"segments"``,
  ``"dialog"``, ``"tpye"`` in a dialogue turn, ``"attributs"`` in a segment. "Looks like" means a
  :mod:`difflib` similarity of at least 0.8 (case-insensitive) or two adjacent letters swapped. A
  key near one that *is* present (``"uid"`` beside ``"id"``) cannot have lost anything: it is
  metadata.
* Any other unknown key is allowed: top-level ones are kept in :attr:`StreamSpec.extra` and written
  back unchanged, ones inside dialogue turns and segments are ignored. Each such key is listed once
  per manifest, with the first line using it, in one :class:`ManifestWarning` (and in
  :attr:`Manifest.unknown_keys`). Free-form ``attributes`` values are never checked.

The file must be UTF-8 (a byte-order mark at its start is accepted); a line that is not is a bad
line whose error names the offending byte and its 1-based offset in the line.

Every problem raises :class:`ManifestError` naming the manifest file, the line, the stream id and the
field; ``on_error="skip"`` drops bad streams and lists them in :attr:`Manifest.skipped` instead.
With ``check_media`` each media file is probed (opened and one packet demuxed, no decoding).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

ROLES = ("user", "assistant")
_KNOWN_KEYS = ("id", "video", "audio", "duration", "t0", "dialogue", "segments")
_TURN_KEYS = ("t", "role", "text", "type")
_SEGMENT_KEYS = ("start", "end", "label", "attributes")
_SIMILAR = 0.8  # difflib ratio from which an unknown key is taken for a misspelt one


class ManifestError(ValueError):
    """A bad manifest line. The message names the file, line, stream id and field."""

    def __init__(
        self,
        path: str | Path,
        line: int | None,
        stream_id: str | None,
        field: str | None,
        reason: str,
    ):
        self.path = Path(path)
        self.line = line
        self.stream_id = stream_id
        self.field = field
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        sid = f"stream {stream_id!r}" if stream_id is not None else "stream <unknown id>"
        fld = f", field {field!r}" if field is not None else ""
        super().__init__(f"{where}: {sid}{fld}: {reason}")


class ManifestWarning(UserWarning):
    """A manifest keeps keys that SPEC §4 does not define (said once per manifest)."""


@dataclass(frozen=True)
class Turn:
    """One dialogue turn at media time ``t`` (seconds)."""

    t: float
    role: str  # "user" | "assistant"
    text: str
    type: str | None = None  # question type of a user turn ("count", "color", "proactive", ...)


@dataclass(frozen=True)
class Segment:
    """A labeled event span ``[start, end)`` in media time (seconds)."""

    start: float
    end: float
    label: str
    attributes: dict[str, str] = field(default_factory=dict)  # e.g. {"color": "red"}; optional


@dataclass
class StreamSpec:
    """One validated manifest line. Paths are absolute (resolved against the manifest's folder)."""

    id: str
    video: Path | None
    audio: Path | None  # a separate audio file; None when there is none
    audio_from_video: bool  # the audio is the video file's own track
    duration: float
    t0: float = 0.0
    dialogue: list[Turn] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    line: int | None = None  # 1-based line in the manifest it came from
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, kept as they were

    @property
    def audio_path(self) -> Path | None:
        """The file to decode audio from (the video itself when ``audio_from_video``), or None."""
        return self.video if self.audio_from_video else self.audio

    @property
    def has_audio(self) -> bool:
        return self.audio_path is not None

    @property
    def has_video(self) -> bool:
        return self.video is not None


@dataclass
class Manifest:
    """A manifest's streams, the lines skipped (``(line, id, message)``) and its sorted segment labels."""

    path: Path
    streams: list[StreamSpec]
    skipped: list[tuple[int, str | None, str]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    # keys SPEC §4 does not define -> the first line using them ("dialogue[].KEY" / "segments[].KEY")
    unknown_keys: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.streams)

    def __iter__(self):
        return iter(self.streams)

    def __getitem__(self, i: int) -> StreamSpec:
        return self.streams[i]


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


class _Line:
    """Validation context of one line: raises ManifestError with file, line and id filled in."""

    def __init__(self, path: Path, line: int):
        self.path, self.line, self.id = path, line, None
        self.unknown: list[str] = []  # unknown keys this line uses (metadata, not misspellings)

    def fail(self, fld: str | None, reason: str) -> NoReturn:
        raise ManifestError(self.path, self.line, self.id, fld, reason)

    def keys(self, obj: dict, known: tuple[str, ...], prefix: str = "", where: str = "") -> None:
        """Fail on a key of ``obj`` that looks like a misspelt ``known`` key missing from ``obj``;
        note the other unknown keys (``where`` + key, e.g. ``"dialogue[].speaker"``)."""
        for key in obj:
            if key in known:
                continue
            near = _misspelt(key, [k for k in known if k not in obj])
            if near is not None:
                self.fail(f"{prefix}{key}", f"unknown key {key!r} (did you mean {near!r}?)")
            self.unknown.append(f"{where}{key}")

    def entries(self, obj: dict, key: str, known: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
        """(field name ``"key[i]"``, object) for each entry of the list ``obj[key]`` (missing or null:
        none), failing on a value that is not a list or an entry that is not an object and checking
        each entry's keys against ``known`` (see :meth:`keys`) as it is reached."""
        raw = obj.get(key)
        if raw is None:
            return
        if not isinstance(raw, list):
            self.fail(key, f"must be a list, got {type(raw).__name__}")
        for i, item in enumerate(raw):
            f = f"{key}[{i}]"
            if not isinstance(item, dict):
                self.fail(f, f"must be an object, got {item!r}")
            self.keys(item, known, f"{f}.", f"{key}[].")
            yield f, item

    def number(self, obj: dict, key: str, fld: str, *, required: bool = True, default: float = 0.0) -> float:
        if key not in obj or obj[key] is None:
            if required:
                self.fail(fld, "missing")
            return default
        v = obj[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(fld, f"must be a number, got {v!r}")
        if not math.isfinite(v):
            self.fail(fld, f"must be finite, got {v!r}")
        return float(v)

    def text(self, obj: dict, key: str, fld: str) -> str:
        v = obj.get(key)
        if v is None:
            self.fail(fld, "missing")
        if not isinstance(v, str):
            self.fail(fld, f"must be a string, got {v!r}")
        if not v.strip():
            self.fail(fld, "empty text")
        return v

    def time(self, obj: dict, key: str, fld: str, duration: float) -> float:
        t = self.number(obj, key, fld)
        if t < 0:
            self.fail(fld, f"negative time {t}")
        if t > duration:
            self.fail(fld, f"time {t} is past the stream's duration {duration}")
        return t


def _misspelt(key: str, candidates: list[str]) -> str | None:
    """The candidate that ``key`` most likely misspells, or None (rule in the module docstring)."""
    if not candidates:
        return None
    low = key.lower()
    for c in candidates:  # a swap of two adjacent letters ("tpye") scores low in difflib's ratio
        if len(c) == len(low) and low != c and sorted(low) == sorted(c):
            diff = [i for i in range(len(c)) if low[i] != c[i]]
            if len(diff) == 2 and diff[1] == diff[0] + 1:
                return c
    close = difflib.get_close_matches(low, candidates, n=1, cutoff=_SIMILAR)  # candidates are lowercase
    return close[0] if close else None


def _decode_line(raw: bytes, ctx: _Line) -> str:
    """``raw`` as text, or a ManifestError naming the first byte that is not UTF-8 (and, when the line
    still parses with that byte replaced, the stream id)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        at = e.start  # failed outside this block: the message says it all, no chained traceback
    try:
        obj = json.loads(raw.decode("utf-8", errors="replace"))
    except ValueError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("id"), str):
        ctx.id = obj["id"]  # the id as far as it can be read (U+FFFD for the bad bytes)
    ctx.fail(
        None,
        f"not valid UTF-8 (byte 0x{raw[at]:02x} at byte {at + 1} of the line): save the manifest as UTF-8",
    )


def _resolve(base: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else base / q


def _parse_line(obj: Any, ctx: _Line, base: Path) -> StreamSpec:
    """Validate one decoded JSON line (everything but media files and duplicate ids)."""
    if not isinstance(obj, dict):
        ctx.fail(None, f"a line must be a JSON object, got {type(obj).__name__}")
    sid = obj.get("id")
    if isinstance(sid, str) and sid.strip():
        ctx.id = sid  # named in the errors below
    ctx.keys(obj, _KNOWN_KEYS)  # before "missing": "Duration" is better told as a misspelling
    if sid is None:
        ctx.fail("id", "missing")
    if not isinstance(sid, str) or not sid.strip():
        ctx.fail("id", f"must be a non-empty string, got {sid!r}")
    ctx.id = sid
    duration = ctx.number(obj, "duration", "duration")
    if duration <= 0:
        ctx.fail("duration", f"must be > 0, got {duration}")
    t0 = ctx.number(obj, "t0", "t0", required=False, default=0.0)

    video_raw = obj.get("video")
    if video_raw is not None and (not isinstance(video_raw, str) or not video_raw.strip()):
        ctx.fail("video", f"must be a path string or null, got {video_raw!r}")
    audio_raw = obj.get("audio")
    if (
        audio_raw is not None
        and audio_raw is not False
        and (not isinstance(audio_raw, str) or not audio_raw.strip())
    ):
        ctx.fail("audio", f"must be a path string, null or false, got {audio_raw!r}")
    video = _resolve(base, video_raw) if video_raw else None
    audio = _resolve(base, audio_raw) if isinstance(audio_raw, str) else None
    audio_from_video = video is not None and audio_raw is None
    if video is None and audio is None:
        ctx.fail("video/audio", "neither a video nor an audio file is given")

    dialogue: list[Turn] = []
    for f, turn in ctx.entries(obj, "dialogue", _TURN_KEYS):
        t = ctx.time(turn, "t", f"{f}.t", duration)
        role = turn.get("role")
        if role not in ROLES:
            ctx.fail(f"{f}.role", f"unknown role {role!r} (expected one of {list(ROLES)})")
        text = ctx.text(turn, "text", f"{f}.text")
        qtype = turn.get("type")
        if qtype is not None and (not isinstance(qtype, str) or not qtype.strip()):
            ctx.fail(f"{f}.type", f"must be a non-empty string or null, got {qtype!r}")
        if dialogue and t < dialogue[-1].t:
            ctx.fail(f"{f}.t", f"dialogue not sorted by time: {t} after {dialogue[-1].t}")
        dialogue.append(Turn(t=t, role=role, text=text, type=qtype))

    segments: list[Segment] = []
    for f, seg in ctx.entries(obj, "segments", _SEGMENT_KEYS):
        start = ctx.time(seg, "start", f"{f}.start", duration)
        end = ctx.time(seg, "end", f"{f}.end", duration)
        if start >= end:
            ctx.fail(f"{f}.end", f"segment end {end} is not after its start {start}")
        label = ctx.text(seg, "label", f"{f}.label")
        attrs = seg.get("attributes", {})
        if attrs is None:
            attrs = {}
        if not isinstance(attrs, dict):
            ctx.fail(f"{f}.attributes", f"must be an object, got {attrs!r}")
        for k in attrs:
            ctx.text(attrs, k, f"{f}.attributes.{k}")
        segments.append(Segment(start=start, end=end, label=label, attributes=dict(attrs)))

    extra = {k: v for k, v in obj.items() if k not in _KNOWN_KEYS}
    return StreamSpec(
        id=sid,
        video=video,
        audio=audio,
        audio_from_video=audio_from_video,
        duration=duration,
        t0=t0,
        dialogue=dialogue,
        segments=segments,
        line=ctx.line,
        extra=extra,
    )


def _check_media(spec: StreamSpec, ctx: _Line, cache: dict) -> None:
    """Probe the stream's files (cached per path): exist, non-empty, readable, with the streams needed."""
    from ssm_mm.media.errors import MediaError
    from ssm_mm.media.probe import probe_media

    def probe(p: Path, fld: str):
        if p not in cache:
            try:
                cache[p] = probe_media(p)
            except MediaError as e:
                cache[p] = e
        info = cache[p]
        if isinstance(info, MediaError):
            ctx.fail(fld, info.reason + f" ({p})")
        return info

    if spec.video is not None:
        info = probe(spec.video, "video")
        if not info.has_video:
            ctx.fail("video", f"no video stream in {spec.video}")
        if spec.audio_from_video and not info.has_audio:
            ctx.fail("audio", f"audio is null (the video's own track) but {spec.video} has no audio stream")
    if spec.audio is not None:
        info = probe(spec.audio, "audio")
        if not info.has_audio:
            ctx.fail("audio", f"no audio stream in {spec.audio}")


def read_manifest(path: str | Path, on_error: str = "raise", check_media: bool = True) -> Manifest:
    """Read and validate a JSONL manifest.

    Args:
        path: the ``.jsonl`` file; media paths in it are relative to its folder.
        on_error: ``"raise"`` stops at the first bad line with a :class:`ManifestError`; ``"skip"``
            leaves bad lines out and records ``(line, id, message)`` in :attr:`Manifest.skipped`.
        check_media: probe every media file (exists, non-empty, opens, has the needed streams).

    Blank lines are ignored. Duplicate ids are errors (the later line is the bad one). A line that
    is not UTF-8 and a misspelt key are bad lines; other unknown keys are allowed and named in one
    :class:`ManifestWarning` per call (module docstring).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path = Path(path)
    if not path.is_file():
        raise ManifestError(path, None, None, None, "manifest file not found")
    base = path.resolve().parent
    streams: list[StreamSpec] = []
    skipped: list[tuple[int, str | None, str]] = []
    seen: dict[str, int] = {}
    cache: dict = {}
    unknown: dict[str, int] = {}
    # bytes, decoded line by line, so that a bad byte is one bad line (named, skippable), not the file
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a BOM written by some editors
                raw = raw[3:]
            if not raw.strip():
                continue
            ctx = _Line(path, lineno)
            try:
                text = _decode_line(raw, ctx)
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    ctx.fail(None, f"malformed JSON ({e.msg} at column {e.colno})")
                spec = _parse_line(obj, ctx, base)
                if spec.id in seen:
                    ctx.fail("id", f"duplicate id (first used on line {seen[spec.id]})")
                if check_media:
                    _check_media(spec, ctx, cache)
            except ManifestError as e:
                if on_error == "raise":
                    raise
                skipped.append((lineno, e.stream_id, str(e)))
                continue
            seen[spec.id] = lineno
            streams.append(spec)
            for key in ctx.unknown:
                unknown.setdefault(key, lineno)
    if unknown:
        _warn_unknown(path, unknown, stacklevel=3)
    labels = sorted({s.label for spec in streams for s in spec.segments})
    return Manifest(path=path, streams=streams, skipped=skipped, labels=labels, unknown_keys=unknown)


def _warn_unknown(path: Path, unknown: dict[str, int], stacklevel: int, limit: int = 10) -> None:
    """One warning naming every key SPEC §4 does not define (the first ``limit``) and its first line."""
    keys = [f"{k!r} (line {line})" for k, line in unknown.items()]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    warnings.warn(
        f"{path}: keys the manifest format does not define (kept as metadata at the top level, "
        f"ignored in dialogue turns and segments): {', '.join(keys[:limit])}{more}",
        ManifestWarning,
        stacklevel=stacklevel,
    )


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def _rel(p: Path, base: Path) -> str:
    """``p`` relative to ``base`` when it is below or beside it, else absolute (always '/'-separated)."""
    p = Path(p).resolve()  # resolved like ``base``: through a symlinked folder both name one place
    try:
        rel = os.path.relpath(p, base)
    except ValueError:  # another drive on Windows
        return p.as_posix()
    return Path(rel).as_posix()


def stream_to_json(spec: StreamSpec, base: Path) -> dict[str, Any]:
    """One stream as its manifest object (paths relative to ``base``)."""
    obj: dict[str, Any] = {"id": spec.id}
    obj["video"] = _rel(spec.video, base) if spec.video is not None else None
    if spec.audio is not None:
        obj["audio"] = _rel(spec.audio, base)
    else:
        obj["audio"] = None if spec.audio_from_video else False
    obj["duration"] = spec.duration
    if spec.t0 != 0.0:
        obj["t0"] = spec.t0
    turns = []
    for turn in spec.dialogue:
        d: dict[str, Any] = {"t": turn.t, "role": turn.role, "text": turn.text}
        if turn.type is not None:
            d["type"] = turn.type
        turns.append(d)
    obj["dialogue"] = turns
    obj["segments"] = [
        {
            "start": s.start,
            "end": s.end,
            "label": s.label,
            **({"attributes": s.attributes} if s.attributes else {}),
        }
        for s in spec.segments
    ]
    for k, v in spec.extra.items():
        obj.setdefault(k, v)
    return obj


def write_manifest(streams, path: str | Path) -> Path:
    """Write ``streams`` (StreamSpecs) as a JSONL manifest at ``path``; media paths become relative to
    its folder. Written to a temporary file and renamed, so a reader never sees half a manifest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    ids: set[str] = set()
    lines = []
    for spec in streams:
        if spec.id in ids:
            raise ValueError(f"duplicate stream id {spec.id!r}")
        ids.add(spec.id)
        lines.append(json.dumps(stream_to_json(spec, base), ensure_ascii=False))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)
    return path
