"""Writing AVWorld datasets: streams as mp4 files plus a §4 manifest, cached by config.

Each stream is an mp4 file (h264 video, 64x64 at ``fps``, 4:4:4 so colours stay exact at shape edges;
aac audio, 16 kHz mono) plus one line of ``manifest.jsonl``; ``scenes.jsonl`` lists every shape,
sound and AV event (for inspection and plots). Timing knobs: per-frame timestamp jitter, dropped
frames, audio/video offset (one track starts later; ground truth stays on the video clock, i.e.
media time), clock start ``t0`` (manifest field). An offset only removes objects that would start
before both tracks are running.

Determinism: same config -> byte-identical manifest and identical decoded media (single-threaded
encoders; every random draw comes from a ``numpy`` generator seeded by ``(seed, stream, purpose)``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ssm_mm.data.manifest import Segment, StreamSpec, write_manifest
from ssm_mm.worlds.avworld.config import SPREAD_KNOBS, AVWorldConfig
from ssm_mm.worlds.avworld.dialogue import make_dialogue
from ssm_mm.worlds.avworld.render import frame_times, render_frame, sound_wave
from ssm_mm.worlds.avworld.scene import _ms, _trim_scene, event_attributes, make_scene

GENERATOR_VERSION = 5  # bump when the output for a given config changes (invalidates caches)
SPLITS = ("train", "val")


def stream_config(cfg: AVWorldConfig, i: int) -> AVWorldConfig:
    """The config stream ``i`` is rendered with: its own jitter / drop / offset drawn within the
    spreads (seeded by ``(seed, stream)``), spreads zeroed; ``cfg`` itself when there are none."""
    if not any(getattr(cfg, k) for k in SPREAD_KNOBS):
        return cfg
    u = np.random.default_rng([cfg.seed, i, 5]).random(3)
    return dataclasses.replace(
        cfg,
        # whole milliseconds, rounded towards the nominal value (so each stays within its bound)
        jitter=math.floor((cfg.jitter + u[0] * cfg.jitter_spread) * 1000) / 1000,
        drop=math.floor((cfg.drop + u[1] * cfg.drop_spread) * 1000) / 1000,
        offset=math.trunc((cfg.offset + (2 * u[2] - 1) * cfg.offset_spread) * 1000) / 1000,
        **{k: 0.0 for k in SPREAD_KNOBS},
    )


def nominal(cfg: AVWorldConfig) -> AVWorldConfig:
    """``cfg`` with the training-only knobs reset: timing spreads 0, the uniform question mix.

    Held-out streams (validation, sweep points) are rendered at the nominal jitter / drop / offset
    and ask every question type alike, whatever the training streams do.
    """
    return dataclasses.replace(cfg, question_mix={}, **{k: 0.0 for k in SPREAD_KNOBS})


def _stream_id(cfg: AVWorldConfig, i: int) -> str:
    return f"avw{cfg.seed}-{i:05d}"


def generate_stream(cfg: AVWorldConfig, i: int, out_dir: Path) -> tuple[StreamSpec, dict]:
    """Render stream ``i`` into ``out_dir/media/<id>.mp4``; return its manifest entry and scene record."""
    from ssm_mm.media.write import MediaWriter

    sid = _stream_id(cfg, i)
    cfg = stream_config(cfg, i)
    video_start = -cfg.offset if cfg.offset < 0 else 0.0  # (not max(): that can return -0.0)
    audio_start = cfg.offset if cfg.offset > 0 else 0.0
    first = abs(cfg.offset) + 0.5  # objects start once both tracks run
    scene = make_scene(cfg, i)
    if cfg.offset != 0.0:
        scene = _trim_scene(scene, first)
    dialogue = make_dialogue(cfg, i, scene, first)
    times = frame_times(cfg, i, video_start)

    sr = cfg.sample_rate
    n_total = round(cfg.seconds * sr)
    n_audio0 = round(audio_start * sr)
    waves = [(round(s.start * sr), sound_wave(s, sr)) for s in scene.sounds]
    path = out_dir / "media" / f"{sid}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    pix_rng = np.random.default_rng([cfg.seed, i, 3])
    # yuv444p: at 64x64, 4:2:0 chroma (32x32) smears a shape's colour into 2-pixel blocks at its edges.
    with MediaWriter(
        path,
        width=cfg.size,
        height=cfg.size,
        fps=cfg.fps,
        sample_rate=sr,
        audio_t0=n_audio0 / sr,
        pix_fmt="yuv444p",
    ) as w:
        fi = 0
        n_chunks = math.ceil(n_total / sr)
        for k in range(n_chunks):  # one second at a time, audio and video interleaved by time
            a, b = max(k * sr, n_audio0), min((k + 1) * sr, n_total)
            if b > a:
                noise_rng = np.random.default_rng([cfg.seed, i, 4, k])  # seeded per second of audio
                x = np.zeros(b - a, dtype=np.float32)
                if cfg.noise > 0:
                    x += noise_rng.normal(0.0, cfg.noise, size=b - a).astype(np.float32)
                for s0, wave in waves:
                    lo, hi = max(a, s0), min(b, s0 + wave.shape[0])
                    if lo < hi:
                        x[lo - a : hi - a] += wave[lo - s0 : hi - s0]
                w.write_audio(x)
            while fi < len(times) and times[fi] < (k + 1):
                w.write_frame(
                    render_frame(scene, float(times[fi]), cfg.size, cfg.noise, pix_rng), float(times[fi])
                )
                fi += 1

    # each AV event with the look of the screen during it: the targets of model.recall_attributes
    segments = [
        Segment(e.start, e.end, e.cls, event_attributes(scene, e))
        for e in sorted(scene.events, key=lambda e: e.start)
    ]
    spec = StreamSpec(
        id=sid,
        video=path,
        audio=None,
        audio_from_video=True,
        duration=float(cfg.seconds),
        t0=float(cfg.clock),
        dialogue=dialogue,
        segments=segments,
    )
    record = {
        "id": sid,
        "video_start": _ms(video_start),
        "audio_start": _ms(audio_start),
        "frames": len(times),
        "timing": {"jitter": cfg.jitter, "drop": cfg.drop, "offset": cfg.offset},
        "shapes": [dataclasses.asdict(s) for s in scene.shapes],
        "sounds": [dataclasses.asdict(s) for s in scene.sounds],
        "events": [dataclasses.asdict(e) for e in scene.events],
    }
    return spec, record


def _generate_one(args):  # top-level for process pools
    cfg, i, out_dir = args
    return generate_stream(cfg, i, Path(out_dir))


def generate(out_dir: str | Path, config: AVWorldConfig | None = None, *, workers: int = 1, **knobs) -> Path:
    """Generate an AVWorld dataset into ``out_dir`` and return its manifest path.

    ``out_dir/manifest.jsonl`` (SPEC §4), ``out_dir/media/<id>.mp4``, ``out_dir/scenes.jsonl`` (every
    shape, sound and AV event, for inspection and plots) and ``out_dir/config.json``.

    Args:
        config: an :class:`AVWorldConfig`; ``knobs`` override its fields (``streams=``, ``seconds=``,
            ``fps=``, ``jitter=``, ``drop=``, ``offset=``, ``noise=``, ``clock=``, ``density=``,
            ``classes=``, ``seed=``, ...).
        workers: processes rendering streams in parallel (the output does not depend on it).
    """
    cfg = AVWorldConfig.from_knobs(config, **knobs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(cfg, i, str(out_dir)) for i in range(cfg.streams)]
    if workers > 1 and cfg.streams > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
            results = list(ex.map(_generate_one, jobs))
    else:
        results = [_generate_one(j) for j in jobs]
    with open(out_dir / "scenes.jsonl", "w", encoding="utf-8") as f:
        for _, record in results:
            f.write(json.dumps(record) + "\n")
    (out_dir / "config.json").write_text(
        json.dumps({"generator_version": GENERATOR_VERSION, **cfg.generator_knobs()}, indent=1) + "\n"
    )
    return write_manifest([spec for spec, _ in results], out_dir / "manifest.jsonl")


def read_scenes(path: str | Path) -> dict[str, dict]:
    """``scenes.jsonl`` (written by :func:`generate` beside the manifest) as {stream id: scene record};
    ValueError naming the file (and line) when it is missing or a line is not a scene record."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such scenes file (AVWorld writes scenes.jsonl beside manifest.jsonl)")
    out = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                out[d["id"]] = d
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{i}: not a scene line ({e})") from None
    return out


def cache_key(cfg: AVWorldConfig) -> str:
    """Folder name of a config in the cache: changes with any knob and with :data:`GENERATOR_VERSION`.

    The timing spreads and question mix enter the key only when not at their defaults, so caches made
    before they existed stay valid.
    """
    knobs = cfg.generator_knobs()
    for name in SPREAD_KNOBS:
        if knobs[name] == 0:
            del knobs[name]
    if not knobs["question_mix"]:
        del knobs["question_mix"]
    blob = json.dumps({"v": GENERATOR_VERSION, **knobs}, sort_keys=True)
    return "avworld-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def ensure_avworld(
    cache_dir: str | Path, config: AVWorldConfig | None = None, *, workers: int = 1, **knobs
) -> Path:
    """The manifest of the AVWorld dataset for these knobs under ``cache_dir``, generated on first use.

    Generation goes to a temporary folder that is renamed into place, so an interrupted run leaves no
    half dataset and concurrent callers (e.g. several ranks) end up sharing one complete copy.
    """
    cfg = AVWorldConfig.from_knobs(config, **knobs)
    cache_dir = Path(cache_dir)
    final = cache_dir / cache_key(cfg)
    manifest = final / "manifest.jsonl"
    if manifest.is_file():
        return manifest
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=cache_dir))
    try:
        generate(tmp, cfg, workers=workers)
        try:
            os.rename(tmp, final)
        except OSError:
            if not manifest.is_file():  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def ensure(cache_dir: str | Path, cfg: AVWorldConfig, split: str = "train", *, workers: int = 1) -> Path:
    """The manifest of ``split`` of the world ``cfg`` under ``cache_dir``, generated on first use.

    ``"train"``: ``cfg.streams`` streams of ``cfg.seed``, as configured; ``"val"``: ``cfg.val_streams``
    streams of ``cfg.val_seed`` at the nominal knobs (:func:`nominal`).
    """
    if split == "train":
        return ensure_avworld(cache_dir, cfg, workers=workers)
    if split == "val":
        held_out = dataclasses.replace(nominal(cfg), streams=cfg.val_streams, seed=cfg.val_seed)
        return ensure_avworld(cache_dir, held_out, workers=workers)
    raise ValueError(f"AVWorld split {split!r}: expected one of {list(SPLITS)}")
