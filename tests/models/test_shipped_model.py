"""The shipped model (results/avworld/1h_scene_count4_speak3/model) streams exactly as it did when it was
trained: a fixed synthetic stream gives the per-tick labels, speak probabilities, answers and proactive
responses recorded in tests/fixtures/shipped_model_stream.json (recorded with the code that trained it,
before objectives became plugins; re-record with ``python tests/models/test_shipped_model.py --record``
only for a deliberate change of the model's numerics)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssm_mm.models.multimodal import MultimodalSSM

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "results" / "avworld" / "1h_scene_count4_speak3" / "model"
RECORD = ROOT / "tests" / "fixtures" / "shipped_model_stream.json"
QUESTIONS = {
    5.0: "how many times did the bell ring?",
    9.0: "what color was the circle when the bell last rang?",
    12.0: "which came first, the bell or the drum?",
}


def synthetic_stream(seconds: int = 12, fps: int = 4, size: int = 64, sr: int = 16000):
    """(frames (T, H, W, 3) uint8, frame times (T,), audio (N,) float32): a noisy grey screen with a
    red square at 1.5-3.5 s and a blue disc at 6-8 s, a 660 Hz tone over the first and noise bursts
    over the second (deterministic)."""
    rng = np.random.default_rng(7)
    times = np.arange(seconds * fps) / fps
    frames = np.clip(128 + rng.normal(0, 6, (len(times), size, size, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - 40) ** 2 + (xx - 24) ** 2 < 12**2
    for i, t in enumerate(times):
        if 1.5 <= t < 3.5:
            frames[i, 10:30, 30:50] = (220, 30, 30)
        if 6.0 <= t < 8.0:
            frames[i][disc] = (30, 30, 220)
    ts = np.arange(seconds * sr) / sr
    audio = (0.01 * rng.standard_normal(len(ts))).astype(np.float32)
    tone = (ts >= 1.5) & (ts < 3.5)
    audio[tone] += (0.3 * np.sin(2 * np.pi * 660 * ts[tone])).astype(np.float32)
    burst = (ts >= 6.0) & (ts < 8.0) & ((ts * 4) % 1 < 0.5)
    audio[burst] += (0.3 * rng.standard_normal(int(burst.sum()))).astype(np.float32)
    return frames, times, audio, sr


def stream_outputs(model: MultimodalSSM) -> dict:
    """Push the synthetic stream second by second, asking each of :data:`QUESTIONS` at its time."""
    frames, times, audio, sr = synthetic_stream()
    s = model.stream(speak_threshold=0.5)
    labels, answers, events = [], [], []
    for sec in range(int(times[-1]) + 1):
        sel = (times >= sec) & (times < sec + 1)
        s.push_video(frames[sel], times[sel])
        s.push_audio(audio[sec * sr : (sec + 1) * sr], sr, float(sec))
        s.advance_to(float(sec + 1))
        if float(sec + 1) in QUESTIONS:
            answers.append([s.time, QUESTIONS[sec + 1.0], s.ask(QUESTIONS[sec + 1.0])])
        labels += s.segment_labels()
        events += [[e.t, e.text, e.score] for e in s.poll()]
    s.close()
    labels += s.segment_labels()
    events += [[e.t, e.text, e.score] for e in s.poll()]
    return {
        "labels": [x.label for x in labels],
        "scores": [x.score for x in labels],
        "speak": [x.speak for x in labels],
        "answers": answers,
        "events": events,
    }


@pytest.fixture(scope="module")
def outputs():
    torch.manual_seed(0)
    return stream_outputs(MultimodalSSM.from_pretrained(MODEL))


def test_shipped_model_streams_its_recorded_labels_and_answers(outputs):
    want = json.loads(RECORD.read_text())
    assert outputs["labels"] == want["labels"]
    assert outputs["answers"] == want["answers"]
    assert [e[:2] for e in outputs["events"]] == [e[:2] for e in want["events"]]
    # probabilities: the same computation on the same weights (tolerance only for another CPU's kernels)
    for key in ("scores", "speak"):
        np.testing.assert_allclose(outputs[key], want[key], rtol=0, atol=1e-5, err_msg=key)
    np.testing.assert_allclose([e[2] for e in outputs["events"]], [e[2] for e in want["events"]], atol=1e-5)
    assert len(set(want["labels"])) > 1  # the stream is not trivially one label


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    RECORD.write_text(json.dumps(stream_outputs(MultimodalSSM.from_pretrained(MODEL)), indent=1) + "\n")
    print(f"wrote {RECORD}")
