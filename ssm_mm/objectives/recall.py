"""The recall objective (optional): at every tick and for each event label, the frame shown when that
label last happened (the middle of its last finished segment), average-pooled to N x N x 3: dense
supervision for binding what was on screen to an event in the state, which "what color was the X
when the Y last happened?" needs seconds later."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssm_mm.data.interleave import tick_recall_times
from ssm_mm.objectives.base import Objective, ObjectiveConfig, Target, per_tick, tick_targets

if TYPE_CHECKING:
    from ssm_mm.objectives.base import HeadSpec, Readout, StreamContext, WindowSpan


@dataclass
class RecallConfig(ObjectiveConfig):
    size: int = 4  # N: the recalled frame is pooled to N x N x 3 (at most the frame size)

    RANGES = {**ObjectiveConfig.RANGES, "size": ("[", 1, None, ")")}


def nearest_frames(times: Tensor, frame_times: np.ndarray) -> Tensor:
    """Index of the frame nearest each of ``times`` (any shape, float64; NaN -> −1), ``frame_times``
    sorted ascending (F,); −1 everywhere when there are no frames. Ties go to the earlier frame."""
    out = torch.full(times.shape, -1, dtype=torch.int64)
    ft = np.asarray(frame_times, dtype=np.float64)
    known = ~torch.isnan(times)
    if len(ft) == 0 or not bool(known.any()):
        return out
    q = times[known].numpy()
    hi = np.minimum(np.searchsorted(ft, q, side="left"), len(ft) - 1)  # first frame at or after q
    lo = np.maximum(hi - 1, 0)
    pick = np.where(np.abs(ft[hi] - q) < np.abs(q - ft[lo]), hi, lo)
    out[known] = torch.from_numpy(pick.astype(np.int64))
    return out


class Recall(Objective):
    """Stream targets: ``recall`` (n_ticks, C) the stream frame shown when each event label last
    happened, −1 while none has (or without video). Window / batch targets: ``recall_frames``
    (R, 3, S, S) the distinct frames referred to (they may lie before the window: the head looks back
    across windows) and ``recall`` (K, C) the row of ``recall_frames`` per tick and label, −1 where
    none. Loss: squared error of the pooled frame, averaged over its values, per (tick, label) that
    has happened."""

    name = "recall"
    Config = RecallConfig
    targets = {
        "recall": Target("tick", -1, missing_below_zero=True, rows="recall_frames"),
        "recall_frames": Target("rows", 0.0, torch.float32),
    }

    def build_head(self, spec: HeadSpec) -> nn.Module:
        n = self.cfg.size
        if not 1 <= n <= spec.frame_size:
            raise ValueError(f"objectives.recall.size={n} must be in [1, frame_size={spec.frame_size}]")
        return nn.Linear(spec.d_model, self.n_events * 3 * n * n)

    def logits(self, head: nn.Module, ticks: Tensor) -> Tensor:
        """(..., C, 3 N^2) predicted frames from tick hidden states (..., d), channel-major."""
        return head(ticks).unflatten(-1, (self.n_events, -1))

    def targets_of(self, frames: Tensor) -> Tensor:
        """(R, 3 N^2) targets: ``frames`` (R, 3, S, S) average-pooled to N x N, flattened."""
        return F.adaptive_avg_pool2d(frames, self.cfg.size).flatten(1)

    def stream_targets(self, ctx: StreamContext) -> dict[str, Tensor]:
        f = ctx.features
        times = per_tick(tick_recall_times, ctx)
        return {"recall": nearest_frames(times, f.video_times if f.video is not None else np.zeros(0))}

    def window_targets(self, targets, span: WindowSpan) -> dict[str, Tensor]:
        recall = targets["recall"][span.k0 : span.k1]
        frames, index = torch.unique(recall[recall >= 0], return_inverse=True)  # sorted stream frames
        index = torch.full_like(recall, -1).masked_scatter(recall >= 0, index)
        s = span.frame_size
        if len(frames):  # copied out of a (read-only) memmap
            rows = torch.from_numpy(np.array(span.features.video[frames.numpy()], dtype=np.float32))
        else:
            rows = torch.zeros(0, 3, s, s, dtype=torch.float32)
        return {"recall": index, "recall_frames": rows}

    def count(self, batch) -> float:
        return int((batch.targets["recall"] >= 0).sum())

    def loss_sum(self, head: nn.Module, r: Readout, batch) -> Tensor | None:
        index = tick_targets(batch, "recall")  # (T, C); -1: the label has not happened yet
        seen = index >= 0
        if not seen.any():
            return None
        pred = self.logits(head, r.ticks)[seen].float()  # (n, 3 N^2)
        target = self.targets_of(batch.targets["recall_frames"])[index[seen]].float()
        return (pred - target).pow(2).mean(-1).sum()
