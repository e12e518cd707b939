"""eval/run.py on bad input: a clear message naming what is wrong, exit status 2, nothing run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from eval_helpers import load_run_py, tiny_model

from ssm_mm.config import ConfigError
from ssm_mm.data.manifest import ManifestError
from ssm_mm.evaluation import EvalError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_py():
    return load_run_py()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model().save_pretrained(tmp_path_factory.mktemp("model") / "tiny")


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


def test_timing_spreads_augment_training_streams_only():
    """Validation and sweep streams are rendered at the nominal timing even when training varies."""
    from ssm_mm.config import load_config
    from ssm_mm.evaluation.suite import _base_world

    cfg = load_config(
        None,
        ["data.avworld.jitter=0.01", "data.avworld.jitter_spread=0.03", "data.avworld.offset_spread=0.5"],
    )
    world, _, _ = _base_world(cfg, classes=4)
    assert world["jitter"] == 0.01 and world["jitter_spread"] == 0.0 and world["offset_spread"] == 0.0
