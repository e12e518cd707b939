"""Modality frontends: small encoders trained jointly with the backbone (early fusion, SPEC §1, §6).

- audio: a stacked log-mel token (D_audio = mel frames per token x n_mels) -> d_model (norm + MLP);
- video: a normalised frame (3, S, S) -> (S / patch_size)^2 patch tokens of d_model (conv stem);
- text: an embedding table over the tokenizer's vocabulary.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn


class AudioFrontend(nn.Module):
    def __init__(self, in_dim: int, d_model: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Sequential(nn.Linear(in_dim, d_model), nn.SiLU(), nn.Linear(d_model, d_model))

    def forward(self, feats: Tensor) -> Tensor:
        """feats: (A, in_dim) -> (A, d_model)."""
        return self.proj(self.norm(feats))


class VideoFrontend(nn.Module):
    """Conv stem to a grid of patch tokens: (F, 3, S, S) -> (F, (S/patch)^2, d_model)."""

    def __init__(self, frame_size: int, patch_size: int, d_model: int, width: int = 32):
        super().__init__()
        if frame_size % patch_size:
            raise ValueError(f"frame_size {frame_size} must be a multiple of patch_size {patch_size}")
        if patch_size % 8:
            raise ValueError(f"patch_size {patch_size} must be a multiple of 8 (the stem downsamples by 8)")
        self.grid = frame_size // patch_size
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, kernel_size=4, stride=4),  # S/4
            nn.GELU(),
            nn.Conv2d(width, 2 * width, kernel_size=2, stride=2),  # S/8
            nn.GELU(),
            nn.Conv2d(2 * width, d_model, kernel_size=patch_size // 8, stride=patch_size // 8),  # S/patch
        )
        self.pos = nn.Parameter(torch.zeros(self.grid * self.grid, d_model))
        nn.init.normal_(self.pos, std=0.02)

    @property
    def patches_per_frame(self) -> int:
        return self.grid * self.grid

    def forward(self, frames: Tensor) -> Tensor:
        f = self.stem(frames)  # (F, d, g, g)
        return rearrange(f, "f d gh gw -> f (gh gw) d") + self.pos  # row-major patches


class TextFrontend(nn.Module):
    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, ids: Tensor) -> Tensor:
        return self.embed(ids)


__all__ = ["AudioFrontend", "TextFrontend", "VideoFrontend"]
