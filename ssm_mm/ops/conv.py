"""Causal depthwise conv1d (the short convolution of a Mamba mixer) with an explicit carried state.

Layout is channels-first like the ``causal_conv1d`` package: x ``(b, d, l)``, weight ``(d, w)``. The state
is the last ``w - 1`` inputs before ``x`` (``(b, d, w - 1)``), so a sequence processed in pieces with the
state carried equals the whole sequence. Right-padded batches pass ``lengths``: the new state is then
taken from each row's last *valid* inputs, so padding never enters the state.

- ``causal_conv1d``: whole sequence (F.conv1d on [state, x]; the CUDA kernel when available).
- ``causal_conv1d_update``: one step (streaming decode).
- ``causal_conv1d_ref``: the naive twin (explicit loop over taps and rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["causal_conv1d", "causal_conv1d_update", "causal_conv1d_ref", "cuda_conv_available"]

_ACTIVATIONS = (None, "silu")
_CUDA_WIDTHS = (2, 3, 4)  # widths the causal_conv1d CUDA kernel implements


def _check(
    x: Tensor, weight: Tensor, bias: Tensor | None, state: Tensor | None, activation, steps: int | None
):
    """Validate a conv call; x is (b, d, l) (steps=None) or (b, d) (steps=1). Returns (b, d, w)."""
    want = "(batch, channels, length)" if steps is None else "(batch, channels)"
    if x.dim() != (3 if steps is None else 2):
        raise ValueError(f"causal_conv1d: x must be {want}, got shape {tuple(x.shape)}")
    if weight.dim() != 2 or weight.shape[0] != x.shape[1] or weight.shape[1] < 1:
        raise ValueError(
            f"causal_conv1d: weight must be (channels={x.shape[1]}, width ≥ 1), got {tuple(weight.shape)}"
        )
    b, d, w = x.shape[0], x.shape[1], weight.shape[1]
    if bias is not None and bias.shape != (d,):
        raise ValueError(f"causal_conv1d: bias must be ({d},), got {tuple(bias.shape)}")
    if state is not None and state.shape != (b, d, w - 1):
        raise ValueError(f"causal_conv1d: state must be {(b, d, w - 1)}, got {tuple(state.shape)}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be None or 'silu', got {activation!r}")
    return b, d, w


def _check_lengths(lengths: Tensor | None, b: int, L: int) -> None:
    if lengths is None:
        return
    if lengths.shape != (b,) or lengths.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"causal_conv1d: lengths must be an integer tensor of shape ({b},), "
            f"got {lengths.dtype} {tuple(lengths.shape)}"
        )
    # A check of values (a host sync): eager only; under torch.compile it would break the graph.
    if not torch.compiler.is_compiling() and bool(((lengths < 0) | (lengths > L)).any()):
        raise ValueError(f"causal_conv1d: lengths must lie in [0, {L}], got {lengths.tolist()}")


def _new_state(xs: Tensor, w: int, lengths: Tensor | None) -> Tensor:
    """Last w - 1 steps of xs = [state, x] in channels-last layout (b, w - 1 + l, d), ending at each row's
    valid length, as a (b, d, w - 1) state.

    Always a fresh tensor: a view would keep the whole chunk's input alive inside a streaming state.
    """
    if lengths is None:
        return xs[:, xs.shape[1] - (w - 1) :].transpose(1, 2).contiguous()
    # Row i's valid inputs end at step (w - 1) + lengths[i] of xs, so its state is the w - 1 steps
    # starting at lengths[i].
    b, d = xs.shape[0], xs.shape[2]
    idx = lengths.to(device=xs.device, dtype=torch.long)[:, None] + torch.arange(w - 1, device=xs.device)
    return xs.gather(1, idx[:, :, None].expand(b, w - 1, d)).transpose(1, 2).contiguous()  # (b, d, w - 1)


def cuda_conv_available() -> bool:
    """Whether the causal_conv1d CUDA extension is importable (needs CUDA and the compiled package)."""
    if not torch.cuda.is_available():
        return False
    from ssm_mm.ops.mamba_ref import load_mamba_refs

    refs = load_mamba_refs()
    return refs is not None and refs.has_causal_conv1d_cuda


def _use_cuda(kernels: str, x: Tensor, w: int, name: str) -> bool:
    if kernels not in ("auto", "torch", "cuda"):
        raise ValueError(f"{name}: kernels must be 'auto', 'torch' or 'cuda', got {kernels!r}")
    if kernels == "torch":
        return False
    ok = x.is_cuda and w in _CUDA_WIDTHS and cuda_conv_available()
    if kernels == "cuda" and not ok:
        why = (
            "the inputs are not CUDA tensors"
            if not x.is_cuda
            else f"width {w} is not one of {_CUDA_WIDTHS}"
            if w not in _CUDA_WIDTHS
            else "the causal_conv1d CUDA extension is not importable"
        )
        raise RuntimeError(f"{name}(kernels='cuda'): the CUDA kernel is unavailable: {why}")
    return ok


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    state: Tensor | None = None,
    activation: str | None = None,
    lengths: Tensor | None = None,
    kernels: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Causal depthwise conv: y[:, c, t] = act(bias[c] + Σ_k weight[c, k] · xs[:, c, t + k]), xs = [state, x].

    Args:
        x: (b, d, l) inputs; weight: (d, w); bias: (d,) or None.
        state: (b, d, w - 1) the inputs just before x (zeros if None).
        activation: None or "silu".
        lengths: optional (b,) number of valid (left-aligned) positions per row; the rest is right
            padding whose outputs are computed but meaningless, and which never enters the state.
        kernels: "auto" (CUDA kernel for CUDA tensors when available), "torch", or "cuda" (required).
    Returns:
        y: (b, d, l) in x's dtype; new_state: (b, d, w - 1) in x's dtype.
    """
    b, d, w = _check(x, weight, bias, state, activation, None)
    _check_lengths(lengths, b, x.shape[2])
    if state is None:
        state = x.new_zeros(b, d, w - 1)
    # [state, x] channels-last, (b, w - 1 + l, d): the mixer's x is a channels-first view of a (b, l, d)
    # projection, so this reads memory in order
    xs = torch.cat([state.to(x.dtype).transpose(1, 2), x.transpose(1, 2)], dim=1)
    new_state = _new_state(xs, w, lengths)
    if _use_cuda(kernels, x, w, "causal_conv1d"):
        from ssm_mm.ops.mamba_ref import load_mamba_refs

        # The kernel takes initial states only in channel-last layout (stride 1 over channels).
        x_cl = x.transpose(1, 2).contiguous().transpose(1, 2)
        s_cl = state.to(x.dtype).transpose(1, 2).contiguous().transpose(1, 2)
        y = load_mamba_refs().causal_conv1d_fn(x_cl, weight, bias, initial_states=s_cl, activation=activation)
        return y, new_state
    # Compute in the weight's dtype (like causal_conv1d_ref), return x's dtype. One fused multiply-add
    # per tap instead of F.conv1d(groups=d): same forward values and speed, but the CPU (oneDNN)
    # depthwise conv1d *backward* takes seconds per call at training lengths (5 s for 320 channels x
    # 16k steps, and up to 10-36 s on the first call of each new shape) against ~0.1 s for this
    # (eval/bench_train.py; BENCHMARKS.md).
    # The taps run channels-last too and the result is returned as a (b, d, l) view of a (b, l, d)
    # tensor, which the mixer turns back to (b, l, d) for free: every elementwise op here and in the
    # backward reads memory contiguously. In (b, d, l) layout against the (b, l, d) gradients the
    # mixed strides made them (silu's backward above all) several times slower (BENCHMARKS.md,
    # "Training throughput"). The same ops per element in the same order: the values do not change.
    xs = xs.to(weight.dtype)
    L = x.shape[2]
    y = bias if bias is not None else xs.new_zeros(())
    wt = weight.t()  # (w, d)
    for k in range(w):  # tap k looks back w - 1 - k steps
        y = torch.addcmul(y, wt[k], xs[:, k : k + L])  # (b, l, d)
    if activation == "silu":
        y = F.silu(y)
    return y.to(x.dtype).transpose(1, 2), new_state


def causal_conv1d_update(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    state: Tensor,
    activation: str | None = None,
    kernels: str = "auto",
) -> tuple[Tensor, Tensor]:
    """One step of ``causal_conv1d``: x (b, d), state (b, d, w - 1) -> (y (b, d), new_state (b, d, w - 1)).

    Functional: the input state is not modified.
    """
    b, d, w = _check(x, weight, bias, state, activation, 1)
    if _use_cuda(kernels, x, w, "causal_conv1d_update"):
        from ssm_mm.ops.mamba_ref import load_mamba_refs

        new_state = state.to(x.dtype).clone()  # the kernel updates its state argument in place
        y = load_mamba_refs().causal_conv1d_update(x, new_state, weight, bias, activation=activation)
        return y, new_state
    xs = torch.cat([state.to(x.dtype), x[:, :, None]], dim=-1)  # (b, d, w)
    y = (xs.to(weight.dtype) * weight).sum(-1)
    if bias is not None:
        y = y + bias
    if activation == "silu":
        y = F.silu(y)
    return y.to(x.dtype), xs[:, :, 1:].contiguous()


def causal_conv1d_ref(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    state: Tensor | None = None,
    activation: str | None = None,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Naive twin of ``causal_conv1d`` (same arguments and returns): a loop over taps and over rows."""
    b, d, w = _check(x, weight, bias, state, activation, None)
    L = x.shape[2]
    _check_lengths(lengths, b, L)
    prev = x.new_zeros(b, d, w - 1) if state is None else state.to(x.dtype)
    xs = torch.cat([prev, x], dim=-1).to(weight.dtype)
    y = torch.zeros(b, d, L, dtype=weight.dtype, device=x.device)
    for k in range(w):  # tap k looks back w - 1 - k steps
        y = y + weight[:, k, None] * xs[:, :, k : k + L]
    if bias is not None:
        y = y + bias[:, None]
    if activation == "silu":
        y = y * torch.sigmoid(y)
    n_valid = [L] * b if lengths is None else lengths.tolist()
    new_state = (
        torch.stack([xs[i, :, n_valid[i] : n_valid[i] + w - 1] for i in range(b)]) if b else xs[:, :, : w - 1]
    )
    return y.to(x.dtype), new_state.to(x.dtype)
