"""A Python client that streams a media file to an ``ssm_mm.serve`` server (tests, load benchmark).

    from ssm_mm.serve import Client
    res = Client("ws://127.0.0.1:8765/ws").stream("clip.mp4", [(3.0, "how many times did the dog bark?")],
                                                  realtime=True)
    res.labels, res.responses, res.answers, res.errors, res.latency

Media goes out as a live source would send it: each frame at its time, audio in chunks of
``audio_chunk_seconds`` at each chunk's end, a question ``(t, text)`` at media time ``t`` (seconds from
the media start; the server places it at the end of the tick holding ``t``). ``realtime=True`` paces
by the wall clock (``speed`` times faster); otherwise the client sends as fast as the server keeps up
(it stays at most ``max_lead`` seconds of stream ahead of the labels it got back).

Durability: ``stop_after=T`` stops after media time ``T`` without closing the stream (as a dropped
connection would) and returns; ``stream(..., session=res.session)`` later reconnects, and the
server's ``ready`` message says which media it already has (``video_until`` / ``audio_until``: from
memory, or from its last snapshot after a restart), so only the rest is sent. Results a resumed
session sends again (the ticks between its snapshot and a crash) are deduplicated by tick / question
id / time: :class:`ServeResult` keeps the last copy and counts the repeats.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssm_mm.serve.protocol import encode_audio, encode_jpeg, encode_video

__all__ = ["Client", "ServeResult", "ServeError"]

# Results between two acknowledgements (the server keeps unacknowledged results for a reconnect).
_ACK_EVERY = 16


class ServeError(RuntimeError):
    """The server refused the stream (``code``: too_many_sessions, unknown_session, ...) or went away."""

    def __init__(self, message: str, code: str = "error"):
        super().__init__(message)
        self.code = code


@dataclass
class ServeResult:
    """What one stream got back (merged over reconnects when the same object is passed again).

    labels: ``{tick: label message}`` (``tick, start, end, label, index, score, speak, has_media``).
    responses: proactive responses ``{"t", "text", "score"}`` by stream time.
    answers: ``{question id: answer message}`` (``t`` asked at, ``placed``, ``text`` the answer).
    errors: error messages received (``code``, ``message``).
    latency: client-observed seconds from sending the message that completed a tick to receiving its
             label (realtime streams only).
    """

    session: str | None = None
    ready: list[dict] = field(default_factory=list)
    labels: dict[int, dict] = field(default_factory=dict)
    responses: dict[tuple, dict] = field(default_factory=dict)
    answers: dict[object, dict] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)
    closed: dict | None = None
    repeats: int = 0
    last_seq: int = 0  # the latest result sequence number received (a resume asks for the rest)
    latency: list[float] = field(default_factory=list)
    messages_sent: int = 0
    bytes_sent: int = 0

    def label_list(self) -> list[dict]:
        return [self.labels[k] for k in sorted(self.labels)]

    def response_list(self) -> list[dict]:
        return [self.responses[k] for k in sorted(self.responses)]


def _load_media(media, fps: float):
    """A :class:`ssm_mm.streaming.drive.StreamMedia` as is, or a file decoded at the server's fps."""
    from ssm_mm.streaming.drive import StreamMedia, decode_stream_media

    if isinstance(media, StreamMedia):
        return media
    from ssm_mm.media import probe_media

    info = probe_media(media)
    return decode_stream_media(
        media if info.has_video else None, media if info.has_audio else None, fps=fps, t0=0.0
    )


class Client:
    """Streams media files to a server over one WebSocket per stream.

    url: the server's WebSocket endpoint (``ws://host:port/ws``).
    token: bearer token, when the server has one.
    jpeg: send frames as JPEG (smaller, lossy) instead of raw RGB.
    audio_chunk_seconds: audio sent per message.
    audio_format: "f32" or "s16".
    timeout: seconds to wait for the server's answers at the end of a stream.
    """

    def __init__(
        self,
        url: str = "ws://127.0.0.1:8765/ws",
        token: str | None = None,
        *,
        jpeg: bool = False,
        audio_chunk_seconds: float = 0.1,
        audio_format: str = "f32",
        timeout: float = 60.0,
        max_lead: float = 5.0,
    ):
        if audio_format not in ("f32", "s16"):
            raise ValueError(f"audio_format must be 'f32' or 's16', got {audio_format!r}")
        if not audio_chunk_seconds > 0:
            raise ValueError(f"audio_chunk_seconds must be > 0, got {audio_chunk_seconds}")
        self.url, self.token, self.jpeg = url, token, jpeg
        self.chunk, self.audio_format, self.timeout, self.max_lead = (
            audio_chunk_seconds,
            audio_format,
            timeout,
            max_lead,
        )

    def stream(self, media, questions=(), **kw) -> ServeResult:
        """Blocking :meth:`astream`."""
        return asyncio.run(self.astream(media, questions, **kw))

    async def astream(
        self,
        media,
        questions=(),
        *,
        realtime: bool = False,
        speed: float = 1.0,
        session: str | None = None,
        stop_after: float | None = None,
        options: dict | None = None,
        result: ServeResult | None = None,
    ) -> ServeResult:
        """Stream ``media`` (a file path or a decoded StreamMedia) with ``questions`` [(t, text)].

        session: resume this session (sends only what the server does not have).
        stop_after: stop after this media time, wait for the labels up to it, and disconnect without
            closing the stream (the session stays on the server).
        options: session options for a new stream (``speak_threshold``, ``max_answer_tokens``, ...).
        result: a previous ServeResult of this stream to merge into (reconnects).
        """
        from websockets.asyncio.client import connect

        if realtime and not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        res = result or ServeResult()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        if isinstance(media, (str, Path)):
            from ssm_mm.media import probe_media

            info = probe_media(media)
            modalities = [k for k, on in (("video", info.has_video), ("audio", info.has_audio)) if on]
        else:
            modalities = list(media.modalities)
        async with connect(self.url, additional_headers=headers, max_size=None, compression=None) as ws:
            hello = {"type": "open", "modalities": modalities, **(options or {})}
            if session is not None:
                hello = {"type": "open", "session": session, "last_seq": res.last_seq}
            await ws.send(json.dumps(hello))
            ready = json.loads(await ws.recv())
            if ready.get("type") == "error":
                raise ServeError(
                    f"server refused the stream: {ready.get('message')}", ready.get("code", "error")
                )
            res.session = ready["session"]
            res.ready.append(ready)
            m = media if not isinstance(media, (str, Path)) else _load_media(media, ready["fps"])
            plan = self._plan(m, questions, ready, res, stop_after)
            progress = asyncio.Event()
            recv = asyncio.create_task(self._receive(ws, res, progress))
            sent_video: list[tuple[float, float]] = []  # (frame time, wall)
            sent_audio: list[tuple[float, float]] = []  # (chunk end, wall)
            try:
                wall0, start = time.perf_counter(), (plan[0][0] if plan else 0.0)
                for avail, kind, payload in plan:
                    if realtime:
                        delay = wall0 + (avail - start) / speed - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    else:
                        while not recv.done() and avail - self._label_front(res, m.t0) > self.max_lead:
                            progress.clear()
                            await asyncio.wait_for(progress.wait(), self.timeout)
                    if recv.done():
                        break
                    data = payload() if callable(payload) else payload
                    await ws.send(data)
                    res.messages_sent += 1
                    res.bytes_sent += len(data)
                    if kind == "video":
                        sent_video.append((avail, time.perf_counter()))
                    elif kind == "audio":
                        sent_audio.append((avail, time.perf_counter()))
                if stop_after is not None:
                    want = m.t0 + stop_after - 2 * ready["tick_seconds"]
                    deadline = time.perf_counter() + self.timeout
                    while self._label_front(res, m.t0) < want - 1e-9 and time.perf_counter() < deadline:
                        progress.clear()
                        with _suppress_timeout():
                            await asyncio.wait_for(progress.wait(), 0.5)
                    recv.cancel()
                    return res
                close_wall = time.perf_counter()
                await ws.send(json.dumps({"type": "close"}))
                await asyncio.wait_for(recv, self.timeout)
            finally:
                if not recv.done():
                    recv.cancel()
        if realtime:
            res.latency += _latencies(res, sent_video, sent_audio, close_wall, ready["modalities"])
        return res

    @staticmethod
    def _label_front(res: ServeResult, t0: float) -> float:
        """Stream time up to which labels came back."""
        return max((x["end"] for x in res.labels.values()), default=t0)

    def _plan(self, m, questions, ready: dict, res: ServeResult, stop_after: float | None) -> list:
        """(available at, kind, payload) in send order: frames at their time, audio chunks at their
        end, questions at their time; media the server already has is skipped."""
        items = []
        v_from, a_from = ready.get("video_until"), ready.get("audio_until")
        stop = math.inf if stop_after is None else m.t0 + stop_after
        frames = m.frames.numpy() if hasattr(m.frames, "numpy") else np.asarray(m.frames)
        for i, t in enumerate(np.asarray(m.frame_times, dtype=np.float64)):
            if (v_from is not None and t <= v_from) or t > stop:
                continue
            f = frames[i]
            items.append(
                (
                    float(t),
                    "video",
                    (lambda f=f, t=t: encode_video(t, jpeg=encode_jpeg(f)))
                    if self.jpeg
                    else (lambda f=f, t=t: encode_video(t, f)),
                )
            )
        x = m.samples.numpy() if hasattr(m.samples, "numpy") else np.asarray(m.samples)
        sr, n = m.sample_rate, x.shape[-1]
        i0 = 0 if a_from is None else max(0, round((a_from - m.audio_t0) * sr))
        step = max(1, round(self.chunk * sr))
        for i in range(i0, n, step):
            j = min(n, i + step)
            end = m.audio_t0 + j / sr
            if end > stop + 1e-9 and m.audio_t0 + i / sr >= stop:
                break
            items.append(
                (
                    end,
                    "audio",
                    lambda i=i, j=j: encode_audio(m.audio_t0 + i / sr, sr, x[..., i:j], self.audio_format),
                )
            )
        pending = set(ready.get("pending_questions") or [])
        for k, (t, text) in enumerate(questions):
            if k in res.answers or k in pending or m.t0 + t > stop:
                continue
            items.append((m.t0 + t, "ask", json.dumps({"type": "ask", "id": k, "t": m.t0 + t, "text": text})))
        order = {"video": 0, "audio": 1, "ask": 2}
        items.sort(key=lambda it: (it[0], order[it[1]]))
        return items

    @staticmethod
    async def _receive(ws, res: ServeResult, progress: asyncio.Event) -> None:
        async for raw in ws:
            msg = json.loads(raw)
            kind = msg.get("type")
            wall = time.perf_counter()
            res.last_seq = max(res.last_seq, msg.get("seq") or 0)
            if msg.get("seq") and msg["seq"] % _ACK_EVERY == 0:  # the server may forget what we have
                await ws.send(json.dumps({"type": "ack", "seq": res.last_seq}))
            if kind == "label":
                res.repeats += msg["tick"] in res.labels
                res.labels[msg["tick"]] = {**msg, "_recv": wall}
                progress.set()
            elif kind == "response":
                key = (msg["t"], msg["text"])
                res.repeats += key in res.responses
                res.responses[key] = msg
            elif kind == "answer":
                res.repeats += msg["id"] in res.answers
                res.answers[msg["id"]] = msg
            elif kind == "error":
                res.errors.append(msg)
            elif kind == "closed":
                res.closed = msg
                progress.set()
                return


class _suppress_timeout:
    def __enter__(self):
        return self

    def __exit__(self, et, e, tb):
        return et is not None and issubclass(et, (asyncio.TimeoutError, TimeoutError))


def _latencies(res: ServeResult, video, audio, close_wall: float, modalities) -> list[float]:
    """Per tick: label receipt - the wall time the tick's last needed media message was sent
    (video: the first frame after the tick end; audio: the chunk reaching the tick end)."""
    vt = np.array([v[0] for v in video]) if video else np.zeros(0)
    vw = np.array([v[1] for v in video]) if video else np.zeros(0)
    at = np.array([a[0] for a in audio]) if audio else np.zeros(0)
    aw = np.array([a[1] for a in audio]) if audio else np.zeros(0)
    out = []
    for lab in res.labels.values():
        e, need = lab["end"], []
        if "video" in modalities:
            i = np.searchsorted(vt, e + 1e-9, side="left") if vt.size else 0
            need.append(vw[i] if i < vt.size else close_wall)
        if "audio" in modalities:
            i = np.searchsorted(at, e - 1e-9, side="left") if at.size else 0
            need.append(aw[i] if i < at.size else close_wall)
        if need:
            out.append(lab["_recv"] - max(need))
    return out
