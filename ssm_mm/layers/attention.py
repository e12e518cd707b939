"""Causal attention layer with a sliding window and a bounded KV cache (SPEC §6).

Rotary positions are supplied by the caller (the backbone): by default the token's running index,
so order is always visible; ``rope_positions="time"`` feeds seconds instead (ablation).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssm_mm.config import ModelConfig
from ssm_mm.ops.attention import rotary, window_attention
from ssm_mm.state import AttentionState


class AttentionLayer(nn.Module):
    """Multi-head (grouped-query) causal attention. ``forward(u, positions, state, valid) -> (y, state)``.

    ``window``: this layer's window in tokens (None = full attention); the backbone passes each
    layer's entry of ``cfg.layer_windows()``.
    """

    def __init__(self, cfg: ModelConfig, window: int | None):
        super().__init__()
        self.n_heads = cfg.attn_heads
        self.n_kv = cfg.attn_kv_heads
        self.head_dim = cfg.d_model // cfg.attn_heads
        self.window = window
        self.rope_base = cfg.rope_base
        self.qkv = nn.Linear(cfg.d_model, (self.n_heads + 2 * self.n_kv) * self.head_dim, bias=False)
        self.out_proj = nn.Linear(self.n_heads * self.head_dim, cfg.d_model, bias=False)

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> AttentionState:
        s = 0 if self.window is None else self.window - 1
        return AttentionState(
            k=torch.zeros(batch, s, self.n_kv, self.head_dim, device=device, dtype=dtype),
            v=torch.zeros(batch, s, self.n_kv, self.head_dim, device=device, dtype=dtype),
            valid=torch.zeros(batch, s, dtype=torch.bool, device=device),
        )

    def forward(
        self, u: Tensor, positions: Tensor, state: AttentionState | None = None, valid: Tensor | None = None
    ) -> tuple[Tensor, AttentionState]:
        """u: (B, L, d_model); positions: (B, L) float rotary positions; valid: (B, L) bool."""
        b, l, _ = u.shape
        if state is None:
            state = self.init_state(b, u.device, u.dtype)
        q, k, v = self.qkv(u).split(
            [self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.n_kv * self.head_dim], -1
        )
        q = q.view(b, l, self.n_heads, self.head_dim)  # (B, L, H, D)
        k = k.view(b, l, self.n_kv, self.head_dim)  # (B, L, Hkv, D)
        v = v.view(b, l, self.n_kv, self.head_dim)
        q = rotary(q, positions, base=self.rope_base)
        k = rotary(k, positions, base=self.rope_base)
        out, ck, cv, cvalid = window_attention(
            q, k, v, self.window, cache_k=state.k, cache_v=state.v, cache_valid=state.valid, valid=valid
        )
        y = self.out_proj(out.reshape(b, l, self.n_heads * self.head_dim))
        return y, AttentionState(k=ck, v=cv, valid=cvalid)
