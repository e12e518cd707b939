"""Markdown tables from evaluation result files (``results.json`` written by ``eval/run.py`` or by
train.py's final evaluation): the tables in README.md are printed by this script.

    python eval/summarize.py results/avworld/*/results.json
    python eval/summarize.py results/avworld/1h/results.json --dataset val --types
    python eval/summarize.py results/avworld/1h_session3_sweeps/results.json.gz --sweep fps --base 4

One row per (result file, model, dataset): tick accuracy with the majority-class rate beside it,
event macro-F1, QA exact match (with ``--types`` one column per question type; with ``--now`` the
"now" questions split by what they ask for: a colour, a count or a shape; with ``--shapes`` the AVWorld
"color"/"kind" questions split by whether they ask about the event's own shape — "what color was the
square when the buzz last played?", the buzz being the square's class — or another shape on screen
then), proactive precision /
recall / F1. A row is named by the result file's folder (and the model and dataset when
a file holds several). ``--sweep KNOB`` prints instead one row per model and sweep point with each
score as a share of the model's score at the in-distribution point (``--base VALUE``).

Exit status 2 with a message naming the file on a missing or malformed result file.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

from ssm_mm.cli import exits_2_on
from ssm_mm.evaluation.report import markdown_table, read_json
from ssm_mm.worlds.avworld import CLASSES, COLORS

HEADLINE = (
    ("tick acc.", ("events", "tick_accuracy")),
    ("majority rate", ("events", "majority_rate")),
    ("event macro-F1", ("events", "macro_f1")),
    ("QA", ("qa", "accuracy")),
    ("proactive P", ("proactive", "precision")),
    ("proactive R", ("proactive", "recall")),
    ("proactive F1", ("proactive", "f1")),
)
# the scores a sweep compares with the in-distribution point
SWEPT = (("tick acc.", 0), ("event macro-F1", 2), ("QA", 3), ("proactive F1", 6))


class SummaryError(ValueError):
    pass


def _get(m: dict, path: tuple[str, ...]) -> float:
    for k in path:
        m = m.get(k) if isinstance(m, dict) else None
    return float("nan") if m is None else float(m)


def _pct(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:.1f}%"


def _fmt(name: str, x: float) -> str:
    """F1 scores as decimals (as SPEC §9 states them), accuracies and rates as percentages."""
    if "F1" in name:
        return "–" if math.isnan(x) else f"{x:.3f}"
    return _pct(x)


def load(path: str | Path) -> dict:
    try:
        return read_json(path)
    except ValueError as e:
        raise SummaryError(str(e)) from None


def rows(paths: list[str], dataset: str | None = None) -> list[tuple[str, dict]]:
    """(row name, metrics) for every result of every file (``dataset``: keep only that one)."""
    out = []
    for path in paths:
        res = load(path)
        entries = [r for r in res["results"] if dataset is None or r["dataset"] == dataset]
        several = len({(r["model"], r["dataset"]) for r in entries}) > 1
        for r in entries:
            name = Path(path).parent.name
            if several:
                name += f" · {r['model']} · {r['dataset']}"
            out.append((name, {**r["metrics"], "now_split": _now_split(r), "shape_split": _shape_split(r)}))
    if not out:
        raise SummaryError(f"no results{f' for dataset {dataset!r}' if dataset else ''} in {paths}")
    return out


def _split(result: dict, group) -> dict[str, dict]:
    """QA of a result's per-question records grouped by ``group(record)`` (None: left out):
    {group: {"accuracy", "n"}}."""
    hits: dict[str, list[bool]] = {}
    for s in result.get("streams", []):
        for q in s.get("qa", []):
            g = group(q)
            if g is not None:
                hits.setdefault(g, []).append(bool(q.get("correct")))
    return {k: {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in sorted(hits.items())}


def _now_split(result: dict) -> dict[str, dict]:
    """The "now" questions by what they ask for: a colour, a count or a shape (told apart by the
    reference answer)."""

    def group(q: dict) -> str | None:
        if q.get("type") != "now":
            return None
        ref = str(q.get("reference", ""))
        return "count" if ref.isdigit() else "color" if ref in COLORS else "shape"

    return _split(result, group)


_OWN_SHAPE = {c.name: c.shape for c in CLASSES}  # AVWorld: each event class's shape kind
_ABOUT = re.compile(r"what color was the (\w+) when the (\w+) last|which shape was \w+ when the (\w+) last")


def _shape_split(result: dict) -> dict[str, dict]:
    """The AVWorld "color"/"kind" questions by the shape they ask about: ``<type> own`` when it is the
    event's own shape (the asked kind, or for "kind" the answer, is the event class's shape), ``<type>
    other`` when it is another shape on screen then; questions of another wording are left out."""

    def group(q: dict) -> str | None:
        m = _ABOUT.match(str(q.get("question", ""))) if q.get("type") in ("color", "kind") else None
        if m is None:
            return None
        kind, cls = (m[1], m[2]) if m[1] else (str(q.get("reference", "")).strip(), m[3])
        return f"{q['type']} {'own' if _OWN_SHAPE.get(cls) == kind else 'other'}"

    return _split(result, group)


def table(
    paths: list[str], dataset: str | None = None, types: bool = False, now: bool = False, shapes: bool = False
) -> str:
    data = rows(paths, dataset)
    qtypes = sorted({t for _, m in data for t in m["qa"]["per_type"]}) if types else []
    nows = sorted({k for _, m in data for k in m["now_split"]}) if now else []
    about = sorted({k for _, m in data for k in m["shape_split"]}) if shapes else []
    head = ["run", "streams", *(h for h, _ in HEADLINE), *(f"QA {t}" for t in qtypes)]
    head += [f"QA now {k}" for k in nows] + [f"QA {k}" for k in about]
    body = []
    for name, m in data:
        cells = [name, str(m["n_streams"])]
        cells += [_fmt(h, _get(m, p)) for h, p in HEADLINE]
        splits = [m["now_split"].get(k) for k in nows] + [m["shape_split"].get(k) for k in about]
        for pt in [m["qa"]["per_type"].get(t) for t in qtypes] + splits:
            cells.append("–" if pt is None else f"{_pct(pt['accuracy'])} ({pt['n']})")
        body.append(cells)
    return "\n".join(markdown_table(head, body))


def sweep_table(paths: list[str], knob: str, base: float) -> str:
    """Per model and sweep point: each score as a share of the model's score at ``knob = base``."""
    body = []
    for path in paths:
        res = load(path)
        pts = [r for r in res["results"] if r.get("knob") == knob]
        if not pts:
            raise SummaryError(f"{path}: no sweep over {knob!r}")
        for model in dict.fromkeys(r["model"] for r in pts):
            mine = sorted((r for r in pts if r["model"] == model), key=lambda r: r["value"])
            ref = next((r for r in mine if math.isclose(r["value"], base)), None)
            if ref is None:
                raise SummaryError(f"{path}: model {model!r} has no {knob}={base:g} point to compare with")
            refv = [_get(ref["metrics"], HEADLINE[i][1]) for _, i in SWEPT]
            for r in mine:
                v = [_get(r["metrics"], HEADLINE[i][1]) for _, i in SWEPT]
                rel = [x / y if y > 0 else float("nan") for x, y in zip(v, refv)]
                cells = [model, f"{r['value']:g}"]
                cells += [f"{_fmt(h, x)} ({_pct(q)})" for (h, _), x, q in zip(SWEPT, v, rel)]
                body.append(cells)
    head = ["model", knob, *(f"{h} (share of {knob}={base:g})" for h, _ in SWEPT)]
    return "\n".join(markdown_table(head, body))


@exits_2_on("summarize", SummaryError, KeyError, TypeError)
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="results.json files (or .json.gz)")
    ap.add_argument("--dataset", help="keep only this dataset (e.g. val)")
    ap.add_argument("--types", action="store_true", help="one column per question type")
    ap.add_argument(
        "--now",
        action="store_true",
        help='"now" questions split by what they ask: a colour, a count, a shape',
    )
    ap.add_argument(
        "--shapes",
        action="store_true",
        help='AVWorld "color"/"kind" questions split: about the event\'s own shape or another one',
    )
    ap.add_argument("--sweep", help="knob: print the sweep table instead")
    ap.add_argument("--base", type=float, help="the knob's in-distribution value (with --sweep)")
    a = ap.parse_args(argv)
    if a.sweep:
        if a.base is None:
            raise SummaryError("--sweep needs --base (the in-distribution value of the knob)")
        print(sweep_table(a.results, a.sweep, a.base))
    else:
        print(table(a.results, a.dataset, a.types, a.now, a.shapes))


if __name__ == "__main__":
    sys.exit(main())
