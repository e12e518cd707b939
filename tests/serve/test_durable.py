"""kill -9 of the server process and a restart: sessions resume from their last snapshot."""

from __future__ import annotations

import os
import signal
import time

import torch
from serve_helpers import QUESTIONS, THRESHOLD, assert_same, reference, start_server

from ssm_mm.serve import Client


def test_kill9_and_restart_resume_from_the_last_snapshot(model, media, tmp_path):
    model_dir = model.save_pretrained(tmp_path / "model")
    snaps = tmp_path / "snapshots"
    m = media[0]
    proc, url = start_server(model_dir, snaps, "--snapshot-every", "1.0", "--quiet")
    try:
        first = Client(url).stream(m, QUESTIONS, stop_after=3.2, options={"speak_threshold": THRESHOLD})
        path = snaps / f"{first.session}.pt"
        deadline, ticks = time.monotonic() + 30, 0
        while time.monotonic() < deadline and ticks < 4:  # a snapshot at >= 2 s of stream (every 1 s)
            if path.exists():
                ticks = torch.load(path, weights_only=True)["state"]["cursor"]["next_tick"]
            time.sleep(0.05)
        assert ticks >= 4, f"no snapshot at >= 2 s of stream within 30 s (last: {ticks} ticks)"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    snap = torch.load(path, weights_only=True)
    at_kill = model.stream(state=snap["state"])
    seen = {k: dict(v) for k, v in first.labels.items()}
    proc, url = start_server(model_dir, snaps, "--snapshot-every", "1.0", "--quiet")
    try:
        res = Client(url).stream(m, QUESTIONS, session=first.session, result=first)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    ready = res.ready[-1]
    assert ready["resumed"] == "snapshot"
    assert (ready["ticks"], ready["time"]) == (at_kill.ticks_done, at_kill.time)  # state = the snapshot
    assert ready["ticks"] >= 4
    assert_same(res, reference(model, m))  # the finished stream == an uninterrupted session
    for k, lab in seen.items():  # ticks computed again after the restart came out the same
        assert {**res.labels[k], "_recv": 0} == {**lab, "_recv": 0}
    assert proc.returncode == 0  # SIGTERM with no open session: nothing to save
    assert not path.exists()
