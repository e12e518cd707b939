"""eval/summarize.py: the README's tables from result files, and clear errors on bad files."""

from __future__ import annotations

import gzip
import json

import pytest
from test_benchmarks import load_script


def _metrics(acc: float, qa_types: dict[str, tuple[float, int]], f1: float = 0.5) -> dict:
    return {
        "n_streams": 2,
        "events": {"tick_accuracy": acc, "majority_rate": 0.6, "macro_f1": 0.8},
        "qa": {
            "accuracy": 0.7,
            "per_type": {t: {"accuracy": a, "n": n} for t, (a, n) in qa_types.items()},
        },
        "proactive": {"precision": 0.5, "recall": None, "f1": f1},
    }


def _write(path, results: list[dict]):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schema": 1, "results": results}))
    return str(path)


def _one_row(tmp_path, capsys, result: dict, *flags: str) -> tuple[str, str]:
    """(header, row) of the table summarize prints for one result (a results.json of its own)."""
    assert load_script("summarize").main([_write(tmp_path / "run" / "results.json", [result]), *flags]) == 0
    head, _, row = capsys.readouterr().out.strip().splitlines()
    return head, row


def test_table_rows_and_question_types(tmp_path, capsys):
    a = _write(
        tmp_path / "runA" / "results.json",
        [{"model": "m", "dataset": "val", "metrics": _metrics(0.9, {"count": (0.5, 4)})}],
    )
    b = _write(
        tmp_path / "runB" / "results.json",
        [
            {"model": "m", "dataset": "val", "metrics": _metrics(0.95, {"color": (1.0, 2)})},
            {"model": "m", "dataset": "drop=0.2", "knob": "drop", "value": 0.2, "metrics": _metrics(0.8, {})},
        ],
    )
    summ = load_script("summarize")
    assert summ.main([a, b, "--dataset", "val", "--types"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4  # header, rule, one row per file (dataset filter drops the sweep point)
    assert lines[0].count("|") == lines[2].count("|") == lines[3].count("|")
    assert "QA color" in lines[0] and "QA count" in lines[0]
    assert lines[2].startswith("| runA | 2 | 90.0% |") and "50.0% (4)" in lines[2] and "| – |" in lines[2]
    assert lines[3].startswith("| runB | 2 | 95.0% |") and "100.0% (2)" in lines[3]
    assert "0.800" in lines[2] and "0.500" in lines[2]  # F1 scores as decimals


def test_now_questions_split_by_what_they_ask(tmp_path, capsys):
    qa = [
        {"type": "now", "reference": "red", "correct": True},
        {"type": "now", "reference": "blue", "correct": False},
        {"type": "now", "reference": "2", "correct": True},
        {"type": "now", "reference": "cross", "correct": True},
        {"type": "count", "reference": "3", "correct": False},  # not a now question
    ]
    r = {
        "model": "m",
        "dataset": "val",
        "metrics": _metrics(0.9, {"now": (0.75, 4)}),
        "streams": [{"qa": qa}],
    }
    head, row = _one_row(tmp_path, capsys, r, "--now")
    assert head.endswith("| QA now color | QA now count | QA now shape |")
    assert row.endswith("| 50.0% (2) | 100.0% (1) | 100.0% (1) |")


def test_colour_and_kind_questions_split_by_the_shape_they_ask_about(tmp_path, capsys):
    q = "what color was the {} when the buzz last played?"
    qa = [  # the buzz's shape is the square, the bell's the circle
        {"type": "color", "question": q.format("square"), "correct": True},
        {"type": "color", "question": q.format("circle"), "correct": False},
        {"type": "kind", "question": "which shape was red when the bell last rang?", "reference": "circle",
         "correct": True},
        {"type": "kind", "question": "which shape was red when the bell last rang?", "reference": "cross",
         "correct": False},
        {"type": "kind", "question": "which shape was blue when the bell last rang?", "reference": "square",
         "correct": True},
        {"type": "now", "question": "what color is the square now?", "reference": "red", "correct": True},
    ]  # fmt: skip
    r = {"model": "m", "dataset": "val", "metrics": _metrics(0.9, {}), "streams": [{"qa": qa}]}
    head, row = _one_row(tmp_path, capsys, r, "--shapes")
    assert head.endswith("| QA color other | QA color own | QA kind other | QA kind own |")
    assert row.endswith("| 0.0% (1) | 100.0% (1) | 50.0% (2) | 100.0% (1) |")


def test_sweep_table_is_relative_to_the_base_point(tmp_path, capsys):
    res = [
        {"model": "m", "dataset": f"fps={v:g}", "knob": "fps", "value": v, "metrics": _metrics(acc, {})}
        for v, acc in ((2.0, 0.45), (4.0, 0.9))
    ]
    p = str(tmp_path / "results.json.gz")  # compressed result files read the same
    with gzip.open(p, "wt") as f:
        json.dump({"schema": 1, "results": res}, f)
    summ = load_script("summarize")
    assert summ.main([p, "--sweep", "fps", "--base", "4"]) == 0
    out = capsys.readouterr().out
    assert "| m | 2 | 45.0% (50.0%) |" in out and "| m | 4 | 90.0% (100.0%) |" in out


@pytest.mark.parametrize(
    "content,args,match",
    [
        (None, [], "cannot read"),
        ("{not json", [], "cannot read"),
        ('{"results": 3}', [], "not an evaluation results file"),
        ('{"results": []}', [], "no results"),
        ('{"results": []}', ["--sweep", "fps"], "needs --base"),
        ('{"results": []}', ["--sweep", "fps", "--base", "4"], "no sweep over 'fps'"),
    ],
)
def test_bad_result_files_exit_2_naming_the_problem(tmp_path, capsys, content, args, match):
    p = tmp_path / "results.json"
    if content is not None:
        p.write_text(content)
    assert load_script("summarize").main([str(p), *args]) == 2
    err = capsys.readouterr().err
    assert match in err


def test_sweep_without_the_base_point_names_it(tmp_path, capsys):
    p = _write(
        tmp_path / "s" / "results.json",
        [{"model": "m", "dataset": "fps=2", "knob": "fps", "value": 2.0, "metrics": _metrics(0.5, {})}],
    )
    assert load_script("summarize").main([p, "--sweep", "fps", "--base", "4"]) == 2
    assert "no fps=4 point" in capsys.readouterr().err
