"""The feature cache: features stored once per media content and featurizer settings, read back as
read-only memmaps; decoding errors name the stream and field (fake decoders count the calls)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import ssm_mm.data.feature_cache as fc_mod
from ssm_mm.data.dataset import MAPPED_ARRAY_BYTES, build_example, cut_window, example_nbytes
from ssm_mm.data.feature_cache import load_features
from ssm_mm.data.featurize import FeaturizerConfig, pixels_to_unit
from ssm_mm.data.manifest import StreamSpec
from ssm_mm.data.tokenizer import ByteTokenizer
from ssm_mm.media import AudioClip, MediaError, VideoClip

CFG = FeaturizerConfig(frame_size=16)
TOK = ByteTokenizer()
LABELS = ["background", "bell", "drum"]


def _fake_media(monkeypatch, calls):
    def fake_video(path, fps=None, size=None, **kw):
        calls.append(("video", Path(path).name))
        frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, 20, 30, 3), dtype=np.uint8))
        return VideoClip(frames=frames, timestamps=torch.arange(8, dtype=torch.float64) / 4, source_fps=4.0)

    def fake_audio(path, sample_rate=16000, **kw):
        calls.append(("audio", Path(path).name))
        if Path(path).read_bytes() == b"broken":
            raise MediaError(path, "corrupt audio: decoding failed")
        x = torch.from_numpy(np.random.default_rng(1).standard_normal(32000).astype(np.float32) * 0.1)
        return AudioClip(samples=x, sample_rate=sample_rate, t0=0.25)

    monkeypatch.setattr(fc_mod, "decode_video", fake_video)
    monkeypatch.setattr(fc_mod, "decode_audio", fake_audio)


def test_feature_cache_is_keyed_by_content_and_settings(monkeypatch, tmp_path):
    calls = []
    _fake_media(monkeypatch, calls)
    media = tmp_path / "m"
    media.mkdir()
    (media / "s.mp4").write_bytes(b"video bytes")
    spec = StreamSpec(id="s", video=media / "s.mp4", audio=None, audio_from_video=True, duration=2.0)
    cache = tmp_path / "cache"
    first = load_features(spec, CFG, cache)
    assert calls == [("video", "s.mp4"), ("audio", "s.mp4")]
    again = load_features(spec, CFG, cache)
    assert len(calls) == 2  # served from the cache
    assert isinstance(again.video, np.memmap) and not again.video.flags.writeable
    np.testing.assert_array_equal(again.video, first.video)
    np.testing.assert_array_equal(again.audio, first.audio)
    np.testing.assert_array_equal(again.video_times, first.video_times)
    assert again.audio_t0 == first.audio_t0 == 0.25
    # the same example whether the features came from the decoder or the cache
    a = build_example(spec, first, TOK, LABELS, CFG)
    b = build_example(spec, again, TOK, LABELS, CFG)
    assert a.tokens.equal(b.tokens) and torch.equal(
        cut_window(a, 0, 4, CFG).audio, cut_window(b, 0, 4, CFG).audio
    )
    # changing a video setting re-decodes the video only; changing the file re-decodes both
    load_features(spec, FeaturizerConfig(frame_size=32), cache)
    assert calls[2:] == [("video", "s.mp4")]
    (media / "s.mp4").write_bytes(b"other video bytes")
    load_features(spec, CFG, cache)
    assert calls[3:] == [("video", "s.mp4"), ("audio", "s.mp4")]
    assert not list(cache.glob(".*"))  # no temporary folders left behind


def test_media_errors_name_the_stream_and_field(monkeypatch, tmp_path):
    _fake_media(monkeypatch, [])
    (tmp_path / "v.mp4").write_bytes(b"v")
    (tmp_path / "a.wav").write_bytes(b"broken")
    spec = StreamSpec(
        id="s42", video=tmp_path / "v.mp4", audio=tmp_path / "a.wav", audio_from_video=False, duration=2.0
    )
    with pytest.raises(MediaError, match=r"a\.wav: stream 's42', field audio: corrupt audio") as e:
        load_features(spec, CFG)
    assert e.value.path == tmp_path / "a.wav"


def test_frames_at_the_model_size_are_cached_as_pixels_and_read_back_bit_for_bit(monkeypatch, tmp_path):
    """Frames that need no resize are their uint8 pixels normalised: the cache stores the pixels (a
    quarter of the bytes) and every way the pipeline reads them gives the featurizer's float32 exactly;
    resized frames stay float32 (the test above)."""
    calls = []
    _fake_media(monkeypatch, calls)
    frames = np.random.default_rng(2).integers(0, 256, (9, 16, 16, 3), dtype=np.uint8)
    frames[0] = 0
    frames[1] = 255  # the ends of the range

    def fake_video(path, fps=None, size=None, **kw):
        calls.append(("video", Path(path).name))
        return VideoClip(torch.from_numpy(frames), torch.arange(9, dtype=torch.float64) / 4, source_fps=4.0)

    monkeypatch.setattr(fc_mod, "decode_video", fake_video)
    monkeypatch.setattr(fc_mod, "_PIXEL_BLOCK", 4)  # 9 frames: checked in three blocks, the last partial
    (tmp_path / "s.mp4").write_bytes(b"video bytes")
    spec = StreamSpec(id="s", video=tmp_path / "s.mp4", audio=None, audio_from_video=True, duration=2.0)
    cache = tmp_path / "cache"
    first = load_features(spec, CFG, cache)
    again = load_features(spec, CFG, cache)
    assert len(calls) == 2 and isinstance(first.video, np.ndarray)  # decoded once (video + audio)
    v = again.video
    assert isinstance(v, fc_mod.PixelFrames) and isinstance(v.pixels, np.memmap)
    assert not v.pixels.flags.writeable
    assert v.pixels.dtype == np.uint8 and v.shape == first.video.shape == (9, 3, 16, 16) and len(v) == 9
    assert np.asarray(v).dtype == np.float32
    np.testing.assert_array_equal(np.asarray(v).view(np.uint32), first.video.view(np.uint32))  # bitwise
    np.testing.assert_array_equal(v[2:5], first.video[2:5])
    np.testing.assert_array_equal(v[np.array([4, 0, 8])], first.video[[4, 0, 8]])  # recall targets index so
    a, b = (build_example(spec, f, TOK, LABELS, CFG) for f in (first, again))
    assert torch.equal(cut_window(a, 1, 4, CFG).video, cut_window(b, 1, 4, CFG).video)
    # a dataset's memory budget charges the mapped arrays (pixels, audio) a flat amount each
    assert isinstance(v.pixels, np.memmap) and isinstance(again.audio, np.memmap)
    in_memory = first.video.nbytes + first.audio.nbytes
    assert example_nbytes(a) - example_nbytes(b) == in_memory - 2 * MAPPED_ARRAY_BYTES
    with pytest.raises(ValueError, match="uint8"):
        fc_mod.PixelFrames(first.video)
    off = first.video.copy()
    off[8, 0, 0, 0] += 1e-3  # one value in the last, partial block is not a pixel's: kept as float32
    assert fc_mod._as_pixels(off) is None
    every = torch.arange(256, dtype=torch.uint8)  # the uint8 path (no clamp) == the float path, every value
    bits = lambda x: pixels_to_unit(x).view(torch.int32)
    assert torch.equal(bits(every), bits(every.float()))
