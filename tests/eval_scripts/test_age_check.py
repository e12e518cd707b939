"""eval/age_check.py: per-bin scores of one question type against a constant-miss-rate model."""

from __future__ import annotations

import json
import math

import pytest
from test_benchmarks import load_script


def _results(path, per_bin: list[tuple[int, int]], qtype: str = "now", bin_s: float = 60.0):
    """A results file of one stream whose bin i holds per_bin[i] = (questions, misses) of ``qtype``,
    plus one question of another type (which ``--type`` must leave out)."""
    qa = [{"t": 1.0, "type": "count", "correct": False}]
    for i, (n, m) in enumerate(per_bin):
        qa += [{"t": i * bin_s + 0.5 + j, "type": qtype, "correct": j >= m} for j in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {"model": "m", "dataset": "val@100T", "streams": [{"qa": qa}]}
    path.write_text(json.dumps({"schema": 1, "results": [result]}))
    return str(path)


def test_binomial_helpers_against_direct_sums():
    ac = load_script("age_check")
    # 8 questions, target 0.9: any miss fails (7/8 = 87.5%); 10 questions: one miss is allowed
    assert ac.fail_chance(8, 0.1, 0.9) == pytest.approx(1 - 0.9**8)
    assert ac.fail_chance(10, 0.1, 0.9) == pytest.approx(1 - 0.9**10 - 10 * 0.1 * 0.9**9)
    assert ac.fail_chance(5, 0.0, 0.9) == 0.0
    assert ac.all_pass_chance([8, 8], 0.1, 0.9) == pytest.approx(0.9**16)
    # the rate at which 50 bins of 8 all pass half the time: (1 - p)^400 = 0.5
    assert ac.largest_rate([8] * 50, 0.9) == pytest.approx(1 - 0.5 ** (1 / 400), rel=1e-6)


def test_report_counts_bins_and_compares_with_a_constant_rate(tmp_path, capsys):
    ac = load_script("age_check")
    per_bin = [(8, 0), (8, 1), (8, 0), (10, 1), (8, 2), (8, 0)]
    f = _results(tmp_path / "run" / "results.json", per_bin)
    assert ac.main([f, "--type", "now", "--bins"]) == 0
    out = capsys.readouterr().out
    head, _, row = [line for line in out.splitlines() if line.startswith("|")][:3]
    cells = [c.strip() for c in row.strip("|").split("|")]
    cols = [c.strip() for c in head.strip("|").split("|")]
    got = dict(zip(cols, cells))
    assert got["questions"] == "50" and got["bins"] == "6"  # the count question is left out
    assert got["right"] == f"{46 / 50:.1%}"
    assert got["bins short"] == "2"  # 7/8 and 6/8 fall short; 9/10 does not
    p = 4 / 50
    counts = [n for n, _ in per_bin]
    expected = sum(ac.fail_chance(n, p, 0.9) for n in counts)
    assert got["expected short"] == f"{expected:.2f}"
    assert got["P(none short)"] == f"{math.prod(1 - ac.fail_chance(n, p, 0.9) for n in counts):.3f}"
    assert got["first half"] == f"{23 / 24:.1%}" and got["second half"] == f"{23 / 26:.1%}"
    assert "| 240 | 8 | 2 | 75.0% |" in out  # the per-bin table


def test_bad_input_is_named(tmp_path, capsys):
    ac = load_script("age_check")
    f = _results(tmp_path / "run" / "results.json", [(4, 0)])
    assert ac.main([f, "--type", "colour"]) == 2
    err = capsys.readouterr().err
    assert "--type colour" in err and "count, now" in err
    assert ac.main([str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert ac.main([f, "--dataset", "val@10T"]) == 2
    assert "val@10T" in capsys.readouterr().err
    broken = tmp_path / "broken" / "results.json"
    broken.parent.mkdir()
    broken.write_text(json.dumps({"schema": 1, "results": [{"streams": [{"qa": [{"type": "now"}]}]}]}))
    assert ac.main([str(broken)]) == 2
    assert "broken" in (err := capsys.readouterr().err) and "malformed question records" in err
    for bad in (["--bin", "0"], ["--min", "1.5"]):
        with pytest.raises(SystemExit) as e:
            ac.main([f, *bad])
        assert e.value.code == 2
        assert bad[0] in capsys.readouterr().err
