"""Reports of the streaming evaluation: the terminal table, ``results.json`` and PNG plots.

``results.json`` (schema ``"ssm_mm.eval/1"``; every NaN is written as ``null``)::

    {
      "schema": "ssm_mm.eval/1",
      "created": "2025-01-01T12:00:00+0000",
      "options": {"tolerance", "max_answer_tokens", "speak_threshold", "span_seconds",
                  "batch_streams", "threads", "age_bin"},
      "models":   {NAME: {"path", "parameters", "pattern", "d_model", "labels", "fps", "tick_seconds"}},
      "datasets": {NAME: {"manifest", "streams", "knob", "value",         # knob/value: sweep points
                          "length", "seconds",     # multiple of T (null: not in a length group), T
                          "pieces": [[ID, ...] per stream] | null,    # streams joined end to end
                          "skipped": [{"line", "id", "reason"}, ...]}},   # bad streams left out
      "results": [                                                         # one per (model, dataset)
        {"model": NAME, "dataset": NAME, "knob": str|null, "value": float|null, "length": float|null,
         "metrics": {
           "n_streams": int,
           "events": {"tick_accuracy", "macro_f1", "majority_rate", "n_ticks", "missing_ticks",
                      "span_seconds", "span_accuracy", "span_macro_f1", "span_majority_rate", "n_spans",
                      "per_class": {LABEL: {"precision", "recall", "f1", "support"}}},
           "qa": {"accuracy", "n", "late", "per_type": {TYPE: {"accuracy", "n"}}},
           "proactive": {"precision", "recall", "f1", "tp", "fp", "fn", "n_references", "n_responses",
                         "mean_delay", "p90_delay", "mean_abs_delay", "text_accuracy", "tolerance"},
           "speed": {"rtf", "throughput_rtf", "stream_seconds", "wall_seconds", "decode_seconds",
                     "batch_streams", "threads",
                     "tick_latency": {"mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", "n"},
                     "ask_latency": {...same...}},
           "unknown_labels": [LABEL, ...],
           "by_age": {"bin_seconds", "start": [s per bin],                # media time of each bin
                      "tick_accuracy", "n_ticks", "qa_accuracy", "n_qa", "proactive_recall",
                      "n_references": [value per bin],
                      "qa_per_type": {TYPE: [accuracy per bin]}}},
         "streams": [{"id", "n_ticks", "ticks", "missing_ticks", "tick_accuracy", "rtf",
                      "true": [int per tick], "pred": [int per tick, -1 = no prediction],
                      "qa": [{"t", "question", "type", "reference", "answer", "correct", "asked_at", "late"}],
                      "answers": [{"t", "question", "type", "answer", "asked_at"}],   # every question
                      "responses": [{"t", "text", "score", "matched", "reference"}],
                      "references": [{"t", "text", "request_t", "matched", "delay", "response"}]}]}
      ],
      "sweeps": {KNOB: {"values": [...], "datasets": [NAME, ...],
                        "models": {NAME: {METRIC: [value per point]}}}},   # METRIC: see SWEEP_METRICS
      "lengths": {BASE: {"seconds": T, "multiples": [1, 10, ...], "datasets": [NAME per multiple],
                         "models": {NAME: {METRIC: [value per multiple],   # METRIC: LENGTH_METRICS
                                           "fraction": {METRIC: [value / value at 1 T]}}}}},
      "plots": ["timeline_<dataset>_<stream>.png", "sweep_<knob>.png", "compare_<dataset>.png",
                "qa_types_<dataset>.png", "age_<model>.png"]
    }

Long streams (:mod:`ssm_mm.evaluation.long`): a length group is a base dataset (``length`` 1) and its
long versions ``<base>@<m>T``; ``by_age`` bins media time by ``bin_seconds`` (NaN/null: an empty bin).

Times in ``streams`` are media times (seconds from the stream's start); label indices refer to the
model's ``labels`` (``labels[0]`` = background), followed by any ``unknown_labels``.
"""

from __future__ import annotations

import gzip
import json
import math
import re
from pathlib import Path
from typing import Any

SCHEMA = "ssm_mm.eval/1"
# metric name in sweeps -> path into a result's metrics
SWEEP_METRICS: dict[str, tuple[str, ...]] = {
    "tick_accuracy": ("events", "tick_accuracy"),
    "span_accuracy": ("events", "span_accuracy"),
    "macro_f1": ("events", "macro_f1"),
    "qa_accuracy": ("qa", "accuracy"),
    "proactive_f1": ("proactive", "f1"),
    "rtf": ("speed", "rtf"),
}
_PLOTTED = ("tick_accuracy", "macro_f1", "qa_accuracy", "proactive_f1")


def format_lengths(lengths: dict) -> str:
    """The long-stream table: per base dataset and model, one row per multiple of T with its scores and
    each score as a fraction of the 1 T score (``results.json["lengths"]``); "" when no group has a
    multiple other than 1."""
    cols = [
        ("tick%", "tick_accuracy"),
        ("mF1%", "macro_f1"),
        ("QA%", "qa_accuracy"),
        ("QAm%", "qa_type_matched"),
    ]
    cols += [("proR%", "proactive_recall"), ("proF1%", "proactive_f1")]
    header = ["model", "data", "length", *(h for h, _ in cols), *(f"{h[:-1]} /1T" for h, _ in cols)]
    rows = [header]
    for g in lengths.values():
        if len(g["multiples"]) < 2:
            continue
        for model, series in g["models"].items():
            for j, (m, name) in enumerate(zip(g["multiples"], g["datasets"])):
                length = f"{m:g}T = {m * g['seconds']:g} s" if g["seconds"] else f"{m:g}T"
                rows.append(
                    [model, name, length]
                    + [_fmt(series[k][j]) for _, k in cols]
                    + [_fmt(series["fraction"][k][j], pct=False, digits=2) for _, k in cols]
                )
    if len(rows) == 1:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for j, row in enumerate(rows):
        lines.append(
            "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        )
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    legend = (
        "long streams: scores on streams m times the training length T; X /1T: the score as a fraction "
        "of the 1 T score (1.00 = kept); QAm%: QA with the 1 T mix of question types; proR%: proactive recall"
    )
    return "\n".join(lines) + "\n" + legend


def get(metrics: dict, path: tuple[str, ...]) -> float:
    x: Any = metrics
    for k in path:
        x = x[k]
    return float("nan") if x is None else float(x)


def headline(metrics: dict) -> dict[str, float]:
    """The numbers logged per dataset (wandb, summaries): flat ``name -> value``."""
    out = {
        "tick_accuracy": metrics["events"]["tick_accuracy"],
        "span_accuracy": metrics["events"]["span_accuracy"],
        "majority_rate": metrics["events"]["majority_rate"],
        "macro_f1": metrics["events"]["macro_f1"],
        "qa_accuracy": metrics["qa"]["accuracy"],
        "proactive_precision": metrics["proactive"]["precision"],
        "proactive_recall": metrics["proactive"]["recall"],
        "proactive_f1": metrics["proactive"]["f1"],
        "proactive_mean_delay": metrics["proactive"]["mean_delay"],
        "rtf": metrics["speed"]["rtf"],
        "tick_latency_p50_ms": metrics["speed"]["tick_latency"]["p50_ms"],
        "tick_latency_p99_ms": metrics["speed"]["tick_latency"]["p99_ms"],
    }
    for qtype, v in metrics["qa"]["per_type"].items():
        out[f"qa_accuracy/{qtype}"] = v["accuracy"]
    return {k: (float("nan") if v is None else float(v)) for k, v in out.items()}


# ------------------------------------------------------------------------------------------- JSON


def _clean(x: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, tuples -> lists, numpy / torch scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 0) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def read_json(path: str | Path) -> dict:
    """A results file written by :func:`write_json` (also gzip-compressed, ``.json.gz``, as large sweep
    results are committed). ValueError naming the file when it cannot be read or is not one."""
    p = Path(path)
    try:
        if p.suffix == ".gz":
            with gzip.open(p, "rt") as f:
                res = json.load(f)
        else:
            res = json.loads(p.read_text())
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: cannot read a results file ({e})") from None
    if not isinstance(res, dict) or not isinstance(res.get("results"), list):
        raise ValueError(f"{p}: not an evaluation results file (no 'results' list)")
    return res


def write_json(results: dict, path: str | Path) -> Path:
    """Write ``results`` as strict JSON (NaN -> null) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(results), indent=1, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------------ table


def _fmt(x: float | None, pct: bool = True, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.{digits}f}" if pct else f"{x:.{digits}f}"


def fraction_cell(right: int, total: int) -> str:
    """A table cell "p% (right/total)", or "–" when there is nothing to count."""
    return "–" if total == 0 else f"{100 * right / total:.1f}% ({right}/{total})"


def markdown_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table as lines: header, separator, one line per row of cells."""
    return [
        "| " + " | ".join(head) + " |",
        "|" + " --- |" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def format_table(results: list[dict]) -> str:
    """One row per (model, dataset): events, QA, proactive and speed headline numbers (percentages
    for scores, seconds for the delay, ms for latencies)."""
    header = [
        "model",
        "data",
        "n",
        "tick%",
        "sec%",
        "major%",
        "mF1%",
        "QA%",
        "(n)",
        "proP%",
        "proR%",
        "proF1%",
        "delay",
        "RTF",
        "p50ms",
        "p99ms",
    ]
    rows = [header]
    for r in results:
        m = r["metrics"]
        ev, qa, pro, sp = m["events"], m["qa"], m["proactive"], m["speed"]
        rows.append(
            [
                r["model"],
                r["dataset"],
                str(m["n_streams"]),
                _fmt(ev["tick_accuracy"]),
                _fmt(ev["span_accuracy"]),
                _fmt(ev["majority_rate"]),
                _fmt(ev["macro_f1"]),
                _fmt(qa["accuracy"]),
                str(qa["n"]),
                _fmt(pro["precision"]),
                _fmt(pro["recall"]),
                _fmt(pro["f1"]),
                _fmt(pro["mean_delay"], pct=False, digits=2),
                _fmt(sp["rtf"], pct=False),
                _fmt(sp["tick_latency"]["p50_ms"], pct=False),
                _fmt(sp["tick_latency"]["p99_ms"], pct=False),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for j, row in enumerate(rows):
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    legend = (
        "tick% / sec%: label accuracy per tick / per span (AVE-style); major%: majority-class rate; mF1%: "
        "macro-F1 over event classes; QA%: exact match; pro*: proactive responses; delay: mean seconds "
        "after the reference; RTF: stream seconds per wall second per stream; p50/p99: tick latency"
    )
    return "\n".join(lines) + "\n" + legend


# ------------------------------------------------------------------------------------------ plots


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_") or "x"


def _colors(labels: list[str]) -> dict[int, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {i: cmap((i - 1) % 10) for i in range(1, len(labels))}


def _runs(ticks: list[int]) -> list[tuple[int, int, int]]:
    """(start, length, label) of maximal runs of equal labels."""
    out, start = [], 0
    for k in range(1, len(ticks) + 1):
        if k == len(ticks) or ticks[k] != ticks[start]:
            out.append((start, k - start, ticks[start]))
            start = k
    return out


def save_figure(fig, path: str | Path) -> Path:
    """Lay ``fig`` out tightly, write it to ``path`` (90 dpi, format from the suffix), close it
    (pyplot keeps every open figure alive); returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_timeline(
    path: str | Path,
    title: str,
    labels: list[str],
    tick_seconds: float,
    true: list[int],
    per_model: dict[str, dict],
    references: list[dict],
) -> Path:
    """A stream's timeline: true event labels, each model's predicted labels, its proactive responses
    (▼ matched, x unmatched), its answers (● right, ○ wrong), the proactive requests (▶) and the
    reference response times (▲). Hatched: ticks without a prediction.

    per_model: ``{name: {"pred": [int per tick], "responses": [...], "qa": [...], "tick_seconds"}}``
    (from the stream records of the ``results.json`` schema); ``true`` is on ``tick_seconds``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colors = _colors(labels)
    names = list(per_model)
    rows = ["truth"] + names
    duration = len(true) * tick_seconds
    fig, ax = plt.subplots(figsize=(12, 1.0 + 0.7 * len(rows)))
    for r, row in enumerate(rows):
        y = len(rows) - 1 - r
        ticks = true if row == "truth" else per_model[row]["pred"]
        tau = tick_seconds if row == "truth" else per_model[row].get("tick_seconds", tick_seconds)
        for start, n, lab in _runs(list(ticks)):
            span = [(start * tau, n * tau)]
            if lab > 0:
                ax.broken_barh(span, (y - 0.3, 0.6), color=colors[lab])
            elif lab < 0:  # no prediction
                ax.broken_barh(span, (y - 0.3, 0.6), facecolor="none", edgecolor="gray", hatch="//")
        if row == "truth":
            for ref in references:
                ax.plot(ref["t"], y + 0.38, marker="^", color="black", ms=7, ls="none")
            for t in sorted({ref["request_t"] for ref in references if ref["request_t"] is not None}):
                ax.plot(t, y + 0.38, marker=">", color="gray", ms=7, ls="none")
            continue
        for resp in per_model[row]["responses"]:
            ok = resp["matched"]
            ax.plot(resp["t"], y + 0.38, marker="v" if ok else "x", color="green" if ok else "red", ls="none")
        for q in per_model[row]["qa"]:
            t = q["asked_at"] if q["asked_at"] is not None else q["t"]
            if q["correct"]:
                ax.plot(t, y - 0.4, marker="o", color="green", ms=5, ls="none")
            else:
                ax.plot(t, y - 0.4, marker="o", mfc="none", mec="red", ms=5, ls="none")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(list(reversed(rows)))
    ax.set_xlim(0, max(duration, tick_seconds))
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("media time (s)")
    ax.set_title(title, fontsize=10)
    handles = [Patch(color=colors[i], label=labels[i]) for i in sorted(colors)]
    handles += [
        plt.Line2D([], [], marker=">", color="gray", ls="none", label="proactive request"),
        plt.Line2D([], [], marker="^", color="black", ls="none", label="reference response"),
        plt.Line2D([], [], marker="v", color="green", ls="none", label="response (matched)"),
        plt.Line2D([], [], marker="x", color="red", ls="none", label="response (unmatched)"),
        plt.Line2D([], [], marker="o", color="green", ls="none", label="answer right"),
        plt.Line2D([], [], marker="o", mfc="none", mec="red", ls="none", label="answer wrong"),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return save_figure(fig, path)


def plot_sweep(
    path: str | Path,
    knob: str,
    values: list[float],
    per_model: dict[str, dict],
    bands: dict[str, dict] | None = None,
    metrics: tuple[str, ...] = _PLOTTED,
) -> Path:
    """Metric vs. sweep value, one line per model (``per_model[name][metric]``: one value per point);
    ``bands[name][metric]``: optional (low, high) per point, drawn as a shaded band (e.g. the range
    over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.0), squeeze=False)
    axes = axes[0]
    x = list(range(len(values)))  # evenly spaced: knobs span very different scales (clock: 0 .. 1e6)
    nan = float("nan")
    for ax, metric in zip(axes, metrics):
        for name, series in per_model.items():
            y = [nan if v is None else v for v in series[metric]]
            line = ax.plot(x, y, marker="o", label=name)[0]
            band = (bands or {}).get(name, {}).get(metric)
            if band is not None:
                lo = [nan if b is None else b[0] for b in band]
                hi = [nan if b is None else b[1] for b in band]
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{v:g}" for v in values], fontsize=8)
        ax.set_xlabel(knob)
        ax.set_title(metric, fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return save_figure(fig, path)


def plot_age(path: str | Path, model: str, curves: dict[str, dict]) -> Path:
    """Accuracy by stream age for one model: tick accuracy, QA exact match and proactive recall per bin
    of media time, one line per dataset (``curves[name]``: a result's ``metrics["by_age"]``); when
    questions were asked, a last panel splits the QA of the longest dataset (most bins) by question
    type, one line each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("tick_accuracy", "tick accuracy"), ("qa_accuracy", "QA exact match")]
    panels.append(("proactive_recall", "proactive recall"))
    longest = max(curves, key=lambda n: len(curves[n]["start"]), default=None)
    per_type = (curves[longest].get("qa_per_type") or {}) if longest is not None else {}
    n_panels = len(panels) + bool(per_type)
    fig, axes = plt.subplots(1, n_panels, figsize=(3.6 * n_panels, 3.0), squeeze=False)
    nan = float("nan")

    def draw(ax, age, series, label):
        b = age["bin_seconds"]
        x = [s + b / 2 for s in age["start"]]
        ax.plot(x, [nan if v is None else v for v in series], marker="o", ms=3, label=label)

    for ax, (key, title) in zip(axes[0], panels):
        for name, age in curves.items():
            draw(ax, age, age[key], name)
        ax.set_title(title, fontsize=10)
    if per_type:
        ax = axes[0][-1]
        for qtype, series in per_type.items():
            draw(ax, curves[longest], series, qtype)
        ax.set_title(f"QA by type, {longest}", fontsize=8)
        ax.legend(fontsize=6)
    for ax in axes[0]:
        ax.set_xlabel("stream time (s)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{model}: accuracy by stream age", fontsize=10)
    return save_figure(fig, path)


def _grouped_bars(
    path: str | Path, groups: list[str], per_model: dict[str, list], title: str, ylabel: str | None = None
) -> Path:
    """Bars of ``per_model[name][j]`` (None / NaN drawn as 0) grouped by ``groups[j]``, one colour
    per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_model)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(2 + 1.5 * max(1, len(groups)), 3.2))
    for i, name in enumerate(names):
        ys = [0.0 if y is None or math.isnan(y) else y for y in per_model[name]]
        ax.bar([j + i * width for j in range(len(groups))], ys, width, label=name)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(groups))])
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylim(0, 1)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def plot_compare(path: str | Path, dataset: str, per_model: dict[str, dict[str, float]]) -> Path:
    """Grouped bars of the headline scores of several models on one dataset."""
    metrics = ["tick_accuracy", "span_accuracy", "macro_f1", "qa_accuracy", "proactive_f1"]
    values = {name: [h.get(m, float("nan")) for m in metrics] for name, h in per_model.items()}
    return _grouped_bars(path, metrics, values, f"models on {dataset}")


def plot_qa_types(path: str | Path, dataset: str, per_model: dict[str, dict[str, dict]]) -> Path:
    """Grouped bars of QA exact match per question type (``per_model[name]``: the metrics'
    ``qa.per_type``), with each type's item count under its name."""
    types = sorted({t for pt in per_model.values() for t in pt})
    values = {name: [pt.get(t, {}).get("accuracy") for t in types] for name, pt in per_model.items()}
    counts = [max((pt.get(t, {}).get("n", 0) for pt in per_model.values()), default=0) for t in types]
    groups = [f"{t}\n(n={n})" for t, n in zip(types, counts)]
    return _grouped_bars(path, groups, values, f"QA per question type on {dataset}", "exact match")


def safe_name(name: str) -> str:
    """A file-name-safe version of a dataset / stream name."""
    return _safe(name)
