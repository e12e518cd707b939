"""The SPEC §6 time-aware step, checked directly against its formula."""

import pytest
import torch
import torch.nn.functional as F

from ssm_mm.config import ModelConfig, TemporalConfig
from ssm_mm.layers.mamba2 import Mamba2Mixer


def mixer(time_aware=True, rate_floor=0.0, **overrides):
    """The small mixer of these tests (seeded), ``overrides`` on its ModelConfig (e.g. d_state)."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        **{
            "d_model": 16,
            "d_state": 4,
            "headdim": 8,
            "expand": 1,
            "ngroups": 1,
            "d_conv": 2,
            "chunk_size": 4,
            "kernels": "torch",
            "temporal": TemporalConfig(time_aware_dt=time_aware, rate_floor=rate_floor),
            **overrides,
        }
    )
    return Mamba2Mixer(cfg).eval()


def expected_second_state(m: Mamba2Mixer, u, dt_gap):
    """h_2 = exp(A λ_2) h_1 + γ_2 B_2 x_2 with h_1 = γ_1 B_1 x_1 computed by hand."""
    b, l, _ = u.shape
    proj = m.in_proj(u)
    z, xbc, g = proj.split([m.d_inner, m.conv_dim, proj.shape[-1] - m.d_inner - m.conv_dim], -1)
    # d_conv=2: conv output at token i uses inputs i-1 and i
    w = m.conv_weight
    pad = torch.cat([torch.zeros(b, 1, m.conv_dim), xbc], 1)
    conv = F.silu(pad[:, :-1] * w[:, 0] + pad[:, 1:] * w[:, 1] + m.conv_bias)
    x, B, C = conv.split([m.d_inner, m.d_state, m.d_state], -1)
    x = x.view(b, l, m.nheads, m.headdim)
    A = -torch.exp(m.A_log)
    gb = g + m.gate_bias
    if m.time_aware:
        rate, gain = F.softplus(gb).split(m.nheads, -1)
        lam2 = rate[:, 1] * dt_gap
    else:
        gain = F.softplus(gb)
        lam2 = gain[:, 1]
    h1 = gain[:, 0, :, None, None] * x[:, 0, :, :, None] * B[:, 0, None, None, :]
    h2 = (
        torch.exp(A * lam2)[:, :, None, None] * h1
        + gain[:, 1, :, None, None] * x[:, 1, :, :, None] * B[:, 1, None, None, :]
    )
    return h1, h2


def test_state_follows_the_spec_formula_and_gap_doubling():
    m = mixer(True)
    u = torch.randn(1, 2, 16)
    with torch.no_grad():
        for gap in (0.3, 0.6, 0.0):
            _, s = m(u, torch.tensor([[0.0, gap]]))
            _, h2 = expected_second_state(m, u, gap)
            torch.testing.assert_close(s.ssm, h2, rtol=1e-5, atol=1e-6)
        # doubling the gap squares the decay factor applied to h_1: h2(2g) - in(2) = (h2(g) - in(2))^2 / h1
        h1, h2a = expected_second_state(m, u, 0.3)
        _, h2b = expected_second_state(m, u, 0.6)
        _, h2z = expected_second_state(m, u, 0.0)
        inp = h2z - h1  # gap 0: decay 1, so h2(0) = h1 + input
        da = (h2a - inp) / h1
        db = (h2b - inp) / h1
        mask = h1.abs() > 1e-4
        torch.testing.assert_close(db[mask], (da**2)[mask], rtol=1e-4, atol=1e-6)
        assert (da[mask] < 1).all()


def test_plain_mamba2_ignores_the_gap():
    m = mixer(False)
    u = torch.randn(1, 2, 16)
    with torch.no_grad():
        _, s1 = m(u, torch.tensor([[0.0, 0.3]]))
        _, s2 = m(u, torch.tensor([[0.0, 5.0]]))
        _, h2 = expected_second_state(m, u, None)
    torch.testing.assert_close(s1.ssm, s2.ssm)
    torch.testing.assert_close(s1.ssm, h2, rtol=1e-5, atol=1e-6)


def test_same_timestamp_tokens_write_and_get_gradient():
    m = mixer(True)
    u = torch.randn(1, 6, 16, requires_grad=True)
    dt = torch.zeros(1, 6)  # all tokens share one timestamp: no decay at all
    y, s = m(u, dt)
    assert s.ssm.abs().sum() > 0
    # the last token still changes the state
    _, s5 = m(u[:, :5], dt[:, :5])
    assert (s.ssm - s5.ssm).abs().max() > 1e-6
    (y.square().sum() + s.ssm.square().sum()).backward()
    assert u.grad[0, -1].abs().sum() > 0 and u.grad[0, 0].abs().sum() > 0


def test_rate_floor_adds_to_every_heads_decay_and_nothing_else():
    u = torch.randn(2, 9, 16)
    dt = torch.rand(2, 9) * 0.5
    plain, floored = mixer(True), mixer(True, rate_floor=0.3)  # same seed: same weights
    g = plain.in_proj(u)[..., plain.d_inner + plain.conv_dim :]
    with torch.no_grad():
        d0, g0 = plain._gates(g, dt)
        d1, g1 = floored._gates(g, dt)
    torch.testing.assert_close(d1, d0 - 0.3 * dt.unsqueeze(-1))
    assert torch.equal(g0, g1)  # the input gain does not change


def test_rate_floor_without_the_time_aware_step_is_refused():
    with pytest.raises(ValueError, match=r"rate_floor=0.1 .*time_aware_dt=True"):
        mixer(False, rate_floor=0.1)


def test_rate_floor_bounds_a_holding_heads_state():
    """A head whose learned rate is ~0 integrates its input for ever; with the floor its state settles
    within a few 1/rate_floor seconds and stays there however long the stream runs."""

    def norms(m):
        with torch.no_grad():
            m.gate_bias[: m.nheads] = -30.0  # learned decay rate softplus(-30) ~ 1e-13 per second
            u = torch.randn(1, 1, 16).expand(1, 400, 16)  # one token repeated, 10 per second
            dt = torch.full((1, 400), 0.1)
            _, s100 = m(u[:, :100], dt[:, :100])  # 10 s
            _, s400 = m(u[:, 100:], dt[:, 100:], s100)  # 40 s
        return s100.ssm.norm().item(), s400.ssm.norm().item()

    a, b = norms(mixer(True))
    assert b / a > 3.5  # no floor: the state grows with the stream's age (4x the tokens, ~4x)
    a, b = norms(mixer(True, rate_floor=1.0))  # 1-s horizon: settled long before 10 s
    assert abs(b / a - 1) < 1e-3


def test_relu_gain_is_a_scaled_relu_exactly_zero_for_ignored_tokens():
    """``model.gain=relu``: γ = exp(s_h) · relu(w·u + b), b starting at 1, so a head can leave a token
    out of its state exactly; the decay is the softplus step's, unchanged."""
    m, soft = mixer(True, gain="relu"), mixer(True)
    u = torch.randn(2, 40, 16)
    dt = torch.rand(2, 40) * 0.5
    g = m.in_proj(u)[..., m.d_inner + m.conv_dim :]
    with torch.no_grad():
        m.gate_bias[m.nheads :] = 0.0  # half the tokens below zero
        d, gain = m._gates(g, dt)
        d_soft, _ = soft._gates(g, dt)
    pre = g[..., m.nheads :] + m.gate_bias[m.nheads :]
    torch.testing.assert_close(gain, torch.exp(m.gain_log_scale) * pre.clamp(min=0))
    assert 0.2 < (gain == 0).float().mean() < 0.8
    torch.testing.assert_close(d, d_soft)  # same seed, same rate weights: the decay is untouched


def test_relu_gain_starts_at_the_softplus_gain_range():
    m = mixer(True, gain="relu")
    scale = torch.exp(m.gain_log_scale)
    assert torch.all((scale >= 1e-3 - 1e-9) & (scale <= 1e-1 + 1e-9))
    assert torch.equal(m.gate_bias[m.nheads :], torch.ones(m.nheads))


def test_tokens_every_head_ignores_leave_only_the_decay():
    """With γ = 0 on every head tokens add nothing: the state is the previous one decayed by their
    steps, in the chunked scan and token by token alike."""
    m = mixer(True, gain="relu")
    u = torch.randn(1, 13, 16)
    dt = torch.rand(1, 13) * 0.3
    with torch.no_grad():
        _, s8 = m(u[:, :8], dt[:, :8])
        m.gate_bias[m.nheads :] = -1e4  # every gain pre-activation negative
        y_chunk, s_chunk = m(u[:, 8:], dt[:, 8:], s8)
        state, ys = s8, []
        for i in range(8, 13):
            yi, state = m(u[:, i : i + 1], dt[:, i : i + 1], state)
            ys.append(yi)
        log_decay, gain = m._gates(m.in_proj(u[:, 8:])[..., m.d_inner + m.conv_dim :], dt[:, 8:])
    assert torch.all(gain == 0)
    decay = torch.exp(log_decay[0].sum(0))[None, :, None, None]
    torch.testing.assert_close(s_chunk.ssm, decay * s8.ssm)
    torch.testing.assert_close(state.ssm, s_chunk.ssm)
    torch.testing.assert_close(torch.cat(ys, 1), y_chunk, rtol=1e-4, atol=1e-5)


def test_relu_gain_chunked_equals_token_steps_with_gradients():
    m = mixer(True, gain="relu")
    with torch.no_grad():
        m.gate_bias[m.nheads :] = 0.0  # many exact zeros
    u = torch.randn(2, 13, 16, requires_grad=True)
    dt = torch.rand(2, 13) * 0.4
    y, s = m(u, dt)
    state, ys = None, []
    for i in range(13):
        yi, state = m(u[:, i : i + 1], dt[:, i : i + 1], state)
        ys.append(yi)
    torch.testing.assert_close(torch.cat(ys, 1), y, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state.ssm, s.ssm, rtol=1e-4, atol=1e-5)
    (g1,) = torch.autograd.grad(y.square().sum(), m.gain_log_scale)
    (g2,) = torch.autograd.grad(torch.cat(ys, 1).square().sum(), m.gain_log_scale)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)
    assert g1.abs().sum() > 0


def test_an_unknown_gain_is_refused_by_name():
    from ssm_mm.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"model.gain='sigmoid': expected softplus \| relu"):
        load_config(overrides=["model.gain=sigmoid"])
    with pytest.raises(ValueError, match="model.gain='sigmoid'"):
        mixer(True, gain="sigmoid")


def test_relu_gain_without_the_time_aware_step_is_refused():
    from ssm_mm.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"model.gain='relu' needs the time-aware step"):
        load_config(overrides=["model.gain=relu", "model.temporal.time_aware_dt=false"])
    with pytest.raises(ValueError, match=r"model.gain='relu' needs time_aware_dt=True"):
        mixer(False, gain="relu")
