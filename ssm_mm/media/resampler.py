"""Streaming resampling: :func:`ssm_mm.media.audio.sinc_resample` applied to a signal that arrives in
pieces, with the same output as resampling the whole signal at once.

``StreamingSession.push_audio`` uses it to bring any input rate to the model's rate; it is media code
(no session, no model), so it lives here beside the whole-signal resampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ssm_mm.media.audio import sinc_resample_kernel

# Largest polyphase kernel (elements) the streaming resampler builds (rate pairs with a tiny gcd).
MAX_KERNEL_ELEMENTS = 1 << 24


class ResampleRateError(ValueError):
    """A pair of sample rates the streaming resampler refuses (its filter would be absurdly large)."""


@dataclass
class ResamplerState:
    """Carried state of :class:`StreamingResampler` (bounded: ``carry`` < kernel length + one block).

    carry:  (n,) float32 input samples from position ``q·orig − width`` on, where ``q`` is the next
            output block (zeros stand for the samples before the stream start).
    n_in:   input samples consumed since the stream start.
    n_out:  output samples emitted.
    """

    carry: Tensor
    n_in: int
    n_out: int

    def to_dict(self) -> dict:
        return {"carry": self.carry.clone(), "n_in": self.n_in, "n_out": self.n_out}

    @classmethod
    def from_dict(cls, d: dict) -> ResamplerState:
        return cls(carry=d["carry"].to(torch.float32).clone(), n_in=int(d["n_in"]), n_out=int(d["n_out"]))


class StreamingResampler:
    """Band-limited resampling of a stream in pieces, equal to resampling the whole signal at once.

    :func:`ssm_mm.media.audio.sinc_resample` computes output block ``q`` (``new`` samples, rates divided
    by their gcd) as one stride-``orig`` correlation of the zero-padded input with a polyphase kernel
    of length ``K = 2·width + orig``: block ``q`` reads input ``[q·orig − width, q·orig + orig + width)``.
    Here every block is computed as soon as that input range has arrived, with the same kernel and
    dtype, and the input from the next block's start on is carried; :meth:`flush` pads the end with
    zeros and trims to ``ceil(n_in · new / orig)`` samples, as the whole-signal call does. Outputs
    agree with the whole-signal call up to float32 rounding (~1e-7).

    ``y, state = rs(x, state)`` with x (N,) float32 -> y (M,) float32. The resampler holds only
    constants (the kernel), so one instance serves any number of streams.

    Raises :class:`ResampleRateError` for rate pairs whose kernel would exceed
    ``MAX_KERNEL_ELEMENTS`` (rates sharing a tiny factor, e.g. 44101 Hz -> 16000 Hz).
    """

    def __init__(self, orig_sr: int, new_sr: int):
        g = math.gcd(int(orig_sr), int(new_sr))
        self.orig_sr, self.new_sr = int(orig_sr), int(new_sr)
        self.orig, self.new = self.orig_sr // g, self.new_sr // g
        self.identity = self.orig == self.new
        self.width = 0
        self.kernel: Tensor | None = None
        if not self.identity:
            # kernel (new, 1, K) with K = 2·width + orig; refuse rate pairs whose kernel is absurd
            base = min(self.orig, self.new) * 0.99
            k_len = 2 * math.ceil(6 * self.orig / base) + self.orig
            if self.new * k_len > MAX_KERNEL_ELEMENTS:
                raise ResampleRateError(
                    f"cannot resample {self.orig_sr} Hz -> {self.new_sr} Hz: the rates share too small a "
                    f"factor (gcd {g}), the polyphase filter would have {self.new * k_len} taps"
                )
            kernel, self.width = sinc_resample_kernel(self.orig, self.new)
            self.kernel = kernel.to(torch.float32)  # (new, 1, K), the dtype sinc_resample uses for float32

    @property
    def kernel_size(self) -> int:
        return 0 if self.identity else 2 * self.width + self.orig

    @property
    def lookahead_seconds(self) -> float:
        """Input seconds past an output sample's time needed before it is emitted (an upper bound)."""
        return 0.0 if self.identity else (self.orig + self.width) / self.orig_sr

    def init_state(self) -> ResamplerState:
        return ResamplerState(carry=torch.zeros(self.width, dtype=torch.float32), n_in=0, n_out=0)

    def _blocks(self, buf: Tensor) -> tuple[Tensor, int]:
        """Every complete output block of ``buf`` (starting at a block boundary − width)."""
        k_len = self.kernel_size
        if buf.shape[0] < k_len:
            return torch.zeros(0, dtype=torch.float32), 0
        nq = (buf.shape[0] - k_len) // self.orig + 1
        x = buf[: (nq - 1) * self.orig + k_len].view(1, 1, -1)  # (1, 1, n)
        y = F.conv1d(x, self.kernel, stride=self.orig)  # (1, new, nq): phase j of block q
        return y[0].transpose(0, 1).reshape(-1), nq  # (nq·new,) interleaved: k = q·new + j

    def __call__(self, x: Tensor, state: ResamplerState) -> tuple[Tensor, ResamplerState]:
        if self.identity:
            n = x.shape[0]
            return x, ResamplerState(state.carry, state.n_in + n, state.n_out + n)
        buf = torch.cat([state.carry, x])  # (n_carry + N,)
        y, nq = self._blocks(buf)
        return y, ResamplerState(
            buf[nq * self.orig :].clone(), state.n_in + x.shape[0], state.n_out + y.shape[0]
        )

    def flush(self, state: ResamplerState) -> tuple[Tensor, ResamplerState]:
        """The remaining output at the end of the stream (zeros assumed after the last input)."""
        total = math.ceil(state.n_in * self.new / self.orig)
        if self.identity or state.n_out >= total:
            return torch.zeros(0, dtype=torch.float32), state
        buf = torch.cat([state.carry, torch.zeros(self.width + self.orig, dtype=torch.float32)])
        y, _ = self._blocks(buf)
        y = y[: total - state.n_out].clone()
        return y, ResamplerState(torch.zeros(0, dtype=torch.float32), state.n_in, total)
