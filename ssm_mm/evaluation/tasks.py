"""The three streaming tasks of SPEC §8, per stream: what the references are and how one driven
stream is scored.

From a manifest line (:class:`~ssm_mm.data.manifest.StreamSpec`):

* **Event localization.** The true label of tick ``k`` (media time ``[kτ, (k+1)τ)``) is the label
  covering most of it (:func:`~ssm_mm.data.interleave.tick_event_labels`); the stream has
  ``ceil(duration/τ)`` ticks. The prediction is the session's :class:`TickLabel` of that tick; ticks
  the session never labeled (media shorter than the declared duration) have no prediction (index
  −1: wrong, not a class); labels of ticks past the duration are ignored, as training ignores that
  media. Per-span (AVE-style per-second) labels coarsen both by the same rule
  (:func:`ssm_mm.metrics.coarsen_labels`).
* **Streaming QA.** Every user turn is asked at its time (placed at the end of its tick). A user turn
  followed by an *answer* (an assistant turn placed at the same tick end, not proactive by
  :func:`~ssm_mm.data.interleave.proactive_flags`) is a QA item scored by exact match of the
  normalised text; its type is the user turn's ``type`` (``"untyped"`` when absent). A user turn
  with no answer (a proactive request such as "tell me when the drum plays") is still asked, as a
  user would, and its generated reply is not scored.
* **Proactive responses.** References are the proactive assistant turns, at their manifest times;
  each belongs to the latest user turn before it (its request), whose placed time is the earliest a
  response may come (:func:`ssm_mm.metrics.match_responses`). Responses are the session's
  :class:`StreamEvent`s at their stream times minus ``t0``. Matching is on timing only; the share
  of matched responses whose text equals the reference's is reported beside it.

All times here are media times (seconds from the stream's start), the manifest's clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ssm_mm.data.interleave import num_ticks, place_text_time, proactive_flags, tick_event_labels
from ssm_mm.data.manifest import StreamSpec
from ssm_mm.metrics import coarsen_labels, exact_match, match_responses
from ssm_mm.streaming.drive import DriveResult, Question

__all__ = ["QAItem", "ProactiveRef", "StreamTasks", "StreamScore", "stream_tasks", "score_stream"]

UNTYPED = "untyped"
NO_PREDICTION = -1


@dataclass(frozen=True)
class QAItem:
    """A scored question: ``question`` is the index of its user turn among the stream's questions."""

    question: int
    t: float
    text: str
    reference: str
    type: str


@dataclass(frozen=True)
class ProactiveRef:
    """A reference proactive response at media time ``t``; ``request_t``: placed media time of its
    request (−inf when no user turn precedes it)."""

    t: float
    text: str
    request_t: float
    request: str | None


@dataclass
class StreamTasks:
    """The references of one stream (media times)."""

    id: str
    duration: float
    t0: float
    n_ticks: int
    tick_labels: Tensor  # (n_ticks,) int64 indices into the evaluation label vocabulary
    questions: list[Question]  # every user turn, in dialogue order (all are asked)
    question_types: list[str]
    qa: list[QAItem]
    proactive: list[ProactiveRef]


def stream_tasks(spec: StreamSpec, labels: list[str], tick_seconds: float) -> StreamTasks:
    """The references of ``spec`` with label indices into ``labels`` (``labels[0]`` = background)."""
    n = num_ticks(float(spec.duration), tick_seconds)
    truth = tick_event_labels(spec.segments, labels, n, tick_seconds, stream_id=spec.id)
    flags = proactive_flags(spec.dialogue, tick_seconds)
    questions: list[Question] = []
    qtypes: list[str] = []
    qa: list[QAItem] = []
    pro: list[ProactiveRef] = []
    last_user: int | None = None  # index into questions of the latest user turn
    answered: set[int] = set()
    for turn, is_proactive in zip(spec.dialogue, flags):
        if turn.role == "user":
            last_user = len(questions)
            questions.append(Question(float(turn.t), turn.text))
            qtypes.append(turn.type or UNTYPED)
        elif is_proactive:
            req = questions[last_user] if last_user is not None else None
            pro.append(
                ProactiveRef(
                    t=float(turn.t),
                    text=turn.text,
                    request_t=place_text_time(req.t, tick_seconds) if req is not None else -math.inf,
                    request=req.text if req is not None else None,
                )
            )
        elif last_user is not None and last_user not in answered:  # the answer to the latest question
            answered.add(last_user)
            q = questions[last_user]
            qa.append(QAItem(last_user, q.t, q.text, turn.text, qtypes[last_user]))
    return StreamTasks(
        id=spec.id,
        duration=float(spec.duration),
        t0=float(spec.t0),
        n_ticks=n,
        tick_labels=truth,
        questions=questions,
        question_types=qtypes,
        qa=qa,
        proactive=pro,
    )


@dataclass
class StreamScore:
    """One driven stream against its references (everything needed for metrics and plots).

    pred / true: (n_ticks,) int64 tick labels (pred −1 where the session gave none).
    pred_spans / true_spans: (n_spans,) int64 per-span (e.g. per-second) labels.
    qa: per QA item ``{"t", "question", "type", "reference", "answer", "correct", "asked_at", "late"}``
        (``late``: asked after its placed time because the media ended first).
    responses: per proactive response ``{"t", "text", "score", "matched", "reference"}`` (media time;
        ``reference`` = index of the matched reference or None).
    references: per reference ``{"t", "text", "request_t", "matched", "delay"}``.
    """

    id: str
    pred: Tensor
    true: Tensor
    pred_spans: Tensor
    true_spans: Tensor
    missing_ticks: int
    qa: list[dict] = field(default_factory=list)
    responses: list[dict] = field(default_factory=list)
    references: list[dict] = field(default_factory=list)
    answers: list[dict] = field(default_factory=list)  # every question asked (requests included)
    ticks: int = 0
    stream_seconds: float = 0.0
    wall: float = 0.0  # wall seconds of the batch the stream was driven in
    tick_latency: list[float] = field(default_factory=list)
    ask_seconds: list[float] = field(default_factory=list)

    @property
    def tp(self) -> int:
        return sum(r["matched"] for r in self.references)

    @property
    def fp(self) -> int:
        return sum(not r["matched"] for r in self.responses)

    @property
    def fn(self) -> int:
        return sum(not r["matched"] for r in self.references)

    @property
    def delays(self) -> list[float]:
        return [r["delay"] for r in self.references if r["matched"]]


def score_stream(
    tasks: StreamTasks,
    result: DriveResult,
    labels: list[str],
    tick_seconds: float,
    tolerance: float,
    span_seconds: float = 1.0,
) -> StreamScore:
    """Score what a session produced on one stream (``result`` from :func:`ssm_mm.streaming.drive.drive`,
    driven with ``tasks.questions`` in that order)."""
    n = tasks.n_ticks
    pred = torch.full((n,), NO_PREDICTION, dtype=torch.int64)
    for lab in result.labels:
        if 0 <= lab.tick < n:
            pred[lab.tick] = lab.index
    missing = int((pred == NO_PREDICTION).sum())
    n_spans = max(1, math.ceil(tasks.duration / span_seconds - 1e-9))
    true_spans = coarsen_labels(tasks.tick_labels, tick_seconds, span_seconds, n_spans, labels)
    pred_spans = coarsen_labels(pred, tick_seconds, span_seconds, n_spans, labels)

    by_q = {a.index: a for a in result.answers}
    answers = [
        {
            "t": a.t,
            "question": a.text,
            "type": tasks.question_types[a.index],
            "answer": a.answer,
            "asked_at": None if a.asked_at is None else a.asked_at - tasks.t0,
        }
        for a in sorted(result.answers, key=lambda a: a.index)
    ]
    qa = []
    for item in tasks.qa:
        a = by_q.get(item.question)
        answer = a.answer if a is not None else None
        qa.append(
            {
                "t": item.t,
                "question": item.text,
                "type": item.type,
                "reference": item.reference,
                "answer": answer,
                "correct": exact_match(answer, item.reference),
                "asked_at": None if a is None or a.asked_at is None else a.asked_at - tasks.t0,
                "late": a is not None and a.late,
            }
        )

    resp_t = [ev.t - tasks.t0 for ev in result.events]
    refs = tasks.proactive
    pairs = match_responses(resp_t, [r.t for r in refs], [r.request_t for r in refs], tolerance)
    ref_of = dict(pairs)
    resp_of = {j: i for i, j in pairs}
    responses = [
        {
            "t": t,
            "text": ev.text,
            "score": ev.score,
            "matched": i in ref_of,
            "reference": ref_of.get(i),
        }
        for i, (t, ev) in enumerate(zip(resp_t, result.events))
    ]
    references = [
        {
            "t": r.t,
            "text": r.text,
            "request_t": None if math.isinf(r.request_t) else r.request_t,
            "matched": j in resp_of,
            "delay": resp_t[resp_of[j]] - r.t if j in resp_of else None,
            "response": result.events[resp_of[j]].text if j in resp_of else None,
        }
        for j, r in enumerate(refs)
    ]
    return StreamScore(
        id=tasks.id,
        pred=pred,
        true=tasks.tick_labels,
        pred_spans=pred_spans,
        true_spans=true_spans,
        missing_ticks=missing,
        qa=qa,
        responses=responses,
        references=references,
        answers=answers,
        ticks=result.ticks,
        stream_seconds=result.stream_seconds,
        tick_latency=list(result.tick_latency),
        ask_seconds=[a.seconds for a in result.answers if a.asked_at is not None],
    )


def response_text_accuracy(scores: list[StreamScore]) -> float:
    """Share of matched proactive responses whose text equals the reference's (normalised)."""
    hits = [exact_match(r["response"], r["text"]) for s in scores for r in s.references if r["matched"]]
    return float(np.mean(hits)) if hits else float("nan")
