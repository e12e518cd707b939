"""eval/run.py on bad input: a clear message naming what is wrong, exit status 2, nothing run."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ssm_mm.config import ConfigError
from ssm_mm.data.manifest import ManifestError
from ssm_mm.evaluation import EvalError

ROOT = Path(__file__).resolve().parents[2]


def _fails(run_py, argv, capsys, *words):
    assert run_py.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("eval/run.py: error: ")
    for w in words:
        assert w in err, (w, err)
    return err


def test_missing_model(run_py, tmp_path, capsys):
    _fails(run_py, [f"model={tmp_path / 'nope'}"], capsys, "nope", "not found")
    _fails(run_py, ["eval.tolerance=1"], capsys, "no model given", "model=DIR")
    (tmp_path / "junk").mkdir()
    _fails(run_py, [f"model={tmp_path / 'junk'}"], capsys, "junk", "cannot load")
    with pytest.raises(EvalError):
        run_py.run([f"model={tmp_path / 'nope'}"])


def test_unknown_config_key(run_py, model_dir, capsys):
    _fails(run_py, [f"model={model_dir}", "eval.tolerence=2"], capsys, "eval.tolerence", "tolerance")
    with pytest.raises(ConfigError):
        run_py.run([f"model={model_dir}", "eval.tolerence=2"])
    _fails(run_py, [f"model={model_dir}", "eval.tolerance=-1"], capsys, "eval.tolerance=-1.0")


def test_manifest_without_media(run_py, model_dir, tmp_path, capsys):
    line = {"id": "clip7", "video": "media/clip7.mp4", "duration": 5.0}
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps(line) + "\n")
    err = _fails(run_py, [f"model={model_dir}", f"data.manifest={manifest}"], capsys, "clip7", "'video'")
    assert "file not found" in err and "m.jsonl:1" in err
    with pytest.raises(ManifestError):
        run_py.run([f"model={model_dir}", f"data.manifest={manifest}"])
    _fails(run_py, [f"model={model_dir}", f"data.manifest={tmp_path / 'none.jsonl'}"], capsys, "none.jsonl")


def test_bad_sweeps(run_py, model_dir, capsys):
    _fails(run_py, [f"model={model_dir}", "eval.sweep=fsp"], capsys, "unknown sweep knob 'fsp'", "fps")
    _fails(run_py, [f"model={model_dir}", "eval.sweep_values=[1,2]"], capsys, "without eval.sweep")
    _fails(
        run_py,
        [f"model={model_dir}", "eval.sweep=jitter", "eval.sweep_values=[0.5]"],
        capsys,
        "jitter=0.5",
        "0.45/fps",
    )


def test_the_script_itself_reports_errors(tmp_path):
    p = subprocess.run(
        [sys.executable, "eval/run.py", f"model={tmp_path / 'missing'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and "missing" in p.stderr and "not found" in p.stderr


def test_timing_spreads_augment_training_streams_only(tmp_path):
    """Validation and sweep streams are rendered at the nominal timing even when training varies."""
    from ssm_mm.config import load_config
    from ssm_mm.evaluation.suite import _base_world
    from ssm_mm.evaluation.sweeps import sweep_points

    cfg = load_config(
        None,
        [
            "data.worlds.avworld.jitter=0.01",
            "data.worlds.avworld.jitter_spread=0.03",
            "data.worlds.avworld.offset_spread=0.5",
            "data.worlds.avworld.seconds=6",
            "data.worlds.avworld.val_streams=1",
        ],
    )
    world, base = _base_world(cfg, ["bell", "drum"])
    assert base.jitter_spread == 0.03 and base.classes == 4  # training knobs kept; classes cover the labels
    val = json.loads((world.ensure(tmp_path, base, "val").parent / "config.json").read_text())
    (point,) = sweep_points(world, base, "fps", [8.0], streams=1, seconds=6.0, seed=5)
    for knobs in (val, dataclasses.asdict(point.config)):
        assert knobs["jitter"] == 0.01 and knobs["jitter_spread"] == 0.0 and knobs["offset_spread"] == 0.0
