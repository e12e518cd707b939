"""The hybrid backbone: a stack of pre-norm residual blocks built from a pattern string.

``pattern="MMMA"``: layers 0-2 are time-aware SSM mixers, layer 3 is sliding-window attention; each
mixer is followed by a gated MLP. The letter -> class table is :data:`LAYER_TYPES`; ablations are
config changes only (``"AAAA"`` with ``attn_window=null`` is the attention-only Transformer,
``"MMMM"`` the SSM-only model).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssm_mm.config import ModelConfig
from ssm_mm.layers.attention import AttentionLayer
from ssm_mm.layers.mamba2 import Mamba2Mixer
from ssm_mm.layers.mlp import GatedMLP
from ssm_mm.layers.norm import RMSNorm
from ssm_mm.state import BackboneState, LayerState

LAYER_TYPES: dict[str, type[nn.Module]] = {"M": Mamba2Mixer, "A": AttentionLayer}


class Block(nn.Module):
    """x = x + mixer(norm(x)); x = x + mlp(norm(x))."""

    def __init__(self, letter: str, cfg: ModelConfig, window: int | None = None):
        super().__init__()
        if letter not in LAYER_TYPES:
            raise ValueError(f"unknown layer letter '{letter}' in pattern; valid: {sorted(LAYER_TYPES)}")
        self.letter = letter
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        # window: the attention window of an "A" block (None = full attention); unused by "M"
        self.mixer = LAYER_TYPES[letter](cfg, window) if letter == "A" else LAYER_TYPES[letter](cfg)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = GatedMLP(cfg.d_model, cfg.mlp_ratio)

    def forward(
        self, x: Tensor, dt: Tensor | None, positions: Tensor, state: LayerState, valid: Tensor | None
    ):
        h = self.norm1(x)
        if self.letter == "A":
            h, state = self.mixer(h, positions, state, valid)
        else:
            h, state = self.mixer(h, dt, state, valid)
        x = x + h
        x = x + self.mlp(self.norm2(x))
        return x, state


class HybridBackbone(nn.Module):
    """``forward(x, dt, state, valid, positions) -> (y, state)`` over a right-padded batch.

    x: (B, L, d_model) token embeddings; dt: (B, L) float seconds since the previous token (0 for
    tokens sharing a timestamp; the first token of a stream may take any value since the state is
    empty); valid: (B, L) bool; positions: (B, L) float rotary positions, default the running index
    of valid tokens (continuing from ``state.n_tokens``).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        windows = iter(cfg.layer_windows())
        self.blocks = nn.ModuleList([Block(c, cfg, next(windows) if c == "A" else None) for c in cfg.pattern])
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> BackboneState:
        return BackboneState(
            layers=[blk.mixer.init_state(batch, device, dtype) for blk in self.blocks],
            n_tokens=torch.zeros(batch, dtype=torch.long, device=device),
        )

    def index_positions(self, n_tokens: Tensor, valid: Tensor) -> Tensor:
        """(B, L) running index of each valid token, continuing from ``n_tokens`` (B,)."""
        return (n_tokens.unsqueeze(1) + valid.long().cumsum(1) - 1).clamp_min(0).to(torch.float64)

    def forward(
        self,
        x: Tensor,
        dt: Tensor | None = None,
        state: BackboneState | None = None,
        valid: Tensor | None = None,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, BackboneState]:
        b, l, _ = x.shape
        if state is None:
            state = self.init_state(b, x.device, x.dtype)
        if len(state.layers) != len(self.blocks):
            raise ValueError(f"state has {len(state.layers)} layers, backbone has {len(self.blocks)}")
        mask = valid if valid is not None else torch.ones(b, l, dtype=torch.bool, device=x.device)
        if positions is None:
            positions = self.index_positions(state.n_tokens, mask)
        new_layers = []
        for blk, s in zip(self.blocks, state.layers):
            x, s = blk(x, dt, positions, s, valid)
            new_layers.append(s)
        n_tokens = state.n_tokens + mask.long().sum(1)
        return self.norm_f(x), BackboneState(new_layers, n_tokens)

    def state_nbytes(self, batch: int = 1) -> int:
        """Bytes of the recurrent state at batch ``batch`` (attention: its bounded cache; empty if full)."""
        return self.init_state(batch).nbytes()
