"""Temporal embedding (SPEC §6): what the model is told about each token's real timestamp.

Per token, from float64 times (so a clock hours away from zero loses no precision):
- elapsed seconds since the previous token, and since the previous token of the same modality,
  each squashed to a bounded range with log1p at a few time scales and saturated at ``max_gap``;
- bounded periodic features sin/cos(2π t / P) for log-spaced periods P.
No feature grows with absolute time. A small MLP maps them to ``d_model`` and the result is added to
the token embedding. With ``temporal.embedding=false`` the module returns zeros (ablation).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ssm_mm.config import TemporalConfig

GAP_SCALES = (0.05, 0.5, 5.0)  # seconds: log1p(gap / s) resolves gaps around each scale


class TemporalEmbedding(nn.Module):
    def __init__(self, cfg: TemporalConfig, d_model: int):
        super().__init__()
        self.cfg = cfg
        self.enabled = cfg.embedding
        periods = torch.logspace(
            math.log10(cfg.min_period), math.log10(cfg.max_period), cfg.n_periodic, dtype=torch.float64
        )
        self.register_buffer("periods", periods, persistent=False)
        self.register_buffer("gap_scales", torch.tensor(GAP_SCALES, dtype=torch.float64), persistent=False)
        self.n_features = 2 * len(GAP_SCALES) + 2 + 2 * cfg.n_periodic
        self.mlp = nn.Sequential(nn.Linear(self.n_features, d_model), nn.SiLU(), nn.Linear(d_model, d_model))

    def features(self, t: Tensor, gap: Tensor, gap_same: Tensor) -> Tensor:
        """t, gap, gap_same: (B, L) float64 seconds (gaps ≥ 0, +inf = no previous token).
        Returns (B, L, n_features) float32, every entry bounded."""
        cap = self.cfg.max_gap

        def squash(g: Tensor) -> tuple[Tensor, Tensor]:
            never = torch.isinf(g)
            g = g.clamp(0, cap)
            f = torch.log1p(g.unsqueeze(-1) / self.gap_scales) / torch.log1p(cap / self.gap_scales)
            f = torch.where(never.unsqueeze(-1), torch.ones_like(f), f)
            return f, never.to(f.dtype).unsqueeze(-1)

        f1, n1 = squash(gap)
        f2, n2 = squash(gap_same)
        # phase in float64: t mod P is exact enough even for t ~ 1e6 s
        phase = 2 * math.pi * torch.remainder(t.unsqueeze(-1), self.periods) / self.periods
        per = torch.cat([torch.sin(phase), torch.cos(phase)], -1)
        return torch.cat([f1, n1, f2, n2, per], -1).float()

    def forward(self, t: Tensor, gap: Tensor, gap_same: Tensor) -> Tensor:
        if not self.enabled:
            return torch.zeros(*t.shape, self.mlp[-1].out_features, device=t.device)
        return self.mlp(self.features(t, gap, gap_same))
