"""Decoding real media files with real timestamps (SPEC §3).

Which library does what, and why:

* **Video: decord** (``video.py``). Frames at a target fps, each with its real presentation timestamp
  from ``VideoReader.get_frame_timestamp`` (right for variable frame rate, jitter, dropped frames);
  optional resizing is an antialiased torch interpolation (``video.resize_frames``).
* **Audio: PyAV** (``audio.py``). The SPEC prefers torchaudio, but torchaudio's compiled extension
  must match torch exactly and cannot load on the CPU-only torch we install (torchaudio links the CUDA
  build), and its I/O has moved to torchcodec. PyAV ships its own ffmpeg, decodes every container we
  need (mp4/mkv/webm/avi tracks, wav/flac/ogg/mp3 files) and gives each frame's timestamp, so the
  track's real start time is known.
* **Resampling**: ``torchaudio.functional.resample`` whenever ``import torchaudio`` works; otherwise
  ``audio.sinc_resample``, our torch implementation of the same Hann-windowed sinc filter
  (same defaults, tested against torchaudio where it loads and against analytic signals).
* **Probing** (``probe.py``): PyAV reads headers and one packet, for the manifest validator.
* **Writing** (``write.py``): PyAV encoders bundled with its ffmpeg (h264/aac mp4 for the built-in
  worlds; every test format). Library code never needs the ffmpeg command-line tool.

**Media time.** All times are seconds on the file's own presentation timeline. For files with video
it is the timestamp as stored: a video whose first frame is at 0.3 s, or an audio track that starts
0.5 s after the video (how a generated world encodes its audio/video offset), keeps that offset. Audio-only
files are measured from their start, so formats that store an encoder delay as a start time (mp3)
come out with their first sample at 0. Known limit: mp3 *inside AVI* carries the encoder delay as
real leading samples (the container cannot say otherwise), shifting its sound by ~25-70 ms.

Every failure to use a file raises :class:`MediaError` (a ``ValueError``) naming the file and the reason.
Submodules import decord/PyAV lazily, so ``import ssm_mm.media`` is cheap.
"""

import importlib

# Lazy exports (PEP 562): ``from ssm_mm.media import decode_video`` loads only what it needs, so tools
# that only write media (the world generators) do not pay for importing torch.
_EXPORTS = {
    "AudioClip": "audio",
    "decode_audio": "audio",
    "has_audio": "audio",
    "resample": "audio",
    "sinc_resample": "audio",
    "MediaError": "errors",
    "MediaInfo": "probe",
    "probe_media": "probe",
    "VideoClip": "video",
    "decode_video": "video",
    "select_frames": "video",
    "resize_frames": "video",
    "MediaWriter": "write",
    "write_media": "write",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"ssm_mm.media.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'ssm_mm.media' has no attribute {name!r}")
