"""Compatibility re-export: the state types live in :mod:`ssm_mm.state` (the bottom of the package).

Kept so that code written against earlier versions (``from ssm_mm.streaming.state import SSMState``)
still runs; new code imports from :mod:`ssm_mm.state`.
"""

from ssm_mm.state import AttentionState, BackboneState, LayerState, ModelState, SSMState

__all__ = ["AttentionState", "BackboneState", "LayerState", "ModelState", "SSMState"]
