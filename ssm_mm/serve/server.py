"""The WebSocket server: many live streams, stepped together on one worker thread.

Threads (why two): the asyncio **event loop** owns the sockets and only parses, validates and queues
messages (microseconds each), so it never blocks; ONE **worker** thread owns every
:class:`~ssm_mm.StreamingSession` (sessions are not thread-safe) and runs *rounds*: push each
session's queued media (JPEG decoding, resampling and featurizing included), one
:func:`ssm_mm.step_sessions` call over every session that received something (one batched forward
per tick), the questions that came due, the outputs, the snapshots. A round starts as soon as
there is input, so under load a round simply covers more input (continuous batching); results go
back to the loop with ``call_soon_threadsafe``. Snapshot files are written by a third thread.

Questions and exactness: a question at stream time ``T`` is placed at the end ``P`` of the tick
holding ``T`` (where training puts text) and asked when the session's time reaches ``P``. Until then
the session is fed media only before the cut ``c = P + margin`` (``margin``: 1 ms, or the audio
resampler's look-ahead); once every declared modality has queued media at or after ``c``, the worker
calls ``advance_to(c)`` and steps, so the tick completes and the question is asked exactly where
:func:`ssm_mm.streaming.drive.drive` (the CLI and evaluation driver) asks it. Hence a served stream
gives the same labels, proactive responses and answers as an in-process session fed the same media.

Latency (``/metrics``): a tick's latency is the time from the arrival of the newest media message
pushed in the round that completed it (media waits in the queue until it can complete a tick, so
that is the message completing the tick) to the moment its outputs are handed to the event loop.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hmac
import itertools
import json
import logging
import math
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np

import ssm_mm
from ssm_mm.data.interleave import place_text_time, tick_end_time, tick_index
from ssm_mm.serve.protocol import AudioMessage, ProtocolError, VideoMessage, decode_media, decode_text
from ssm_mm.serve.snapshots import SESSION_ID, SnapshotError, SnapshotStore

__all__ = ["ServeConfig", "Server"]

log = logging.getLogger("ssm_mm.serve")

STATIC = Path(__file__).resolve().parent / "static"
_STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript")}
# Two stream-clock times closer than this are the same time (float noise of t0 + k·τ).
_TIME_EPS = 1e-9
# Smallest margin past a question's tick end at which the tick is declared complete (as drive.py).
_MIN_MARGIN = 1e-3
# Per-tick latencies kept for /metrics percentiles (a ring: constant memory).
_LATENCY_WINDOW = 20_000
# Seconds of answer generation per round, in ticks (see Server._round).
_ASK_BUDGET = 0.25
# Question ids remembered per session (a question sent again with one of them is not asked twice).
_ANSWERED_IDS = 1024
# Session options a client may set in its "open" message (the rest are the server's).
_CLIENT_OPTIONS = ("modalities", "t0", "speak_threshold", "max_answer_tokens")


@dataclass(frozen=True)
class ServeConfig:
    """Server settings (``python -m ssm_mm.serve --help`` shows them as flags).

    host / port:         where to listen (localhost by default; port 0 = any free port).
    token:               when set, ``/ws`` and ``/metrics`` need ``Authorization: Bearer TOKEN`` (or
                         ``?token=TOKEN``, for browsers, which cannot set WebSocket headers).
    max_sessions:        sessions held in memory (connected or waiting for a reconnect); one more is
                         refused with ``too_many_sessions``.
    snapshot_dir:        where session snapshots go (None: no durability, nothing written).
    snapshot_every:      seconds of *stream* between two snapshots of a session.
    max_message_bytes:   a larger message is refused with ``too_large`` (the socket stays open up to
                         twice this; beyond, the WebSocket layer closes it with code 1009).
    max_queue_bytes:     media received but not yet pushed into a session (per session); beyond it a
                         message is refused with ``buffer_full`` (the client sends faster than real time
                         or the server is overloaded).
    session_buffer_bytes: the session's own media buffer cap (``max_buffer_bytes``).
    idle_seconds:        a session without a connection stays in memory this long, then is snapshotted
                         (when ``snapshot_dir`` is set) and dropped from memory.
    round_interval:      seconds between the starts of two worker rounds (at least): the input of
                         that long is stepped in one batch; adds up to this much to a tick's latency.
    max_outbox:          results kept per session for a reconnect to replay (every result carries a
                         sequence number ``seq``; a client resuming with ``last_seq`` gets the later ones).
    """

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    max_sessions: int = 128
    snapshot_dir: str | None = None
    snapshot_every: float = 10.0
    max_message_bytes: int = 4 << 20
    max_queue_bytes: int = 8 << 20
    session_buffer_bytes: int = 16 << 20
    idle_seconds: float = 300.0
    max_outbox: int = 512
    round_interval: float = 0.1

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"serve option {name}={getattr(self, name)!r}: {why}")

        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise bad("port", "must be an integer in [0, 65535]")
        for name in (
            "max_sessions",
            "max_message_bytes",
            "max_queue_bytes",
            "session_buffer_bytes",
            "max_outbox",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(name, "must be an integer >= 1")
        if not isinstance(self.round_interval, (int, float)) or not 0 <= self.round_interval <= 10:
            raise bad("round_interval", "must be a number of seconds in [0, 10]")
        for name in ("snapshot_every", "idle_seconds"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise bad(name, "must be a number of seconds > 0")
        if self.token is not None and not self.token:
            raise bad("token", "must not be empty (leave it unset for no token)")


class _Refused(Exception):
    """An open/resume the server turns down: ``code`` and a one-line message go to the client."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class _Question:
    placed: float  # stream time it is asked at (end of the tick holding t)
    t: float
    qid: object
    text: str


@dataclass
class _Live:
    """One session held by the server. Fields are owned by the worker unless marked (loop) or (lock)."""

    sid: str
    session: object  # ssm_mm.StreamingSession
    # (lock): media and questions received, not yet taken by the worker
    video: deque = field(default_factory=deque)  # (VideoMessage, arrival, asks_received)
    audio: deque = field(default_factory=deque)  # (AudioMessage, arrival, asks_received)
    asks: deque = field(default_factory=deque)  # _Question (placed filled by the worker)
    asks_received: int = 0  # questions received so far; each media item records it on arrival
    asks_taken: int = 0  # questions the worker has taken from ``asks``
    close_requested: bool = False
    queued_bytes: int = 0
    # (loop): what was received, for ordering checks and the resume cursor
    recv_video_until: float | None = None
    recv_audio_end: float | None = None
    recv_audio_rate: int | None = None
    out_q: asyncio.Queue | None = None  # the attached connection's send queue
    replay: deque = field(default_factory=deque)  # (seq, message): the latest results, for a reconnect
    replay_bytes: int = 0
    dropped_out: int = 0
    bytes_in: int = 0
    messages_in: int = 0
    messages_out: int = 0
    # worker
    attached: bool = False
    detached_at: float = 0.0
    questions: list = field(default_factory=list)  # pending _Question, sorted by placed
    answered: deque = field(default_factory=lambda: deque(maxlen=_ANSWERED_IDS))  # ids asked already
    seq: int = 0  # sequence number of the last result
    video_until: float | None = None  # media pushed into the session
    audio_end: float | None = None
    audio_rate: int | None = None  # the session's audio input rate (known after the first push)
    snap_time: float = -math.inf
    questions_final: bool = False  # closing: the media ends before a pending question's tick
    finishing: bool = False  # closing: everything is pushed, close the session this round
    closed: bool = False


def _percentiles(xs) -> dict:
    if not len(xs):
        return {"p50_s": None, "p99_s": None, "n": 0}
    a = np.asarray(xs, dtype=np.float64)
    return {"p50_s": float(np.percentile(a, 50)), "p99_s": float(np.percentile(a, 99)), "n": int(a.size)}


class Server:
    """Serve ``model`` over WebSockets (module docstring; the protocol is in :mod:`ssm_mm.serve`).

    ``Server(model, ServeConfig(...)).run()`` blocks until SIGINT/SIGTERM (the CLI);
    ``start()`` / ``stop()`` run it on a background thread (tests, embedding), ``url`` says where.
    """

    def __init__(self, model, config: ServeConfig | None = None):
        self.model = model
        self.config = config or ServeConfig()
        self.store = SnapshotStore(self.config.snapshot_dir) if self.config.snapshot_dir else None
        feats = model.features
        self.tau = float(feats.tick_seconds)
        self._info = {
            "tick_seconds": self.tau,
            "fps": float(feats.fps),
            "frame_size": int(feats.frame_size),
            "sample_rate": int(feats.sample_rate),
            "labels": list(model.labels),
        }
        self._lives: dict[str, _Live] = {}  # worker-owned registry
        self._lock = threading.Lock()  # guards the (lock) fields of every _Live
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = False
        self._worker: threading.Thread | None = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="ssm_mm-snapshots")
        self._latency: deque = deque(maxlen=_LATENCY_WINDOW)
        self._rounds: deque = deque(maxlen=_LATENCY_WINDOW)
        self._counts = {"ticks": 0, "errors": 0, "refused": 0, "snapshots": 0, "rounds": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ws_server = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop_event: asyncio.Event | None = None
        self._start_error: BaseException | None = None
        self._t_start = time.time()
        self._ask_deadline, self._asked = 0.0, 0
        self.saved_on_stop = 0  # sessions snapshotted by a graceful stop

    # ----------------------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        return self._ws_server.sockets[0].getsockname()[1] if self._ws_server else self.config.port

    @property
    def url(self) -> str:
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "ws"

    def start(self, timeout: float = 30.0) -> Server:
        """Run the server on a background thread; returns once it listens."""
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main()), name="ssm_mm-serve", daemon=True
        )
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError("the server did not start in time")
        if self._start_error is not None:
            raise self._start_error
        return self

    def stop(self, timeout: float = 30.0) -> int:
        """Graceful stop (from another thread): close connections, snapshot every open session.
        Returns the number of sessions snapshotted."""
        if self._thread is not None and not self._thread.is_alive():
            return self.saved_on_stop  # stopped already
        if self._loop is not None and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        if self._thread is not None:
            self._thread.join(timeout)
        return self.saved_on_stop

    def run(self, on_ready: Callable[[Server], None] | None = None) -> int:
        """Serve until SIGINT/SIGTERM (blocking); returns the sessions snapshotted on the way out."""
        import signal

        async def main():
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, lambda: self._stop_event and self._stop_event.set())
            await self._main(on_ready)

        asyncio.run(main())
        if self._start_error is not None:
            raise self._start_error
        return self.saved_on_stop

    async def _main(self, on_ready: Callable[[Server], None] | None = None) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._worker = threading.Thread(target=self._worker_main, name="ssm_mm-worker", daemon=True)
        self._worker.start()
        cfg = self.config
        try:
            self._ws_server = await serve(
                self._handle,
                cfg.host,
                cfg.port,
                process_request=self._process_request,
                compression=None,  # media is already compact; deflate would only cost CPU
                max_size=2 * cfg.max_message_bytes,
                max_queue=64,
                ping_interval=20,
                ping_timeout=60,
            )
        except OSError as e:
            self._start_error = OSError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}")
            self._stopping = True
            self._wake.set()
            self._started.set()
            return
        self._started.set()
        if on_ready is not None:
            on_ready(self)
        await self._stop_event.wait()
        self._ws_server.close()  # closes every connection with 1001 (going away)
        await self._ws_server.wait_closed()
        self._stopping = True
        self._wake.set()
        await asyncio.to_thread(self._worker.join)
        self._writer.shutdown(wait=True)

    # ---------------------------------------------------------------------------------- HTTP

    def _authorized(self, request) -> bool:
        token = self.config.token
        if token is None:
            return True
        given = ""
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth[len("Bearer ") :].strip()
        else:
            given = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
        return hmac.compare_digest(given.encode(), token.encode())

    async def _process_request(self, connection, request):
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        path = urlsplit(request.path).path
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("Host"):
            # a page from another site must not drive a localhost server through the visitor's browser
            return connection.respond(HTTPStatus.FORBIDDEN, f"origin {origin} is not this server\n")
        if path == "/ws":
            if not self._authorized(request):
                self._counts["refused"] += 1
                return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token\n")
            return None  # go on with the WebSocket handshake
        if path in _STATIC_FILES:
            name, ctype = _STATIC_FILES[path]
            body = (STATIC / name).read_bytes()
            headers = Headers(
                [("Content-Type", ctype), ("Content-Length", str(len(body))), ("Cache-Control", "no-cache")]
            )
            return Response(200, "OK", headers, body)
        if path == "/health":
            return self._json_response(self._health())
        if path == "/metrics":
            if not self._authorized(request):
                return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token\n")
            return self._json_response(await self._call_worker(self._metrics))
        return connection.respond(
            HTTPStatus.NOT_FOUND, f"{path}: not found (try /, /ws, /health, /metrics)\n"
        )

    @staticmethod
    def _json_response(obj: dict):
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        body = (json.dumps(obj, indent=1) + "\n").encode()
        headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return Response(200, "OK", headers, body)

    def _health(self) -> dict:
        return {
            "status": "ok",
            "sessions": len(self._lives),
            "max_sessions": self.config.max_sessions,
            "snapshots": self.store is not None,
            "uptime_s": round(time.time() - self._t_start, 3),
            **{k: self._info[k] for k in ("tick_seconds", "fps", "sample_rate")},
        }

    # ----------------------------------------------------------------------------- WebSocket

    async def _call_worker(self, fn: Callable, *args):
        """Run ``fn(*args)`` on the worker thread (between rounds) and await its result."""
        fut: Future = Future()
        self._commands.put((fn, args, fut))
        self._wake.set()
        return await asyncio.wrap_future(fut)

    async def _handle(self, ws) -> None:
        """One connection = one session: an "open" message, then media / questions / close."""
        try:
            first = await asyncio.wait_for(ws.recv(), timeout=30)
            msg = decode_text(first) if isinstance(first, str) else None
            if msg is None or msg.get("type") != "open":
                raise _Refused("bad_message", 'the first message must be {"type": "open", ...}')
            live, ready = await self._call_worker(self._open, msg)
        except _Refused as e:
            self._counts["refused"] += 1
            await ws.send(json.dumps({"type": "error", "code": e.code, "message": str(e)}))
            await ws.close(1013 if e.code == "too_many_sessions" else 1008, e.code)
            return
        except ProtocolError as e:
            await ws.send(json.dumps({"type": "error", "code": e.code, "message": str(e)}))
            await ws.close(1008, e.code)
            return
        except (TimeoutError, asyncio.TimeoutError):
            await ws.close(1008, "no open message")
            return
        except Exception:  # the peer went away before opening
            return
        if ready.get("resumed") == "snapshot":  # a fresh _Live: the received cursor is the snapshot's
            live.recv_video_until, live.recv_audio_end = ready["video_until"], ready["audio_until"]
            live.recv_audio_rate = live.audio_rate
        ready["video_until"], ready["audio_until"] = live.recv_video_until, live.recv_audio_end
        out_q: asyncio.Queue = asyncio.Queue()
        out_q.put_nowait(json.dumps(ready))
        last = msg.get("last_seq") if isinstance(msg.get("last_seq"), int) else 0
        with self._lock:
            for seq, m in live.replay:  # results the client has not seen (sent while it was away)
                if seq > last:
                    out_q.put_nowait(m)
            live.out_q = out_q
        sender = asyncio.create_task(self._send_loop(ws, out_q, live))
        try:
            async for data in ws:
                live.messages_in += 1
                live.bytes_in += len(data)
                err = self._receive(live, data)
                if err is not None:
                    self._counts["errors"] += 1
                    out_q.put_nowait(json.dumps({"type": "error", **err}))
        except Exception as e:  # ConnectionClosed and friends: the session waits for a reconnect
            log.debug("session %s: connection ended: %s", live.sid, e)
        finally:
            live.out_q = None  # results from now on only go to the replay buffer
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            if not self._stopping:
                with contextlib.suppress(Exception):
                    await self._call_worker(self._detach, live)

    async def _send_loop(self, ws, out_q: asyncio.Queue, live: _Live) -> None:
        while True:
            m = await out_q.get()
            if m is None:  # the session ended: close the connection
                await ws.close(1000, "stream closed")
                return
            await ws.send(m)
            live.messages_out += 1

    def _receive(self, live: _Live, data) -> dict | None:
        """Validate one client message and queue it for the worker (event loop; cheap). Returns an
        error ``{"code", "message"}`` to send back, or None."""
        cfg = self.config
        if len(data) > cfg.max_message_bytes:
            return {
                "code": "too_large",
                "message": f"message of {len(data)} bytes > max_message_bytes={cfg.max_message_bytes}",
            }
        try:
            if isinstance(data, str):
                return self._receive_text(live, decode_text(data))
            m = decode_media(data)
        except ProtocolError as e:
            return {"code": e.code, "message": str(e)}
        if live.close_requested:
            return {"code": "closed", "message": "media after close"}
        if isinstance(m, VideoMessage):
            if live.recv_video_until is not None and m.t < live.recv_video_until:
                return {
                    "code": "out_of_order",
                    "message": f"video t={m.t} < {live.recv_video_until}, the previous frame's time",
                }
        else:
            if live.recv_audio_rate is not None and m.rate != live.recv_audio_rate:
                return {
                    "code": "bad_media",
                    "message": f"audio rate {m.rate} Hz differs from this stream's {live.recv_audio_rate} Hz",
                }
            if live.recv_audio_end is not None and m.t0 < live.recv_audio_end - 0.5 / m.rate:
                return {
                    "code": "out_of_order",
                    "message": f"audio t0={m.t0} overlaps audio received up to {live.recv_audio_end:.6f}",
                }
        with self._lock:
            if live.queued_bytes + m.nbytes > cfg.max_queue_bytes:
                return {
                    "code": "buffer_full",
                    "message": f"{live.queued_bytes} bytes of media are waiting "
                    f"(max_queue_bytes={cfg.max_queue_bytes}); send in real time",
                }
            live.queued_bytes += m.nbytes
            if isinstance(m, VideoMessage):
                live.video.append((m, time.perf_counter(), live.asks_received))
            else:
                live.audio.append((m, time.perf_counter(), live.asks_received))
        if isinstance(m, VideoMessage):
            live.recv_video_until = m.t
        else:
            live.recv_audio_end, live.recv_audio_rate = m.end, m.rate
        self._wake.set()
        return None

    def _receive_text(self, live: _Live, msg: dict) -> dict | None:
        kind = msg["type"]
        if kind == "ask":
            text, qid, t = msg.get("text"), msg.get("id"), msg.get("t")
            if not isinstance(text, str) or not text.strip():
                return {"code": "bad_message", "message": "ask: 'text' must be a non-empty string", "id": qid}
            if qid is not None and not isinstance(qid, (str, int)):
                return {"code": "bad_message", "message": "ask: 'id' must be a string or an integer"}
            if t is None:  # "now": the latest media received
                t = max(
                    (x for x in (live.recv_video_until, live.recv_audio_end) if x is not None),
                    default=-math.inf,
                )
            elif isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
                return {
                    "code": "bad_message",
                    "message": f"ask: 't' must be a finite number, got {t!r}",
                    "id": qid,
                }
            with self._lock:
                live.asks.append(_Question(math.nan, float(t), qid, text))
                live.asks_received += 1
        elif kind == "ack":  # the client has every result up to seq: no need to keep them for a replay
            seq = msg.get("seq")
            if isinstance(seq, int) and not isinstance(seq, bool):
                with self._lock:
                    while live.replay and live.replay[0][0] <= seq:
                        live.replay_bytes -= len(live.replay.popleft()[1])
            return None
        elif kind == "close":
            with self._lock:
                live.close_requested = True
        elif kind == "ping":
            live.out_q.put_nowait(json.dumps({"type": "pong", "id": msg.get("id")}))
            return None
        else:
            return {
                "code": "bad_message",
                "message": f"unknown message type {kind!r} (ask, ack, close, ping)",
            }
        self._wake.set()
        return None

    def _post(self, live: _Live, messages: list[dict], end: bool = False) -> None:
        """Worker -> loop: hand ``live``'s results to its connection and its replay buffer. Results
        (not errors) get the session's next sequence numbers."""
        out = []
        for m in messages:
            if m["type"] != "error":
                live.seq += 1
                m["seq"] = live.seq
            out.append((m.get("seq"), json.dumps(m)))

        with self._lock:  # the replay buffer is read by snapshots (worker) and trimmed by acks (loop)
            for seq, m in out:
                if seq is not None:
                    live.replay.append((seq, m))
                    live.replay_bytes += len(m)
            while len(live.replay) > self.config.max_outbox:
                live.replay_bytes -= len(live.replay.popleft()[1])
                live.dropped_out += 1

        def deliver():
            if live.out_q is not None:
                for _, m in out:
                    live.out_q.put_nowait(m)
            if end and live.out_q is not None:
                live.out_q.put_nowait(None)

        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is shutting down
                self._loop.call_soon_threadsafe(deliver)

    # ------------------------------------------------------------------------- worker: control

    def _ready_message(self, live: _Live, resumed: str | None) -> dict:
        s = live.session
        with self._lock:
            pending = [q.qid for q in live.questions] + [q.qid for q in live.asks]
        return {
            "type": "ready",
            "session": live.sid,
            "resumed": resumed,
            "time": s.time,
            "ticks": s.ticks_done,
            "t0": s.t0,
            "modalities": list(s.modalities),
            "video_until": live.video_until,
            "audio_until": live.audio_end,
            "pending_questions": pending,
            **self._info,
        }

    def _open(self, msg: dict) -> tuple[_Live, dict]:
        """Worker: open a new session, or resume one (in memory, else from its snapshot)."""
        sid = msg.get("session")
        if sid is not None:
            if not isinstance(sid, str) or not SESSION_ID.match(sid):
                raise _Refused("unknown_session", f"session id {sid!r} is not one this server makes")
            live = self._lives.get(sid)
            if live is not None:
                if live.attached:
                    raise _Refused("session_in_use", f"session {sid} already has a connection")
                live.attached = True
                return live, self._ready_message(live, "memory")
            snap = None
            if self.store is not None:
                try:
                    snap = self.store.read(sid)
                except SnapshotError as e:
                    raise _Refused("bad_snapshot", str(e)) from None
            if snap is None:
                raise _Refused("unknown_session", f"no session {sid} in memory or on disk")
            self._check_room()
            try:
                s = self.model.stream(
                    state=snap["state"], auto_step=False, max_buffer_bytes=self.config.session_buffer_bytes
                )
            except ValueError as e:
                raise _Refused("bad_snapshot", f"snapshot of session {sid}: {e}") from None
            live = _Live(sid, s, attached=True, snap_time=s.time)
            cur = snap.get("cursor", {})
            live.video_until, live.audio_end = cur.get("video_until"), cur.get("audio_until")
            live.audio_rate = cur.get("audio_rate")
            live.seq = int(snap.get("seq", 0))
            live.answered.extend(snap.get("answered", []))
            live.replay = deque((int(q), str(m)) for q, m in snap.get("replay", []))
            live.replay_bytes = sum(len(m) for _, m in live.replay)
            live.questions = [_Question(*q) for q in snap.get("questions", [])]
            self._lives[sid] = live
            return live, self._ready_message(live, "snapshot")
        self._check_room()
        opts = {k: msg[k] for k in _CLIENT_OPTIONS if k in msg}
        unknown = sorted(set(msg) - {"type", "session", *_CLIENT_OPTIONS})
        if unknown:
            raise _Refused("bad_option", f"open: unknown field(s) {unknown}; valid: {list(_CLIENT_OPTIONS)}")
        try:
            s = self.model.stream(auto_step=False, max_buffer_bytes=self.config.session_buffer_bytes, **opts)
        except (ValueError, TypeError) as e:
            raise _Refused("bad_option", f"open: {e}") from None
        sid = secrets.token_hex(8)
        live = _Live(sid, s, attached=True)
        self._lives[sid] = live
        return live, self._ready_message(live, None)

    def _check_room(self) -> None:
        if len(self._lives) >= self.config.max_sessions:
            raise _Refused(
                "too_many_sessions",
                f"the server holds {len(self._lives)} sessions "
                f"(max_sessions={self.config.max_sessions}); try later",
            )

    def _detach(self, live: _Live) -> None:
        live.attached = False
        live.detached_at = time.monotonic()

    def _metrics(self) -> dict:
        per = []
        for live in self._lives.values():
            s = live.session
            per.append(
                {
                    "session": live.sid,
                    "attached": live.attached,
                    "time": s.time,
                    "ticks": s.ticks_done,
                    "memory_bytes": s.memory_bytes() + live.queued_bytes + live.replay_bytes,
                    "queued_bytes": live.queued_bytes,
                    "bytes_in": live.bytes_in,
                    "messages_in": live.messages_in,
                    "messages_out": live.messages_out,
                    "dropped_out": live.dropped_out,
                }
            )
        mem = [p["memory_bytes"] for p in per]
        return {
            "sessions": len(per),
            "attached": sum(p["attached"] for p in per),
            "max_sessions": self.config.max_sessions,
            "tick_latency": _percentiles(list(self._latency)),
            "round_seconds": _percentiles(list(self._rounds)),
            "bytes_per_session": {"mean": float(np.mean(mem)) if mem else 0.0, "max": max(mem, default=0)},
            **self._counts,
            "snapshots_on_disk": len(self.store.ids()) if self.store is not None else 0,
            "per_session": per,
        }

    # --------------------------------------------------------------------------- worker: rounds

    def _worker_main(self) -> None:
        import torch

        last = -math.inf
        with torch.inference_mode():
            while True:
                self._wake.wait(timeout=1.0)
                # input gathers for round_interval after a round's start, so one step_sessions call
                # batches the ticks of many streams (their ticks complete at different moments)
                delay = last + self.config.round_interval - time.perf_counter()
                if delay > 0 and not self._stopping:
                    time.sleep(delay)
                self._wake.clear()
                self._run_commands()
                if self._stopping:
                    break
                last = time.perf_counter()
                try:
                    self._round()
                except Exception:  # never let the worker die: log, tell the sessions, go on
                    log.exception("worker round failed")
                self._evict_idle()
            self._run_commands()
            with contextlib.suppress(Exception):
                self._round()  # media already received goes in before the snapshots
            self._save_all()

    def _run_commands(self) -> None:
        while True:
            try:
                fn, args, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as e:
                fut.set_exception(e)

    def _round(self) -> None:
        t_start = time.perf_counter()
        touched: dict[str, tuple[_Live, float | None, int]] = {}
        for live in list(self._lives.values()):
            if live.closed:
                continue
            before = live.session.ticks_done
            did, newest = self._ingest(live)
            if did:
                touched[live.sid] = (live, newest, before)
        if not touched:
            return
        lives = [x[0] for x in touched.values()]
        self._step([lv for lv in lives if not lv.closed])
        self._close([lv for lv in lives if lv.finishing and not lv.closed])
        # answers are generated one session at a time: past this budget, due questions wait for the
        # next round (at least one per round), so a burst of questions does not hold every stream's ticks
        self._ask_deadline, self._asked = time.perf_counter() + self.tau * _ASK_BUDGET, 0
        again = False
        for live, newest, before in touched.values():
            again |= self._after_step(live, newest, before)
        self._rounds.append(time.perf_counter() - t_start)
        self._counts["rounds"] += 1
        if again:
            self._wake.set()

    def _step(self, lives: list[_Live]) -> None:
        if not lives:
            return
        try:
            ssm_mm.step_sessions([lv.session for lv in lives])
        except Exception as e:  # every session is unchanged: find the one that fails, keep the others
            log.warning("batched step failed (%s); stepping sessions one by one", e)
            for lv in lives:
                try:
                    ssm_mm.step_sessions([lv.session])
                except Exception as e1:
                    self._fail(lv, f"stepping the session failed: {type(e1).__name__}: {e1}")

    def _close(self, lives: list[_Live]) -> None:
        """The ends of the streams finishing this round, their last ticks in one batch (streams often
        end together, e.g. at a shutdown); on an error each is closed alone by :meth:`_after_step`."""
        if not lives:
            return
        try:
            ssm_mm.close_sessions([lv.session for lv in lives])
        except Exception as e:  # every session is unchanged
            log.warning("batched close failed (%s); closing sessions one by one", e)

    def _fail(self, live: _Live, message: str) -> None:
        """End a session that cannot go on (an internal error), telling its client."""
        self._counts["errors"] += 1
        live.closed = True
        self._post(live, [{"type": "error", "code": "internal", "message": message}], end=True)
        self._lives.pop(live.sid, None)

    def _margin(self, live: _Live, rate: int | None = None) -> float:
        """Seconds of audio past a time needed before the session's audio up to it is complete, at the
        stream's input rate (``rate`` where it is not known yet: nothing pushed so far)."""
        rate = live.audio_rate or rate
        return max(_MIN_MARGIN, live.session.audio_lookahead(rate) if rate else 0.0)

    def _cut(self, live: _Live) -> tuple[float, _Question | None]:
        """The media cut of the first pending question (inf when none is pending): no media at or after
        it goes in before the question is asked, also when the question is due but waits for the next
        round's answer budget (or was asked late: then nothing more goes in until it is answered)."""
        if not live.questions or live.questions_final:
            return math.inf, None
        q = live.questions[0]
        return q.placed + self._margin(live), q

    def _ingest(self, live: _Live) -> tuple[bool, float | None]:
        """Push ``live``'s queued media into its session, up to the next question's cut. Returns
        (did anything, arrival time of the newest message consumed)."""
        s = live.session
        did = False
        with self._lock:
            new_asks = list(live.asks)
            live.asks.clear()
            live.asks_taken = live.asks_received
            closing = live.close_requested
        for q in new_asks:
            if q.qid is not None and (q.qid in live.answered or any(p.qid == q.qid for p in live.questions)):
                continue  # sent again after a resume: a question id is asked once
            q.placed = place_text_time(max(q.t, s.t0), self.tau, s.t0)
            bisect.insort(live.questions, q, key=lambda x: x.placed)
            did = True
        did |= self._question_due(live)  # deferred by the last round's answer budget
        cut, q = self._cut(live)
        if q is None and not closing and not self._stopping and self._holds(live):
            return did, None
        newest = self._push(live, cut)
        did |= newest is not None
        if q is not None and s.time < q.placed - _TIME_EPS:
            with self._lock:  # queued media that starts at or after the cut (media before it can be
                # held back, e.g. behind a question the worker has not taken yet: it must go in first)
                have = {
                    "video": bool(live.video) and live.video[0][0].t >= cut,
                    "audio": bool(live.audio) and live.audio[0][0].t0 >= cut - 0.5 / live.audio[0][0].rate,
                }
            if all(have[m] for m in s.modalities):  # nothing before the cut can still arrive
                self._guard(live, lambda: s.advance_to(cut))
                did = True
            elif closing:  # the media ends before the question's tick completes: as at a stream's end
                o2 = self._push(live, math.inf)
                newest = max((x for x in (newest, o2) if x is not None), default=None)
                live.questions_final = True
        if closing:
            with self._lock:
                empty = not live.video and not live.audio
            if empty and (q is None or live.questions_final) and not self._question_due(live):
                live.finishing = True
                did = True
        return did, newest

    def _holds(self, live: _Live) -> bool:
        """Whether ``live``'s queued media waits for the media that completes the session's next tick.

        Pushing and featurizing cost per call more than per sample, and clients send several messages
        per tick (0.1-s audio chunks): pushed as they come, a tick costs ~5 pushes a stream. Held until
        every modality reaches past the next tick's end (audio by the resampler's lookahead too), a tick
        costs one, and no tick completes later. Only without pending questions or a close (the cut
        logic pushes those), and never beyond half of ``max_queue_bytes``."""
        s = live.session
        k, t0 = s.ticks_done, s.t0
        t_end = tick_end_time(k, self.tau, t0)
        with self._lock:
            if live.asks or live.queued_bytes > self.config.max_queue_bytes // 2:
                return False
            if not live.video and not live.audio:
                return True  # nothing to push
            v_end = live.video[-1][0].t if live.video else -math.inf
            a_last = live.audio[-1][0] if live.audio else None
        for m in s.modalities:
            if m == "video":
                v = max(v_end, -math.inf if live.video_until is None else live.video_until)
                if v == -math.inf or tick_index(v - t0, self.tau) <= k:
                    return True
            else:
                a = -math.inf if a_last is None else a_last.end
                if live.audio_end is not None:
                    a = max(a, live.audio_end)
                if a < t_end + self._margin(live, a_last.rate if a_last is not None else None):
                    return True
        return False

    def _guard(self, live: _Live, fn: Callable[[], None], qid=None) -> bool:
        """Run a session call; a ValueError (bad input: the session is unchanged) becomes an error
        message to this session's client only."""
        try:
            fn()
            return True
        except ValueError as e:
            self._counts["errors"] += 1
            err = {"type": "error", "code": "bad_media", "message": " ".join(str(e).split())}
            if qid is not None:
                err.update(code="bad_question", id=qid)
            self._post(live, [err])
            return False

    def _push(self, live: _Live, cut: float) -> float | None:
        """Push queued frames with ``t < cut`` and audio samples before ``cut``; returns the newest
        consumed message's arrival time (None when nothing was consumed)."""
        s = live.session
        newest = None
        frames, audio = [], []
        with self._lock:
            # media that arrived after a question the worker has not taken yet waits for it (the
            # question may put a cut before that media)
            while live.video and live.video[0][0].t < cut and live.video[0][2] <= live.asks_taken:
                m, arr, _ = live.video.popleft()
                live.queued_bytes -= m.nbytes
                frames.append(m)
                newest = arr if newest is None else max(newest, arr)
            while live.audio and live.audio[0][0].t0 < cut and live.audio[0][2] <= live.asks_taken:
                m, arr, gen = live.audio[0]
                n_keep = m.n if m.end <= cut else min(m.n, max(0, math.ceil((cut - m.t0) * m.rate)))
                if n_keep == 0:
                    break
                newest = arr if newest is None else max(newest, arr)
                if n_keep == m.n:
                    live.audio.popleft()
                    live.queued_bytes -= m.nbytes
                    audio.append(m)
                else:  # split at the cut: the rest stays queued
                    head, tail = m.samples[..., :n_keep], m.samples[..., n_keep:]
                    rest = AudioMessage(m.t0 + n_keep / m.rate, m.rate, tail)
                    live.audio[0] = (rest, arr, gen)
                    live.queued_bytes -= m.nbytes - rest.nbytes
                    audio.append(AudioMessage(m.t0, m.rate, head))
                    break
        if frames:
            self._push_frames(live, frames)
        for group in self._contiguous(audio):
            x = group[0].samples if len(group) == 1 else np.concatenate([g.samples for g in group], axis=-1)
            if self._guard(live, lambda g=group, x=x: s.push_audio(x, g[0].rate, g[0].t0)):
                live.audio_end = group[-1].end
                live.audio_rate = group[0].rate
        return newest

    @staticmethod
    def _contiguous(chunks: list[AudioMessage]) -> list[list[AudioMessage]]:
        """Runs of chunks that continue each other exactly (pushed as one piece: fewer calls)."""
        runs: list[list[AudioMessage]] = []
        for c in chunks:
            prev = runs[-1][-1] if runs else None
            if (
                prev is not None
                and c.samples.ndim == prev.samples.ndim
                and abs(c.t0 - prev.end) < 0.5 / c.rate
            ):
                if c.samples.ndim == 1 or c.samples.shape[0] == prev.samples.shape[0]:
                    runs[-1].append(c)
                    continue
            runs.append([c])
        return runs

    def _push_frames(self, live: _Live, frames: list[VideoMessage]) -> None:
        s = live.session
        decoded: list[tuple[float, np.ndarray]] = []
        for m in frames:
            try:
                decoded.append((m.t, m.frame()))
            except ProtocolError as e:
                self._counts["errors"] += 1
                self._post(live, [{"type": "error", "code": e.code, "message": str(e), "t": m.t}])
        # consecutive frames of one size go in one push (one featurizer call)
        for _, group in itertools.groupby(decoded, key=lambda x: x[1].shape):
            group = list(group)
            ts = np.array([g[0] for g in group], dtype=np.float64)
            stack = np.stack([g[1] for g in group])  # (T, H, W, 3)
            if self._guard(live, lambda st=stack, ts=ts: s.push_video(st, ts)):
                live.video_until = float(ts[-1])

    def _after_step(self, live: _Live, newest: float | None, before: int) -> bool:
        """Outputs, due questions, the end of a closing stream and snapshots. Returns True when the
        session has queued media a question's cut held back (another round is due)."""
        if live.closed:
            return False
        s = live.session
        out: list[dict] = []
        finishing = live.finishing
        if finishing:
            self._guard(live, s.close)
        n = s.ticks_done - before
        self._counts["ticks"] += n
        if n and newest is not None:
            lat = time.perf_counter() - newest
            self._latency.extend([lat] * min(n, 64))
        out += self._drain(live)
        while live.questions and (finishing or s.time >= live.questions[0].placed - _TIME_EPS):
            if not finishing and self._asked and time.perf_counter() > self._ask_deadline:
                break
            self._asked += 1
            q = live.questions.pop(0)
            if q.qid is not None:
                live.answered.append(q.qid)
            asked_at = s.time
            answer: list[str] = []
            if self._guard(live, lambda a=answer, q=q: a.append(s.ask(q.text)), qid=q.qid):
                out.append(
                    {
                        "type": "answer",
                        "id": q.qid,
                        "question": q.text,
                        "t": asked_at,
                        "placed": q.placed,
                        "q_t": q.t,
                        "text": answer[0],
                    }
                )
            out += self._drain(live)
        if finishing:
            out.append({"type": "closed", "time": s.time, "ticks": s.ticks_done})
            live.closed = True
            self._lives.pop(live.sid, None)
            if self.store is not None:
                self.store.remove(live.sid)
            self._post(live, out, end=True)
            return False
        if out:
            self._post(live, out)
        if self.store is not None and s.time - live.snap_time >= self.config.snapshot_every - _TIME_EPS:
            self._snapshot(live, wait=False)
        with self._lock:
            queued = bool(live.video or live.audio or live.asks or live.close_requested)
        return queued or self._question_due(live)

    @staticmethod
    def _question_due(live: _Live) -> bool:
        return bool(live.questions) and live.session.time >= live.questions[0].placed - _TIME_EPS

    def _drain(self, live: _Live) -> list[dict]:
        s = live.session
        items = [(lab.end, 0, lab) for lab in s.segment_labels()] + [(ev.t, 1, ev) for ev in s.poll()]
        out = []
        for _, is_event, x in sorted(items, key=lambda it: it[:2]):
            if is_event:
                out.append({"type": "response", "t": x.t, "text": x.text, "score": x.score})
            else:
                out.append(
                    {
                        "type": "label",
                        "tick": x.tick,
                        "start": x.start,
                        "end": x.end,
                        "label": x.label,
                        "index": x.index,
                        "score": x.score,
                        "speak": x.speak,
                        "has_media": x.has_media,
                    }
                )
        return out

    def _snapshot(self, live: _Live, wait: bool) -> None:
        s = live.session
        payload = {
            "state": s.state_dict(),
            "cursor": {
                "video_until": live.video_until,
                "audio_until": live.audio_end,
                "audio_rate": live.audio_rate,
            },
            "questions": [[q.placed, q.t, q.qid, q.text] for q in live.questions],
            "seq": live.seq,
            "answered": list(live.answered),
        }
        with self._lock:
            payload["replay"] = [[seq, m] for seq, m in live.replay]
        live.snap_time = s.time
        fut = self._writer.submit(self.store.write, live.sid, payload)
        self._counts["snapshots"] += 1
        if wait:
            fut.result()

    def _evict_idle(self) -> None:
        now = time.monotonic()
        for live in list(self._lives.values()):
            if not live.attached and now - live.detached_at > self.config.idle_seconds:
                with self._lock:
                    busy = bool(live.video or live.audio or live.asks)
                if busy:
                    continue
                if self.store is not None:
                    self._snapshot(live, wait=True)
                self._lives.pop(live.sid, None)
                log.info(
                    "session %s: idle for %.0f s, dropped from memory", live.sid, self.config.idle_seconds
                )

    def _save_all(self) -> None:
        """Graceful stop: snapshot every open session (its queued media is processed first)."""
        if self.store is None:
            return
        n = 0
        for live in list(self._lives.values()):
            if live.closed:
                continue
            try:
                self._snapshot(live, wait=True)
                n += 1
            except Exception:
                log.exception("session %s: snapshot on stop failed", live.sid)
        self.saved_on_stop = n
