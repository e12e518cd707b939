"""What changes when a stream outlasts the training streams: the per-question and per-response records
of a result file (typically the ``length`` sweep, ``eval.sweeps.length=[1,10]``) split by whether they
lie inside what training showed.

    python eval/long_streams.py results/avworld/compare_1h_length/results.json.gz --max-count 5
    python eval/long_streams.py runs/X/results.json --train-manifest cache/avworld/KEY/manifest.jsonl

One row per (model, dataset):

* count questions whose answer is at most the largest count answer of training (``--max-count N``,
  or read off a training manifest's dialogue with ``--train-manifest``), and those above it: numbers
  the model never produced as an answer in training;
* every other question type (all of them but count and the "ok" acknowledging a proactive request);
* proactive recall of the reference responses before and after ``--horizon`` seconds of stream time
  (default 30: AVWorld's training streams are 30 s long, so a state past it is one training never
  reached).

Exit status 2 with a message naming what is wrong (unreadable file, no per-question records, a count
reference that is not a number, no way to know the training range).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ssm_mm.cli import exits_2_on
from ssm_mm.evaluation.report import fraction_cell, read_json

COLUMNS = ("count_in", "count_out", "other", "recall_before", "recall_after")  # the table's, in order


class LongStreamsError(ValueError):
    pass


def max_count_of(manifest: str | Path) -> int:
    """The largest answer to a count question in a §4 manifest's dialogue."""
    path = Path(manifest)
    if not path.is_file():
        raise LongStreamsError(f"{path}: no such training manifest")
    best = None
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                turns = json.loads(line)["dialogue"]
                for q, a in zip(turns, turns[1:]):
                    if q.get("role") == "user" and q.get("type") == "count":
                        n = int(a["text"])
                        best = n if best is None else max(best, n)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise LongStreamsError(f"{path}:{i}: not a manifest record with a dialogue ({e})") from None
    if best is None:
        raise LongStreamsError(f"{path}: no count questions in its dialogue")
    return best


def analyse(result: dict, max_count: int, horizon: float) -> dict[str, tuple[int, int]]:
    """{column: (right, total)} for one (model, dataset) result."""
    cols = {k: [0, 0] for k in COLUMNS}
    streams = result.get("streams") or []
    if not streams or all("qa" not in s for s in streams):
        raise LongStreamsError(f"{result.get('model')} on {result.get('dataset')}: no per-question records")
    for s in streams:
        for q in s.get("qa", []):
            if q["type"] == "count":
                try:
                    inside = int(q["reference"]) <= max_count
                except ValueError:
                    raise LongStreamsError(
                        f"stream {s.get('id')}: count reference {q['reference']!r} is not a number"
                    ) from None
                col = "count_in" if inside else "count_out"
            elif q["type"] == "proactive":
                continue
            else:
                col = "other"
            cols[col][0] += bool(q["correct"])
            cols[col][1] += 1
        for ref in s.get("references", []):
            col = "recall_before" if ref["t"] < horizon else "recall_after"
            cols[col][0] += bool(ref["matched"])
            cols[col][1] += 1
    return {k: (v[0], v[1]) for k, v in cols.items()}


def report(path: str, max_count: int, horizon: float = 30.0) -> str:
    try:
        res = read_json(path)
    except ValueError as e:
        raise LongStreamsError(str(e)) from None
    results = res["results"]
    if not results:
        raise LongStreamsError(f"{path}: its results list is empty")
    lines = [
        f"| run | count ≤ {max_count} | count > {max_count} | other questions | "
        f"proactive recall, t < {horizon:g} s | proactive recall, t ≥ {horizon:g} s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        try:
            c = analyse(r, max_count, horizon)
        except (KeyError, TypeError, AttributeError) as e:
            raise LongStreamsError(f"{path}: a malformed record ({type(e).__name__}: {e})") from None
        cells = [fraction_cell(*c[k]) for k in COLUMNS]
        lines.append(f"| {r['model']} · {r['dataset']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@exits_2_on("long_streams", LongStreamsError)
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="a results.json (or .json.gz) of eval/run.py with per-question records")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--max-count", type=int, help="the largest count answer training showed")
    src.add_argument("--train-manifest", help="read that largest count answer off this training manifest")
    ap.add_argument(
        "--horizon", type=float, default=30.0, help="stream seconds training reached (default 30)"
    )
    args = ap.parse_args(argv)
    if args.horizon <= 0:
        raise LongStreamsError(f"--horizon must be positive, got {args.horizon:g}")
    max_count = args.max_count if args.max_count is not None else max_count_of(args.train_manifest)
    print(report(args.results, max_count, args.horizon))


if __name__ == "__main__":
    sys.exit(main())
