"""Shared helpers for the benchmark scripts: machine info, warm-up + median timing, JSON output."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def sync() -> None:
    """Wait for queued GPU work (a no-op without CUDA), so wall-clock timings cover it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], warmup: int = 2, repeat: int = 5, min_time: float = 0.0) -> list[float]:
    """Run ``fn`` ``warmup`` times, then time ``repeat`` runs (more while under ``min_time`` seconds)."""
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def summarize(times: list[float]) -> dict:
    s = sorted(times)
    return {
        "median_s": statistics.median(s),
        "p99_s": s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))],
        "min_s": s[0],
        "n": len(s),
    }


def write_json(obj: dict, path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2) + "\n")
    return p


# ------------------------------------------------------------------------------ machine and load


def load_average() -> float:
    """1-minute load average (0.0 where the OS does not report it)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def wait_for_low_load(max_load: float = 1.5, max_wait_s: float = 120.0, poll_s: float = 5.0) -> dict:
    """Wait (up to ``max_wait_s``) until the 1-minute load average is at most ``max_load``.

    The benchmarks run on a shared machine: starting them while another job saturates the cores
    makes every figure noisy. Returns what was seen (for the JSON), and never fails: a busy machine
    only delays the run and is recorded.
    """
    t0 = time.perf_counter()
    before = load_average()
    while load_average() > max_load and time.perf_counter() - t0 < max_wait_s:
        time.sleep(poll_s)
    return {
        "load_before": before,
        "load_at_start": load_average(),
        "waited_s": round(time.perf_counter() - t0, 1),
    }


def set_threads(n: int) -> int:
    """Set torch's intra-op threads (0 = leave the default) and return the number in use."""
    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def rss_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc/self/statm``; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def percentiles(times: list[float], qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict:
    """Nearest-rank percentiles of ``times`` (seconds) as ``{"p50_s": ..., "p99_s": ..., ...}``,
    plus mean, max and count."""
    s = sorted(times)
    out = {f"p{round(q * 100)}_s": s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))] for q in qs}
    out.update(mean_s=statistics.fmean(s), max_s=s[-1], n=len(s))
    return out


# ----------------------------------------------------------------------------- models and media


REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "default.yaml"
BASELINE_CONFIG = REPO / "configs" / "baseline_transformer.yaml"
# the pair the streaming benchmarks measure side by side: name -> config
HYBRID_AND_BASELINE = {"hybrid": DEFAULT_CONFIG, "transformer": BASELINE_CONFIG}


def avworld_labels(classes: int = 4) -> list[str]:
    """The event-label vocabulary the trainer pins for AVWorld (``background`` first)."""
    from ssm_mm.worlds.avworld import CLASSES

    return ["background"] + [c.name for c in CLASSES[:classes]]


def build_model(config_path: str | os.PathLike, seed: int = 0, overrides: list[str] | None = None):
    """A freshly initialised :class:`MultimodalSSM` of a shipped config (eval mode).

    Speed and memory do not depend on the weights, so no trained checkpoint is needed; what does
    depend on them (how often the speak-now head fires and starts a generation) is measured apart.
    """
    from ssm_mm.config import load_config
    from ssm_mm.models.multimodal import MultimodalSSM

    cfg = load_config(config_path, overrides or [])
    torch.manual_seed(seed)
    return MultimodalSSM(cfg.model, cfg.features, avworld_labels(cfg.data.worlds["avworld"].classes)).eval()


@dataclass
class RenderedAV:
    """One AVWorld scene rendered in memory (frame ``j`` at ``j / fps``; audio sample 0 at time 0)."""

    frames: torch.Tensor  # (F, size, size, 3) uint8
    audio: torch.Tensor  # (N,) float32 at sample_rate
    scene: object  # ssm_mm.worlds.avworld.Scene
    config: object  # ssm_mm.worlds.avworld.AVWorldConfig


def render_avworld(
    seconds: float, fps: float = 4.0, sample_rate: int = 16000, size: int = 64, seed: int = 0
) -> RenderedAV:
    """AVWorld stream 0 of ``seed`` rendered in memory, as ``generate_stream`` renders it into a file
    (shapes + pixel noise; sounds + background noise), without the encode/decode round trip."""
    import numpy as np

    from ssm_mm.worlds.avworld import AVWorldConfig, make_scene, render_frame, sound_wave

    cfg = AVWorldConfig(seconds=seconds, fps=fps, size=size, sample_rate=sample_rate, seed=seed)
    scene = make_scene(cfg, 0)
    rng = np.random.default_rng(seed)
    frames = [render_frame(scene, j / fps, size, cfg.noise, rng) for j in range(round(seconds * fps))]
    n = round(seconds * sample_rate)
    audio = rng.normal(0.0, cfg.noise, size=n).astype(np.float32)
    for s in scene.sounds:
        wave, a = sound_wave(s, sample_rate), round(s.start * sample_rate)
        b = min(n, a + wave.shape[0])
        audio[a:b] += wave[: b - a]
    return RenderedAV(torch.from_numpy(np.stack(frames)), torch.from_numpy(audio), scene, cfg)


class AVWorldSource:
    """Endless AVWorld-like media, rendered in memory (no files, no ffmpeg), cut into live ticks.

    One AVWorld scene of ``seconds`` seconds (shapes drawn by
    :func:`ssm_mm.worlds.avworld.render_frame`, sounds by :func:`~ssm_mm.worlds.avworld.sound_wave`
    plus background noise, at the model's 16 kHz so the session does not resample) is rendered once
    and looped: the media of stream time ``t`` is the scene's media at ``t mod seconds``, so an hour
    of stream costs one scene of memory.

    ``push_tick(session, k)`` pushes what a live source has delivered when tick ``k`` can complete:
    the audio of ``[kτ, (k+1)τ)`` and every frame up to and including the first frame of tick ``k+1``
    (tick ``k`` owns ``kτ < t <= (k+1)τ``; its video is complete once a later frame exists), so each
    call processes exactly one tick of an ``auto_step`` session.
    """

    def __init__(
        self,
        fps: float = 4.0,
        sample_rate: int = 16000,
        tick_seconds: float = 0.5,
        seconds: float = 20.0,
        size: int = 64,
        seed: int = 0,
    ):
        av = render_avworld(seconds, fps, sample_rate, size, seed)
        self.fps, self.sr, self.tau, self.seconds = fps, sample_rate, tick_seconds, seconds
        self.frames, self.audio = av.frames, av.audio
        n = self.audio.shape[0]
        self.samples_per_tick = round(tick_seconds * sample_rate)
        if abs(self.samples_per_tick - tick_seconds * sample_rate) > 1e-9 or n % self.samples_per_tick:
            raise ValueError("AVWorldSource: a tick and the scene must hold whole numbers of samples/ticks")

    @classmethod
    def for_model(cls, model, **kwargs) -> AVWorldSource:
        """A source at ``model``'s frame rate and tick length (``kwargs``: the other constructor
        arguments)."""
        return cls(fps=model.features.fps, tick_seconds=model.features.tick_seconds, **kwargs)

    def _last_frame(self, k: int) -> int:
        """Index of the first frame of tick ``k + 1`` (the smallest j with j / fps > (k+1)·τ)."""
        return math.floor((k + 1) * self.tau * self.fps + 1e-9) + 1

    def tick_media(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(frames (F, H, W, 3) uint8, their times (F,) float64, audio (n,) float32) that a live
        source delivers for tick ``k`` (the frames after those of tick ``k - 1``)."""
        j0 = 0 if k == 0 else self._last_frame(k - 1) + 1
        idx = torch.arange(j0, self._last_frame(k) + 1)
        frames = self.frames[idx % self.frames.shape[0]]
        a = (k * self.samples_per_tick) % self.audio.shape[0]
        return frames, idx.to(torch.float64) / self.fps, self.audio[a : a + self.samples_per_tick]

    def push_tick(self, session, k: int) -> None:
        """Push tick ``k``'s media into ``session`` (video and/or audio, as the session declares);
        ticks must be pushed in order from 0."""
        frames, times, audio = self.tick_media(k)
        if "audio" in session.modalities:
            session.push_audio(audio, self.sr, k * self.tau)
        if "video" in session.modalities and frames.shape[0]:
            session.push_video(frames, times)
