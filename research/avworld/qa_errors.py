"""Where AVWorld colour and shape answers go wrong: the per-question records of a result file read
against the generator's ground truth (``scenes.jsonl`` next to the evaluated manifest).

    python research/avworld/qa_errors.py results/avworld/colour_set/hours.json.gz
    python research/avworld/qa_errors.py runs/eval/X/results.json --scenes DIR/scenes.jsonl --confusion

One row per (model, dataset):

* "what color is the X now?" split by how many shapes were on screen when it was asked (1, 2, 3+),
  and how many wrong answers are not the colour of any visible shape (a perception error, or no
  colour at all) rather than the colour of another visible shape (a binding error);
* "what color was the X when the C last V?" split by whether X is the shape of the event itself
  (class C's own shape) or another shape visible throughout it; and how many of these a memory of
  "the last colour each shape kind showed before the question" would answer (a simple oracle: what a
  model that keeps one colour per kind, and no event binding, could reach);
* "which shape was Y when the C last V?": how many answers name class C's own shape (right or wrong;
  ``eval/summarize.py --shapes`` has the accuracy split by own and other shape): a model whose every
  answer is the shape of the event's sound has learned a prior, not the scene.

``--confusion`` adds, per row, reference x answer counts over the six colours. ``--ages 3,6,9,13``
adds a table of the past-colour questions by the seconds between the end of the asked event and the
question (bins at those edges): how far back the model still binds a colour to an event, e.g. against
the span of its attention window. Exit status 2 with a message naming the file on a missing or
malformed result or scenes file.
"""

from __future__ import annotations

import argparse
import bisect
import re
import sys
from collections import Counter
from pathlib import Path

from ssm_mm.cli import exits_2_on
from ssm_mm.evaluation.report import fraction_cell, markdown_table, read_json
from ssm_mm.worlds.avworld import CLASSES, COLORS, Q_COLOR, Q_KIND, Q_NOW_COLOR, read_scenes

OWN_SHAPE = {c.name: c.shape for c in CLASSES}


def _template_regex(template: str) -> re.Pattern:
    """A question template of the generator (``{field}`` placeholders) as a regex with named groups."""
    parts = re.split(r"\{(\w+)\}", template)  # literal, field, literal, field, ..., literal
    return re.compile(
        "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>\\w+)" for i, p in enumerate(parts)) + "$"
    )


NOW_COLOUR = _template_regex(Q_NOW_COLOR)  # "what color is the {kind} now?"
PAST_COLOUR = _template_regex(Q_COLOR)  # "what color was the {kind} when the {cls} last {verb_past}?"
PAST_KIND = _template_regex(Q_KIND)  # "which shape was {color} when the {cls} last {verb_past}?"


class ErrorsError(ValueError):
    pass


def load_scenes(path: Path) -> dict[str, dict]:
    """``scenes.jsonl`` as {stream id: scene}."""
    try:
        return read_scenes(path)
    except ValueError as e:
        raise ErrorsError(str(e)) from None


def _visible(shapes: list[dict], t: float) -> list[dict]:
    return [s for s in shapes if s["start"] <= t < s["end"]]


def _last_colour_of_kind(shapes: list[dict], kind: str, t: float) -> str | None:
    seen = [s for s in shapes if s["kind"] == kind and s["start"] < t]
    return max(seen, key=lambda s: s["start"])["color"] if seen else None


def _event_age(scene: dict, cls: str, t: float) -> float:
    """Seconds from the end of the last event of class ``cls`` that started before ``t``, to ``t``."""
    try:
        ends = [(float(e["start"]), float(e["end"])) for e in scene["events"] if e["cls"] == cls]
    except (KeyError, TypeError, ValueError) as e:
        raise ErrorsError(f"stream {scene.get('id')!r}: scene has no readable events ({e!r})") from None
    before = [se for se in ends if se[0] < t]
    if not before:
        raise ErrorsError(f"stream {scene.get('id')!r}: no {cls} event before a question about it at t={t:g}")
    return t - max(before)[1]


def analyse(result: dict, scenes: dict[str, dict], ages: tuple[float, ...] = ()) -> dict:
    """Counts for one result entry (its ``streams`` with per-question records); ``ages``: bin edges
    (seconds, increasing) for the past-colour questions by the age of the asked event."""
    c: Counter = Counter()
    conf = {"now": Counter(), "past": Counter()}
    for s in result.get("streams", []):
        sid = s.get("id")
        if sid not in scenes:
            model = result.get("model")
            raise ErrorsError(f"stream {sid!r} of model {model!r} has no scene in the scenes file")
        shapes = scenes[sid]["shapes"]
        for q in s.get("qa", []):
            text, ref, ans, ok = q["question"], q["reference"], q.get("answer"), bool(q.get("correct"))
            past, kind_q = PAST_COLOUR.match(text), PAST_KIND.match(text)
            if kind_q:
                c["kind"] += 1
                c["kind_says_own"] += ans == OWN_SHAPE.get(kind_q["cls"])
            elif NOW_COLOUR.match(text):
                vis = _visible(shapes, float(q["t"]))
                n = min(len(vis), 3)
                c[f"now{n}"] += 1
                c[f"now{n}_ok"] += ok
                if not ok:
                    c["now_wrong"] += 1
                    c["now_offscreen"] += ans not in {v["color"] for v in vis}
                conf["now"][(ref, ans)] += 1
            elif past:
                kind, cls = past["kind"], past["cls"]
                which = "own" if OWN_SHAPE.get(cls) == kind else "other"
                c[which] += 1
                c[f"{which}_ok"] += ok
                c["oracle"] += _last_colour_of_kind(shapes, kind, float(q["t"])) == ref
                if ages:
                    b = bisect.bisect_right(ages, _event_age(scenes[sid], cls, float(q["t"])))
                    c[f"age{b}"] += 1
                    c[f"age{b}_ok"] += ok
                conf["past"][(ref, ans)] += 1
    return {"counts": c, "confusion": conf}


HEAD = (
    "run",
    "now, 1 on screen",
    "now, 2",
    "now, 3+",
    "now wrong: not a visible shape's colour",
    "past, the event's own shape",
    "past, another shape",
    "past: last colour of the kind would answer",
    "shape answers naming the event's own",
)


def row(name: str, c: Counter) -> list[str]:
    return [
        name,
        *(fraction_cell(c[f"now{n}_ok"], c[f"now{n}"]) for n in (1, 2, 3)),
        fraction_cell(c["now_offscreen"], c["now_wrong"]),
        fraction_cell(c["own_ok"], c["own"]),
        fraction_cell(c["other_ok"], c["other"]),
        fraction_cell(c["oracle"], c["own"] + c["other"]),
        fraction_cell(c["kind_says_own"], c["kind"]),
    ]


def age_head(ages: tuple[float, ...]) -> list[str]:
    edges = [0.0, *ages]
    return ["run", *(f"{a:g}–{b:g} s" for a, b in zip(edges, ages, strict=False)), f"≥ {ages[-1]:g} s"]


def age_row(name: str, c: Counter, ages: tuple[float, ...]) -> list[str]:
    return [name, *(fraction_cell(c[f"age{b}_ok"], c[f"age{b}"]) for b in range(len(ages) + 1))]


def confusion_table(conf: Counter) -> str:
    cols = list(COLORS)
    rows = [
        [
            r,
            *(str(conf[(r, b)]) for b in cols),
            str(sum(v for (a, b), v in conf.items() if a == r and b not in COLORS)),
        ]
        for r in cols
    ]
    return "\n".join(markdown_table(["reference \\ answer", *cols, "other"], rows))


def parse_ages(text: str) -> tuple[float, ...]:
    """``"3,6,9"`` -> (3.0, 6.0, 9.0); positive and increasing, else ErrorsError."""
    try:
        ages = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ErrorsError(f"--ages {text!r}: not a comma-separated list of seconds") from None
    if not ages or ages[0] <= 0 or any(b <= a for a, b in zip(ages, ages[1:], strict=False)):
        raise ErrorsError(f"--ages {text!r}: bin edges must be positive and increasing")
    return ages


def report(
    path: str, scenes_path: str | None = None, confusion: bool = False, ages: tuple[float, ...] = ()
) -> str:
    try:
        res = read_json(path)
    except ValueError as e:
        raise ErrorsError(str(e)) from None
    entries, datasets = res["results"], res.get("datasets") or {}
    cache: dict[Path, dict] = {}
    rows, age_rows, extra = [], [], []
    for r in entries:
        if scenes_path:
            sp = Path(scenes_path)
        else:
            manifest = (datasets.get(r.get("dataset")) or {}).get("manifest")
            if not manifest:
                raise ErrorsError(f"{path}: dataset {r.get('dataset')!r} names no manifest; pass --scenes")
            sp = Path(manifest).parent / "scenes.jsonl"
        if sp not in cache:
            cache[sp] = load_scenes(sp)
        a = analyse(r, cache[sp], ages)
        name = f"{r['model']} · {r['dataset']}" + (f" ({r['knob']}={r['value']:g})" if r.get("knob") else "")
        rows.append(row(name, a["counts"]))
        if ages:
            age_rows.append(age_row(name, a["counts"], ages))
        if confusion:
            for kind in ("now", "past"):
                extra += ["", f"{name}, {kind} colour:", "", confusion_table(a["confusion"][kind])]
    lines = markdown_table(list(HEAD), rows)
    if ages:
        lines += ["", "past colour by seconds from the end of the asked event to the question:", ""]
        lines += markdown_table(age_head(ages), age_rows)
    return "\n".join(lines + extra)


@exits_2_on("qa_errors", ErrorsError)
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="a results.json (or .json.gz) of eval/run.py with per-question records")
    ap.add_argument("--scenes", help="scenes.jsonl (default: beside each dataset's manifest)")
    ap.add_argument("--confusion", action="store_true", help="reference x answer counts per row")
    ap.add_argument(
        "--ages", help="bin edges in seconds, e.g. 3,6,9,13: past colour by the asked event's age"
    )
    a = ap.parse_args(argv)
    print(report(a.results, a.scenes, a.confusion, parse_ages(a.ages) if a.ages else ()))


if __name__ == "__main__":
    sys.exit(main())
