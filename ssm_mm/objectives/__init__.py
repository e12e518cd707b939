"""Training objectives as plugins (:mod:`ssm_mm.objectives.base` has the protocol).

Always on: ``lm`` (answers), ``event`` (per-tick labels), ``speak`` (proactive responses). Optional,
enabled by their config section (``objectives.count.max=7``): ``video``, ``count``, ``order``,
``recall``, ``attribute``. Registration order is the order of heads and losses.
"""

from ssm_mm.objectives.attribute import Attribute, AttributeConfig
from ssm_mm.objectives.base import (
    HeadSpec,
    Objective,
    ObjectiveConfig,
    Readout,
    StreamContext,
    Target,
    WindowSpan,
    build_objectives,
    objective_class,
    objective_names,
    objectives_config,
    register_objective,
    target_spec,
)
from ssm_mm.objectives.count import Count, CountConfig
from ssm_mm.objectives.event import Event
from ssm_mm.objectives.lm import LanguageModel, LMConfig
from ssm_mm.objectives.order import Order
from ssm_mm.objectives.recall import Recall, RecallConfig
from ssm_mm.objectives.speak import Speak
from ssm_mm.objectives.video import Video, VideoConfig

for _cls in (LanguageModel, Event, Speak, Video, Count, Order, Recall, Attribute):
    register_objective(_cls)

__all__ = [
    "Attribute",
    "AttributeConfig",
    "Count",
    "CountConfig",
    "Event",
    "HeadSpec",
    "LMConfig",
    "LanguageModel",
    "Objective",
    "ObjectiveConfig",
    "Order",
    "Readout",
    "Recall",
    "RecallConfig",
    "Speak",
    "StreamContext",
    "Target",
    "Video",
    "VideoConfig",
    "WindowSpan",
    "build_objectives",
    "objective_class",
    "objective_names",
    "objectives_config",
    "register_objective",
    "target_spec",
]
