"""The count objective (optional): at every tick, how many times each event label has begun since the
stream began, as a class 0..max (counts above max are max): dense supervision for the counters that
"how many times ... so far?" questions need in the state."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ssm_mm.data.interleave import IGNORE_INDEX, tick_event_counts
from ssm_mm.objectives.base import (
    ObjectiveConfig,
    PerLabelClasses,
    StreamContext,
    Target,
    per_tick,
    tick_targets,
)


@dataclass
class CountConfig(ObjectiveConfig):
    max: int = 7  # the largest count class

    RANGES = {**ObjectiveConfig.RANGES, "max": ("[", 1, None, ")")}


class Count(PerLabelClasses):
    """``count`` (B, K, C) int64 running count of each event label (C = labels without background);
    cross-entropy per valid tick and label over the classes 0..max (counts clipped to max); validated
    by exact counts (``count_accuracy``)."""

    name = "count"
    Config = CountConfig
    targets = {"count": Target("tick", IGNORE_INDEX)}

    @property
    def n_classes(self) -> int:
        return self.cfg.max + 1

    def class_targets(self, batch) -> Tensor:
        return tick_targets(batch, "count").clamp_max(self.cfg.max)

    def stream_targets(self, ctx: StreamContext) -> dict[str, Tensor]:
        return {"count": per_tick(tick_event_counts, ctx)}
