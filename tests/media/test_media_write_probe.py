"""Writing media with PyAV and probing it cheaply (the manifest validator's view of a file)."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from ssm_mm.media import MediaError, MediaWriter, probe_media, write_media
from ssm_mm.media.write import pick_codec

FFPROBE = shutil.which("ffprobe")
SR = 16000


def _clip(tmp_path, name="c.mp4", audio_t0=0.0):
    frames = np.full((8, 32, 32, 3), 128, np.uint8)
    return write_media(
        tmp_path / name,
        frames,
        np.arange(8) / 4,
        audio=np.zeros(SR * 2, np.float32),
        sample_rate=SR,
        audio_t0=audio_t0,
        fps=4,
    )


def test_codec_choice_by_extension():
    assert pick_codec(".mp4", "video") in ("libx264", "mpeg4")
    assert pick_codec(".mp4", "audio") == "aac"
    assert pick_codec(".webm", "audio") in ("libopus", "opus")
    assert pick_codec(".xyz", "video") is None


def test_probe_reads_headers(tmp_path):
    info = probe_media(_clip(tmp_path, audio_t0=0.5))
    assert info.has_video and info.has_audio
    assert (info.width, info.height, info.sample_rate, info.channels) == (32, 32, SR, 1)
    assert info.video_codec == "h264" and info.audio_codec == "aac"
    assert info.video_start == 0.0 and 0.43 <= info.audio_start <= 0.5  # aac priming may precede 0.5
    wav = probe_media(write_media(tmp_path / "a.wav", audio=np.zeros(SR, np.float32), sample_rate=SR))
    assert wav.has_audio and not wav.has_video and wav.fps is None


def test_probe_rejects_unusable_files(tmp_path):
    with pytest.raises(MediaError, match="file not found"):
        probe_media(tmp_path / "nope.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match="zero-byte"):
        probe_media(tmp_path / "empty.mp4")
    (tmp_path / "junk.mkv").write_bytes(bytes(range(256)) * 20)
    with pytest.raises(MediaError, match="corrupt"):
        probe_media(tmp_path / "junk.mkv")
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(MediaError, match="not a regular file"):
        probe_media(tmp_path / "dir.mp4")


def test_writer_refuses_what_the_container_cannot_hold(tmp_path):
    frame = np.zeros((32, 32, 3), np.uint8)
    with MediaWriter(tmp_path / "a.mp4", width=32, height=32, fps=4) as w:
        w.write_frame(frame, 0.0)
        with pytest.raises(ValueError, match="strictly increasing"):
            w.write_frame(frame, 0.0)
        with pytest.raises(ValueError, match="uint8"):
            w.write_frame(frame[:16], 0.5)
    with MediaWriter(tmp_path / "a.avi", width=32, height=32, fps=4) as w:
        w.write_frame(frame, 0.0)
        with pytest.raises(ValueError, match="grid"):
            w.write_frame(frame, 0.3)  # AVI stores frames on the 4 fps grid only
    with MediaWriter(tmp_path / "b.avi", width=32, height=32, fps=4) as w:
        with pytest.raises(ValueError, match="after 0"):
            w.write_frame(frame, 0.25)
    with pytest.raises(ValueError, match="nothing to write"):
        MediaWriter(tmp_path / "c.mp4")
    with pytest.raises(ValueError, match="audio_t0"):
        MediaWriter(tmp_path / "d.mp4", sample_rate=SR, audio_t0=-1.0)


@pytest.mark.skipif(FFPROBE is None, reason="ffprobe not installed")
def test_ffprobe_sees_both_streams(tmp_path):
    path = _clip(tmp_path, audio_t0=0.25)
    out = subprocess.run(
        [
            FFPROBE,
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,codec_name,start_time",
            "-of",
            "json",
            str(path),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    streams = {s["codec_type"]: s for s in json.loads(out.stdout)["streams"]}
    assert set(streams) == {"video", "audio"}
    assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac"
    assert float(streams["audio"]["start_time"]) > 0.1
