"""Does a score hold in every bin of stream age, and is a bin that falls short a trend or a few misses?

    python eval/age_check.py results/avworld/1h_curriculum/results_100T.json.gz --type now --bin 60 --min 0.9
    python eval/age_check.py RESULTS... [--type TYPE] [--bin SECONDS] [--min SHARE] [--dataset NAME] [--bins]

For the questions of one type (``--type``, default every question) in each (model, dataset) of the
result files (``eval/run.py`` or train.py's final evaluation), per bin of stream age: the questions,
the misses and the share right. A target such as "≥ 90% in every minute" is then set against what a
model whose misses do not depend on age would score: with the run's own overall miss rate p and each
question missed independently, the expected number of bins below the target (binomial per bin, at its
own question count), the chance that no bin falls below it, and the largest miss rate at which that
chance is still one half. When the bins that fall short are about as many as a constant p predicts,
they are sampling noise around the score at every age, not a decline with age; the first and second
half of the stream's bins are compared as well. ``--bins`` also prints the per-bin table.

Exit status 2 with a message naming the problem on a missing or malformed file, an unknown type or a
bad option.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from ssm_mm.cli import exits_2_on
from ssm_mm.evaluation.report import markdown_table, read_json


def fail_chance(n: int, p: float, target: float) -> float:
    """P(the share right of n questions, each missed independently with probability p, is < target)."""
    allowed = math.floor(n * (1.0 - target) + 1e-9)  # most misses a bin may hold and still reach target
    ok = sum(math.comb(n, j) * p**j * (1.0 - p) ** (n - j) for j in range(min(allowed, n) + 1))
    return max(0.0, 1.0 - ok)


def all_pass_chance(counts: Sequence[int], p: float, target: float) -> float:
    return math.prod(1.0 - fail_chance(n, p, target) for n in counts if n)


def largest_rate(counts: Sequence[int], target: float, chance: float = 0.5) -> float:
    """The largest miss rate at which every bin reaches the target with probability >= chance
    (bisection: the chance falls as the rate grows)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if all_pass_chance(counts, mid, target) >= chance else (lo, mid)
    return lo


def bin_counts(streams: list[dict], qtype: str | None, bin_s: float) -> tuple[list[int], list[int]]:
    """(questions, misses) per age bin over the streams' question records."""
    rows = [q for s in streams for q in s.get("qa", []) if qtype is None or q.get("type") == qtype]
    if not rows:
        return [], []
    n = int(max(q["t"] for q in rows) // bin_s) + 1
    asked, missed = [0] * n, [0] * n
    for q in rows:
        i = int(q["t"] // bin_s)
        asked[i] += 1
        missed[i] += not q["correct"]
    return asked, missed


COLUMNS = (
    "questions",
    "right",
    "bins",
    "median per bin",
    "bins short",
    "expected short",
    "P(none short)",
    "rate for P=0.5",
    "first half",
    "second half",
)


def check(asked: Sequence[int], missed: Sequence[int], target: float) -> dict:
    """The columns of :data:`COLUMNS` for one (model, dataset) from its per-bin counts."""
    used = [(a, m) for a, m in zip(asked, missed) if a]
    total, wrong = sum(a for a, _ in used), sum(m for _, m in used)
    p = wrong / total
    counts = [a for a, _ in used]
    half = len(used) // 2
    first, second = used[:half], used[half:]

    def share(part) -> float:
        n = sum(a for a, _ in part)
        return (n - sum(m for _, m in part)) / n if n else float("nan")

    return {
        "questions": total,
        "right": 1.0 - p,
        "bins": len(used),
        "median per bin": sorted(counts)[len(counts) // 2],
        "bins short": sum(1 for a, m in used if (a - m) / a < target - 1e-12),
        "expected short": sum(fail_chance(a, p, target) for a in counts),
        "P(none short)": all_pass_chance(counts, p, target),
        "rate for P=0.5": largest_rate(counts, target),
        "first half": share(first),
        "second half": share(second),
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="results.json(.gz) files")
    ap.add_argument("--type", default=None, help="question type (default: every question)")
    ap.add_argument("--bin", type=float, default=60.0, help="seconds of stream age per bin (default 60)")
    ap.add_argument("--min", type=float, default=0.9, help="target share right in every bin (default 0.9)")
    ap.add_argument("--dataset", default=None, help="only datasets whose name contains this")
    ap.add_argument("--bins", action="store_true", help="also print the per-bin table")
    a = ap.parse_args(argv)
    if not a.bin > 0:
        ap.error(f"--bin must be > 0 seconds (got {a.bin})")
    if not 0 < a.min <= 1:
        ap.error(f"--min must be a share in (0, 1] (got {a.min})")
    return a


def report(a: argparse.Namespace) -> str:
    out, rows = [], []
    seen_types: set[str] = set()
    for path in a.results:
        res = read_json(path)
        for r in res["results"]:
            if a.dataset and a.dataset not in r.get("dataset", ""):
                continue
            streams = r.get("streams") or []
            try:
                seen_types.update(q.get("type") for s in streams for q in s.get("qa", []))
                asked, missed = bin_counts(streams, a.type, a.bin)
            except (KeyError, TypeError, AttributeError, ValueError) as e:
                raise ValueError(f"{path}: malformed question records ({type(e).__name__}: {e})") from None
            if not sum(asked):
                continue
            c = check(asked, missed, a.min)
            name = f"{Path(path).parent.name} · {r.get('model')} · {r.get('dataset')}"
            rows.append([name] + [_fmt(k, c[k]) for k in COLUMNS])
            if a.bins:
                out.append(f"### {name}\n")
                per = [
                    [f"{i * a.bin:g}", str(n), str(m), f"{(n - m) / n:.1%}"]
                    for i, (n, m) in enumerate(zip(asked, missed))
                    if n
                ]
                out.append("\n".join(markdown_table(["age (s)", "questions", "missed", "right"], per)) + "\n")
    if not rows:
        if a.type is not None and a.type not in seen_types:
            known = ", ".join(sorted(t for t in seen_types if t)) or "none"
            raise ValueError(f"--type {a.type}: no such questions in the results (types there: {known})")
        where = f" of datasets matching {a.dataset!r}" if a.dataset else ""
        raise ValueError(f"no questions in the results{where}")
    what = f"'{a.type}' questions" if a.type else "all questions"
    head = ["run · model · dataset", *COLUMNS]
    out.insert(
        0,
        f"{what}, bins of {a.bin:g} s, target >= {a.min:.0%} in every bin; expected / P(none short): "
        "if every question were missed independently at the run's overall rate\n\n"
        + "\n".join(markdown_table(head, rows))
        + "\n",
    )
    return "\n".join(out)


def _fmt(key: str, v) -> str:
    if isinstance(v, int):
        return str(v)
    if key in ("right", "first half", "second half", "rate for P=0.5"):
        return f"{v:.1%}"
    return f"{v:.2f}" if key == "expected short" else f"{v:.3f}"


@exits_2_on("age_check", ValueError)
def main(argv: list[str] | None = None) -> None:
    print(report(parse(argv)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
