"""probe_binding.py: per-tick targets against a hand-made scene, the probe's scoring on planted
features, a run on a tiny model and world, clear errors on bad input."""

from __future__ import annotations

import json

import pytest
import torch
from probe_support import BAD_PROBE_CASES, bad_probe_args, load_script
from support import tiny_model

MOD = load_script("probe_binding")


def _shape(kind, color, start, end):
    return {"kind": kind, "color": color, "start": start, "end": end}


def test_tick_targets_follow_the_scene():
    scene = {
        "shapes": [
            _shape("square", "red", 0.0, 2.0),
            _shape("circle", "blue", 0.2, 1.2),
            _shape("square", "green", 2.5, 4.0),
            _shape("circle", "red", 2.5, 4.0),  # two circles on screen in different colours from 2.6
            _shape("circle", "cyan", 2.6, 4.0),
        ],
        "events": [
            {"cls": "bell", "start": 0.3, "end": 1.0},  # square red and circle blue visible throughout
            {"cls": "bell", "start": 2.7, "end": 3.2},  # square green, and two circles (left out)
            {"cls": "drum", "start": 1.1, "end": 1.4},  # the circle left at 1.2: square red only
        ],
    }
    t = MOD.tick_targets(scene, ["bell", "drum", "chirp"], n_ticks=8, tick_seconds=0.5)
    # tick 0 ends at 0.5: both on screen, no event over yet
    assert t[0] == {
        "now": {"square": "red", "circle": "blue"},
        "last": {"square": "red", "circle": "blue"},
        "bound": {},
    }
    # tick 1 ends at 1.0: the first bell ends exactly then (over), so it binds
    assert t[1]["bound"] == {("bell", "square"): ("red", 0), ("bell", "circle"): ("blue", 0)}
    # tick 2 ends at 1.5: the circle is gone (now) but remembered (last); the drum binds the square only
    assert t[2]["now"] == {"square": "red"} and t[2]["last"]["circle"] == "blue"
    assert t[2]["bound"][("drum", "square")] == ("red", 2) and ("drum", "circle") not in t[2]["bound"]
    # tick 4 ends at 2.5: the green square and the red circle start then (visible from their start)
    assert t[4]["now"] == {"square": "green", "circle": "red"}
    # tick 5 ends at 3.0: two circles in different colours: no "now" circle; the second bell is not over
    assert "circle" not in t[5]["now"] and t[5]["bound"][("bell", "square")] == ("red", 0)
    # tick 6 ends at 3.5: the second bell is the last one: the green square, circles left out
    assert t[6]["bound"][("bell", "square")] == ("green", 1) and ("bell", "circle") not in t[6]["bound"]
    assert t[6]["last"] == {"square": "green", "circle": "cyan"}  # the latest start wins
    assert all(("chirp", k) not in tt["bound"] for tt in t for k in ("square", "circle"))


def test_score_reads_a_planted_signal_and_not_noise():
    g = torch.Generator().manual_seed(0)
    n, streams = 600, 10
    y = torch.randint(0, 6, (n,), generator=g)
    stream = torch.arange(n) % streams
    key = ["a" if i % 2 else "b" for i in range(n)]
    rows = [(i, key[i], int(y[i]), int(stream[i]), None, None) for i in range(n)]
    planted = torch.cat([torch.nn.functional.one_hot(y, 6).float(), torch.randn(n, 10, generator=g)], 1)
    good = MOD.score(planted, rows, cut=7, n_classes=6, steps=200, weight_decay=0.0)
    assert good["accuracy"] == 1.0 and good["test_rows"] == int((stream >= 7).sum())
    noise = MOD.score(torch.randn(n, 16, generator=g), rows, cut=7, n_classes=6, steps=200, weight_decay=1e-3)
    assert noise["accuracy"] < 0.4 and noise["majority"] < 0.4
    # a key with rows on one side of the split only is skipped
    one_side = rows + [(0, "c", 1, 0, None, None)]
    assert MOD.score(planted, one_side, 7, 6, 50, 0.0)["test_rows"] == good["test_rows"]


def test_probe_reports_every_depth_and_writes_json(world, model_dir, tmp_path):
    out = tmp_path / "binding.json"
    args = [str(model_dir), "--manifest", str(world), "--streams", "4", "--steps", "30", "--out", str(out)]
    res = MOD.main(args)
    pattern = json.loads((model_dir / "config.json").read_text())["model"]["pattern"]
    assert list(res["accuracy"]) == [f"block{j + 1}:{c}" for j, c in enumerate(pattern)] + ["hidden"]
    assert res["streams"] == 4 and res["train_streams"] == 3 and res["ticks"] == 4 * 12
    for r in res["accuracy"].values():
        assert set(r) == set(MOD.TARGETS)
        assert r["now"]["test_rows"] > 0 and r["last"]["test_rows"] >= r["now"]["test_rows"]
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert MOD.main(args[:-2])["accuracy"] == res["accuracy"]  # deterministic


@pytest.mark.parametrize("case,match", [*BAD_PROBE_CASES, ("labels", "name none of the dataset's classes")])
def test_bad_input_names_the_problem(world, model_dir, tmp_path, case, match):
    model = str(model_dir)
    if case == "labels":
        manifest, extra = str(world), []
        model = str(tmp_path / "other")
        tiny_model(labels=["background", "siren", "horn"]).save_pretrained(model)
    else:
        manifest, extra = bad_probe_args(world, tmp_path, case)
    with pytest.raises(MOD.ProbeError, match=match):
        MOD.main([model, "--manifest", manifest, "--steps", "5", *extra])


def test_state_features_are_the_state_after_each_tick(world, model_dir):
    from ssm_mm.data.dataset import StreamDataset
    from ssm_mm.data.manifest import read_manifest
    from ssm_mm.models.multimodal import MultimodalSSM

    model = MultimodalSSM.from_pretrained(model_dir).eval()
    specs = read_manifest(world).streams[:1]
    tick = model.features.tick_seconds
    args = (model.features, model.tokenizer, model.labels)
    feats, have = MOD.tick_features(model, StreamDataset(specs, *args, window_seconds=tick), 0, state=True)
    whole = StreamDataset(specs, *args, window_seconds=None)
    two = StreamDataset(specs, *args, window_seconds=2 * tick)
    with torch.no_grad():
        final = model.forward_batch(whole.collate([whole[0]])).state.backbone.layers
        after_two = model.forward_batch(two.collate([two[0]])).state.backbone.layers
    ssm = [j for j, c in enumerate(model.cfg.pattern) if c == "M"]
    assert list(feats) == [f"ssm{j + 1}:M" for j in ssm] and bool(have.all()) and len(have) == 12
    for j in ssm:  # the last row is the offline final state; row 1 the state after two ticks
        x = feats[f"ssm{j + 1}:M"]
        torch.testing.assert_close(x[-1], final[j].ssm[0].flatten(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(x[1], after_two[j].ssm[0].flatten(), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(x[0], x[1])


def test_state_probe_runs(world, model_dir):
    args = [str(model_dir), "--manifest", str(world), "--streams", "4", "--steps", "20", "--state"]
    res = MOD.main(args)
    assert res["features"] == "recurrent state" and all(k.startswith("ssm") for k in res["accuracy"])
    assert all(0 < d <= 36 for d in res["dims"].values())  # 36 training ticks: at most 36 components


def test_reduce_keeps_a_signal_in_the_top_components():
    g = torch.Generator().manual_seed(1)
    n = 400
    y = torch.randint(0, 6, (n,), generator=g)
    basis = torch.randn(6, 64, generator=g)
    x = 5.0 * basis[y] + 0.1 * torch.randn(n, 64, generator=g)
    train = torch.arange(n) < 300
    small = MOD.reduce(x, train, 8)
    assert small.shape == (n, 8)
    assert torch.equal(MOD.reduce(x, train, 64), x) and torch.equal(MOD.reduce(x, train, 0), x)
    rows = [(i, "k", int(y[i]), i // 40, None, None) for i in range(n)]
    assert MOD.score(small, rows, cut=8, n_classes=6, steps=200, weight_decay=0.0)["accuracy"] == 1.0
