"""Band-limited sinc resampling: analytic checks, a direct-sum slow twin, and torchaudio where it loads."""

import math

import pytest
import torch

from ssm_mm.media.audio import _torchaudio_resample, resample, sinc_resample

PAIRS = [(48000, 16000), (44100, 16000), (16000, 48000), (22050, 16000), (8000, 16000), (16000, 11025)]


def _direct_reference(
    x: torch.Tensor, orig: int, new: int, width: int = 6, rolloff: float = 0.99
) -> torch.Tensor:
    """Obviously-correct float64 resampler: y[k] = Σ_m x[m] h(m − k·orig/new), summed over all m.

    h is the Hann-windowed ideal low-pass at cut-off ``rolloff · min(orig, new) / 2`` Hz (in input
    samples: ``f = rolloff·min(orig,new)/orig`` cycles per sample), ``width`` zero crossings each side.
    """
    g = math.gcd(orig, new)
    o, n = orig // g, new // g
    f = rolloff * min(o, n) / o  # cut-off times two, in cycles per input sample
    m = torch.arange(x.shape[0], dtype=torch.float64)
    out = []
    for k in range(math.ceil(x.shape[0] * n / o)):
        tau = (m - k * o / n) * f  # distance in cut-off periods
        h = torch.where(tau == 0, torch.ones_like(tau), torch.sin(math.pi * tau) / (math.pi * tau))
        win = torch.where(
            tau.abs() <= width, torch.cos(math.pi * tau / (2 * width)) ** 2, torch.zeros_like(tau)
        )
        out.append((x.double() * h * win * f).sum())
    return torch.stack(out)


@pytest.mark.parametrize("orig,new", PAIRS)
def test_sine_keeps_frequency_and_amplitude(orig, new):
    f0 = 1000.0  # below every Nyquist here
    t = torch.arange(orig, dtype=torch.float64) / orig
    y = sinc_resample(0.5 * torch.sin(2 * math.pi * f0 * t), orig, new)
    assert y.shape == (math.ceil(orig * new / orig),)
    tt = torch.arange(y.shape[0], dtype=torch.float64) / new
    inner = slice(new // 10, -new // 10)  # away from the zero-padded edges
    # Same phase (sample 0 stays at time 0), same frequency, same amplitude.
    assert (y[inner] - 0.5 * torch.sin(2 * math.pi * f0 * tt[inner])).abs().max() < 1e-3


def test_content_above_the_new_nyquist_is_removed():
    orig, new = 48000, 16000
    t = torch.arange(orig, dtype=torch.float64) / orig
    y = sinc_resample(torch.sin(2 * math.pi * 12000.0 * t), orig, new)  # 12 kHz > 8 kHz Nyquist
    assert y[1600:-1600].abs().max() < 0.01  # no alias at 4 kHz


@pytest.mark.parametrize("orig,new", [(48000, 16000), (44100, 16000), (16000, 24000)])
def test_matches_direct_sum_reference(orig, new):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(900, generator=g, dtype=torch.float64)
    ref = _direct_reference(x, orig, new)
    got = sinc_resample(x, orig, new)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=0)
    got32 = sinc_resample(x.float(), orig, new)  # float32 path: tolerance from the dtype
    torch.testing.assert_close(got32.double(), ref, atol=1e-5, rtol=0)


@pytest.mark.skipif(_torchaudio_resample() is None, reason="torchaudio does not load on this torch")
@pytest.mark.parametrize("orig,new", PAIRS)
def test_matches_torchaudio(orig, new):
    x = torch.randn(2, 5000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        sinc_resample(x, orig, new), _torchaudio_resample()(x, orig, new), atol=1e-5, rtol=0
    )


def test_batch_shapes_identity_and_errors():
    x = torch.randn(3, 2, 4410)
    y = resample(x, 44100, 16000)
    assert y.shape == (3, 2, 1600)
    torch.testing.assert_close(y[1, 0], resample(x[1, 0], 44100, 16000))  # rows are independent
    assert torch.equal(resample(x, 16000, 16000), x)
    with pytest.raises(ValueError, match="positive"):
        resample(x, 0, 16000)
    with pytest.raises(ValueError, match="positive integers"):
        resample(x, 44100.5, 16000)
    with pytest.raises(ValueError, match="floating"):
        resample(torch.ones(10, dtype=torch.int64), 2, 1)
