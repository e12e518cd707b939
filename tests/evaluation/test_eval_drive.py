"""The driving loop shared by the CLI and the harness: the feeding rule, questions at their placed
time, batched lockstep == one session at a time, empty media, and the harness on no stream."""

import math

import numpy as np
import pytest
import torch
from eval_helpers import tiny_model

from ssm_mm.data.interleave import place_text_time
from ssm_mm.data.manifest import read_manifest
from ssm_mm.evaluation.harness import EvalOptions, decode_streams, evaluate
from ssm_mm.streaming.drive import Question, StreamMedia, drive, drive_many

QUESTIONS = [
    Question(1.2, "how many times did the bell ring?"),
    Question(3.0, "what shape is on screen now?"),
]


@pytest.fixture(scope="module")
def val(world):
    specs = read_manifest(world[1]).streams
    media, _ = decode_streams(specs, fps=4.0)
    return specs, media


def test_one_tick_per_round_and_questions_at_their_placed_time(val):
    specs, media = val
    model = tiny_model()
    rounds = []
    s = model.stream(modalities=media[0].modalities, t0=specs[0].t0, speak_threshold=1.0)
    res = drive(s, media[0], QUESTIONS, on_round=lambda k, labels, ev, ans: rounds.append(len(labels)))
    n_ticks = math.ceil(media[0].seconds / 0.5 - 1e-9)  # the aac track runs a little past 6 s
    assert res.ticks == n_ticks >= 12 and len(res.tick_latency) == n_ticks
    assert [lab.tick for lab in res.labels] == list(range(n_ticks))
    assert max(rounds) == 1  # each round completes exactly one tick (the last one at close())
    t0 = specs[0].t0
    for q, a in zip(QUESTIONS, res.answers):
        assert a.asked_at == pytest.approx(place_text_time(t0 + q.t, 0.5, t0)) and not a.late
        assert a.answer is not None
    assert res.stream_seconds == n_ticks * 0.5 and res.wall > 0


def test_batched_lockstep_equals_sessions_one_by_one(val):
    specs, media = val
    model = tiny_model(seed=1)
    opts = dict(speak_threshold=0.0, max_answer_tokens=3)  # threshold 0: every tick speaks
    alone = [
        drive(model.stream(modalities=m.modalities, t0=sp.t0, **opts), m, QUESTIONS)
        for sp, m in zip(specs, media)
    ]
    sessions = [
        model.stream(modalities=m.modalities, t0=sp.t0, auto_step=False, **opts)
        for sp, m in zip(specs, media)
    ]
    batched = drive_many(sessions, media, [QUESTIONS] * len(media))
    for a, b in zip(alone, batched):
        assert [x.index for x in a.labels] == [x.index for x in b.labels]
        np.testing.assert_allclose([x.score for x in a.labels], [x.score for x in b.labels], atol=1e-4)
        assert [e.t for e in a.events] == [e.t for e in b.events] and len(a.events) >= 10
        assert [(x.asked_at, x.answer) for x in a.answers] == [(x.asked_at, x.answer) for x in b.answers]
        assert len(b.tick_latency) == b.ticks


def test_empty_media_and_mismatched_tracks():
    model = tiny_model()
    empty = StreamMedia(
        t0=0.0,
        frames=torch.zeros(0, 8, 8, 3, dtype=torch.uint8),
        frame_times=np.zeros(0),
        samples=torch.zeros(0),
        sample_rate=16000,
        audio_t0=0.0,
        has_video=True,
        has_audio=False,
    )
    res = drive(model.stream(modalities=("video",)), empty, QUESTIONS)
    assert res.ticks == 0 and res.labels == [] and res.tick_latency == []
    assert [(a.asked_at, a.answer) for a in res.answers] == [(None, None), (None, None)]  # nothing to ask at
    with pytest.raises(ValueError, match="tracks"):
        drive(model.stream(), empty)  # the session waits for audio the media does not have


def test_harness_on_no_stream_gives_nan_metrics():
    ev = evaluate(tiny_model(), [], EvalOptions())
    assert ev.metrics["n_streams"] == 0 and math.isnan(ev.metrics["events"]["tick_accuracy"])
