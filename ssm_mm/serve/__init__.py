"""Serve live streams over WebSockets: many sessions, stepped together, that survive restarts.

    python -m ssm_mm.serve MODEL_DIR [--host 127.0.0.1 --port 8765 --snapshot-dir DIR
                                      --snapshot-every 10 --max-sessions 128 --token TOKEN]

prints the URL of a page (``/``) that streams a local video file or the webcam + microphone and shows
a live timeline. Needs the ``serve`` extra (``pip install -e ".[serve]"``: websockets, Pillow).

Protocol (one WebSocket per stream, ``ws://HOST:PORT/ws``; with ``--token``, send
``Authorization: Bearer TOKEN`` or append ``?token=TOKEN``; a wrong token gets HTTP 401):

Client -> server
  text   ``{"type": "open", "modalities": ["video", "audio"], "t0": 0, "speak_threshold": 0.5,
          "max_answer_tokens": 32}`` first (every field optional), or ``{"type": "open", "session": ID,
          "last_seq": N}`` to resume a stream after a disconnect or a server restart (``N``: the last
          ``seq`` received; the results after it are sent again).
  binary media (:mod:`ssm_mm.serve.protocol`): ``[uint32 LE n][JSON header, n bytes][payload]`` with
          header ``{"type": "video", "t": 1.25, "format": "jpeg"}`` (payload a JPEG) or
          ``{"type": "video", "t", "format": "rgb", "width", "height"}`` (W·H·3 bytes), or
          ``{"type": "audio", "t0", "rate", "format": "f32"|"s16", "channels"}`` (interleaved PCM, any
          rate; the session resamples). Times are seconds on the stream clock, non-decreasing.
  text   ``{"type": "ask", "id": 7, "text": "how many times did the dog bark?", "t": 12.3}``: asked at
          the end of the tick holding ``t`` (default: the latest media received); an ``id`` is asked once
          (sending it again after a resume is harmless).
  text   ``{"type": "close"}``: the stream ended (the last partial tick is flushed).
  text   ``{"type": "ack", "seq": N}``: every result up to ``N`` arrived (the server may forget them).
  text   ``{"type": "ping", "id": ...}`` -> ``{"type": "pong", "id": ...}``.

Server -> client (JSON text; results carry ``"seq"``: 1, 2, ... per session)
  ``{"type": "ready", "session": ID, "resumed": null|"memory"|"snapshot", "time", "ticks",
  "video_until", "audio_until", "pending_questions", "tick_seconds", "fps", "frame_size",
  "sample_rate", "labels", ...}``: after a resume, send only media after ``video_until`` /
  ``audio_until`` and the questions neither answered nor pending.
  ``{"type": "label", "tick", "start", "end", "label", "index", "score", "speak", "has_media"}`` per tick.
  ``{"type": "response", "t", "text", "score"}``: a proactive response at stream time ``t``.
  ``{"type": "answer", "id", "question", "t", "placed", "text"}``: ``t`` = the stream time it was asked at.
  ``{"type": "error", "code", "message"}``: codes ``bad_message``, ``bad_media``, ``bad_question``,
  ``out_of_order``, ``too_large``, ``buffer_full`` (the message is dropped, the stream goes on) and,
  before ``ready``, ``too_many_sessions`` (close code 1013), ``unknown_session``, ``session_in_use``,
  ``bad_option``, ``bad_snapshot`` (close code 1008).
  ``{"type": "closed", "time", "ticks"}``: after ``close``, once every result was sent.

Durability: with ``--snapshot-dir``, each session's snapshot (``state_dict()``, the media cursor and
pending questions) is written atomically every ``--snapshot-every`` seconds of stream, when it has
been idle for ``--idle-seconds`` and on a graceful stop (SIGINT/SIGTERM, exit status 75 when sessions
were saved); after ``kill -9`` and a restart a session resumes from its last snapshot, so the client
resends at most that interval. Results between a snapshot and a crash are sent again (at least once:
deduplicate by ``seq``, tick or question id). HTTP: ``/health`` (liveness), ``/metrics`` (JSON: sessions, tick
latency p50/p99, bytes per session, counters). docs/serving.md has the details.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Server": "ssm_mm.serve.server",
    "ServeConfig": "ssm_mm.serve.server",
    "Client": "ssm_mm.serve.client",
    "ServeResult": "ssm_mm.serve.client",
    "ServeError": "ssm_mm.serve.client",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ssm_mm.serve' has no attribute '{name}'")
