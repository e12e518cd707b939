"""The one interleaver (SPEC §3, docs/design.md): timed video/audio/text tokens in one sequence, and
the per-tick training targets built on it. Training, offline evaluation and streaming all use it.

Rules (docs/design.md):

* Order by ``(t, kind, index)``: time first, ties by modality (video 0 < audio 1 < text 2), then by
  index within the modality (frame row and patch; audio token row; turn index and position).
  Time is therefore non-decreasing along the sequence.
* Tick ``k`` (``τ = tick_seconds``) owns the tokens with ``k·τ < t − t0 ≤ (k+1)·τ`` (tick 0 also owns
  ``t = t0``): ``tick = max(0, ceil((t − t0)/τ) − 1)``. Times within ``1e-6·τ`` of a tick boundary
  count as on it (float noise from ``t0 + media time`` must not move a token across ticks).
* A text turn said at ``t`` is placed at the end of its tick, ``t0 + (tick(t) + 1)·τ``; all its tokens
  share that time, so they follow every media token of the tick. Placement is idempotent, so a
  streaming session that inserts text at the current stream time (a tick end) gets the same result.
* Because the tick is a non-decreasing function of time, the sequence is grouped by tick:
  interleaving tick by tick (as streaming does) and concatenating gives the offline sequence.

Token columns (:class:`TimedTokens`), all ``(L,)``:

* ``kind``  int64, 0 video / 1 audio / 2 text.
* ``t``     float64 seconds on the stream clock (``t0`` + media time).
* ``src``   int64, what the token is: video ``frame_row · patches_per_frame + patch`` (the model
  reshapes the frame features (F, 3, S, S) into (F · patches_per_frame) patch embeddings and gathers
  row ``src``; the patch grid is row-major); audio: the audio-token row; text: the token id.
* ``tick``  int64 tick index (relative to ``t0``).
* ``role``  int64 role index of a text token (0 user, 1 assistant; ``tokenizer.ROLES``), −1 for media.
* ``turn``  int64 index of a text token's turn in the stream's dialogue, −1 for media.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from ssm_mm.data.featurize import FeaturizerConfig
from ssm_mm.data.tokenizer import ROLES, TurnTokenizer, role_index

__all__ = [
    "VIDEO",
    "AUDIO",
    "TEXT",
    "KIND_NAMES",
    "IGNORE_INDEX",
    "TimedTokens",
    "TextTurn",
    "tick_of",
    "tick_end_time",
    "place_text_time",
    "num_ticks",
    "encode_dialogue",
    "interleave",
    "tick_summary_positions",
    "tick_event_labels",
    "tick_event_counts",
    "tick_first_ranks",
    "tick_last_segments",
    "tick_recall_times",
    "tick_recall_values",
    "missing_attributes",
    "proactive_flags",
    "speak_targets",
    "lm_targets",
    "lm_weights",
    "bad_answer_weights",
]

VIDEO, AUDIO, TEXT = 0, 1, 2
KIND_NAMES = ("video", "audio", "text")
IGNORE_INDEX = -100  # targets at unsupervised positions (torch cross_entropy's default ignore_index)
# Tolerance (in ticks) for a time sitting exactly on a tick boundary.
_TICK_EPS = 1e-6
# Coverage difference (seconds) below which two labels of a tick count as tied.
_COVER_TOL = 1e-9


# ------------------------------------------------------------------------------------------- ticks


def tick_of(t_rel, tick_seconds: float) -> Tensor:
    """Tick index of times ``t_rel`` (seconds since ``t0``): ``max(0, ceil(t_rel/τ − ε) − 1)``.

    ``t_rel``: float or (N,) float64 -> int64 tensor of the same shape.
    """
    t = torch.as_tensor(t_rel, dtype=torch.float64)
    return (torch.ceil(t / tick_seconds - _TICK_EPS) - 1).clamp(min=0).to(torch.int64)


def tick_index(t_rel: float, tick_seconds: float) -> int:
    """:func:`tick_of` of one time as a Python int, without a tensor (the same float64 operations, so
    the same index): the streaming session asks this of every session every serving round."""
    return max(0, math.ceil(float(t_rel) / tick_seconds - _TICK_EPS) - 1)


def tick_end_time(k: int, tick_seconds: float, t0: float = 0.0) -> float:
    """Stream-clock time of the end of tick ``k``, ``t0 + (k+1)·τ`` (where text of tick k goes)."""
    return float(t0) + (int(k) + 1) * tick_seconds


def place_text_time(t: float, tick_seconds: float, t0: float = 0.0) -> float:
    """Where a turn said at stream-clock time ``t`` is placed: the end of its tick (idempotent)."""
    return tick_end_time(tick_index(float(t) - float(t0), tick_seconds), tick_seconds, t0)


def num_ticks(duration: float, tick_seconds: float) -> int:
    """Ticks of a stream lasting ``duration`` seconds: ``ceil(duration/τ)`` (at least 1)."""
    if not (math.isfinite(duration) and duration >= 0):
        raise ValueError(f"stream duration must be a finite number >= 0, got {duration}")
    return max(1, math.ceil(duration / tick_seconds - _TICK_EPS))


# ----------------------------------------------------------------------------------------- tokens


@dataclass
class TimedTokens:
    """Columnar timed tokens, all ``(L,)`` (see the module docstring for each column)."""

    kind: Tensor
    t: Tensor
    src: Tensor
    tick: Tensor
    role: Tensor
    turn: Tensor

    def __post_init__(self) -> None:
        n = self.kind.shape
        for f in fields(self):
            v = getattr(self, f.name)
            if v.ndim != 1 or v.shape != n:
                raise ValueError(f"TimedTokens.{f.name} has shape {tuple(v.shape)}, expected {tuple(n)}")

    def __len__(self) -> int:
        return self.kind.shape[0]

    def columns(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def empty(cls) -> TimedTokens:
        i64 = torch.zeros(0, dtype=torch.int64)
        return cls(kind=i64, t=torch.zeros(0, dtype=torch.float64), src=i64, tick=i64, role=i64, turn=i64)

    @classmethod
    def cat(cls, parts: Sequence[TimedTokens]) -> TimedTokens:
        """Concatenate along the sequence (e.g. per-tick pieces from streaming)."""
        if not parts:
            return cls.empty()
        return cls(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def select(self, index: Tensor | slice) -> TimedTokens:
        """Rows ``index`` (a slice, a bool mask or int64 positions)."""
        return type(self)(**{k: v[index] for k, v in self.columns().items()})

    def equal(self, other: TimedTokens) -> bool:
        """Exact equality of every column."""
        return all(torch.equal(v, getattr(other, k)) for k, v in self.columns().items())

    @property
    def is_media(self) -> Tensor:
        """(L,) bool, video or audio."""
        return self.kind != TEXT

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.columns().values())


@dataclass
class TextTurn:
    """One encoded dialogue turn, input of :func:`interleave`.

    t:     stream-clock time at which it was said (placed at the end of its tick by the interleaver).
    role:  index into ``tokenizer.ROLES`` (0 user, 1 assistant).
    ids:   its token ids, ``[BOT, ROLE, content..., EOT]``.
    index: its index in the stream's dialogue (the ``turn`` column; orders turns placed together).
    """

    t: float
    role: int
    ids: list[int]
    index: int


class _TurnLike(Protocol):  # ssm_mm.data.manifest.Turn
    t: float
    role: str
    text: str
    type: str | None


class _SegmentLike(Protocol):  # ssm_mm.data.manifest.Segment
    start: float
    end: float
    label: str


def encode_dialogue(
    dialogue: Sequence[_TurnLike], tokenizer: TurnTokenizer, t0: float = 0.0
) -> list[TextTurn]:
    """Manifest turns (media time ``t``, ``role``, ``text``) -> :class:`TextTurn` on the stream clock."""
    return [
        TextTurn(
            t=float(t0) + float(d.t),
            role=role_index(d.role),
            ids=tokenizer.encode_turn(d.role, d.text),
            index=i,
        )
        for i, d in enumerate(dialogue)
    ]


def _media_times(times, what: str) -> Tensor:
    if times is None:
        return torch.zeros(0, dtype=torch.float64)
    ts = torch.as_tensor(times).detach().cpu().to(torch.float64)
    if ts.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {tuple(ts.shape)}")
    if not bool(torch.isfinite(ts).all()):
        raise ValueError(f"{what} contain NaN or Inf")
    if ts.numel() > 1 and bool((ts[1:] < ts[:-1]).any()):
        i = int(torch.nonzero(ts[1:] < ts[:-1])[0])
        raise ValueError(
            f"{what} must be non-decreasing: t[{i}]={ts[i].item()} > t[{i + 1}]={ts[i + 1].item()}"
        )
    return ts


def _cat_or_empty(xs: list[Tensor], dtype: torch.dtype) -> Tensor:
    return torch.cat(xs) if xs else torch.zeros(0, dtype=dtype)


def interleave(
    video_times,
    audio_times,
    text_turns: Sequence[TextTurn],
    cfg: FeaturizerConfig,
    *,
    t0: float = 0.0,
    video_start: int = 0,
    audio_start: int = 0,
) -> TimedTokens:
    """Interleave timed tokens into one sequence ordered by ``(t, kind, index)``.

    Args:
        video_times: (F,) float64 stream-clock times of video frames (or None): each frame gives
            ``cfg.patches_per_frame`` tokens sharing its time.
        audio_times: (A,) float64 stream-clock times of audio tokens (end of the audio covered), or None.
        text_turns: encoded turns (:func:`encode_dialogue`); placed at the end of their tick.
        cfg: gives ``tick_seconds`` and ``patches_per_frame``.
        t0: stream-clock time of media time 0 (ticks are counted from it).
        video_start, audio_start: row of the first given frame / audio token in the stream's
            feature tensors, so that pieces interleaved incrementally (streaming, tick by tick) carry
            stream-global ``src`` indices.

    Returns:
        :class:`TimedTokens` of length ``F·patches_per_frame + A + Σ len(turn.ids)``.
    """
    tau, ppf = cfg.tick_seconds, cfg.patches_per_frame
    vt = _media_times(video_times, "video times")
    at = _media_times(audio_times, "audio times")
    if video_start < 0 or audio_start < 0:
        raise ValueError(f"video_start={video_start} and audio_start={audio_start} must be >= 0")
    n_f, n_a = vt.shape[0], at.shape[0]

    # Video: frame f -> patches p = 0..ppf-1, src = (video_start + f)·ppf + p.
    v_src = torch.arange(video_start * ppf, (video_start + n_f) * ppf, dtype=torch.int64)  # (F·ppf,)
    v_t = vt.repeat_interleave(ppf)  # (F·ppf,)
    a_src = torch.arange(audio_start, audio_start + n_a, dtype=torch.int64)  # (A,)

    # Text: turns in dialogue order (stable), tokens in turn order; t snapped to the tick end.
    turns = sorted(text_turns, key=lambda tt: tt.index)
    x_t, x_src, x_role, x_turn = [], [], [], []
    for tt in turns:
        if not tt.ids:
            raise ValueError(f"text turn {tt.index} has no tokens")
        if not (0 <= tt.role < len(ROLES)):
            raise ValueError(f"text turn {tt.index}: role {tt.role} not in 0..{len(ROLES) - 1}")
        if not math.isfinite(tt.t):
            raise ValueError(f"text turn {tt.index}: time {tt.t} is not finite")
        n = len(tt.ids)
        x_t.append(torch.full((n,), place_text_time(tt.t, tau, t0), dtype=torch.float64))
        x_src.append(torch.as_tensor(tt.ids, dtype=torch.int64))
        x_role.append(torch.full((n,), tt.role, dtype=torch.int64))
        x_turn.append(torch.full((n,), tt.index, dtype=torch.int64))
    n_x = sum(len(tt.ids) for tt in turns)

    kind = torch.cat(
        [
            torch.full((n_f * ppf,), VIDEO, dtype=torch.int64),
            torch.full((n_a,), AUDIO, dtype=torch.int64),
            torch.full((n_x,), TEXT, dtype=torch.int64),
        ]
    )
    t = torch.cat([v_t, at, _cat_or_empty(x_t, torch.float64)])
    src = torch.cat([v_src, a_src, _cat_or_empty(x_src, torch.int64)])
    none = torch.full((n_f * ppf + n_a,), -1, dtype=torch.int64)
    role = torch.cat([none, _cat_or_empty(x_role, torch.int64)])
    turn = torch.cat([none, _cat_or_empty(x_turn, torch.int64)])
    # Within one kind the concatenation order above is already the index order, so a lexsort on
    # (t, kind, position-in-concatenation) is the (t, kind, index) order.
    order = np.lexsort((np.arange(kind.shape[0]), kind.numpy(), t.numpy()))
    order = torch.from_numpy(order)
    out = TimedTokens(kind=kind, t=t, src=src, tick=tick_of(t - float(t0), tau), role=role, turn=turn)
    return out.select(order)


def tick_summary_positions(tokens: TimedTokens) -> tuple[Tensor, Tensor]:
    """Summary position of every tick that has a media token: its last media token.

    The event and speak-now heads read the hidden state there (before any text at the tick end).
    Returns ``(tick_ids (K,), positions (K,))`` int64, ticks ascending; ticks without media are
    absent (they have no prediction of their own).
    """
    pos = torch.nonzero(tokens.is_media).squeeze(1)  # (M,) positions of media tokens
    ticks = tokens.tick[pos]  # (M,) non-decreasing
    if pos.numel() == 0:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    last = torch.ones_like(ticks, dtype=torch.bool)
    last[:-1] = ticks[1:] != ticks[:-1]  # the last media token before the tick changes
    return ticks[last], pos[last]


# ---------------------------------------------------------------------------------------- targets


def _merge_intervals(iv: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(iv):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _coverage(iv: list[tuple[float, float]], n_ticks: int, tau: float) -> np.ndarray:
    """(n_ticks,) seconds of tick ``[kτ, (k+1)τ)`` covered by the disjoint intervals ``iv``."""
    cov = np.zeros(n_ticks, dtype=np.float64)
    for a, b in iv:
        k = np.arange(max(0, math.floor(a / tau)), min(n_ticks, math.ceil(b / tau)))
        if k.size:
            np.add.at(cov, k, np.clip(np.minimum(b, (k + 1) * tau) - np.maximum(a, k * tau), 0.0, None))
    return cov


def _segments_by_label(
    segments: Sequence[_SegmentLike], labels: Sequence[str], stream_id: str
) -> dict[int, list[tuple[float, float]]]:
    """``{label index: [(start, end), ...]}`` of checked segments (ValueError naming the bad one)."""
    if not labels or labels[0] != "background":
        raise ValueError(f"label vocabulary must start with 'background', got {list(labels)[:3]}")
    index = {name: i for i, name in enumerate(labels)}
    per_label: dict[int, list[tuple[float, float]]] = {}
    for j, s in enumerate(segments):
        if s.label not in index or s.label == "background":
            raise ValueError(
                f"stream {stream_id}: segments[{j}].label={s.label!r} is not an event label of the "
                f"vocabulary {list(labels[1:])}"
            )
        if not (math.isfinite(s.start) and math.isfinite(s.end) and s.end >= s.start):
            raise ValueError(f"stream {stream_id}: segments[{j}] has start={s.start} end={s.end}")
        per_label.setdefault(index[s.label], []).append((float(s.start), float(s.end)))
    return per_label


def tick_event_labels(
    segments: Sequence[_SegmentLike],
    labels: Sequence[str],
    n_ticks: int,
    tick_seconds: float,
    *,
    stream_id: str = "?",
) -> Tensor:
    """Per-tick event label, (n_ticks,) int64 indices into ``labels`` (``labels[0]`` = "background").

    Tick ``k`` spans media time ``[kτ, (k+1)τ)``; its label is the one covering most of it, where
    time covered by no segment is background. Ties go to an event rather than background; between
    tied events, the lower label index wins. Overlapping segments of one label count once.
    """
    per_label = _segments_by_label(segments, labels, stream_id)
    cov = np.zeros((n_ticks, len(labels)), dtype=np.float64)  # (K, n_labels) seconds covered
    every: list[tuple[float, float]] = []
    for li, iv in per_label.items():
        cov[:, li] = _coverage(_merge_intervals(iv), n_ticks, tick_seconds)
        every.extend(iv)
    cov[:, 0] = tick_seconds - _coverage(_merge_intervals(every), n_ticks, tick_seconds)
    best_event = cov[:, 1:].max(axis=1) if len(labels) > 1 else np.zeros(n_ticks)
    # First event label within tolerance of the best one (ties -> lowest index).
    event = 1 + np.argmax(cov[:, 1:] >= best_event[:, None] - _COVER_TOL, axis=1) if len(labels) > 1 else 0
    out = np.where((best_event > 0) & (best_event >= cov[:, 0] - _COVER_TOL), event, 0)
    return torch.from_numpy(out.astype(np.int64))


def tick_event_counts(
    segments: Sequence[_SegmentLike],
    labels: Sequence[str],
    n_ticks: int,
    tick_seconds: float,
    *,
    stream_id: str = "?",
) -> Tensor:
    """Running count of each event label, (n_ticks, len(labels) - 1) int64.

    ``out[k, j]`` is the number of segments of ``labels[j + 1]`` that started before the end of tick
    ``k`` (media time ``(k+1)τ``): what "how many times has the X happened so far?" asks at that tick.
    Every segment is one occurrence (segments of one label that overlap are counted apart). The
    target of the count objective (``objectives.count``).
    """
    per_label = _segments_by_label(segments, labels, stream_id)
    ends = (np.arange(n_ticks, dtype=np.float64) + 1.0) * tick_seconds  # (K,)
    out = np.zeros((n_ticks, len(labels) - 1), dtype=np.int64)
    for li, iv in per_label.items():
        starts = np.sort(np.array([a for a, _ in iv], dtype=np.float64))
        out[:, li - 1] = np.searchsorted(starts, ends - _TICK_EPS * tick_seconds, side="left")
    return torch.from_numpy(out)


def tick_first_ranks(
    segments: Sequence[_SegmentLike],
    labels: Sequence[str],
    n_ticks: int,
    tick_seconds: float,
    *,
    stream_id: str = "?",
) -> Tensor:
    """Order of first occurrences, seen from each tick: (n_ticks, len(labels) - 1) int64.

    ``out[k, j]`` is the rank of the first segment of ``labels[j + 1]`` among the first segments of
    the event labels that have begun by the end of tick ``k`` (media time ``(k+1)τ``, the rule of
    :func:`tick_event_counts`): 0 for the label that began first, 1 for the next, ...; ``C =
    len(labels) - 1`` while the label has not begun. Labels whose first segments start at the same
    time share a rank. A rank never changes once given (a later label can only rank after it), so
    "which came first, the X or the Y?" is answered by comparing two entries. The target of the
    order objective (``objectives.order``).
    """
    per_label = _segments_by_label(segments, labels, stream_id)
    n_events = len(labels) - 1
    ends = (np.arange(n_ticks, dtype=np.float64) + 1.0) * tick_seconds  # (K,)
    first = np.full(n_events, np.inf)
    for li, iv in per_label.items():  # only labels with segments are listed
        first[li - 1] = min(a for a, _ in iv)
    begun = first[None, :] < ends[:, None] - _TICK_EPS * tick_seconds  # (K, C)
    # rank = how many distinct earlier first-start times; labels that have not begun are C
    distinct = np.unique(first[np.isfinite(first)])
    rank = np.searchsorted(distinct, first, side="left")  # (C,)
    out = np.where(begun, rank[None, :], n_events)
    return torch.from_numpy(out.astype(np.int64))


def tick_last_segments(
    segments: Sequence[_SegmentLike],
    labels: Sequence[str],
    n_ticks: int,
    tick_seconds: float,
    stream_id: str = "?",
) -> np.ndarray:
    """(n_ticks, len(labels) - 1) int64: index into ``segments`` of each label's last segment that is
    over by the end of each tick (media time ``(k+1)τ``), −1 while none is. Among segments ending at
    the same time the one that started last wins."""
    _segments_by_label(segments, labels, stream_id)  # checks labels and times (ValueError)
    index = {name: i for i, name in enumerate(labels)}
    ends = (np.arange(n_ticks, dtype=np.float64) + 1.0) * tick_seconds  # (K,)
    out = np.full((n_ticks, len(labels) - 1), -1, dtype=np.int64)
    for li in range(1, len(labels)):
        mine = sorted(
            (j for j, s in enumerate(segments) if index[s.label] == li),
            key=lambda j: (float(segments[j].end), float(segments[j].start)),
        )
        if not mine:
            continue
        seg_ends = np.array([float(segments[j].end) for j in mine], dtype=np.float64)
        n_over = np.searchsorted(seg_ends, ends + _TICK_EPS * tick_seconds, side="right")  # (K,)
        out[:, li - 1] = np.where(n_over > 0, np.array(mine, dtype=np.int64)[np.maximum(n_over - 1, 0)], -1)
    return out


def tick_recall_times(
    segments: Sequence[_SegmentLike],
    labels: Sequence[str],
    n_ticks: int,
    tick_seconds: float,
    *,
    stream_id: str = "?",
) -> Tensor:
    """When each event label last happened, seen from each tick: (n_ticks, len(labels) - 1) float64.

    ``out[k, j]`` is the midpoint of the last segment of ``labels[j + 1]`` that is over by the end of
    tick ``k`` (media time ``(k+1)τ``), NaN while none is: the moment that "what did X look like when
    the Y last happened?" refers to at that tick. Among segments ending at the same time the one that
    started last wins. The target times of the recall objective (``objectives.recall``).
    """
    last = tick_last_segments(segments, labels, n_ticks, tick_seconds, stream_id)
    mids = np.array([(float(s.start) + float(s.end)) / 2.0 for s in segments] + [np.nan], dtype=np.float64)
    return torch.from_numpy(mids[last])  # index -1 -> the trailing NaN


def missing_attributes(streams: Sequence, names: Sequence[str]) -> list[str]:
    """The names of ``names`` that no segment of ``streams`` (StreamSpecs) carries among its
    ``attributes``: recall-attribute targets those streams cannot supply."""
    have = {a for st in streams for s in st.segments for a in getattr(s, "attributes", {})}
    return [n for n in names if n not in have]


def tick_recall_values(
    segments: Sequence[_SegmentLike],
    labels: Sequence[str],
    n_ticks: int,
    tick_seconds: float,
    attributes: Sequence[str],
    values: Sequence[str],
    *,
    stream_id: str = "?",
) -> Tensor:
    """What each event label looked like when it last happened, seen from each tick: (n_ticks,
    len(labels) - 1, len(attributes)) int64 index into ``values`` of each segment attribute of
    ``attributes`` of the label's last finished segment (the one :func:`tick_recall_times` points
    at); −1 while none is over, or when that segment lacks the attribute or has a value outside
    ``values``. The targets of the attribute objective (``objectives.attribute``)."""
    if isinstance(attributes, str):
        raise TypeError(f"attributes must be a sequence of names, got the string {attributes!r}")
    last = tick_last_segments(segments, labels, n_ticks, tick_seconds, stream_id)
    where = {v: i for i, v in enumerate(values)}
    per_segment = [[where.get(getattr(s, "attributes", {}).get(a), -1) for a in attributes] for s in segments]
    table = np.array(per_segment + [[-1] * len(attributes)], dtype=np.int64).reshape(
        len(segments) + 1, len(attributes)
    )
    return torch.from_numpy(table[last])


def proactive_flags(dialogue: Sequence[_TurnLike], tick_seconds: float) -> list[bool]:
    """For each turn: is it a proactive assistant response?

    An assistant turn is an *answer* when it is placed at the same time as the latest user turn before
    it in the dialogue (same tick end: streaming generates an answer right after the question);
    it is *proactive* when it is placed later, or when no user turn precedes it.
    """
    flags, last_user_tick = [], None
    for d in dialogue:
        k = tick_index(float(d.t), tick_seconds)
        if d.role == "user":
            last_user_tick = k
            flags.append(False)
        else:
            role_index(d.role)
            flags.append(last_user_tick is None or k > last_user_tick)
    return flags


def speak_targets(
    dialogue: Sequence[_TurnLike], n_ticks: int, tick_seconds: float, *, stream_id: str = "?"
) -> Tensor:
    """Per-tick speak-now target, (n_ticks,) int64: 1 at the tick at whose end a proactive
    assistant turn is placed, 0 elsewhere (manifest times, relative to the stream's t0)."""
    out = torch.zeros(n_ticks, dtype=torch.int64)
    for i, (d, pro) in enumerate(zip(dialogue, proactive_flags(dialogue, tick_seconds))):
        if pro:
            k = tick_index(float(d.t), tick_seconds)
            if k >= n_ticks:
                raise ValueError(
                    f"stream {stream_id}: dialogue[{i}].t={d.t} is past the stream's {n_ticks} ticks"
                )
            out[k] = 1
    return out


def lm_targets(tokens: TimedTokens, tokenizer: TurnTokenizer) -> Tensor:
    """Next-token targets for assistant turns, (L,) int64, ``IGNORE_INDEX`` elsewhere.

    Aligned with the input (no shift needed by the loss): ``target[i]`` is the token the model must
    predict from the hidden state at position ``i``. For an assistant turn ``[BOT, ROLE_ASSISTANT,
    c_1..c_n, EOT]`` at positions ``p .. p+n+2``, the supervised positions are ``p+1 .. p+n+1``
    (from the ROLE token to the last content token) with targets ``c_1 .. c_n, EOT``: BOT and the
    role token are forced at inference, so the first predicted token is the first content token,
    and the model learns to stop with EOT. User turns, media and the positions of BOT and EOT are
    not supervised.
    """
    out = torch.full((len(tokens),), IGNORE_INDEX, dtype=torch.int64)
    assistant = ROLES.index("assistant")
    pos = torch.nonzero((tokens.kind == TEXT) & (tokens.role == assistant)).squeeze(1)
    if pos.numel() == 0:
        return out
    turn_ids = tokens.turn[pos]
    starts = torch.ones_like(turn_ids, dtype=torch.bool)
    starts[1:] = turn_ids[1:] != turn_ids[:-1]
    bounds = torch.nonzero(starts).squeeze(1).tolist() + [pos.numel()]
    for a, b in zip(bounds[:-1], bounds[1:]):
        p = pos[a:b]  # positions of one turn (contiguous: its tokens share time, kind and index range)
        ids = tokens.src[p]
        if b - a < 3 or int(ids[0]) != tokenizer.bot_id or int(ids[-1]) != tokenizer.eot_id:
            raise ValueError(
                f"assistant turn {int(turn_ids[a])} is not [BOT, ROLE, ..., EOT]: {ids.tolist()}"
            )
        out[p[1:-1]] = ids[2:]
    return out


def bad_answer_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """The entries of an answer-weight table (:func:`lm_weights`) that are not finite and >= 0."""
    return {k: v for k, v in weights.items() if not (math.isfinite(v) and v >= 0)}


def lm_weights(
    tokens: TimedTokens, dialogue: Sequence[_TurnLike], weights: Mapping[str, float], tick_seconds: float
) -> Tensor:
    """Per-position weight of the LM loss, (L,) float32: ``weights[type]`` on the tokens of the answer
    to a user turn of that ``type``, 1 everywhere else (and for types ``weights`` does not name).

    The answer to a user turn is the assistant turn directly after it in ``dialogue``, if that turn
    is an answer and not a proactive response (:func:`proactive_flags`: placed at the question's
    tick end). ``tokens.turn`` indexes ``dialogue`` (:func:`encode_dialogue`). Only the positions
    :func:`lm_targets` supervises are read by the loss.
    """
    out = torch.ones(len(tokens), dtype=torch.float32)
    if not weights:
        return out
    per_turn = [1.0] * len(dialogue)
    proactive = proactive_flags(dialogue, tick_seconds)
    for i in range(1, len(dialogue)):
        q, a = dialogue[i - 1], dialogue[i]
        if q.role == "user" and a.role == "assistant" and not proactive[i] and q.type in weights:
            per_turn[i] = float(weights[q.type])
    assistant = (tokens.kind == TEXT) & (tokens.role == ROLES.index("assistant"))
    if bool(assistant.any()):
        out[assistant] = torch.tensor(per_turn, dtype=torch.float32)[tokens.turn[assistant]]
    return out
