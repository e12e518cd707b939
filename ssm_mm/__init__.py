"""ssm_mm: a natively multimodal, time-aware hybrid state-space model for audio-visual streams.

Public names are imported lazily so that ``import ssm_mm`` stays cheap and works without optional
dependencies (mamba-ssm, causal-conv1d).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_config": "ssm_mm.config",
    "Config": "ssm_mm.config",
    "ModelConfig": "ssm_mm.config",
    "HybridBackbone": "ssm_mm.models.backbone",
    "MultimodalSSM": "ssm_mm.models.multimodal",
    "StreamingSession": "ssm_mm.streaming.session",
    "step_sessions": "ssm_mm.streaming.batched",
    "close_sessions": "ssm_mm.streaming.batched",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ssm_mm' has no attribute '{name}'")
