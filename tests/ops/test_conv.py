"""Causal depthwise conv: fast == naive, state carry, padding never enters the state, mamba parity."""

from __future__ import annotations

import pytest
import torch

from ssm_mm.ops.conv import causal_conv1d, causal_conv1d_ref, causal_conv1d_update

from ._helpers import rel_err

TOL32 = 1e-6


def _inputs(b=3, d=5, L=17, w=4, seed=0, state=True, bias=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, L, generator=gen, requires_grad=True)
    weight = torch.randn(d, w, generator=gen, requires_grad=True)
    bias_t = torch.randn(d, generator=gen, requires_grad=True) if bias else None
    state_t = torch.randn(b, d, w - 1, generator=gen, requires_grad=True) if state else None
    return x, weight, bias_t, state_t


@pytest.mark.parametrize("w", [1, 2, 4, 5])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_state", [False, True])
def test_matches_naive_twin_values_and_grads(w, activation, with_state):
    x, weight, bias, state = _inputs(w=w, state=with_state, seed=w)
    leaves = [t for t in (x, weight, bias, state) if t is not None]
    outs = []
    for fn in (causal_conv1d, causal_conv1d_ref):
        y, new_state = fn(x, weight, bias, state, activation)
        gen = torch.Generator().manual_seed(1)
        loss = (y * torch.randn(y.shape, generator=gen)).sum() + (
            new_state * torch.randn(new_state.shape, generator=gen)
        ).sum()
        outs.append([y, new_state, *torch.autograd.grad(loss, leaves)])
    for got, want in zip(*outs):
        assert rel_err(got, want) <= TOL32


def test_pieces_with_state_equal_whole():
    x, weight, bias, _ = _inputs(L=30, w=4, seed=3)
    with torch.no_grad():
        y_all, s_all = causal_conv1d(x, weight, bias, activation="silu")
        state, ys = None, []
        for lo, hi in [(0, 2), (2, 3), (3, 17), (17, 30)]:  # pieces shorter and longer than the width
            y, state = causal_conv1d(x[:, :, lo:hi], weight, bias, state, "silu")
            ys.append(y)
    assert rel_err(torch.cat(ys, -1), y_all) <= TOL32
    assert torch.equal(state, s_all)


def test_lengths_keep_padding_out_of_the_state():
    b, d, L, w = 3, 4, 12, 4
    x, weight, bias, state = _inputs(b=b, d=d, L=L, w=w, seed=5)
    lengths = torch.tensor([12, 5, 1])
    with torch.no_grad():
        x_pad = x.clone()
        for i, n in enumerate(lengths.tolist()):
            x_pad[i, :, n:] = 1e3  # garbage padding: must not leak into the state
        y, new_state = causal_conv1d(x_pad, weight, bias, state, lengths=lengths)
        _, ref_state = causal_conv1d_ref(x_pad, weight, bias, state, lengths=lengths)
        assert torch.equal(new_state, ref_state)
        for i, n in enumerate(lengths.tolist()):
            # Row i alone, unpadded: same valid outputs, same state; continuing from it matches.
            y_i, s_i = causal_conv1d(x[i : i + 1, :, :n], weight, bias, state[i : i + 1])
            assert rel_err(y[i : i + 1, :, :n], y_i) <= TOL32
            assert torch.equal(new_state[i : i + 1], s_i)
        # Zero-length row: the state is the incoming state.
        _, s0 = causal_conv1d(x_pad, weight, bias, state, lengths=torch.tensor([0, 0, 0]))
        assert torch.equal(s0, state)


def test_update_repeated_equals_sequence():
    x, weight, bias, state = _inputs(L=9, w=4, seed=7)
    with torch.no_grad():
        y_all, s_all = causal_conv1d(x, weight, bias, state, "silu")
        s, ys = state.clone(), []
        for t in range(9):
            s_before = s.clone()
            y, s_new = causal_conv1d_update(x[:, :, t], weight, bias, s, "silu")
            assert torch.equal(s, s_before), "update must not modify its state argument"
            s = s_new
            ys.append(y)
    assert rel_err(torch.stack(ys, -1), y_all) <= TOL32
    assert torch.equal(s, s_all)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"x": torch.zeros(2, 3)}, "x must be"),
        ({"weight": torch.zeros(4, 3)}, "weight must be"),
        ({"bias": torch.zeros(4)}, "bias must be"),
        ({"state": torch.zeros(2, 3, 3)}, "state must be"),
        ({"activation": "relu"}, "activation must be"),
        ({"lengths": torch.tensor([1, 2, 3])}, "lengths must be"),
        ({"lengths": torch.tensor([1, 9])}, "lengths must lie"),
        ({"lengths": torch.tensor([1.0, 2.0])}, "lengths must be"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, match):
    args = {"x": torch.zeros(2, 3, 5), "weight": torch.zeros(3, 3), "bias": None, "state": None}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        causal_conv1d(**args)


def test_cuda_kernel_request_on_cpu_raises():
    x, weight, bias, state = _inputs(seed=9)
    with pytest.raises(RuntimeError, match="not CUDA tensors"):
        causal_conv1d(x, weight, bias, state, kernels="cuda")
    with pytest.raises(ValueError, match="kernels must be"):
        causal_conv1d_update(x[:, :, 0], weight, bias, state, kernels="fast")


# ------------------------------------------------------------------ causal_conv1d parity (skips if absent)


@pytest.mark.parametrize("activation", [None, "silu"])
def test_matches_causal_conv1d_ref(conv_refs, activation):
    x, weight, bias, state = _inputs(L=21, w=4, seed=11)
    y, new_state = causal_conv1d(x, weight, bias, state, activation)
    y_ref, s_ref = conv_refs.causal_conv1d_ref(
        x, weight, bias, initial_states=state, return_final_states=True, activation=activation
    )
    assert rel_err(y, y_ref) <= TOL32
    assert torch.equal(new_state, s_ref)
    cot = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, weight, bias, state], cot)
    want = torch.autograd.grad(y_ref, [x, weight, bias, state], cot)
    for a, b in zip(got, want):
        assert rel_err(a, b) <= TOL32


def test_update_matches_causal_conv1d_update_ref(conv_refs):
    x, weight, bias, state = _inputs(w=4, seed=13)
    with torch.no_grad():
        ref_state = state.clone()  # the reference updates its state in place
        y_ref = conv_refs.causal_conv1d_update_ref(x[:, :, 0], ref_state, weight, bias, activation="silu")
        y, new_state = causal_conv1d_update(x[:, :, 0], weight, bias, state, "silu")
    assert rel_err(y, y_ref) <= TOL32
    assert torch.equal(new_state, ref_state)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_kernel_matches_torch():
    from ssm_mm.ops.conv import cuda_conv_available

    if not cuda_conv_available():
        pytest.skip("causal_conv1d CUDA extension not importable")
    x, weight, bias, state = (t.detach().cuda() for t in _inputs(L=33, w=4, seed=15))
    lengths = torch.tensor([33, 10, 1], device="cuda")
    y, s = causal_conv1d(x, weight, bias, state, "silu", lengths=lengths, kernels="cuda")
    y_t, s_t = causal_conv1d(x, weight, bias, state, "silu", lengths=lengths, kernels="torch")
    assert rel_err(y, y_t) <= 1e-5
    assert torch.equal(s, s_t)
    y1, s1 = causal_conv1d_update(x[:, :, 0], weight, bias, state, "silu", kernels="cuda")
    y1_t, s1_t = causal_conv1d_update(x[:, :, 0], weight, bias, state, "silu", kernels="torch")
    assert rel_err(y1, y1_t) <= 1e-5
    assert torch.equal(s1, s1_t)
