"""Metrics shared by training-time validation and the evaluation harness (SPEC §8).

* Event localization: per-tick accuracy (AVE-style), macro-F1 over event classes, per-class scores,
  the majority-class rate; :func:`coarsen_labels` turns tick labels into per-second (or any span)
  labels by the same "covers most of it" rule the ground truth uses.
* Streaming QA: exact match after :func:`normalize_answer`, overall and per question type.
* Proactive responses: :func:`match_responses` pairs response times with reference times within a
  tolerance (each reference and each response used at most once, a response before its request
  never matches) and :func:`proactive_metrics` gives precision / recall / F1 and delays.
* Speed: :func:`latency_summary` (percentiles of per-tick latencies).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor


def tick_accuracy(pred: Tensor, true: Tensor) -> float:
    """Share of ticks whose predicted label equals the true one (AVE-style per-segment accuracy)."""
    if true.numel() == 0:
        return float("nan")
    return (pred == true).float().mean().item()


def majority_rate(true: Tensor) -> float:
    """Accuracy of always predicting the most frequent true label (the trivial baseline)."""
    if true.numel() == 0:
        return float("nan")
    return Counter(true.tolist()).most_common(1)[0][1] / true.numel()


def per_class_f1(pred: Tensor, true: Tensor, classes: Sequence[int]) -> dict[int, dict[str, float]]:
    """Precision / recall / F1 / support per class index, over ticks."""
    out = {}
    for c in classes:
        tp = int(((pred == c) & (true == c)).sum())
        fp = int(((pred == c) & (true != c)).sum())
        fn = int(((pred != c) & (true == c)).sum())
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        out[c] = {
            "precision": p,
            "recall": r,
            "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "support": tp + fn,
        }
    return out


def macro_f1(pred: Tensor, true: Tensor, background: int = 0) -> float:
    """Mean F1 over the event classes (not background) that occur in the truth or the predictions.

    A negative predicted index marks a tick without a prediction (streaming produced no label for
    it): it is wrong for every class but is not a class itself. NaN when neither has any event
    (nothing to score)."""
    classes = sorted(c for c in set(true.tolist()) | set(pred.tolist()) if c != background and c >= 0)
    if not classes:
        return float("nan")
    scores = per_class_f1(pred, true, classes)
    return sum(s["f1"] for s in scores.values()) / len(classes)


def event_metrics(pred: Tensor, true: Tensor, labels: Sequence[str]) -> dict:
    """Per-tick accuracy, macro-F1 over event classes, the majority-class rate, and per-class scores."""
    pred, true = pred.flatten().long(), true.flatten().long()
    per = per_class_f1(pred, true, range(1, len(labels)))
    return {
        "tick_accuracy": tick_accuracy(pred, true),
        "macro_f1": macro_f1(pred, true),
        "majority_rate": majority_rate(true),
        "n_ticks": int(true.numel()),
        "per_class": {labels[c]: v for c, v in per.items()},
    }


# --------------------------------------------------------------------------------- event spans


def coarsen_labels(
    tick_labels: Tensor, tick_seconds: float, span_seconds: float, n_spans: int, labels: Sequence[str]
) -> Tensor:
    """Per-span labels (e.g. per second, AVE-style) from per-tick labels.

    Each tick's label is taken to hold over its span ``[kτ, (k+1)τ)``; a span's label is then the one
    holding over most of it, ties going to an event (lower index first), exactly the rule
    :func:`ssm_mm.data.interleave.tick_event_labels` applies to ground-truth segments, so true and
    predicted per-span labels are computed alike. Negative tick labels (no prediction) count as
    background here.

    tick_labels: (K,) int64 indices into ``labels`` -> (n_spans,) int64.
    """
    from ssm_mm.data.interleave import tick_event_labels  # lazy: metrics stays light to import

    lab = tick_labels.flatten().long().tolist()
    runs = []  # maximal runs of one event label -> segments on the media clock
    start = 0
    for k in range(1, len(lab) + 1):
        if k == len(lab) or lab[k] != lab[start]:
            if lab[start] > 0:
                runs.append(_Span(start * tick_seconds, k * tick_seconds, labels[lab[start]]))
            start = k
    return tick_event_labels(runs, labels, n_spans, span_seconds)


@dataclass(frozen=True)
class _Span:
    start: float
    end: float
    label: str


# ------------------------------------------------------------------------------------------ QA


def normalize_answer(text: str | None) -> str:
    """The form answers are compared in: surrounding whitespace stripped, lower-cased."""
    return "" if text is None else text.strip().lower()


def exact_match(prediction: str | None, reference: str) -> bool:
    """Exact match of normalised answers (an unanswered question, ``None``, is wrong)."""
    return prediction is not None and normalize_answer(prediction) == normalize_answer(reference)


def qa_metrics(items: Sequence[tuple[str, bool]]) -> dict:
    """Exact-match accuracy overall and per question type.

    items: ``(question_type, correct)`` per question. Returns ``{"accuracy", "n", "per_type":
    {type: {"accuracy", "n"}}}``; accuracy is NaN when there is no question.
    """
    per: dict[str, list[bool]] = {}
    for qtype, ok in items:
        per.setdefault(qtype, []).append(bool(ok))
    n = len(items)
    return {
        "accuracy": sum(ok for _, ok in items) / n if n else float("nan"),
        "n": n,
        "per_type": {k: {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in sorted(per.items())},
    }


# ------------------------------------------------------------------------------------ proactive

# Times closer than this (seconds) are equal: response and request times are sums like t0 + k·τ.
_TIME_EPS = 1e-6


def match_responses(
    responses: Sequence[float],
    references: Sequence[float],
    request_times: Sequence[float] | None = None,
    tolerance: float = 1.0,
) -> list[tuple[int, int]]:
    """Pair responses with references: a maximum matching, each used at most once.

    Response ``i`` may match reference ``j`` when ``|responses[i] − references[j]| <= tolerance`` and
    it came strictly after the reference's request, ``responses[i] > request_times[j]`` (a response
    cannot answer a request not yet made; ``request_times`` None = no constraint).

    Algorithm: responses in time order, each takes the still-unmatched feasible reference whose window
    closes first (the earliest reference time). Every reference's feasible responses form an interval
    of times, so this earliest-deadline greedy gives the maximum number of pairs (the classic
    exchange argument for matching points to intervals; ``tests/evaluation`` checks it against
    an exhaustive augmenting-path matching). Among maximum matchings it is not chosen for least delay.

    Returns ``[(response_index, reference_index), ...]`` in response time order.
    """
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0 seconds, got {tolerance}")
    req = list(request_times) if request_times is not None else [-math.inf] * len(references)
    if len(req) != len(references):
        raise ValueError(f"{len(references)} references but {len(req)} request times")
    used = [False] * len(references)
    ref_order = sorted(range(len(references)), key=lambda j: references[j])
    pairs = []
    for i in sorted(range(len(responses)), key=lambda i: responses[i]):
        r = responses[i]
        for j in ref_order:  # earliest reference first = earliest window end
            if not used[j] and abs(r - references[j]) <= tolerance + _TIME_EPS and r > req[j] + _TIME_EPS:
                used[j] = True
                pairs.append((i, j))
                break
    return pairs


def proactive_metrics(tp: int, fp: int, fn: int, delays: Sequence[float]) -> dict:
    """Precision, recall, F1 and delay statistics of proactive responses.

    tp: matched responses; fp: unmatched responses (duplicates, too early or late, before the
    request); fn: unmatched references; delays: ``response − reference`` seconds of the matches.
    Precision is NaN without responses, recall NaN without references; F1 = 2tp / (2tp + fp + fn),
    NaN when there are neither (nothing to score) and 0 when only one side exists.
    """
    d = np.asarray(list(delays), dtype=np.float64)
    return {
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
        "mean_delay": float(d.mean()) if d.size else float("nan"),
        "p90_delay": float(np.percentile(d, 90)) if d.size else float("nan"),
        "mean_abs_delay": float(np.abs(d).mean()) if d.size else float("nan"),
    }


# ---------------------------------------------------------------------------------------- speed


def latency_summary(seconds: Sequence[float]) -> dict:
    """Per-tick latency statistics in milliseconds: mean, p50, p90, p99, max (NaN when empty)."""
    x = np.asarray(list(seconds), dtype=np.float64) * 1e3
    if x.size == 0:
        return {k: float("nan") for k in ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")} | {"n": 0}
    return {
        "mean_ms": float(x.mean()),
        "p50_ms": float(np.percentile(x, 50)),
        "p90_ms": float(np.percentile(x, 90)),
        "p99_ms": float(np.percentile(x, 99)),
        "max_ms": float(x.max()),
        "n": int(x.size),
    }


__all__ = [
    "coarsen_labels",
    "event_metrics",
    "exact_match",
    "latency_summary",
    "macro_f1",
    "majority_rate",
    "match_responses",
    "normalize_answer",
    "per_class_f1",
    "proactive_metrics",
    "qa_metrics",
    "tick_accuracy",
]
