"""The language-model objective (always on): next-token cross-entropy over the supervised text
positions (assistant turns), each position weighted by the answer weight of its question type."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssm_mm.data.interleave import IGNORE_INDEX, bad_answer_weights, lm_targets, lm_weights
from ssm_mm.objectives.base import HeadSpec, Objective, ObjectiveConfig, Readout, StreamContext, Target


@dataclass
class LMConfig(ObjectiveConfig):
    # LM-loss weight of the answers to each question type (a user turn's manifest "type"; the answer is
    # the assistant turn directly after it unless that is a proactive response: interleave.lm_weights),
    # e.g. {count: 4.0}; every other LM token weighs 1 and the LM loss is the weighted mean
    answer_weights: dict[str, float] = field(default_factory=dict)


class LanguageModel(Objective):
    """``lm`` (B, L) next-token targets (``IGNORE_INDEX`` where unsupervised; no shift: position l
    predicts ``lm[l]``) and ``lm_weight`` (B, L) float32 per-position weights; the loss is their
    weighted cross-entropy, counted as the sum of the supervised weights (a weighted mean)."""

    name = "lm"
    Config = LMConfig
    always_on = True
    targets = {
        "lm": Target("token", IGNORE_INDEX),
        "lm_weight": Target("token", 1.0, torch.float32),
    }

    @classmethod
    def validate_config(cls, cfg: LMConfig) -> None:
        bad = bad_answer_weights(cfg.answer_weights)
        if bad:
            raise ValueError(f"objectives.lm.answer_weights={bad}: weights must be finite and >= 0")

    def build_head(self, spec: HeadSpec) -> nn.Module:
        return nn.Linear(spec.d_model, spec.vocab_size, bias=False)

    def stream_targets(self, ctx: StreamContext) -> dict[str, Tensor]:
        return {
            "lm": lm_targets(ctx.tokens, ctx.tokenizer),
            "lm_weight": lm_weights(ctx.tokens, ctx.spec.dialogue, self.cfg.answer_weights, ctx.tick_seconds),
        }

    def count(self, batch) -> float:
        t = batch.targets
        return float(t["lm_weight"][t["lm"] != IGNORE_INDEX].sum())

    def loss_sum(self, head: nn.Module, r: Readout, batch) -> Tensor | None:
        target = batch.targets["lm"]
        sup = target != IGNORE_INDEX  # (B, L)
        if not sup.any():
            return None
        ce = F.cross_entropy(head(r.hidden[sup]).float(), target[sup], reduction="none")  # (n,)
        return (ce * batch.targets["lm_weight"][sup]).sum()
