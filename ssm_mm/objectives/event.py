"""The event objective (always on): each tick's event label (index 0 = background), read at the
tick's summary position; validated by per-tick accuracy, macro-F1 and the majority-class rate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssm_mm.data.interleave import IGNORE_INDEX, tick_event_labels
from ssm_mm.metrics import event_metrics
from ssm_mm.objectives.base import HeadSpec, Objective, Readout, StreamContext, Target, per_tick, tick_targets


class Event(Objective):
    """``event`` (B, K) int64 label index per tick; cross-entropy over the valid ticks."""

    name = "event"
    always_on = True
    targets = {"event": Target("tick", IGNORE_INDEX)}

    def build_head(self, spec: HeadSpec) -> nn.Module:
        return nn.Linear(spec.d_model, len(self.labels))

    def stream_targets(self, ctx: StreamContext) -> dict[str, Tensor]:
        return {"event": per_tick(tick_event_labels, ctx)}

    def count(self, batch) -> float:
        return int(batch.tick_valid.sum())

    def loss_sum(self, head: nn.Module, r: Readout, batch) -> Tensor | None:
        if not len(r.ticks):
            return None
        return F.cross_entropy(head(r.ticks).float(), tick_targets(batch, "event"), reduction="sum")

    def metric(self, head: nn.Module, r: Readout, batch):
        return head(r.ticks).argmax(-1).cpu(), tick_targets(batch, "event").cpu()

    def summarize(self, parts: list) -> dict:
        empty = torch.zeros(0, dtype=torch.long)
        pred = torch.cat([p for p, _ in parts]) if parts else empty
        true = torch.cat([t for _, t in parts]) if parts else empty
        return event_metrics(pred, true, self.labels)
