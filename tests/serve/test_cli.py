"""python -m ssm_mm.serve: bad input is one line on stderr and exit status 2; SIGTERM with an open
session snapshots it and exits 75 (resumable)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

from serve_helpers import QUESTIONS, THRESHOLD, start_server

from ssm_mm.serve import Client


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ssm_mm.serve", *args], capture_output=True, text=True, timeout=60
    )


def test_bad_input_exits_2_with_one_line(tmp_path, model):
    r = _run(str(tmp_path / "missing"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "model folder not found" in r.stderr
    model_dir = model.save_pretrained(tmp_path / "model")
    r = _run(str(model_dir), "--snapshot-every", "0")
    assert r.returncode == 2 and "snapshot_every" in r.stderr and "Traceback" not in r.stderr
    with socket.socket() as busy:  # a port in use
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = _run(str(model_dir), "--port", str(busy.getsockname()[1]))
    assert r.returncode == 2 and "cannot listen" in r.stderr and "Traceback" not in r.stderr


def test_sigterm_snapshots_open_sessions_and_exits_75(tmp_path, model, media):
    model_dir = model.save_pretrained(tmp_path / "model")
    p, url = start_server(model_dir, tmp_path / "s")
    try:
        res = Client(url).stream(media[0], QUESTIONS, stop_after=2.0, options={"speak_threshold": THRESHOLD})
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 75, out
    assert "1 open session(s) snapshotted" in out
    assert (tmp_path / "s" / f"{res.session}.pt").is_file()
