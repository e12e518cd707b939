"""The count objective (optional): at every tick, how many times each event label has begun since the
stream began: dense supervision for the counters that "how many times ... so far?" questions need in
the state.

Two forms (``objectives.count.loss``): ``classes`` reads one of the classes 0..max (cross-entropy;
every count above max is the class max, so the state is taught that all large counts are alike), and
``huber`` regresses the count itself, one number per label (Huber loss, δ = 1; read by rounding): one
direction of the tick state has to grow by one per occurrence, as a recurrent state could at any count
(in the measured runs it grew by 1 ± 0.4-0.9 per occurrence: docs/experiments.md, "A regressed count").
Counts above ``max`` are ``max`` in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssm_mm.data.interleave import IGNORE_INDEX, tick_event_counts
from ssm_mm.objectives.base import (
    HeadSpec,
    ObjectiveConfig,
    PerLabelClasses,
    Readout,
    StreamContext,
    Target,
    per_tick,
    tick_targets,
)

LOSSES = ("classes", "huber")


@dataclass
class CountConfig(ObjectiveConfig):
    max: int = 7  # the largest count (counts above it are it)
    loss: str = "classes"  # "classes": cross-entropy over 0..max | "huber": the count regressed

    RANGES = {**ObjectiveConfig.RANGES, "max": ("[", 1, None, ")")}


class Count(PerLabelClasses):
    """``count`` (B, K, C) int64 running count of each event label (C = labels without background),
    clipped to ``max``. ``loss=classes``: cross-entropy per valid tick and label over 0..max;
    ``loss=huber``: a linear head to one count per label, Huber loss against the count. Validated by
    exact counts (``count_accuracy``: the argmax class, or the rounded regressed count)."""

    name = "count"
    Config = CountConfig
    targets = {"count": Target("tick", IGNORE_INDEX)}

    @classmethod
    def validate_config(cls, cfg: CountConfig) -> None:
        if cfg.loss not in LOSSES:
            raise ValueError(f"objectives.count.loss={cfg.loss!r}: must be one of {', '.join(LOSSES)}")

    @property
    def regressed(self) -> bool:
        return self.cfg.loss == "huber"

    @property
    def n_classes(self) -> int:
        return self.cfg.max + 1

    def class_targets(self, batch) -> Tensor:
        return tick_targets(batch, "count").clamp_max(self.cfg.max)

    def stream_targets(self, ctx: StreamContext) -> dict[str, Tensor]:
        return {"count": per_tick(tick_event_counts, ctx)}

    def build_head(self, spec: HeadSpec) -> nn.Module:
        if self.regressed:
            return nn.Linear(spec.d_model, self.n_events)
        return super().build_head(spec)

    def predict(self, head: nn.Module, ticks: Tensor) -> Tensor:
        """(..., C) int64 count of each label from tick hidden states (..., d)."""
        if self.regressed:
            return head(ticks).float().round().clamp(0, self.cfg.max).long()
        return self.logits(head, ticks).argmax(-1)

    def loss_sum(self, head: nn.Module, r: Readout, batch) -> Tensor | None:
        if not self.regressed:
            return super().loss_sum(head, r, batch)
        if not len(r.ticks) or not self.n_events:
            return None
        pred = head(r.ticks).float()  # (T, C)
        return F.huber_loss(pred, self.class_targets(batch).float(), reduction="sum", delta=1.0)

    def metric(self, head: nn.Module, r: Readout, batch):
        target = self.class_targets(batch)
        with torch.no_grad():
            return int((self.predict(head, r.ticks) == target).sum()), target.numel()
