"""Backbone parity: full == chunked with state carry == token by token; padding never touches state."""

import pytest
import torch
from support import tiny_model_config

from ssm_mm.config import ModelConfig, TemporalConfig
from ssm_mm.models.backbone import HybridBackbone
from ssm_mm.state import AttentionState, BackboneState


def small_cfg(**kw) -> ModelConfig:
    """The suite's tiny config with attention in two places, GQA and a 6-token window."""
    base = dict(pattern="MAMA", expand=2, chunk_size=8, attn_kv_heads=1, attn_window=6)
    return tiny_model_config(**{**base, **kw})


def jittered_dt(b, l, seed=0):
    g = torch.Generator().manual_seed(seed)
    dt = torch.rand(b, l, generator=g) * 0.2
    dt[torch.rand(b, l, generator=g) < 0.4] = 0.0  # many tokens share a timestamp
    return dt


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize(
    "pattern,time_aware,windows,floor",
    [
        ("MAMA", True, None, 0.0),
        ("MMMM", False, None, 0.0),
        ("AMMA", True, None, 0.0),
        ("AMMA", True, [3, 11], 0.0),
        ("MAMA", True, None, 0.5),  # temporal.rate_floor: the same decay in every path
    ],
)
def test_full_equals_chunked_equals_steps(pattern, time_aware, windows, floor):
    torch.manual_seed(0)
    temporal = TemporalConfig(time_aware_dt=time_aware, rate_floor=floor)
    cfg = small_cfg(pattern=pattern, temporal=temporal, attn_windows=windows)
    model = HybridBackbone(cfg).eval()
    b, l = 2, 37
    x = torch.randn(b, l, cfg.d_model)
    dt = jittered_dt(b, l)
    with torch.no_grad():
        y_full, s_full = model(x, dt)
        # chunks of uneven size, state carried
        ys, s = [], None
        for a, e in [(0, 5), (5, 6), (6, 20), (20, 37)]:
            y, s = model(x[:, a:e], dt[:, a:e], s)
            ys.append(y)
        y_chunk = torch.cat(ys, 1)
        # token by token
        ys, s_step = [], None
        for i in range(l):
            y, s_step = model(x[:, i : i + 1], dt[:, i : i + 1], s_step)
            ys.append(y)
        y_step = torch.cat(ys, 1)
    assert rel(y_chunk, y_full) <= 1e-5
    assert rel(y_step, y_full) <= 1e-5
    for a, c, d in zip(s_full.layers, s.layers, s_step.layers):
        for k, v in a.tensors().items():
            if v.is_floating_point() and v.numel():
                assert rel(c.tensors()[k], v) <= 1e-5, k
                assert rel(d.tensors()[k], v) <= 1e-5, k
    assert torch.equal(s_full.n_tokens, torch.full((b,), l))


def test_padding_never_touches_state():
    torch.manual_seed(1)
    cfg = small_cfg()
    model = HybridBackbone(cfg).eval()
    lens = [13, 7]
    l = max(lens)
    x = torch.randn(2, l, cfg.d_model)
    dt = jittered_dt(2, l, seed=3)
    valid = torch.arange(l)[None] < torch.tensor(lens)[:, None]
    with torch.no_grad():
        y_pad, s_pad = model(x, dt, valid=valid)
        for r, n in enumerate(lens):
            y_one, s_one = model(x[r : r + 1, :n], dt[r : r + 1, :n])
            assert rel(y_pad[r : r + 1, :n], y_one) <= 1e-5
            for a, c in zip(s_pad.select([r]).layers, s_one.layers):
                for k, v in c.tensors().items():
                    got = a.tensors()[k]
                    if k == "valid":
                        assert torch.equal(got, v)
                    elif v.numel():
                        assert rel(got, v) <= 1e-5, k
        # and a continuation after padding matches a continuation without it
        x2 = torch.randn(2, 4, cfg.d_model)
        dt2 = jittered_dt(2, 4, seed=4)
        y2, _ = model(x2, dt2, s_pad)
        for r, n in enumerate(lens):
            _, s_one = model(x[r : r + 1, :n], dt[r : r + 1, :n])
            y2_one, _ = model(x2[r : r + 1], dt2[r : r + 1], s_one)
            assert rel(y2[r : r + 1], y2_one) <= 1e-5


def test_state_dict_roundtrip_stack_and_select():
    torch.manual_seed(2)
    cfg = small_cfg(attn_window=None)  # full attention: caches of different length must stack
    model = HybridBackbone(cfg).eval()
    with torch.no_grad():
        _, s1 = model(torch.randn(1, 5, cfg.d_model), jittered_dt(1, 5))
        _, s2 = model(torch.randn(1, 9, cfg.d_model), jittered_dt(1, 9))
        both = BackboneState.stack([s1, s2])
        again = BackboneState.from_dict(both.to_dict())
        x = torch.randn(2, 3, cfg.d_model)
        dt = jittered_dt(2, 3, seed=9)
        y_b, _ = model(x, dt, again)
        y_1, _ = model(x[:1], dt[:1], s1)
        y_2, _ = model(x[1:], dt[1:], s2)
    assert rel(y_b[:1], y_1) <= 1e-5 and rel(y_b[1:], y_2) <= 1e-5
    assert both.nbytes() > s1.nbytes()


def test_window_state_is_bounded():
    cfg = small_cfg(attn_window=6)
    model = HybridBackbone(cfg).eval()
    with torch.no_grad():
        _, s = model(torch.randn(1, 10, cfg.d_model), jittered_dt(1, 10))
        n10 = s.nbytes()
        _, s = model(torch.randn(1, 50, cfg.d_model), jittered_dt(1, 50), s)
    assert s.nbytes() == n10 == model.state_nbytes(1)


def test_per_layer_windows():
    """attn_windows gives each attention layer its own window and cache; the long layer sees further."""
    torch.manual_seed(4)
    mixed = HybridBackbone(small_cfg(attn_windows=[3, 11])).eval()
    assert [blk.mixer.window for blk in mixed.blocks if blk.letter == "A"] == [3, 11]
    caches = [layer.k.shape[1] for layer in mixed.init_state(1).layers if isinstance(layer, AttentionState)]
    assert caches == [2, 10]
    short = HybridBackbone(small_cfg(attn_window=3)).eval()
    short.load_state_dict(mixed.state_dict())
    x, dt = torch.randn(1, 20, 32), jittered_dt(1, 20, seed=5)
    with torch.no_grad():
        y_mixed, s = mixed(x, dt)
        y_short, _ = short(x, dt)
        _, s = mixed(torch.randn(1, 30, 32), jittered_dt(1, 30, seed=6), s)
    assert rel(y_mixed[:, :3], y_short[:, :3]) <= 1e-6  # both windows cover the first 3 tokens
    assert rel(y_mixed[:, 3:], y_short[:, 3:]) > 1e-3  # beyond 3 tokens the second layer sees more
    assert s.nbytes() == mixed.state_nbytes(1)  # still bounded, by the sum of the two windows


def test_gradients_reach_every_parameter():
    torch.manual_seed(3)
    model = HybridBackbone(small_cfg())
    x = torch.randn(2, 20, 32, requires_grad=True)
    y, _ = model(x, jittered_dt(2, 20))
    y.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_bad_pattern():
    with pytest.raises(ValueError, match="unknown layer letter"):
        HybridBackbone(small_cfg(pattern="MXA"))
