"""The order objective (optional): at every tick and for each event label, the rank of its first
occurrence among the labels begun so far (0 = first; "not begun yet" is a class too): dense
supervision for the order that "which came first, the X or the Y?" asks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ssm_mm.data.interleave import IGNORE_INDEX, tick_first_ranks
from ssm_mm.objectives.base import HeadSpec, Objective, Readout, StreamContext, Target, ratio, tick_targets


class Order(Objective):
    """``order`` (B, K, C) int64: class r < C is "began r-th", class C "not begun yet"
    (:func:`~ssm_mm.data.interleave.tick_first_ranks`); cross-entropy per valid tick and label."""

    name = "order"
    targets = {"order": Target("tick", IGNORE_INDEX)}

    def build_head(self, spec: HeadSpec) -> nn.Module:
        return nn.Linear(spec.d_model, self.n_events * (self.n_events + 1))

    def logits(self, head: nn.Module, ticks: Tensor) -> Tensor:
        """(..., C, C+1) logits from tick hidden states (..., d)."""
        return head(ticks).unflatten(-1, (self.n_events, self.n_events + 1))

    def stream_targets(self, ctx: StreamContext) -> dict[str, Tensor]:
        s = ctx.spec
        return {
            "order": tick_first_ranks(s.segments, ctx.labels, ctx.n_ticks, ctx.tick_seconds, stream_id=s.id)
        }

    def count(self, batch) -> float:
        return int(batch.tick_valid.sum()) * self.n_events

    def loss_sum(self, head: nn.Module, r: Readout, batch) -> Tensor | None:
        if not len(r.ticks):
            return None
        logits = self.logits(head, r.ticks).float()  # (T, C, C+1)
        return F.cross_entropy(logits.flatten(0, 1), tick_targets(batch, "order").flatten(), reduction="sum")

    def metric(self, head: nn.Module, r: Readout, batch):
        target = tick_targets(batch, "order")
        return int((self.logits(head, r.ticks).argmax(-1) == target).sum()), target.numel()

    def summarize(self, parts: list) -> dict:
        # exact first-occurrence ranks, per tick and event label
        return {"order_accuracy": ratio(sum(h for h, _ in parts), sum(n for _, n in parts))}
