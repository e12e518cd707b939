"""Cheap checks of a media file: open it with PyAV, read the stream headers, demux one packet.

Used by the manifest validator (``ssm_mm.data.manifest``) to reject unusable files before a training
run touches them, without decoding them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from ssm_mm.media.errors import MediaError


@dataclass(frozen=True)
class MediaInfo:
    """What a container holds, from its headers (times in seconds of media time, see ``ssm_mm.media``)."""

    path: Path
    has_video: bool
    has_audio: bool
    duration: float | None  # container duration; None when the container does not say
    video_start: float | None  # media time of the video stream's first timestamp
    audio_start: float | None  # media time of the audio stream's first timestamp
    width: int | None
    height: int | None
    fps: float | None  # average frame rate from the header (VFR files: an average only)
    sample_rate: int | None
    channels: int | None
    video_codec: str | None
    audio_codec: str | None


def check_file(path: str | Path) -> Path:
    """Raise :class:`MediaError` if ``path`` is missing, not a regular file, or zero bytes."""
    path = Path(path)
    if not path.exists():
        raise MediaError(path, "file not found")
    if not path.is_file():
        raise MediaError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise MediaError(path, "zero-byte file")
    return path


def open_container(path: str | Path):
    """``av.open(path)`` with every failure turned into :class:`MediaError` (the caller closes it)."""
    import av  # local: keeps ``import ssm_mm.media`` cheap

    path = check_file(path)
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise MediaError(path, f"corrupt or unsupported media ({type(e).__name__}: {e})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise MediaError(path, f"cannot open: {e}") from e


def video_streams(container) -> list:
    """The container's real video streams (an mp3's embedded cover picture is not one)."""
    from av.stream import Disposition

    return [s for s in container.streams.video if not (int(s.disposition) & int(Disposition.attached_pic))]


def time_origin(container) -> Fraction:
    """Media time 0 of this file, in its timestamps' seconds (exact).

    Files with video: 0, i.e. media time is the presentation timestamp as stored, so a track that
    starts late (a first frame at 0.3 s, an audio track starting 0.5 s after the video) keeps its
    offset. Audio-only files: the file's start time, because a lone audio file is aligned by its first
    sample, and formats such as mp3 store their encoder delay as a start time (0.025-0.07 s) although
    the decoder has already removed those samples.
    """
    if video_streams(container):
        return Fraction(0)
    st = container.start_time  # microseconds (AV_TIME_BASE) or None
    return Fraction(0) if st is None else Fraction(int(st), 1_000_000)


def stream_start(stream, origin: Fraction) -> float | None:
    """Media time of a stream's first timestamp, or None when the header does not give it."""
    if stream.start_time is None or stream.time_base is None:
        return None
    return float(stream.start_time * Fraction(stream.time_base) - origin)


def best_video(container):
    """The video stream ffmpeg (and so decord) picks, skipping cover pictures; None if there is none."""
    videos = video_streams(container)
    if not videos:
        return None
    best = container.streams.best("video")
    return best if best in videos else videos[0]


def probe_media(path: str | Path) -> MediaInfo:
    """Open ``path`` and describe it, raising :class:`MediaError` if it cannot be used at all.

    Reads headers and demuxes until the first packet (no decoding), so a corrupt header, a file with
    no audio or video stream, or a container without a single packet ("empty") is caught cheaply.
    """
    import av

    path = check_file(path)
    container = open_container(path)
    try:
        videos = video_streams(container)
        video = best_video(container) if videos else None
        audio = container.streams.audio[0] if container.streams.audio else None
        if video is None and audio is None:
            raise MediaError(path, "no video or audio stream")
        if audio is not None:
            audio = container.streams.best("audio") or audio
        try:
            first = next((p for p in container.demux(*(s for s in (video, audio) if s)) if p.size > 0), None)
        except av.error.FFmpegError as e:
            raise MediaError(path, f"corrupt media: cannot read packets ({e})") from e
        if first is None:
            raise MediaError(path, "empty media: no packets")
        origin = time_origin(container)
        duration = None if container.duration is None else container.duration / 1_000_000
        vcc = video.codec_context if video is not None else None
        acc = audio.codec_context if audio is not None else None
        rate = video.average_rate if video is not None else None
        return MediaInfo(
            path=path,
            has_video=video is not None,
            has_audio=audio is not None,
            duration=duration,
            video_start=stream_start(video, origin) if video is not None else None,
            audio_start=stream_start(audio, origin) if audio is not None else None,
            width=vcc.width if vcc is not None else None,
            height=vcc.height if vcc is not None else None,
            fps=float(rate) if rate else None,
            sample_rate=acc.sample_rate if acc is not None else None,
            channels=acc.channels if acc is not None else None,
            video_codec=vcc.name if vcc is not None else None,
            audio_codec=acc.name if acc is not None else None,
        )
    finally:
        container.close()
