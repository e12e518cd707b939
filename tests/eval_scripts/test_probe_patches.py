"""eval/probe_patches.py: probes at every depth on a tiny model and world; clear errors on bad input."""

from __future__ import annotations

import json

import pytest
from support import tiny_model
from test_benchmarks import load_script

from ssm_mm.data.avworld import CLASSES, generate


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("probe_world"), streams=4, seconds=6.0, seed=9)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    labels = ["background"] + [c.name for c in CLASSES[:4]]
    out = tmp_path_factory.mktemp("probe_model") / "m"
    tiny_model(labels=labels).save_pretrained(out)
    return out


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


@pytest.mark.parametrize(
    "case,match",
    [
        ("missing", "no such file"),
        ("no_scenes", "no scenes.jsonl"),
        ("share", "train-share"),
        ("one_stream", "both sides"),
    ],
)
def test_bad_input_names_the_problem(world, model_dir, tmp_path, case, match):
    mod = load_script("probe_patches")
    manifest = str(world)
    extra = []
    if case == "missing":
        manifest = str(tmp_path / "nope.jsonl")
    elif case == "no_scenes":
        (tmp_path / "w").mkdir()
        copy = tmp_path / "w" / "manifest.jsonl"
        copy.write_text(world.read_text().replace('"media/', f'"{world.parent}/media/'))
        manifest = str(copy)
    elif case == "share":
        extra = ["--train-share", "1.5"]
    elif case == "one_stream":
        extra = ["--streams", "1"]
    with pytest.raises(mod.ProbeError, match=match):
        mod.main([str(model_dir), "--manifest", manifest, "--steps", "5", *extra])
