"""Reference results (an in-process session driven by ssm_mm.streaming.drive) and comparisons."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np

from ssm_mm.streaming.drive import Question, drive

QUESTIONS = [(2.2, "how many times did the bell ring?"), (3.6, "what shape is on screen now?")]
THRESHOLD = 0.3  # the random model's speak-now head fires on some ticks: proactive responses too


def reference(model, media, questions=QUESTIONS, threshold=THRESHOLD):
    """What an in-process StreamingSession says on ``media`` (the CLI's driver)."""
    s = model.stream(modalities=media.modalities, speak_threshold=threshold, auto_step=False)
    return drive(s, media, [Question(t, q) for t, q in questions])


def assert_same(res, ref) -> None:
    """Served results (a ServeResult) == the in-process session's (a DriveResult)."""
    got = res.label_list()
    a = [(x["tick"], x["label"], x["has_media"]) for x in got]
    b = [(x.tick, x.label, x.has_media) for x in ref.labels]
    assert a == b, (a, b, res.errors)
    np.testing.assert_allclose([x["score"] for x in got], [x.score for x in ref.labels], atol=1e-5)
    np.testing.assert_allclose([x["speak"] for x in got], [x.speak for x in ref.labels], atol=1e-5)
    assert [(r["t"], r["text"]) for r in res.response_list()] == [(e.t, e.text) for e in ref.events]
    assert len(ref.events) > 0  # the comparison covers proactive responses
    answers = [res.answers[k] for k in sorted(res.answers)]
    assert [(a["t"], a["text"]) for a in answers] == [(a.asked_at, a.answer) for a in ref.answers]
    assert res.errors == []
    assert res.closed is not None and res.closed["ticks"] == ref.ticks


def start_server(model_dir, snap_dir, *extra: str) -> tuple[subprocess.Popen, str]:
    """``python -m ssm_mm.serve MODEL --port 0 --snapshot-dir SNAP ...`` in a child process; returns it
    and the WebSocket URL read from its "open http://127.0.0.1:PORT/" line."""
    cmd = [
        sys.executable,
        "-m",
        "ssm_mm.serve",
        str(model_dir),
        "--port",
        "0",
        "--snapshot-dir",
        str(snap_dir),
    ]
    p = subprocess.Popen([*cmd, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for _ in range(5):  # the model and serving lines come first unless --quiet
        lines.append(p.stdout.readline())
        m = re.match(r"open (http://[\d.]+:\d+/)", lines[-1])
        if m:
            return p, m.group(1).replace("http://", "ws://") + "ws"
    p.kill()
    raise AssertionError((lines, p.stderr.read()))
