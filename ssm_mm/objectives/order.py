"""The order objective (optional): at every tick and for each event label, the rank of its first
occurrence among the labels begun so far (0 = first; "not begun yet" is a class too): dense
supervision for the order that "which came first, the X or the Y?" asks."""

from __future__ import annotations

from torch import Tensor

from ssm_mm.data.interleave import IGNORE_INDEX, tick_first_ranks
from ssm_mm.objectives.base import PerLabelClasses, StreamContext, Target, per_tick


class Order(PerLabelClasses):
    """``order`` (B, K, C) int64: class r < C is "began r-th", class C "not begun yet"
    (:func:`~ssm_mm.data.interleave.tick_first_ranks`); cross-entropy per valid tick and label;
    validated by exact ranks (``order_accuracy``)."""

    name = "order"
    targets = {"order": Target("tick", IGNORE_INDEX)}

    @property
    def n_classes(self) -> int:
        return self.n_events + 1

    def stream_targets(self, ctx: StreamContext) -> dict[str, Tensor]:
        return {"order": per_tick(tick_first_ranks, ctx)}
