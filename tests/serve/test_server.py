"""Served streams equal in-process sessions; reconnects and restarts resume exactly."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import numpy as np
import pytest
from serve_helpers import QUESTIONS, THRESHOLD, assert_same, reference

from ssm_mm.serve import Client, ServeError
from ssm_mm.serve.protocol import decode_jpeg, encode_jpeg


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
