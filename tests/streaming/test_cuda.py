"""The model and its streaming sessions on a CUDA GPU (skipped without one, or without mamba_ssm).

The SSM layers then run mamba_ssm's Triton SSD kernel (``ops.ssd._ssd_cuda``) for every multi-token
call and ``ssd_step`` for single tokens. The parity twins are the same weights on the pure-PyTorch
path (same device, and the CPU), and the offline forward for a streaming session. The kernel's TF32
products give ~1.5e-3 relative error (shared/GPU.md), so tolerances are set from that, not 1e-5.

Media are synthetic (noise frames and noise audio on a stream clock): the GPU machine has no video
decoder, and parity does not depend on what the pixels show.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import support
import torch
from streaming_helpers import LABELS, Media, check_session_parity, offline_inputs

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

REL_TOL = 5e-3  # values: a few times the kernel's TF32 error
GRAD_TOL = 2e-2  # gradients pass through more TF32 products (and d/da scales like 1/dt, see _ssd_cuda)


@pytest.fixture(autouse=True)
def _need_kernel():
    from ssm_mm.ops.mamba_ref import mamba_refs_error
    from ssm_mm.ops.ssd import cuda_ssd_available

    if not cuda_ssd_available():
        pytest.skip(f"mamba_ssm's Triton SSD kernel is unavailable: {mamba_refs_error()}")


def cuda_model(seed: int = 0, kernels: str = "cuda") -> torch.nn.Module:
    """The suite's tiny hybrid with Triton-sized SSM dims (state 16, head dim 16, chunk 64)."""
    return support.tiny_model(seed, LABELS, d_state=16, headdim=16, chunk_size=64, kernels=kernels)


def set_kernels(model, kernels: str):
    for m in model.modules():
        if hasattr(m, "kernels"):
            m.kernels = kernels
    return model


def noise_media(seconds: float = 6.0, seed: int = 0, t0: float = 100.0) -> Media:
    gen = torch.Generator().manual_seed(seed)
    n_frames = int(seconds * 4)
    frames = torch.randint(0, 256, (n_frames, 64, 64, 3), generator=gen, dtype=torch.uint8)
    times = t0 + torch.arange(n_frames, dtype=torch.float64) / 4
    samples = 0.1 * torch.randn(int(seconds * 16000), generator=gen)
    return Media(None, t0, frames, times, samples, 16000, t0 + 0.05)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def two_row_inputs(model, seconds: float = 8.0):
    """Two rows of one synthetic stream's tokens on the model's device; row 1 right-padded after 60%."""
    tokens, video, audio = offline_inputs(model, noise_media(seconds), [], ("video", "audio"))
    dev = next(model.parameters()).device
    L = tokens.kind.shape[0]
    valid = torch.ones(2, L, dtype=torch.bool)
    valid[1, int(0.6 * L) :] = False
    rows = lambda x: x[None].expand(2, *x.shape).contiguous().to(dev)  # noqa: E731
    return rows(tokens.kind), rows(tokens.t), rows(tokens.src), valid.to(dev), video.to(dev), audio.to(dev)


def forward_and_grads(model, inputs, seed: int = 1):
    """Hidden states, final state and parameter gradients for a fixed random cotangent on the hiddens."""
    model.zero_grad(set_to_none=True)
    out = model(*inputs)
    gen = torch.Generator().manual_seed(seed)
    cot = torch.randn(out.hidden.shape, generator=gen).to(out.hidden.device)
    valid = inputs[3]
    (out.hidden * cot * valid[..., None]).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.hidden.detach(), out.state.to_dict(), grads


def test_triton_path_matches_torch_path_values_and_gradients():
    model = cuda_model(kernels="cuda").cuda().train()
    twin = set_kernels(copy.deepcopy(model), "torch")
    inputs = two_row_inputs(model)
    h, state, grads = forward_and_grads(model, inputs)
    h_ref, state_ref, grads_ref = forward_and_grads(twin, inputs)
    valid = inputs[3]
    assert rel(h[valid], h_ref[valid]) <= REL_TOL
    for k, want in state_ref.items():  # the padded row: padding decays it by exp(-1e-5) per token only
        got = state[k]
        fin = torch.isfinite(want) if want.is_floating_point() else torch.ones_like(want, dtype=torch.bool)
        assert torch.equal(got[~fin], want[~fin]), k  # e.g. -inf times of kinds not seen yet
        assert rel(got[fin], want[fin]) <= REL_TOL, k
    assert grads.keys() == grads_ref.keys()
    flat = torch.cat([g.flatten() for g in grads.values()])
    flat_ref = torch.cat([grads_ref[k].flatten() for k in grads])
    assert rel(flat, flat_ref) <= GRAD_TOL
    for name in grads:  # no parameter's gradient is off by itself
        if grads_ref[name].norm() > 1e-3 * flat_ref.norm():
            assert rel(grads[name], grads_ref[name]) <= 10 * GRAD_TOL, name


def test_cuda_matches_cpu():
    cpu = cuda_model(kernels="auto").eval()
    gpu = copy.deepcopy(cpu).cuda()
    inputs = two_row_inputs(cpu)
    with torch.no_grad():
        h_gpu = gpu(*(x.cuda() for x in inputs)).hidden
        h_cpu = cpu(*inputs).hidden
    valid = inputs[3]
    assert rel(h_gpu[valid], h_cpu[valid]) <= REL_TOL


def test_whole_stream_equals_windows_equals_token_steps_on_cuda():
    """Chunked == full == streaming on the GPU: windows carry the state, single tokens use ssd_step."""
    model = cuda_model().cuda().eval()
    kind, t, src, _, video, audio = two_row_inputs(model, seconds=4.0)
    kind, t, src = kind[:1], t[:1], src[:1]
    with torch.no_grad():
        full = model(kind, t, src, None, video, audio).hidden[0]
        L = kind.shape[1]
        cuts = [0, 37, 100, 101, L]
        ys, state = [], None
        for a, b in zip(cuts, cuts[1:]):
            out = model(kind[:, a:b], t[:, a:b], src[:, a:b], None, video, audio, state)
            ys.append(out.hidden[0])
            state = out.state
        windows = torch.cat(ys)
        ys, state = [], None
        for i in range(min(L, 80)):
            out = model(kind[:, i : i + 1], t[:, i : i + 1], src[:, i : i + 1], None, video, audio, state)
            ys.append(out.hidden[0])
            state = out.state
        steps = torch.cat(ys)
    assert rel(windows, full) <= REL_TOL
    assert rel(steps, full[: steps.shape[0]]) <= REL_TOL


def test_bf16_autocast_forward_backward_is_finite_and_close():
    model = cuda_model().cuda().train()
    inputs = two_row_inputs(model)
    h32, _, _ = forward_and_grads(model, inputs)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        h16, _, grads = forward_and_grads(model, inputs)
    assert all(torch.isfinite(g).all() for g in grads.values())
    valid = inputs[3]
    assert rel(h16.float()[valid], h32[valid]) <= 5e-2


@pytest.mark.parametrize("modalities", [("video", "audio"), ("audio",)])
def test_session_on_cuda_equals_offline_forward(modalities):
    """A GPU session fed in random pieces, with questions and proactive answers, == the offline forward."""
    torch.set_num_threads(1)
    model = cuda_model().cuda().eval()
    m = noise_media(6.0, seed=3)
    check_session_parity(model, m, modalities, seed=1, tol=2e-2)


def test_batched_sessions_on_cuda_equal_single_sessions():
    """step_sessions on the GPU (right-padded batched ticks, stacked states) == each session alone."""
    from ssm_mm.streaming.session import step_sessions

    model = cuda_model().cuda().eval()
    media = [noise_media(3.0 + i, seed=4 + i, t0=100.0 + 7 * i) for i in range(3)]

    def feed(s, m):
        s.push_video(m.frames, m.times)
        s.push_audio(m.samples, m.sample_rate, m.audio_t0)

    singles = []
    for m in media:
        s = model.stream(t0=m.t0, speak_threshold=1.0)
        feed(s, m)
        singles.append([(x.tick, x.index, x.score) for x in s.segment_labels() if x.has_media])
    sessions = [model.stream(t0=m.t0, speak_threshold=1.0, auto_step=False) for m in media]
    for s, m in zip(sessions, media):
        feed(s, m)
    assert step_sessions(sessions) == [len(x) for x in singles]
    for s, want in zip(sessions, singles):
        got = [(x.tick, x.index, x.score) for x in s.segment_labels() if x.has_media]
        assert [g[0] for g in got] == [w[0] for w in want]
        assert np.allclose([g[2] for g in got], [w[2] for w in want], atol=2e-2)
