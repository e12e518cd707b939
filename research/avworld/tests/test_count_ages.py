"""count_ages.py: the count head scored by stream age and per occurrence; bad input."""

from __future__ import annotations

import dataclasses

import pytest
import support
import torch
from probe_support import load_script

from ssm_mm.data.featurize import FeaturizerConfig
from ssm_mm.data.interleave import tick_event_counts
from ssm_mm.data.manifest import read_manifest
from ssm_mm.worlds.avworld import CLASSES, generate

LABELS = ["background"] + [c.name for c in CLASSES]
ca = load_script("count_ages")
TAU = FeaturizerConfig().tick_seconds


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    m = generate(tmp_path_factory.mktemp("ages"), streams=2, seconds=40.0, seed=5)
    return read_manifest(m), m


def _truth(man):
    return [tick_event_counts(s.segments, LABELS, int(s.duration / TAU), TAU) for s in man.streams]


def test_an_exact_counter_scores_exact_and_moves_one_per_occurrence(world):
    man, _ = world
    truth = _truth(man)
    rows = ca.age_rows(truth, truth, TAU, 10.0)
    assert [r[0] for r in rows] == [0.0, 10.0, 20.0, 30.0]
    assert sum(r[1] for r in rows) == sum(t.numel() for t in truth)
    assert all(r[2] == 1.0 and r[3] == 0.0 and r[4] == 0.0 and r[5] == 1.0 for r in rows)
    assert rows[-1][6] > rows[0][6]  # counts grow with age
    incs = [d for s, t in zip(man.streams, truth) for _, d in ca.increments(t.float(), s, LABELS, TAU)]
    assert len(incs) >= 8 and all(d == 1.0 for d in incs)
    # one more everywhere: never exact, error +1, within ±1; a counter that moves 1.5 per occurrence
    plus = [t + 1 for t in truth]
    rows1 = ca.age_rows(plus, truth, TAU, 10.0)
    assert all(r[2] == 0.0 and r[3] == 1.0 and r[4] == 1.0 and r[5] == 1.0 for r in rows1)
    steep = [d for s, t in zip(man.streams, truth) for _, d in ca.increments(1.5 * t.float(), s, LABELS, TAU)]
    assert steep and all(d == 1.5 for d in steep)
    assert ca.mean_sd([1.0, 3.0]) == "2.00 ± 1.00 (2)" and ca.mean_sd([]) == "–"


def test_error_sources_tell_a_shared_scale_from_a_walk_of_each_counter():
    g = torch.Generator().manual_seed(0)
    # two streams of 600 ticks, four labels each beginning on ~1 tick in 15: counts to ~40
    truth = [(torch.rand(600, 4, generator=g, dtype=torch.float64) < 1 / 15).double().cumsum(0) for _ in "ab"]
    # one factor divides every label's count at once, as a norm by the residual stream's RMS would
    rms = [1 + 0.2 * torch.rand(len(t), generator=g, dtype=torch.float64) for t in truth]
    scaled = [t / s.unsqueeze(-1) for t, s in zip(truth, rms)]
    src = ca.error_sources(scaled, truth, rms)
    assert src["label_corr"] > 0.99 and src["scale_corr"] < -0.99 and src["persistence"] < 0.5
    # each counter walks on its own: a noisy write per occurrence, kept until the next one
    walked = []
    for t in truth:
        steps = torch.diff(t, dim=0, prepend=torch.zeros(1, t.shape[1], dtype=t.dtype))
        noisy = steps * (1 + 0.5 * torch.randn(steps.shape, generator=g, dtype=torch.float64))
        walked.append(noisy.cumsum(0))
    src = ca.error_sources(walked, truth, rms)
    assert abs(src["label_corr"]) < 0.5 and abs(src["scale_corr"]) < 0.2
    assert src["jitter_sd"] == 0.0 and src["persistence"] > 0.99 and src["error_sd"] > 0.5


def test_a_segment_next_to_another_of_its_label_is_left_out(world):
    man, _ = world
    spec = man.streams[0]
    seg = spec.segments[0]
    crowded = dataclasses.replace(spec, segments=[seg, dataclasses.replace(seg, start=seg.start + TAU / 4)])
    t = tick_event_counts(crowded.segments, LABELS, int(spec.duration / TAU), TAU).float()
    assert ca.increments(t, crowded, LABELS, TAU) == []


def test_cli_reads_a_count_head_model_and_names_bad_input(world, tmp_path, capsys):
    _, manifest = world
    for name, count in (("classes", {"max": 3}), ("huber", {"max": 100, "loss": "huber"})):
        support.tiny_model(0, LABELS, objectives={"count": count}).save_pretrained(tmp_path / name)
        assert ca.main([str(tmp_path / name), str(manifest), "--bin", "20", "--streams", "1"]) == 0
        out = capsys.readouterr().out
        assert "on 1 streams" in out and "| 20 |" in out and "per occurrence" in out
        assert "where the error comes from" in out

    def fails(*args, match):
        assert ca.main([str(a) for a in args]) == 2
        assert match in capsys.readouterr().err

    fails(tmp_path / "nope", manifest, match="nope: no such model")
    fails(tmp_path / "huber", tmp_path / "x.jsonl", match="x.jsonl: no such manifest")
    support.tiny_model(0, LABELS).save_pretrained(tmp_path / "plain")
    fails(tmp_path / "plain", manifest, match="no count head")
    fails(tmp_path / "huber", manifest, "--bin", "0", match="--bin 0.0: must be > 0")
    fails(tmp_path / "huber", manifest, "--streams", "0", match="--streams 0: must be >= 1")
