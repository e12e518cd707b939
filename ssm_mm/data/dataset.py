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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ssm_mm.data.feature_cache import PixelFrames, StreamFeatures, load_features
from ssm_mm.data.featurize import FeaturizerConfig, audio_token_times
from ssm_mm.data.interleave import (
    AUDIO,
    TEXT,
    VIDEO,
    TimedTokens,
    encode_dialogue,
    interleave,
    num_ticks,
    tick_summary_positions,
)
from ssm_mm.data.tokenizer import TurnTokenizer
from ssm_mm.objectives import Objective, StreamContext, WindowSpan, build_objectives, target_spec

__all__ = [
    "StreamFeatures",
    "StreamExample",
    "Window",
    "Batch",
    "StreamDataset",
    "load_features",
    "build_example",
    "example_nbytes",
    "window_bounds",
    "cut_window",
    "collate",
]

# --------------------------------------------------------------------------------- stream example


@dataclass
class StreamExample:
    """A whole stream as one interleaved sequence with its targets.

    tokens:   TimedTokens (L,), stream-clock times; ``src`` indexes ``features`` rows (video:
              ``frame · patches_per_frame + patch``; audio: token row; text: token id).
    targets:  every objective's stream targets by key (:meth:`Objective.stream_targets`: token axis
              (L, ...), tick axis (n_ticks, ...)), e.g. ``lm`` (L,), ``event`` (n_ticks,).
    objectives: the objectives that built them (they cut them into windows).
    """

    stream_id: str
    stream_index: int
    t0: float
    n_ticks: int
    tokens: TimedTokens
    features: StreamFeatures
    targets: dict[str, Tensor]
    objectives: list[Objective]


def build_example(
    spec,
    features: StreamFeatures,
    tokenizer: TurnTokenizer,
    labels: Sequence[str],
    cfg: FeaturizerConfig,
    stream_index: int = 0,
    objectives: Iterable[Objective] | None = None,
) -> StreamExample:
    """Interleave one stream's features and dialogue and build the targets of ``objectives`` (default:
    the always-on ones) (``spec``: a StreamSpec)."""
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
    ctx = StreamContext(spec, tokens, features, tokenizer, labels, n_ticks, cfg.tick_seconds)
    objectives = list(build_objectives(None, labels).values() if objectives is None else objectives)
    targets: dict[str, Tensor] = {}
    for obj in objectives:
        targets.update(obj.stream_targets(ctx))
    return StreamExample(spec.id, stream_index, t0, n_ticks, tokens, features, targets, objectives)


# What a kept example is charged for each feature array it holds memory-mapped (from the feature
# cache): the mapping, not the file. It also bounds the open mappings: a 1 GiB budget holds at most
# 16384, well below Linux's default limit of 65530 per process (vm.max_map_count).
MAPPED_ARRAY_BYTES = 64 * 2**10


def example_nbytes(ex: StreamExample) -> int:
    """Bytes ``ex`` is charged in a dataset's memory budget: its tokens, targets and in-memory
    features, and :data:`MAPPED_ARRAY_BYTES` for each memory-mapped feature array."""
    n = sum(v.nbytes for v in ex.tokens.columns().values()) + sum(v.nbytes for v in ex.targets.values())
    for a in (ex.features.video, ex.features.video_times, ex.features.audio):
        a = a.pixels if isinstance(a, PixelFrames) else a
        if a is not None:
            n += MAPPED_ARRAY_BYTES if isinstance(a, np.memmap) else a.nbytes
    return n


# ---------------------------------------------------------------------------------------- windows


@dataclass
class Window:
    """Ticks ``[tick_start, tick_end)`` of one stream: one dataset item (unpadded).

    tokens:       TimedTokens (L,); ``src`` of media tokens indexes *this window's* ``video`` /
                  ``audio`` rows (video: ``local_frame · patches_per_frame + patch``).
    video:        (F, 3, S, S) float32 frames used by the window; frame 0 is stream frame ``video_offset``.
    audio:        (A, D) float32 audio tokens; row 0 is stream audio token ``audio_offset``.
    targets:      every objective's window targets by key (:meth:`Objective.window_targets`): token
                  axis (L, ...), tick axis (K, ...), rows (R, ...) (e.g. ``recall_frames``).
    summary_pos:  (K,) int64 position in ``tokens`` of each tick's last media token, −1 when the
                  tick has no media token (then it has no prediction and no loss).
    patches_per_frame: video tokens per frame (to re-base video ``src`` when batching).
    carry:        a window of a later piece of a joined run (:mod:`ssm_mm.training.schedule`): it
                  starts from the run's state, never ``is_first``.
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
    targets: dict[str, Tensor]
    summary_pos: Tensor
    patches_per_frame: int
    carry: bool = False


def window_bounds(n_ticks: int, ticks_per_window: int) -> list[tuple[int, int]]:
    """Tick ranges ``[k0, k1)`` tiling ``0..n_ticks`` by ``ticks_per_window`` (the last may be shorter)."""
    return [(k0, min(k0 + ticks_per_window, n_ticks)) for k0 in range(0, n_ticks, ticks_per_window)]


def _rows(a: np.ndarray | PixelFrames | None, lo: int, hi: int, shape_tail: tuple[int, ...]) -> Tensor:
    if a is None or hi <= lo:
        return torch.zeros(0, *shape_tail, dtype=torch.float32)
    if isinstance(a, PixelFrames):  # its rows come back as a new float32 array
        return torch.from_numpy(a[lo:hi])
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
    span = WindowSpan(k0, k1, lo, hi, ex.features, s)
    targets: dict[str, Tensor] = {}
    for obj in ex.objectives:
        targets.update(obj.window_targets(ex.targets, span))
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
        targets=targets,
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
    Flat per-modality features:
      video        (F, 3, S, S) float32 frames of all windows, window by window.
      video_batch  (F,) int64 batch row of each frame.
      audio        (A, D) float32 audio tokens of all windows.
      audio_batch  (A,) int64 batch row of each audio token.
    Per tick, (B, K) (tick j of row b is absolute tick ``tick_start[b] + j``):
      tick_index   int64 absolute tick, −1 on padding.
      tick_valid   bool  the tick exists and has a media token (its heads are trained).
      summary_pos  int64 position in L of the tick's last media token (0 where not ``tick_valid``).
    Targets, ``targets[key]`` for every key of the batch's objectives, padded by its declared
    :class:`~ssm_mm.objectives.Target`: token axis (B, L, ...) and tick axis (B, K, ...) hold the
    target's ``pad`` on padding (tick targets also where not ``tick_valid``); "rows" targets are the
    windows' rows concatenated (R, ...) and the tick targets that index them are re-based onto them.
    E.g. ``lm`` (B, L) next-token ids (``IGNORE_INDEX`` = −100 where unsupervised; no shift),
    ``lm_weight`` (B, L), ``event`` (B, K), ``speak`` (B, K) float32 0/1.
    Per row, (B,):
      stream_index, window_index, n_windows, tick_start  int64.
      is_first  bool  first window of its stream, not carrying another's state (start fresh).
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
    video: Tensor
    video_batch: Tensor
    audio: Tensor
    audio_batch: Tensor
    tick_index: Tensor
    tick_valid: Tensor
    summary_pos: Tensor
    targets: dict[str, Tensor]
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
    if isinstance(v, dict):
        return {k: _apply(fn, x) for k, x in v.items()}
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
    if len({tuple(w.targets) for w in windows}) > 1:
        raise ValueError(
            f"collate: windows disagree on their targets ({sorted({tuple(w.targets) for w in windows})})"
        )

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
    tick_index = full((B, K), -1, torch.int64)
    tick_valid = full((B, K), False, torch.bool)
    summary_pos = full((B, K), 0, torch.int64)

    f_off = a_off = 0
    for b, w in enumerate(windows):
        n, k = len(w.tokens), w.tick_end - w.tick_start
        tk = w.tokens
        s = tk.src.clone()
        s[tk.kind == VIDEO] += f_off * w.patches_per_frame  # local frame -> batch frame
        s[tk.kind == AUDIO] += a_off
        kind[b, :n], t[b, :n], src[b, :n] = tk.kind, tk.t, s
        tick[b, :n], role[b, :n], turn[b, :n] = tk.tick, tk.role, tk.turn
        valid[b, :n] = True
        if n:
            t[b, n:] = tk.t[-1]  # Δt = 0 over the padding
        tick_index[b, :k] = torch.arange(w.tick_start, w.tick_end)
        has = w.summary_pos >= 0
        tick_valid[b, :k] = has
        summary_pos[b, :k] = torch.where(has, w.summary_pos, 0)
        f_off += w.video.shape[0]
        a_off += w.audio.shape[0]

    video_shapes = {tuple(w.video.shape[1:]) for w in windows if w.video.shape[0]}
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
        targets={key: collate_target(key, windows, L, K) for key in windows[0].targets},
        stream_index=as_long([w.stream_index for w in windows]),
        window_index=as_long([w.window_index for w in windows]),
        n_windows=as_long([w.n_windows for w in windows]),
        tick_start=as_long([w.tick_start for w in windows]),
        is_first=torch.tensor([w.window_index == 0 and not w.carry for w in windows]),
        is_last=torch.tensor([w.window_index == w.n_windows - 1 for w in windows]),
        stream_ids=[w.stream_id for w in windows],
    )


def collate_target(key: str, windows: Sequence[Window], L: int, K: int) -> Tensor:
    """One target of ``windows`` padded into its batch tensor by its declared
    :class:`~ssm_mm.objectives.Target` (see :class:`Batch`); ``L`` / ``K``: the batch's longest
    sequence / most ticks."""
    spec = target_spec(key)
    parts = [w.targets[key] for w in windows]
    tails = {tuple(x.shape[1:]) for x in parts if spec.axis != "rows" or x.shape[0]}
    if len(tails) > 1:
        raise ValueError(f"collate: windows disagree on the shape of target {key!r} ({sorted(tails)})")
    if spec.axis == "rows":
        return torch.cat(parts).to(spec.dtype)
    tail = tails.pop() if tails else ()
    out = torch.full((len(windows), L if spec.axis == "token" else K, *tail), spec.pad, dtype=spec.dtype)
    offset = 0  # rows of the indexed "rows" target in the windows before this one
    for b, (w, x) in enumerate(zip(windows, parts)):
        if spec.axis == "token":
            out[b, : len(x)] = x
            continue
        keep = (w.summary_pos >= 0).reshape(-1, *[1] * len(tail))  # (K, 1, ...): a tick with media
        if spec.missing_below_zero:
            keep = keep & (x >= 0)
        if spec.rows is not None:
            x = torch.where(x >= 0, x + offset, x)
            offset += w.targets[spec.rows].shape[0]
        out[b, : len(x)] = torch.where(keep, x.to(spec.dtype), torch.tensor(spec.pad, dtype=spec.dtype))
    return out


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
        memory_cache: how many built streams (:class:`StreamExample`) each process always keeps in
            memory, the most recently used (consecutive windows of one stream build it once); 0 disables.
        memory_budget: bytes for keeping more of them, least recently used first out (a stream drawn
            again is not rebuilt), each charged :func:`example_nbytes`. 0 = only ``memory_cache``.
            Neither cache is pickled: DataLoader workers start empty.
        objectives: whose targets the windows carry: a config section (``cfg.objectives``, or
            ``{name: config}``) bound to ``labels`` here, or ``model.objectives`` (a model's own);
            default: the always-on objectives (lm, event, speak) with their default configs.

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
        memory_budget: int = 0,
        objectives=None,
    ):
        cfg.validate()
        manifest_labels = getattr(streams, "labels", None)
        self.streams = list(getattr(streams, "streams", streams))
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.labels = list(labels) if labels is not None else _default_labels(self.streams, manifest_labels)
        if not self.labels or self.labels[0] != "background":
            raise ValueError(f"labels must start with 'background', got {self.labels[:3]}")
        self.objectives = build_objectives(objectives, self.labels)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.memory_cache = int(memory_cache)
        self.memory_budget = int(memory_budget)
        if self.memory_cache < 0 or self.memory_budget < 0:
            raise ValueError(f"memory_cache={memory_cache} and memory_budget={memory_budget} must be >= 0")
        self._examples: OrderedDict[int, StreamExample] = OrderedDict()
        self._example_bytes: dict[int, int] = {}
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
            objectives=self.objectives.values(),
        )
        if self.memory_cache > 0 or self.memory_budget > 0:
            self._examples[s] = ex
            self._example_bytes[s] = example_nbytes(ex)
            held = sum(self._example_bytes.values())
            while len(self._examples) > self.memory_cache and held > self.memory_budget:
                old, _ = self._examples.popitem(last=False)
                held -= self._example_bytes.pop(old)
        return ex

    @property
    def kept(self) -> tuple[int, int]:
        """(streams, bytes) of the built streams kept in memory (bytes as :func:`example_nbytes`)."""
        return len(self._examples), sum(self._example_bytes.values())

    def forget(self) -> None:
        """Drop every built stream kept in memory (the next read of each builds it again)."""
        self._examples.clear()
        self._example_bytes.clear()

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
        state["_examples"] = OrderedDict()  # built streams stay in their process
        state["_example_bytes"] = {}
        return state
