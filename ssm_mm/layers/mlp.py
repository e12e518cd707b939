"""Gated MLP (SwiGLU) that follows every mixer."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class GatedMLP(nn.Module):
    """y = W_down(silu(W_gate x) * W_up x) (Shazeer, 2020). Hidden size rounded up to a multiple of 16."""

    def __init__(self, d_model: int, ratio: float = 2.0):
        super().__init__()
        hidden = -(-int(ratio * d_model) // 16) * 16
        self.hidden = hidden
        self.w_in = nn.Linear(d_model, 2 * hidden, bias=False)  # gate and up projections, fused
        self.w_out = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w_in(x).chunk(2, dim=-1)
        return self.w_out(F.silu(gate) * up)
