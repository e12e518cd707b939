"""Windowed attention and rotary: fast == naive, chunked with cache == whole, padding, GQA, RoPE maths."""

from __future__ import annotations

import math

import pytest
import torch

from ssm_mm.ops import attention
from ssm_mm.ops.attention import rotary, window_attention, window_attention_ref

from ._helpers import rel_err

TOL32 = 1e-5


def _qkv(b=2, L=20, h=4, hkv=2, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, L, h, d, generator=gen)
    k = torch.randn(b, L, hkv, d, generator=gen)
    v = torch.randn(b, L, hkv, d, generator=gen)
    return q, k, v


def _band_attention(q, k, v, window):
    """Plain softmax attention with a causal band |i - j| < window, no padding, MHA after repeating kv."""
    b, L, h, d = q.shape
    k = k.repeat_interleave(h // k.shape[2], dim=2)
    v = v.repeat_interleave(h // v.shape[2], dim=2)
    i = torch.arange(L)[:, None]
    j = torch.arange(L)[None, :]
    allowed = (j <= i) & (i - j < (window if window is not None else L))
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v)


@pytest.mark.parametrize("window", [1, 3, 8, None])
def test_window_equals_banded_full_attention(window):
    q, k, v = _qkv(seed=1)
    out, *_ = window_attention(q, k, v, window)
    assert rel_err(out, _band_attention(q, k, v, window)) <= TOL32
    out_ref, *_ = window_attention_ref(q, k, v, window)
    assert rel_err(out, out_ref) <= TOL32


def test_window_longer_than_sequence_is_full_attention():
    q, k, v = _qkv(seed=2)
    out_w, *_ = window_attention(q, k, v, 64)
    out_full, *_ = window_attention(q, k, v, None)
    assert rel_err(out_w, out_full) <= TOL32


def test_gqa_equals_mha_with_repeated_kv():
    q, k, v = _qkv(h=6, hkv=2, seed=3)
    out, *_ = window_attention(q, k, v, 5)
    out_mha, *_ = window_attention(q, k.repeat_interleave(3, dim=2), v.repeat_interleave(3, dim=2), 5)
    assert rel_err(out, out_mha) <= TOL32


@pytest.mark.parametrize("window", [4, None])
def test_chunked_with_cache_equals_whole(window):
    q, k, v = _qkv(L=23, seed=4)
    out_all, k_all, v_all, valid_all = window_attention(q, k, v, window)
    ck = cv = cvalid = None
    outs = []
    for lo, hi in [(0, 1), (1, 3), (3, 12), (12, 13), (13, 23)]:
        o, ck, cv, cvalid = window_attention(q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], window, ck, cv, cvalid)
        if window is not None:
            assert ck.shape[1] == window - 1, "the cache has a fixed size"
        outs.append(o)
    assert rel_err(torch.cat(outs, 1), out_all) <= TOL32
    assert torch.equal(ck, k_all) and torch.equal(cv, v_all) and torch.equal(cvalid, valid_all)
    if window is None:
        assert ck.shape[1] == 23 and bool(cvalid.all()), "full attention keeps every key"


@pytest.mark.parametrize("window", [3, None])
def test_rows_with_different_padding(window):
    b, L = 3, 11
    q, k, v = _qkv(b=b, L=L, seed=5)
    lengths = [11, 6, 0]  # the last row is all padding
    valid = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]
    # A cache whose rows also hold different numbers of valid keys (left-padded).
    cq, ck, cv = _qkv(b=b, L=4, seed=6)
    _, ck, cv, cvalid = window_attention(
        cq, ck, cv, None, valid=torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]]).bool()
    )
    out, nk, nv, nvalid = window_attention(q, k, v, window, ck, cv, cvalid, valid)
    ref = window_attention_ref(q, k, v, window, ck, cv, cvalid, valid)
    assert torch.isfinite(out).all(), "padding rows must not produce NaN"
    assert rel_err(out, ref[0]) <= TOL32
    for got, want in zip((nk, nv, nvalid), ref[1:]):
        assert torch.equal(got, want)
    assert (out[~valid] == 0).all(), "outputs at padding queries are zeros"
    for row, n in enumerate(lengths):
        # The row alone, without its padding (and with its cache compacted), gives the same outputs.
        keep = cvalid[row]
        o_row, k_row, _, valid_row = window_attention(
            q[row : row + 1, :n],
            k[row : row + 1, :n],
            v[row : row + 1, :n],
            window,
            ck[row : row + 1, keep],
            cv[row : row + 1, keep],
        )
        assert rel_err(out[row : row + 1, :n], o_row) <= TOL32
        kept = nvalid[row]
        assert torch.equal(nk[row, kept], k_row[0, valid_row[0]]), "cache = last valid keys of the row"


@pytest.mark.parametrize("window", [11, 16, None])
@pytest.mark.parametrize("holes", [False, True])
def test_padded_batch_without_cache(window, holes):
    """A training batch (no cache, rows of different lengths, window covering the call) runs the fused
    causal kernel after packing, with right padding or holes: equal to the naive twin, in values and in
    gradients."""
    q, k, v = _qkv(b=3, L=11, seed=11)
    valid = torch.arange(11)[None, :] < torch.tensor([11, 7, 0])[:, None]
    if holes:
        valid[0, 4] = False  # not right padding
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    twins = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out, nk, nv, nvalid = window_attention(*leaves, window, valid=valid)
    ref = window_attention_ref(*twins, window, valid=valid)
    assert torch.isfinite(out).all() and (out[~valid] == 0).all()
    assert rel_err(out, ref[0]) <= TOL32
    for got, want in zip((nk, nv, nvalid), ref[1:]):
        assert torch.equal(got, want)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (ref[0] * w).sum().backward()
    for a, b in zip(leaves, twins):
        assert torch.isfinite(a.grad).all() and rel_err(a.grad, b.grad) <= 1e-4


def test_padding_never_attended_or_cached():
    q, k, v = _qkv(b=1, L=8, seed=7)
    valid = torch.tensor([[True] * 5 + [False] * 3])
    k_bad, v_bad = k.clone(), v.clone()
    k_bad[:, 5:], v_bad[:, 5:] = 1e4, 1e4
    out, nk, nv, nvalid = window_attention(q, k_bad, v_bad, 4, valid=valid)
    out_clean, nk_clean, nv_clean, _ = window_attention(q[:, :5], k[:, :5], v[:, :5], 4)
    assert rel_err(out[:, :5], out_clean) <= TOL32
    assert torch.equal(nk, nk_clean) and torch.equal(nv, nv_clean) and bool(nvalid.all())


def _random_case(seed: int, window, L: int, cache: bool, padding: bool):
    """Random GQA inputs with an optional cache (random invalid slots anywhere) and padding with holes."""
    gen = torch.Generator().manual_seed(seed)
    b, h, hkv, d = 3, 4, [1, 2, 4][seed % 3], 8
    q, k, v = (torch.randn(b, L, n, d, generator=gen) for n in (h, hkv, hkv))
    valid = torch.rand(b, L, generator=gen) > 0.3 if padding else None
    if valid is not None:
        valid[1] = torch.arange(L) < L // 2  # one plainly right-padded row
    ck = cv = cvalid = None
    if cache:
        s = int(torch.randint(0, 2 * (window or 4) + 2, (1,), generator=gen))
        ck, cv = torch.randn(b, s, hkv, d, generator=gen), torch.randn(b, s, hkv, d, generator=gen)
        cvalid = torch.rand(b, s, generator=gen) > 0.4
    return (q, k, v), (ck, cv, cvalid, valid)


# lengths below, at and above 2W (the blocked path starts past 2W), not multiples of the window
@pytest.mark.parametrize("window", [1, 3, 5, 16, None])
@pytest.mark.parametrize("L", [7, 33, 70])
@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("backend", ["blocked", "dense"])
def test_backends_equal_naive_twin_values_and_gradients(window, L, cache, padding, backend):
    """Every CPU backend == the naive twin (fp32): outputs, input gradients, and the returned cache
    exactly, for caches with invalid slots anywhere, padding with holes, GQA, any length."""
    qkv, extra = _random_case(L + (window or 0), window, L, cache, padding)
    leaves = [t.clone().requires_grad_(True) for t in qkv]
    twins = [t.clone().requires_grad_(True) for t in qkv]
    out = window_attention(*leaves, window, *extra, backend=backend)
    ref = window_attention_ref(*twins, window, *extra)
    assert torch.isfinite(out[0]).all()
    assert rel_err(out[0], ref[0]) <= TOL32
    for got, want in zip(out[1:], ref[1:]):
        assert torch.equal(got, want)
    w = torch.randn_like(out[0])
    (out[0] * w).sum().backward()
    (ref[0] * w).sum().backward()
    for a, b in zip(leaves, twins):
        assert rel_err(a.grad, b.grad) <= 1e-4


@pytest.mark.parametrize("window", [3, 16])
@pytest.mark.parametrize("cache", [False, True])
def test_flex_backend_mask_equals_naive_twin(window, cache):
    """The FlexAttention path's block mask and mask_mod (run eagerly on CPU, forward only: the fused
    kernel and its backward are CUDA's, checked by tests/streaming/test_cuda.py) == the naive twin."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    attention._FLEX_BLOCK, old = 8, attention._FLEX_BLOCK  # several tiles, full and partial
    try:
        qkv, extra = _random_case(window, window, 70, cache, True)
        out = window_attention(*qkv, window, *extra, backend="flex")
    finally:
        attention._FLEX_BLOCK = old
        attention._flex_blocks.clear()
    ref = window_attention_ref(*qkv, window, *extra)
    assert rel_err(out[0], ref[0]) <= TOL32
    for got, want in zip(out[1:], ref[1:]):
        assert torch.equal(got, want)


def test_windowed_call_has_no_graph_breaks():
    """No host sync and no Python branch on data in a windowed call (blocked path, cache, padding):
    dynamo traces it as one graph, as torch.compile of the training step needs."""
    qkv, extra = _random_case(0, 4, 40, True, True)
    explain = torch._dynamo.explain(lambda *a: window_attention(*a, backend="blocked"))(*qkv, 4, *extra)
    assert explain.graph_break_count == 0, explain.break_reasons


def test_backend_setting():
    q, k, v = _qkv(L=40, seed=12)
    attention.set_attention_backend("dense")
    try:
        dense = window_attention(q, k, v, 4)
    finally:
        attention.set_attention_backend("auto")
    blocked = window_attention(q, k, v, 4)
    assert rel_err(blocked[0], dense[0]) <= TOL32
    with pytest.raises(ValueError, match="backend must be one of"):
        attention.set_attention_backend("flash")
    with pytest.raises(ValueError, match="backend must be one of"):
        window_attention(q, k, v, 4, backend="nope")


def test_bad_inputs_raise_clear_errors():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="multiple of kv heads"):
        window_attention(q, k[:, :, :1].expand(-1, -1, 3, -1), v[:, :, :1].expand(-1, -1, 3, -1), 4)
    with pytest.raises(ValueError, match="window must be"):
        window_attention(q, k, v, 0)
    with pytest.raises(ValueError, match="given together"):
        window_attention(q, k, v, 4, cache_k=k)
    with pytest.raises(ValueError, match="valid must be bool"):
        window_attention(q, k, v, 4, valid=torch.ones(2, 20))
    with pytest.raises(ValueError, match="k and v must be"):
        window_attention(q, k[:, :-1], v[:, :-1], 4)


# ------------------------------------------------------------------ rotary


def test_rotary_scores_depend_only_on_position_differences():
    q, k, _ = _qkv(b=1, L=12, h=2, hkv=2, d=16, seed=9)
    pos = torch.cumsum(torch.rand(1, 12, dtype=torch.float64) * 3, 1)  # irregular real positions
    scores = [
        torch.einsum("bqhd,bkhd->bhqk", rotary(q, pos + shift), rotary(k, pos + shift))
        for shift in (0.0, 1234.567, 98765.4321)
    ]
    for s in scores[1:]:
        assert rel_err(s, scores[0]) <= TOL32


def test_rotary_is_a_rotation():
    x, _, _ = _qkv(b=2, L=5, h=3, d=8, seed=10)
    pos = torch.randn(2, 5) * 100
    assert torch.allclose(rotary(x, pos).norm(dim=-1), x.norm(dim=-1), rtol=1e-5)
    assert torch.equal(rotary(x, torch.zeros(2, 5)), x)


def test_rotary_accurate_at_large_positions():
    x, _, _ = _qkv(b=1, L=6, h=2, d=32, seed=11)
    pos = 1e6 + torch.tensor([[0.0, 0.1, 0.25, 1.0, 7.5, 1000.125]], dtype=torch.float64)
    got = rotary(x, pos)
    # float64 reference, straight from the definition.
    half = 16
    inv = 10000.0 ** (-torch.arange(half, dtype=torch.float64) * 2 / 32)
    ang = pos[..., None, None] * inv  # (1, 6, 1, 16)
    x64 = x.double()
    want = torch.cat(
        [
            x64[..., :half] * ang.cos() - x64[..., half:] * ang.sin(),
            x64[..., half:] * ang.cos() + x64[..., :half] * ang.sin(),
        ],
        -1,
    )
    assert (got.double() - want).abs().max() <= 1e-5


def test_rotary_bad_inputs():
    with pytest.raises(ValueError, match="even head_dim"):
        rotary(torch.zeros(1, 2, 1, 3), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="positions must be"):
        rotary(torch.zeros(1, 2, 1, 4), torch.zeros(2, 1))


# ------------------------------------------------------------------ CUDA (skipped without a GPU)


def cuda_only(fn):
    """Mark a test as a CUDA one (``-m cuda``) and skip it without a GPU."""
    fn = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(fn)
    return pytest.mark.cuda(fn)


def _cuda_case(L: int, window: int, seed: int = 0):
    """GQA inputs on CUDA with a half-valid cache and right padding plus a hole (head dim 64)."""
    gen = torch.Generator().manual_seed(seed)
    b, h, hkv, d, s = 2, 4, 2, 64, window - 1
    q, k, v = (torch.randn(b, L, n, d, generator=gen) for n in (h, hkv, hkv))
    ck, cv = torch.randn(b, s, hkv, d, generator=gen), torch.randn(b, s, hkv, d, generator=gen)
    cvalid = torch.arange(s)[None, :] >= torch.tensor([0, s // 2])[:, None]
    valid = torch.arange(L)[None, :] < torch.tensor([L, L - 37])[:, None]
    valid[0, L // 3] = False
    return (q, k, v), (ck, cv, cvalid, valid)


@pytest.mark.parametrize("backend", ["flex", "blocked", "dense"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("L,window", [(300, 64), (1000, 128)])
@cuda_only
def test_cuda_backends_equal_naive_twin(backend, dtype, L, window):
    """On the GPU (FlexAttention's fused kernel, SDPA's), values and gradients == the fp32 naive twin
    on the CPU; bf16 within bf16 rounding."""
    qkv, extra = _cuda_case(L, window)
    twins = [t.clone().requires_grad_(True) for t in qkv]
    ref = window_attention_ref(*twins, window, *extra)
    leaves = [t.cuda().to(dtype).requires_grad_(True) for t in qkv]
    out = window_attention(*leaves, window, *(x.cuda() for x in extra), backend=backend)
    tol, gtol = (2e-3, 5e-3) if dtype == torch.float32 else (2e-2, 5e-2)
    assert rel_err(out[0].float().cpu(), ref[0]) <= tol
    assert torch.equal(out[3].cpu(), ref[3])
    for got, want in zip(out[1:3], ref[1:3]):
        assert rel_err(got.float().cpu(), want) <= tol
    w = torch.randn_like(ref[0])
    (out[0].float() * w.cuda()).sum().backward()
    (ref[0] * w).sum().backward()
    for a, b in zip(leaves, twins):
        assert rel_err(a.grad.float().cpu(), b.grad) <= gtol


@cuda_only
def test_cuda_windowed_call_never_syncs():
    """A windowed call on CUDA (after its first, compiling call) queues work without a host sync."""
    qkv, extra = _cuda_case(1000, 128)
    args = [t.cuda() for t in qkv] + [x.cuda() for x in extra]
    for backend in ("flex", "blocked"):
        window_attention(*args[:3], 128, *args[3:], backend=backend)  # compile, cache the block mask
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            window_attention(*args[:3], 128, *args[3:], backend=backend)
        finally:
            torch.cuda.set_sync_debug_mode("default")
