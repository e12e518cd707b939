"""Audio decoding: every format, real start times (offset tracks), mono mixing, gaps, errors."""

import shutil
import subprocess
import wave
from fractions import Fraction

import numpy as np
import pytest

from ssm_mm.media import MediaError, decode_audio, has_audio, write_media

FFMPEG = shutil.which("ffmpeg")
SR = 16000


def _tone(seconds: float, onset: float, freq: float = 440.0, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    """(N,) float32: silence until ``onset``, then a sine."""
    t = np.arange(round(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * (t - onset)) * (t >= onset)).astype(np.float32)


def _onset(clip, thresh: float = 0.2) -> float:
    """Media time of the first sample above ``thresh``."""
    x = np.abs(clip.samples.numpy())
    return clip.t0 + int(np.argmax(x > thresh)) / clip.sample_rate


def _peak_freq(clip, t_from: float) -> float:
    x = clip.samples.numpy()[round((t_from - clip.t0) * clip.sample_rate) :]
    x = x[: clip.sample_rate]  # one second
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / clip.sample_rate)[np.argmax(spec)])


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3", "mp4", "mkv", "webm", "avi"])
def test_every_format_decodes_at_the_right_time(tmp_path, ext):
    audio = _tone(2.0, onset=0.4)
    if ext in ("mp4", "mkv", "webm", "avi"):  # the audio track of a video container
        frames = np.zeros((4, 32, 32, 3), np.uint8)
        path = write_media(
            tmp_path / f"a.{ext}", frames, [0.0, 0.25, 0.5, 0.75], audio=audio, sample_rate=SR, fps=4
        )
    else:
        path = write_media(tmp_path / f"a.{ext}", audio=audio, sample_rate=SR)
    clip = decode_audio(path, sample_rate=SR)
    assert clip.samples.dtype.is_floating_point and clip.samples.ndim == 1 and clip.sample_rate == SR
    assert 1.95 < clip.duration < 2.2
    assert abs(_onset(clip) - 0.4) < 0.005  # codec delays are accounted for by the timestamps
    assert abs(_peak_freq(clip, 0.6) - 440.0) < 2.0
    assert 0.45 < float(clip.samples.abs().max()) < 0.6


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg CLI not installed")
@pytest.mark.parametrize("ext,codec,rate", [("ogg", "libvorbis", 44100), ("mp3", "libmp3lame", 44100)])
def test_files_made_by_ffmpeg_cli(tmp_path, ext, codec, rate):
    # Ogg/Vorbis (PyAV's bundled ffmpeg cannot encode Vorbis) and a 44.1 kHz mp3 with its encoder delay.
    path = tmp_path / f"cli.{ext}"
    cmd = [
        FFMPEG,
        "-v",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=2:sample_rate=44100",
    ]
    cmd += ["-af", "adelay=300", "-ar", str(rate), "-c:a", codec, str(path)]
    subprocess.run(cmd, check=True, timeout=60)
    clip = decode_audio(path, sample_rate=SR)
    assert clip.t0 == 0.0
    assert abs(_onset(clip, 0.05) - 0.3) < 0.005
    assert abs(_peak_freq(clip, 0.5) - 440.0) < 2.0


def test_audio_track_offset_is_kept(tmp_path):
    # The audio track starts 0.5 s after the video: t0 and the sound's onset are on the file's clock.
    audio = _tone(1.5, onset=0.2)
    frames = np.zeros((8, 32, 32, 3), np.uint8)
    for ext in ("mp4", "mkv", "webm"):
        path = write_media(
            tmp_path / f"o.{ext}", frames, np.arange(8) / 4, audio=audio, sample_rate=SR, audio_t0=0.5, fps=4
        )
        clip = decode_audio(path)
        assert abs(_onset(clip) - 0.7) < 0.005, ext
        # mp4's aac keeps one 64 ms priming frame (near-silent) before the track's first sample.
        assert 0.5 - 0.07 <= clip.t0 <= 0.5 + 0.002, ext


def test_stereo_is_mixed_to_mono_and_resampled(tmp_path):
    sr = 44100
    t = np.arange(sr) / sr
    left = 0.6 * np.sin(2 * np.pi * 1000 * t)
    right = np.zeros_like(left)
    pcm = (np.stack([left, right], 1) * 32767).astype("<i2")  # (N, 2) interleaved
    with wave.open(str(tmp_path / "st.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    clip = decode_audio(tmp_path / "st.wav", sample_rate=SR)
    assert clip.sample_rate == SR and clip.samples.shape[0] == SR  # ceil(44100 * 16000 / 44100)
    assert abs(float(clip.samples[2000:-2000].abs().max()) - 0.3) < 0.01  # mean of the two channels
    assert abs(_peak_freq(clip, 0.0) - 1000.0) < 2.0


def test_a_gap_in_the_track_keeps_later_samples_at_their_time(tmp_path):
    import av

    path = tmp_path / "gap.mkv"
    out = av.open(str(path), "w")
    st = out.add_stream("pcm_s16le", rate=SR)
    st.layout = "mono"
    n = 1600  # 0.1 s per frame
    for k, start in enumerate([0.0, 0.1, 0.2, 0.8, 0.9]):  # a 0.5 s hole between 0.3 and 0.8
        x = np.full((1, n), 1000 * (k + 1), dtype=np.int16)
        f = av.AudioFrame.from_ndarray(x, format="s16", layout="mono")
        f.sample_rate, f.pts, f.time_base = SR, round(start * SR), Fraction(1, SR)
        for p in st.encode(f):
            out.mux(p)
    for p in st.encode(None):
        out.mux(p)
    out.close()
    clip = decode_audio(path)
    x = clip.samples.numpy()
    assert clip.t0 == 0.0 and x.shape[0] == SR  # 1.0 s: the hole is filled
    np.testing.assert_allclose(x[round(0.5 * SR)], 0.0)  # silence in the hole
    np.testing.assert_allclose(x[round(0.85 * SR)], 4000 / 32768, rtol=1e-4)  # 4th frame at 0.8 s


def test_has_audio(tmp_path):
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    silent = write_media(tmp_path / "v.mp4", frames, [0.0, 0.25], fps=4)
    both = write_media(
        tmp_path / "b.mp4", frames, [0.0, 0.25], audio=np.zeros(SR, np.float32), sample_rate=SR
    )
    assert not has_audio(silent) and has_audio(both)
    with pytest.raises(MediaError, match="no audio stream"):
        decode_audio(silent)
    with pytest.raises(MediaError, match="file not found"):
        has_audio(tmp_path / "nope.wav")


def test_errors_name_the_file_and_reason(tmp_path):
    with pytest.raises(MediaError, match="file not found"):
        decode_audio(tmp_path / "missing.wav")
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(MediaError, match="zero-byte") as e:
        decode_audio(tmp_path / "zero.wav")
    assert "zero.wav" in str(e.value)
    (tmp_path / "junk.flac").write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(MediaError, match="corrupt"):
        decode_audio(tmp_path / "junk.flac")
    (tmp_path / "junk.mp4").write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(MediaError, match="corrupt"):
        decode_audio(tmp_path / "junk.mp4")
    with pytest.raises(ValueError, match="sample_rate"):
        decode_audio(tmp_path / "junk.flac", sample_rate=0)
