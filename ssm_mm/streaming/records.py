"""What a streaming session raises and emits: :class:`StreamingError`, and the records it hands out
(:class:`TickLabel`, :class:`StreamEvent`, :class:`TranscriptTurn`). Plain frozen dataclasses, so
they pickle, compare and round-trip through a snapshot's plain dicts."""

from __future__ import annotations

from dataclasses import dataclass


class StreamingError(ValueError):
    """Bad input to a streaming session or a call it cannot honour; the session is left unchanged."""


@dataclass(frozen=True)
class TickLabel:
    """The event label of one completed tick.

    tick:   tick index (from the session's ``t0``); the tick spans ``[start, end)`` on the stream clock.
    label:  label name (``model.labels[index]``; index 0 is ``background``).
    score:  softmax probability of the label (of the repeated label for a tick without media).
    speak:  sigmoid of the speak-now head at the tick (0 for a tick without media).
    has_media: False when the tick had no media token (then the label repeats the previous tick's).
    """

    tick: int
    start: float
    end: float
    label: str
    index: int
    score: float
    speak: float
    has_media: bool = True


@dataclass(frozen=True)
class StreamEvent:
    """A proactive response emitted at stream time ``t`` (a tick end); ``score`` = speak-now probability."""

    t: float
    text: str
    ids: tuple[int, ...]
    score: float


@dataclass(frozen=True)
class TranscriptTurn:
    """One text turn that entered the session's state (``record=True``).

    ``ids`` are the token ids fed to the model, ``[BOT, ROLE, content..., EOT]``; ``t`` is the stream
    time it was placed at; ``proactive`` marks assistant turns the speak-now head triggered.
    """

    t: float
    role: str
    ids: tuple[int, ...]
    text: str
    proactive: bool = False
