"""The speak-now objective (always on): at each tick, whether a proactive response is due (SPEC §7);
validated by the share of speak ticks the head catches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssm_mm.data.interleave import speak_targets
from ssm_mm.objectives.base import HeadSpec, Objective, Readout, StreamContext, Target, ratio, tick_targets


class Speak(Objective):
    """``speak`` (B, K) float32 0/1 per tick; binary cross-entropy of the speak-now logit."""

    name = "speak"
    always_on = True
    targets = {"speak": Target("tick", 0.0, torch.float32)}

    def build_head(self, spec: HeadSpec) -> nn.Module:
        return nn.Linear(spec.d_model, 1)

    def stream_targets(self, ctx: StreamContext) -> dict[str, Tensor]:
        return {
            "speak": speak_targets(ctx.spec.dialogue, ctx.n_ticks, ctx.tick_seconds, stream_id=ctx.spec.id)
        }

    def count(self, batch) -> float:
        return int(batch.tick_valid.sum())

    def loss_sum(self, head: nn.Module, r: Readout, batch) -> Tensor | None:
        if not len(r.ticks):
            return None
        logit = head(r.ticks).squeeze(-1).float()  # (T,)
        return F.binary_cross_entropy_with_logits(
            logit, tick_targets(batch, "speak").float(), reduction="sum"
        )

    def metric(self, head: nn.Module, r: Readout, batch):
        pred = head(r.ticks).squeeze(-1) > 0
        true = tick_targets(batch, "speak") > 0.5
        return int((pred & true).sum()), int(true.sum())

    def summarize(self, parts: list) -> dict:
        return {"speak_recall_ticks": ratio(sum(h for h, _ in parts), sum(n for _, n in parts))}
