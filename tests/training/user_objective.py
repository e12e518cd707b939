"""A user's own objective, defined outside the package the way a user would: "dialogue" reads, at
every tick, whether anyone speaks (a text token falls in the tick). Importing this module registers it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssm_mm.data.interleave import TEXT
from ssm_mm.objectives import (
    HeadSpec,
    Objective,
    ObjectiveConfig,
    Readout,
    StreamContext,
    Target,
    register_objective,
)


@dataclass
class DialogueConfig(ObjectiveConfig):
    threshold: float = 0.5  # a tick counts as "spoken" when sigmoid(head) > this

    RANGES = {**ObjectiveConfig.RANGES, "threshold": ("(", 0, 1, ")")}


@register_objective
class Dialogue(Objective):
    """``dialogue`` (B, K) float32: 1 where a text token lies in the tick."""

    name = "dialogue"
    Config = DialogueConfig
    targets = {"dialogue": Target("tick", 0.0, torch.float32)}

    def build_head(self, spec: HeadSpec) -> nn.Module:
        return nn.Linear(spec.d_model, 1)

    def stream_targets(self, ctx: StreamContext) -> dict[str, Tensor]:
        spoken = torch.zeros(ctx.n_ticks)
        text_ticks = ctx.tokens.tick[ctx.tokens.kind == TEXT]
        spoken[text_ticks[text_ticks < ctx.n_ticks]] = 1.0
        return {"dialogue": spoken}

    def count(self, batch) -> float:
        return int(batch.tick_valid.sum())

    def loss_sum(self, head: nn.Module, r: Readout, batch) -> Tensor | None:
        if not len(r.ticks):
            return None
        target = batch.targets["dialogue"][batch.tick_valid]
        return F.binary_cross_entropy_with_logits(head(r.ticks).squeeze(-1).float(), target, reduction="sum")

    def metric(self, head: nn.Module, r: Readout, batch):
        pred = torch.sigmoid(head(r.ticks).squeeze(-1)) > self.cfg.threshold
        target = batch.targets["dialogue"][batch.tick_valid] > 0.5
        return int((pred == target).sum()), len(target)

    def summarize(self, parts: list) -> dict[str, float]:
        n = sum(n for _, n in parts)
        return {"dialogue_accuracy": sum(h for h, _ in parts) / n if n else float("nan")}
