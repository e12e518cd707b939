"""Drive streaming sessions from decoded media files, tick by tick, as a live source would.

This is the one driving loop used by the command-line demo (``python -m ssm_mm.streaming``) and the
evaluation harness (:mod:`ssm_mm.evaluation`)::

    media = decode_stream_media("clip.mp4", "clip.mp4", fps=model.features.fps, t0=0.0)
    s = model.stream(modalities=media.modalities, t0=media.t0)
    result = drive(s, media, [Question(12.5, "how many times did the dog bark?")])
    result.labels, result.events, result.answers, result.tick_latency

The feeding rule (one *round* per tick): before the end of tick ``k`` is declared with
``advance_to(c)``, ``c = t0 + (k+1)·τ + margin``, every frame and audio sample with time ``< c`` is
pushed; ``margin`` (at least 1 ms) covers the audio resampler's look-ahead, so tick ``k`` completes in
round ``k`` as soon as its media is in. ``advance_to`` is only called while the audio track still has
samples after ``c``: past the end of the audio it would fill silence that the offline path does not
have (declaring the end of a finished video track is harmless: no frame will come). The ticks after
the end of the audio complete at ``close()``. Over a gap in the media (a clock jump in a file's
timestamps) the rounds that would push nothing are skipped: the next round is the one before the next
media's tick (or a pending question's tick), and the session emits the gap's empty ticks at once, so a
gap of any length costs O(1) rounds.

Questions: a question at media time ``T`` is placed at the end of the tick holding ``T`` (where
training puts text, :func:`ssm_mm.data.interleave.place_text_time`) and asked once the session's
current time reaches that placed time, i.e. right after the round that completes its tick. Questions
still pending when the stream ends are asked after ``close()`` (at the final stream time, which is
later than their placed time if the media is shorter than the question's time; :class:`AskRecord`
keeps both times).

Many sessions are driven in lockstep by :func:`drive_many`: round ``k`` pushes tick ``k``'s media into
every session, then :func:`~ssm_mm.streaming.session.step_sessions` processes every session's tick in
one batched forward (sessions opened with ``auto_step=False``; with ``auto_step=True`` the pushes
process the ticks and the step is a no-op).

Long streams made of short ones: :func:`concat_media` joins decoded streams end to end on one clock
(piece ``k`` starts at the sum of the earlier pieces' lengths), so the same driver streams them through
one session with the state carried across the joins.

Latency: a tick's latency is the wall time of the round that completed it (every session's pushes,
which featurize the media, plus the batched step), divided by the ticks the round completed for that
session. With ``B`` sessions in one batch it is the latency each of ``B`` concurrently served live
streams sees. Time spent in ``ask()`` is measured separately (:attr:`AskRecord.seconds`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ssm_mm.data.interleave import place_text_time, tick_index
from ssm_mm.streaming.batched import step_sessions
from ssm_mm.streaming.records import StreamEvent, TickLabel
from ssm_mm.streaming.session import StreamingSession

__all__ = [
    "StreamMedia",
    "Question",
    "AskRecord",
    "DriveResult",
    "decode_stream_media",
    "concat_media",
    "drive",
    "drive_many",
]

# Smallest margin past a tick end at which the tick is declared complete (seconds).
_MIN_MARGIN = 1e-3
# Two stream-clock times closer than this are the same time (float noise of t0 + k·τ).
_TIME_EPS = 1e-9


@dataclass
class StreamMedia:
    """One stream's decoded media on the stream clock (``t0`` = clock time of media time 0).

    frames:       (F, H, W, 3) uint8 video frames; F = 0 when the stream has no video.
    frame_times:  (F,) float64 stream-clock timestamps, non-decreasing.
    samples:      (N,) float32 mono audio at ``sample_rate``; N = 0 when it has no audio.
    audio_t0:     stream-clock time of ``samples[0]``.
    has_video / has_audio: which tracks the stream declares (a declared track may still be empty).
    """

    t0: float
    frames: Tensor
    frame_times: np.ndarray
    samples: Tensor
    sample_rate: int
    audio_t0: float
    has_video: bool
    has_audio: bool

    @property
    def modalities(self) -> tuple[str, ...]:
        """The session modalities this media needs, ``("video", "audio")`` order."""
        return tuple(m for m, on in (("video", self.has_video), ("audio", self.has_audio)) if on)

    def track_ends(self) -> list[float]:
        """Stream-clock end of each declared track (video: its last frame's time; audio: the end of
        its last sample)."""
        ends = []
        if self.has_video:
            ends.append(float(self.frame_times[-1]) if len(self.frame_times) else self.t0)
        if self.has_audio:
            ends.append(self.audio_t0 + self.samples.shape[0] / self.sample_rate)
        return ends

    @property
    def end(self) -> float:
        """Stream-clock time at which the last track ends."""
        return max(self.track_ends(), default=self.t0)

    @property
    def seconds(self) -> float:
        """Seconds of media (from ``t0`` to the end of the last track)."""
        return self.end - self.t0


def decode_stream_media(
    video: str | Path | None,
    audio: str | Path | None,
    fps: float,
    t0: float = 0.0,
    sample_rate: int | None = None,
) -> StreamMedia:
    """Decode a stream's media as a live source would deliver it to a session.

    Args:
        video: file whose video track is used (None: no video).
        audio: file whose audio track is used (the video file itself for its own track; None: no audio).
        fps: video decoding rate, the model's ``features.fps`` (the frames training sees; the session
            resizes them).
        t0: stream-clock time of media time 0 (a manifest's ``t0``).
        sample_rate: audio decoding rate; None = the file's own rate (the session resamples it while
            streaming, as a live source at another rate would be).

    Raises:
        MediaError (a ValueError) naming the file when a track cannot be decoded; ValueError when
        neither a video nor an audio file is given.
    """
    from ssm_mm.media import decode_audio, decode_video, probe_media

    if video is None and audio is None:
        raise ValueError("nothing to stream: neither a video nor an audio file is given")
    t0 = float(t0)
    frames = torch.zeros(0, 1, 1, 3, dtype=torch.uint8)
    ftimes = np.zeros(0, dtype=np.float64)
    if video is not None:
        clip = decode_video(video, fps=fps)
        frames, ftimes = clip.frames, t0 + clip.timestamps.numpy().astype(np.float64)
    samples, sr, a_t0 = torch.zeros(0), int(sample_rate or 16000), t0
    if audio is not None:
        rate = sample_rate or probe_media(audio).sample_rate or 16000
        aclip = decode_audio(audio, sample_rate=int(rate))
        samples, sr, a_t0 = aclip.samples, aclip.sample_rate, t0 + aclip.t0
    return StreamMedia(
        t0=t0,
        frames=frames,
        frame_times=ftimes,
        samples=samples,
        sample_rate=int(sr),
        audio_t0=float(a_t0),
        has_video=video is not None,
        has_audio=audio is not None,
    )


def concat_media(pieces: Sequence[tuple[StreamMedia, float]], t0: float = 0.0) -> StreamMedia:
    """One stream made of ``pieces`` played end to end on one clock starting at ``t0``.

    Each piece is ``(media, seconds)``: its media from its own media time 0 (its ``t0``) up to
    ``seconds`` (a manifest stream's ``duration``), placed at media time ``offset_k`` = the sum of the
    earlier pieces' seconds. Frames at or past a piece's end are dropped; its audio is cut or padded
    with silence to exactly ``[offset_k, offset_k + seconds)`` (sample ``round(offset·sr)`` onwards), so
    the joined track is one contiguous signal and timestamps stay strictly ordered across joins. The
    tracks are the union of the pieces': a piece without audio gives silence, one without video no
    frames. Audio at another rate than the first piece's is resampled to it, frames of another size are
    resized to the first piece's (a session takes one input rate; frames go in one tensor).

    Copies the media (the result holds every frame and sample of the long stream). ValueError when
    ``pieces`` is empty or a length is not a positive number.
    """
    from ssm_mm.media import resample, resize_frames

    if not pieces:
        raise ValueError("concat_media: no pieces")
    lengths = [float(sec) for _, sec in pieces]
    if any(not (math.isfinite(x) and x > 0) for x in lengths):
        raise ValueError(f"concat_media: piece lengths must be positive seconds, got {lengths}")
    offsets = np.concatenate([[0.0], np.cumsum(lengths)])
    has_video = any(m.has_video for m, _ in pieces)
    has_audio = any(m.has_audio for m, _ in pieces)
    sized = [m.frames for m, _ in pieces if m.has_video and m.frames.shape[0]]
    hw = tuple(sized[0].shape[1:3]) if sized else (1, 1)
    rates = [m.sample_rate for m, _ in pieces if m.has_audio]
    sr = rates[0] if rates else 16000
    frames, ftimes, audio = [], [], []
    for k, (m, _) in enumerate(pieces):
        if m.has_video and m.frames.shape[0]:
            local = m.frame_times - m.t0
            keep = local < lengths[k] - _TIME_EPS
            f = m.frames[torch.from_numpy(keep)]
            frames.append(f if tuple(f.shape[1:3]) == hw else resize_frames(f, hw))
            ftimes.append(t0 + offsets[k] + local[keep])
        if not has_audio:
            continue
        n = round(offsets[k + 1] * sr) - round(offsets[k] * sr)  # samples this piece spans
        x = torch.zeros(n, dtype=torch.float32)
        if m.has_audio and m.samples.shape[0]:
            y = m.samples if m.sample_rate == sr else resample(m.samples, m.sample_rate, sr)
            lead = round((m.audio_t0 - m.t0) * sr)  # where the piece's audio starts in its own time
            src = y[max(0, -lead) :]
            dst = max(0, lead)
            take = max(0, min(n - dst, src.shape[0]))
            x[dst : dst + take] = src[:take]
        audio.append(x)
    empty = torch.zeros(0, *hw, 3, dtype=torch.uint8)
    return StreamMedia(
        t0=float(t0),
        frames=torch.cat(frames) if frames else empty,
        frame_times=np.concatenate(ftimes) if ftimes else np.zeros(0, dtype=np.float64),
        samples=torch.cat(audio) if audio else torch.zeros(0),
        sample_rate=int(sr),
        audio_t0=float(t0),
        has_video=has_video,
        has_audio=has_audio,
    )


@dataclass(frozen=True)
class Question:
    """A question to ask at media time ``t`` (seconds from the stream's media start)."""

    t: float
    text: str


@dataclass(frozen=True)
class AskRecord:
    """A question that was asked.

    index:    the question's position in the list given to the driver.
    t:        the question's media time.
    placed:   stream-clock time it belongs at (end of the tick holding ``t``).
    asked_at: stream-clock time it was asked at (``placed``, or the final stream time when the
              media ended first); None when it could not be asked (the stream produced no tick).
    answer:   the generated answer (None when not asked).
    seconds:  wall time of the ``ask()`` call.
    """

    index: int
    t: float
    text: str
    placed: float
    asked_at: float | None
    answer: str | None
    seconds: float = 0.0

    @property
    def late(self) -> bool:
        return self.asked_at is not None and self.asked_at > self.placed + _TIME_EPS


@dataclass
class DriveResult:
    """What one session produced while driven (every label and event, in stream order)."""

    labels: list[TickLabel] = field(default_factory=list)
    events: list[StreamEvent] = field(default_factory=list)
    answers: list[AskRecord] = field(default_factory=list)
    # seconds per processed tick, one entry per tick (at most _MAX_LATENCY_ENTRIES per round: a round
    # that skips a gap's media-less ticks must not grow this list with the gap)
    tick_latency: list[float] = field(default_factory=list)
    ticks: int = 0  # ticks processed
    stream_seconds: float = 0.0  # ticks · τ
    wall: float = 0.0  # seconds from the first push to the last answer (shared by a batch)


# Called after every round with what the session emitted in it: (labels, events, new answers).
RoundCallback = Callable[[int, list[TickLabel], list[StreamEvent], list[AskRecord]], None]


# Latency entries one round may add (a round processes one tick, or a whole gap of empty ones at once).
_MAX_LATENCY_ENTRIES = 1024


class _Feeder:
    """Pushes one stream's media into its session one tick at a time (the module's feeding rule)."""

    def __init__(self, session: StreamingSession, media: StreamMedia, questions: Sequence[Question]):
        if set(media.modalities) != set(session.modalities):
            raise ValueError(
                f"the media has tracks {media.modalities} but the session takes {session.modalities}"
            )
        self.s, self.m = session, media
        self.tau = session.tau
        self.margin = max(_MIN_MARGIN, session.audio_lookahead(media.sample_rate) if media.has_audio else 0.0)
        # advance_to(c) is exact while the audio runs past c (it would append silence after its end)
        self.safe_end = media.track_ends()[-1] if media.has_audio else math.inf
        self.fi = self.ai = 0
        self.k = 0
        self.closed = False
        t0 = session.t0
        self.asks = sorted(
            ((place_text_time(t0 + q.t, self.tau, t0), i, q) for i, q in enumerate(questions)),
            key=lambda x: (x[0], x[1]),
        )
        self.result = DriveResult()

    @property
    def media_done(self) -> bool:
        return self.fi >= len(self.m.frame_times) and self.ai >= self.m.samples.shape[0]

    def cut(self) -> float:
        """Stream-clock time before which this round pushes everything (``t0 + (k+1)·τ + margin``)."""
        return self.s.t0 + (self.k + 1) * self.tau + self.margin

    def push_round(self) -> None:
        """Push the media before the next cut and declare it (when safe)."""
        s, m, c = self.s, self.m, self.cut()
        fj = int(np.searchsorted(m.frame_times, c, side="left"))  # frames with t < c
        if fj > self.fi:
            s.push_video(m.frames[self.fi : fj], m.frame_times[self.fi : fj])
            self.fi = fj
        n = m.samples.shape[0]
        aj = min(n, max(self.ai, math.ceil((c - m.audio_t0) * m.sample_rate)))  # samples with t < c
        if aj > self.ai:
            s.push_audio(m.samples[self.ai : aj], m.sample_rate, m.audio_t0 + self.ai / m.sample_rate)
            self.ai = aj
        if c < self.safe_end:
            s.advance_to(c)
        self.k += 1
        self._skip_gap()

    def _skip_gap(self) -> None:
        """Over a gap in the media (a clock jump in the file's timestamps), go straight to the round
        before the next media or the next question's tick: the rounds in between would push nothing,
        and the session emits the gap's empty ticks at once, so any gap costs O(1) rounds."""
        m, t0 = self.m, self.s.t0
        nxt = []
        if self.fi < len(m.frame_times):
            nxt.append(float(m.frame_times[self.fi]))
        if self.ai < m.samples.shape[0]:
            nxt.append(m.audio_t0 + self.ai / m.sample_rate)
        if not nxt:
            return
        k = tick_index(min(nxt) - t0, self.tau) - 1  # the round whose cut first reaches that media
        if self.asks:  # never step past a question's tick (it is asked where it is placed)
            k = min(k, tick_index(self.asks[0][0] - t0, self.tau))
        self.k = max(self.k, k)

    def ask_due(self, final: bool = False) -> list[AskRecord]:
        """Ask the questions whose placed time the session reached (all of them when ``final``)."""
        out = []
        while self.asks and (final or self.asks[0][0] <= self.s.time + _TIME_EPS):
            placed, i, q = self.asks.pop(0)
            if self.s.ticks_done == 0:  # nothing was streamed: there is no time to ask at
                out.append(AskRecord(i, q.t, q.text, placed, None, None))
                continue
            start = time.perf_counter()
            answer = self.s.ask(q.text)
            out.append(AskRecord(i, q.t, q.text, placed, self.s.time, answer, time.perf_counter() - start))
        return out


def drive_many(
    sessions: Sequence[StreamingSession],
    media: Sequence[StreamMedia],
    questions: Sequence[Sequence[Question]] | None = None,
    *,
    on_round: Sequence[RoundCallback | None] | None = None,
    realtime: bool = False,
    speed: float = 1.0,
    keep: bool = True,
) -> list[DriveResult]:
    """Drive ``sessions[i]`` with ``media[i]`` in lockstep (one tick per round, batched steps).

    Args:
        sessions: open sessions on ONE model, each with the modalities of its media; open them with
            ``auto_step=False`` so that a round's ticks are processed in one batched forward.
        media: decoded media per session (:func:`decode_stream_media`).
        questions: per session, the questions to ask (media times).
        on_round: per session, an optional callback ``(round, labels, events, answers)`` called after
            every round with what that session emitted in it (the CLI prints there).
        realtime: pace rounds by the wall clock (``speed`` times faster than real time).
        keep: keep every label / event in the results (False: only the callbacks see them).

    Returns one :class:`DriveResult` per session. Sessions are closed at the end of their media.
    """
    sessions, media = list(sessions), list(media)
    if len(sessions) != len(media):
        raise ValueError(f"{len(sessions)} sessions but {len(media)} media")
    questions = list(questions) if questions is not None else [[] for _ in sessions]
    callbacks = list(on_round) if on_round is not None else [None] * len(sessions)
    if len(questions) != len(sessions) or len(callbacks) != len(sessions):
        raise ValueError("questions and on_round need one entry per session")
    if realtime and not speed > 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    feeders = [_Feeder(s, m, q) for s, m, q in zip(sessions, media, questions)]
    tau = sessions[0].tau if sessions else 0.0

    def emit(i: int, rnd: int, answers: list[AskRecord]) -> None:
        f = feeders[i]
        labels, events = f.s.segment_labels(), f.s.poll()
        if keep:
            f.result.labels += labels
            f.result.events += events
        f.result.answers += answers
        if callbacks[i] is not None:
            callbacks[i](rnd, labels, events, answers)

    wall0 = time.perf_counter()
    rnd = 0
    active = [i for i, f in enumerate(feeders) if not f.media_done]
    for i, f in enumerate(feeders):  # no media at all: close at once (there is nothing to stream)
        if f.media_done:
            f.s.close()
            f.closed = True
            emit(i, rnd, f.ask_due(final=True))
    while active:
        if realtime:
            delay = wall0 + ((rnd + 1) * tau + feeders[active[0]].margin) / speed - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        start = time.perf_counter()
        before = [feeders[i].s.ticks_done for i in active]
        for i in active:
            feeders[i].push_round()
        step_sessions([feeders[i].s for i in active])
        dt = time.perf_counter() - start
        done = [feeders[i].s.ticks_done - b for i, b in zip(active, before)]
        n_max = max(done)
        for i, n in zip(active, done):
            if n:
                feeders[i].result.tick_latency += [dt / n_max] * min(n, _MAX_LATENCY_ENTRIES)
        for i in active:
            emit(i, rnd, feeders[i].ask_due())
        for i in [i for i in active if feeders[i].media_done]:
            f = feeders[i]
            start = time.perf_counter()
            before_close = f.s.ticks_done
            f.s.close()
            n = f.s.ticks_done - before_close
            if n:
                f.result.tick_latency += [(time.perf_counter() - start) / n] * min(n, _MAX_LATENCY_ENTRIES)
            f.closed = True
            emit(i, rnd, f.ask_due(final=True))
        active = [i for i in active if not feeders[i].closed]
        rnd += 1
    wall = time.perf_counter() - wall0
    out = []
    for f in feeders:
        r = f.result
        r.ticks = f.s.ticks_done
        r.stream_seconds = r.ticks * tau
        r.wall = wall
        out.append(r)
    return out


def drive(
    session: StreamingSession,
    media: StreamMedia,
    questions: Sequence[Question] = (),
    *,
    on_round: RoundCallback | None = None,
    realtime: bool = False,
    speed: float = 1.0,
    keep: bool = True,
) -> DriveResult:
    """Drive one session with its media (see :func:`drive_many`); closes the session at the end."""
    return drive_many(
        [session], [media], [list(questions)], on_round=[on_round], realtime=realtime, speed=speed, keep=keep
    )[0]
