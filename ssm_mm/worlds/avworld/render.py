"""AVWorld's media: frames (shapes drawn on a dark background), sounds, and frame times.

Frames are 64x64 (``size``) RGB with optional pixel noise; each sound lives in its own frequency band
(:data:`~ssm_mm.worlds.avworld.scene.CLASSES`), faded in and out; frame times carry the timestamp
jitter and dropped frames of the config.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ssm_mm.worlds.avworld.scene import BACKGROUND, COLORS, Scene, Shape, Sound, _ms, _visible

if TYPE_CHECKING:
    from ssm_mm.worlds.avworld.config import AVWorldConfig

SOUND_AMPLITUDE = 0.25
_FADE = 0.01  # s: raised-cosine fade of every sound (no clicks, no broadband energy at its edges)


def shape_mask(kind: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """(size, size) bool mask of a shape of ``kind`` centred at pixel (cx, cy) with radius ``r``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5  # pixel centres
    dx, dy = xx - cx, yy - cy
    if kind == "circle":
        return dx * dx + dy * dy <= r * r
    if kind == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.8 * r
    if kind == "triangle":  # apex up
        return (dy <= 0.7 * r) & (np.abs(dx) <= 0.95 * r * (dy + r) / (1.7 * r))
    if kind == "cross":
        return ((np.abs(dx) <= 0.3 * r) & (np.abs(dy) <= r)) | ((np.abs(dy) <= 0.3 * r) & (np.abs(dx) <= r))
    if kind == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if kind == "bar":
        return (np.abs(dx) <= r) & (np.abs(dy) <= 0.4 * r)
    raise ValueError(f"unknown shape kind {kind!r}")


def shape_center(s: Shape, t: float, size: int) -> tuple[float, float, float]:
    """(cx, cy, radius) in pixels of shape ``s`` at time ``t`` in a ``size`` x ``size`` frame."""
    k = size / 64.0
    ax, ay, fx, fy, px, py = s.motion
    qx, qy = s.quadrant % 2, s.quadrant // 2
    cx = (16 + 32 * qx + ax * math.sin(2 * math.pi * fx * t + px)) * k
    cy = (16 + 32 * qy + ay * math.sin(2 * math.pi * fy * t + py)) * k
    return cx, cy, s.radius * k


def render_frame(scene: Scene, t: float, size: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """The frame at media time ``t``: (size, size, 3) uint8."""
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = BACKGROUND
    if noise > 0:
        img += rng.normal(0.0, noise * 128.0, size=img.shape).astype(np.float32)
    for s in _visible(scene, t):
        cx, cy, r = shape_center(s, t, size)
        img[shape_mask(s.kind, cx, cy, r, size)] = COLORS[s.color]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def sound_wave(sound: Sound, sample_rate: int) -> np.ndarray:
    """The waveform of one sound from its start: (round(duration·sr),) float32."""
    n = max(1, round((sound.end - sound.start) * sample_rate))
    t = np.arange(n, dtype=np.float64) / sample_rate
    c = sound.cls
    if c == "bell":
        x = np.sin(2 * np.pi * 1000.0 * t)
    elif c == "buzz":  # square wave's first three odd harmonics
        x = sum(np.sin(2 * np.pi * 110.0 * k * t) / k for k in (1, 3, 5)) * (4 / np.pi) * 0.8
    elif c == "chirp":  # 1.5 -> 2.5 kHz sweep every 0.5 s, each with its own 20 ms fades
        tau = np.mod(t, 0.5)
        x = np.sin(2 * np.pi * (1500.0 * tau + 1000.0 * tau * tau))
        x *= np.clip(np.minimum(tau, 0.5 - tau) / 0.02, 0.0, 1.0)
    elif c == "drum":  # a decaying 4-6 kHz noise burst every 0.25 s
        rng = np.random.default_rng(sound.seed)
        spec = np.fft.rfft(rng.normal(size=n))
        freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
        spec[(freqs < 4000.0) | (freqs > 6000.0)] = 0.0
        x = np.fft.irfft(spec, n)
        x /= max(1e-9, float(np.sqrt(np.mean(x * x))))
        x = np.clip(x, -2.0, 2.0) / 2.0  # peak 1 like the tones (mixes stay below clipping), RMS ~1/2
        x *= np.exp(-np.mod(t, 0.25) / 0.15)
    elif c == "whistle":  # 3 kHz, 40 Hz vibrato at 6 Hz
        x = np.sin(2 * np.pi * 3000.0 * t - (40.0 / 6.0) * np.cos(2 * np.pi * 6.0 * t))
    elif c == "horn":  # 700 Hz with 8 Hz tremolo
        x = np.sin(2 * np.pi * 700.0 * t) * (0.75 + 0.25 * np.sin(2 * np.pi * 8.0 * t))
    else:
        raise ValueError(f"unknown sound class {c!r}")
    fade = np.clip(np.minimum(t, t[-1] - t) / _FADE, 0.0, 1.0)
    fade = 0.5 - 0.5 * np.cos(np.pi * fade)  # raised cosine
    return (SOUND_AMPLITUDE * x * fade).astype(np.float32)


def frame_times(cfg: AVWorldConfig, stream: int, video_start: float) -> np.ndarray:
    """Presentation times of the frames that are kept: nominal ``video_start + k/fps``, plus jitter
    (rounded to 1 ms, strictly increasing; the first frame exactly at ``video_start``), minus drops."""
    rng = np.random.default_rng([cfg.seed, stream, 1])
    n = int(math.ceil((cfg.seconds - video_start) * cfg.fps - 1e-9))
    nominal = video_start + np.arange(n, dtype=np.float64) / cfg.fps
    jit = rng.uniform(-cfg.jitter, cfg.jitter, size=n) if cfg.jitter > 0 else np.zeros(n)
    keep = rng.random(n) >= cfg.drop  # drawn for every frame: the same frames survive at any jitter
    keep[0] = True
    t = np.round(nominal + jit, 3)
    t[0] = _ms(video_start)
    t = np.minimum(t, cfg.seconds - 0.001)
    for i in range(1, n):  # jitter < 0.45/fps keeps order; this only guards the 1 ms rounding
        t[i] = max(t[i], t[i - 1] + 0.001)
    return t[keep]
