"""Shared helpers for the ops tests."""

from __future__ import annotations

import torch
from torch import Tensor


def rel_err(a: Tensor, b: Tensor) -> float:
    """Norm-relative error ‖a − b‖ / ‖b‖ in float64 (SPEC §9); 0 when both are zero."""
    a, b = a.detach().double(), b.detach().double()
    denom = b.norm()
    if denom == 0:
        return float((a - b).norm())
    return float((a - b).norm() / denom)


def ssd_inputs(
    b: int = 2,
    L: int = 70,
    h: int = 4,
    p: int = 8,
    n: int = 6,
    g: int = 1,
    init: bool = True,
    decay_scale: float = 0.5,
    zero_every: int = 4,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> dict[str, Tensor | None]:
    """Random scan inputs with leaf tensors requiring grad.

    log_decay ≤ 0 mixes weak and strong decays, and is exactly 0 at every ``zero_every``-th token
    (tokens sharing a timestamp).
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, h, p, generator=gen, dtype=dtype)
    scale = decay_scale * torch.rand(1, 1, h, generator=gen, dtype=dtype) * 4  # per-head spread
    log_decay = -torch.rand(b, L, h, generator=gen, dtype=dtype) * scale
    if zero_every:
        log_decay[:, ::zero_every] = 0.0
    B = torch.randn(b, L, g, n, generator=gen, dtype=dtype)
    C = torch.randn(b, L, g, n, generator=gen, dtype=dtype)
    s0 = torch.randn(b, h, p, n, generator=gen, dtype=dtype) if init else None
    out = {"x": x, "log_decay": log_decay, "B": B, "C": C, "initial_state": s0}
    return {k: (v.requires_grad_() if v is not None else None) for k, v in out.items()}
