"""eval/compare.py: models against each other across sweeps, seeds pooled; clear errors on bad input."""

from __future__ import annotations

import json

import pytest
from test_benchmarks import load_script


def _metrics(f1: float, qa: float = 0.5) -> dict:
    return {
        "events": {"tick_accuracy": f1, "macro_f1": f1},
        "qa": {"accuracy": qa},
        "proactive": {"f1": None},
    }


def _results(path, scores: dict[str, dict[tuple[str, float], float]]):
    """A results file with the sweep points ``scores[model][(knob, value)] = macro-F1``."""
    res = [{"model": "m", "dataset": "val", "knob": None, "value": None, "metrics": _metrics(0.1)}]
    for model, pts in scores.items():
        for (knob, v), f1 in pts.items():
            res.append(
                {
                    "model": model,
                    "dataset": f"{knob}={v:g}",
                    "knob": knob,
                    "value": v,
                    "metrics": _metrics(f1),
                }
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schema": "ssm_mm.eval/1", "results": res}))
    return str(path)


def _rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        if line.startswith("| ") and not line.startswith(("| point", "| ---")):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[0], cells[1:])
    return rows


def test_groups_pool_seeds_and_name_the_best(tmp_path, capsys):
    a = _results(
        tmp_path / "runA" / "results.json",
        {
            "hyb": {("fps", 4.0): 1.0, ("fps", 2.0): 0.9, ("offset", 0.0): 1.0, ("offset", 0.5): 0.8},
            "base": {("fps", 4.0): 0.8, ("fps", 2.0): 0.4, ("offset", 0.0): 0.8, ("offset", 0.5): 0.8},
        },
    )
    b = _results(  # the second seed of "hyb", evaluated in another run under the same model name
        tmp_path / "runB" / "results.json",
        {"hyb": {("fps", 4.0): 0.8, ("fps", 2.0): 0.7, ("offset", 0.0): 0.8, ("offset", 0.5): 0.6}},
    )
    cmp = load_script("compare")
    out_dir = tmp_path / "plots"
    argv = [a, b, "--group", "hybrid=runA:hyb,runB:hyb", "--group", "base=base", "--metric", "macro_f1"]
    assert cmp.main([*argv, "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert list(rows) == ["in-distribution", "fps=2", "offset=0.5"]  # nominal points shown once
    assert rows["in-distribution"] == ["0.900 ± 0.100 (100% ± 0)", "0.800 (100%)", "hybrid"]
    # fps=2: seeds 0.9 (90%) and 0.7 (87.5%) -> mean 0.8 ± 0.1, share 88.75% ± 1.25
    assert rows["fps=2"] == ["0.800 ± 0.100 (89% ± 1)", "0.400 (50%)", "hybrid"]
    assert rows["offset=0.5"][-1] == "base"  # 0.7 vs 0.8
    assert "hybrid alone best at 1 of 2 changed points." in out
    assert "hybrid (×2)" in out and "mean ± half range over seeds" in out
    assert sorted(p.name for p in out_dir.iterdir()) == ["compare_fps.png", "compare_offset.png"]


def test_ties_and_default_groups(tmp_path, capsys):
    a = _results(
        tmp_path / "r" / "results.json",
        {"x": {("drop", 0.0): 0.9, ("drop", 0.2): 0.5}, "y": {("drop", 0.0): 0.9, ("drop", 0.2): 0.5}},
    )
    cmp = load_script("compare")
    assert cmp.main([a, "--metric", "macro_f1", "--metric", "qa_accuracy"]) == 0
    out = capsys.readouterr().out
    assert "| drop=0.2 | 0.500 (56%) | 0.500 (56%) | x = y |" in out
    assert "x alone best at 0 of 1 changed points." in out
    assert "**QA exact match**" in out


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--group", "hybrid"], "expected NAME=RUN"),
        (["--group", "h=nope"], "no run 'nope'"),
        (["--group", "h=hyb", "--group", "g=hyb"], "in two groups"),
        (["--group", "h=hyb", "--group", "h=base"], "given twice"),
        (["--base", "fps=fast"], "not a number"),
        (["--base", "speed=2"], "expected KNOB=VALUE"),
        (["--base", "fps=8"], "no in-distribution point fps=8"),
    ],
)
def test_bad_arguments_are_named(tmp_path, capsys, extra, msg):
    a = _results(
        tmp_path / "r" / "results.json",
        {"hyb": {("fps", 4.0): 1.0, ("fps", 2.0): 0.9}, "base": {("fps", 4.0): 1.0, ("fps", 2.0): 0.9}},
    )
    assert load_script("compare").main([a, *extra]) == 2
    assert msg in capsys.readouterr().err


def test_bad_files_and_missing_points(tmp_path, capsys):
    cmp = load_script("compare")
    bad = tmp_path / "bad" / "results.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    assert cmp.main([str(bad)]) == 2
    assert "cannot read a results file" in capsys.readouterr().err
    novel = _results(tmp_path / "n" / "results.json", {})
    assert cmp.main([novel]) == 2
    assert "no sweep results" in capsys.readouterr().err
    a = _results(tmp_path / "a" / "results.json", {"m": {("fps", 4.0): 1.0, ("fps", 2.0): 0.9}})
    b = _results(tmp_path / "b" / "results.json", {"m": {("fps", 4.0): 1.0}})
    assert cmp.main([a, b, "--group", "m=m"]) == 2
    assert "ambiguous" in capsys.readouterr().err
    assert cmp.main([a, b, "--group", "x=a:m", "--group", "y=b:m"]) == 2
    assert "run b:m has no point fps=2" in capsys.readouterr().err


def test_a_group_not_swept_over_a_knob_shows_a_dash(tmp_path, capsys):
    a = _results(
        tmp_path / "a" / "results.json",
        {"old": {("length", 1.0): 0.9, ("length", 10.0): 0.8, ("fps", 4.0): 0.9, ("fps", 2.0): 0.7}},
    )
    b = _results(tmp_path / "b" / "results.json", {"new": {("fps", 4.0): 1.0, ("fps", 2.0): 0.95}})
    assert (
        load_script("compare").main(
            [a, b, "--group", "new=new", "--group", "old=old", "--metric", "macro_f1"]
        )
        == 0
    )
    rows = _rows(capsys.readouterr().out)
    assert rows["in-distribution"] == ["1.000 (100%)", "0.900 (100%)", "new"]  # each from a knob it has
    assert rows["length=10"] == ["–", "0.800 (89%)", "old"]
    assert rows["fps=2"] == ["0.950 (95%)", "0.700 (78%)", "new"]
