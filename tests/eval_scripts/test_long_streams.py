"""eval/long_streams.py: questions and responses split by what training showed, and clear errors."""

from __future__ import annotations

import json

import pytest
from test_benchmarks import load_script


def _q(qtype: str, reference: str, correct: bool) -> dict:
    return {
        "t": 1.0,
        "question": "?",
        "type": qtype,
        "reference": reference,
        "answer": "",
        "correct": correct,
    }


STREAM = {
    "id": "s0",
    "qa": [
        _q("count", "2", True),  # inside the training range (<= 3)
        _q("count", "3", False),  # inside, at its edge
        _q("count", "7", False),  # above it
        _q("order", "bell", True),
        _q("color", "red", False),
        _q("proactive", "ok", True),  # the acknowledgement: in no column
    ],
    "references": [
        {"t": 12.0, "matched": True},
        {"t": 45.0, "matched": True},
        {"t": 80.0, "matched": False},
        {"t": 120.0, "matched": False},
    ],
}


def _results(tmp_path, streams=(STREAM,)) -> str:
    path = tmp_path / "results.json"
    path.write_text(
        json.dumps({"results": [{"model": "m", "dataset": "length=10", "streams": list(streams)}]})
    )
    return str(path)


def _manifest(tmp_path, answers=("0", "3", "1")) -> str:
    turns = []
    for a in answers:
        turns += [
            {"t": 1.0, "role": "user", "text": "how many?", "type": "count"},
            {"t": 1.0, "role": "assistant", "text": a},
        ]
    turns += [
        {"t": 2.0, "role": "user", "text": "which came first?", "type": "order"},
        {"t": 2.0, "role": "assistant", "text": "9"},
    ]
    path = tmp_path / "manifest.jsonl"
    path.write_text(json.dumps({"id": "t0", "dialogue": turns}) + "\n")
    return str(path)


def _row(out: str) -> list[str]:
    line = next(x for x in out.splitlines() if x.startswith("| m · length=10"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


@pytest.mark.parametrize("source", ["max_count", "manifest"])
def test_splits_by_training_range_and_horizon(tmp_path, capsys, source):
    args = ["--max-count", "3"] if source == "max_count" else ["--train-manifest", _manifest(tmp_path)]
    assert load_script("long_streams").main([_results(tmp_path), *args, "--horizon", "60"]) == 0
    out = capsys.readouterr().out
    assert "count ≤ 3" in out and "t ≥ 60 s" in out
    assert _row(out) == ["50.0% (1/2)", "0.0% (0/1)", "50.0% (1/2)", "100.0% (2/2)", "0.0% (0/2)"]


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing", "cannot read a results file"),
        ("no_records", "no per-question records"),
        ("bad_count", "count reference 'many' is not a number"),
        ("empty", "results list is empty"),
        ("no_manifest", "no such training manifest"),
        ("manifest_without_counts", "no count questions"),
        ("horizon", "--horizon must be positive"),
        ("malformed", "a malformed record (KeyError: 'matched')"),
    ],
)
def test_bad_input_is_named(tmp_path, capsys, breakage, message):
    path = _results(tmp_path)
    args = ["--max-count", "3"]
    if breakage == "missing":
        (tmp_path / "results.json").unlink()
    elif breakage == "no_records":
        path = _results(tmp_path, streams=[{"id": "s0"}])
    elif breakage == "bad_count":
        path = _results(tmp_path, streams=[{"id": "s0", "qa": [_q("count", "many", False)]}])
    elif breakage == "empty":
        (tmp_path / "results.json").write_text(json.dumps({"results": []}))
    elif breakage == "no_manifest":
        args = ["--train-manifest", str(tmp_path / "nope.jsonl")]
    elif breakage == "manifest_without_counts":
        args = ["--train-manifest", _manifest(tmp_path, answers=())]
    elif breakage == "malformed":
        path = _results(tmp_path, streams=[{"id": "s0", "qa": [], "references": [{"t": 1.0}]}])
    elif breakage == "horizon":
        args += ["--horizon", "0"]
    assert load_script("long_streams").main([path, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("long_streams: ") and message in err


def test_needs_a_training_range(tmp_path):
    with pytest.raises(SystemExit) as e:  # argparse: one of --max-count / --train-manifest is required
        load_script("long_streams").main([_results(tmp_path)])
    assert e.value.code == 2
