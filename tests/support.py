"""Helpers shared across the test suite (importable everywhere: pytest's ``pythonpath`` has tests/).

One tiny model configuration, so every parity test exercises the same small hybrid unless it says
what it changes: d_model 32, an SSM-SSM-attention-SSM stack, 8-dim SSM state, a 24-token attention
window (the KV cache wraps within a few ticks), pure-torch kernels.
"""

from __future__ import annotations

import torch

from ssm_mm.config import ModelConfig
from ssm_mm.models.multimodal import MultimodalSSM

TINY_MODEL = dict(
    d_model=32,
    pattern="MMAM",
    d_state=8,
    headdim=8,
    chunk_size=16,
    attn_heads=2,
    attn_kv_heads=2,
    attn_window=24,
    kernels="torch",
)


def tiny_model_config(**overrides) -> ModelConfig:
    """The tiny ModelConfig, with ``overrides`` applied."""
    return ModelConfig(**{**TINY_MODEL, **overrides})


def tiny_model(seed: int = 0, labels: list[str] | None = None, objectives=None, **overrides) -> MultimodalSSM:
    """A freshly initialised (seeded) tiny MultimodalSSM in eval mode (``objectives``: ``{name: config}``
    beside the always-on ones)."""
    torch.manual_seed(seed)
    return MultimodalSSM(tiny_model_config(**overrides), labels=labels, objectives=objectives).eval()
