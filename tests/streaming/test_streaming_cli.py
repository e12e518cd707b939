"""The streaming demo CLI on real files: video with audio, video only, audio only (wav)."""

import io
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from streaming_helpers import tiny_model

from ssm_mm.media import decode_audio, decode_video, write_media
from ssm_mm.models.multimodal import MultimodalSSM
from ssm_mm.streaming.__main__ import main

QUESTION = "how many times did the bell ring?"


@pytest.fixture(scope="module")
def files(avworld_dir, tmp_path_factory):
    """The AVWorld mp4, a video-only mp4 of its frames and a wav of its audio, plus a saved tiny model."""
    d = tmp_path_factory.mktemp("cli")
    mp4 = sorted((avworld_dir / "media").glob("*.mp4"))[0]
    v = decode_video(mp4)
    a = decode_audio(mp4, sample_rate=16000)
    video_only = write_media(
        d / "video_only.mp4", frames=v.frames.numpy(), timestamps=v.timestamps.numpy(), fps=4.0
    )
    wav = write_media(d / "audio.wav", audio=a.samples.numpy(), sample_rate=16000)
    model_dir = tiny_model().save_pretrained(d / "model")
    return {"mp4": mp4, "video_only": video_only, "wav": wav, "model": model_dir}


def _run(argv) -> str:
    out = io.StringIO()
    assert main(argv, out=out) == 0
    return out.getvalue()


def _answer(text: str) -> tuple[float, str]:
    m = re.search(r"\[\s*([\d.]+)s\] answer\s+(.*)", text)
    assert m, text
    return float(m.group(1)), m.group(2)


def test_cli_video_with_audio_as_a_program(files):
    """The real entry point (``python -m ssm_mm.streaming``) on an mp4 with an audio track."""
    cmd = [sys.executable, "-m", "ssm_mm.streaming", str(files["model"]), str(files["mp4"])]
    cmd += ["--ask", f"3.0:{QUESTION}", "--ask", "4.2:what shape is on screen now?", "--labels", "all"]
    cmd += ["--threshold", "0.0", "--max-tokens", "3", "--threads", "1"]  # threshold 0: every tick speaks
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    text = res.stdout
    assert re.search(r"media: .*video \d+ frames at 4 fps, audio [\d.]+ s at 16000 Hz", text)  # both tracks
    assert re.search(r"\[\s*3\.00s\] user\s+" + re.escape(QUESTION), text)
    assert re.search(r"\[\s*4\.50s\] user\s+what shape", text)  # 4.2 s is asked at its tick's end
    assert len(re.findall(r"\] answer ", text)) == 2
    assert len(re.findall(r"\] event ", text)) >= 10  # proactive responses, one per tick
    assert len(re.findall(r"\] label ", text)) == 13  # --labels all: every tick of the 6.x s stream
    assert re.search(r"done: 13 ticks .*x real time\); per-tick latency p50 [\d.]+ ms, p99", text)


def test_cli_answer_equals_a_session_fed_the_same_file(files):
    """What the CLI prints is what a session fed the same media up to the question says."""
    text = _run([str(files["model"]), str(files["mp4"]), "--ask", f"3.2:{QUESTION}", "--threshold", "1.0"])
    t, answer = _answer(text)
    assert t == 3.5
    model = MultimodalSSM.from_pretrained(files["model"])
    v, a = decode_video(files["mp4"], fps=4.0), decode_audio(files["mp4"], sample_rate=16000)
    s = model.stream(speak_threshold=1.0)
    n_f = int((v.timestamps < 3.6).sum())
    s.push_video(v.frames[:n_f], v.timestamps[:n_f])
    n_a = math.ceil((3.6 - a.t0) * 16000)
    s.push_audio(a.samples[:n_a], 16000, a.t0)
    s.advance_to(3.6)
    assert s.time == 3.5
    assert repr(s.ask(QUESTION)) == answer


def test_cli_video_only_and_audio_only(files):
    text = _run([str(files["model"]), str(files["video_only"]), "--ask", f"2.0:{QUESTION}"])
    assert "video" in text.splitlines()[1] and "audio" not in text.splitlines()[1]
    assert _answer(text)[0] == 2.0 and "done:" in text
    text = _run([str(files["model"]), str(files["wav"]), "--ask", f"2.0:{QUESTION}", "--labels", "all"])
    assert "audio" in text.splitlines()[1] and "video" not in text.splitlines()[1]
    assert _answer(text)[0] == 2.0
    times = [float(x) for x in re.findall(r"\[\s*([\d.]+)s\] label", text)]
    assert times == list(np.arange(len(times)) * 0.5)  # one label per tick, in order


def _fails(argv) -> str:
    """Run the CLI expecting bad input: exit status 2; returns the one error line it printed."""
    err = io.StringIO()
    assert main(argv, out=io.StringIO(), err=err) == 2
    lines = err.getvalue().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_cli_rejects_bad_arguments(files):
    with pytest.raises(SystemExit) as exc:  # argparse: usage error, status 2
        main([str(files["model"]), str(files["wav"]), "--ask", "soon:what?"])
    assert exc.value.code == 2
    assert "nothing to stream" in _fails([str(files["model"]), str(files["wav"]), "--no-audio"])
    line = _fails([str(files["model"]), str(files["wav"]).replace("audio.wav", "missing.mp4")])
    assert re.search("error: .*missing.mp4.*file not found", line)
    assert "model folder not found" in _fails([str(files["model"]) + "_missing", str(files["wav"])])


def _damaged_model(src, dst, how: str):
    """A copy of the model folder ``src`` at ``dst`` whose weights are truncated or byte-flipped."""
    import shutil

    shutil.copytree(src, dst)
    f = dst / "model.safetensors"
    data = bytearray(f.read_bytes())
    if how == "truncated":
        data = data[:3000]
    else:
        mid = len(data) // 2
        data[mid : mid + 8] = bytes(b ^ 0xFF for b in data[mid : mid + 8])
    f.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_clis_refuse_damaged_model_files_in_one_line(files, tmp_path, how):
    """Reliability cases 5/6: the streaming CLI and eval/run.py name the damaged weights file in one
    line and exit 2 (no traceback)."""
    bad = _damaged_model(files["model"], tmp_path / "bad", how)
    line = _fails([str(bad), str(files["wav"])])
    assert str(bad / "model.safetensors") in line
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run(
        [sys.executable, str(root / "eval" / "run.py"), f"model={bad}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and str(bad / "model.safetensors") in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
