"""The count objective (optional): at every tick, how many times each event label has begun since the
stream began, as a class 0..max (counts above max are max): dense supervision for the counters that
"how many times ... so far?" questions need in the state."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ssm_mm.data.interleave import IGNORE_INDEX, tick_event_counts
from ssm_mm.objectives.base import (
    HeadSpec,
    Objective,
    ObjectiveConfig,
    Readout,
    StreamContext,
    Target,
    ratio,
    tick_targets,
)


@dataclass
class CountConfig(ObjectiveConfig):
    max: int = 7  # the largest count class

    RANGES = {**ObjectiveConfig.RANGES, "max": ("[", 1, None, ")")}


class Count(Objective):
    """``count`` (B, K, C) int64 running count of each event label (C = labels without background);
    cross-entropy per valid tick and label over the classes 0..max."""

    name = "count"
    Config = CountConfig
    targets = {"count": Target("tick", IGNORE_INDEX)}

    def build_head(self, spec: HeadSpec) -> nn.Module:
        return nn.Linear(spec.d_model, self.n_events * (self.cfg.max + 1))

    def logits(self, head: nn.Module, ticks: Tensor) -> Tensor:
        """(..., C, max+1) logits from tick hidden states (..., d)."""
        return head(ticks).unflatten(-1, (self.n_events, self.cfg.max + 1))

    def stream_targets(self, ctx: StreamContext) -> dict[str, Tensor]:
        s = ctx.spec
        return {
            "count": tick_event_counts(s.segments, ctx.labels, ctx.n_ticks, ctx.tick_seconds, stream_id=s.id)
        }

    def count(self, batch) -> float:
        return int(batch.tick_valid.sum()) * self.n_events

    def loss_sum(self, head: nn.Module, r: Readout, batch) -> Tensor | None:
        if not len(r.ticks) or not self.n_events:
            return None
        logits = self.logits(head, r.ticks).float()  # (T, C, max+1)
        target = tick_targets(batch, "count").clamp_max(self.cfg.max)  # (T, C)
        return F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum")

    def metric(self, head: nn.Module, r: Readout, batch):
        target = tick_targets(batch, "count").clamp_max(self.cfg.max)
        return int((self.logits(head, r.ticks).argmax(-1) == target).sum()), target.numel()

    def summarize(self, parts: list) -> dict:
        # exact running counts, per tick and event label
        return {"count_accuracy": ratio(sum(h for h, _ in parts), sum(n for _, n in parts))}
