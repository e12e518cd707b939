"""A user's own objective, defined outside the package the way a user would: "dialogue" regresses, at
every tick, how many text tokens fall in it (how much is being said), scaled. Importing this module
registers it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ssm_mm.data.interleave import TEXT
from ssm_mm.objectives import Objective, ObjectiveConfig, Target, register_objective


@dataclass
class DialogueConfig(ObjectiveConfig):
    scale: float = 10.0  # the target is the tick's text-token count divided by this

    RANGES = {**ObjectiveConfig.RANGES, "scale": ("(", 0, None, ")")}


@register_objective
class Dialogue(Objective):
    """``dialogue`` (B, K) float32 per tick; squared error of a linear readout of the tick's state."""

    name = "dialogue"
    Config = DialogueConfig
    targets = {"dialogue": Target("tick", 0.0, torch.float32)}

    def build_head(self, spec) -> nn.Module:
        return nn.Linear(spec.d_model, 1)

    def stream_targets(self, ctx) -> dict[str, Tensor]:
        ticks = ctx.tokens.tick[ctx.tokens.kind == TEXT]
        counts = torch.bincount(ticks[ticks < ctx.n_ticks], minlength=ctx.n_ticks)
        return {"dialogue": counts.float() / self.cfg.scale}

    def count(self, batch) -> float:
        return int(batch.tick_valid.sum())

    def _error(self, head: nn.Module, r, batch) -> Tensor:
        return head(r.ticks).squeeze(-1).float() - batch.targets["dialogue"][batch.tick_valid]  # (T,)

    def loss_sum(self, head: nn.Module, r, batch) -> Tensor | None:
        return self._error(head, r, batch).pow(2).sum() if len(r.ticks) else None

    def metric(self, head: nn.Module, r, batch):
        return float(self._error(head, r, batch).abs().sum()), len(r.ticks)

    def summarize(self, parts: list) -> dict[str, float]:
        n = sum(n for _, n in parts)
        return {"dialogue_mae": sum(e for e, _ in parts) / n if n else float("nan")}
