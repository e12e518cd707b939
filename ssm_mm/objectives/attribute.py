"""The attribute objective (optional): at every tick and for each event label, the value of each named
segment attribute (manifest segments' ``attributes``) at the label's last finished segment, as a class
over one shared value vocabulary: the binding the recall objective asks for from pixels, asked
directly (which colour was the shape when the event last happened)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssm_mm.data.interleave import IGNORE_INDEX, missing_attributes, tick_recall_values
from ssm_mm.objectives.base import Objective, ObjectiveConfig, Target, per_tick, ratio, tick_targets

if TYPE_CHECKING:
    from ssm_mm.objectives.base import HeadSpec, Readout, StreamContext


@dataclass
class AttributeConfig(ObjectiveConfig):
    names: list[str] = field(default_factory=list)  # the segment attributes read, e.g. [color]
    values: list[str] = field(
        default_factory=list
    )  # their shared value vocabulary (empty: the training streams')
    # focal loss exponent γ: each known item's cross-entropy times (1 − p)^γ, p the probability the head
    # gives its value, so items the head already gets right weigh ~0 and the gradient goes to the ones
    # it does not (Lin et al., 2017); 0 = plain cross-entropy
    focal: float = 0.0

    RANGES = {**ObjectiveConfig.RANGES, "focal": ("[", 0, None, ")")}


class Attribute(Objective):
    """``attribute`` (B, K, C, A) int64 index into ``values`` of each attribute (A = ``names``) of each
    event label's last finished segment, ``IGNORE_INDEX`` where unknown (none finished yet, the
    segment lacks it); cross-entropy over the known ones."""

    name = "attribute"
    Config = AttributeConfig
    targets = {"attribute": Target("tick", IGNORE_INDEX, missing_below_zero=True)}

    @classmethod
    def validate_config(cls, cfg: AttributeConfig) -> None:
        names = list(cfg.names)
        if (
            isinstance(cfg.names, str)
            or not names
            or any(not n for n in names)
            or len(set(names)) != len(names)
        ):
            raise ValueError(
                f"objectives.attribute.names={cfg.names!r}: give a non-empty list of distinct attribute names"
            )

    @classmethod
    def prepare(cls, cfg: AttributeConfig, streams, where: str) -> None:
        missing = missing_attributes(streams, cfg.names)
        if missing:
            raise ValueError(
                f"objectives.attribute.names {missing}: no segment of the training streams ({where}) has "
                'that attribute (manifest segments\' "attributes")'
            )
        if not cfg.values:  # the values of the training streams (saved with the model)
            names = set(cfg.names)
            cfg.values = sorted(
                {v for st in streams for s in st.segments for a, v in s.attributes.items() if a in names}
            )

    def build_head(self, spec: HeadSpec) -> nn.Module:
        if not self.cfg.values:
            raise ValueError(
                f"objectives.attribute.names={list(self.cfg.names)} needs objectives.attribute.values "
                "(filled from the training streams by the trainer)"
            )
        return nn.Linear(spec.d_model, self.n_events * len(self.cfg.names) * len(self.cfg.values))

    def logits(self, head: nn.Module, ticks: Tensor) -> Tensor:
        """(..., C, A, V) logits from tick hidden states (..., d); V = ``len(values)``."""
        return head(ticks).unflatten(-1, (self.n_events, len(self.cfg.names), -1))

    def stream_targets(self, ctx: StreamContext) -> dict[str, Tensor]:
        return {"attribute": per_tick(tick_recall_values, ctx, self.cfg.names, self.cfg.values)}

    def count(self, batch) -> float:
        return int((batch.targets["attribute"] >= 0).sum())

    def loss_sum(self, head: nn.Module, r: Readout, batch) -> Tensor | None:
        target = tick_targets(batch, "attribute")  # (T, C, A), IGNORE_INDEX where unknown
        if not (target >= 0).any():
            return None
        logits = self.logits(head, r.ticks).float()  # (T, C, A, V)
        ce = F.cross_entropy(
            logits.flatten(0, 2), target.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
        )  # 0 where unknown
        if self.cfg.focal:
            ce = ce * (1 - torch.exp(-ce)).pow(self.cfg.focal)  # (1 - p)^γ, p = exp(-ce)
        return ce.sum()

    def metric(self, head: nn.Module, r: Readout, batch):
        target = tick_targets(batch, "attribute")
        known = target >= 0
        return int((self.logits(head, r.ticks).argmax(-1) == target)[known].sum()), target[known].cpu()

    def summarize(self, parts: list) -> dict:
        # the recalled attribute, per tick and label that has happened; beside it the majority value's share
        values = torch.cat([v for _, v in parts]) if parts else torch.zeros(0, dtype=torch.long)
        n = len(values)
        return {
            "attribute_accuracy": ratio(sum(h for h, _ in parts), n),
            "attribute_majority": int(values.bincount().max()) / n if n else float("nan"),
        }
