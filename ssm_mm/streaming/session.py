"""StreamingSession: the public streaming inference API (SPEC §7).

A session runs one live stream through a :class:`~ssm_mm.models.multimodal.MultimodalSSM`, tick by
tick, with the same featurizer (:mod:`ssm_mm.data.featurize`) and interleaver
(:mod:`ssm_mm.data.interleave`) as training, so that its outputs equal the offline forward over the
interleaved sequence of the same media plus the session's own transcript::

    s = model.stream()                          # modalities=("video", "audio")
    s.push_video(frames, timestamps)            # uint8 (T, H, W, 3), seconds on the stream clock
    s.push_audio(samples, sample_rate, t0)      # float (N,) or (C, N); t0 = time of samples[0]
    answer = s.ask("how many times did the dog bark?")
    for ev in s.poll(): print(ev.t, ev.text)     # proactive responses
    labels = s.segment_labels()                 # per-tick event labels
    snapshot = s.state_dict()                   # model.stream(state=snapshot) resumes exactly
    s.close()

Decisions (docs/design.md gives the tick rules these follow):

* **Ticks.** Tick ``k`` owns the media with ``k·τ < t − t0 <= (k+1)·τ`` (``t0``: the session's stream
  start, option ``t0``). It is *complete* when every declared modality is known to have delivered
  everything with ``t <= t0 + (k+1)·τ``: video when a frame of a later tick was pushed or
  ``advance_to(t')`` was called with ``t'`` in a later tick; audio when the audio tokens (one per
  ``audio_token_seconds``, timed at the end of the audio they cover) up to the tick end exist. The
  **current stream time** is the end of the last processed tick (``t0`` before the first one).
* **Processing.** A completed tick's media tokens go through the model in one forward call that
  continues the recurrent state. The event head and the speak-now head read the tick's summary
  position (its last media token). When ``sigmoid(speak) > speak_threshold`` the model generates a
  proactive response (forced ``[BOT, ROLE_ASSISTANT]``, then greedy, at the tick's end time) that
  becomes part of the state and is queued for :meth:`StreamingSession.poll`. A tick without media
  has no prediction: it repeats the previous tick's label and never speaks. With ``auto_step=True``
  (default) pushes process completed ticks at once; with ``auto_step=False`` they wait for
  :func:`step_sessions`, which steps many sessions in one batched forward.
* **ask().** The question ``[BOT, ROLE_USER, bytes, EOT]`` goes in at the current stream time, then
  the answer is generated greedily (stops at EOT, at most ``max_answer_tokens`` tokens, a turn cut by
  the cap is closed with EOT); both become part of the state. Before any tick was processed there is
  no current time to place text at (text at ``t0`` belongs after tick 0's media): ``ask()`` raises
  :class:`StreamingError` instead of guessing. With ``auto_step=False``, ``ask()`` first processes this
  session's completed ticks.
* **Audio.** Multi-channel audio is mixed to mono (channel mean) and resampled to the model's rate by
  :class:`ssm_mm.media.resampler.StreamingResampler`, the chunk-exact streaming form of
  :func:`ssm_mm.media.audio.sinc_resample` (the filter ``ssm_mm.media.resample`` uses), so pieces give
  the whole-signal result (up to float32 rounding, ~1e-7). A session takes one input rate (the first
  push's); another rate later is an error. Resampling looks ahead up to
  :attr:`StreamingResampler.lookahead_seconds` (0 at the model's own rate, ~10 ms for 44.1 kHz), so
  audio up to ``t`` is complete once input up to ``t + lookahead`` arrived (or at :meth:`close`).
* **Gaps and overlaps.** A push starting after the end of the previous audio leaves a gap. A gap of
  at most ``max_gap_seconds`` (option, default 5 s) is filled with silence (zeros at the input rate),
  as :func:`ssm_mm.media.decode_audio` fills holes in a track, so audio tokens stay on one time grid
  and the result equals pushing the zeros. ``advance_to(t)`` fills started audio the same way up to
  ``t``; before the first audio push it only records that audio starts at or after ``t``. A push that
  starts before the end of the previous audio (by half an input sample or more), or before a time
  declared by ``advance_to``, is an overlap: :class:`StreamingError`. Video timestamps must be
  non-decreasing across pushes and not before an ``advance_to`` time; frames are used as pushed (any
  rate; decode at ``model.features.fps`` to match training, as the CLI does) and resized by the
  featurizer.
* **Time jumps cost O(1).** Clocks jump (an epoch-style clock after a reset, a camera paused for an
  hour); no gap is processed tick by tick or sample by sample:

  - *Audio gap longer than* ``max_gap_seconds``: a discontinuity. The audio before it gets
    ``max_gap_seconds`` of silence (at least one audio token plus the resampler look-ahead, so it
    ends exactly as with silence), then the audio stops and restarts at its next push like a first
    push: resampler and featurizer start fresh (zeros before the new start) and the token grid is
    re-anchored at the new ``t0``. No tokens exist inside the rest of the gap, which is what an
    offline pass over the two recordings featurized separately gives (a test checks exactly that).
  - *The recurrence* sees the real elapsed time once: the next token's Δt is the whole gap, so each
    SSM head decays by ``exp(A·λ)`` with ``λ = softplus(·)·Δt`` in one step (state forgotten after a
    long jump, partly kept by slow heads after a short one); the temporal embedding's gap features
    saturate at ``model.temporal.max_gap``.
  - *Ticks without media* (the gap) repeat the last label with ``has_media=False`` and never speak,
    as before; a run of ``n`` of them is emitted in O(min(n, max_pending)): only the labels the
    ``max_pending`` cap would keep are built, the others are counted in ``dropped["labels"]`` exactly
    as undrained labels are. The tick clock (:attr:`StreamingSession.time`) jumps with the media.

  Memory stays bounded by the buffers and carries whatever the gap (tests: 1.7e9 s and 3600 s jumps).
* **Buffers and memory.** Featurized media of ticks that are not complete yet are buffered; their
  bytes are capped by ``max_buffer_bytes`` (a push that would exceed it raises and leaves the session
  unchanged). :meth:`StreamingSession.memory_bytes` counts every tensor storage the session keeps
  alive (recurrent state, bounded attention cache, featurizer/resampler carry, buffers) plus pending
  labels/events; nothing grows with stream length when labels and events are drained (they are
  capped at ``max_pending``, oldest dropped). ``record=True`` keeps the transcript (for parity checks
  and logs), which grows with the number of turns and is counted too.
* **Errors.** Bad input raises :class:`StreamingError` (a ``ValueError``) naming the problem, and every
  public method is a transaction: on any exception the session is exactly as before the call.
  Session state is never mutated in place (tensors are replaced, lists copied), so a transaction is a
  shallow copy.
* **Snapshots.** :meth:`StreamingSession.state_dict` is a plain dict of tensors, numbers, strings and
  lists (``torch.save`` / ``torch.load(weights_only=True)`` round-trip it); ``model.stream(state=...)``
  resumes exactly, and sessions forked from one snapshot share nothing. A snapshot records digests of
  the model's configuration and of its weights (:func:`weights_digest`, cached per model): a model
  with another configuration or other weights refuses it. A snapshot missing a key, or holding a
  value of the wrong kind, raises :class:`StreamingError` naming the key path (``cursor.next_tick``).
* **Questions** longer than ``max_question_chars`` characters or ``max_question_tokens`` content
  tokens (options, default 512 each) are refused (:class:`StreamingError`, session unchanged): text
  far longer than the training questions only derails the state for the rest of the session.

Sessions are not thread-safe; run one session (or one :func:`step_sessions` call) at a time.

Where the parts live: this module holds the session (options, state, pushes, text, snapshots);
:mod:`ssm_mm.streaming.records` its error and the records it emits, :mod:`ssm_mm.streaming.inputs`
the checks of pushed media, :mod:`ssm_mm.streaming.batched` the tick stepper (every tick, a session
alone or many together, goes through it) and :mod:`ssm_mm.media.resampler` the streaming resampler.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ssm_mm.data.featurize import (
    AudioFeaturizer,
    AudioFeaturizerState,
    FeaturizerConfig,
    VideoFeaturizer,
    audio_token_time,
)
from ssm_mm.data.interleave import TEXT, interleave, tick_end_time, tick_index, tick_of
from ssm_mm.media.resampler import ResampleRateError, ResamplerState, StreamingResampler
from ssm_mm.state import BackboneState, ModelState
from ssm_mm.streaming.batched import TickResult, TickWork, step_round, step_sessions
from ssm_mm.streaming.inputs import as_audio, as_frames, as_rate, as_time, as_timestamps, is_real
from ssm_mm.streaming.records import StreamEvent, StreamingError, TickLabel, TranscriptTurn

if TYPE_CHECKING:
    from ssm_mm.models.multimodal import MultimodalSSM

__all__ = [
    "StreamingError",
    "SessionOptions",
    "TickLabel",
    "StreamEvent",
    "TranscriptTurn",
    "ResamplerState",
    "StreamingResampler",
    "StreamingSession",
    "step_sessions",
    "weights_digest",
]

STATE_FORMAT = "ssm_mm.StreamingSession"
# 2: snapshots record the weights digest (version 1 recorded the configuration only)
STATE_VERSION = 2
MODALITIES = ("video", "audio")
# Input pieces processed at once inside one push: bounds the transient memory of a long push or a
# long silence fill, and lets ticks complete (and buffers drain) while a long push is ingested.
_AUDIO_PIECE_SECONDS = 2.0
_VIDEO_PIECE_FRAMES = 16
# Nominal bytes of one pending label / event / transcript entry as Python objects (plus its text).
_ITEM_BYTES = 64
# Nominal bytes of the session's scalar cursor fields (ticks, times, counters).
_CURSOR_BYTES = 256


@dataclass(frozen=True)
class SessionOptions:
    """Settings of a streaming session (``model.stream(**options)``).

    modalities:        the media the stream has; a tick waits for every one of them.
    t0:                stream-clock time of the stream start; ticks are counted from it and media
                       before it is refused. Fixed for the session's lifetime.
    speak_threshold:   a proactive response is generated when sigmoid(speak head) > this (1 = never).
    max_answer_tokens: cap on generated content tokens per answer / proactive response.
    max_buffer_bytes:  cap on buffered media (featurized frames and audio tokens not yet processed).
    max_pending:       cap on undrained labels and on undrained events (oldest dropped, counted).
    auto_step:         process completed ticks inside push/advance calls (False: step_sessions does).
    record:            keep the transcript (:meth:`StreamingSession.transcript`); grows with turns.
    max_gap_seconds:   an audio gap up to this long is silence; a longer one is a discontinuity
                       (module docstring, "Gaps and time jumps"): it costs O(1), not O(gap).
    max_question_chars / max_question_tokens: caps on an ``ask()`` question (characters before
                       encoding, content tokens after); longer questions raise. Training questions
                       are a few dozen tokens: far longer text only derails the state.
    """

    modalities: tuple[str, ...] = MODALITIES
    t0: float = 0.0
    speak_threshold: float = 0.5
    max_answer_tokens: int = 32
    max_buffer_bytes: int = 16 << 20
    max_pending: int = 4096
    auto_step: bool = True
    record: bool = False
    max_gap_seconds: float = 5.0
    max_question_chars: int = 512
    max_question_tokens: int = 512

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> StreamingError:
            return StreamingError(f"session option {name}={getattr(self, name)!r}: {why}")

        mods = self.modalities
        if isinstance(mods, str):
            mods = (mods,)
        try:
            mods = tuple(mods)
        except TypeError:
            raise bad("modalities", f"expected a sequence of names from {MODALITIES}") from None
        if not mods or len(set(mods)) != len(mods) or any(m not in MODALITIES for m in mods):
            raise bad("modalities", f"expected one or both of {MODALITIES}, each once")
        object.__setattr__(self, "modalities", tuple(m for m in MODALITIES if m in mods))
        if not is_real(self.t0) or not math.isfinite(self.t0):
            raise bad("t0", "must be a finite number of seconds")
        object.__setattr__(self, "t0", float(self.t0))
        if not is_real(self.speak_threshold) or not 0.0 <= self.speak_threshold <= 1.0:
            raise bad("speak_threshold", "must be a probability in [0, 1]")
        object.__setattr__(self, "speak_threshold", float(self.speak_threshold))
        caps = (("max_answer_tokens", 1), ("max_buffer_bytes", 0), ("max_pending", 1))
        caps += (("max_question_chars", 1), ("max_question_tokens", 1))
        for name, lo in caps:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise bad(name, f"must be an integer >= {lo}")
            object.__setattr__(self, name, int(v))  # plain int: snapshots load with weights_only
        for name in ("auto_step", "record"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be True or False")
        g = self.max_gap_seconds
        if not is_real(g) or not math.isfinite(g) or g < 0:
            raise bad("max_gap_seconds", "must be a finite number of seconds >= 0")
        object.__setattr__(self, "max_gap_seconds", float(g))

    @classmethod
    def build(cls, base: SessionOptions | None = None, **opts) -> SessionOptions:
        """``base`` (or the defaults) with ``opts`` replaced; unknown names raise with the valid list."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(opts) - set(valid))
        if unknown:
            raise StreamingError(f"unknown session option(s) {unknown}; valid: {valid}")
        return dataclasses.replace(base or cls(), **opts)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["modalities"] = list(self.modalities)
        return d


# ------------------------------------------------------------------------------------- session state


@dataclass
class _State:
    """Everything a session holds. Never mutated in place: tensors are replaced, lists are copied by
    :meth:`copy`, so a shallow copy is a snapshot (transactions, forks)."""

    model: ModelState
    next_tick: int  # first tick not processed yet; current stream time = end of tick next_tick − 1
    end_tick: int | None  # set by close(): ticks < end_tick are complete regardless of media
    closed: bool
    # video: featurized frames not processed yet, and what is known about the future
    video_feats: Tensor  # (Fb, 3, S, S) float32
    video_times: Tensor  # (Fb,) float64 stream clock
    video_until: float  # no frame will come before this (last frame time or advance_to time)
    n_frames: int  # frames pushed so far
    # audio: tokens not processed yet, featurizer and resampler carry, input bookkeeping
    audio_feats: Tensor  # (Ab, D) float32
    audio_times: Tensor  # (Ab,) float64 stream clock (end of the audio each token covers)
    audio_until: float  # before the first audio push: audio starts at or after this
    audio_t0: float | None  # stream time of the first audio sample (None: no audio yet)
    audio_rate: int  # input sample rate of the pushes (0: none yet)
    audio_in: int  # input samples since audio_t0, silence fills included
    resampler: ResamplerState | None
    featurizer: AudioFeaturizerState | None
    # heads and text
    last_label: int
    last_score: float
    n_turns: int
    labels: list[TickLabel] = field(default_factory=list)
    events: list[StreamEvent] = field(default_factory=list)
    dropped_labels: int = 0
    dropped_events: int = 0
    transcript: list[TranscriptTurn] | None = None

    def copy(self) -> _State:
        c = dataclasses.replace(self)
        c.labels, c.events = list(self.labels), list(self.events)
        c.transcript = None if self.transcript is None else list(self.transcript)
        return c


def _compact(t: Tensor) -> Tensor:
    """``t`` in storage of its own size (a slice must not keep a larger buffer alive)."""
    return t if t.untyped_storage().nbytes() == t.numel() * t.element_size() else t.clone()


def _compact_model_state(s: ModelState) -> ModelState:
    bb = BackboneState([layer.map(_compact) for layer in s.backbone.layers], _compact(s.backbone.n_tokens))
    return ModelState(bb, _compact(s.last_t), _compact(s.last_kind_t))


@functools.lru_cache(maxsize=8)
def _featurizers_by_key(key: str) -> tuple[AudioFeaturizer, VideoFeaturizer]:
    cfg = FeaturizerConfig(**json.loads(key))
    return AudioFeaturizer(cfg), VideoFeaturizer(cfg)


def _featurizers(cfg: FeaturizerConfig) -> tuple[AudioFeaturizer, VideoFeaturizer]:
    """The featurizers of a config, shared by every session (they hold only constants: window, mel
    filterbank), so that a session's memory is its own state."""
    return _featurizers_by_key(json.dumps(dataclasses.asdict(cfg), sort_keys=True))


@functools.lru_cache(maxsize=32)
def _resampler(orig_sr: int, new_sr: int) -> StreamingResampler:
    """Shared resamplers (constants only: the polyphase kernel); a refused rate pair is bad input."""
    try:
        return StreamingResampler(orig_sr, new_sr)
    except ResampleRateError as e:
        raise StreamingError(str(e)) from None


def _model_digest(model: MultimodalSSM) -> str:
    """Digest of the model's configuration (architecture, features, labels, tokenizer)."""
    blob = json.dumps(model.config_dict(), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# model -> (version key, digest); weak, so a cached digest never keeps a model alive
_WEIGHTS_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _weights_key(model: torch.nn.Module) -> tuple:
    """What identifies the current weights without reading them: every parameter/buffer's storage,
    dtype and in-place version counter (optimizer steps, ``load_state_dict`` and ``.to()`` all change
    it). O(number of tensors)."""
    return tuple(
        (name, t.data_ptr(), t.dtype, tuple(t.shape), t._version)
        for name, t in model.state_dict(keep_vars=True).items()
    )


def weights_digest(model: torch.nn.Module, refresh: bool = False) -> str:
    """sha256 (hex) of the model's weights: every state_dict tensor's name, dtype, shape and bytes, in
    name order, read on the CPU (so the digest does not depend on the device).

    Computed once per model and cached; the cache is invalidated when any parameter or buffer is
    replaced or modified in place through autograd-visible ops (optimizer steps, ``load_state_dict``,
    ``.to()``). Writes through ``param.data`` bypass PyTorch's version counter: after those, pass
    ``refresh=True``.
    """
    key = _weights_key(model)
    hit = _WEIGHTS_DIGESTS.get(model)
    if hit is not None and hit[0] == key and not refresh:
        return hit[1]
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    digest = h.hexdigest()
    _WEIGHTS_DIGESTS[model] = (key, digest)
    return digest


class _Snapshot:
    """Read access to a snapshot dict that turns a missing key into a :class:`StreamingError` naming
    its full path (``cursor.next_tick``), instead of a bare KeyError; sub-dicts are wrapped too."""

    def __init__(self, d, path: str = ""):
        if not isinstance(d, dict):
            raise StreamingError(
                f"snapshot {path or 'state'} must be a dict, got {type(d).__name__} (not a "
                f"StreamingSession.state_dict() snapshot, or a damaged one)"
            )
        self.d, self.path = d, path

    def __getitem__(self, key: str):
        where = f"{self.path}.{key}" if self.path else key
        if key not in self.d:
            raise StreamingError(
                f"snapshot has no {where!r} (damaged, or not written by StreamingSession.state_dict())"
            )
        v = self.d[key]
        return _Snapshot(v, where) if isinstance(v, dict) else v

    def plain(self, *keys: str) -> dict:
        """The underlying dict, after checking that ``keys`` are present."""
        for k in keys:
            self[k]
        return self.d


# ------------------------------------------------------------------------------------------ session


class StreamingSession:
    """One live stream through a MultimodalSSM (SPEC §7); see the module docstring for the rules.

    Create it with ``model.stream(state=None, modalities=("video", "audio"), **options)``
    (:class:`SessionOptions` lists the options). ``state``: a :meth:`state_dict` snapshot to resume;
    the stream-defining options (modalities, t0) then come from it, runtime options may be changed.
    """

    def __init__(
        self,
        model: MultimodalSSM,
        state: dict | None = None,
        modalities: Sequence[str] | str | None = None,
        **options,
    ):
        self.model = model
        self.cfg: FeaturizerConfig = model.features
        self.tau = float(self.cfg.tick_seconds)
        self._audio_fz, self._video_fz = _featurizers(self.cfg)
        self._digest = _model_digest(model)
        self._device = next(model.parameters()).device
        if state is None:
            if modalities is not None:
                options["modalities"] = modalities
            self.options = SessionOptions.build(**options)
            self._st = self._fresh_state()
        else:
            self._load(state, modalities, options)

    # ------------------------------------------------------------------------------- properties

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.options.modalities

    @property
    def t0(self) -> float:
        return self.options.t0

    @property
    def time(self) -> float:
        """Current stream time: the end of the last processed tick (``t0`` before the first)."""
        k = self._st.next_tick
        return self.t0 if k == 0 else tick_end_time(k - 1, self.tau, self.t0)

    @property
    def ticks_done(self) -> int:
        """Ticks processed so far."""
        return self._st.next_tick

    @property
    def closed(self) -> bool:
        return self._st.closed

    @property
    def dropped(self) -> dict[str, int]:
        """Labels / events dropped because more than ``max_pending`` were left unread."""
        return {"labels": self._st.dropped_labels, "events": self._st.dropped_events}

    def audio_lookahead(self, sample_rate: int) -> float:
        """Seconds of input audio past a time needed before audio up to that time is complete."""
        return self._resampler(as_rate(sample_rate)).lookahead_seconds

    def __repr__(self) -> str:
        return (
            f"StreamingSession(modalities={self.modalities}, time={self.time:.3f}, ticks={self.ticks_done}, "
            f"buffered={self.buffered_bytes()} B, closed={self.closed})"
        )

    # ---------------------------------------------------------------------------------- pushes

    @torch.no_grad()
    def push_video(self, frames, timestamps) -> None:
        """Push frames ``(T, H, W, 3)`` uint8 (numpy or torch, any H, W) at ``timestamps`` (T,) seconds
        on the stream clock, non-decreasing (also across calls) and not before ``t0`` or an
        ``advance_to`` time."""
        self._check_open("push_video")
        self._check_declared("video")
        x = as_frames(frames)
        ts = as_timestamps(timestamps, x.shape[0])
        if ts.shape[0] == 0:
            return
        st = self._st
        first = float(ts[0])
        if first < self.t0:
            raise StreamingError(f"video timestamp {first} is before the stream start t0={self.t0}")
        if first < st.video_until:
            raise StreamingError(
                f"video timestamps went backwards: first timestamp {first} < {st.video_until}, the last "
                f"frame's time or a time declared by advance_to()"
            )
        with self._transaction():
            for i in range(0, x.shape[0], _VIDEO_PIECE_FRAMES):
                feats, times = self._video_fz(x[i : i + _VIDEO_PIECE_FRAMES], ts[i : i + _VIDEO_PIECE_FRAMES])
                st = self._st
                st.video_feats = torch.cat([st.video_feats, feats])  # (Fb + t, 3, S, S)
                st.video_times = torch.cat([st.video_times, times])
                st.video_until = float(times[-1])
                st.n_frames += feats.shape[0]
                self._after_ingest()

    @torch.no_grad()
    def push_audio(self, samples, sample_rate, t0) -> None:
        """Push audio ``(N,)`` or ``(C, N)`` float (numpy or torch) at ``sample_rate`` Hz whose first
        sample is at stream time ``t0``. A gap after the previous push is filled with silence, or, when
        longer than ``max_gap_seconds``, is a discontinuity (module docstring); an overlap (or a start
        before an ``advance_to`` time) raises. One input rate per session."""
        self._check_open("push_audio")
        self._check_declared("audio")
        x = as_audio(samples)
        sr = as_rate(sample_rate)
        t0 = as_time(t0, "audio t0")
        st = self._st
        if st.audio_rate and sr != st.audio_rate:
            raise StreamingError(
                f"sample_rate {sr} Hz differs from this session's audio input rate {st.audio_rate} Hz "
                f"(one input rate per session)"
            )
        if st.audio_t0 is None:  # the first push, or the first after a discontinuity
            if t0 < self.t0:
                raise StreamingError(f"audio t0={t0} is before the stream start t0={self.t0}")
            if t0 < st.audio_until:
                raise StreamingError(
                    f"audio t0={t0} is before {st.audio_until}, declared by advance_to() as the earliest "
                    f"time media may still arrive"
                )
            self._resampler(sr)  # rejects impossible rate pairs before anything changes
            gap = 0
        else:
            gap = round((t0 - st.audio_t0) * sr) - st.audio_in
            if gap < 0:
                end = st.audio_t0 + st.audio_in / sr
                raise StreamingError(
                    f"audio t0={t0} overlaps audio already pushed (or declared silent by advance_to) up to "
                    f"t={end:.6f}: audio must not go backwards"
                )
        if x.shape[0] == 0 and gap == 0:
            return
        with self._transaction():
            if gap:
                self._audio_gap(t0)  # silence, or a discontinuity that stops the audio
            if self._st.audio_t0 is None:
                self._start_audio(t0, sr)
            self._feed_audio(x)

    @torch.no_grad()
    def advance_to(self, t) -> None:
        """Declare that no media will arrive before stream time ``t``: ticks ending before ``t`` can
        complete. Started audio is filled with silence up to ``t`` (a gap longer than
        ``max_gap_seconds`` is a discontinuity, as in :meth:`push_audio`). An earlier ``t`` is a no-op."""
        self._check_open("advance_to")
        t = as_time(t, "advance_to time")
        with self._transaction():
            st = self._st
            if "video" in self.modalities and t > st.video_until:
                st.video_until = t
            if "audio" in self.modalities:
                if st.audio_t0 is None:
                    st.audio_until = max(st.audio_until, t)
                else:
                    self._audio_gap(t)
            self._after_ingest()

    @torch.no_grad()
    def close(self) -> None:
        """End of the stream: flush the resampler and process every buffered tick, the last partial
        one included (an incomplete last audio token does not exist, as offline). Idempotent; no
        media may be pushed afterwards (``ask`` still works)."""
        if self._st.closed:
            return
        with self._transaction():
            self._end_media()
            self._advance(force=True)
            self._mark_closed()

    def _end_media(self) -> None:
        """close(), first half: flush the resampler and mark the last tick complete (no stepping)."""
        st = self._st
        if st.resampler is not None and st.audio_rate:
            y, st.resampler = self._resampler(st.audio_rate).flush(st.resampler)
            self._featurize_audio(y)
        last = st.next_tick - 1
        for times in (st.video_times, st.audio_times):
            if times.shape[0]:
                last = max(last, tick_index(float(times[-1]) - self.t0, self.tau))
        st.end_tick = last + 1

    def _mark_closed(self) -> None:
        """close(), last half, once every tick is processed."""
        self._st.closed = True

    # ------------------------------------------------------------------------------------ text

    @torch.no_grad()
    def ask(self, text: str) -> str:
        """Ask ``text`` at the current stream time; returns the generated answer (greedy, stops at EOT
        or after ``max_answer_tokens``). Question and answer become part of the state."""
        if not isinstance(text, str):
            raise StreamingError(f"question must be a str, got {type(text).__name__}")
        if not text.strip():
            raise StreamingError("question text is empty")
        opts, tok = self.options, self.model.tokenizer
        if len(text) > opts.max_question_chars:
            raise StreamingError(
                f"question has {len(text)} characters > max_question_chars={opts.max_question_chars} "
                f"(a session option)"
            )
        q_ids = tok.encode_turn("user", text)  # [BOT, ROLE, content..., EOT]
        n_content = len(q_ids) - 3
        if n_content > opts.max_question_tokens:
            raise StreamingError(
                f"question has {n_content} tokens > max_question_tokens={opts.max_question_tokens} "
                f"(a session option)"
            )
        if self._st.next_tick == 0 and self._complete_until() == 0:
            raise StreamingError(
                "ask() before the first tick completed: there is no stream time to ask at yet (text at "
                f"t0 goes after tick 0's media); push media up to t0 + {self.tau} s or call "
                f"advance_to(t) with t > {self.t0 + self.tau}"
            )
        with self._transaction():
            t, state = self._read_turn(q_ids)
            ids, state, _ = self.model.generate(state, t, self.options.max_answer_tokens, role="assistant")
            st = self._st
            st.model = _compact_model_state(state)
            answer = tok.decode(ids[0])
            a_ids = (tok.bot_id, tok.role_id("assistant"), *ids[0], tok.eot_id)
            st.n_turns += 2
            if st.transcript is not None:
                st.transcript.append(TranscriptTurn(t, "user", tuple(q_ids), text))
                st.transcript.append(TranscriptTurn(t, "assistant", a_ids, answer))
        return answer

    def _read_turn(self, ids: Sequence[int]) -> tuple[float, ModelState]:
        """The model state after the encoded turn ``ids`` at the current stream time (the completed
        ticks first), and that time; the session's own state is not changed. Call inside
        ``_transaction``."""
        self._advance(force=True)
        t, dev = self.time, self._device
        kind = torch.full((1, len(ids)), TEXT, dtype=torch.int64, device=dev)
        times = torch.full((1, len(ids)), t, dtype=torch.float64, device=dev)
        src = torch.tensor([list(ids)], dtype=torch.int64, device=dev)
        return t, self.model(kind, times, src, state=self._st.model).state

    def poll(self) -> list[StreamEvent]:
        """Proactive responses emitted since the last call (drained)."""
        out, self._st.events = self._st.events, []
        return out

    def segment_labels(self) -> list[TickLabel]:
        """Per-tick event labels emitted since the last call (drained), ticks ascending."""
        out, self._st.labels = self._st.labels, []
        return out

    def transcript(self) -> list[TranscriptTurn]:
        """Every text turn so far, in order (needs ``record=True``)."""
        if self._st.transcript is None:
            raise StreamingError("the transcript is only kept with model.stream(record=True)")
        return list(self._st.transcript)

    # ---------------------------------------------------------------------------------- memory

    def _held_tensors(self) -> Iterator[Tensor]:
        st = self._st
        for layer in st.model.backbone.layers:
            yield from layer.tensors().values()
        yield from (st.model.backbone.n_tokens, st.model.last_t, st.model.last_kind_t)
        yield from (st.video_feats, st.video_times, st.audio_feats, st.audio_times)
        if st.featurizer is not None:
            yield from (st.featurizer.tail, st.featurizer.pending)
        if st.resampler is not None:
            yield st.resampler.carry

    def memory_bytes(self) -> int:
        """Bytes held by the session: every tensor storage it keeps alive (recurrent state, attention
        cache, featurizer/resampler carry, media buffers; counted once per storage), plus pending
        labels/events (and the transcript with ``record=True``) at a nominal size per item. Constants
        shared by all sessions (model weights, mel filterbank, resampling kernels) are not counted."""
        storages: dict[int, int] = {}
        for t in self._held_tensors():
            s = t.untyped_storage()
            storages[s.data_ptr()] = max(storages.get(s.data_ptr(), 0), s.nbytes())
        st = self._st
        items = len(st.labels) * _ITEM_BYTES
        items += sum(_ITEM_BYTES + 8 * len(e.ids) + len(e.text.encode()) for e in st.events)
        if st.transcript is not None:
            items += sum(_ITEM_BYTES + 8 * len(x.ids) + len(x.text.encode()) for x in st.transcript)
        return sum(storages.values()) + items + _CURSOR_BYTES

    def buffered_bytes(self) -> int:
        """Bytes of buffered media (the part capped by ``max_buffer_bytes``)."""
        st = self._st
        return sum(
            t.numel() * t.element_size()
            for t in (st.video_feats, st.video_times, st.audio_feats, st.audio_times)
        )

    # -------------------------------------------------------------------------------- snapshots

    def state_dict(self) -> dict:
        """A plain snapshot (tensors, numbers, strings, lists, dicts) of everything the session holds.

        Survives ``torch.save`` / ``torch.load(weights_only=True)``; ``model.stream(state=sd)`` resumes
        exactly. Tensors are copies (on the CPU).
        """
        st = self._st
        cpu = lambda t: t.detach().to("cpu", copy=True)
        return {
            "format": STATE_FORMAT,
            "format_version": STATE_VERSION,
            "model_digest": self._digest,
            "weights_digest": weights_digest(self.model),
            "options": self.options.to_dict(),
            "model_state": {k: cpu(v) for k, v in st.model.to_dict().items()},
            "cursor": {
                "next_tick": st.next_tick,
                "end_tick": -1 if st.end_tick is None else st.end_tick,
                "closed": st.closed,
                "n_turns": st.n_turns,
                "last_label": st.last_label,
                "last_score": st.last_score,
                "dropped_labels": st.dropped_labels,
                "dropped_events": st.dropped_events,
            },
            "video": {
                "feats": cpu(st.video_feats),
                "times": cpu(st.video_times),
                "until": st.video_until,
                "n_frames": st.n_frames,
            },
            "audio": {
                "feats": cpu(st.audio_feats),
                "times": cpu(st.audio_times),
                "until": st.audio_until,
                "t0": st.audio_t0,
                "rate": st.audio_rate,
                "n_in": st.audio_in,
                "resampler": None if st.resampler is None else st.resampler.to_dict(),
                "featurizer": None if st.featurizer is None else st.featurizer.to_dict(),
            },
            "labels": [dataclasses.asdict(x) for x in st.labels],
            "events": [{**dataclasses.asdict(e), "ids": list(e.ids)} for e in st.events],
            "transcript": None
            if st.transcript is None
            else [{**dataclasses.asdict(x), "ids": list(x.ids)} for x in st.transcript],
        }

    def _load(self, sd: dict, modalities, options: dict) -> None:
        if not isinstance(sd, dict) or sd.get("format") != STATE_FORMAT:
            why = "not a dict" if not isinstance(sd, dict) else f"its 'format' is {sd.get('format')!r}"
            raise StreamingError(f"state is not a StreamingSession.state_dict() snapshot ({why})")
        if sd.get("format_version") != STATE_VERSION:
            raise StreamingError(
                f"snapshot format_version {sd.get('format_version')!r} is not supported (this ssm_mm reads "
                f"{STATE_VERSION}; version 1 snapshots do not record the weights they were taken with)"
            )
        snap = _Snapshot(sd)
        if snap["model_digest"] != self._digest:
            raise StreamingError(
                "snapshot was taken with a model of another configuration (config digest "
                f"{snap['model_digest']} != {self._digest})"
            )
        mine = weights_digest(self.model)
        if snap["weights_digest"] != mine:
            raise StreamingError(
                "snapshot was taken with a model of the same configuration but other weights (weights "
                f"digest {str(snap['weights_digest'])[:16]}... != {mine[:16]}...)"
            )
        try:
            self._load_checked(snap, modalities, options)
        except StreamingError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            raise StreamingError(f"snapshot is damaged: {type(e).__name__}: {e}") from None

    def _load_checked(self, sd: _Snapshot, modalities, options: dict) -> None:
        saved = dict(sd["options"].plain(*(f.name for f in dataclasses.fields(SessionOptions))))
        saved["modalities"] = tuple(saved["modalities"])
        base = SessionOptions.build(**saved)
        if modalities is not None:
            options["modalities"] = modalities
        for name in ("modalities", "t0"):
            if name in options:
                want = SessionOptions.build(base, **{name: options.pop(name)})
                if getattr(want, name) != getattr(base, name):
                    raise StreamingError(
                        f"cannot change {name} of a resumed session ({getattr(base, name)!r} in the snapshot)"
                    )
        options = SessionOptions.build(base, **options)
        dev = self._device
        c, v, a = sd["cursor"], sd["video"], sd["audio"]
        ms = sd["model_state"].plain()
        want = set(self.model.init_state(1).to_dict())
        if set(ms) != want:
            missing, extra = sorted(want - set(ms)), sorted(set(ms) - want)
            raise StreamingError(
                f"snapshot model_state does not match this model's state: missing {missing}, "
                f"unexpected {extra}"
            )
        model_state = ModelState.from_dict({k: t.to(dev) for k, t in ms.items()})
        fz, rs = a["featurizer"], a["resampler"]
        st = _State(
            model=_compact_model_state(model_state),
            next_tick=int(c["next_tick"]),
            end_tick=None if int(c["end_tick"]) < 0 else int(c["end_tick"]),
            closed=bool(c["closed"]),
            video_feats=v["feats"].to(torch.float32).clone(),
            video_times=v["times"].to(torch.float64).clone(),
            video_until=float(v["until"]),
            n_frames=int(v["n_frames"]),
            audio_feats=a["feats"].to(torch.float32).clone(),
            audio_times=a["times"].to(torch.float64).clone(),
            audio_until=float(a["until"]),
            audio_t0=None if a["t0"] is None else float(a["t0"]),
            audio_rate=int(a["rate"]),
            audio_in=int(a["n_in"]),
            resampler=None if rs is None else ResamplerState.from_dict(rs.plain("carry", "n_in", "n_out")),
            featurizer=None
            if fz is None
            else AudioFeaturizerState.from_dict(fz.plain("tail", "pending", "n_samples", "t0")),
            last_label=int(c["last_label"]),
            last_score=float(c["last_score"]),
            n_turns=int(c["n_turns"]),
            labels=[TickLabel(**x) for x in sd["labels"]],
            events=[StreamEvent(**{**e, "ids": tuple(e["ids"])}) for e in sd["events"]],
            dropped_labels=int(c["dropped_labels"]),
            dropped_events=int(c["dropped_events"]),
        )
        saved_tr = sd["transcript"]
        if options.record:
            st.transcript = [TranscriptTurn(**{**x, "ids": tuple(x["ids"])}) for x in saved_tr or []]
        self.options, self._st = options, st

    # ------------------------------------------------------------------------------- internals

    def _fresh_state(self) -> _State:
        cfg = self.cfg
        s = cfg.frame_size
        return _State(
            model=self.model.init_state(1, self._device),
            next_tick=0,
            end_tick=None,
            closed=False,
            video_feats=torch.zeros(0, 3, s, s, dtype=torch.float32),
            video_times=torch.zeros(0, dtype=torch.float64),
            video_until=-math.inf,
            n_frames=0,
            audio_feats=torch.zeros(0, cfg.audio_token_dim, dtype=torch.float32),
            audio_times=torch.zeros(0, dtype=torch.float64),
            audio_until=-math.inf,
            audio_t0=None,
            audio_rate=0,
            audio_in=0,
            resampler=None,
            featurizer=None,
            last_label=0,
            last_score=float("nan"),
            n_turns=0,
            transcript=[] if self.options.record else None,
        )

    @contextlib.contextmanager
    def _transaction(self):
        """On any exception, put the session back exactly as it was (state is never mutated in place)."""
        saved = self._st.copy()
        try:
            yield
        except BaseException:
            self._st = saved
            raise

    def _check_open(self, what: str) -> None:
        if self._st.closed:
            raise StreamingError(f"{what}(): the session is closed (close() ended the stream)")

    def _check_declared(self, modality: str) -> None:
        if modality not in self.modalities:
            raise StreamingError(
                f"this session's modalities are {self.modalities}: it does not take {modality} "
                f"(open it with model.stream(modalities=...))"
            )

    def _resampler(self, sr: int) -> StreamingResampler:
        return _resampler(sr, self.cfg.sample_rate)

    def _start_audio(self, t0: float, sr: int) -> None:
        st = self._st
        st.audio_t0, st.audio_rate, st.audio_in = t0, sr, 0
        st.resampler = self._resampler(sr).init_state()
        st.featurizer = self._audio_fz.init_state(t0=t0)

    def _feed_audio(self, x: Tensor) -> None:
        """Input-rate samples -> resampler -> featurizer -> buffer, in pieces (ticks run in between)."""
        piece = max(1, int(_AUDIO_PIECE_SECONDS * self._st.audio_rate))
        rs = self._resampler(self._st.audio_rate)
        for i in range(0, x.shape[0], piece):
            st = self._st
            chunk = x[i : i + piece]
            y, st.resampler = rs(chunk, st.resampler)
            st.audio_in += chunk.shape[0]
            self._featurize_audio(y)
            self._after_ingest()

    def _feed_silence(self, n: int) -> None:
        """``n`` input-rate zeros through :meth:`_feed_audio`, allocated one piece at a time."""
        piece = max(1, int(_AUDIO_PIECE_SECONDS * self._st.audio_rate))
        for i in range(0, n, piece):
            self._feed_audio(torch.zeros(min(piece, n - i), dtype=torch.float32))

    def _audio_gap(self, t: float) -> None:
        """Started audio up to stream time ``t`` (the next push's start, or an ``advance_to`` time).

        A gap of up to ``max_gap_seconds`` is silence, sample by sample (as ``decode_audio`` fills a
        hole). A longer gap is a discontinuity: ``max_gap_seconds`` of silence (at least one audio
        token plus the resampler look-ahead, so the audio before the gap ends exactly as with
        silence), then the audio stops: resampler and featurizer are dropped and the audio restarts
        at its next push, at or after ``t``, as a first push does. The cost is bounded by
        ``max_gap_seconds`` whatever the gap.
        """
        st = self._st
        sr = st.audio_rate
        gap = round((t - st.audio_t0) * sr) - st.audio_in
        if gap <= 0:
            return
        tail = math.ceil((self.cfg.audio_token_seconds + self._resampler(sr).lookahead_seconds) * sr) + 1
        fill = max(round(self.options.max_gap_seconds * sr), tail)
        if gap <= fill:
            self._feed_silence(gap)
            return
        self._feed_silence(fill)
        st = self._st
        st.audio_t0, st.audio_in, st.resampler, st.featurizer = None, 0, None, None
        st.audio_until = t  # like before a first push: audio resumes at or after t

    def _featurize_audio(self, y: Tensor) -> None:
        st = self._st
        if y.shape[0] == 0:
            return
        feats, times, st.featurizer = self._audio_fz(y, st.featurizer)
        if feats.shape[0]:
            st.audio_feats = torch.cat([st.audio_feats, feats])  # (Ab + n, D)
            st.audio_times = torch.cat([st.audio_times, times])

    def _after_ingest(self) -> None:
        """Run completed ticks (auto_step), then enforce the buffer cap (the caller's transaction undoes
        the whole call when it is exceeded)."""
        if self.options.auto_step:
            self._advance()
        used, cap = self.buffered_bytes(), self.options.max_buffer_bytes
        if used > cap:
            waiting = " and ".join(
                m for m in self.modalities if self._modality_next_tick(m) <= self._st.next_tick
            )
            raise StreamingError(
                f"media buffer would hold {used} bytes > max_buffer_bytes={cap}: ticks from "
                f"t={self.time:.3f} cannot complete until {waiting or 'a step'} media arrives"
                + ("" if self.options.auto_step else " (call step_sessions)")
            )

    def _modality_next_tick(self, modality: str) -> int:
        """First tick that ``modality`` has not completed (ticks before it have all their media)."""
        st = self._st
        if modality == "video":
            return 0 if st.video_until == -math.inf else tick_index(st.video_until - self.t0, self.tau)
        if st.audio_t0 is None:
            return 0 if st.audio_until == -math.inf else tick_index(st.audio_until - self.t0, self.tau)
        n_tok = st.featurizer.n_samples // self.cfg.samples_per_token
        t_next = audio_token_time(self.cfg, st.audio_t0, n_tok)  # the next token's time
        return tick_index(t_next - self.t0, self.tau)

    def _complete_until(self) -> int:
        """Ticks ``< this`` are complete."""
        st = self._st
        if st.end_tick is not None:
            return st.end_tick
        return min(self._modality_next_tick(m) for m in self.modalities)

    def _advance(self, force: bool = False) -> None:
        """Process this session's completed ticks (one forward each, through the batched stepper)."""
        if not (self.options.auto_step or force):
            return
        while self._has_complete_tick():
            step_round([self])

    # ------------------------------------------------- stepping interface (ssm_mm.streaming.batched)

    def _has_complete_tick(self) -> bool:
        """Whether tick ``next_tick`` is complete (all its media known), so it can be processed."""
        return self._st.next_tick < self._complete_until()

    def _take_tick(self) -> TickWork | None:
        """Remove the next complete tick's media from the buffers (time-sorted, so a tick's media is
        their head) and hand it to the stepper with the current state; ``None`` when the tick has no
        media: then the whole run of media-less ticks is recorded here (:meth:`_skip_empty_ticks`)."""
        st, k = self._st, self._st.next_tick
        nv = int((tick_of(st.video_times - self.t0, self.tau) <= k).sum()) if st.video_times.shape[0] else 0
        na = int((tick_of(st.audio_times - self.t0, self.tau) <= k).sum()) if st.audio_times.shape[0] else 0
        vf, vt, af, at = st.video_feats[:nv], st.video_times[:nv], st.audio_feats[:na], st.audio_times[:na]
        st.video_feats, st.video_times = _compact(st.video_feats[nv:]), _compact(st.video_times[nv:])
        st.audio_feats, st.audio_times = _compact(st.audio_feats[na:]), _compact(st.audio_times[na:])
        if nv == 0 and na == 0:  # no media: no prediction, repeat the last label
            self._skip_empty_ticks(k)  # the whole run of media-less ticks at once (a time jump is O(1))
            return None
        tokens = interleave(vt, at, [], self.cfg, t0=self.t0)  # (L,) this tick's media in training order
        return TickWork(k, tick_end_time(k, self.tau, self.t0), tokens, vf, af, st.model)

    def _finish_tick(self, work: TickWork, result: TickResult) -> None:
        """Record the stepper's result for ``work`` (taken by :meth:`_take_tick`): the new state, the
        tick's label, and the proactive response (queued for :meth:`poll`) if the head fired."""
        st, k = self._st, work.tick
        st.model = _compact_model_state(result.state)
        st.last_label, st.last_score = result.label, result.score
        self._push_label(
            TickLabel(
                tick=k,
                start=self.t0 + k * self.tau,
                end=work.end,
                label=self.model.labels[result.label],
                index=result.label,
                score=result.score,
                speak=result.speak,
            )
        )
        if result.response is not None:
            tok, ids = self.model.tokenizer, result.response
            text = tok.decode(ids)
            full = (tok.bot_id, tok.role_id("assistant"), *ids, tok.eot_id)
            self._push_event(StreamEvent(t=work.end, text=text, ids=tuple(ids), score=result.speak))
            st.n_turns += 1
            if st.transcript is not None:
                st.transcript.append(TranscriptTurn(work.end, "assistant", full, text, proactive=True))
        st.next_tick = k + 1

    # ------------------------------------------------------------------------------ tick records

    def _skip_empty_ticks(self, k: int) -> None:
        """Ticks ``k, k+1, ...`` up to the next tick with buffered media (or the first incomplete one)
        have no media: each repeats the last label (``has_media=False``). A run of ``n`` such ticks
        costs O(min(n, max_pending)): only the labels the ``max_pending`` cap would keep are built,
        the rest are counted in ``dropped["labels"]``, exactly as if they had been queued one by one."""
        st = self._st
        end = self._complete_until()
        for times in (st.video_times, st.audio_times):
            if times.shape[0]:
                end = min(end, tick_index(float(times[0]) - self.t0, self.tau))
        end = max(end, k + 1)
        cap = self.options.max_pending
        first = max(k, end - cap)  # ticks before it would be dropped by the cap anyway
        name = self.model.labels[st.last_label]
        new = [
            TickLabel(
                tick=j,
                start=self.t0 + j * self.tau,
                end=tick_end_time(j, self.tau, self.t0),
                label=name,
                index=st.last_label,
                score=st.last_score,
                speak=0.0,
                has_media=False,
            )
            for j in range(first, end)
        ]
        labels = st.labels + new
        st.dropped_labels += (first - k) + max(0, len(labels) - cap)
        st.labels = labels[-cap:]
        st.next_tick = end

    def _push_label(self, label: TickLabel) -> None:
        st = self._st
        st.labels.append(label)
        if len(st.labels) > self.options.max_pending:
            del st.labels[0]
            st.dropped_labels += 1

    def _push_event(self, ev: StreamEvent) -> None:
        st = self._st
        st.events.append(ev)
        if len(st.events) > self.options.max_pending:
            del st.events[0]
            st.dropped_events += 1
