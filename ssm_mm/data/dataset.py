"""Streams -> features -> timed tokens + targets -> tick-aligned windows -> padded batches.

:class:`StreamDataset` reads a manifest's streams through ``ssm_mm.media`` (real decoding), runs the
one featurizer (:mod:`ssm_mm.data.featurize`) and the one interleaver (:mod:`ssm_mm.data.interleave`),
and cuts each stream into windows of ``window_seconds``. A window is the ticks ``[k0, k1)`` of one
stream, so a training slot can walk a stream window by window and carry the recurrent state across
(windows concatenated == the whole stream). Features come from :mod:`ssm_mm.data.feature_cache`.
:func:`collate` right-pads windows into a :class:`Batch` with a flat per-modality feature layout (no
modality is padded; gather indices place each token).

Dataset item index ``i`` enumerates (stream, window) pairs stream-major; ``dataset.index(s, w)``
and ``dataset.windows_per_stream`` let a stateful sampler walk each stream in order.

Stream length: a stream covers ``num_ticks(duration)`` ticks; media decoded past the manifest's
``duration`` (e.g. encoder padding at the end of an audio track) is dropped.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ssm_mm.data.feature_cache import StreamFeatures, load_features
from ssm_mm.data.featurize import FeaturizerConfig, audio_token_times
from ssm_mm.data.interleave import (
    AUDIO,
    IGNORE_INDEX,
    TEXT,
    VIDEO,
    TimedTokens,
    bad_answer_weights,
    encode_dialogue,
    interleave,
    lm_targets,
    lm_weights,
    num_ticks,
    speak_targets,
    tick_event_counts,
    tick_event_labels,
    tick_first_ranks,
    tick_recall_times,
    tick_recall_values,
    tick_summary_positions,
)
from ssm_mm.data.tokenizer import TurnTokenizer

__all__ = [
    "StreamFeatures",
    "StreamExample",
    "Window",
    "Batch",
    "StreamDataset",
    "load_features",
    "build_example",
    "window_bounds",
    "cut_window",
    "collate",
]

# --------------------------------------------------------------------------------- stream example


@dataclass
class StreamExample:
    """A whole stream as one interleaved sequence with its targets.

    tokens:      TimedTokens (L,), stream-clock times; ``src`` indexes ``features`` rows (video:
                 ``frame · patches_per_frame + patch``; audio: token row; text: token id).
    event_label: (n_ticks,) int64 per-tick label index (0 = background).
    speak:       (n_ticks,) int64 per-tick speak-now target (0/1).
    lm_target:   (L,) int64 next-token targets (``IGNORE_INDEX`` where unsupervised).
    lm_weight:   (L,) float32 weight of each position's LM loss (:func:`~ssm_mm.data.interleave.lm_weights`).
    event_count: (n_ticks, C) int64 running count of each event label (C = labels − background).
    first_rank:  (n_ticks, C) int64 rank of each event label's first occurrence among the labels
                 begun so far, C while it has not begun (:func:`~ssm_mm.data.interleave.tick_first_ranks`).
    recall_frame: (n_ticks, C) int64 stream frame shown when each event label last happened, seen
                 from each tick (the frame nearest the midpoint of the label's last finished segment,
                 :func:`~ssm_mm.data.interleave.tick_recall_times`); −1 while none has, or without video.
    recall_value: (n_ticks, C, A) int64 index into the dataset's ``recall_values`` of that segment's
                 ``recall_attributes`` (A of them, 1 when none is named;
                 :func:`~ssm_mm.data.interleave.tick_recall_values`); −1 while none has happened,
                 where the segment lacks the attribute, or when the dataset names no attribute.
    """

    stream_id: str
    stream_index: int
    t0: float
    n_ticks: int
    tokens: TimedTokens
    features: StreamFeatures
    event_label: Tensor
    speak: Tensor
    lm_target: Tensor
    lm_weight: Tensor
    event_count: Tensor
    first_rank: Tensor
    recall_frame: Tensor
    recall_value: Tensor


def nearest_frames(times: Tensor, frame_times: np.ndarray) -> Tensor:
    """Index of the frame nearest each of ``times`` (any shape, float64; NaN -> −1), ``frame_times``
    sorted ascending (F,); −1 everywhere when there are no frames. Ties go to the earlier frame."""
    out = torch.full(times.shape, -1, dtype=torch.int64)
    ft = np.asarray(frame_times, dtype=np.float64)
    known = ~torch.isnan(times)
    if len(ft) == 0 or not bool(known.any()):
        return out
    q = times[known].numpy()
    hi = np.minimum(np.searchsorted(ft, q, side="left"), len(ft) - 1)  # first frame at or after q
    lo = np.maximum(hi - 1, 0)
    pick = np.where(np.abs(ft[hi] - q) < np.abs(q - ft[lo]), hi, lo)
    out[known] = torch.from_numpy(pick.astype(np.int64))
    return out


def build_example(
    spec,
    features: StreamFeatures,
    tokenizer: TurnTokenizer,
    labels: Sequence[str],
    cfg: FeaturizerConfig,
    stream_index: int = 0,
    recall_attributes: Sequence[str] = (),
    recall_values: Sequence[str] = (),
    answer_weights: Mapping[str, float] | None = None,
) -> StreamExample:
    """Interleave one stream's features and dialogue and build its targets (``spec``: a StreamSpec;
    ``recall_attributes``/``recall_values``: the segment attributes and value vocabulary of
    ``recall_value``; ``answer_weights``: LM-loss weight of the answers to each question type,
    :func:`~ssm_mm.data.interleave.lm_weights`)."""
    t0 = float(spec.t0)
    video_times = t0 + torch.from_numpy(np.asarray(features.video_times, dtype=np.float64))  # (F,)
    fz_t0 = t0 + features.audio_t0  # same sum as a streaming featurizer started at t0 + audio_t0
    audio_times = audio_token_times(cfg, fz_t0, 0, features.n_audio)  # (A,)
    turns = encode_dialogue(spec.dialogue, tokenizer, t0)
    tokens = interleave(
        video_times if features.video is not None else None,
        audio_times if features.audio is not None else None,
        turns,
        cfg,
        t0=t0,
    )
    n_ticks = num_ticks(float(spec.duration), cfg.tick_seconds)
    tokens = tokens.select(tokens.tick < n_ticks)  # media past the declared duration is dropped
    return StreamExample(
        stream_id=spec.id,
        stream_index=stream_index,
        t0=t0,
        n_ticks=n_ticks,
        tokens=tokens,
        features=features,
        event_label=tick_event_labels(spec.segments, labels, n_ticks, cfg.tick_seconds, stream_id=spec.id),
        speak=speak_targets(spec.dialogue, n_ticks, cfg.tick_seconds, stream_id=spec.id),
        lm_target=lm_targets(tokens, tokenizer),
        lm_weight=lm_weights(tokens, spec.dialogue, answer_weights or {}, cfg.tick_seconds),
        event_count=tick_event_counts(spec.segments, labels, n_ticks, cfg.tick_seconds, stream_id=spec.id),
        first_rank=tick_first_ranks(spec.segments, labels, n_ticks, cfg.tick_seconds, stream_id=spec.id),
        recall_frame=nearest_frames(
            tick_recall_times(spec.segments, labels, n_ticks, cfg.tick_seconds, stream_id=spec.id),
            features.video_times if features.video is not None else np.zeros(0),
        ),
        recall_value=(
            tick_recall_values(
                spec.segments,
                labels,
                n_ticks,
                cfg.tick_seconds,
                recall_attributes,
                recall_values,
                stream_id=spec.id,
            )
            if recall_attributes
            else torch.full((n_ticks, len(labels) - 1, 1), -1, dtype=torch.int64)
        ),
    )


# ---------------------------------------------------------------------------------------- windows


@dataclass
class Window:
    """Ticks ``[tick_start, tick_end)`` of one stream: one dataset item (unpadded).

    tokens:       TimedTokens (L,); ``src`` of media tokens indexes *this window's* ``video`` /
                  ``audio`` rows (video: ``local_frame · patches_per_frame + patch``).
    video:        (F, 3, S, S) float32 frames used by the window; frame 0 is stream frame ``video_offset``.
    audio:        (A, D) float32 audio tokens; row 0 is stream audio token ``audio_offset``.
    lm_target:    (L,) int64 (``IGNORE_INDEX`` where unsupervised).
    lm_weight:    (L,) float32 weight of each position's LM loss.
    event_label:  (K,) int64, K = tick_end − tick_start.
    speak:        (K,) int64 0/1.
    event_count:  (K, C) int64 running count of each event label (C = labels − background).
    first_rank:   (K, C) int64 order of first occurrences since the stream began (see StreamExample).
    recall_video: (R, 3, S, S) float32 the distinct stream frames that ``recall_index`` refers to (they
                  may lie before the window: the recall head looks back across windows).
    recall_index: (K, C) int64 row of ``recall_video`` shown when each event label last happened,
                  seen from each tick; −1 while none has.
    recall_value: (K, C, A) int64 what each event label looked like then (see StreamExample), −1 = none.
    summary_pos:  (K,) int64 position in ``tokens`` of each tick's last media token, −1 when the
                  tick has no media token (then it has no prediction and no loss).
    patches_per_frame: video tokens per frame (to re-base video ``src`` when batching).
    """

    stream_id: str
    stream_index: int
    window_index: int
    n_windows: int
    tick_start: int
    tick_end: int
    tokens: TimedTokens
    video: Tensor
    audio: Tensor
    video_offset: int
    audio_offset: int
    lm_target: Tensor
    lm_weight: Tensor
    event_label: Tensor
    speak: Tensor
    event_count: Tensor
    first_rank: Tensor
    recall_video: Tensor
    recall_index: Tensor
    recall_value: Tensor
    summary_pos: Tensor
    patches_per_frame: int


def window_bounds(n_ticks: int, ticks_per_window: int) -> list[tuple[int, int]]:
    """Tick ranges ``[k0, k1)`` tiling ``0..n_ticks`` by ``ticks_per_window`` (the last may be shorter)."""
    return [(k0, min(k0 + ticks_per_window, n_ticks)) for k0 in range(0, n_ticks, ticks_per_window)]


def _rows(a: np.ndarray | None, lo: int, hi: int, shape_tail: tuple[int, ...]) -> Tensor:
    if a is None or hi <= lo:
        return torch.zeros(0, *shape_tail, dtype=torch.float32)
    return torch.from_numpy(np.array(a[lo:hi], dtype=np.float32))  # copy out of a (read-only) memmap


def cut_window(
    ex: StreamExample, k0: int, k1: int, cfg: FeaturizerConfig, window_index: int = 0, n_windows: int = 1
) -> Window:
    """The ticks ``[k0, k1)`` of ``ex`` with window-local feature rows and targets."""
    if not (0 <= k0 < k1 <= ex.n_ticks):
        raise ValueError(f"window ticks [{k0}, {k1}) out of range for a stream of {ex.n_ticks} ticks")
    ppf = cfg.patches_per_frame
    lo = int(torch.searchsorted(ex.tokens.tick, k0))  # tokens are grouped by tick (non-decreasing)
    hi = int(torch.searchsorted(ex.tokens.tick, k1))
    tokens = ex.tokens.select(slice(lo, hi))
    src = tokens.src.clone()
    is_v, is_a = tokens.kind == VIDEO, tokens.kind == AUDIO
    # Frames/audio tokens of a window are contiguous rows (time order == row order).
    f_lo = int(src[is_v].min()) // ppf if bool(is_v.any()) else 0
    f_hi = int(src[is_v].max()) // ppf + 1 if bool(is_v.any()) else 0
    a_lo = int(src[is_a].min()) if bool(is_a.any()) else 0
    a_hi = int(src[is_a].max()) + 1 if bool(is_a.any()) else 0
    src[is_v] -= f_lo * ppf
    src[is_a] -= a_lo
    tokens = TimedTokens(**{**tokens.columns(), "src": src})
    s, d = cfg.frame_size, cfg.audio_token_dim
    summary = torch.full((k1 - k0,), -1, dtype=torch.int64)
    ticks, pos = tick_summary_positions(tokens)
    summary[ticks - k0] = pos
    recall = ex.recall_frame[k0:k1]
    frames, recall_index = torch.unique(recall[recall >= 0], return_inverse=True)  # sorted stream frames
    recall_index = torch.full_like(recall, -1).masked_scatter(recall >= 0, recall_index)
    if len(frames):
        recall_video = torch.from_numpy(np.array(ex.features.video[frames.numpy()], dtype=np.float32))
    else:
        recall_video = torch.zeros(0, 3, s, s, dtype=torch.float32)
    return Window(
        stream_id=ex.stream_id,
        stream_index=ex.stream_index,
        window_index=window_index,
        n_windows=n_windows,
        tick_start=k0,
        tick_end=k1,
        tokens=tokens,
        video=_rows(ex.features.video, f_lo, f_hi, (3, s, s)),
        audio=_rows(ex.features.audio, a_lo, a_hi, (d,)),
        video_offset=f_lo,
        audio_offset=a_lo,
        lm_target=ex.lm_target[lo:hi].clone(),
        lm_weight=ex.lm_weight[lo:hi].clone(),
        event_label=ex.event_label[k0:k1].clone(),
        speak=ex.speak[k0:k1].clone(),
        event_count=ex.event_count[k0:k1].clone(),
        first_rank=ex.first_rank[k0:k1].clone(),
        recall_video=recall_video,
        recall_index=recall_index,
        recall_value=ex.recall_value[k0:k1].clone(),
        summary_pos=summary,
        patches_per_frame=ppf,
    )


# ------------------------------------------------------------------------------------------ batch


@dataclass
class Batch:
    """Right-padded windows. B windows, L = longest sequence, K = most ticks, F/A = all frames/audio tokens.

    Sequence, (B, L):
      kind       int64  0 video / 1 audio / 2 text. Padding is a TEXT token with ``src = pad_id``, so
                        an embedding lookup of every position is safe; ``valid`` masks it.
      t          float64 stream-clock seconds; padding repeats the row's last real time (Δt = 0).
      src        int64  video: row of ``video.view(F·patches_per_frame, ...)`` patch embeddings, i.e.
                        ``batch_frame · patches_per_frame + patch``; audio: row of ``audio``; text: token id.
      tick       int64  absolute tick index in its stream; −1 on padding.
      role, turn int64  text role index / dialogue turn index; −1 on media and padding.
      valid      bool   real tokens.
      lm_target  int64  next-token target at each position (``IGNORE_INDEX`` = −100 where unsupervised):
                        ``cross_entropy(logits[b, l], lm_target[b, l])`` with no shift.
      lm_weight  float32 weight of each position's LM loss (1 on padding; read only where supervised).
    Flat per-modality features:
      video        (F, 3, S, S) float32 frames of all windows, window by window.
      video_batch  (F,) int64 batch row of each frame.
      audio        (A, D) float32 audio tokens of all windows.
      audio_batch  (A,) int64 batch row of each audio token.
    Per tick, (B, K) (tick j of row b is absolute tick ``tick_start[b] + j``):
      tick_index   int64 absolute tick, −1 on padding.
      tick_valid   bool  the tick exists and has a media token (its heads are trained).
      summary_pos  int64 position in L of the tick's last media token (0 where not ``tick_valid``).
      event_label  int64 label index, ``IGNORE_INDEX`` where not ``tick_valid``.
      speak        float32 0/1 speak-now target (0 where not ``tick_valid``; mask with ``tick_valid``).
      event_count  (B, K, C) int64 running count of each event label since the stream began
                   (:func:`ssm_mm.data.interleave.tick_event_counts`), ``IGNORE_INDEX`` where not
                   ``tick_valid``; C = event labels without background.
      first_rank   (B, K, C) int64 rank of each event label's first occurrence since the stream began
                   among the labels begun so far, C while not begun
                   (:func:`ssm_mm.data.interleave.tick_first_ranks`), ``IGNORE_INDEX`` where not
                   ``tick_valid``.
      recall_index (B, K, C) int64 row of ``recall_video`` shown when each event label last happened
                   (window ``recall_index`` re-based), −1 while none has and where not ``tick_valid``.
      recall_video (R, 3, S, S) float32 the windows' recall frames, window by window.
      recall_value (B, K, C, A) int64 index into the dataset's ``recall_values`` of what each event
                   label looked like when it last happened (A = attributes), ``IGNORE_INDEX`` where
                   unknown or not ``tick_valid``.
    Per row, (B,):
      stream_index, window_index, n_windows, tick_start  int64.
      is_first  bool  first window of its stream (start from a fresh state).
      is_last   bool  last window of its stream.
      stream_ids  list[str].
    """

    kind: Tensor
    t: Tensor
    src: Tensor
    tick: Tensor
    role: Tensor
    turn: Tensor
    valid: Tensor
    lm_target: Tensor
    lm_weight: Tensor
    video: Tensor
    video_batch: Tensor
    audio: Tensor
    audio_batch: Tensor
    tick_index: Tensor
    tick_valid: Tensor
    summary_pos: Tensor
    event_label: Tensor
    speak: Tensor
    event_count: Tensor
    first_rank: Tensor
    recall_index: Tensor
    recall_video: Tensor
    recall_value: Tensor
    stream_index: Tensor
    window_index: Tensor
    n_windows: Tensor
    tick_start: Tensor
    is_first: Tensor
    is_last: Tensor
    stream_ids: list[str]

    @property
    def batch_size(self) -> int:
        return self.kind.shape[0]

    @property
    def lengths(self) -> Tensor:
        """(B,) int64 number of real tokens per row."""
        return self.valid.sum(1)

    def _map_tensors(self, fn) -> Batch:
        return Batch(**{f.name: _apply(fn, getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Every tensor moved to ``device`` (dtypes kept: ``t`` stays float64)."""
        return self._map_tensors(lambda v: v.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Page-locked copy (DataLoader ``pin_memory=True`` calls this)."""
        return self._map_tensors(lambda v: v.pin_memory())


def _apply(fn, v):
    return fn(v) if isinstance(v, Tensor) else v


def collate(windows: Sequence[Window], pad_id: int) -> Batch:
    """Right-pad windows into a :class:`Batch` (``pad_id``: the tokenizer's PAD id)."""
    if not windows:
        raise ValueError("collate: empty list of windows")
    B = len(windows)
    L = max(len(w.tokens) for w in windows)
    K = max(w.tick_end - w.tick_start for w in windows)
    if len({w.patches_per_frame for w in windows}) > 1:
        raise ValueError("collate: windows disagree on patches_per_frame")

    def full(shape, value, dtype):
        return torch.full(shape, value, dtype=dtype)

    kind = full((B, L), TEXT, torch.int64)
    t = full((B, L), 0.0, torch.float64)
    src = full((B, L), pad_id, torch.int64)
    tick, role, turn = (
        full((B, L), -1, torch.int64),
        full((B, L), -1, torch.int64),
        full((B, L), -1, torch.int64),
    )
    valid = full((B, L), False, torch.bool)
    lm_target = full((B, L), IGNORE_INDEX, torch.int64)
    lm_weight = full((B, L), 1.0, torch.float32)
    tick_index = full((B, K), -1, torch.int64)
    tick_valid = full((B, K), False, torch.bool)
    summary_pos = full((B, K), 0, torch.int64)
    event_label = full((B, K), IGNORE_INDEX, torch.int64)
    speak = full((B, K), 0.0, torch.float32)
    n_count = {w.event_count.shape[1] for w in windows}
    if len(n_count) > 1:
        raise ValueError(f"collate: windows disagree on the number of event labels ({sorted(n_count)})")
    event_count = full((B, K, n_count.pop()), IGNORE_INDEX, torch.int64)
    first_rank = full(event_count.shape, IGNORE_INDEX, torch.int64)
    recall_index = full(event_count.shape, -1, torch.int64)
    n_attr = {w.recall_value.shape[-1] for w in windows}
    if len(n_attr) > 1:
        raise ValueError(f"collate: windows disagree on the number of recall attributes ({sorted(n_attr)})")
    recall_value = full((*event_count.shape, n_attr.pop()), IGNORE_INDEX, torch.int64)

    f_off = a_off = r_off = 0
    for b, w in enumerate(windows):
        n, k = len(w.tokens), w.tick_end - w.tick_start
        tk = w.tokens
        s = tk.src.clone()
        s[tk.kind == VIDEO] += f_off * w.patches_per_frame  # local frame -> batch frame
        s[tk.kind == AUDIO] += a_off
        kind[b, :n], t[b, :n], src[b, :n] = tk.kind, tk.t, s
        tick[b, :n], role[b, :n], turn[b, :n] = tk.tick, tk.role, tk.turn
        valid[b, :n] = True
        lm_target[b, :n] = w.lm_target
        lm_weight[b, :n] = w.lm_weight
        if n:
            t[b, n:] = tk.t[-1]  # Δt = 0 over the padding
        tick_index[b, :k] = torch.arange(w.tick_start, w.tick_end)
        has = w.summary_pos >= 0
        tick_valid[b, :k] = has
        summary_pos[b, :k] = torch.where(has, w.summary_pos, 0)
        event_label[b, :k] = torch.where(has, w.event_label, IGNORE_INDEX)
        speak[b, :k] = torch.where(has, w.speak.float(), 0.0)
        event_count[b, :k] = torch.where(has[:, None], w.event_count, IGNORE_INDEX)
        first_rank[b, :k] = torch.where(has[:, None], w.first_rank, IGNORE_INDEX)
        recall_index[b, :k] = torch.where(has[:, None] & (w.recall_index >= 0), w.recall_index + r_off, -1)
        recall_value[b, :k] = torch.where(
            has[:, None, None] & (w.recall_value >= 0), w.recall_value, IGNORE_INDEX
        )
        r_off += w.recall_video.shape[0]
        f_off += w.video.shape[0]
        a_off += w.audio.shape[0]

    video_shapes = {tuple(v.shape[1:]) for w in windows for v in (w.video, w.recall_video) if v.shape[0]}
    audio_shapes = {tuple(w.audio.shape[1:]) for w in windows if w.audio.shape[0]}
    if len(video_shapes) > 1 or len(audio_shapes) > 1:
        raise ValueError(
            f"collate: windows have different feature shapes (video {video_shapes}, audio {audio_shapes})"
        )
    as_long = lambda xs: torch.tensor(xs, dtype=torch.int64)
    return Batch(
        kind=kind,
        t=t,
        src=src,
        tick=tick,
        role=role,
        turn=turn,
        valid=valid,
        lm_target=lm_target,
        lm_weight=lm_weight,
        video=torch.cat([w.video for w in windows]),
        video_batch=torch.cat(
            [torch.full((w.video.shape[0],), b, dtype=torch.int64) for b, w in enumerate(windows)]
        ),
        audio=torch.cat([w.audio for w in windows]),
        audio_batch=torch.cat(
            [torch.full((w.audio.shape[0],), b, dtype=torch.int64) for b, w in enumerate(windows)]
        ),
        tick_index=tick_index,
        tick_valid=tick_valid,
        summary_pos=summary_pos,
        event_label=event_label,
        speak=speak,
        event_count=event_count,
        first_rank=first_rank,
        recall_index=recall_index,
        recall_video=torch.cat([w.recall_video for w in windows]),
        recall_value=recall_value,
        stream_index=as_long([w.stream_index for w in windows]),
        window_index=as_long([w.window_index for w in windows]),
        n_windows=as_long([w.n_windows for w in windows]),
        tick_start=as_long([w.tick_start for w in windows]),
        is_first=torch.tensor([w.window_index == 0 for w in windows]),
        is_last=torch.tensor([w.window_index == w.n_windows - 1 for w in windows]),
        stream_ids=[w.stream_id for w in windows],
    )


# ---------------------------------------------------------------------------------------- dataset


def _default_labels(streams, manifest_labels: Sequence[str] | None) -> list[str]:
    """background + the manifest's labels (or the sorted segment labels of ``streams``)."""
    if manifest_labels is None:
        manifest_labels = sorted({seg.label for spec in streams for seg in spec.segments})
    return ["background", *[name for name in manifest_labels if name != "background"]]


class StreamDataset(torch.utils.data.Dataset):
    """Windows of the streams of a manifest, as :class:`Window` items.

    Args:
        streams: a ``Manifest`` (its ``.streams`` are used) or a sequence of ``StreamSpec``.
        cfg: featurizer settings.
        tokenizer: text tokenizer (its ``pad_id`` pads batches: ``dataset.collate``).
        labels: label vocabulary with ``labels[0] == "background"``. Default: "background" + the
            manifest's ``labels`` (or the sorted segment labels of ``streams``). Pass the training
            vocabulary explicitly for validation sets, so that label indices agree.
        window_seconds: window length, a multiple of ``cfg.tick_seconds``; None = one window per stream.
        cache_dir: optional on-disk feature cache (see :func:`load_features`).
        memory_cache: how many decoded streams each process keeps in memory (consecutive windows of
            one stream decode it once); 0 disables. Not pickled: DataLoader workers start empty.
        recall_attributes, recall_values: the segment attributes (e.g. ["color"]) whose values at each
            label's last segment are the ``recall_value`` targets, and their shared value vocabulary.
        answer_weights: LM-loss weight of the answer to each question type (a user turn's ``type``),
            e.g. ``{"count": 4.0}``; other supervised tokens weigh 1 (:func:`lm_weights`).

    Item ``i`` is window ``w`` of stream ``s`` with ``i = index(s, w)`` (stream-major). The number of
    windows comes from the manifest's ``duration``, so nothing is decoded before an item is read.
    Holds no open files, so it pickles into DataLoader workers.
    """

    def __init__(
        self,
        streams,
        cfg: FeaturizerConfig,
        tokenizer: TurnTokenizer,
        labels: Sequence[str] | None = None,
        *,
        window_seconds: float | None = None,
        cache_dir: str | Path | None = None,
        memory_cache: int = 1,
        recall_attributes: Sequence[str] = (),
        recall_values: Sequence[str] = (),
        answer_weights: Mapping[str, float] | None = None,
    ):
        cfg.validate()
        self.answer_weights = dict(answer_weights or {})
        bad = bad_answer_weights(self.answer_weights)
        if bad:
            raise ValueError(f"answer_weights must be finite and >= 0, got {bad}")
        if isinstance(recall_attributes, str):
            raise TypeError(
                f"recall_attributes must be a sequence of names, got the string {recall_attributes!r}"
            )
        self.recall_attributes = list(recall_attributes)
        self.recall_values = list(recall_values)
        if self.recall_attributes and not self.recall_values:
            raise ValueError(f"recall_attributes={self.recall_attributes} needs a non-empty recall_values")
        manifest_labels = getattr(streams, "labels", None)
        self.streams = list(getattr(streams, "streams", streams))
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.labels = list(labels) if labels is not None else _default_labels(self.streams, manifest_labels)
        if not self.labels or self.labels[0] != "background":
            raise ValueError(f"labels must start with 'background', got {self.labels[:3]}")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.memory_cache = int(memory_cache)
        self._examples: OrderedDict[int, StreamExample] = OrderedDict()
        self.n_ticks = [num_ticks(float(spec.duration), cfg.tick_seconds) for spec in self.streams]
        if window_seconds is None:
            self.ticks_per_window = None
        else:
            tpw = window_seconds / cfg.tick_seconds
            if not (window_seconds > 0 and abs(tpw - round(tpw)) <= 1e-6 * max(1.0, tpw) and round(tpw) >= 1):
                raise ValueError(
                    f"window_seconds={window_seconds} must be a positive multiple of "
                    f"tick_seconds={cfg.tick_seconds}"
                )
            self.ticks_per_window = round(tpw)
        self.windows_per_stream = [len(self._bounds(s)) for s in range(len(self.streams))]
        self._first = np.concatenate([[0], np.cumsum(self.windows_per_stream)]).astype(np.int64)  # (S+1,)

    def _bounds(self, s: int) -> list[tuple[int, int]]:
        n = self.n_ticks[s]
        return window_bounds(n, n if self.ticks_per_window is None else self.ticks_per_window)

    def __len__(self) -> int:
        return int(self._first[-1])

    def index(self, stream: int, window: int) -> int:
        """Item index of window ``window`` of stream ``stream``."""
        if not (0 <= stream < len(self.streams) and 0 <= window < self.windows_per_stream[stream]):
            raise IndexError(f"no window {window} in stream {stream}")
        return int(self._first[stream]) + window

    def locate(self, i: int) -> tuple[int, int]:
        """(stream, window) of item ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} out of range [0, {len(self)})")
        s = int(np.searchsorted(self._first, i, side="right")) - 1
        return s, i - int(self._first[s])

    def example(self, s: int) -> StreamExample:
        """Stream ``s`` decoded, featurized, interleaved, with targets (memory-cached)."""
        if s in self._examples:
            self._examples.move_to_end(s)
            return self._examples[s]
        spec = self.streams[s]
        feats = load_features(spec, self.cfg, self.cache_dir)  # MediaError names the stream and field
        ex = build_example(
            spec,
            feats,
            self.tokenizer,
            self.labels,
            self.cfg,
            stream_index=s,
            recall_attributes=self.recall_attributes,
            recall_values=self.recall_values,
            answer_weights=self.answer_weights,
        )
        if self.memory_cache > 0:
            self._examples[s] = ex
            while len(self._examples) > self.memory_cache:
                self._examples.popitem(last=False)
        return ex

    def __getitem__(self, i: int) -> Window:
        s, w = self.locate(int(i))
        k0, k1 = self._bounds(s)[w]
        return cut_window(
            self.example(s), k0, k1, self.cfg, window_index=w, n_windows=self.windows_per_stream[s]
        )

    def windows(self, s: int) -> list[Window]:
        """All windows of stream ``s``, in order."""
        return [self[self.index(s, w)] for w in range(self.windows_per_stream[s])]

    def collate(self, windows: Sequence[Window]) -> Batch:
        """``collate`` with this dataset's PAD id (pass as a DataLoader's ``collate_fn``)."""
        return collate(windows, self.tokenizer.pad_id)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_examples"] = OrderedDict()  # decoded streams stay in their process
        return state
