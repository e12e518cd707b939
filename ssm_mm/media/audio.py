"""Audio decoding (PyAV) and band-limited resampling (torchaudio when it loads, else our own sinc).

``decode_audio`` reads the audio track of any container ffmpeg knows (mp4/mkv/webm/avi, wav, flac, ogg,
mp3, ...), mixes it to mono (mean of channels), resamples it and reports ``t0``, the media time of the
first returned sample, taken from the stream's own timestamps: an audio track that starts later (or
earlier) than the video keeps that offset. Gaps in the decoded timestamps are filled with silence and
overlaps trimmed, so sample ``i`` is at media time ``t0 + i / sample_rate`` for the whole clip.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ssm_mm.media.errors import MediaError
from ssm_mm.media.probe import open_container, probe_media, time_origin


@dataclass
class AudioClip:
    """Decoded mono audio: ``samples`` (N,) float32 in [-1, 1], sample ``i`` at ``t0 + i / sample_rate``."""

    samples: Tensor  # (N,) float32
    sample_rate: int  # Hz
    t0: float  # media time (seconds) of samples[0]

    @property
    def duration(self) -> float:
        """Seconds of audio held."""
        return self.samples.shape[0] / self.sample_rate

    @property
    def end(self) -> float:
        """Media time just after the last sample."""
        return self.t0 + self.duration


# ----------------------------------------------------------------------------------------------
# Resampling
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _torchaudio_resample() -> Callable | None:
    """``torchaudio.functional.resample`` when torchaudio imports on this torch, else None.

    torchaudio's compiled extension must match torch exactly; a CPU-only torch with a CUDA torchaudio
    (or none at all) fails at import, and then our own implementation below is used.
    """
    try:
        from torchaudio.functional import resample as ta_resample
    except Exception:  # ImportError, OSError (undefined symbols), RuntimeError: any failure to load
        return None
    return ta_resample


@functools.lru_cache(maxsize=32)
def sinc_resample_kernel(
    orig: int, new: int, lowpass_filter_width: int = 6, rolloff: float = 0.99
) -> tuple[Tensor, int]:
    """Polyphase windowed-sinc kernel for resampling by ``new / orig`` (both already divided by their gcd).

    Output sample ``k = q·new + j`` sits at input position ``p = q·orig + j·orig/new`` and is
    ``Σ_i x[q·orig + i] · h(i − j·orig/new)`` with the Hann-windowed ideal low-pass
    ``h(τ) = (f/orig)·sinc(f·τ/orig)·cos²(π·f·τ / (2·orig·W))`` for ``|f·τ/orig| ≤ W``, cut-off
    ``f = rolloff · min(orig, new)`` (in sample-rate units, i.e. the lower Nyquist frequency times
    ``2·rolloff``) and ``W = lowpass_filter_width`` zero crossings on each side. This is the filter of
    Smith's band-limited interpolation ("Digital Audio Resampling", J.O. Smith) with the parameters
    torchaudio uses by default, so both paths give the same numbers.

    Returns ``(kernel (new, 1, K) float64, width)`` where ``K = 2·width + orig``.
    """
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)  # half-width in input samples
    i = torch.arange(-width, width + orig, dtype=torch.float64)  # (K,) input offsets from q·orig
    j = torch.arange(new, dtype=torch.float64)[:, None]  # (new, 1) output phases
    x = (i[None, :] - j * orig / new) * (base / orig)  # (new, K) distance in cut-off periods
    x = x.clamp(-lowpass_filter_width, lowpass_filter_width)  # window is 0 at the clamp: taps vanish
    window = torch.cos(x * math.pi / (2 * lowpass_filter_width)) ** 2
    sinc = torch.where(x == 0, torch.ones_like(x), torch.sin(math.pi * x) / (math.pi * x))
    kernel = sinc * window * (base / orig)  # (new, K); base/orig gives unit DC gain
    return kernel[:, None, :], width  # (new, 1, K)


def sinc_resample(x: Tensor, orig_sr: int, new_sr: int) -> Tensor:
    """Our own band-limited sinc resampling of ``x`` (..., N) from ``orig_sr`` to ``new_sr`` Hz.

    Equivalent to ``torchaudio.functional.resample`` with its defaults (sinc_interp_hann, width 6,
    rolloff 0.99): output length ``ceil(N·new/orig)``, output sample 0 at the time of input sample 0,
    zeros assumed outside the signal. Runs as one strided ``conv1d`` (one output channel per phase).
    """
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    if orig == new:
        return x.clone()
    shape = x.shape
    n = shape[-1]
    kernel, width = sinc_resample_kernel(orig, new)
    kernel = kernel.to(dtype=x.dtype, device=x.device)
    xb = x.reshape(-1, 1, n)  # (B, 1, N)
    xb = torch.nn.functional.pad(xb, (width, width + orig))  # (B, 1, N + 2·width + orig)
    y = torch.nn.functional.conv1d(xb, kernel, stride=orig)  # (B, new, Q): phase j of block q
    y = y.transpose(1, 2).reshape(xb.shape[0], -1)  # (B, Q·new) interleaved: k = q·new + j
    target = math.ceil(new * n / orig)
    return y[:, :target].reshape(*shape[:-1], target)


def resample(x: Tensor, orig_sr: int, new_sr: int) -> Tensor:
    """Resample ``x`` (..., N) float from ``orig_sr`` to ``new_sr`` Hz along the last axis.

    ``torchaudio.functional.resample`` when torchaudio imports on this torch, else :func:`sinc_resample`
    (the same filter). Both must be positive integers.
    """
    if int(orig_sr) != orig_sr or int(new_sr) != new_sr or orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive integers, got {orig_sr} -> {new_sr}")
    if not torch.is_floating_point(x):
        raise ValueError(f"resample needs a floating-point tensor, got {x.dtype}")
    if orig_sr == new_sr:
        return x.clone()
    ta = _torchaudio_resample()
    if ta is not None:
        return ta(x, int(orig_sr), int(new_sr))
    return sinc_resample(x, int(orig_sr), int(new_sr))


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------

_INT_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2147483648.0, "s64": 9223372036854775808.0}


def _frame_to_float(frame) -> np.ndarray:
    """One decoded ``av.AudioFrame`` -> (C, n) float32 in [-1, 1], whatever its sample format."""
    arr = frame.to_ndarray()
    fmt = frame.format
    channels = frame.layout.nb_channels
    if not fmt.is_planar:
        arr = arr.reshape(-1, channels).T  # packed (1, n·C) interleaved -> (C, n)
    name = fmt.name.rstrip("p")  # planar and packed variants share a scale
    if name in ("flt", "dbl"):
        return arr.astype(np.float32, copy=False)
    if name == "u8":
        return ((arr.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if name in _INT_SCALE:
        return (arr.astype(np.float64) / _INT_SCALE[name]).astype(np.float32)
    raise ValueError(f"unsupported audio sample format {fmt.name!r}")


def _pick_audio_stream(container, path: Path, stream: str | int):
    if not container.streams.audio:
        raise MediaError(path, "no audio stream")
    if stream == "audio":
        return container.streams.best("audio") or container.streams.audio[0]
    if isinstance(stream, int) and not isinstance(stream, bool):
        if not 0 <= stream < len(container.streams.audio):
            raise MediaError(path, f"no audio stream #{stream} (file has {len(container.streams.audio)})")
        return container.streams.audio[stream]
    raise ValueError(f"stream must be 'audio' or an audio stream index, got {stream!r}")


def decode_audio(path: str | Path, sample_rate: int = 16000, stream: str | int = "audio") -> AudioClip:
    """Decode the audio of ``path`` to mono float32 at ``sample_rate`` Hz with its real start time.

    Args:
        path: any container with an audio track (a video file's own track, or wav/flac/ogg/mp3/...).
        sample_rate: output rate in Hz (resampled with :func:`resample`).
        stream: ``"audio"`` for the file's best audio stream, or the index among its audio streams.

    Returns:
        :class:`AudioClip` with ``samples`` (N,) float32 (mean of the channels), ``sample_rate`` and
        ``t0`` = media time of ``samples[0]`` from the stream's timestamps (see ``ssm_mm.media``).
        Samples before media time 0 (encoder priming with a negative timestamp) are dropped, so
        ``t0 >= 0``.

    Raises:
        MediaError: missing, zero-byte, corrupt or undecodable file, no audio stream, no samples.
    """
    import av

    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    container = open_container(path)
    path = Path(path)
    try:
        st = _pick_audio_stream(container, path, stream)
        origin = time_origin(container)
        chunks: list[np.ndarray] = []  # (n,) mono pieces at the source rate, in order
        src_rate: int | None = None
        t0: float | None = None
        pos = 0  # samples emitted so far at the source rate
        tol = 0  # samples: timestamp jitter we accept before inserting silence / trimming
        try:
            for frame in container.decode(st):
                if frame.samples == 0:
                    continue
                if src_rate is None:
                    src_rate = int(frame.sample_rate)
                    tb = float(frame.time_base) if frame.time_base is not None else 0.0
                    # A timestamp is only as precise as its time base (mkv: 1 ms); a few ms is inaudible.
                    tol = max(2, math.ceil(src_rate * max(tb, 0.005)))
                elif int(frame.sample_rate) != src_rate:
                    raise MediaError(
                        path, f"sample rate changes mid-stream ({src_rate} -> {frame.sample_rate})"
                    )
                mono = _frame_to_float(frame).mean(axis=0)  # (n,) mean of channels
                t = None if frame.pts is None else float(frame.pts * Fraction(frame.time_base) - origin)
                if t0 is None:
                    t0 = t if t is not None else stream_start_or_zero(st, origin)
                elif t is not None:
                    expected = round((t - t0) * src_rate)
                    if expected > pos + tol:  # a hole in the track: keep later samples at their time
                        chunks.append(np.zeros(expected - pos, dtype=np.float32))
                        pos = expected
                    elif expected < pos - tol:  # overlapping timestamps: drop what was already covered
                        mono = mono[pos - expected :]
                chunks.append(mono)
                pos += mono.shape[0]
        except av.error.FFmpegError as e:
            raise MediaError(path, f"corrupt audio: decoding failed ({e})") from e
        if src_rate is None or pos == 0:
            raise MediaError(path, "no audio samples decoded (empty or corrupt audio stream)")
    finally:
        container.close()
    samples = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    if abs(t0) < 0.5 / src_rate:  # rounding between time bases (µs vs 1/14112000 s), not an offset
        t0 = 0.0
    if t0 < 0:  # priming before media time 0: nothing in the manifest can refer to it
        cut = min(samples.shape[0], round(-t0 * src_rate))
        samples = samples[cut:]
        t0 = t0 + cut / src_rate
        if samples.shape[0] == 0:
            raise MediaError(path, "empty audio stream: every sample is before media time 0")
    x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    if src_rate != sample_rate:
        x = resample(x, src_rate, int(sample_rate))
    return AudioClip(samples=x.contiguous(), sample_rate=int(sample_rate), t0=float(t0))


def stream_start_or_zero(stream, origin: Fraction) -> float:
    """Media time of a stream's first timestamp from its header, 0 when unknown."""
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * Fraction(stream.time_base) - origin)


def has_audio(path: str | Path) -> bool:
    """Whether ``path`` has an audio stream (MediaError if the file is missing, empty or corrupt)."""
    try:
        return probe_media(path).has_audio
    except MediaError as e:
        if e.reason == "no video or audio stream":
            return False
        raise
