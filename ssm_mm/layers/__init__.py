"""Parameterised modules: the SSM mixer, attention, MLP and norms (frontends/temporal live beside them)."""

from ssm_mm.layers.attention import AttentionLayer
from ssm_mm.layers.mamba2 import Mamba2Mixer
from ssm_mm.layers.mlp import GatedMLP
from ssm_mm.layers.norm import GatedRMSNorm, RMSNorm

__all__ = ["AttentionLayer", "GatedMLP", "GatedRMSNorm", "Mamba2Mixer", "RMSNorm"]
