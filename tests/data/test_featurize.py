"""The one featurizer: causal log-mel audio tokens (chunk invariance, causality, a naive twin, the
mel filterbank) and resized video frames."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ssm_mm.data.featurize import (
    AudioFeaturizer,
    AudioFeaturizerState,
    FeaturizerConfig,
    VideoFeaturizer,
    hz_to_mel,
    mel_filterbank,
    mel_filterbank_torch,
    mel_to_hz,
)

CFG = FeaturizerConfig()


def _noise(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(n, generator=g)


def _push_in_pieces(fz, x, sizes, t0=0.0):
    state = fz.init_state(t0)
    toks, times, i = [], [], 0
    for n in sizes:
        a, t, state = fz(x[i : i + n], state)
        toks.append(a)
        times.append(t)
        # the carried state stays bounded whatever the piece size
        assert fz.cfg.n_fft - fz.cfg.hop <= state.tail.shape[0] < fz.cfg.n_fft
        assert state.pending.shape[0] < fz.cfg.frames_per_token
        i += n
    assert i == x.shape[0]
    return torch.cat(toks), torch.cat(times), state


# ------------------------------------------------------------------------------------------ config


def test_config_defaults_and_derived_sizes():
    assert (CFG.samples_per_token, CFG.frames_per_token, CFG.audio_token_dim) == (1600, 10, 640)
    assert CFG.audio_tokens_per_tick == 5 and CFG.n_freqs == 201


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"tick_seconds": 0.25}, "tick_seconds"),  # not a multiple of 0.1 s
        ({"audio_token_seconds": 0.105}, "audio_token_seconds"),  # 1680 samples: not a multiple of hop
        ({"patches_per_frame": 3}, "patches_per_frame"),
        ({"patches_per_frame": 9}, "patches_per_frame"),  # 64 not divisible by 3
        ({"n_fft": 100}, "n_fft"),  # < hop
        ({"mel_scale": "bark"}, "mel_scale"),
        ({"f_max": 9000.0}, "f_max"),  # above Nyquist
        ({"sample_rate": 0}, "sample_rate"),
        ({"fps": -1.0}, "fps"),
    ],
)
def test_config_rejects_bad_values(kw, field):
    with pytest.raises(ValueError, match=f"FeaturizerConfig.{field}"):
        FeaturizerConfig(**kw)


def test_config_is_an_omegaconf_structured_config():
    merged = OmegaConf.merge(OmegaConf.structured(FeaturizerConfig), OmegaConf.from_dotlist(["n_mels=80"]))
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, FeaturizerConfig) and cfg.n_mels == 80 and cfg.f_max is None


# ------------------------------------------------------------------------------------------- audio


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_audio_tokens_do_not_depend_on_chunking(seed):
    fz = AudioFeaturizer(CFG)
    rng = np.random.default_rng(seed)
    x = _noise(3 * CFG.sample_rate + 1234, seed)
    whole, t_whole, _ = fz(x, fz.init_state(t0=7.25))
    # pieces of 1 sample, around hop / token sizes, and spanning several tokens
    choices = [1, 1, 2, 159, 160, 161, 399, 1599, 1600, 1601, 4000, 7777]
    sizes = []
    while sum(sizes) < x.shape[0]:
        sizes.append(min(int(rng.choice(choices)), x.shape[0] - sum(sizes)))
    pieces, t_pieces, _ = _push_in_pieces(fz, x, sizes, t0=7.25)
    assert whole.shape == (x.shape[0] // 1600, 640)
    assert torch.equal(pieces, whole)  # bit-identical, not just close
    assert torch.equal(t_pieces, t_whole)


def test_audio_one_sample_at_a_time_equals_whole():
    fz = AudioFeaturizer(CFG)
    x = _noise(3300, seed=5)
    whole, t_whole, _ = fz(x)
    ones, t_ones, _ = _push_in_pieces(fz, x, [1] * x.shape[0])
    assert torch.equal(ones, whole) and torch.equal(t_ones, t_whole) and whole.shape[0] == 2


def test_audio_token_times_are_the_end_of_their_audio():
    fz = AudioFeaturizer(CFG)
    t0 = 1_000_000.3  # a large clock offset: times come from sample counts, not accumulation
    feats, times, state = fz(_noise(16000 * 2 + 1599), fz.init_state(t0))
    assert feats.shape[0] == 20 and times.dtype == torch.float64
    expected = t0 + (np.arange(20) + 1) * 1600 / 16000
    np.testing.assert_array_equal(times.numpy(), expected)
    # the next sample completes token 20, which ends at t0 + 2.1 s
    feats2, times2, _ = fz(torch.zeros(1), state)
    assert feats2.shape[0] == 1 and times2.item() == t0 + 21 * 1600 / 16000


def test_audio_is_causal():
    """Token k depends on samples < (k+1)·P only, and does depend on the last one of them."""
    fz = AudioFeaturizer(CFG)
    x = _noise(16000)
    base, _, _ = fz(x)
    k, P = 4, CFG.samples_per_token
    later = x.clone()
    later[(k + 1) * P :] += 0.5
    a, _, _ = fz(later)
    assert torch.equal(a[: k + 1], base[: k + 1]) and not torch.equal(a[k + 1], base[k + 1])
    last = x.clone()
    last[(k + 1) * P - 1] += 0.5
    b, _, _ = fz(last)
    assert torch.equal(b[:k], base[:k]) and not torch.equal(b[k], base[k])


def _naive_log_mel_tokens(x: np.ndarray, cfg: FeaturizerConfig, fbank: np.ndarray) -> np.ndarray:
    """Obviously-correct twin in float64: zero-pad n_fft − hop samples on the left, frame j =
    padded[j·hop : j·hop + n_fft] (stream samples [j·hop − (n_fft − hop), j·hop + hop)), periodic Hann,
    |rfft|², mel, log; stack 10 frames per token."""
    n, hop = cfg.n_fft, cfg.hop
    padded = np.concatenate([np.zeros(n - hop), x.astype(np.float64)])
    n_frames = x.shape[0] // hop
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
    rows = []
    for j in range(n_frames):
        spec = np.fft.rfft(padded[j * hop : j * hop + n] * win)
        rows.append(np.log(np.abs(spec) ** 2 @ fbank + cfg.log_floor))
    mel = np.stack(rows)  # (n_frames, n_mels)
    n_tok = n_frames // cfg.frames_per_token
    return mel[: n_tok * cfg.frames_per_token].reshape(n_tok, -1)


def test_audio_matches_naive_reference():
    fz = AudioFeaturizer(CFG)
    t = np.arange(8000 + 900) / 16000
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size)).astype(
        np.float32
    )
    ours, _, _ = fz(x)
    ref = _naive_log_mel_tokens(x, CFG, fz.fbank.numpy())
    assert ours.shape == ref.shape == (5, 640)
    np.testing.assert_allclose(ours.numpy(), ref, atol=2e-3, rtol=1e-4)  # float32 FFT vs float64


def test_audio_state_snapshot_resumes_exactly():
    fz = AudioFeaturizer(CFG)
    x = _noise(20000, seed=3)
    whole, _, _ = fz(x)
    a, _, state = fz(x[:7123])
    snap = state.to_dict()
    assert all(isinstance(v, torch.Tensor) for v in snap.values())
    b, _, _ = fz(x[7123:], AudioFeaturizerState.from_dict(snap))
    assert torch.equal(torch.cat([a, b]), whole)
    assert state.nbytes() <= 4 * (CFG.n_fft + CFG.frames_per_token * CFG.n_mels) + 16


def test_audio_state_does_not_grow():
    fz = AudioFeaturizer(CFG)
    state, sizes = fz.init_state(), []
    for i in range(50):
        _, _, state = fz(_noise(3217, seed=i), state)
        sizes.append(state.nbytes())
    assert max(sizes) <= 4 * (CFG.n_fft + CFG.frames_per_token * CFG.n_mels) + 16
    assert state.n_samples == 50 * 3217


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(2, 100), "1-D"),
        (torch.zeros(100, dtype=torch.int16), "floating point"),
        (torch.tensor([0.0, float("nan")]), "NaN"),
        ([0.0, 1.0], "numpy array or torch tensor"),
    ],
)
def test_audio_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        AudioFeaturizer(CFG)(bad)


def test_audio_wrong_state_is_rejected():
    fz = AudioFeaturizer(CFG)
    bad = AudioFeaturizerState(tail=torch.zeros(5), pending=torch.zeros(0, 64), n_samples=0, t0=0.0)
    with pytest.raises(ValueError, match="not a state of this"):
        fz(torch.zeros(10), bad)


@pytest.mark.parametrize("freq", [250.0, 1000.0, 3000.0, 6000.0])
def test_pure_tone_lands_in_its_mel_bin(freq):
    fz = AudioFeaturizer(CFG)
    t = np.arange(16000) / 16000
    x = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    feats, _, _ = fz(x)
    mel = feats[2:].reshape(-1, CFG.frames_per_token, CFG.n_mels).mean(dim=(0, 1))  # (n_mels,), skip onset
    # filter centres from the mel formula, independently of the filterbank code
    m_max = 2595 * math.log10(1 + 8000 / 700)
    centres = 700 * (10 ** (np.linspace(0, m_max, CFG.n_mels + 2)[1:-1] / 2595) - 1)
    nearest = int(np.argmin(np.abs(centres - freq)))
    assert abs(int(mel.argmax()) - nearest) <= 1


# --------------------------------------------------------------------------------- mel filterbank


def test_mel_scale_anchor_points():
    # HTK: 1000 Hz ≈ 1000 mel; Slaney: linear 200/3 Hz per mel up to 1000 Hz (= 15 mel)
    assert abs(hz_to_mel(1000.0, "htk") - 999.9855) < 1e-3
    assert abs(hz_to_mel(1000.0, "slaney") - 15.0) < 1e-12
    assert abs(hz_to_mel(500.0, "slaney") - 7.5) < 1e-12
    assert abs(hz_to_mel(6400.0, "slaney") - 42.0) < 1e-12  # 27 log-steps of 6.4^(1/27) above 1 kHz
    f = torch.tensor([0.0, 123.0, 999.0, 1000.0, 4321.0, 8000.0], dtype=torch.float64)
    for scale in ("htk", "slaney"):
        torch.testing.assert_close(mel_to_hz(hz_to_mel(f, scale), scale), f, atol=1e-9, rtol=0)
        assert [hz_to_mel(float(x), scale) for x in f] == pytest.approx(
            hz_to_mel(f, scale).tolist(), abs=1e-9
        )


@pytest.mark.parametrize("scale", ["htk", "slaney"])
def test_filter_peaks_land_at_their_centre_frequency(scale):
    # a very fine FFT grid (0.5 Hz bins) so each triangle's peak is resolved
    n_freqs, sr, n_mels, f_min, f_max = 16001, 16000, 40, 50.0, 7600.0
    fb = mel_filterbank_torch(n_freqs, f_min, f_max, n_mels, sr, scale)  # (n_freqs, n_mels)
    bins_hz = np.linspace(0, sr // 2, n_freqs)
    if scale == "htk":
        mel = lambda f: 2595 * np.log10(1 + f / 700)
        inv = lambda m: 700 * (10 ** (m / 2595) - 1)
    else:
        mel = lambda f: np.where(f < 1000, f * 3 / 200, 15 + np.log(f / 1000) * 27 / np.log(6.4))
        inv = lambda m: np.where(m < 15, m * 200 / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))
    edges = inv(np.linspace(mel(f_min), mel(f_max), n_mels + 2))
    peaks = bins_hz[fb.argmax(0).numpy()]
    np.testing.assert_allclose(peaks, edges[1:-1], atol=0.5)  # within one bin
    assert torch.all((fb.max(0).values - 1).abs() < 0.02)  # triangles reach ~1 at the peak
    # zero outside [edge m, edge m+2]
    for m in (0, n_mels // 2, n_mels - 1):
        outside = (bins_hz < edges[m] - 0.5) | (bins_hz > edges[m + 2] + 0.5)
        assert torch.all(fb[torch.from_numpy(outside), m] == 0)


def test_default_filterbank_has_no_empty_filter():
    fb = mel_filterbank(CFG)
    assert fb.shape == (201, 64) and fb.dtype == torch.float32
    assert torch.all(fb.max(0).values > 0.3)


def _torchaudio_melscale():
    try:
        from torchaudio.functional import melscale_fbanks
    except Exception:
        return None
    return melscale_fbanks


@pytest.mark.skipif(_torchaudio_melscale() is None, reason="torchaudio does not import on this torch")
@pytest.mark.parametrize("scale", ["htk", "slaney"])
@pytest.mark.parametrize(
    "n_freqs, f_min, f_max, n_mels, sr", [(201, 0.0, 8000.0, 64, 16000), (257, 20.0, 7000.0, 80, 16000)]
)
def test_filterbank_matches_torchaudio(scale, n_freqs, f_min, f_max, n_mels, sr):
    ref = _torchaudio_melscale()(n_freqs, f_min, f_max, n_mels, sr, None, scale)
    ours = mel_filterbank_torch(n_freqs, f_min, f_max, n_mels, sr, scale)
    # same formulas in the same precision: equal up to float32 rounding of the op order
    torch.testing.assert_close(ours, ref.float(), atol=1e-7, rtol=0)


# ------------------------------------------------------------------------------------------- video


def test_video_resize_and_normalise():
    fz = VideoFeaturizer(CFG)
    frames = np.random.default_rng(0).integers(0, 256, size=(5, 48, 80, 3), dtype=np.uint8)
    frames[0] = 255
    frames[1] = 0
    feats, times = fz(frames, [0.0, 0.25, 0.5, 0.75, 1.0], t0=100.0)
    assert feats.shape == (5, 3, 64, 64) and feats.dtype == torch.float32
    torch.testing.assert_close(feats[0], torch.ones(3, 64, 64), atol=1e-5, rtol=0)
    torch.testing.assert_close(feats[1], -torch.ones(3, 64, 64), atol=1e-5, rtol=0)
    assert feats.min() >= -1.0 and feats.max() <= 1.0
    assert times.dtype == torch.float64 and times.tolist() == [100.0, 100.25, 100.5, 100.75, 101.0]
    # channel order is RGB, channel-first
    red = np.zeros((1, 64, 64, 3), dtype=np.uint8)
    red[..., 0] = 255
    r, _ = fz(red, [0.0])
    assert torch.all(r[0, 0] == 1.0) and torch.all(r[0, 1:] == -1.0)


def test_video_is_pure_per_frame():
    fz = VideoFeaturizer(CFG)
    frames = torch.randint(0, 256, (9, 70, 90, 3), dtype=torch.uint8)
    ts = torch.arange(9) * 0.25
    whole, t_whole = fz(frames, ts)
    parts = [fz(frames[a:b], ts[a:b]) for a, b in [(0, 1), (1, 5), (5, 9)]]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole)
    assert torch.equal(torch.cat([p[1] for p in parts]), t_whole)


def test_video_downscaling_is_antialiased():
    # a 1-pixel checkerboard averages to grey when downscaled 4×; plain bilinear would alias
    yy, xx = np.mgrid[:256, :256]
    board = (((yy + xx) % 2) * 255).astype(np.uint8)
    frames = np.repeat(board[None, :, :, None], 3, axis=3)  # (1, 256, 256, 3)
    feats, _ = VideoFeaturizer(CFG)(frames, [0.0])
    assert feats.abs().max() < 0.05


@pytest.mark.parametrize(
    "frames, ts, match",
    [
        (np.zeros((2, 8, 8, 3), dtype=np.float32), [0, 1], "uint8"),
        (np.zeros((2, 8, 8), dtype=np.uint8), [0, 1], r"\(T, H, W, 3\)"),
        (np.zeros((2, 8, 8, 3), dtype=np.uint8), [0.0], "shape"),
        (np.zeros((2, 8, 8, 3), dtype=np.uint8), [1.0, 0.5], "non-decreasing"),
        (np.zeros((2, 8, 8, 3), dtype=np.uint8), [0.0, float("inf")], "NaN or Inf"),
    ],
)
def test_video_bad_input(frames, ts, match):
    with pytest.raises(ValueError, match=match):
        VideoFeaturizer(CFG)(frames, ts)
