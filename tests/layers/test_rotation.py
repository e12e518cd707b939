"""Rotated state pairs (``model.rotate_pairs``): the mixer against a naive complex recurrence that turns
the state itself, chunked == token by token == windows with the state carried, padding, the zero start
and old states without a phase."""

import math

import pytest
import torch
from test_mamba2 import mixer as small_mixer

from ssm_mm.config import ConfigError, load_config
from ssm_mm.layers.mamba2 import Mamba2Mixer
from ssm_mm.ops.conv import causal_conv1d
from ssm_mm.state import SSMState

R = 2  # rotated pairs of the d_state = 6 dimensions: two pairs turn, two dimensions do not


def mixer(rotate_pairs=R, turn=1.0):
    m = small_mixer(d_state=6, rotate_pairs=rotate_pairs)  # test_mamba2's mixer, 6 state dimensions
    if rotate_pairs and turn:
        with torch.no_grad():  # angles of order `turn` radians per token (the init is zero: no turn)
            m.angle_proj.weight.normal_(0, turn * m.d_model / 4)
    return m


def inputs(b=2, length=11, seed=1):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, length, 16, generator=g)
    dt = torch.rand(b, length, generator=g) * 0.5
    return u, dt


def naive(m: Mamba2Mixer, u, dt):
    """Token by token in the fixed frame, the rotation applied to the state itself:
    h_t = exp(Aλ_t) R(θ_t) h_{t-1} + γ_t B_t x_tᵀ, y_t = C_t h_t + D x_t.
    Returns the mixer output and the final h and Θ."""
    b, length, _ = u.shape
    proj = m.in_proj(u)
    z, xbc, g = proj.split([m.d_inner, m.conv_dim, proj.shape[-1] - m.d_inner - m.conv_dim], -1)
    conv, _ = causal_conv1d(xbc.transpose(1, 2), m.conv_weight, m.conv_bias, None, "silu")
    x, B, C = conv.transpose(1, 2).split([m.d_inner, m.d_state, m.d_state], -1)
    x = x.view(b, length, m.nheads, m.headdim)
    log_decay, gain = m._gates(g, dt)
    theta = m.angle_proj(u) / m.d_model  # (b, L, R) with one group
    h = torch.zeros(b, m.nheads, m.headdim, m.d_state)
    total = torch.zeros(b, m.rotate_pairs)
    ys = []
    for t in range(length):
        c, s = theta[:, t].cos()[:, None, None], theta[:, t].sin()[:, None, None]
        a, bb = h[..., :R], h[..., R : 2 * R]
        h = torch.cat([a * c - bb * s, a * s + bb * c, h[..., 2 * R :]], -1)
        h = torch.exp(log_decay[:, t])[:, :, None, None] * h
        h = h + gain[:, t, :, None, None] * x[:, t, :, :, None] * B[:, t, None, None, :]
        y = (h * C[:, t, None, None, :]).sum(-1) + x[:, t] * m.D[:, None]
        ys.append(y.reshape(b, -1))
        total = total + theta[:, t]
    out = m.out_proj(m.norm(torch.stack(ys, 1), z))
    return out, h, total


def unrotate(state: SSMState) -> torch.Tensor:
    """The fixed-frame state h = R(Θ) g from the carried (g, Θ)."""
    g, phase = state.ssm, state.phase[:, 0][:, None, None, :]
    a, b = g[..., :R], g[..., R : 2 * R]
    c, s = phase.cos(), phase.sin()
    return torch.cat([a * c - b * s, a * s + b * c, g[..., 2 * R :]], -1)


def test_rotated_pairs_equal_the_naive_complex_recurrence():
    m = mixer(turn=2.0)
    u, dt = inputs(length=40)
    with torch.no_grad():
        y, state = m(u, dt)
        y_ref, h_ref, total = naive(m, u, dt)
    assert total.abs().max() > math.pi  # the angles went round: the wrap to [-π, π) is exercised
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(unrotate(state), h_ref, rtol=1e-4, atol=1e-5)
    wrapped = torch.remainder(total + math.pi, 2 * math.pi) - math.pi
    torch.testing.assert_close(state.phase[:, 0], wrapped, rtol=0, atol=1e-5)
    assert (state.phase.abs() <= math.pi).all()


def test_chunked_equals_token_by_token_and_carried_windows_values_and_gradients():
    m = mixer()
    u, dt = inputs(length=13)
    u.requires_grad_(True)
    y_full, s_full = m(u, dt)
    steps, s = [], None
    for t in range(u.shape[1]):
        y_t, s = m(u[:, t : t + 1], dt[:, t : t + 1], s)
        steps.append(y_t)
    y_steps = torch.cat(steps, 1)
    y_a, s_a = m(u[:, :6], dt[:, :6])
    y_b, s_b = m(u[:, 6:], dt[:, 6:], s_a)
    y_win = torch.cat([y_a, y_b], 1)
    for y_other, s_other in ((y_steps, s), (y_win, s_b)):
        torch.testing.assert_close(y_other, y_full, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(s_other.ssm, s_full.ssm, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(s_other.phase, s_full.phase, rtol=0, atol=1e-5)
    w = torch.randn_like(y_full)
    grads = [torch.autograd.grad((y * w).sum(), (u, m.angle_proj.weight)) for y in (y_full, y_steps, y_win)]
    assert grads[0][1].abs().sum() > 0  # the angles learn
    for other in grads[1:]:
        for a, b in zip(other, grads[0]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_padding_turns_nothing():
    m = mixer()
    u, dt = inputs(b=2, length=9)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 5:] = False
    with torch.no_grad():
        y, s = m(u, dt, valid=valid)
        y1, s1 = m(u[1:, :5], dt[1:, :5])
        _, s_step = m(u[1:, 5:6], dt[1:, 5:6], s.select([1]), valid=valid[1:, 5:6])
    torch.testing.assert_close(y[1, :5], y1[0], rtol=1e-4, atol=1e-5)
    for k in ("ssm", "phase"):
        torch.testing.assert_close(getattr(s, k)[1], getattr(s1, k)[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(getattr(s_step, k), getattr(s, k)[1:], rtol=0, atol=0)


def test_a_fresh_rotated_mixer_is_the_plain_one():
    """The angle projection starts at zero: the outputs and states of rotate_pairs=0, same weights."""
    rot, plain = mixer(turn=0.0), mixer(rotate_pairs=0)
    missing = plain.load_state_dict(rot.state_dict(), strict=False)
    assert missing.unexpected_keys == ["angle_proj.weight"] and not missing.missing_keys
    assert rot.angle_proj.weight.abs().sum() == 0
    u, dt = inputs()
    with torch.no_grad():
        (y_r, s_r), (y_p, s_p) = rot(u, dt), plain(u, dt)
    torch.testing.assert_close(y_r, y_p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s_r.ssm, s_p.ssm, rtol=1e-5, atol=1e-6)
    assert s_p.phase.shape == (2, 1, 0) and s_r.phase.shape == (2, 1, R)


def test_a_state_saved_before_rotations_loads_without_a_phase():
    s = mixer(rotate_pairs=0).init_state(3)
    old = {"conv": s.conv, "ssm": s.ssm}
    back = SSMState.from_dict(old)
    assert back.phase.shape == (3, 1, 0)
    with pytest.raises(ValueError, match="expected keys"):
        SSMState.from_dict({"conv": s.conv})


@pytest.mark.parametrize("pairs, message", [(4, "model.rotate_pairs=4: at most"), (-1, "model.rotate_pairs")])
def test_rotate_pairs_out_of_range_is_a_config_error(pairs, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[f"model.rotate_pairs={pairs}", "model.d_state=6"])
    with pytest.raises(ValueError, match="rotate_pairs"):
        mixer(rotate_pairs=pairs)


def test_bf16_autocast_rounds_no_angle():
    """Angles are computed in float64, which autocast leaves alone: over 500 tokens under bf16 autocast
    the summed angle stays within float32 rounding of the exact sum (a bf16 projection drifts ~0.1 rad)."""
    m = mixer(turn=2.0)
    u, _ = inputs(b=1, length=500)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        theta, _ = m._angles(u, m.init_state(1), None)
    exact = (u.double() @ m.angle_proj.weight.double().t() / m.d_model).cumsum(1)
    diff = torch.remainder(theta[:, :, 0].double() - exact + math.pi, 2 * math.pi) - math.pi
    assert diff.abs().max() < 1e-5
