"""count_probe.py: the count head read at each count question, beside the LM's answer; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import support
import torch
from probe_support import load_script

from ssm_mm.data.dataset import StreamDataset
from ssm_mm.data.featurize import FeaturizerConfig
from ssm_mm.data.interleave import tick_event_counts
from ssm_mm.data.manifest import read_manifest
from ssm_mm.data.tokenizer import ByteTokenizer
from ssm_mm.worlds.avworld import CLASSES, generate

LABELS = ["background"] + [c.name for c in CLASSES]
cp = load_script("count_probe")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("counts")
    m = generate(
        out,
        streams=3,
        seconds=20.0,
        seed=21,
        question_every=1.0,
        question_mix={"count": 1.0, "color": 0.0, "kind": 0.0, "order": 0.0, "now": 0.0},
    )
    return read_manifest(m), m


def _qa(man, wrong_every=2):
    """Per-question records whose answers are the references, every ``wrong_every``-th one wrong."""
    qa, n = {}, 0
    for spec in man.streams:
        turns = list(spec.dialogue)
        for q, a in zip(turns, turns[1:]):
            if q.role == "user" and a.role == "assistant" and q.type == "count":
                right = n % wrong_every != 0
                qa[(spec.id, float(q.t), q.text)] = {"reference": a.text, "correct": right}
                n += 1
    return qa, n


def test_oracle_head_is_right_at_every_question_and_lm_flags_are_counted(world):
    man, _ = world
    ds = StreamDataset(man, FeaturizerConfig(), ByteTokenizer(), LABELS)
    qa, n = _qa(man)
    assert n >= 6
    # an oracle count head: the true running counts of each stream's segments (the head's targets)
    oracle = lambda ds_, i: tick_event_counts(  # noqa: E731
        man.streams[i].segments, LABELS, ds_[i].tick_end, FeaturizerConfig().tick_seconds
    )
    tab = cp.probe(list(man.streams), ds, qa, LABELS, FeaturizerConfig().tick_seconds, 9, oracle)
    assert tab[(True, True)] + tab[(True, False)] == n and not tab[(False, True)] and not tab[(False, False)]
    assert tab[(True, True)] == sum(r["correct"] for r in qa.values())
    # a head that always says 0 is right exactly at the questions whose answer is 0
    zeros = lambda ds_, i: oracle(ds_, i) * 0  # noqa: E731
    tab0 = cp.probe(list(man.streams), ds, qa, LABELS, FeaturizerConfig().tick_seconds, 9, zeros)
    n_zero = sum(r["reference"] == "0" for r in qa.values())
    assert 0 < n_zero < n and tab0[(True, True)] + tab0[(True, False)] == n_zero
    # the head is read at the tick that ends at the question (t = (k+1)·τ): a head whose every output
    # is its tick index is right exactly when the reference is that index
    tau = FeaturizerConfig().tick_seconds
    ticks = lambda ds_, i: torch.arange(ds_[i].tick_end)[:, None].expand(-1, len(LABELS) - 1)  # noqa: E731
    at = {k: {**r, "reference": str(round(k[1] / tau) - 1)} for k, r in qa.items()}
    tab_t = cp.probe(list(man.streams), ds, at, LABELS, tau, 10**6, ticks)
    assert tab_t[(True, True)] + tab_t[(True, False)] == n
    row = cp.row("m", tab)
    assert row[1] == str(n) and row[2].startswith("100.0%") and row[-1] == "0"


def test_asked_label():
    assert cp.asked_label("how many times did the bell ring?", LABELS) == "bell"
    assert cp.asked_label("what color is the cross now?", LABELS) is None


def test_cli_runs_on_a_count_head_model_and_names_bad_input(world, tmp_path, capsys):
    man, manifest = world
    model = support.tiny_model(0, LABELS, objectives={"count": {"max": 3}})
    model.save_pretrained(tmp_path / "m")
    qa, _ = _qa(man)
    streams = {}
    for (sid, t, text), r in qa.items():
        streams.setdefault(sid, []).append({"t": t, "question": text, **r})
    res = {
        "datasets": {"val": {"manifest": str(manifest)}},
        "results": [
            {
                "model": "m",
                "dataset": "val",
                "knob": None,
                "streams": [{"id": k, "qa": v} for k, v in streams.items()],
            }
        ],
    }
    (tmp_path / "results.json").write_text(json.dumps(res))
    assert cp.main([str(tmp_path / "m"), str(tmp_path / "results.json")]) == 0
    out = capsys.readouterr().out
    assert "count head right" in out and "| m |" in out

    def fails(*args, match):
        assert cp.main([str(a) for a in args]) == 2
        assert match in capsys.readouterr().err

    fails(tmp_path / "nope", tmp_path / "results.json", match="nope: no such model")
    plain = support.tiny_model(0, LABELS)
    plain.save_pretrained(tmp_path / "plain")
    fails(tmp_path / "plain", tmp_path / "results.json", match="no count head")
    fails(tmp_path / "m", tmp_path / "missing.json", match="missing.json")
    fails(tmp_path / "m", tmp_path / "results.json", "--dataset", "test", match="dataset 'test'")
    fails(
        tmp_path / "m",
        tmp_path / "results.json",
        "--manifest",
        tmp_path / "x.jsonl",
        match="x.jsonl: no such manifest",
    )
    # a question of the manifest the results file does not answer
    first = next(iter(streams))
    res["results"][0]["streams"] = [{"id": first, "qa": streams[first][1:]}]
    (tmp_path / "short.json").write_text(json.dumps(res))
    fails(tmp_path / "m", tmp_path / "short.json", match=f"stream {first}: no answer to")
    assert Path(tmp_path / "m" / "model.safetensors").is_file()  # nothing written or removed
