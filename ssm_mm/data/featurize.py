"""The one featurizer for every path (SPEC §3): audio -> causal log-mel tokens, video -> resized frames.

Training, offline evaluation and streaming all call these classes, and their output does not depend
on how the input was chunked:

* :class:`AudioFeaturizer` frames the signal *causally* with a carried overlap. STFT frame ``j``
  covers samples ``[j·hop − (n_fft − hop), j·hop + hop)`` of the stream (zeros before the stream
  start; no centring, no reflection padding), so frame ``j`` exists as soon as sample
  ``(j+1)·hop − 1`` has arrived. ``frames_per_token`` consecutive frames are stacked into one audio
  token; token ``k`` covers samples ``[k·P, (k+1)·P)`` (``P = samples_per_token``) and its time is
  the *end* of that span, ``t0 + (k+1)·P / sample_rate`` (docs/design.md). Pushing a stream in
  arbitrary pieces gives bit-identical tokens to pushing it at once: every frame is transformed on
  its own and the mel projection is accumulated in float64 (a float32 matmul's rounding depends on
  how many rows it is given).
* :class:`VideoFeaturizer` is pure per frame: uint8 RGB frames of any size -> antialiased bilinear
  resize to ``frame_size`` -> values in [-1, 1]. Patching into ``patches_per_frame`` tokens is the
  model's job.

The mel filterbank (HTK mel scale by default, no area normalisation, like torchaudio's
``MelSpectrogram``) is ``torchaudio.functional.melscale_fbanks`` when torchaudio imports, else
:func:`mel_filterbank_torch`, our implementation of the same formulas in the same float32 order, so
features do not depend on whether torchaudio is installed (a test compares the two where it is).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "FeaturizerConfig",
    "AudioFeaturizer",
    "AudioFeaturizerState",
    "audio_token_times",
    "VideoFeaturizer",
    "pixels_to_unit",
    "mel_filterbank",
    "mel_filterbank_torch",
    "hz_to_mel",
    "mel_to_hz",
]

# Relative tolerance for "this float is an integer multiple of that one" (0.1 s × 16 kHz = 1600.000…).
_MULTIPLE_TOL = 1e-6


def _integer_ratio(num: float, den: float) -> int | None:
    """``num / den`` when it is (within float error) a positive integer, else None."""
    r = num / den
    n = round(r)
    return n if n >= 1 and abs(r - n) <= _MULTIPLE_TOL * max(1.0, abs(r)) else None


@dataclass
class FeaturizerConfig:
    """Featurizer settings (SPEC §3 defaults). Plain primitives so OmegaConf can hold it.

    ``n_mels = 64``: with a 25 ms window at 16 kHz (201 FFT bins, 40 Hz apart) 64 HTK-mel filters are
    the widest set whose lowest filters still each cover an FFT bin (80+ leaves near-empty filters
    at the bottom); it is the common choice for audio-event models at 16 kHz (VGGish, PANNs), and
    gives audio tokens of 10 × 64 = 640 values.
    """

    sample_rate: int = 16000  # Hz; audio is resampled to this before featurizing
    n_fft: int = 400  # 25 ms analysis window (periodic Hann)
    hop: int = 160  # 10 ms between STFT frames
    n_mels: int = 64
    f_min: float = 0.0  # Hz, lowest mel-filter edge
    f_max: float | None = None  # Hz, highest mel-filter edge; None = sample_rate / 2
    mel_scale: str = "htk"  # "htk" (2595·log10(1 + f/700)) | "slaney" (linear < 1 kHz, log above)
    log_floor: float = 1e-6  # features are log(mel power + log_floor); silence -> log(1e-6) ≈ -13.8
    audio_token_seconds: float = 0.1  # one audio token per this many seconds (stacked mel frames)
    fps: float = 4.0  # video frames decoded per second
    frame_size: int = 64  # frames are resized to frame_size × frame_size
    patches_per_frame: int = 4  # g² patch tokens of (frame_size/g)² pixels per frame (the model patches)
    tick_seconds: float = 0.5  # processing/labeling unit; a multiple of audio_token_seconds

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the bad field. Called on construction (and by the featurizers)."""

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"FeaturizerConfig.{name}={getattr(self, name)!r}: {why}")

        for name in ("sample_rate", "n_fft", "hop", "n_mels", "frame_size", "patches_per_frame"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise bad(name, "must be a positive integer")
        for name in ("audio_token_seconds", "fps", "tick_seconds", "log_floor"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise bad(name, "must be a positive finite number")
        if self.n_fft < self.hop:
            raise bad("n_fft", f"must be >= hop ({self.hop})")
        if self.mel_scale not in ("htk", "slaney"):
            raise bad("mel_scale", "expected 'htk' or 'slaney'")
        nyquist = self.sample_rate / 2
        f_max = nyquist if self.f_max is None else self.f_max
        if not (0 <= self.f_min < f_max <= nyquist):
            raise bad("f_max", f"need 0 <= f_min ({self.f_min}) < f_max <= sample_rate/2 ({nyquist})")
        spt = _integer_ratio(self.audio_token_seconds * self.sample_rate, 1.0)
        if spt is None or spt % self.hop:
            raise bad(
                "audio_token_seconds",
                f"audio_token_seconds × sample_rate must be a whole multiple of hop ({self.hop} samples)",
            )
        if _integer_ratio(self.tick_seconds, self.audio_token_seconds) is None:
            raise bad(
                "tick_seconds",
                f"must be a whole multiple of audio_token_seconds ({self.audio_token_seconds})",
            )
        g = math.isqrt(self.patches_per_frame)
        if g * g != self.patches_per_frame or self.frame_size % g:
            raise bad(
                "patches_per_frame",
                f"must be a square g² with frame_size ({self.frame_size}) divisible by g (a g×g patch grid)",
            )

    # Derived sizes (properties, so they never disagree with the fields).
    @property
    def samples_per_token(self) -> int:
        """Audio samples per audio token, P (1600 by default)."""
        return round(self.audio_token_seconds * self.sample_rate)

    @property
    def frames_per_token(self) -> int:
        """STFT frames stacked into one audio token (10 by default)."""
        return self.samples_per_token // self.hop

    @property
    def audio_token_dim(self) -> int:
        """Width of one audio token: frames_per_token × n_mels (640 by default)."""
        return self.frames_per_token * self.n_mels

    @property
    def audio_tokens_per_tick(self) -> int:
        return round(self.tick_seconds / self.audio_token_seconds)

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------ mel filterbank


# Slaney (Auditory Toolbox) mel: linear below 1 kHz, logarithmic above.
_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_BREAK_MEL = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL  # 15
_SLANEY_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(hz: float | Tensor, mel_scale: str = "htk") -> float | Tensor:
    """Frequency (Hz) -> mel; a float in gives a float (float64 maths), a tensor keeps its dtype.

    HTK: ``2595·log10(1 + f/700)``. Slaney: ``f / (200/3)`` below 1 kHz (15 mel), then
    ``15 + log(f / 1000) / (log(6.4)/27)``.
    """
    if mel_scale not in ("htk", "slaney"):
        raise ValueError(f"mel_scale={mel_scale!r}: expected 'htk' or 'slaney'")
    if not isinstance(hz, Tensor):
        f = float(hz)
        if mel_scale == "htk":
            return 2595.0 * math.log10(1.0 + f / 700.0)
        if f < _SLANEY_BREAK_HZ:
            return f / _SLANEY_HZ_PER_MEL
        return _SLANEY_BREAK_MEL + math.log(f / _SLANEY_BREAK_HZ) / _SLANEY_LOGSTEP
    if mel_scale == "htk":
        return 2595.0 * torch.log10(1.0 + hz / 700.0)
    log_part = _SLANEY_BREAK_MEL + torch.log(hz / _SLANEY_BREAK_HZ) / _SLANEY_LOGSTEP
    return torch.where(hz >= _SLANEY_BREAK_HZ, log_part, hz / _SLANEY_HZ_PER_MEL)


def mel_to_hz(mel: Tensor, mel_scale: str = "htk") -> Tensor:
    """Inverse of :func:`hz_to_mel` for tensors (keeps the dtype)."""
    if mel_scale == "htk":
        return 700.0 * (torch.pow(10.0, mel / 2595.0) - 1.0)
    if mel_scale == "slaney":
        log_part = _SLANEY_BREAK_HZ * torch.exp(_SLANEY_LOGSTEP * (mel - _SLANEY_BREAK_MEL))
        return torch.where(mel >= _SLANEY_BREAK_MEL, log_part, _SLANEY_HZ_PER_MEL * mel)
    raise ValueError(f"mel_scale={mel_scale!r}: expected 'htk' or 'slaney'")


def mel_filterbank_torch(
    n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int, mel_scale: str = "htk"
) -> Tensor:
    """Triangular mel filterbank, (n_freqs, n_mels) float32, without normalisation (``norm=None``).

    The definition of ``torchaudio.functional.melscale_fbanks``: FFT bin centres are ``n_freqs``
    points evenly spaced on [0, sample_rate // 2]; the ``n_mels + 2`` filter edges are evenly spaced
    in mel between ``f_min`` and ``f_max``; filter ``m`` rises linearly from edge ``m`` to a peak of 1
    at edge ``m + 1`` and falls to 0 at edge ``m + 2`` (in Hz). The arithmetic runs in float32 with
    the mel range endpoints in float64, as torchaudio does, so both give the same bits.
    """
    bins_hz = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float32)  # (n_freqs,)
    lo, hi = hz_to_mel(float(f_min), mel_scale), hz_to_mel(float(f_max), mel_scale)
    edges_hz = mel_to_hz(torch.linspace(lo, hi, n_mels + 2, dtype=torch.float32), mel_scale)  # (n_mels + 2,)
    width = edges_hz[1:] - edges_hz[:-1]  # (n_mels + 1,)
    dist = edges_hz[None, :] - bins_hz[:, None]  # (n_freqs, n_mels + 2): edge minus bin frequency
    rising = -dist[:, :-2] / width[:-1]  # (n_freqs, n_mels): 0 at the left edge, 1 at the peak
    falling = dist[:, 2:] / width[1:]  # (n_freqs, n_mels): 1 at the peak, 0 at the right edge
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


def _torchaudio_fbanks():
    """torchaudio's melscale_fbanks, or None when torchaudio cannot be imported on this torch."""
    try:
        from torchaudio.functional import melscale_fbanks
    except Exception:  # ImportError, or OSError/RuntimeError from a CUDA-linked extension on CPU torch
        return None
    return melscale_fbanks


def mel_filterbank(cfg: FeaturizerConfig) -> Tensor:
    """The featurizer's mel filterbank (n_freqs, n_mels) float32; torchaudio's when it imports."""
    f_max = cfg.sample_rate / 2 if cfg.f_max is None else cfg.f_max
    ta = _torchaudio_fbanks()
    if ta is not None:
        return ta(
            cfg.n_freqs, float(cfg.f_min), float(f_max), cfg.n_mels, cfg.sample_rate, None, cfg.mel_scale
        ).float()
    return mel_filterbank_torch(cfg.n_freqs, cfg.f_min, f_max, cfg.n_mels, cfg.sample_rate, cfg.mel_scale)


# ------------------------------------------------------------------------------------------- audio


@dataclass
class AudioFeaturizerState:
    """Carried state of the causal audio featurizer (bounded: never grows with the stream).

    tail:      (n_tail,) float32 samples not yet fully consumed by STFT frames: the overlap the
               next frame needs plus a partial hop; ``n_fft - hop <= n_tail < n_fft``. Starts as
               ``n_fft - hop`` zeros (the causal left padding).
    pending:   (n_pending, n_mels) float32 log-mel frames of the audio token in progress,
               ``n_pending < frames_per_token``.
    n_samples: samples pushed since the stream start (counts the tokens already emitted).
    t0:        stream-clock time (s) of sample 0.
    """

    tail: Tensor
    pending: Tensor
    n_samples: int
    t0: float

    def nbytes(self) -> int:
        """Bytes held (tensors + the two scalars)."""
        return (
            self.tail.numel() * self.tail.element_size()
            + self.pending.numel() * self.pending.element_size()
            + 16
        )

    def to_dict(self) -> dict[str, Tensor]:
        """Plain tensors, for snapshots (safetensors / ``torch.save(weights_only=True)``)."""
        return {
            "tail": self.tail.clone(),
            "pending": self.pending.clone(),
            "n_samples": torch.tensor(self.n_samples, dtype=torch.int64),
            "t0": torch.tensor(self.t0, dtype=torch.float64),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Tensor]) -> AudioFeaturizerState:
        want = {"tail", "pending", "n_samples", "t0"}
        if set(d) != want:
            raise ValueError(f"AudioFeaturizerState.from_dict: expected keys {sorted(want)}, got {sorted(d)}")
        return cls(
            tail=d["tail"].to(torch.float32).clone(),
            pending=d["pending"].to(torch.float32).clone(),
            n_samples=int(d["n_samples"]),
            t0=float(d["t0"]),
        )


def _as_samples(samples) -> Tensor:
    """(N,) float array-like -> contiguous float32 tensor; ValueError on wrong shape or non-finite."""
    if isinstance(samples, np.ndarray):
        samples = torch.from_numpy(samples)
    if not isinstance(samples, Tensor):
        raise ValueError(f"audio samples must be a numpy array or torch tensor, got {type(samples).__name__}")
    if samples.ndim != 1:
        raise ValueError(f"audio samples must be 1-D (N,) mono, got shape {tuple(samples.shape)}")
    if not samples.is_floating_point():
        raise ValueError(f"audio samples must be floating point in [-1, 1], got dtype {samples.dtype}")
    x = samples.detach().to(device="cpu", dtype=torch.float32).contiguous()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("audio samples contain NaN or Inf")
    return x


def audio_token_times(cfg: FeaturizerConfig, t0: float, first: int, n: int) -> Tensor:
    """(n,) float64 stream-clock end times of audio tokens ``first .. first+n-1``:
    ``t0 + (k+1)·P / sample_rate`` (``t0``: time of sample 0).

    Computed from integer sample counts, so times never drift and do not depend on chunking; every
    path (featurizer, dataset, cache) uses this one formula so the floats agree bit for bit.
    """
    ends = torch.arange(first + 1, first + n + 1, dtype=torch.float64) * cfg.samples_per_token  # (n,) samples
    return float(t0) + ends / cfg.sample_rate


def audio_token_time(cfg: FeaturizerConfig, t0: float, k: int) -> float:
    """``audio_token_times(cfg, t0, k, 1)[0]`` as a Python float, without a tensor: the same float64
    operations on the same exact integers, so the same bits."""
    return float(t0) + ((int(k) + 1) * cfg.samples_per_token) / cfg.sample_rate


class AudioFeaturizer:
    """Causal log-mel audio tokens; the same function for a whole file and for a live stream.

    ``feats, times, state = fz(samples, state)`` with samples (N,) float32 at ``cfg.sample_rate``:

    * ``feats``  (n_tok, frames_per_token · n_mels) float32, the tokens completed by these samples;
      row layout is frame-major: ``feats[k].view(frames_per_token, n_mels)[f]`` is frame ``f`` of
      token ``k``. Values are ``log(mel power + log_floor)`` (natural log, unnormalised: the model's
      audio frontend normalises).
    * ``times``  (n_tok,) float64, the stream-clock time of the *end* of the audio each token covers.
    * ``state``  the new :class:`AudioFeaturizerState` (the input state is not modified).

    Samples of a token that is not complete yet stay in the state; at the end of a stream an
    incomplete last token is never emitted (it does not exist). The object holds only constants
    (window, filterbank), so one instance can serve many streams.
    """

    # Frames transformed per block, to bound the temporary memory of an hour-long file (~13 MB).
    _BLOCK_FRAMES = 8192

    def __init__(self, cfg: FeaturizerConfig):
        cfg.validate()
        self.cfg = cfg
        self.window = torch.hann_window(cfg.n_fft, periodic=True, dtype=torch.float32)  # (n_fft,)
        self.fbank = mel_filterbank(cfg).to(torch.float64)  # (n_freqs, n_mels)

    @property
    def token_dim(self) -> int:
        return self.cfg.audio_token_dim

    def init_state(self, t0: float = 0.0) -> AudioFeaturizerState:
        """State at the start of a stream whose first sample is at stream-clock time ``t0``."""
        cfg = self.cfg
        return AudioFeaturizerState(
            tail=torch.zeros(cfg.n_fft - cfg.hop, dtype=torch.float32),
            pending=torch.zeros(0, cfg.n_mels, dtype=torch.float32),
            n_samples=0,
            t0=float(t0),
        )

    def token_times(self, t0: float, first: int, n: int) -> Tensor:
        """(n,) float64 end times of tokens ``first .. first+n-1`` (see :func:`audio_token_times`)."""
        return audio_token_times(self.cfg, t0, first, n)

    def log_mel(self, frames: Tensor) -> Tensor:
        """(n, n_fft) float32 raw sample frames -> (n, n_mels) float32 log-mel; each row on its own."""
        spec = torch.fft.rfft(frames * self.window, n=self.cfg.n_fft)  # (n, n_freqs) complex64
        power = spec.real.square() + spec.imag.square()  # (n, n_freqs)
        mel = power.to(torch.float64) @ self.fbank  # (n, n_mels), float64 so rounding is row-independent
        return torch.log(mel + self.cfg.log_floor).to(torch.float32)

    def __call__(self, samples, state: AudioFeaturizerState | None = None):
        cfg = self.cfg
        x = _as_samples(samples)
        if state is None:
            state = self.init_state()
        if state.tail.shape != (state.tail.shape[0],) or not (
            cfg.n_fft - cfg.hop <= state.tail.shape[0] < cfg.n_fft
        ):
            raise ValueError(
                f"AudioFeaturizerState.tail has shape {tuple(state.tail.shape)}: not a state of this "
                f"featurizer (n_fft={cfg.n_fft}, hop={cfg.hop})"
            )
        buf = torch.cat([state.tail, x])  # (n_tail + N,), starts at sample frames_done·hop − (n_fft − hop)
        n_frames = 0 if buf.shape[0] < cfg.n_fft else (buf.shape[0] - cfg.n_fft) // cfg.hop + 1
        logmel = [state.pending]
        if n_frames:
            frames = buf.unfold(0, cfg.n_fft, cfg.hop)  # (n_frames, n_fft) view, frame i starts at i·hop
            for i in range(0, n_frames, self._BLOCK_FRAMES):
                logmel.append(self.log_mel(frames[i : i + self._BLOCK_FRAMES]))
        allmel = torch.cat(logmel)  # (n_pending + n_frames, n_mels)
        fpt = cfg.frames_per_token
        n_tok = allmel.shape[0] // fpt
        tokens = allmel[: n_tok * fpt].reshape(n_tok, fpt * cfg.n_mels)  # (n_tok, frames_per_token·n_mels)
        first = state.n_samples // cfg.samples_per_token  # index of the first token emitted now
        new_state = AudioFeaturizerState(
            tail=buf[n_frames * cfg.hop :].clone(),
            pending=allmel[n_tok * fpt :].clone(),
            n_samples=state.n_samples + x.shape[0],
            t0=state.t0,
        )
        return tokens, self.token_times(state.t0, first, n_tok), new_state


# ------------------------------------------------------------------------------------------- video


def as_frames(frames, error: type[ValueError] = ValueError) -> Tensor:
    """(T, H, W, 3) uint8 numpy/torch -> the same frames as a CPU tensor; ``error`` (a ValueError
    class: the streaming session passes its own) with a one-line message naming what is wrong."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, Tensor):
        raise error(f"video frames must be a numpy array or torch tensor, got {type(frames).__name__}")
    if frames.dtype != torch.uint8:
        raise error(f"video frames must be uint8 RGB, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise error(f"video frames must have shape (T, H, W, 3) with H, W > 0, got {tuple(frames.shape)}")
    return frames.detach().cpu()


def _as_times(timestamps, n: int, what: str) -> Tensor:
    ts = torch.as_tensor(
        np.asarray(timestamps, dtype=np.float64) if not isinstance(timestamps, Tensor) else timestamps
    )
    ts = ts.detach().cpu().to(torch.float64)
    if ts.shape != (n,):
        raise ValueError(f"{what} must have shape ({n},), got {tuple(ts.shape)}")
    if not bool(torch.isfinite(ts).all()):
        raise ValueError(f"{what} contain NaN or Inf")
    if n > 1 and bool((ts[1:] < ts[:-1]).any()):
        i = int(torch.nonzero(ts[1:] < ts[:-1])[0])
        raise ValueError(
            f"{what} must be non-decreasing: t[{i}]={ts[i].item()} > t[{i + 1}]={ts[i + 1].item()}"
        )
    return ts


class VideoFeaturizer:
    """Frames (T, H, W, 3) uint8 of any size -> (T, 3, S, S) float32 in [-1, 1] (S = frame_size).

    ``feats, times = fz(frames, timestamps, t0)``: antialiased bilinear resize
    (``F.interpolate(antialias=True)``, so downscaling averages instead of aliasing), then
    ``x / 127.5 − 1``; ``times = t0 + timestamps`` (float64). Each frame is processed on its own, so
    chunking cannot change the result.
    """

    _BLOCK = 64  # frames resized at once (bounds the float copy of large source frames)

    def __init__(self, cfg: FeaturizerConfig):
        cfg.validate()
        self.cfg = cfg

    def __call__(self, frames, timestamps, t0: float = 0.0) -> tuple[Tensor, Tensor]:
        x = as_frames(frames)
        ts = _as_times(timestamps, x.shape[0], "video timestamps")
        s = self.cfg.frame_size
        out = torch.empty(x.shape[0], 3, s, s, dtype=torch.float32)  # (T, 3, S, S)
        for i in range(0, x.shape[0], self._BLOCK):
            chunk = x[i : i + self._BLOCK].permute(0, 3, 1, 2).to(torch.float32)  # (t, 3, H, W)
            if chunk.shape[-2:] != (s, s):
                chunk = F.interpolate(
                    chunk, size=(s, s), mode="bilinear", antialias=True, align_corners=False
                )
            out[i : i + self._BLOCK] = pixels_to_unit(chunk)
        return out, float(t0) + ts


def pixels_to_unit(x: Tensor) -> Tensor:
    """Pixel values (uint8, or float after resizing) -> float32 in [-1, 1]: ``x / 127.5 − 1``, the
    video featurizer's normalisation (the feature cache undoes and redoes it exactly)."""
    out = x.to(torch.float32, copy=True).div_(127.5).sub_(1.0)  # one new tensor (the data path's hot spot)
    if x.dtype != torch.uint8:  # resampling weights sum to 1 only up to rounding (255 -> 254.99998)
        out.clamp_(-1.0, 1.0)
    return out
