"""Converters from public dataset annotations to our manifest (SPEC §4).

**AVE** (Tian et al., ECCV 2018; ``Annotations.txt`` and the ``trainSet/valSet/testSet.txt`` splits):
one line per annotated event, ``Category&VideoID&Quality&StartTime&EndTime`` (10 s clips, whole
seconds), e.g. ``Acoustic guitar&RUhOCu3LNXM&good&0&10``. What the released files contain and how it is
handled:

* a header line ``Category&VideoID&Quality&StartTime&EndTime`` in some copies, not in others: skipped;
* a UTF-8 BOM, CRLF line ends, trailing spaces, blank lines: tolerated;
* categories with spaces and commas (``Male speech, man speaking``): kept verbatim as the label
  (fields are split from the right, so even a category containing ``&`` would survive);
* zero-length events (``...&0&0``, present in the release): a defective line;
* the same VideoID annotated twice with different categories (45 videos in the release): a
  defective line (the later one): two full-clip labels cannot both be the per-tick event label.

Each video becomes a stream ``{VideoID}`` with media ``<media-dir>/{VideoID}.<ext>``, its own audio
track, and one segment labeled with the category.

**MUSIC-AVQA** (Li et al., CVPR 2022; ``avqa-{train,val,test}.json``): a JSON array of records like::

    {"video_id": "00000272", "question_id": 50, "type": "[\\"Audio-Visual\\", \\"Temporal\\"]",
     "question_content": "Where is the <FL> sounding instrument?", "templ_values": "[\\"first\\"]",
     "question_deleted": 0, "anser": "left"}

``type`` and ``templ_values`` are JSON-encoded lists *inside strings* (plain lists are accepted too,
and Python-literal lists with single quotes); every ``<...>`` placeholder (``<Object>``, ``<FL>``,
``<LR>``, ...) is filled in order from ``templ_values``; the answer field is spelt ``anser`` (``answer``
is accepted); ``question_deleted: 1`` marks a withdrawn question (left out and counted, not an error).
Questions about one video become one stream: for each question a user turn and an assistant turn
at the end of the clip (``t = duration``), the user turn's ``type`` being the type list joined with
``/`` (``"Audio-Visual/Temporal"``). ``--per-question`` makes one stream per question instead.

Defective lines/records raise :class:`ConvertError` naming the file, the line and the reason, or with
``skip_bad`` are left out and listed in the report; nothing is silently altered.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssm_mm.data.manifest import Segment, StreamSpec, Turn, read_manifest, write_manifest

AVE_FIELDS = "Category&VideoID&Quality&StartTime&EndTime"
AVE_HEADER = AVE_FIELDS.lower()
_PLACEHOLDER = re.compile(r"<[^<>\s]+>")
_SAFE_ID = re.compile(r"^[A-Za-z0-9_\-.]+$")  # an id that is also a safe file name


class ConvertError(ValueError):
    """A defective annotation line or record; the message names the file and the line."""

    def __init__(self, path: str | Path, line: int | None, reason: str):
        self.path, self.line, self.reason = Path(path), line, reason
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {reason}")


@dataclass
class ConvertReport:
    """What a conversion produced and what it left out."""

    streams: int = 0
    questions: int = 0
    deleted: int = 0  # MUSIC-AVQA records marked question_deleted
    skipped: list[tuple[int | None, str]] = field(default_factory=list)  # (line, reason) of defective input

    def summary(self, limit: int = 10) -> str:
        s = f"{self.streams} streams"
        if self.questions:
            s += f", {self.questions} questions"
        if self.deleted:
            s += f", {self.deleted} deleted questions left out"
        if self.skipped:
            s += f"; skipped {len(self.skipped)} defective lines:"
            for line, reason in self.skipped[:limit]:
                s += f"\n  line {line}: {reason}"
            if len(self.skipped) > limit:
                s += f"\n  ... and {len(self.skipped) - limit} more"
        return s


class _Bad(Exception):
    """Internal: a defective line (reason); turned into ConvertError or a counted skip."""


def _media_path(media_dir: str | Path, vid: str, ext: str) -> Path:
    ext = ext.lstrip(".")
    if not ext or "/" in ext or "\\" in ext:
        raise ValueError(f"bad media extension {ext!r}")
    return Path(media_dir).expanduser().resolve() / f"{vid}.{ext}"


def _video_id(raw: Any) -> str:
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise _Bad(f"video id must be a string, got {raw!r}")
    vid = str(raw).strip()
    if not vid:
        raise _Bad("empty video id")
    if not _SAFE_ID.match(vid) or vid in (".", ".."):
        raise _Bad(f"video id {vid!r} is not a plain file name")
    return vid


def _seconds(raw: str, name: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise _Bad(f"{name} {raw!r} is not a number") from None
    if not math.isfinite(v):
        raise _Bad(f"{name} {raw!r} is not finite")
    return v


# ----------------------------------------------------------------------------------------------
# AVE
# ----------------------------------------------------------------------------------------------


def convert_ave(
    annotations: str | Path,
    media_dir: str | Path = ".",
    ext: str = "mp4",
    duration: float = 10.0,
    skip_bad: bool = False,
) -> tuple[list[StreamSpec], ConvertReport]:
    """AVE ``Annotations.txt`` (or a split file) -> streams with one labeled segment each.

    Args:
        annotations: the ``&``-separated annotation file.
        media_dir: folder of the videos (``<media_dir>/<VideoID>.<ext>``).
        duration: clip length in seconds (AVE clips are 10 s).
        skip_bad: leave defective lines out (listed in the report) instead of raising.
    """
    path = Path(annotations)
    text = _read_text(path)
    report = ConvertReport()
    streams: list[StreamSpec] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.lower().replace(" ", "") == AVE_HEADER:
            continue
        try:
            parts = [p.strip() for p in line.rsplit("&", 4)]
            if len(parts) != 5:
                raise _Bad(f"expected 5 '&'-separated fields ({AVE_FIELDS}), got {line!r}")
            category, vid_raw, _quality, start_raw, end_raw = parts
            if not category:
                raise _Bad("empty category")
            vid = _video_id(vid_raw)
            start, end = _seconds(start_raw, "start time"), _seconds(end_raw, "end time")
            if start < 0 or end > duration:
                raise _Bad(f"event [{start}, {end}] is outside the {duration:g} s clip")
            if start >= end:
                raise _Bad(f"empty event: start {start} >= end {end}")
            if vid in seen:
                raise _Bad(f"video {vid!r} is already annotated on line {seen[vid]}")
        except _Bad as e:
            if not skip_bad:
                raise ConvertError(path, lineno, f"{e} in {line!r}") from None
            report.skipped.append((lineno, str(e)))
            continue
        seen[vid] = lineno
        streams.append(
            StreamSpec(
                id=vid,
                video=_media_path(media_dir, vid, ext),
                audio=None,
                audio_from_video=True,
                duration=float(duration),
                segments=[Segment(start, end, category)],
                line=lineno,
            )
        )
    report.streams = len(streams)
    return streams, report


# ----------------------------------------------------------------------------------------------
# MUSIC-AVQA
# ----------------------------------------------------------------------------------------------


def _iter_json_array(path: Path, text: str):
    """Yield ``(line, element)`` for each element of a top-level JSON array, with its line number."""
    dec = json.JSONDecoder()
    i, n, line = 0, len(text), 1

    def skip_ws(i):
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    def fail(i, msg):
        raise ConvertError(path, text.count("\n", 0, i) + 1, msg)

    i = skip_ws(i)
    if i >= n or text[i] != "[":
        fail(i, "expected a JSON array of question records")
    i = skip_ws(i + 1)
    if i < n and text[i] == "]":
        return
    pos = 0  # newlines counted up to `pos`
    while True:
        line += text.count("\n", pos, i)
        pos = i
        try:
            obj, j = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise ConvertError(path, e.lineno, f"malformed JSON ({e.msg} at column {e.colno})") from None
        yield line, obj
        i = skip_ws(j)
        if i < n and text[i] == ",":
            i = skip_ws(i + 1)
            continue
        if i < n and text[i] == "]":
            if skip_ws(i + 1) != n:
                fail(i + 1, "extra data after the JSON array")
            return
        fail(i, "expected ',' or ']' between records")


def _list_field(rec: dict, key: str) -> list:
    """A list stored as a JSON string (the release's format), a Python-literal string, or a list."""
    raw = rec.get(key)
    if raw is None:
        raise _Bad(f"missing {key!r}")
    if isinstance(raw, list):
        return raw
    if not isinstance(raw, str):
        raise _Bad(f"{key!r} must be a list or a string holding one, got {raw!r}")
    try:
        val = json.loads(raw)
    except json.JSONDecodeError:
        try:
            val = ast.literal_eval(raw)  # "['cello']": literals only, nothing is executed
        except (ValueError, SyntaxError):
            raise _Bad(f"{key!r} is not a list: {raw!r}") from None
    if not isinstance(val, list):
        raise _Bad(f"{key!r} is not a list: {raw!r}")
    return val


def _clean(s: str) -> str:
    return " ".join(s.split())


def _question_text(rec: dict) -> str:
    content = rec.get("question_content")
    if not isinstance(content, str) or not content.strip():
        raise _Bad(f"missing or empty 'question_content' ({content!r})")
    values = _list_field(rec, "templ_values")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (str, int, float)) or not str(v).strip():
            raise _Bad(f"'templ_values' holds a bad value {v!r}")
    holes = _PLACEHOLDER.findall(content)
    if len(holes) != len(values):
        raise _Bad(
            f"{len(holes)} placeholders {holes} in {content!r} but {len(values)} templ_values {values!r}"
        )
    it = iter(values)
    return _clean(_PLACEHOLDER.sub(lambda _m: str(next(it)).strip(), content))


def _answer(rec: dict) -> str:
    raw = rec["anser"] if "anser" in rec else rec.get("answer")
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)) or not str(raw).strip():
        raise _Bad(f"missing or empty answer ('anser': {raw!r})")
    return _clean(str(raw))


def _qtype(rec: dict) -> str:
    kinds = _list_field(rec, "type")
    if not kinds or not all(isinstance(k, str) and k.strip() for k in kinds):
        raise _Bad(f"'type' must be a non-empty list of names, got {kinds!r}")
    return "/".join(k.strip() for k in kinds)


def _deleted(rec: dict) -> bool:
    d = rec.get("question_deleted", 0)
    if d in (0, 1, "0", "1", True, False):
        return str(int(d)) == "1"
    raise _Bad(f"'question_deleted' must be 0 or 1, got {d!r}")


def convert_music_avqa(
    questions: str | Path,
    media_dir: str | Path = ".",
    ext: str = "mp4",
    duration: float = 60.0,
    per_question: bool = False,
    skip_bad: bool = False,
) -> tuple[list[StreamSpec], ConvertReport]:
    """MUSIC-AVQA question JSON -> streams whose dialogue asks each question at the end of the clip.

    Args:
        questions: ``avqa-*.json`` (a JSON array of records).
        media_dir: folder of the videos (``<media_dir>/<video_id>.<ext>``).
        duration: clip length in seconds (MUSIC-AVQA clips are 60 s); questions are asked at ``duration``.
        per_question: one stream per question (id ``<video_id>-q<question_id>``) instead of per video.
        skip_bad: leave defective records out (listed in the report) instead of raising.
    """
    path = Path(questions)
    text = _read_text(path)
    report = ConvertReport()
    by_stream: dict[str, StreamSpec] = {}
    seen_q: dict[str, int] = {}
    for lineno, rec in _iter_json_array(path, text):
        try:
            if not isinstance(rec, dict):
                raise _Bad(f"a record must be a JSON object, got {type(rec).__name__}")
            if _deleted(rec):
                report.deleted += 1
                continue
            vid = _video_id(rec.get("video_id"))
            qid_raw = rec.get("question_id")
            if qid_raw is None or isinstance(qid_raw, bool) or not isinstance(qid_raw, (str, int)):
                raise _Bad(f"missing or bad 'question_id' ({qid_raw!r})")
            qid = str(qid_raw).strip()
            if qid in seen_q:
                raise _Bad(f"question_id {qid} already used on line {seen_q[qid]}")
            question, answer, qtype = _question_text(rec), _answer(rec), _qtype(rec)
        except _Bad as e:
            if not skip_bad:
                raise ConvertError(path, lineno, str(e)) from None
            report.skipped.append((lineno, str(e)))
            continue
        seen_q[qid] = lineno
        sid = f"{vid}-q{qid}" if per_question else vid
        spec = by_stream.get(sid)
        if spec is None:
            spec = by_stream[sid] = StreamSpec(
                id=sid,
                video=_media_path(media_dir, vid, ext),
                audio=None,
                audio_from_video=True,
                duration=float(duration),
                line=lineno,
            )
        t = float(duration)
        spec.dialogue += [Turn(t, "user", question, qtype), Turn(t, "assistant", answer)]
        report.questions += 1
    report.streams = len(by_stream)
    return list(by_stream.values()), report


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ConvertError(path, None, "file not found")
    try:
        return path.read_bytes().decode("utf-8-sig")  # -sig: a BOM is not part of the first field
    except UnicodeDecodeError as e:
        raise ConvertError(path, None, f"not UTF-8 text ({e})") from None


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ssm_mm.data.convert", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="dataset", required=True)
    for name, default_duration, what in (
        ("ave", 10.0, "AVE Annotations.txt (or trainSet/valSet/testSet.txt)"),
        ("music_avqa", 60.0, "MUSIC-AVQA avqa-*.json"),
    ):
        s = sub.add_parser(name, help=f"convert {what}")
        s.add_argument("input", type=Path, help=what)
        s.add_argument("--out", type=Path, required=True, help="manifest to write (.jsonl)")
        s.add_argument("--media-dir", type=Path, default=Path("."), help="folder holding <id>.<ext> videos")
        s.add_argument("--ext", default="mp4", help="video file extension (default mp4)")
        s.add_argument("--duration", type=float, default=default_duration, help="clip length in seconds")
        s.add_argument(
            "--skip-bad", action="store_true", help="skip and count defective lines instead of failing"
        )
        s.add_argument(
            "--check-media", action="store_true", help="probe every media file (missing/corrupt: bad)"
        )
        if name == "music_avqa":
            s.add_argument("--per-question", action="store_true", help="one stream per question")
    a = p.parse_args(argv)
    try:
        if a.dataset == "ave":
            streams, report = convert_ave(a.input, a.media_dir, a.ext, a.duration, a.skip_bad)
        else:
            streams, report = convert_music_avqa(
                a.input, a.media_dir, a.ext, a.duration, per_question=a.per_question, skip_bad=a.skip_bad
            )
        write_manifest(streams, a.out)
        if a.check_media:
            try:
                m = read_manifest(a.out, on_error="skip" if a.skip_bad else "raise", check_media=True)
            except ValueError:
                a.out.unlink()  # leave no manifest that names unusable media
                raise
            if m.skipped:
                write_manifest(m.streams, a.out)
                report.streams = len(m.streams)
                report.skipped += [(line, msg) for line, _, msg in m.skipped]
    except ValueError as e:  # ConvertError, ManifestError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}: {report.summary()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
