"""probe_patches.py: probes at every depth on a tiny model and world; clear errors on bad input."""

from __future__ import annotations

import json

import pytest
from probe_support import BAD_PROBE_CASES, bad_probe_args, load_script


def test_probe_reports_every_depth_and_writes_json(world, model_dir, tmp_path):
    out = tmp_path / "probe.json"
    res = load_script("probe_patches").main(
        [str(model_dir), "--manifest", str(world), "--streams", "4", "--steps", "50", "--out", str(out)]
    )
    pattern = json.loads((model_dir / "config.json").read_text())["model"]["pattern"]
    names = ["frontend"] + [f"block{j + 1}:{c}" for j, c in enumerate(pattern)]
    assert list(res["accuracy"]) == names
    assert res["streams"] == 4 and res["train_streams"] == 3 and 0 < res["test_tokens"] < res["tokens"]
    for r in res["accuracy"].values():
        assert 0.0 <= r["colour"] <= 1.0 and 0.0 <= r["kind"] <= 1.0
    # the untrained frontend is a random conv stem: colour is linearly decodable from it
    assert res["accuracy"]["frontend"]["colour"] > 0.5
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))


def test_probe_is_deterministic(world, model_dir):
    args = [str(model_dir), "--manifest", str(world), "--streams", "4", "--steps", "30"]
    mod = load_script("probe_patches")
    assert mod.main(args)["accuracy"] == mod.main(args)["accuracy"]


@pytest.mark.parametrize("case,match", BAD_PROBE_CASES)
def test_bad_input_names_the_problem(world, model_dir, tmp_path, case, match):
    mod = load_script("probe_patches")
    manifest, extra = bad_probe_args(world, tmp_path, case)
    with pytest.raises(mod.ProbeError, match=match):
        mod.main([str(model_dir), "--manifest", manifest, "--steps", "5", *extra])
