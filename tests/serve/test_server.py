"""Served streams equal in-process sessions; reconnects and restarts resume exactly."""

from __future__ import annotations

import asyncio
import json
import math
import urllib.request

import numpy as np
import pytest
from serve_helpers import QUESTIONS, THRESHOLD, assert_same, reference

from ssm_mm.serve import Client, ServeError, Server
from ssm_mm.serve.protocol import AudioMessage, VideoMessage, decode_jpeg, encode_jpeg
from ssm_mm.serve.server import _Live, _Question


def test_two_concurrent_streams_equal_in_process_sessions(make_server, model, media):
    """Two streams served at once (their ticks batched in one step) give exactly what an in-process
    session gives on the same media: labels, scores, proactive responses, answers and their times."""
    srv = make_server()
    client = Client(srv.ws_url)
    opts = {"speak_threshold": THRESHOLD}

    async def both():
        return await asyncio.gather(*(client.astream(m, QUESTIONS, options=opts) for m in media))

    results = asyncio.run(both())
    for res, m in zip(results, media):
        assert_same(res, reference(model, m))
    assert results[0].session != results[1].session


def test_jpeg_frames_and_s16_audio(make_server, model, media):
    """JPEG frames are decoded by the server exactly as PIL decodes them; s16 audio is the float audio
    rounded to 16 bits: the served stream equals a session fed that same media."""
    srv = make_server()
    res = Client(srv.ws_url, jpeg=True, audio_format="s16").stream(
        media[0], QUESTIONS, options={"speak_threshold": THRESHOLD}
    )
    m = media[0]
    frames = np.stack([decode_jpeg(encode_jpeg(f)) for f in m.frames.numpy()])
    x = m.samples.numpy()
    s16 = np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16).astype(np.float32) / 32768.0
    import torch

    m2 = type(m)(**{**m.__dict__, "frames": torch.from_numpy(frames), "samples": torch.from_numpy(s16)})
    assert_same(res, reference(model, m2))


def test_reconnect_resumes_exactly(make_server, model, media):
    """A client that drops its connection mid-stream and reconnects with its session id gets the
    same stream as one that never left (the session stays in the server's memory)."""
    srv = make_server()
    client = Client(srv.ws_url)
    m = media[0]
    first = client.stream(m, QUESTIONS, stop_after=2.6, options={"speak_threshold": THRESHOLD})
    assert first.closed is None and len(first.labels) >= 3
    before = {k: dict(v) for k, v in first.labels.items()}
    res = client.stream(m, QUESTIONS, session=first.session, result=first)
    ready = res.ready[-1]
    assert ready["resumed"] == "memory" and ready["session"] == first.session
    assert ready["video_until"] <= 2.6 + 1e-9 and ready["audio_until"] <= 2.6 + 0.1
    assert_same(res, reference(model, m))
    for k, lab in before.items():  # nothing was re-sent differently
        assert {**res.labels[k], "_recv": 0} == {**lab, "_recv": 0}


def test_graceful_stop_snapshots_and_a_new_server_resumes(make_server, model, media, tmp_path):
    """A graceful stop snapshots the open session; a new server resumes it from the file, and the
    finished stream equals an uninterrupted in-process session."""
    import torch

    srv = make_server(snapshot_dir=str(tmp_path), snapshot_every=100.0)
    m = media[1]
    first = Client(srv.ws_url).stream(m, QUESTIONS, stop_after=3.0, options={"speak_threshold": THRESHOLD})
    assert srv.stop() == 1
    snap = torch.load(tmp_path / f"{first.session}.pt", weights_only=True)
    s = model.stream(state=snap["state"])
    srv2 = make_server(snapshot_dir=str(tmp_path))
    res = Client(srv2.ws_url).stream(m, QUESTIONS, session=first.session, result=first)
    ready = res.ready[-1]
    assert ready["resumed"] == "snapshot"
    assert (ready["ticks"], ready["time"]) == (s.ticks_done, s.time)
    assert_same(res, reference(model, m))
    assert not (tmp_path / f"{first.session}.pt").exists()  # a closed stream leaves no snapshot


def test_health_and_metrics(make_server, media):
    srv = make_server(token="s3cret")
    res = Client(srv.ws_url, token="s3cret").stream(media[0], options={"speak_threshold": 1.0})
    health = json.loads(urllib.request.urlopen(srv.url + "health", timeout=10).read())
    assert health["status"] == "ok" and health["sessions"] == 0
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(srv.url + "metrics", timeout=10)
    req = urllib.request.Request(srv.url + "metrics", headers={"Authorization": "Bearer s3cret"})
    metrics = json.loads(urllib.request.urlopen(req, timeout=10).read())
    assert metrics["ticks"] == res.closed["ticks"] == len(res.labels) and metrics["tick_latency"]["n"] >= 1
    assert 0 < metrics["tick_latency"]["p50_s"] <= metrics["tick_latency"]["p99_s"] < 5
    page = urllib.request.urlopen(srv.url, timeout=10).read().decode()
    assert "<title>ssm_mm live</title>" in page


def test_unknown_session_is_refused(make_server, media):
    srv = make_server()
    with pytest.raises(ServeError) as e:
        Client(srv.ws_url).stream(media[0], session="0123456789abcdef")
    assert e.value.code == "unknown_session"


def test_media_held_behind_an_untaken_question_is_not_skipped_by_the_cut(model):
    """Worker-level race (found by a CI run): a question and then media can arrive while the worker
    is inside a round, after it took the questions; that media waits behind the untaken question and
    may start *before* the pending question's cut, so the cut (``advance_to``) must wait for it
    instead of declaring that stretch silent, which made the session refuse the held audio ('audio
    must not go backwards')."""
    server = Server(model)
    s = model.stream()
    live = _Live(sid="x", session=s)
    rate = 16000
    # the worker has taken one question, asked at the end of the tick holding t=1.2 (cut 1.501 s)
    live.questions.append(_Question(placed=1.5, t=1.2, qid=1, text="what is on screen now?"))
    live.asks_taken = live.asks_received = 1
    frame = np.zeros((64, 64, 3), np.uint8)
    for k in range(8):  # 0 .. 1.75 s of video and 1 s of audio, queued before the round
        live.video.append((VideoMessage(t=k * 0.25, rgb=frame), 0.0, 1))
    live.audio.append((AudioMessage(0.0, rate, np.zeros(rate, np.float32)), 0.0, 1))
    push = server._push

    def push_while_a_question_and_audio_arrive(live_, cut):
        with server._lock:  # the event loop, mid-round: a second question, then audio 1 .. 2 s
            live_.asks_received = 2
            live_.audio.append((AudioMessage(1.0, rate, np.zeros(rate, np.float32)), 0.0, 2))
        server._push = push
        return push(live_, cut)

    server._push = push_while_a_question_and_audio_arrive
    errors = []
    server._post = lambda _live, messages, end=False: errors.extend(
        m for m in messages if m["type"] == "error"
    )
    server._ingest(live)
    assert s.time < 1.5  # the cut waited for the held audio, which starts before it
    server._ingest(live)  # the next round takes the question and the held audio, then cuts
    assert not errors, errors
    assert s.time == 1.5 and live.audio_end == 1.501


def test_queued_media_goes_in_once_it_completes_a_tick(model):
    """Without a pending question, the worker leaves a stream's media queued until every modality
    reaches past the next tick's end, then pushes it in one call per modality (featurizing per call,
    not per 0.1-s chunk); a stopping server pushes whatever is queued."""
    import ssm_mm

    server = Server(model)
    s = model.stream(auto_step=False)
    live = _Live(sid="x", session=s)
    rate, frame = 16000, np.zeros((64, 64, 3), np.uint8)
    calls = {"audio": 0, "video": 0}
    for name in calls:
        orig = getattr(s, f"push_{name}")

        def counted(*a, _orig=orig, _name=name, **kw):
            calls[_name] += 1
            return _orig(*a, **kw)

        setattr(s, f"push_{name}", counted)

    def queue(t0, t1):  # 0.1-s audio chunks and 4-fps frames over [t0, t1)
        for k in range(round(t0 * 10), round(t1 * 10)):
            live.audio.append((AudioMessage(k / 10, rate, np.zeros(rate // 10, np.float32)), 0.0, 0))
        for k in range(math.ceil(t0 * 4), math.ceil(t1 * 4)):
            live.video.append((VideoMessage(t=k / 4, rgb=frame), 0.0, 0))

    queue(0.0, 0.5)  # all of tick 0, but nothing past its end yet
    assert server._ingest(live) == (False, None) and calls == {"audio": 0, "video": 0}
    queue(0.5, 0.8)  # a frame at 0.75 and audio to 0.8 s: tick 0 is complete
    did, newest = server._ingest(live)
    assert did and newest == 0.0 and calls == {"audio": 1, "video": 1}
    assert ssm_mm.step_sessions([s]) == [1] and live.video_until == 0.75
    assert live.audio_end == pytest.approx(0.8)
    queue(0.8, 0.9)
    assert server._ingest(live) == (False, None)  # tick 1 is not complete: held
    server._stopping = True
    assert server._ingest(live)[0] and calls == {"audio": 2, "video": 1}
