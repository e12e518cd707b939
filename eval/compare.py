"""Models against each other across robustness sweeps, seeds pooled (SPEC §9: the hybrid against its
baselines wherever time changes). The comparison table and plots in README.md come from this script.

    python eval/compare.py results/avworld/compare_1h/results.json.gz \\
        --group hybrid=avworld_1h/final,avworld_1h_seed1/final \\
        --group transformer=avworld_1h_transformer/final --out results/avworld/compare_1h

Input: results files of ``eval/run.py`` runs with sweeps (``eval.sweeps.KNOB=[...]``), one or several
models each. Every model in them is a *run*; ``--group NAME=RUN,RUN,...`` pools runs trained the same
way with different seeds (RUN: a model name as the results file records it, or ``FOLDER:MODEL`` for
the model of the results file in folder FOLDER when the same name occurs in several files). Without
``--group`` every run is its own group; with it, only the named groups are compared, in the order
given (the first one is the model under test).

For every sweep point and score (``--metric``, repeatable: event macro-F1, QA exact match and
proactive F1 by default; any of ``ssm_mm.evaluation.report.SWEEP_METRICS``) the table gives each
group's score and, in brackets, its share of the same run's in-distribution score (the point where
the knob has its nominal value: AVWorld's defaults and length ×1; ``--base KNOB=VALUE`` to change),
as the mean ± half the range over the group's runs, and the group that scores highest there. The
footer counts the changed points (not in-distribution) where the first group is best. ``--out DIR``
writes ``compare_<knob>.png`` per knob: score vs. sweep value, one line per group, the range over
its runs shaded.

Exit status 2 with a message naming what is wrong (unreadable file, unknown run, a run without the
in-distribution point of a knob, ...).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import fields
from pathlib import Path

from ssm_mm.cli import exits_2_on
from ssm_mm.evaluation.report import SWEEP_METRICS, get, markdown_table, plot_sweep, read_json
from ssm_mm.worlds.avworld import AVWorldConfig
from ssm_mm.worlds.avworld.sweeps import KNOBS

DEFAULT_METRICS = ("macro_f1", "qa_accuracy", "proactive_f1")
LABELS = {
    "tick_accuracy": "tick accuracy",
    "span_accuracy": "span accuracy",
    "macro_f1": "event macro-F1",
    "qa_accuracy": "QA exact match",
    "proactive_f1": "proactive F1",
    "rtf": "real-time factor",
}


class CompareError(ValueError):
    pass


def nominal() -> dict[str, float]:
    """The in-distribution value of each sweep knob: the defaults of `data.worlds.avworld`, length x1."""
    defaults = {f.name: f.default for f in fields(AVWorldConfig)}
    out = {k: float(defaults[field]) for k, field in KNOBS.items() if k not in ("length", "seconds")}
    out["length"] = 1.0
    return out


def load_runs(paths: list[str]) -> dict[tuple[str, str], dict[tuple[str, float], dict]]:
    """{(folder, model): {(knob, value): metrics}} over the sweep points of every file."""
    runs: dict[tuple[str, str], dict] = {}
    source: dict[tuple[str, str], str] = {}
    for path in paths:
        try:
            res = read_json(path)
        except ValueError as e:
            raise CompareError(str(e)) from None
        folder = Path(path).parent.name
        points = [r for r in res["results"] if r.get("knob") is not None]
        if not points:
            raise CompareError(f"{path}: no sweep results (run eval/run.py with eval.sweeps.KNOB=[...])")
        for r in points:
            key = (folder, r["model"])
            if source.setdefault(key, path) != path:
                raise CompareError(f"model {r['model']!r} occurs in two results files in folder {folder!r}")
            runs.setdefault(key, {})[(r["knob"], float(r["value"]))] = r["metrics"]
    return runs


def resolve(runs: dict, ref: str) -> tuple[str, str]:
    """The run named by ``ref`` (``MODEL`` or ``FOLDER:MODEL``)."""
    if ":" in ref:
        folder, model = ref.split(":", 1)
        if (folder, model) in runs:
            return (folder, model)
        hits = []
    else:
        hits = [k for k in runs if k[1] == ref]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            where = ", ".join(f"{f}:{m}" for f, m in hits)
            raise CompareError(f"run {ref!r} is ambiguous ({where}): name it FOLDER:MODEL")
    known = ", ".join(sorted(f"{f}:{m}" for f, m in runs))
    raise CompareError(f"no run {ref!r} in the results files (runs: {known})")


def parse_groups(specs: list[str], runs: dict) -> dict[str, list[tuple[str, str]]]:
    if not specs:
        return {m if sum(k[1] == m for k in runs) == 1 else f"{f}:{m}": [(f, m)] for f, m in runs}
    groups: dict[str, list] = {}
    used: dict[tuple[str, str], str] = {}
    for spec in specs:
        name, sep, members = spec.partition("=")
        refs = [m.strip() for m in members.split(",") if m.strip()]
        if not sep or not name.strip() or not refs:
            raise CompareError(f"--group {spec!r}: expected NAME=RUN[,RUN...]")
        name = name.strip()
        if name in groups:
            raise CompareError(f"--group {name!r} given twice")
        groups[name] = []
        for ref in refs:
            key = resolve(runs, ref)
            if key in used:
                raise CompareError(f"run {ref!r} is in two groups ({used[key]!r} and {name!r})")
            used[key] = name
            groups[name].append(key)
    return groups


def _base_values(specs: list[str]) -> dict[str, float]:
    base = nominal()
    for spec in specs:
        knob, sep, value = spec.partition("=")
        if not sep or knob not in KNOBS:
            raise CompareError(f"--base {spec!r}: expected KNOB=VALUE with KNOB one of {', '.join(KNOBS)}")
        try:
            base[knob] = float(value)
        except ValueError:
            raise CompareError(f"--base {spec!r}: {value!r} is not a number") from None
    return base


def _stats(xs: list[float]) -> tuple[float, float, float, float]:
    """mean, half range, low, high (NaN when any is missing)."""
    if not xs or any(x is None or math.isnan(x) for x in xs):
        return (math.nan,) * 4
    lo, hi = min(xs), max(xs)
    return sum(xs) / len(xs), (hi - lo) / 2, lo, hi


def _point(runs: dict, key: tuple[str, str], knob: str, value: float) -> dict | None:
    return next((m for (kn, x), m in runs[key].items() if kn == knob and math.isclose(x, value)), None)


def compare(runs: dict, groups: dict, metrics: list[str], base: dict[str, float]) -> dict:
    """{knob: {"values": [...], metric: {group: {"score": [stats per value], "share": [...]}}}}; a group
    with no run swept over a knob gets NaN there (a run swept over it must have all its points)."""
    members = [k for g in groups.values() for k in g]
    knobs = sorted({kn for k in members for kn, _ in runs[k]}, key=list(KNOBS).index)
    out = {}
    for knob in knobs:
        if knob not in base:
            raise CompareError(f"knob {knob!r} has no nominal value: give --base {knob}=VALUE")
        values = sorted({v for k in members for kn, v in runs[k] if kn == knob})
        points = {}  # (run, value) -> metrics, the in-distribution point at value None
        for key in members:
            if not any(kn == knob for kn, _ in runs[key]):
                continue  # a run not swept over this knob: "–" in its column
            for v in (None, *values):
                m = _point(runs, key, knob, base[knob] if v is None else v)
                if m is None:
                    want = (
                        f"in-distribution point {knob}={base[knob]:g}" if v is None else f"point {knob}={v:g}"
                    )
                    raise CompareError(f"run {key[0]}:{key[1]} has no {want}")
                points[key, v] = m
        table: dict = {"values": values}
        for metric in metrics:
            path = SWEEP_METRICS[metric]
            table[metric] = {}
            for name, keys in groups.items():
                score, share = [], []
                swept = [k for k in keys if (k, None) in points]
                for v in values:
                    xs = [get(points[k, v], path) for k in swept]
                    refs = [get(points[k, None], path) for k in swept]
                    score.append(_stats(xs))
                    share.append(_stats([x / r if r and r > 0 else math.nan for x, r in zip(xs, refs)]))
                table[metric][name] = {"score": score, "share": share}
        out[knob] = table
    return out


def _cell(score, share, n: int) -> str:
    if math.isnan(score[0]):
        return "–"
    if n == 1:
        return f"{score[0]:.3f} ({100 * share[0]:.0f}%)" if not math.isnan(share[0]) else f"{score[0]:.3f}"
    sh = "" if math.isnan(share[0]) else f" ({100 * share[0]:.0f}% ± {100 * share[1]:.0f})"
    return f"{score[0]:.3f} ± {score[1]:.3f}{sh}"


def _best(means: dict[str, float]) -> list[str]:
    """The groups with the highest mean score (ties kept)."""
    top = max(means.values(), default=math.nan)
    return [n for n, m in means.items() if math.isclose(m, top, abs_tol=1e-9)]


def _row(label: str, table: dict, i: int, metric: str, groups: dict) -> tuple[list[str], list[str]]:
    """Cells of one table row and the groups with the highest mean score there."""
    cells, means = [label], {}
    for n, keys in groups.items():
        g = table[metric][n]
        cells.append(_cell(g["score"][i], g["share"][i], len(keys)))
        if not math.isnan(g["score"][i][0]):
            means[n] = g["score"][i][0]
    best = _best(means)
    return cells + [" = ".join(best) or "–"], best


def _in_distribution(result: dict, metric: str, groups: dict, base: dict[str, float]) -> list[str]:
    """The in-distribution row: every knob's nominal point is the same world, so each group's comes
    from the first knob it was swept over."""
    cells, means = ["in-distribution"], {}
    for n, keys in groups.items():
        cell = "–"
        for knob, table in result.items():
            i = next(i for i, v in enumerate(table["values"]) if math.isclose(v, base[knob]))
            score, share = table[metric][n]["score"][i], table[metric][n]["share"][i]
            if not math.isnan(score[0]):
                cell, means[n] = _cell(score, share, len(keys)), score[0]
                break
        cells.append(cell)
    return cells + [" = ".join(_best(means)) or "–"]


def markdown(result: dict, groups: dict, metrics: list[str], base: dict[str, float]) -> str:
    """One table per metric: the in-distribution row, then every changed point."""
    names = list(groups)
    seeds = any(len(g) > 1 for g in groups.values())
    lines = []
    for metric in metrics:
        title = f"**{LABELS.get(metric, metric)}**: score (share of in-distribution)"
        lines += [title + ("; mean ± half range over seeds" if seeds else ""), ""]
        head = ["point", *(f"{n} (×{len(groups[n])})" if len(groups[n]) > 1 else n for n in names), "best"]
        rows = [_in_distribution(result, metric, groups, base)]
        wins = changed = 0
        for knob, table in result.items():
            for i, v in enumerate(table["values"]):
                if math.isclose(v, base[knob]):
                    continue
                cells, best = _row(f"{knob}={v:g}", table, i, metric, groups)
                rows.append(cells)
                changed += 1
                wins += best == names[:1]
        lines += markdown_table(head, rows)
        if len(names) > 1:
            lines += ["", f"{names[0]} alone best at {wins} of {changed} changed points."]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def plots(result: dict, groups: dict, metrics: list[str], out: Path) -> list[Path]:
    paths = []
    for knob, table in result.items():
        means = {n: {m: [s[0] for s in table[m][n]["score"]] for m in metrics} for n in groups}
        bands = {
            n: {m: [(s[2], s[3]) for s in table[m][n]["score"]] for m in metrics}
            for n in groups
            if len(groups[n]) > 1
        }
        paths.append(
            plot_sweep(out / f"compare_{knob}.png", knob, table["values"], means, bands, tuple(metrics))
        )
    return paths


@exits_2_on("compare", CompareError)
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="results.json files of eval/run.py with sweeps (or .json.gz)")
    ap.add_argument("--group", action="append", default=[], help="NAME=RUN[,RUN...]: runs pooled as seeds")
    ap.add_argument("--metric", action="append", choices=sorted(SWEEP_METRICS), help="scores to compare")
    ap.add_argument("--base", action="append", default=[], help="KNOB=VALUE: a knob's in-distribution value")
    ap.add_argument("--out", help="folder for the plots (compare_<knob>.png)")
    a = ap.parse_args(argv)
    metrics = a.metric or list(DEFAULT_METRICS)
    runs = load_runs(a.results)
    groups = parse_groups(a.group, runs)
    base = _base_values(a.base)
    result = compare(runs, groups, metrics, base)
    print(markdown(result, groups, metrics, base), end="")
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        for p in plots(result, groups, metrics, out):
            print(f"wrote {p}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
