"""Limits and isolation: too many sessions, a wrong token, malformed / oversized / out-of-order
messages are refused on their own socket while another session keeps streaming unaffected."""

from __future__ import annotations

import asyncio
import json
import struct

import pytest
from serve_helpers import QUESTIONS, THRESHOLD, assert_same, reference

from ssm_mm.serve import Client, ServeError
from ssm_mm.serve.protocol import encode_audio, encode_media, encode_video


async def _bad_socket(url: str, token: str) -> list[dict]:
    """Open a session and send it one broken message of each kind; returns the replies."""
    from websockets.asyncio.client import connect

    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None) as ws:
        await ws.send(json.dumps({"type": "open"}))
        assert json.loads(await ws.recv())["type"] == "ready"
        import numpy as np

        frame = np.zeros((8, 8, 3), np.uint8)
        bad = [
            b"\x01\x02",  # shorter than the header length
            struct.pack("<I", 3) + b"{x}",  # header is not JSON
            encode_media({"type": "video", "t": 0.1, "format": "rgb", "width": 8, "height": 8}, b"\0" * 10),
            encode_media({"type": "video", "t": 0.1, "format": "jpeg"}, b"not a jpeg"),
            encode_media(
                {"type": "audio", "t0": 0.0, "rate": 16000, "format": "f32"}, struct.pack("<f", float("nan"))
            ),
            "not json",
            json.dumps({"type": "dance"}),
            json.dumps({"type": "ask", "text": ""}),
            encode_video(0.5, frame),
            encode_video(0.25, frame),  # goes back in time
            b"\0" * (70 << 10),  # over max_message_bytes (64 KiB)
            encode_audio(0.0, 44100, np.zeros(441, np.float32)),
            encode_audio(0.0, 16000, np.zeros(160, np.float32)),  # another rate
        ]
        for msg in bad:
            await ws.send(msg)
        await ws.send(json.dumps({"type": "ping", "id": 1}))
        replies = []
        while True:
            r = json.loads(await asyncio.wait_for(ws.recv(), 20))
            if r["type"] == "pong":
                break
            replies.append(r)
        # the broken JPEG is decoded on the worker when its tick's media goes in: media past the first
        # tick's end completes it, and the JPEG's error comes after the pong
        await ws.send(encode_video(1.0, frame))
        for i in range(10):  # 0.1-s chunks (the socket's max_message_bytes is 64 KiB)
            await ws.send(encode_audio(0.01 + 0.1 * i, 44100, np.zeros(4410, np.float32)))
        replies.append(json.loads(await asyncio.wait_for(ws.recv(), 20)))
        return replies


def test_bad_messages_too_many_sessions_and_wrong_token(make_server, model, media):
    srv = make_server(max_sessions=2, token="tok", max_message_bytes=64 << 10)
    good = Client(srv.ws_url, token="tok")

    async def scenario():
        stream = asyncio.create_task(
            good.astream(
                media[0], QUESTIONS, options={"speak_threshold": THRESHOLD}, realtime=True, speed=4.0
            )
        )
        await asyncio.sleep(0.3)
        replies = await _bad_socket(srv.ws_url, "tok")  # the second of 2 sessions
        # a third session while two are held: refused
        with pytest.raises(ServeError) as full:
            await Client(srv.ws_url, token="tok").astream(media[1])
        # a wrong token: HTTP 401 before any WebSocket
        from websockets.exceptions import InvalidStatus

        with pytest.raises(InvalidStatus) as denied:
            await Client(srv.ws_url, token="wrong").astream(media[1])
        return await stream, replies, full.value, denied.value

    res, replies, full, denied = asyncio.run(scenario())
    codes = [r.get("code") for r in replies]
    assert codes == [
        "bad_message",
        "bad_message",
        "bad_message",
        "bad_message",
        "bad_message",
        "bad_message",
        "bad_message",
        "out_of_order",
        "too_large",
        "bad_media",
        "bad_media",
    ], replies
    assert all(r["type"] == "error" and r["message"] for r in replies)
    assert full.code == "too_many_sessions"
    assert denied.response.status_code == 401
    assert_same(res, reference(model, media[0]))  # the good stream never noticed
