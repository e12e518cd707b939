"""The harness on converted public-dataset manifests: AVE (event localization, labels the model does
not know) and MUSIC-AVQA (questions at the end of the clip, per question type). The annotation
fixtures are converted with ssm_mm.data.convert; the few videos they name are generated here."""

from pathlib import Path

import numpy as np
import pytest
from eval_helpers import check_results

from ssm_mm.data.convert import convert_ave, convert_music_avqa
from ssm_mm.data.manifest import write_manifest
from ssm_mm.media import write_media

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _write_clip(path: Path, seconds: float, seed: int) -> None:
    """A small mp4 with video (4 fps, 32x32) and an aac track (16 kHz) of ``seconds``."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 4)
    frames = rng.integers(0, 255, size=(n, 32, 32, 3), dtype=np.uint8)
    audio = (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
    write_media(path, frames, np.arange(n) / 4.0, audio=audio, sample_rate=16000, fps=4.0)


def _evaluate(run_py, model_dir: Path, manifest: Path, out: Path) -> dict:
    """eval/run.py's results for the tiny model on ``manifest`` (one dataset named after its file
    stem, at the stream length only), checked against the schema."""
    run_py.run([f"model={model_dir}", f"data.manifest={manifest}", f"eval.out_dir={out}", "eval.lengths=[1]"])
    return check_results(out / "results.json", n_models=1, datasets=[manifest.stem])


def test_converted_ave_manifest(tmp_path, run_py, model_dir):
    streams, _ = convert_ave(FIXTURES / "ave" / "Annotations.txt", media_dir=tmp_path / "ave", duration=10.0)
    streams = streams[:2]
    for i, s in enumerate(streams):
        _write_clip(s.video, 10.0, seed=i)
    manifest = write_manifest(streams, tmp_path / "ave.jsonl")
    res = _evaluate(run_py, model_dir, manifest, tmp_path / "out")
    m = res["results"][0]["metrics"]
    categories = sorted({seg.label for s in streams for seg in s.segments})
    assert m["unknown_labels"] == categories  # AVE categories are not the tiny model's labels: misses
    assert m["events"]["n_ticks"] == 2 * 20 and m["events"]["n_spans"] == 2 * 10
    assert m["events"]["majority_rate"] is not None and m["events"]["missing_ticks"] == 0
    assert set(m["events"]["per_class"]) >= set(categories)
    assert m["qa"]["n"] == 0 and m["qa"]["accuracy"] is None  # no dialogue in AVE
    assert m["proactive"]["n_references"] == 0 and m["proactive"]["recall"] is None


def test_converted_music_avqa_manifest(tmp_path, run_py, model_dir):
    fixture = FIXTURES / "music_avqa" / "avqa-mini.json"
    streams, report = convert_music_avqa(fixture, media_dir=tmp_path / "avqa", duration=6.0)
    for i, s in enumerate(streams):
        _write_clip(s.video, 6.0, seed=10 + i)
    manifest = write_manifest(streams, tmp_path / "avqa.jsonl")
    res = _evaluate(run_py, model_dir, manifest, tmp_path / "out")
    m = res["results"][0]["metrics"]
    assert m["qa"]["n"] == report.questions == 5
    assert set(m["qa"]["per_type"]) == {
        "Audio-Visual/Temporal",
        "Audio-Visual/Counting",
        "Visual/Counting",
        "Audio-Visual/Existential",
        "Audio/Counting",
    }
    assert sum(v["n"] for v in m["qa"]["per_type"].values()) == 5
    for s in res["results"][0]["streams"]:
        for q in s["qa"]:  # asked at the end of the clip (t = duration), where they belong
            assert q["asked_at"] == pytest.approx(6.0) and not q["late"] and isinstance(q["answer"], str)
    assert m["events"]["n_ticks"] == 3 * 12 and m["events"]["majority_rate"] == 1.0  # all background
