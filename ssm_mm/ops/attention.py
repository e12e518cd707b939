"""Causal sliding-window attention with a bounded KV cache, and rotary embeddings from real positions.

- ``rotary``: RoPE (Su et al. 2021, rotate-half convention) at arbitrary real positions (a running
  token index, or time in seconds), with angles reduced in float64 so positions up to ~1e6 stay exact.
- ``window_attention``: each query attends to itself and the previous ``window - 1`` *valid* keys
  (cached keys first, then this call's keys), GQA, right-padded batches. Returns the new cache: for a
  window W exactly the last W - 1 valid keys per row (fixed size, left-padded with invalid slots, so a
  stream of any length runs in constant memory); for ``window=None`` all valid keys so far (the
  full-attention Transformer baseline, whose cache grows).
- ``window_attention_ref``: the naive twin (explicit mask built by Python loops, matmul + softmax).

Conventions: q ``(b, lq, h, d)``, k/v ``(b, lq, hkv, d)`` with ``h % hkv == 0`` (query head i reads kv
head ``i // (h // hkv)``); caches ``(b, s, hkv, d)`` hold keys already rotated; ``valid``/``cache_valid``
are ``(b, ·)`` bool. Outputs at invalid (padding) query positions are zeros.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BACKENDS", "rotary", "set_attention_backend", "window_attention", "window_attention_ref"]


def rotary(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotate pairs (x[..., k], x[..., k + d/2]) by angle position · base^(-2k/d) (rotate-half RoPE).

    Args:
        x: (b, l, h, d) with d even.
        positions: (b, l) real positions (any real dtype; float64 keeps large positions exact).
    Returns:
        (b, l, h, d) in x's dtype. Angles are formed and reduced mod 2π in float64 (at position 1e6
        a float32 angle would be off by ~0.03 rad); the rotation itself is done in float32.
    """
    if x.dim() != 4 or x.shape[-1] % 2:
        raise ValueError(f"rotary: x must be (batch, length, heads, even head_dim), got {tuple(x.shape)}")
    if positions.shape != x.shape[:2]:
        raise ValueError(
            f"rotary: positions must be {tuple(x.shape[:2])} (batch, length), got {tuple(positions.shape)}"
        )
    if positions.is_complex() or positions.dtype == torch.bool:
        raise ValueError(f"rotary: positions must be real numbers, got {positions.dtype}")
    d = x.shape[-1]
    half = d // 2
    inv_freq = base ** (-torch.arange(half, dtype=torch.float64, device=x.device) * 2.0 / d)  # (d/2,)
    angle = positions.to(torch.float64)[..., None] * inv_freq  # (b, l, d/2)
    angle = torch.remainder(angle, 2 * math.pi)
    cos = angle.cos().float()[:, :, None, :]  # (b, l, 1, d/2)
    sin = angle.sin().float()[:, :, None, :]
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.to(x.dtype)


def _check_attention(q, k, v, window, cache_k, cache_v, cache_valid, valid):
    """Validate shapes; return (b, lq, h, hkv, d)."""
    if q.dim() != 4:
        raise ValueError(
            f"window_attention: q must be (batch, length, heads, head_dim), got {tuple(q.shape)}"
        )
    b, lq, h, d = q.shape
    if k.dim() != 4 or k.shape[:2] != (b, lq) or k.shape[3] != d or v.shape != k.shape:
        raise ValueError(
            f"window_attention: k and v must be (batch={b}, length={lq}, kv_heads, head_dim={d}), "
            f"got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    hkv = k.shape[2]
    if hkv == 0 or h % hkv:
        raise ValueError(f"window_attention: query heads ({h}) must be a multiple of kv heads ({hkv})")
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ValueError(f"window_attention: window must be a positive int or None, got {window!r}")
    if (cache_k is None) != (cache_v is None):
        raise ValueError("window_attention: cache_k and cache_v must be given together")
    if cache_k is not None:
        if (
            cache_k.dim() != 4
            or cache_k.shape[0] != b
            or cache_k.shape[2:] != (hkv, d)
            or cache_v.shape != cache_k.shape
        ):
            raise ValueError(
                f"window_attention: cache_k/cache_v must be (batch={b}, slots, kv_heads={hkv}, "
                f"head_dim={d}), got {tuple(cache_k.shape)} and {tuple(cache_v.shape)}"
            )
        if cache_valid is not None and (
            cache_valid.shape != cache_k.shape[:2] or cache_valid.dtype != torch.bool
        ):
            raise ValueError(
                f"window_attention: cache_valid must be bool {tuple(cache_k.shape[:2])}, "
                f"got {cache_valid.dtype} {tuple(cache_valid.shape)}"
            )
    elif cache_valid is not None:
        raise ValueError("window_attention: cache_valid given without cache_k/cache_v")
    if valid is not None and (valid.shape != (b, lq) or valid.dtype != torch.bool):
        raise ValueError(
            f"window_attention: valid must be bool {(b, lq)}, got {valid.dtype} {tuple(valid.shape)}"
        )
    return b, lq, h, hkv, d


def _concat_with_cache(k, v, cache_k, cache_v, cache_valid, valid):
    """[cache, new] along time: keys/values (b, S, hkv, d) and their valid mask (b, S)."""
    b, lq = k.shape[:2]
    if valid is None:
        valid = torch.ones(b, lq, dtype=torch.bool, device=k.device)
    if cache_k is None:
        return k, v, valid
    if cache_valid is None:
        cache_valid = torch.ones(cache_k.shape[:2], dtype=torch.bool, device=k.device)
    return (
        torch.cat([cache_k.to(k.dtype), k], 1),
        torch.cat([cache_v.to(v.dtype), v], 1),
        torch.cat([cache_valid, valid], 1),
    )


def _packing(valid: Tensor, valid_last: bool) -> tuple[Tensor, Tensor]:
    """Stable permutation packing each row's valid slots together (first, or last if ``valid_last``).

    Args:
        valid: (b, n) bool.
    Returns:
        src (b, n): ``packed = x.gather(1, src)``; dest (b, n): ``x = packed.gather(1, dest)``. Both come
        from cumulative counts (no sort, no host sync); the order within valid and invalid slots is kept.
    """
    n = valid.shape[1]
    pos = torch.arange(n, device=valid.device)
    if n == 0:
        empty = pos.expand(valid.shape[0], 0)
        return empty, empty
    n_valid_upto = valid.long().cumsum(1)  # valid slots at positions <= j
    n_invalid_upto = pos + 1 - n_valid_upto
    n_valid = n_valid_upto[:, -1:]
    if valid_last:
        dest = torch.where(valid, n - n_valid + n_valid_upto - 1, n_invalid_upto - 1)
    else:
        dest = torch.where(valid, n_valid_upto - 1, n_valid + n_invalid_upto - 1)
    src = torch.empty_like(dest).scatter_(1, dest, pos.expand_as(dest).contiguous())
    return src, dest


def _gather_time(x: Tensor, index: Tensor) -> Tensor:
    """x (b, n, ...) gathered along time with index (b, n') -> (b, n', ...)."""
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:]))


def _new_cache(k_all: Tensor, v_all: Tensor, lo: Tensor, end: Tensor, window: int | None):
    """The last W - 1 valid keys per row (or all valid keys for window None), left-padded.

    Args:
        k_all, v_all: (b, S, hkv, d) in packed layout: the valid keys of row r are positions
            ``lo[r] <= j < end[r]`` (lo, end: (b,) long).
    Returns:
        new_k, new_v (b, keep, hkv, d) with zeros in invalid slots, new_valid (b, keep). For a window the
        size is fixed (W - 1) and nothing syncs; for window None it is the largest valid count (one sync),
        or under torch.compile all S slots (a size known from shapes alone: no sync, no data-dependent
        shape; the extra slots are invalid, as in a shorter row).
    """
    b, S, hkv, d = k_all.shape
    if window is not None:
        keep = window - 1
    elif torch.compiler.is_compiling():
        keep = S
    else:
        keep = int((end - lo).max()) if b and S else 0
    if keep == 0 or S == 0:
        empty = k_all.new_zeros(b, keep, hkv, d)
        return empty, empty.clone(), torch.zeros(b, keep, dtype=torch.bool, device=k_all.device)
    idx = end[:, None] - keep + torch.arange(keep, device=k_all.device)  # (b, keep) key positions
    new_valid = idx >= lo[:, None]
    idx = idx.clamp(0, S - 1)
    keep_mask = new_valid[:, :, None, None]
    new_k = torch.where(keep_mask, _gather_time(k_all, idx), 0.0)
    new_v = torch.where(keep_mask, _gather_time(v_all, idx), 0.0)
    return new_k, new_v, new_valid


def _expand_kv(t: Tensor, h: int) -> Tensor:
    """(b, S, hkv, d) -> (b, h, S, d) with kv head i // (h // hkv) serving query head i."""
    b, S, hkv, d = t.shape
    return t[:, :, :, None, :].expand(b, S, hkv, h // hkv, d).reshape(b, S, h, d).transpose(1, 2)


# ------------------------------------------------------------------------------------------ backends
# Every backend sees the packed layout (see window_attention): keys [cache | new] with the valid cache
# keys at positions lo[r] <= j < s and the valid new keys at s <= j < s + n_new[r]; query i sits at key
# position s + i and may see keys j with lo[r] <= j <= s + i and j > s + i - W. A query always sees its
# own key, so no row is empty (no NaN); keys past a row's valid new keys are seen only by that row's
# padding queries, whose outputs are zeroed by the caller.

BACKENDS = ("auto", "flex", "blocked", "dense")
_backend = "auto"


def set_attention_backend(name: str) -> None:
    """Choose how long windowed calls run: "auto" (FlexAttention on CUDA when available, else the
    blocked path), "flex", "blocked" (one batched SDPA call over query blocks of W), or "dense" (one
    SDPA call with an explicit (lq, S) mask: O(lq · S) memory, for checks)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {name!r}")
    _backend = name


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask (True = attend) as an additive one (0 / -inf): SDPA's CPU flash kernel takes a
    float mask directly, while a boolean one sends it down a ~2x slower path (measured, fwd+bwd)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def _dense(q: Tensor, k_all: Tensor, v_all: Tensor, s: int, window: int | None, lo: Tensor) -> Tensor:
    """One SDPA call with the explicit mask (b, 1, lq, S). q (b, lq, h, d) -> (b, lq, h, d)."""
    lq, h, S = q.shape[1], q.shape[2], k_all.shape[1]
    qpos = s + torch.arange(lq, device=q.device)[:, None]  # (lq, 1)
    kpos = torch.arange(S, device=q.device)[None, :]  # (1, S)
    band = kpos <= qpos
    if window is not None:
        band = band & (kpos > qpos - window)
    mask = band[None] & (kpos[None] >= lo[:, None, None])  # (b, lq, S)
    return F.scaled_dot_product_attention(
        q.transpose(1, 2),
        _expand_kv(k_all, h),
        _expand_kv(v_all, h),
        attn_mask=_additive(mask[:, None], q.dtype),
    ).transpose(1, 2)


def _blocked(q: Tensor, k_all: Tensor, v_all: Tensor, s: int, window: int, lo: Tensor) -> Tensor:
    """Queries in blocks of W; each block attends to its own W keys and the W before them, all blocks
    in ONE batched SDPA call with a (W, 2W) band mask (2x the band's work, no loop, no sync).

    q (b, lq, h, d), k_all/v_all (b, S, hkv, d) packed -> (b, lq, h, d).
    """
    b, lq, h, d = q.shape
    hkv, W = k_all.shape[2], window
    nblk = -(-lq // W)
    # Keys re-indexed r = j - s + W: block n of queries (r in [(n+1)W, (n+2)W)) reads r in [nW, (n+2)W).
    # Drop keys no query can see (j < s - W), pad in front (invalid) if the cache is shorter than W,
    # pad at the end to whole blocks (seen only by padding queries).
    first = s - W  # key position of r = 0
    keys = torch.cat([k_all, v_all], 2)  # (b, S, 2hkv, d): one gather/pad for both
    if first >= 0:
        keys = keys[:, first:]
    else:
        keys = F.pad(keys, (0, 0, 0, 0, -first, 0))
    keys = F.pad(keys, (0, 0, 0, 0, 0, (nblk + 1) * W - keys.shape[1]))
    keys = keys.view(b, nblk + 1, W, 2 * hkv, d)
    keys = torch.cat([keys[:, :-1], keys[:, 1:]], 2)  # (b, nblk, 2W, 2hkv, d)
    keys = keys.permute(0, 1, 3, 2, 4).reshape(b * nblk, 2 * hkv, 2 * W, d)
    k_blk, v_blk = keys[:, :hkv], keys[:, hkv:]
    if hkv != h:
        k_blk = k_blk.repeat_interleave(h // hkv, 1)
        v_blk = v_blk.repeat_interleave(h // hkv, 1)
    qb = F.pad(q, (0, 0, 0, 0, 0, nblk * W - lq)).view(b, nblk, W, h, d)
    qb = qb.permute(0, 1, 3, 2, 4).reshape(b * nblk, h, W, d)
    t = torch.arange(W, device=q.device)[:, None]  # query offset in its block
    c = torch.arange(2 * W, device=q.device)[None, :]  # key offset in the block's 2W keys
    band = (c > t) & (c <= t + W)  # (W, 2W): r in (query r - W, query r]
    r = torch.arange(nblk, device=q.device)[:, None] * W + c  # (nblk, 2W)
    key_ok = r[None] >= (lo - first)[:, None, None]  # (b, nblk, 2W): not an invalid cache slot / front pad
    mask = band[None, None] & key_ok[:, :, None, :]  # (b, nblk, W, 2W)
    out = F.scaled_dot_product_attention(
        qb, k_blk, v_blk, attn_mask=_additive(mask.view(b * nblk, 1, W, 2 * W), q.dtype)
    )
    return out.view(b, nblk, h, W, d).permute(0, 1, 3, 2, 4).reshape(b, nblk * W, h, d)[:, :lq]


_FLEX_BLOCK = 128
_flex_fn = None
_flex_blocks: dict[tuple, tuple[Tensor, Tensor, Tensor, Tensor]] = {}


def flex_available(device: torch.device) -> bool:
    """Whether FlexAttention's fused kernel can serve ``device`` (CUDA with Triton)."""
    if device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _band_blocks(lq: int, S: int, s: int, window: int, device: torch.device):
    """Sliding-window block sparsity (cached per shape): kv_num_blocks, kv_indices and their "full"
    twins, (1, 1, nq[, nk]) int32. Partial = some pair of the 128 x 128 tile is in the band; full = every
    pair is, and no key is a cache slot (those go through the mask's per-row cache bound)."""
    key = (lq, S, s, window, str(device))
    if key not in _flex_blocks:
        B = _FLEX_BLOCK
        nq, nk = -(-lq // B), -(-S // B)
        q_lo = s + torch.arange(nq, device=device)[:, None] * B
        q_hi = (q_lo + B).clamp(max=s + lq) - 1
        k_lo = torch.arange(nk, device=device)[None, :] * B
        k_hi = (k_lo + B).clamp(max=S) - 1
        any_ = (k_lo <= q_hi) & (k_hi > q_lo - window)
        full = (k_hi <= q_lo) & (k_lo > q_hi - window) & (k_lo >= s)
        full &= (q_hi - q_lo == B - 1) & (k_hi - k_lo == B - 1)  # ragged tiles take the masked path
        partial = any_ & ~full

        def sparse(m: Tensor) -> tuple[Tensor, Tensor]:
            num = m.sum(-1, dtype=torch.int32)[None, None]
            idx = torch.argsort(m.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
            return num, idx[None, None].contiguous()

        _flex_blocks[key] = (*sparse(partial), *sparse(full))
    return _flex_blocks[key]


def _flex(q: Tensor, k_all: Tensor, v_all: Tensor, s: int, window: int, lo: Tensor) -> Tensor:
    """FlexAttention with a cached sliding-window BlockMask (compiled on CUDA: one fused kernel per call,
    tiles outside the band skipped). q (b, lq, h, d), k_all/v_all (b, S, hkv, d) packed -> (b, lq, h, d)."""
    global _flex_fn
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    lq, h, S, hkv = q.shape[1], q.shape[2], k_all.shape[1], k_all.shape[2]

    def mask_mod(b, hh, qi, kj):
        qp = qi + s
        return (kj <= qp) & (kj > qp - window) & (kj >= lo[b])

    num, idx, fnum, fidx = _band_blocks(lq, S, s, window, q.device)
    block_mask = BlockMask.from_kv_blocks(
        num, idx, fnum, fidx, BLOCK_SIZE=_FLEX_BLOCK, mask_mod=mask_mod, seq_lengths=(lq, S)
    )
    if q.device.type == "cuda":
        if _flex_fn is None:
            _flex_fn = torch.compile(flex_attention, dynamic=False)
        fn = _flex_fn
    else:  # eager (unfused, reference-speed): only for checking the mask logic on CPU
        fn = flex_attention
    out = fn(
        q.transpose(1, 2),
        k_all.transpose(1, 2),
        v_all.transpose(1, 2),
        block_mask=block_mask,
        enable_gqa=hkv != h,
    )
    return out.transpose(1, 2)


def window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int | None,
    cache_k: Tensor | None = None,
    cache_v: Tensor | None = None,
    cache_valid: Tensor | None = None,
    valid: Tensor | None = None,
    backend: str | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Causal (sliding-window) attention over [cache, this call]: one fused call, no host sync (windowed).

    Args:
        q: (b, lq, h, d); k, v: (b, lq, hkv, d), already rotated.
        window: W (a query sees itself and the previous W - 1 valid keys) or None (all previous keys).
        cache_k, cache_v: (b, s, hkv, d) keys/values of earlier tokens, or None; cache_valid: (b, s)
            bool (None = all valid).
        valid: (b, lq) bool, False at padding (never attended, never cached); None = all valid.
        backend: None (the module setting, see ``set_attention_backend``) or one of ``BACKENDS``.
    Returns:
        out (b, lq, h, d) (zeros at invalid queries), new_k, new_v (b, s', hkv, d), new_valid (b, s'):
        s' = W - 1 for a window, else the largest number of valid keys in a row so far (under
        torch.compile: s + lq, the extra slots invalid).

    Any valid masks are allowed. They are first *packed* — the cache's valid slots moved to its end,
    this call's valid tokens to its start, order kept (a permutation from cumulative counts) — after
    which "the last W valid keys" is a plain band of positions cut below by one per-row bound, which
    every backend handles without looking at the data. Caches made by this function are already
    packed, and so is a right-padded batch: the permutation is then the identity.
    """
    b, lq, h, hkv, d = _check_attention(q, k, v, window, cache_k, cache_v, cache_valid, valid)
    backend = _backend if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f"window_attention: backend must be one of {BACKENDS}, got {backend!r}")
    dest = None
    if valid is not None:
        src, dest = _packing(valid, valid_last=False)
        q, k, v = _gather_time(q, src), _gather_time(k, src), _gather_time(v, src)
        n_new = valid.sum(1)
    else:
        n_new = torch.full((b,), lq, dtype=torch.long, device=q.device)
    if cache_k is None:
        cache_k = cache_v = k.new_zeros(b, 0, hkv, d)
    cache_k, cache_v = cache_k.to(k.dtype), cache_v.to(v.dtype)
    s = cache_k.shape[1]
    if cache_valid is not None:
        src_c, _ = _packing(cache_valid, valid_last=True)
        cache_k, cache_v = _gather_time(cache_k, src_c), _gather_time(cache_v, src_c)
        lo = s - cache_valid.sum(1)  # (b,) first valid cache position
    else:
        lo = torch.zeros(b, dtype=torch.long, device=q.device)
    k_all, v_all = torch.cat([cache_k, k], 1), torch.cat([cache_v, v], 1)
    S = s + lq

    w_eff = None if window is None or window >= S else window  # a band covering everything: causal
    if s == 0 and w_eff is None and backend != "dense":
        # Plain causal attention (after packing, exact for any padding): is_causal lets the fused
        # kernel (flash on CUDA and CPU) skip the masked half.
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), _expand_kv(k_all, h), _expand_kv(v_all, h), is_causal=True
        ).transpose(1, 2)
    elif w_eff is None or backend == "dense" or lq <= 2 * w_eff:
        # short calls (a streaming tick, one generated token) and full attention over a cache
        out = _dense(q, k_all, v_all, s, w_eff, lo)
    elif backend == "flex" or (backend == "auto" and flex_available(q.device)):
        out = _flex(q, k_all, v_all, s, w_eff, lo)
    else:
        out = _blocked(q, k_all, v_all, s, w_eff, lo)

    if dest is not None:
        out = _gather_time(out, dest) * valid[:, :, None, None]
    new_k, new_v, new_valid = _new_cache(k_all, v_all, lo, s + n_new, window)
    return out, new_k, new_v, new_valid


def window_attention_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int | None,
    cache_k: Tensor | None = None,
    cache_v: Tensor | None = None,
    cache_valid: Tensor | None = None,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Naive twin of ``window_attention`` (same arguments and returns): explicit loops, matmul + softmax."""
    b, lq, h, hkv, d = _check_attention(q, k, v, window, cache_k, cache_v, cache_valid, valid)
    k_all, v_all, valid_all = _concat_with_cache(k, v, cache_k, cache_v, cache_valid, valid)
    S = k_all.shape[1]
    s = S - lq
    allowed = torch.zeros(b, lq, S, dtype=torch.bool)
    kept: list[list[int]] = []
    for row in range(b):
        valid_pos = [j for j in range(S) if bool(valid_all[row, j])]
        for i in range(lq):
            if not bool(valid_all[row, s + i]):
                continue
            seen = [j for j in valid_pos if j <= s + i]
            for j in seen if window is None else seen[-window:]:
                allowed[row, i, j] = True
        kept.append(
            valid_pos
            if window is None
            else valid_pos[max(0, len(valid_pos) - (window - 1)) :]
            if window > 1
            else []
        )
    allowed = allowed.to(q.device)
    group = h // hkv
    k_h = k_all.repeat_interleave(group, dim=2).float()  # (b, S, h, d)
    v_h = v_all.repeat_interleave(group, dim=2).float()
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k_h) / math.sqrt(d)
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows without keys -> zeros
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v_h).to(q.dtype)

    keep = window - 1 if window is not None else max((len(kp) for kp in kept), default=0)
    new_k = k_all.new_zeros(b, keep, hkv, d)
    new_v = v_all.new_zeros(b, keep, hkv, d)
    new_valid = torch.zeros(b, keep, dtype=torch.bool, device=k.device)
    for row, kp in enumerate(kept):
        for slot, j in enumerate(kp):
            target = keep - len(kp) + slot  # left-padded
            new_k[row, target] = k_all[row, j]
            new_v[row, target] = v_all[row, j]
            new_valid[row, target] = True
    return out, new_k, new_v, new_valid
