"""Pure functions on plain tensors: the SSD scan, the causal short conv, windowed attention.

Every fast op has a naive twin (``*_sequential`` / ``*_ref``) that tests compare it with; layers in
``ssm_mm.layers`` own the parameters and call these. ``mamba_ref`` loads mamba_ssm's references.
"""

from ssm_mm.ops.attention import rotary, window_attention, window_attention_ref
from ssm_mm.ops.conv import causal_conv1d, causal_conv1d_ref, causal_conv1d_update
from ssm_mm.ops.ssd import DEFAULT_CHUNK_SIZE, ssd_chunked, ssd_scan, ssd_sequential, ssd_step

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "causal_conv1d",
    "causal_conv1d_ref",
    "causal_conv1d_update",
    "rotary",
    "ssd_chunked",
    "ssd_scan",
    "ssd_sequential",
    "ssd_step",
    "window_attention",
    "window_attention_ref",
]
