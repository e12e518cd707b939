"""The time-aware Mamba-2 SSD scan (SPEC §6) as pure functions.

Recurrence, per batch row and head (state ``h`` is ``(P, N)``, ``x_t`` is ``(P,)``, ``B_t, C_t`` are
``(N,)``)::

    h_t = exp(a_t) * h_{t-1} + x_t ⊗ B_t          y_t = h_t @ C_t

The caller passes ``x`` already scaled by the input gain (``x_scaled = γ_t · x_t``) and the log-decay
``a_t = A · λ_t ≤ 0`` separately, exactly as ``mamba_ssm``'s ``ssd_minimal_discrete`` takes ``X·dt`` and
``A·dt`` (its parity reference). Tokens that share a timestamp have ``a_t = 0``: they still write into
the state and receive gradient. There is no ``D`` term here; the layer adds ``D · x``.

Functions (all return ``(y, final_state)``; states are ``(b, h, p, n)``):

- ``ssd_chunked``: the fast pure-PyTorch chunked scan ("state space duality", Dao & Gu 2024, §6),
  with a hand-written backward (see ``_SSDChunkedFn``).
- ``ssd_sequential``: the obviously-correct twin, a Python loop over tokens (tests only).
- ``ssd_step``: one token, for streaming decode.
- ``ssd_scan``: dispatcher: ``mamba_ssm``'s Triton kernel on CUDA when it imports, else ``ssd_chunked``.

B and C are grouped like Mamba-2: ``(b, l, g, n)`` with ``h % g == 0``; head ``i`` uses group
``i // (h // g)``.

Chunked algorithm (chunk length Q, ``c = l / Q`` chunks, ``cs`` = in-chunk cumulative log-decay)::

    y_i   = Σ_{j≤i in chunk} exp(cs_i - cs_j) (C_i·B_j) x_j  +  exp(cs_i) C_i H_prev     (intra + inter)
    H_end = exp(cs_Q) H_prev + Σ_j exp(cs_Q - cs_j) x_j ⊗ B_j                            (state passing)

Intra-chunk terms are batched matmuls; ``C·Bᵀ`` is computed once per *group* (not per head) and the
per-head decay enters as an elementwise ``(Q, Q)`` mask. Chunk states pass through a short blocked
scan over chunks (``_scan_chunks``), ~2·sqrt(c) small ops instead of c.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "CUDA_DT_FLOOR",
    "ssd_chunked",
    "ssd_sequential",
    "ssd_step",
    "ssd_scan",
    "cuda_ssd_available",
]

# Measured by eval/bench_scan.py (forward+backward, h=8, p=n=64, 2-core CPU): 32 and 64 are within
# noise of each other at L = 1k-8k and 128/256 are 1.3-1.7x slower (larger decay masks); 64 keeps
# half as many chunk states as 32 (saved for backward), so it is the default.
DEFAULT_CHUNK_SIZE = 64

# Floor on dt for the CUDA kernel (shared/GPU.md way (1)): the kernel ties the decay and the input
# gain to one dt, so we call it with dt = -a and x / dt. dt = 0 (shared timestamps) is raised to this
# floor; at 1e-5 the extra error equals the kernel's own TF32 error (measured, GPU.md).
CUDA_DT_FLOOR = 1e-5


# --------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------


def _check_scan_inputs(x: Tensor, log_decay: Tensor, B: Tensor, C: Tensor, initial_state: Tensor | None):
    """Validate shapes of a sequence scan; return (b, l, h, p, g, n)."""
    if x.dim() != 4:
        raise ValueError(f"ssd: x must be (batch, length, heads, head_dim), got shape {tuple(x.shape)}")
    b, L, h, p = x.shape
    if log_decay.shape != (b, L, h):
        raise ValueError(
            f"ssd: log_decay must be {(b, L, h)} to match x {tuple(x.shape)}, got {tuple(log_decay.shape)}"
        )
    if B.dim() != 4 or B.shape[:2] != (b, L):
        raise ValueError(f"ssd: B must be (batch={b}, length={L}, groups, state), got {tuple(B.shape)}")
    if C.shape != B.shape:
        raise ValueError(f"ssd: C must have the shape of B {tuple(B.shape)}, got {tuple(C.shape)}")
    g, n = B.shape[2], B.shape[3]
    if g == 0 or h % g != 0:
        raise ValueError(f"ssd: heads ({h}) must be a multiple of the number of B/C groups ({g})")
    if initial_state is not None and initial_state.shape != (b, h, p, n):
        raise ValueError(f"ssd: initial_state must be {(b, h, p, n)}, got {tuple(initial_state.shape)}")
    for name, t in (("x", x), ("log_decay", log_decay), ("B", B), ("C", C)):
        if not t.is_floating_point():
            raise ValueError(f"ssd: {name} must be a floating-point tensor, got {t.dtype}")
    return b, L, h, p, g, n


def _compute_dtype(x: Tensor) -> torch.dtype:
    # float64 stays float64 (gradcheck, references); everything else is computed in float32.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------------
# chunked scan: building blocks
# --------------------------------------------------------------------------------------------------


def _decay_mask(cs_bchq: Tensor) -> Tensor:
    """exp(cs_i - cs_j) for j ≤ i; the upper triangle is 1 and is zeroed by the tril'd C·Bᵀ it multiplies.

    cs_bchq: (b, c, h, Q) in-chunk cumulative log-decay (non-increasing along Q).
    Returns (b, c, h, Q, Q). The difference is clamped at 0 *before* exp, so nothing can overflow
    (the upper triangle would be exp(positive)).
    """
    seg = cs_bchq[..., :, None] - cs_bchq[..., None, :]  # (b, c, h, Q, Q)
    return seg.clamp_max_(0.0).exp_()


def _addcmul_into(out: Tensor, u: Tensor, s: Tensor, d: Tensor) -> None:
    """out = u + s · d, written into ``out`` (a strided view of the scan's output).

    Eager: ``addcmul(out=)``, no temporary. Under torch.compile, Dynamo refuses ``out=`` into a
    non-contiguous view (a graph break), so the sum is computed and copied in; the values are the same.
    """
    if torch.compiler.is_compiling():
        out.copy_(torch.addcmul(u, s, d))
    else:
        torch.addcmul(u, s, d, out=out)


def _scan_chunks(u: Tensor, log_d: Tensor, init: Tensor | None, reverse: bool) -> Tensor:
    """Linear recurrence over chunks: the state passing step of the chunked scan (and its adjoint).

    u: (b, c, h, p, n) per-chunk inputs; log_d: (b, c, h) per-chunk log-decay (≤ 0);
    init: (b, h, p, n) or None (zeros). Returns out (b, c + 1, h, p, n) (a strided view):

    - forward:  out[0] = init,  out[i + 1] = exp(log_d[i]) * out[i] + u[i]
    - reverse:  out[c] = init,  out[i]     = exp(log_d[i]) * out[i + 1] + u[i]

    A plain loop costs one small op per chunk; instead chunks are grouped into k blocks of T ≈ sqrt(c):
    (1) a local scan inside every block at once (T ops over k blocks each), (2) a k-step carry loop
    across block ends, (3) one vectorised fix-up adding decay_prod · carry. Chunks that do not fill a
    block are finished by a plain loop.
    """
    b, c = u.shape[:2]
    d = log_d.exp()[..., None, None]  # (b, c, h, 1, 1)
    # Chunk-major storage, returned as a (b, c + 1, ...) view: every out[:, i] is contiguous, and with
    # one chunk (streaming) or one row the callers' reshapes of out[:, :c] are views, not copies.
    out = u.new_empty((c + 1, b) + u.shape[2:]).transpose(0, 1)
    edge = c if reverse else 0
    if init is None:
        out[:, edge].zero_()
    else:
        out[:, edge].copy_(init)
    T = math.isqrt(c)
    k = c // T if T > 1 else 0
    if k < 2:  # too few chunks for blocking to pay
        for i in range(c - 1, -1, -1) if reverse else range(c):
            if reverse:
                _addcmul_into(out[:, i], u[:, i], out[:, i + 1], d[:, i])
            else:
                _addcmul_into(out[:, i + 1], u[:, i], out[:, i], d[:, i])
        return out
    kT = k * T
    # Blocks cover chunks [lo, lo + kT); the leftover chunks are on the far side of the scan direction.
    lo = c - kT if reverse else 0
    u_blk = u[:, lo : lo + kT].unflatten(1, (k, T))  # (b, k, T, h, p, n)
    d_blk = d[:, lo : lo + kT].unflatten(1, (k, T))  # (b, k, T, h, 1, 1)
    ld_blk = log_d[:, lo : lo + kT].unflatten(1, (k, T))  # (b, k, T, h)
    # o_blk[:, j, t] is the output slot written by chunk lo + j*T + t.
    o_blk = (out[:, lo : lo + kT] if reverse else out[:, 1 : kT + 1]).unflatten(1, (k, T))
    carries = u.new_empty((b, k) + u.shape[2:])  # state entering each block (b, k, h, p, n)
    if reverse:
        o_blk[:, :, T - 1].copy_(u_blk[:, :, T - 1])
        for t in range(T - 2, -1, -1):
            _addcmul_into(o_blk[:, :, t], u_blk[:, :, t], o_blk[:, :, t + 1], d_blk[:, :, t])
        prod = ld_blk.flip(2).cumsum(2).flip(2).exp()[..., None, None]  # Π_{s ≥ t} d  (b, k, T, h, 1, 1)
        carries[:, k - 1].copy_(out[:, c])
        for j in range(k - 1, 0, -1):
            _addcmul_into(carries[:, j - 1], o_blk[:, j, 0], prod[:, j, 0], carries[:, j])
        o_blk.addcmul_(prod, carries[:, :, None])
        for i in range(lo - 1, -1, -1):
            _addcmul_into(out[:, i], u[:, i], out[:, i + 1], d[:, i])
    else:
        o_blk[:, :, 0].copy_(u_blk[:, :, 0])
        for t in range(1, T):
            _addcmul_into(o_blk[:, :, t], u_blk[:, :, t], o_blk[:, :, t - 1], d_blk[:, :, t])
        prod = ld_blk.cumsum(2).exp()[..., None, None]  # Π_{s ≤ t} d  (b, k, T, h, 1, 1)
        carries[:, 0].copy_(out[:, 0])
        for j in range(k - 1):
            _addcmul_into(carries[:, j + 1], o_blk[:, j, T - 1], prod[:, j, T - 1], carries[:, j])
        o_blk.addcmul_(prod, carries[:, :, None])
        for i in range(kT, c):
            _addcmul_into(out[:, i + 1], u[:, i], out[:, i], d[:, i])
    return out


def _chunked_forward(x: Tensor, a: Tensor, B: Tensor, C: Tensor, init: Tensor | None, Q: int):
    """Forward of the chunked scan on contiguous compute-dtype tensors with l % Q == 0.

    x: (b, l, h, p); a: (b, l, h); B, C: (b, l, g, n); init: (b, h, p, n) or None.
    Returns y (b, l, h, p), states (b, c + 1, h, p, n) (states[:, i] enters chunk i, states[:, c] is
    the final state) and cs (b, c, Q, h), the in-chunk cumulative log-decay.
    """
    b, L, h, p = x.shape
    g = B.shape[2]
    r, c = h // g, L // Q
    x_bcqhp = rearrange(x, "b (c q) h p -> b c q h p", q=Q)
    cs = rearrange(a, "b (c q) h -> b c q h", q=Q).cumsum(2)  # (b, c, Q, h)
    B_bcgqn = rearrange(B, "b (c q) g n -> b c g q n", q=Q)  # strided view, no copy
    C_bcgqn = rearrange(C, "b (c q) g n -> b c g q n", q=Q)

    # Chunk states: St[p, n] = Σ_j exp(cs_Q - cs_j) x_j[p] B_j[n], all heads of a group in one matmul.
    w = (cs[:, :, -1:] - cs).exp()  # (b, c, Q, h) decay from token j to the chunk end, ≤ 1
    xw_bcgrq = rearrange(x_bcqhp * w[..., None], "b c q (g r) p -> b c g (r p) q", g=g)
    st = rearrange(xw_bcgrq @ B_bcgqn, "b c g (r p) n -> b c (g r) p n", p=p)
    states = _scan_chunks(st, cs[:, :, -1], init, reverse=False)  # (b, c + 1, h, p, n)
    del st, xw_bcgrq

    # Inter-chunk output: exp(cs_i) C_i H_prevᵀ, again one matmul per group.
    h_prev = rearrange(states[:, :c], "b c (g r) p n -> b c g (r p) n", g=g)
    y_off = C_bcgqn @ h_prev.mT  # (b, c, g, Q, r*p)

    # Intra-chunk output: (C·Bᵀ ⊙ decay mask) @ x per head.
    cb = (C_bcgqn @ B_bcgqn.mT).tril_()  # (b, c, g, Q, Q)
    scores = _decay_mask(rearrange(cs, "b c q h -> b c h q").contiguous())  # (b, c, h, Q, Q)
    scores.view(b, c, g, r, Q, Q).mul_(cb.unsqueeze(3))  # in place through a view: heads of a group
    x_bchqp = rearrange(x_bcqhp, "b c q h p -> b c h q p").contiguous()  # bmm-friendly copy
    y_diag = scores @ x_bchqp  # (b, c, h, Q, p)
    del scores, x_bchqp

    y = torch.empty_like(x).view(b, c, Q, g, r, p)  # written in place below (out=), so a view
    y_off = rearrange(y_off, "b c g q (r p) -> b c q g r p", p=p)
    torch.mul(y_off, rearrange(cs.exp(), "b c q (g r) -> b c q g r 1", g=g), out=y)
    y.add_(rearrange(y_diag, "b c (g r) q p -> b c q g r p", g=g))
    return rearrange(y, "b c q g r p -> b (c q) (g r) p"), states, cs


def _chunked_backward(dy: Tensor, dfinal: Tensor | None, x, B, C, states, cs, y, Q: int, need_init: bool):
    """Hand-written backward of ``_chunked_forward`` (same shapes; returns dx, da, dB, dC, dinit).

    Derivation (per head, one chunk; S = (C Bᵀ ⊙ mask), G_c = dL/dH_end of chunk c):
      dx_j     = Σ_i S_ij dy_i + exp(cs_Q - cs_j) G B_j                 (intra + through the chunk state)
      dB, dC   from d(C Bᵀ) = Σ_heads (dy xᵀ ⊙ mask), the state term and the inter-chunk output term
      G_{c-1}  = exp(cs_Q of chunk c) G_c + Σ_i exp(cs_i) dy_i ⊗ C_i   (reverse scan over chunks)
    The log-decay gradient uses that every cs_i multiplies everything *ending* at i by exp(+cs_i) and
    everything *starting* at i by exp(-cs_i):  dcs_i = dy_i·y_i - x_i·dx_i, plus <G_c, H_end> at the
    chunk's last position (cs_Q also scales the carried state). da is the in-chunk reverse cumsum of
    dcs; keeping it in-chunk avoids a length-L cumsum of cancelling terms (precision).
    """
    b, L, h, p = x.shape
    g = B.shape[2]
    r, c = h // g, L // Q
    x_bcqhp = rearrange(x, "b (c q) h p -> b c q h p", q=Q)
    dy_bcqhp = rearrange(dy, "b (c q) h p -> b c q h p", q=Q)
    B_bcgqn = rearrange(B, "b (c q) g n -> b c g q n", q=Q)
    C_bcgqn = rearrange(C, "b (c q) g n -> b c g q n", q=Q)
    e = cs.exp()  # (b, c, Q, h)
    w = (cs[:, :, -1:] - cs).exp()  # (b, c, Q, h)

    # Inter-chunk output term: y_off = exp(cs_i) C_i H_prevᵀ.
    dye_bcgqr = rearrange(dy_bcqhp * e[..., None], "b c q (g r) p -> b c g q (r p)", g=g)
    h_prev = rearrange(states[:, :c], "b c (g r) p n -> b c g (r p) n", g=g)
    dC = dye_bcgqr @ h_prev  # (b, c, g, Q, n)
    # dL/dH_prev from this chunk's outputs
    dh_prev = rearrange(dye_bcgqr.mT @ C_bcgqn, "b c g (r p) n -> b c (g r) p n", p=p)
    del dye_bcgqr
    # G_all[:, i + 1] = dL/dH_end(chunk i); G_all[:, 0] = dL/d initial_state.
    g_all = _scan_chunks(dh_prev, cs[:, :, -1], dfinal, reverse=True)
    del dh_prev
    g_end = g_all[:, 1:]  # (b, c, h, p, n)
    g_bcgrn = rearrange(g_end, "b c (g r) p n -> b c g (r p) n", g=g)

    # Chunk-state term: St = Σ_j w_j x_j ⊗ B_j.
    xw_bcgqr = rearrange(x_bcqhp * w[..., None], "b c q (g r) p -> b c g q (r p)", g=g)
    dB = xw_bcgqr @ g_bcgrn  # (b, c, g, Q, n)
    del xw_bcgqr
    dx_state = B_bcgqn @ g_bcgrn.mT  # (b, c, g, Q, r*p), still to be scaled by w

    # Intra-chunk term: recompute the decay mask and scores (cheaper than keeping them alive).
    mask = _decay_mask(rearrange(cs, "b c q h -> b c h q").contiguous())  # (b, c, h, Q, Q)
    cb = (C_bcgqn @ B_bcgqn.mT).tril_()  # (b, c, g, Q, Q)
    scores = torch.mul(mask.view(b, c, g, r, Q, Q), cb.unsqueeze(3)).view(b, c, h, Q, Q)
    dy_bchqp = rearrange(dy_bcqhp, "b c q h p -> b c h q p").contiguous()
    dx_intra = scores.mT @ dy_bchqp  # (b, c, h, Q, p)
    x_bchqp = rearrange(x_bcqhp, "b c q h p -> b c h q p").contiguous()
    torch.matmul(dy_bchqp, x_bchqp.mT, out=scores)  # reuse the buffer: d(scores), (b, c, h, Q, Q)
    del dy_bchqp, x_bchqp
    dcb = scores.mul_(mask).view(b, c, g, r, Q, Q).sum(3).tril_()  # (b, c, g, Q, Q)
    del scores, mask
    dC.add_(dcb @ B_bcgqn)
    dB.add_(dcb.mT @ C_bcgqn)

    dx = torch.empty_like(x).view(b, c, Q, g, r, p)  # written in place below (out=), so a view
    dx_state = rearrange(dx_state, "b c g q (r p) -> b c q g r p", p=p)
    torch.mul(dx_state, rearrange(w, "b c q (g r) -> b c q g r 1", g=g), out=dx)
    dx.add_(rearrange(dx_intra, "b c (g r) q p -> b c q g r p", g=g))
    dx = rearrange(dx, "b c q g r p -> b c q (g r) p")
    del dx_state, dx_intra

    y_bcqhp = rearrange(y, "b (c q) h p -> b c q h p", q=Q)
    dcs = (dy_bcqhp * y_bcqhp).sum(-1) - (x_bcqhp * dx).sum(-1)  # (b, c, Q, h)
    dcs[:, :, -1] += (g_end * states[:, 1:]).sum((-1, -2))
    da = dcs.flip(2).cumsum(2).flip(2)  # in-chunk reverse cumsum: cs_i = Σ_{j ≤ i} a_j

    dinit = g_all[:, 0] if need_init else None
    return (
        rearrange(dx, "b c q h p -> b (c q) h p"),
        rearrange(da, "b c q h -> b (c q) h"),
        rearrange(dB, "b c g q n -> b (c q) g n"),
        rearrange(dC, "b c g q n -> b (c q) g n"),
        dinit,
    )


class _SSDChunkedFn(torch.autograd.Function):
    """Autograd wrapper: saves only x, B, C, y, the chunk states and cs; the (Q, Q) masks are rebuilt.

    Autograd through the forward would keep every intermediate (masks, scores, permuted copies) and
    run a long chain of small backward nodes; the hand-written backward is ~2x faster and leaner.
    """

    @staticmethod
    def forward(ctx, x, a, B, C, init, Q):
        y, states, cs = _chunked_forward(x, a, B, C, init, Q)
        ctx.save_for_backward(x, B, C, states, cs, y)
        ctx.Q = Q
        ctx.has_init = init is not None
        return y, states[:, -1].clone()

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, B, C, states, cs, y = ctx.saved_tensors
        dy = torch.zeros_like(y) if dy is None else dy.contiguous()
        dx, da, dB, dC, dinit = _chunked_backward(
            dy, dfinal, x, B, C, states, cs, y, ctx.Q, ctx.has_init and ctx.needs_input_grad[4]
        )
        return dx, da, dB, dC, dinit, None


# --------------------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------------------


def ssd_chunked(
    x: Tensor,
    log_decay: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunked time-aware SSD scan in pure PyTorch (fast on CPU; differentiable).

    Args:
        x: (b, l, h, p) input already scaled by the input gain γ.
        log_decay: (b, l, h) a_t = A·λ_t ≤ 0 (0 keeps the state, e.g. tokens sharing a timestamp).
        B, C: (b, l, g, n) input / output projections, shared by the h // g heads of a group.
        chunk_size: chunk length Q; any value ≥ 1 works (the sequence is zero-padded internally,
            which leaves the state unchanged); sequences no longer than Q run as one chunk.
        initial_state: (b, h, p, n) state before the first token, or None (zeros).
    Returns:
        y: (b, l, h, p) in x's dtype; final_state: (b, h, p, n) float32 (float64 if x is float64).
    Computed in float32 (float64 for float64 inputs) whatever the input dtype.
    """
    b, L, h, p, g, n = _check_scan_inputs(x, log_decay, B, C, initial_state)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"ssd_chunked: chunk_size must be a positive int, got {chunk_size!r}")
    # A check of values (a host sync): eager only; under torch.compile it would break the graph.
    if not torch.compiler.is_compiling() and bool((log_decay > 0).any()):
        # The decay mask clamps exp arguments at 0 (overflow safety), which is only exact for a ≤ 0.
        raise ValueError("ssd_chunked: log_decay must be ≤ 0 everywhere (it is A·λ with A < 0, λ ≥ 0)")
    cdt = _compute_dtype(x)
    init = None if initial_state is None else initial_state.to(cdt).contiguous()
    if L == 0:
        final = x.new_zeros((b, h, p, n), dtype=cdt) if init is None else init.clone()
        return x.new_empty((b, 0, h, p)), final
    Q = min(chunk_size, L)
    pad = (-L) % Q
    xs, a, Bs, Cs = (t.to(cdt) for t in (x, log_decay, B, C))
    if pad:
        # Padding tokens have x = 0 and a = 0: the state passes through them unchanged.
        xs = torch.nn.functional.pad(xs, (0, 0, 0, 0, 0, pad))
        a = torch.nn.functional.pad(a, (0, 0, 0, pad))
        Bs = torch.nn.functional.pad(Bs, (0, 0, 0, 0, 0, pad))
        Cs = torch.nn.functional.pad(Cs, (0, 0, 0, 0, 0, pad))
    xs, a, Bs, Cs = (t.contiguous() for t in (xs, a, Bs, Cs))
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (xs, a, Bs, Cs, init)):
        y, final = _SSDChunkedFn.apply(xs, a, Bs, Cs, init, Q)
    else:
        y, states, _ = _chunked_forward(xs, a, Bs, Cs, init, Q)
        final = states[:, -1].clone()
    if pad:
        y = y[:, :L]
    return y.to(x.dtype), final


def ssd_sequential(
    x: Tensor,
    log_decay: Tensor,
    B: Tensor,
    C: Tensor,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Naive twin of ``ssd_chunked``: a Python loop over tokens (slow; for tests only).

    Same arguments and returns as ``ssd_chunked``; computed in float32 (float64 for float64 x).
    """
    b, L, h, p, g, n = _check_scan_inputs(x, log_decay, B, C, initial_state)
    cdt = _compute_dtype(x)
    r = h // g
    # Broadcast groups to heads once: (b, l, h, n).
    B_h = B.to(cdt).repeat_interleave(r, dim=2)
    C_h = C.to(cdt).repeat_interleave(r, dim=2)
    xs, a = x.to(cdt), log_decay.to(cdt)
    state = x.new_zeros((b, h, p, n), dtype=cdt) if initial_state is None else initial_state.to(cdt)
    ys = []
    for t in range(L):
        decay = torch.exp(a[:, t])[:, :, None, None]  # (b, h, 1, 1)
        state = decay * state + xs[:, t, :, :, None] * B_h[:, t, :, None, :]  # (b, h, p, n)
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C_h[:, t]))
    y = torch.stack(ys, dim=1) if ys else x.new_empty((b, 0, h, p), dtype=cdt)
    return y.to(x.dtype), state


def ssd_step(x: Tensor, log_decay: Tensor, B: Tensor, C: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """One token of the scan (streaming decode).

    Args:
        x: (b, h, p) scaled input; log_decay: (b, h); B, C: (b, g, n); state: (b, h, p, n).
    Returns:
        y: (b, h, p) in x's dtype; new_state: (b, h, p, n) float32 (float64 if x is float64).
    """
    if x.dim() != 3:
        raise ValueError(f"ssd_step: x must be (batch, heads, head_dim), got {tuple(x.shape)}")
    b, h, p = x.shape
    if log_decay.shape != (b, h):
        raise ValueError(f"ssd_step: log_decay must be {(b, h)}, got {tuple(log_decay.shape)}")
    if B.dim() != 3 or B.shape[0] != b or C.shape != B.shape:
        raise ValueError(
            f"ssd_step: B and C must both be (batch={b}, groups, state), "
            f"got {tuple(B.shape)}, {tuple(C.shape)}"
        )
    g, n = B.shape[1], B.shape[2]
    if h % g != 0:
        raise ValueError(f"ssd_step: heads ({h}) must be a multiple of the number of B/C groups ({g})")
    if state.shape != (b, h, p, n):
        raise ValueError(f"ssd_step: state must be {(b, h, p, n)}, got {tuple(state.shape)}")
    cdt = _compute_dtype(x)
    r = h // g
    x_bgrp = x.to(cdt).view(b, g, r, p)
    decay = log_decay.to(cdt).exp().view(b, g, r, 1, 1)
    s_bgrpn = state.to(cdt).view(b, g, r, p, n)
    s_bgrpn = decay * s_bgrpn + x_bgrp[..., None] * B.to(cdt)[:, :, None, None, :]
    y = (s_bgrpn @ C.to(cdt)[:, :, None, :, None]).squeeze(-1)  # (b, g, r, p)
    return y.reshape(b, h, p).to(x.dtype), s_bgrpn.reshape(b, h, p, n)


# --------------------------------------------------------------------------------------------------
# dispatch: Triton kernel on CUDA
# --------------------------------------------------------------------------------------------------


def cuda_ssd_available() -> bool:
    """Whether ``mamba_ssm``'s Triton SSD kernel can be used (CUDA present and mamba_ssm importable)."""
    if not torch.cuda.is_available():
        return False
    from ssm_mm.ops.mamba_ref import load_mamba_refs

    refs = load_mamba_refs()
    return refs is not None and refs.mamba_chunk_scan_combined is not None


def _ssd_cuda(x, log_decay, B, C, chunk_size, initial_state):
    """``mamba_chunk_scan_combined`` with dt = max(-a, floor), A = -1 and x / dt (GPU.md way (1)).

    The kernel computes ``exp(A·dt)`` and ``x'·dt``; with A = -1 and dt = -a these are exp(a) and x,
    so the caller's (log_decay, x_scaled) map onto it without knowing A or λ. Tokens with a = 0
    (shared timestamps) get dt = CUDA_DT_FLOOR: they still write x exactly and decay by exp(-1e-5).
    fp32 in the kernel (x / dt needs range); TF32 products give ≈1.5e-3 relative error (GPU.md).

    Gradients flow to x, B, C, the initial state and a. Two caveats on d/da, inherent to this mapping:
    (1) it is zero where the floor is active (a > -1e-5); in the layer such tokens have Δt = 0, so
    λ = softplus(·)·Δt passes no gradient to the parameters there anyway; (2) the kernel's dt
    gradient contains the input-scaling term x'·dy' ~ |x|/dt that the x / dt path cancels, so TF32
    error in d/da grows like 1/dt (≈1e-3/dt relative). The exact alternative is GPU.md's way (2).
    """
    from ssm_mm.ops.mamba_ref import load_mamba_refs

    refs = load_mamba_refs()
    h = x.shape[2]
    dt = (-log_decay.float()).clamp_min(CUDA_DT_FLOOR)  # (b, l, h)
    x_kernel = x.float() / dt[..., None]
    A = -torch.ones(h, device=x.device, dtype=torch.float32)
    init = None if initial_state is None else initial_state.float()
    y, final = refs.mamba_chunk_scan_combined(
        x_kernel,
        dt,
        A,
        B.float(),
        C.float(),
        chunk_size,
        initial_states=init,
        return_final_states=True,
    )
    return y.to(x.dtype), final.float()


def ssd_scan(
    x: Tensor,
    log_decay: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    initial_state: Tensor | None = None,
    kernels: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Time-aware SSD scan with kernel dispatch; same arguments and returns as ``ssd_chunked``.

    kernels: "auto" uses mamba_ssm's Triton kernel for CUDA tensors when it imports (see
    ``_ssd_cuda`` for how the time-aware step maps onto it) and ``ssd_chunked`` otherwise;
    "torch" always uses ``ssd_chunked``; "cuda" requires the kernel and raises if it is unavailable.
    """
    if kernels not in ("auto", "torch", "cuda"):
        raise ValueError(f"ssd_scan: kernels must be 'auto', 'torch' or 'cuda', got {kernels!r}")
    if kernels != "torch" and x.is_cuda:
        _check_scan_inputs(x, log_decay, B, C, initial_state)
        if cuda_ssd_available():
            return _ssd_cuda(x, log_decay, B, C, chunk_size, initial_state)
    if kernels == "cuda":
        from ssm_mm.ops.mamba_ref import mamba_refs_error

        why = (
            "the inputs are not CUDA tensors"
            if not x.is_cuda
            else f"mamba_ssm did not load ({mamba_refs_error()})"
        )
        raise RuntimeError(f"ssd_scan(kernels='cuda'): the Triton SSD kernel is unavailable: {why}")
    return ssd_chunked(x, log_decay, B, C, chunk_size, initial_state)
