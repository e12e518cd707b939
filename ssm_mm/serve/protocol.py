"""The serving wire protocol: media messages (binary) and control / result messages (JSON text).

A **binary** message is one piece of media::

    [uint32 little-endian n][n bytes: UTF-8 JSON header][payload]

    video  {"type": "video", "t": 1.25, "format": "jpeg"}           payload: a JPEG file
           {"type": "video", "t": 1.25, "format": "rgb", "width": W, "height": H}
                                                                    payload: W·H·3 bytes, row-major RGB
    audio  {"type": "audio", "t0": 1.0, "rate": 44100, "format": "f32" | "s16", "channels": 1}
           payload: little-endian samples, channels interleaved (f32 in [-1, 1]; s16 scaled by 1/32768)

Times are seconds on the stream clock (``t`` a frame's time, ``t0`` the time of an audio chunk's first
sample). A **text** message is one JSON object with a ``type`` (the package docstring lists them).
Everything here is pure (no sockets): the server, the client and the tests share it.
"""

from __future__ import annotations

import io
import json
import math
import struct
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ProtocolError",
    "VideoMessage",
    "AudioMessage",
    "encode_media",
    "encode_video",
    "encode_audio",
    "decode_media",
    "decode_text",
    "decode_jpeg",
    "encode_jpeg",
]

# Largest frame side the server accepts (pixels): the model resizes frames to ~64 px anyway.
MAX_SIDE = 4096
# Audio input rates accepted (Hz) and channels per chunk.
MIN_RATE, MAX_RATE = 1000, 384_000
MAX_CHANNELS = 16
# Largest JSON header of a binary message (bytes).
MAX_HEADER = 4096


class ProtocolError(ValueError):
    """A message that does not follow the protocol; ``code`` is the error code sent back."""

    def __init__(self, message: str, code: str = "bad_message"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class VideoMessage:
    """One frame at stream time ``t``: ``jpeg`` bytes (decoded later, off the event loop) or ``rgb``
    (H, W, 3) uint8."""

    t: float
    jpeg: bytes | None = None
    rgb: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return len(self.jpeg) if self.jpeg is not None else int(self.rgb.nbytes)

    def frame(self) -> np.ndarray:
        """(H, W, 3) uint8 (decodes a JPEG)."""
        return self.rgb if self.rgb is not None else decode_jpeg(self.jpeg)


@dataclass(frozen=True)
class AudioMessage:
    """An audio chunk: ``samples`` float32 (N,) mono or (C, N), first sample at ``t0``, ``rate`` Hz."""

    t0: float
    rate: int
    samples: np.ndarray

    @property
    def n(self) -> int:
        return int(self.samples.shape[-1])

    @property
    def end(self) -> float:
        """Stream time just after the last sample."""
        return self.t0 + self.n / self.rate

    @property
    def nbytes(self) -> int:
        return int(self.samples.nbytes)


def _finite(h: dict, key: str) -> float:
    v = h.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ProtocolError(f"{h.get('type')} header field '{key}' must be a finite number, got {v!r}")
    return float(v)


def _int(h: dict, key: str, lo: int, hi: int, default: int | None = None) -> int:
    v = h.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ProtocolError(
            f"{h.get('type')} header field '{key}' must be an integer in [{lo}, {hi}], got {v!r}"
        )
    return v


def encode_media(header: dict, payload: bytes) -> bytes:
    """``[uint32 n][header JSON][payload]``."""
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<I", len(h)) + h + payload


def encode_video(t: float, frame: np.ndarray | None = None, jpeg: bytes | None = None) -> bytes:
    """A video message: ``frame`` (H, W, 3) uint8 as raw RGB, or ``jpeg`` bytes."""
    if jpeg is not None:
        return encode_media({"type": "video", "t": float(t), "format": "jpeg"}, jpeg)
    f = np.ascontiguousarray(frame, dtype=np.uint8)
    h, w = f.shape[:2]
    return encode_media(
        {"type": "video", "t": float(t), "format": "rgb", "width": w, "height": h}, f.tobytes()
    )


def encode_audio(t0: float, rate: int, samples: np.ndarray, fmt: str = "f32") -> bytes:
    """An audio message: ``samples`` (N,) mono or (C, N) float in [-1, 1], sent as f32 or s16."""
    x = np.asarray(samples, dtype=np.float32)
    channels = 1 if x.ndim == 1 else x.shape[0]
    inter = x if x.ndim == 1 else x.T.reshape(-1)  # (N, C) interleaved
    if fmt == "s16":
        payload = np.clip(np.round(inter * 32768.0), -32768, 32767).astype("<i2").tobytes()
    else:
        payload = inter.astype("<f4").tobytes()
    header = {"type": "audio", "t0": float(t0), "rate": int(rate), "format": fmt, "channels": channels}
    return encode_media(header, payload)


def decode_media(data: bytes) -> VideoMessage | AudioMessage:
    """Parse a binary message (no JPEG decoding). Raises :class:`ProtocolError` naming the problem."""
    if len(data) < 4:
        raise ProtocolError(f"binary message of {len(data)} bytes is shorter than its 4-byte header length")
    (n,) = struct.unpack_from("<I", data)
    if n > MAX_HEADER or 4 + n > len(data):
        raise ProtocolError(f"binary message header length {n} is larger than the message or {MAX_HEADER}")
    try:
        h = json.loads(data[4 : 4 + n].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"binary message header is not JSON: {e}") from None
    if not isinstance(h, dict):
        raise ProtocolError("binary message header must be a JSON object")
    payload = data[4 + n :]
    kind, fmt = h.get("type"), h.get("format")
    if kind == "video":
        t = _finite(h, "t")
        if fmt == "jpeg":
            if not payload:
                raise ProtocolError("video message has an empty JPEG payload")
            return VideoMessage(t, jpeg=bytes(payload))
        if fmt == "rgb":
            w, hh = _int(h, "width", 1, MAX_SIDE), _int(h, "height", 1, MAX_SIDE)
            if len(payload) != w * hh * 3:
                raise ProtocolError(
                    f"rgb video payload has {len(payload)} bytes, expected {w}x{hh}x3 = {w * hh * 3}"
                )
            return VideoMessage(t, rgb=np.frombuffer(payload, dtype=np.uint8).reshape(hh, w, 3))
        raise ProtocolError(f"video message format {fmt!r} is not 'jpeg' or 'rgb'")
    if kind == "audio":
        t0 = _finite(h, "t0")
        rate = _int(h, "rate", MIN_RATE, MAX_RATE)
        ch = _int(h, "channels", 1, MAX_CHANNELS, default=1)
        width = {"f32": 4, "s16": 2}.get(fmt)
        if width is None:
            raise ProtocolError(f"audio message format {fmt!r} is not 'f32' or 's16'")
        if len(payload) % (width * ch):
            raise ProtocolError(
                f"audio payload of {len(payload)} bytes is not whole {fmt} samples x {ch} channels"
            )
        x = np.frombuffer(payload, dtype="<f4" if fmt == "f32" else "<i2").astype(np.float32)
        if fmt == "s16":
            x = x / 32768.0
        if not np.isfinite(x).all():
            raise ProtocolError("audio samples contain NaN or Inf")
        x = x if ch == 1 else x.reshape(-1, ch).T.copy()  # (C, N)
        return AudioMessage(t0, rate, x)
    raise ProtocolError(f"binary message type {kind!r} is not 'video' or 'audio'")


def decode_text(text: str) -> dict:
    """Parse a JSON text message (an object with a string ``type``)."""
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"text message is not JSON: {e}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("text message must be a JSON object with a string 'type'")
    return msg


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG (or PNG) bytes -> (H, W, 3) uint8 RGB."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width > MAX_SIDE or im.height > MAX_SIDE:
                raise ProtocolError(f"image of {im.width}x{im.height} px is larger than {MAX_SIDE} px a side")
            return np.asarray(im.convert("RGB"))
    except ProtocolError:
        raise
    except Exception as e:  # PIL raises several types for broken files
        raise ProtocolError(f"video frame is not a readable JPEG: {e}", code="bad_media") from None


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    """(H, W, 3) uint8 -> JPEG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
