"""Checking and normalising what users push into a streaming session.

Each function takes what a caller passed (numpy or torch, any dtype) and returns the one form the
session works with, or raises :class:`~ssm_mm.streaming.records.StreamingError` with a one-line
message naming what is wrong. They never touch a session, so a refused push leaves it unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ssm_mm.data import featurize
from ssm_mm.streaming.records import StreamingError

# Channels a (C, N) audio push may have; more means (N, C) was probably passed.
MAX_CHANNELS = 16


def is_real(v) -> bool:
    """A real number (Python or numpy int/float), not a bool."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def as_audio(samples) -> Tensor:
    """(N,) or (C, N) float numpy/torch -> (N,) float32 mono on the CPU (channel mean)."""
    if isinstance(samples, np.ndarray):
        if samples.dtype.kind != "f":
            raise StreamingError(
                f"audio samples must be floating point (e.g. int16 PCM / 32768), got dtype {samples.dtype}"
            )
        samples = torch.from_numpy(np.ascontiguousarray(samples))
    if not isinstance(samples, Tensor):
        raise StreamingError(
            f"audio samples must be a numpy array or torch tensor, got {type(samples).__name__}"
        )
    if not samples.is_floating_point():
        raise StreamingError(
            f"audio samples must be floating point (e.g. int16 PCM / 32768), got dtype {samples.dtype}"
        )
    if samples.ndim == 2:
        if not 1 <= samples.shape[0] <= MAX_CHANNELS:
            raise StreamingError(
                f"audio samples must be (N,) or (C, N) with 1..{MAX_CHANNELS} channels, got shape "
                f"{tuple(samples.shape)} (pass (C, N), not (N, C))"
            )
    elif samples.ndim != 1:
        raise StreamingError(f"audio samples must be (N,) or (C, N), got shape {tuple(samples.shape)}")
    x = samples.detach().to(device="cpu", dtype=torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise StreamingError("audio samples contain NaN or Inf")
    if x.ndim == 2:
        x = x.mean(0)  # (N,) mono: the mean of the channels, as decode_audio mixes
    return x.contiguous()


def as_rate(sample_rate) -> int:
    """A sample rate: a positive whole number of Hz."""
    if not is_real(sample_rate) or not math.isfinite(float(sample_rate)) or float(sample_rate) <= 0:
        raise StreamingError(f"sample_rate must be a positive number of Hz, got {sample_rate!r}")
    if float(sample_rate) != int(sample_rate):
        raise StreamingError(f"sample_rate must be a whole number of Hz, got {sample_rate!r}")
    return int(sample_rate)


def as_time(t, what: str) -> float:
    """A finite time in seconds (a number or a 0-d array/tensor); ``what`` names it in the error."""
    if isinstance(t, (np.ndarray, Tensor)) and t.ndim == 0:
        t = t.item()
    if not is_real(t) or not math.isfinite(float(t)):
        raise StreamingError(f"{what} must be a finite number of seconds, got {t!r}")
    return float(t)


def as_frames(frames) -> Tensor:
    """(T, H, W, 3) uint8 numpy/torch -> the same frames as a CPU tensor (the featurizer's checks)."""
    return featurize.as_frames(frames, StreamingError)


def as_timestamps(timestamps, n: int) -> Tensor:
    """``n`` frame timestamps (seconds, finite, non-decreasing) -> (n,) float64 CPU tensor."""
    try:
        if isinstance(timestamps, Tensor):
            ts = timestamps.detach().cpu().to(torch.float64)
        else:
            ts = torch.from_numpy(np.asarray(timestamps, dtype=np.float64))
    except (TypeError, ValueError):
        raise StreamingError(
            f"video timestamps must be numbers (seconds), got {type(timestamps).__name__}"
        ) from None
    if ts.ndim != 1 or ts.shape[0] != n:
        raise StreamingError(
            f"got {n} frames but timestamps of shape {tuple(ts.shape)}: need one timestamp per frame"
        )
    if not bool(torch.isfinite(ts).all()):
        raise StreamingError("video timestamps contain NaN or Inf")
    if n > 1 and bool((ts[1:] < ts[:-1]).any()):
        i = int(torch.nonzero(ts[1:] < ts[:-1])[0])
        raise StreamingError(
            f"video timestamps must be non-decreasing: t[{i}]={ts[i].item()} > t[{i + 1}]={ts[i + 1].item()}"
        )
    return ts
