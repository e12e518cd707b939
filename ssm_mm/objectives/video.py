"""The video objective (optional, self-supervised): each video patch token predicts its own patch,
average-pooled to N x N x 3, from the final hidden state; keeps what the frames show (colour as well
as shape) in the residual stream, where later layers and the state can use it."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ssm_mm.data.interleave import VIDEO
from ssm_mm.objectives.base import HeadSpec, Objective, ObjectiveConfig, Readout


@dataclass
class VideoConfig(ObjectiveConfig):
    size: int = 4  # N: the patch is pooled to N x N x 3 (at most the model's patch_size)

    RANGES = {**ObjectiveConfig.RANGES, "size": ("[", 1, None, ")")}


def video_targets(video: Tensor, size: int, grid: int) -> Tensor:
    """Every patch of ``video`` (F, 3, S, S) average-pooled to N x N x 3 (N = ``size``; ``grid`` patches
    per side), as (F * grid^2, 3 N^2) rows in the frontend's patch order (row-major), so that patch
    token ``src`` has target row ``src``."""
    n, g = size, grid
    pooled = F.adaptive_avg_pool2d(video, g * n)  # (F, 3, g*n, g*n)
    f = pooled.shape[0]
    # (F, 3, g, n, g, n) -> (F, g, g, 3, n, n): patch-major rows, channel-major values
    return pooled.reshape(f, 3, g, n, g, n).permute(0, 2, 4, 1, 3, 5).reshape(f * g * g, 3 * n * n)


class Video(Objective):
    """No target tensors: the batch's own frames (``batch.video``) are the targets; squared error per
    valid video token, averaged over its 3 N^2 values."""

    name = "video"
    Config = VideoConfig

    def build_head(self, spec: HeadSpec) -> nn.Module:
        n = self.cfg.size
        if not 1 <= n <= spec.patch_size:
            raise ValueError(f"objectives.video.size={n} must be in [1, patch_size={spec.patch_size}]")
        self.grid = spec.frame_size // spec.patch_size
        return nn.Linear(spec.d_model, 3 * n * n)

    def targets_of(self, video: Tensor) -> Tensor:
        """:func:`video_targets` of ``video`` (F, 3, S, S) at this objective's size and patch grid."""
        return video_targets(video, self.cfg.size, self.grid)

    def count(self, batch) -> float:
        return int(((batch.kind == VIDEO) & batch.valid).sum())

    def loss_sum(self, head: nn.Module, r: Readout, batch) -> Tensor | None:
        if not self.count(batch) or batch.video is None:
            return None
        is_v = (batch.kind == VIDEO) & batch.valid  # (B, L)
        target = self.targets_of(batch.video)[batch.src[is_v]].float()  # (n, 3 N^2)
        return (head(r.hidden[is_v]).float() - target).pow(2).mean(-1).sum()
