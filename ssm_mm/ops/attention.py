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

__all__ = ["rotary", "window_attention", "window_attention_ref"]

# Queries are processed in blocks of max(window, _MIN_QUERY_BLOCK) when the call is long compared
# with the window, so the cost is O(l · window) instead of O(l²).
_MIN_QUERY_BLOCK = 256


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


def _new_cache(k_all: Tensor, v_all: Tensor, valid_all: Tensor, window: int | None):
    """The last W - 1 valid keys per row (or all valid keys for window None), left-padded.

    Returns new_k, new_v (b, keep, hkv, d) with zeros in invalid slots, and new_valid (b, keep).
    """
    b, S, hkv, d = k_all.shape
    keep = window - 1 if window is not None else int(valid_all.sum(1).max()) if S else 0
    if S == 0:  # nothing seen yet: an all-invalid cache of the right size
        empty = k_all.new_zeros(b, keep, hkv, d)
        return empty, empty.clone(), torch.zeros(b, keep, dtype=torch.bool, device=k_all.device)
    if S >= keep and bool(valid_all[:, S - keep :].all()):
        # The newest `keep` slots hold real tokens in every row (every session once its window has
        # filled): they are the last `keep` valid keys. Copy them (a view would keep all of k_all alive).
        return k_all[:, S - keep :].clone(), v_all[:, S - keep :].clone(), valid_all[:, S - keep :].clone()
    pos = torch.arange(S, device=k_all.device)
    # Largest valid positions, in increasing order; invalid ones score -1 and so sort to the left.
    score = torch.where(valid_all, pos, -1)  # (b, S)
    top = score.topk(min(keep, S), dim=1).values.sort(dim=1).values
    if keep > top.shape[1]:
        top = F.pad(top, (keep - top.shape[1], 0), value=-1)
    new_valid = top >= 0  # (b, keep)
    idx = top.clamp_min(0)[:, :, None, None].expand(b, keep, hkv, d)
    keep_mask = new_valid[:, :, None, None]
    new_k = k_all.gather(1, idx) * keep_mask
    new_v = v_all.gather(1, idx) * keep_mask
    return new_k, new_v, new_valid


def _right_padded(valid: Tensor) -> bool:
    """True when every row of ``valid`` (b, S) is valid up to some point and padding after it."""
    return bool((valid[:, 1:] <= valid[:, :-1]).all())


def _expand_kv(t: Tensor, h: int) -> Tensor:
    """(b, S, hkv, d) -> (b, h, S, d) with kv head i // (h // hkv) serving query head i."""
    b, S, hkv, d = t.shape
    return t[:, :, :, None, :].expand(b, S, hkv, h // hkv, d).reshape(b, S, h, d).transpose(1, 2)


def window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int | None,
    cache_k: Tensor | None = None,
    cache_v: Tensor | None = None,
    cache_valid: Tensor | None = None,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Causal (sliding-window) attention over [cache, this call], via F.scaled_dot_product_attention.

    Args:
        q: (b, lq, h, d); k, v: (b, lq, hkv, d), already rotated.
        window: W (a query sees itself and the previous W - 1 valid keys) or None (all previous keys).
        cache_k, cache_v: (b, s, hkv, d) keys/values of earlier tokens, or None; cache_valid: (b, s)
            bool (None = all valid).
        valid: (b, lq) bool, False at right padding (never attended, never cached); None = all valid.
    Returns:
        out (b, lq, h, d) (zeros at invalid queries), new_k, new_v (b, s', hkv, d), new_valid (b, s'):
        s' = W - 1 for a window, else the largest number of valid keys in a row so far.
    """
    b, lq, h, hkv, d = _check_attention(q, k, v, window, cache_k, cache_v, cache_valid, valid)
    k_all, v_all, valid_all = _concat_with_cache(k, v, cache_k, cache_v, cache_valid, valid)
    S = k_all.shape[1]
    s = S - lq  # query i sits at key position s + i
    # cnt[j] = number of valid keys at positions ≤ j. Key j is among the last W valid keys up to query
    # position t iff cnt[j] > cnt[t] - W; counting per row makes rows with different padding right.
    cnt = valid_all.cumsum(1)  # (b, S)
    q_pos = torch.arange(s, S, device=q.device)  # (lq,)
    q_cnt = cnt[:, s:]  # (b, lq)
    q_valid = valid_all[:, s:]  # (b, lq)

    if s == 0 and (window is None or window >= lq) and _right_padded(valid_all):
        # Plain causal attention: is_causal lets the fused kernel skip the masked half (~3x on CPU).
        # Right padding (a batch of streams of different lengths) keeps it exact: a valid query only
        # sees earlier keys, all valid; padding queries are zeroed below.
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), _expand_kv(k_all, h), _expand_kv(v_all, h), is_causal=True
        ).transpose(1, 2)
        if valid is not None:
            out = out * q_valid[:, :, None, None]
        return (out, *_new_cache(k_all, v_all, valid_all, window))

    block = lq if window is None else max(window, _MIN_QUERY_BLOCK)
    if lq <= 2 * block:
        block = lq
    out = q.new_empty(b, lq, h, d)
    for i0 in range(0, lq, max(block, 1)):
        i1 = min(i0 + block, lq)
        # Earliest key any query of the block can see: searchsorted over the monotone counts.
        j0 = 0
        if window is not None:
            first = torch.searchsorted(cnt, (q_cnt[:, i0 : i0 + 1] - window).contiguous(), right=True)
            j0 = int(first.min())
        j1 = s + i1
        key_pos = torch.arange(j0, j1, device=q.device)
        mask = valid_all[:, None, j0:j1] & (
            key_pos[None, None, :] <= q_pos[None, i0:i1, None]
        )  # (b, lq', S')
        if window is not None:
            mask &= cnt[:, None, j0:j1] > (q_cnt[:, i0:i1, None] - window)
        # Queries with no key at all (padding rows) would give NaN: let them see everything, zero later.
        mask |= ~mask.any(-1, keepdim=True)
        o = F.scaled_dot_product_attention(
            q[:, i0:i1].transpose(1, 2),  # (b, h, lq', d)
            _expand_kv(k_all[:, j0:j1], h),
            _expand_kv(v_all[:, j0:j1], h),
            attn_mask=mask[:, None],  # (b, 1, lq', S')
        )
        out[:, i0:i1] = o.transpose(1, 2)
    out = out * q_valid[:, :, None, None]
    new_k, new_v, new_valid = _new_cache(k_all, v_all, valid_all, window)
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
