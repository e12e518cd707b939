"""Video decoding: every container, real (VFR / jittered / late-start) timestamps, fps selection, errors."""

import shutil
import subprocess

import numpy as np
import pytest
import torch

from ssm_mm.media import MediaError, decode_video, select_frames, write_media

FFMPEG = shutil.which("ffmpeg")


def _frames(n: int, size: int = 32) -> np.ndarray:
    """(n, size, size, 3) uint8 frames whose grey level encodes their index (i * 20 + 10)."""
    f = np.zeros((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        f[i] = i * 20 + 10
    return f


def _index_of(frames: torch.Tensor) -> list[int]:
    """Recover each decoded frame's index from its mean grey level."""
    return [round((float(f.float().mean()) - 10) / 20) for f in frames]


# Jittered, with a dropped frame (no frame between 1.0 and 1.5), starting at 0.
VFR_TIMES = np.array([0.0, 0.24, 0.51, 0.75, 1.0, 1.5, 1.77, 2.0, 2.26])


@pytest.mark.parametrize("ext", ["mp4", "mkv", "webm"])
def test_vfr_timestamps_come_back_exactly(tmp_path, ext):
    path = write_media(tmp_path / f"v.{ext}", _frames(len(VFR_TIMES)), VFR_TIMES, fps=4)
    clip = decode_video(path)
    assert clip.frames.dtype == torch.uint8 and clip.frames.shape == (len(VFR_TIMES), 32, 32, 3)
    assert clip.timestamps.dtype == torch.float64
    np.testing.assert_allclose(clip.timestamps.numpy(), VFR_TIMES, atol=1e-9)
    assert _index_of(clip.frames) == list(range(len(VFR_TIMES)))
    assert clip.source_fps > 0


def test_avi_grid_with_a_dropped_frame(tmp_path):
    times = np.array([0.0, 0.25, 0.5, 1.0, 1.25])  # 0.75 dropped: AVI stores frames on its rate's grid
    path = write_media(tmp_path / "v.avi", _frames(5), times, fps=4)
    clip = decode_video(path)
    np.testing.assert_allclose(clip.timestamps.numpy(), times, atol=1e-9)
    assert _index_of(clip.frames) == [0, 1, 2, 3, 4]


def test_late_video_track_keeps_its_offset(tmp_path):
    # Audio from 0, first video frame at 0.5: decord alone reports 0 for the first frame.
    sr = 16000
    times = np.array([0.5, 0.75, 1.0, 1.25])
    path = write_media(
        tmp_path / "late.mp4", _frames(4), times, audio=np.zeros(sr * 2, np.float32), sample_rate=sr, fps=4
    )
    np.testing.assert_allclose(decode_video(path).timestamps.numpy(), times, atol=1e-9)


def test_video_only_file_with_a_late_first_frame(tmp_path):
    # decord measures from the stream's first frame; we keep the stored presentation times.
    times = np.array([0.3, 0.55, 1.05])
    for ext in ("mkv", "mp4"):
        clip = decode_video(write_media(tmp_path / f"v.{ext}", _frames(3), times, fps=4))
        np.testing.assert_allclose(clip.timestamps.numpy(), times, atol=1e-9)


def test_target_fps_takes_latest_frame_at_or_before_and_keeps_real_times(tmp_path):
    path = write_media(tmp_path / "v.mp4", _frames(len(VFR_TIMES)), VFR_TIMES, fps=4)
    clip = decode_video(path, fps=4)
    # Targets 0, .25, .5, ...: 0 -> 0.0; .25 -> .24; .5 -> .24 again (kept once); .75 -> .75;
    # 1.0 -> 1.0; 1.25 -> 1.0 again (the dropped frame leaves a gap); 1.5 -> 1.5; 1.75 -> 1.5 again
    # (1.77 is late); 2.0 -> 2.0; 2.25 -> 2.0 again; 2.5 -> 2.26 if the file lasts past 2.5.
    got = _index_of(clip.frames)
    assert got in ([0, 1, 3, 4, 5, 7], [0, 1, 3, 4, 5, 7, 8])
    np.testing.assert_allclose(clip.timestamps.numpy(), VFR_TIMES[got], atol=1e-9)  # own times, not k/fps
    assert np.diff(clip.timestamps.numpy()).max() >= 0.5 - 1e-9


def test_select_frames_rules():
    t = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    # fps above the file's rate: every frame once, no invented frames.
    assert select_frames(t, 100.0, end_time=0.7).tolist() == [0, 1, 2, 3, 4, 5]
    # fps below: latest at or before k/fps; target 0 has no frame.
    assert select_frames(t, 5.0, end_time=0.7).tolist() == [1, 3, 5]
    # exact ties pick the frame at that time
    assert select_frames(np.array([0.0, 0.25, 0.5]), 4.0, end_time=0.75).tolist() == [0, 1, 2]
    assert select_frames(t, None).tolist() == list(range(6))
    # windows on the frames' own times partition the whole selection
    whole = select_frames(t, 5.0, end_time=0.7)
    parts = [
        select_frames(t, 5.0, end_time=0.7, start=a, end=b) for a, b in [(0, 0.25), (0.25, 0.45), (0.45, 9)]
    ]
    assert np.concatenate(parts).tolist() == whole.tolist()
    with pytest.raises(ValueError, match="fps"):
        select_frames(t, 0.0)


def test_windows_concatenate_to_the_whole_file(tmp_path):
    path = write_media(tmp_path / "v.mkv", _frames(len(VFR_TIMES)), VFR_TIMES, fps=4)
    whole = decode_video(path, fps=4)
    parts = [decode_video(path, fps=4, start=a, end=b) for a, b in [(0.0, 0.8), (0.8, 1.6), (1.6, 10.0)]]
    assert torch.equal(torch.cat([p.timestamps for p in parts]), whole.timestamps)
    assert torch.equal(torch.cat([p.frames for p in parts]), whole.frames)
    empty = decode_video(path, start=5.0, end=6.0)
    assert empty.frames.shape == (0, 32, 32, 3) and empty.timestamps.shape == (0,)


def test_resize(tmp_path):
    path = write_media(tmp_path / "v.mp4", _frames(3, size=64), [0.0, 0.25, 0.5], fps=4)
    assert decode_video(path, size=16).frames.shape == (3, 16, 16, 3)
    assert decode_video(path, size=(24, 32)).frames.shape == (3, 24, 32, 3)
    with pytest.raises(ValueError, match="size"):
        decode_video(path, size=0)


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg CLI not installed")
@pytest.mark.parametrize("ext,codec", [("mp4", "libx264"), ("webm", "libvpx-vp9"), ("avi", "mpeg4")])
def test_files_made_by_ffmpeg_cli(tmp_path, ext, codec):
    # 10 fps test pattern with every third frame removed: timestamps must be n/10 for the kept n.
    path = tmp_path / f"cli.{ext}"
    mode = ["-fps_mode", "vfr"] if ext != "avi" else ["-fps_mode", "passthrough"]
    cmd = [FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=10:duration=2"]
    cmd += ["-vf", "select='not(eq(mod(n\\,3)\\,2))'", *mode, "-c:v", codec, str(path)]
    subprocess.run(cmd, check=True, timeout=60)
    clip = decode_video(path)
    kept = [n for n in range(20) if n % 3 != 2]
    np.testing.assert_allclose(clip.timestamps.numpy(), np.array(kept) / 10, atol=1e-6)


def test_errors_name_the_file_and_reason(tmp_path):
    with pytest.raises(MediaError, match="file not found") as e:
        decode_video(tmp_path / "missing.mp4")
    assert "missing.mp4" in str(e.value)
    (tmp_path / "zero.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match="zero-byte"):
        decode_video(tmp_path / "zero.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video" * 50)
    with pytest.raises(MediaError, match="corrupt"):
        decode_video(tmp_path / "junk.mp4")
    wav = write_media(tmp_path / "a.wav", audio=np.zeros(1600, np.float32), sample_rate=16000)
    with pytest.raises(MediaError, match="no video stream"):
        decode_video(wav)
    good = write_media(tmp_path / "good.mp4", _frames(8), np.arange(8) / 4, fps=4).read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(good[: len(good) // 2])
    with pytest.raises(MediaError):
        decode_video(tmp_path / "truncated.mp4")
    assert issubclass(MediaError, ValueError)
