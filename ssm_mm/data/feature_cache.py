"""Decoded, featurized media of one stream, cached on disk.

:func:`load_features` decodes a stream's video and audio through ``ssm_mm.media`` and runs the one
featurizer (:mod:`ssm_mm.data.featurize`). With a cache folder, the features are stored once per media
file content and featurizer settings (atomic writes; loaded back as read-only memmaps), so every
epoch, worker and rank after the first reads arrays instead of decoding. Frames that were not resized
are exactly their uint8 pixels normalised, so they are stored as those pixels (a quarter of the
float32 bytes: 26 hours of 64x64 frames at 4 fps take 4.6 GB instead of 18.5, less to write and to
keep in the page cache) and normalised again, bit for bit, when read (:class:`PixelFrames`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssm_mm.data.featurize import AudioFeaturizer, FeaturizerConfig, VideoFeaturizer, pixels_to_unit
from ssm_mm.media import MediaError, decode_audio, decode_video

__all__ = ["StreamFeatures", "PixelFrames", "load_features"]

_CACHE_FORMAT = 1  # bump when the cached arrays change meaning


# --------------------------------------------------------------------------------- stream features


@dataclass
class StreamFeatures:
    """Featurized media of one stream, in *media time* (the stream's ``t0`` is added later).

    video:       (F, 3, S, S) float32 frames (numpy; from the cache a read-only memmap, or a
                 :class:`PixelFrames` over one), or None when the stream has no video.
    video_times: (F,) float64 media time of each frame.
    audio:       (A, D) float32 audio tokens, or None when the stream has no audio.
    audio_t0:    media time of the first audio sample; token k ends at ``audio_t0 + (k+1)·P/sr``.
    """

    video: np.ndarray | PixelFrames | None
    video_times: np.ndarray
    audio: np.ndarray | None
    audio_t0: float = 0.0

    @property
    def n_frames(self) -> int:
        return 0 if self.video is None else self.video.shape[0]

    @property
    def n_audio(self) -> int:
        return 0 if self.audio is None else self.audio.shape[0]


class PixelFrames:
    """Video features kept as uint8 pixels (F, 3, S, S): indexing returns the float32 features
    (:func:`pixels_to_unit`, exactly what the featurizer computed). Read-only, like the memmap it wraps.

    Supports what the data pipeline does with ``StreamFeatures.video``: ``len``, ``shape``, ``ndim``,
    ``dtype``, basic and integer-array indexing, and ``np.asarray`` (the whole array as float32).
    """

    dtype = np.dtype(np.float32)

    def __init__(self, pixels: np.ndarray):
        if pixels.dtype != np.uint8 or pixels.ndim != 4:
            raise ValueError(
                f"PixelFrames: expected uint8 (F, 3, S, S) pixels, got {pixels.dtype} {pixels.shape}"
            )
        self.pixels = pixels

    @property
    def shape(self) -> tuple[int, ...]:
        return self.pixels.shape

    @property
    def ndim(self) -> int:
        return 4

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        return pixels_to_unit(torch.from_numpy(np.array(self.pixels[idx]))).numpy()  # a new array

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        a = self[:]
        return a if dtype is None else a.astype(dtype, copy=False)


_PIXEL_BLOCK = 256  # frames checked at once: bounds the float temporaries (a 3000-s stream is 590 MB)


def _as_pixels(video: np.ndarray) -> np.ndarray | None:
    """``video``'s uint8 pixels when :func:`pixels_to_unit` gives it back bit for bit (frames that were
    not resized), else None. Checked block by block in float32: a pixel's feature is within ~1e-5 of
    ``p / 127.5 - 1`` after the round trip, far from the 0.5 that would round to another pixel, and the
    bitwise comparison decides either way."""
    pixels = np.empty(video.shape, dtype=np.uint8)
    for i in range(0, video.shape[0], _PIXEL_BLOCK):
        block = np.ascontiguousarray(video[i : i + _PIXEL_BLOCK], dtype=np.float32)
        p = np.clip(np.rint((block + 1.0) * 127.5), 0, 255).astype(np.uint8)
        if not np.array_equal(
            pixels_to_unit(torch.from_numpy(p)).numpy().view(np.uint32), block.view(np.uint32)
        ):
            return None
        pixels[i : i + _PIXEL_BLOCK] = p
    return pixels


def _file_digest(path: Path, _memo: dict = {}) -> str:  # noqa: B006 - deliberate per-process memo
    """sha256 of a file's content (memoised per process by path, size and mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _memo[key] = h.hexdigest()
    return _memo[key]


def _cache_key(kind: str, path: Path, settings: dict) -> str:
    blob = json.dumps(
        {"format": _CACHE_FORMAT, "kind": kind, "file": _file_digest(path), "cfg": settings}, sort_keys=True
    )
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:32]}"


def _cache_load(cache_dir: Path, key: str) -> dict[str, Any] | None:
    d = cache_dir / key
    if not (d / "meta.json").is_file():
        return None
    meta = json.loads((d / "meta.json").read_text())
    arrays = {name: np.load(d / f"{name}.npy", mmap_mode="r") for name in meta["arrays"]}
    return {**meta["scalars"], **arrays}


def _cache_store(cache_dir: Path, key: str, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
    """Write atomically: into a temporary folder, then rename (a concurrent writer's copy wins)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
    try:
        for name, a in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(a))
        (tmp / "meta.json").write_text(json.dumps({"arrays": sorted(arrays), "scalars": scalars}))
        try:
            os.rename(tmp, cache_dir / key)
        except OSError:  # another process stored the same key first
            pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _video_features(
    path: Path, cfg: FeaturizerConfig, cache_dir: Path | None
) -> tuple[np.ndarray, np.ndarray]:
    key = None
    if cache_dir is not None:
        key = _cache_key("video", path, {"fps": cfg.fps, "frame_size": cfg.frame_size})
        hit = _cache_load(cache_dir, key)
        if hit is not None:
            video = PixelFrames(hit["pixels"]) if "pixels" in hit else hit["video"]
            return video, np.array(hit["video_times"])  # times are small: a writable copy
    clip = decode_video(path, fps=cfg.fps)
    feats, times = VideoFeaturizer(cfg)(clip.frames, clip.timestamps)  # (F, 3, S, S), (F,) media time
    video, video_times = feats.numpy(), times.numpy()
    if key is not None:
        pixels = _as_pixels(video)
        stored = {"video": video} if pixels is None else {"pixels": pixels}
        _cache_store(cache_dir, key, {**stored, "video_times": video_times}, {})
    return video, video_times


_AUDIO_FIELDS = (
    "sample_rate",
    "n_fft",
    "hop",
    "n_mels",
    "f_min",
    "f_max",
    "mel_scale",
    "log_floor",
    "audio_token_seconds",
)


def _audio_features(path: Path, cfg: FeaturizerConfig, cache_dir: Path | None) -> tuple[np.ndarray, float]:
    key = None
    if cache_dir is not None:
        key = _cache_key("audio", path, {k: getattr(cfg, k) for k in _AUDIO_FIELDS})
        hit = _cache_load(cache_dir, key)
        if hit is not None:
            return hit["audio"], float(hit["audio_t0"])
    clip = decode_audio(path, sample_rate=cfg.sample_rate)
    fz = AudioFeaturizer(cfg)
    tokens, _, _ = fz(clip.samples, fz.init_state(t0=float(clip.t0)))  # (A, D)
    audio = tokens.numpy()
    if key is not None:
        _cache_store(cache_dir, key, {"audio": audio}, {"audio_t0": float(clip.t0)})
    return audio, float(clip.t0)


def load_features(spec, cfg: FeaturizerConfig, cache_dir: str | Path | None = None) -> StreamFeatures:
    """Decode and featurize one stream's media (``spec``: a manifest ``StreamSpec``).

    Audio comes from ``spec.audio_path`` (a separate file, or the video's own track). With
    ``cache_dir``, features are cached on disk keyed by the media file's content hash and the
    featurizer settings that affect them (video: fps, frame_size; audio: the audio fields), and
    loaded back as read-only memmaps. A decoding failure raises the media module's
    :class:`MediaError` with the stream id and manifest field prepended to its reason.
    """
    cache = Path(cache_dir) if cache_dir is not None else None
    video = None
    video_times = np.zeros(0, dtype=np.float64)
    audio, audio_t0 = None, 0.0
    field = "video"
    try:
        if spec.video is not None:
            video, video_times = _video_features(Path(spec.video), cfg, cache)
        if spec.audio_path is not None:
            field = "audio (the video's own track)" if spec.audio_from_video else "audio"
            audio, audio_t0 = _audio_features(Path(spec.audio_path), cfg, cache)
    except MediaError as e:
        raise MediaError(e.path, f"stream {spec.id!r}, field {field}: {e.reason}") from e
    return StreamFeatures(video=video, video_times=video_times, audio=audio, audio_t0=audio_t0)
