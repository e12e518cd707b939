"""The wire format: round trips, and every malformed message refused with a message naming it."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from ssm_mm.serve.protocol import (
    AudioMessage,
    ProtocolError,
    VideoMessage,
    decode_jpeg,
    decode_media,
    decode_text,
    encode_audio,
    encode_jpeg,
    encode_media,
    encode_video,
)


def test_round_trips():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    v = decode_media(encode_video(1.25, frame))
    assert isinstance(v, VideoMessage) and v.t == 1.25 and np.array_equal(v.frame(), frame)
    j = decode_media(encode_video(2.0, jpeg=encode_jpeg(frame)))
    assert j.jpeg is not None and j.frame().shape == (6, 10, 3)
    x = rng.uniform(-1, 1, (2, 100)).astype(np.float32)
    a = decode_media(encode_audio(0.5, 44100, x))
    assert isinstance(a, AudioMessage) and (a.t0, a.rate) == (0.5, 44100)
    np.testing.assert_array_equal(a.samples, x)  # (C, N) back from interleaved
    assert a.end == pytest.approx(0.5 + 100 / 44100)
    s = decode_media(encode_audio(0.0, 16000, x[0], "s16"))
    np.testing.assert_allclose(s.samples, x[0], atol=1 / 32768)


@pytest.mark.parametrize(
    "data, words",
    [
        (b"\x00", "shorter than"),
        (struct.pack("<I", 99) + b"{}", "header length 99"),
        (struct.pack("<I", 2) + b"[]", "JSON object"),
        (encode_media({"type": "picture"}, b""), "'picture'"),
        (encode_media({"type": "video", "t": "soon", "format": "rgb"}, b""), "'t'"),
        (encode_media({"type": "video", "t": float("inf"), "format": "jpeg"}, b"x"), "'t'"),
        (encode_media({"type": "video", "t": 0, "format": "png"}, b"x"), "'png'"),
        (
            encode_media({"type": "video", "t": 0, "format": "rgb", "width": 2, "height": 2}, b"\0" * 11),
            "expected 2x2x3",
        ),
        (encode_media({"type": "video", "t": 0, "format": "rgb", "width": 0, "height": 2}, b""), "'width'"),
        (encode_media({"type": "audio", "t0": 0, "rate": 12, "format": "f32"}, b""), "'rate'"),
        (encode_media({"type": "audio", "t0": 0, "rate": 16000, "format": "f64"}, b""), "'f64'"),
        (encode_media({"type": "audio", "t0": 0, "rate": 16000, "format": "f32"}, b"\0" * 6), "whole f32"),
        (
            encode_media(
                {"type": "audio", "t0": 0, "rate": 16000, "format": "f32", "channels": 2}, b"\0" * 4
            ),
            "x 2",
        ),
    ],
)
def test_malformed_media_is_refused_naming_the_problem(data, words):
    with pytest.raises(ProtocolError, match=None) as e:
        decode_media(data)
    assert words in str(e.value)


def test_text_messages_and_broken_jpeg():
    assert decode_text(json.dumps({"type": "ask", "text": "hi"}))["text"] == "hi"
    for bad in ("nope", "[1]", json.dumps({"kind": "ask"})):
        with pytest.raises(ProtocolError):
            decode_text(bad)
    with pytest.raises(ProtocolError, match="not a readable JPEG") as e:
        decode_jpeg(b"\xff\xd8 truncated")
    assert e.value.code == "bad_media"
