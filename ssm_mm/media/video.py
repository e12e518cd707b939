"""Video decoding through decord, with every frame's real timestamp.

Frame times come from decord's ``get_frame_timestamp`` (the packets' presentation timestamps, so they
are right for variable frame rate, jitter and dropped frames). decord measures them from the video
stream's own first timestamp and stores them as float32; we add the stream's start back (so a video
whose first frame is not at 0, e.g. one starting after its audio track, keeps that offset) and snap
them to the stream's time base, giving the presentation timestamps as stored in the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ssm_mm.media.errors import MediaError
from ssm_mm.media.probe import best_video, check_file, open_container

# A frame at t is "at or before" target time s when t <= s + _EPS: k/fps and pts·time_base are both
# rounded floats, and an exact tie (a 4 fps file sampled at 4 fps) must pick the frame at that time.
_EPS = 1e-6


@dataclass
class VideoClip:
    """Decoded frames with their real times.

    ``frames`` (T, H, W, 3) uint8 RGB; ``timestamps`` (T,) float64 media time of each frame (seconds,
    strictly increasing); ``source_fps`` the file's average frame rate from its header.
    """

    frames: Tensor  # (T, H, W, 3) uint8
    timestamps: Tensor  # (T,) float64
    source_fps: float

    def __len__(self) -> int:
        return int(self.frames.shape[0])


@dataclass(frozen=True)
class _StreamTiming:
    time_base: Fraction
    start_pts: int | None  # the video stream's first pts (what decord subtracts); None if unknown
    origin: Fraction  # seconds of the file's timestamps that are media time 0 (probe.time_origin)
    avg_fps: float


def _stream_timing(path: Path) -> _StreamTiming:
    """Time base and start of the stream decord will read (ffmpeg's best video stream)."""
    container = open_container(path)
    try:
        st = best_video(container)
        if st is None:
            raise MediaError(path, "no video stream")
        rate = st.average_rate or st.guessed_rate or st.base_rate
        return _StreamTiming(
            time_base=Fraction(st.time_base) if st.time_base else Fraction(1, 1000),
            start_pts=st.start_time,
            origin=Fraction(0),  # files with video: timestamps as stored (probe.time_origin)
            avg_fps=float(rate) if rate else 0.0,
        )
    finally:
        container.close()


def _packet_times(path: Path, timing: _StreamTiming) -> tuple[np.ndarray, np.ndarray]:
    """(start, stop) media times of every video packet, sorted, read with PyAV (no decoding).

    Fallback for streams whose header has no start time, where decord's times are undefined.
    """
    container = open_container(path)
    try:
        st = best_video(container)
        pts = []
        for p in container.demux(st):
            if p.size == 0:
                continue
            if p.pts is None:
                raise MediaError(path, "video packets carry no timestamps")
            pts.append((p.pts, p.duration or 0))
    finally:
        container.close()
    pts.sort()
    tb = timing.time_base
    start = np.array([float(p * tb - timing.origin) for p, _ in pts], dtype=np.float64)
    stop = np.array([float((p + d) * tb - timing.origin) for p, d in pts], dtype=np.float64)
    return start, stop


def _decord_times(vr, timing: _StreamTiming) -> tuple[np.ndarray, np.ndarray]:
    """decord's per-frame (start, stop) -> media time, exact to the stream's time base."""
    n = len(vr)
    ts = np.asarray(vr.get_frame_timestamp(list(range(n))), dtype=np.float64).reshape(n, 2)
    tb = float(timing.time_base)
    # decord stores (pts - start_pts)·time_base as float32; rounding to whole ticks undoes that.
    rel = np.rint(ts / tb).astype(np.int64)  # (n, 2) ticks since the stream's first pts
    pts = rel + int(timing.start_pts)
    # pts·tb − origin as one exact integer fraction, rounded to float64 once.
    tb, fs = timing.time_base, timing.origin
    den = tb.denominator * fs.denominator // np.gcd(tb.denominator, fs.denominator)
    numer = pts * (tb.numerator * (den // tb.denominator)) - fs.numerator * (den // fs.denominator)
    times = numer / den  # (n, 2) float64 seconds of media time
    return times[:, 0], times[:, 1]


def select_frames(
    times: np.ndarray,
    fps: float | None,
    end_time: float | None = None,
    start: float | None = None,
    end: float | None = None,
) -> np.ndarray:
    """Indices of the frames to keep, given every frame's time (sorted).

    With ``fps``: target times ``k / fps`` for ``k = 0, 1, ...`` while ``k / fps < end_time`` (the end of
    the last frame); each target takes the latest frame at or before it; a frame chosen twice (a gap
    in the file, or ``fps`` above the file's rate) is kept once, so a dropped frame leaves a time gap.
    ``fps=None`` keeps every frame. Then only frames whose *own* time is in ``[start, end)`` are kept,
    so decoding consecutive windows gives exactly the frames of the whole file.

    Args:
        times: (T,) float64 frame times, non-decreasing.
        end_time: end of the video (seconds); defaults to the last frame's time.

    Returns:
        (K,) int64 increasing indices into ``times``.
    """
    times = np.asarray(times, dtype=np.float64)
    if times.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    if fps is None:
        idx = np.arange(times.shape[0], dtype=np.int64)
    else:
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        # The last frame is shown until end_time (at least until just after its own time).
        stop = max(float(times[-1]) + 2 * _EPS, float(end_time) if end_time is not None else 0.0)
        n_targets = int(np.ceil(stop * fps - 1e-9))  # k = 0 .. n_targets-1 satisfy k / fps < stop
        targets = np.arange(n_targets, dtype=np.float64) / fps  # (K,) k / fps, no accumulation
        idx = np.searchsorted(times, targets + _EPS, side="right") - 1  # latest frame with t <= target
        idx = idx[idx >= 0]  # targets before the first frame have no frame
        idx = np.unique(idx)  # sorted, duplicates dropped
    keep = np.ones(idx.shape[0], dtype=bool)
    if start is not None:
        keep &= times[idx] >= start - _EPS
    if end is not None:
        keep &= times[idx] < end - _EPS
    return idx[keep].astype(np.int64)


def _resolve_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``size`` -> (height, width); None keeps the file's size."""
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        h = w = size
    else:
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError):
            raise ValueError(f"size must be an int or (height, width), got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def resize_frames(frames: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Resize uint8 frames (T, H, W, 3) to ``size x size`` or ``(height, width)``: (T, h, w, 3) uint8.

    Antialiased bilinear interpolation (``F.interpolate(..., antialias=True)``), so downscaling a large
    video to 64x64 averages instead of aliasing.
    """
    h, w = _resolve_size(size)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        return frames.new_zeros((0, h, w, 3))
    if tuple(frames.shape[1:3]) == (h, w):
        return frames
    x = frames.permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # (T, h, w, 3)


_DECORD_LOG = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s+(Error:\s*)?")  # "[12:00:00] src/x.cc:486: Error: "


def _decord_reason(e: Exception) -> str:
    """decord's error message without its log prefix (time, C++ source file and line), and said
    plainly when the demuxer met invalid data, as in a file cut off partway through its data."""
    msg = _DECORD_LOG.sub("", str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    if "av_read_frame failed" in msg:
        return f"the data ends or is damaged partway, e.g. a file cut off: {msg}"
    return msg


def decode_video(
    path: str | Path,
    fps: float | None = None,
    size: int | tuple[int, int] | None = None,
    start: float | None = None,
    end: float | None = None,
    num_threads: int = 1,
) -> VideoClip:
    """Decode the video of ``path`` (mp4, mkv, webm, avi, ...) with each frame's real timestamp.

    Args:
        path: the media file.
        fps: target rate; each target time ``k / fps`` takes the latest frame at or before it and the
            frame keeps its own timestamp (see :func:`select_frames`). None: every frame.
        size: resize to ``size x size`` or ``(height, width)`` (:func:`resize_frames`, done in chunks
            of frames as they are decoded, so a large video never sits in memory at full size);
            None keeps the file's size. (decord's own resizing is not used: it fails for widths that
            are not a multiple of 32.)
        start, end: keep frames whose timestamp is in ``[start, end)`` (media time, seconds).
        num_threads: decoder threads (1 by default: data-loader workers already run in parallel).

    Returns:
        :class:`VideoClip` with ``frames`` (T, H, W, 3) uint8 and ``timestamps`` (T,) float64.

    Raises:
        MediaError: missing, zero-byte, corrupt or undecodable file, no video stream, no frames.
    """
    import decord

    path = check_file(path)
    timing = _stream_timing(path)  # also rejects corrupt files and files without video, cleanly
    out_size = _resolve_size(size)
    try:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=num_threads)
    except (decord.DECORDError, RuntimeError) as e:
        raise MediaError(path, f"corrupt or undecodable video ({_decord_reason(e)})") from e
    n = len(vr)
    if n == 0:
        raise MediaError(path, "empty video stream: no frames")
    if timing.start_pts is None:  # decord would subtract AV_NOPTS_VALUE: read the packets ourselves
        times, stops = _packet_times(path, timing)
        if times.shape[0] != n:
            raise MediaError(path, f"cannot time the frames: {times.shape[0]} packets for {n} frames")
    else:
        times, stops = _decord_times(vr, timing)
    if np.any(np.diff(times) <= 0):
        raise MediaError(path, "video timestamps are not strictly increasing")
    end_time = float(stops[-1])
    idx = select_frames(times, fps, end_time=end_time, start=start, end=end)
    if idx.shape[0] == 0:
        h, w = out_size if out_size is not None else vr[0].shape[:2]
        frames = torch.zeros((0, h, w, 3), dtype=torch.uint8)
    else:
        pieces = []
        chunk = 64 if out_size is not None else idx.shape[0]  # bounded full-size memory when resizing
        for i in range(0, idx.shape[0], chunk):
            try:
                batch = vr.get_batch(idx[i : i + chunk].tolist()).asnumpy()  # (t, H, W, 3) uint8
            except (decord.DECORDError, RuntimeError) as e:
                raise MediaError(path, f"corrupt video: decoding failed ({_decord_reason(e)})") from e
            piece = torch.from_numpy(np.ascontiguousarray(batch))
            pieces.append(resize_frames(piece, out_size) if out_size is not None else piece)
        frames = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    return VideoClip(
        frames=frames,
        timestamps=torch.from_numpy(times[idx].copy()),
        source_fps=timing.avg_fps,
    )
