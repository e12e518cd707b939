"""Metrics shared by training-time validation and the evaluation harness (SPEC §8)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

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

    NaN when neither has any event (nothing to score)."""
    classes = sorted((set(true.tolist()) | set(pred.tolist())) - {background})
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


__all__ = ["event_metrics", "macro_f1", "majority_rate", "per_class_f1", "tick_accuracy"]
