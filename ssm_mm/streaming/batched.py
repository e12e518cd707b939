"""Batched stepping: the next complete tick of many sessions in one forward (SPEC §7).

Every tick of every session goes through :func:`step_round`, a session alone (``auto_step=True``,
``ask()``, ``close()``) as a batch of one, so batched == single holds by construction up to the
float rounding of batched matmuls (tests: ``tests/streaming/test_session.py``).

The stepper never reads a session's fields. A session offers it a small interface (the
:class:`TickSource` protocol, implemented by :class:`~ssm_mm.streaming.session.StreamingSession`):

* ``_has_complete_tick()``: whether its next unprocessed tick is complete;
* ``_take_tick()``: removes that tick's media from its buffers and returns it as a :class:`TickWork`
  (tokens, features, the recurrent state before the tick), or ``None`` when the tick has no media
  (the session then records that whole run of media-less ticks itself: no forward is needed);
* ``_finish_tick(work, result)``: records what the model made of the tick (:class:`TickResult`:
  the new state, label, scores, the proactive response if the speak-now head fired);
* ``_transaction()``: a context manager that puts the session back as it was on any exception;
* ``model`` and ``options`` (``speak_threshold``, ``max_answer_tokens``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from ssm_mm.data.interleave import AUDIO, TEXT, VIDEO, TimedTokens
from ssm_mm.state import ModelState
from ssm_mm.streaming.records import StreamingError

if TYPE_CHECKING:
    from ssm_mm.models.multimodal import MultimodalSSM
    from ssm_mm.streaming.session import SessionOptions, StreamingSession

__all__ = ["TickResult", "TickSource", "TickWork", "step_round", "step_sessions"]


@dataclass
class TickWork:
    """One session's next complete tick, ready for the model.

    tick:   the tick index; ``end`` its end time on the stream clock (where a response goes).
    tokens: the tick's media tokens in training order, (L,) columns; ``src`` indexes ``video``
            patches (frame·patches_per_frame + patch) and ``audio`` rows of this tick.
    video:  (F, 3, S, S) float32 featurized frames; audio: (A, D) float32 audio tokens.
    state:  the session's recurrent state before the tick (batch 1).
    """

    tick: int
    end: float
    tokens: TimedTokens
    video: Tensor
    audio: Tensor
    state: ModelState


@dataclass
class TickResult:
    """What the model made of a :class:`TickWork`.

    state:    the recurrent state after the tick (and after the proactive response, if any), batch 1.
    label:    index of the most probable event label; score: its softmax probability.
    speak:    sigmoid of the speak-now head.
    response: the generated content token ids of the proactive response (None: the head did not
              fire); the turn was fed as ``[BOT, ROLE_ASSISTANT, *response, EOT]`` at ``work.end``.
    """

    state: ModelState
    label: int
    score: float
    speak: float
    response: list[int] | None = None


class TickSource(Protocol):
    """What :func:`step_round` needs from a session (see the module docstring)."""

    model: MultimodalSSM
    options: SessionOptions

    def _has_complete_tick(self) -> bool: ...

    def _take_tick(self) -> TickWork | None: ...

    def _finish_tick(self, work: TickWork, result: TickResult) -> None: ...

    def _transaction(self) -> AbstractContextManager: ...


def _collate(work: list[TickWork], pad_id: int, patches_per_frame: int):
    """Right-pad the ticks into one batch: kind, t, src, valid (B, L) and video (F, 3, S, S), audio
    (A, D) concatenated over the batch, with every row's ``src`` shifted to its frames / tokens."""
    b = len(work)
    lens = [len(w.tokens) for w in work]
    n = max(lens)
    kind = torch.full((b, n), TEXT, dtype=torch.int64)
    t = torch.zeros(b, n, dtype=torch.float64)
    src = torch.full((b, n), pad_id, dtype=torch.int64)
    valid = torch.zeros(b, n, dtype=torch.bool)
    f_off = a_off = 0
    for i, w in enumerate(work):
        m, tk = lens[i], w.tokens
        s_i = tk.src.clone()
        s_i[tk.kind == VIDEO] += f_off * patches_per_frame  # tick-local frame -> batch frame
        s_i[tk.kind == AUDIO] += a_off
        kind[i, :m] = tk.kind
        t[i, :m] = tk.t
        src[i, :m] = s_i
        valid[i, :m] = True
        t[i, m:] = tk.t[-1]  # padding repeats the row's last time (Δt = 0; masked anyway)
        f_off += w.video.shape[0]
        a_off += w.audio.shape[0]
    video = torch.cat([w.video for w in work])  # (F, 3, S, S)
    audio = torch.cat([w.audio for w in work])  # (A, D)
    return kind, t, src, valid, video, audio, lens


def step_round(sessions: Sequence[TickSource]) -> None:
    """Process the next complete tick of every session in ``sessions`` (each must have one): one
    batched forward over the ticks that have media, heads at their summary positions (the tick's
    last media token), then one batched generation for the sessions whose speak-now head fired.
    Not a transaction by itself: callers wrap it (:func:`step_sessions`, the session's methods)."""
    taken = [(s, s._take_tick()) for s in sessions]
    taken = [(s, w) for s, w in taken if w is not None]  # media-less ticks: recorded by the session
    if not taken:
        return
    model = taken[0][0].model
    dev = next(model.parameters()).device
    work = [w for _, w in taken]
    b = len(work)
    kind, t, src, valid, video, audio, lens = _collate(
        work, model.tokenizer.pad_id, model.features.patches_per_frame
    )
    state = work[0].state if b == 1 else ModelState.stack([w.state for w in work])
    out = model(kind.to(dev), t.to(dev), src.to(dev), valid.to(dev), video.to(dev), audio.to(dev), state)
    last = torch.tensor(lens, device=dev) - 1  # summary position: the tick's last media token
    h = out.hidden[torch.arange(b, device=dev), last]  # (B, d)
    probs = torch.softmax(model.heads["event"](h).float(), -1)  # (B, n_labels)
    score, label = probs.max(-1)
    speak = torch.sigmoid(model.heads["speak"](h).float().squeeze(-1))  # (B,)
    rows = [out.state.select([i]) for i in range(b)]  # per-session states (copies: compact storage)
    responses: list[list[int] | None] = [None] * b
    by_cap: dict[int, list[int]] = {}
    for i, (s, _) in enumerate(taken):
        if float(speak[i]) > s.options.speak_threshold:
            by_cap.setdefault(s.options.max_answer_tokens, []).append(i)
    for cap, group in by_cap.items():  # one batched generation per answer-length cap (usually one)
        sub = rows[group[0]] if len(group) == 1 else ModelState.stack([rows[i] for i in group])
        t_end = torch.tensor([work[i].end for i in group], dtype=torch.float64, device=dev)  # (G,)
        ids, sub, _ = model.generate(sub, t_end, cap, role="assistant")
        for j, i in enumerate(group):
            rows[i] = sub.select([j]) if len(group) > 1 else sub
            responses[i] = ids[j]
    for i, (s, w) in enumerate(taken):
        s._finish_tick(w, TickResult(rows[i], int(label[i]), float(score[i]), float(speak[i]), responses[i]))


def _checked(sessions: Sequence[StreamingSession], what: str) -> list[StreamingSession]:
    from ssm_mm.streaming.session import StreamingSession  # the session module imports this one

    sessions = list(sessions)
    if any(not isinstance(s, StreamingSession) for s in sessions):
        raise StreamingError(f"{what} takes StreamingSession objects")
    if len({id(s) for s in sessions}) != len(sessions):
        raise StreamingError(f"{what}: the same session appears twice")
    if sessions and any(s.model is not sessions[0].model for s in sessions):
        raise StreamingError(f"{what}: every session must run on the same model object")
    return sessions


def _step_ready(sessions: list[StreamingSession]) -> None:
    """Rounds of :func:`step_round` until no session has a complete tick (inside their transactions)."""
    while True:
        ready = [s for s in sessions if s._has_complete_tick()]
        if not ready:
            return
        step_round(ready)  # one tick per session, or a whole run of media-less ticks


@torch.no_grad()
def step_sessions(sessions: Sequence[StreamingSession]) -> list[int]:
    """Advance many sessions together: every completed tick of every session is processed, in rounds
    where each session with a completed tick contributes its next tick to ONE batched forward
    (right-padded, ``valid`` masked, so padding never touches a state; recurrent states are stacked
    and split back with ``ModelState.stack`` / ``select``). Proactive responses of a round are
    generated in one batched call too. Results equal stepping each session alone (up to float
    rounding of batched matmuls). Meant for sessions opened with ``auto_step=False`` (sessions with
    ``auto_step=True`` have nothing left to step after their pushes).

    Returns the number of ticks processed per session. On any error every session is left unchanged.
    """
    sessions = _checked(sessions, "step_sessions")
    start = [s.ticks_done for s in sessions]
    with contextlib.ExitStack() as stack:
        for s in sessions:
            stack.enter_context(s._transaction())
        _step_ready(sessions)
    return [s.ticks_done - k for s, k in zip(sessions, start)]


@torch.no_grad()
def close_sessions(sessions: Sequence[StreamingSession]) -> list[int]:
    """``close()`` many sessions together: each stream's end (resampler flushed, the last partial tick
    complete) as :meth:`StreamingSession.close`, their remaining ticks stepped in batched rounds as
    :func:`step_sessions` does, instead of one forward per session. Closed sessions are skipped.

    Returns the number of ticks processed per session. On any error every session is left unchanged.
    """
    sessions = [s for s in _checked(sessions, "close_sessions") if not s.closed]
    start = [s.ticks_done for s in sessions]
    with contextlib.ExitStack() as stack:
        for s in sessions:
            stack.enter_context(s._transaction())
        for s in sessions:
            s._end_media()
        _step_ready(sessions)
        for s in sessions:
            s._mark_closed()
    return [s.ticks_done - k for s, k in zip(sessions, start)]
