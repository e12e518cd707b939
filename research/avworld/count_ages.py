"""How exact is the count head as a stream ages? Read a model's count head (``objectives.count``, either
form) over whole streams of a manifest and score it per bin of stream age against the running counts
of the streams' segments (the head's own targets), and per occurrence: how far its count moves across
one segment of a label (exactly 1 for a clean counter).

    python research/avworld/count_ages.py MODEL MANIFEST [--bin 60] [--streams N]

Per age bin: exact share (the head's count, i.e. its argmax class or its regressed count rounded),
the mean signed error (below 0: the count leaks or saturates; above: it overcounts) and the mean
absolute error of its value (the regressed count itself, unrounded), the share within ±1, the mean
true count. Per occurrence: the value one tick after a segment ends minus one tick before it begins,
for segments with no other occurrence of their label in that span, as mean ± sd (sd is how noisy each
step of the counter is) overall and by the age at which the segment begins. Then where the error
comes from (:func:`error_sources`, counts of 5 or more): a scale that multiplies every label's count at
once (the relative errors of two labels at one tick correlate, and follow the RMS of the residual
stream that the final norm divides by) or a walk of each counter (errors that persist while the count
stands still, and little jitter from tick to tick). Exit status 2 with a message naming what is wrong:
a missing file, a model without a count head.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from count_probe import load_count_model, model_counts  # beside this script
from probes import ProbeError

from ssm_mm.cli import exits_2_on
from ssm_mm.data.dataset import StreamDataset
from ssm_mm.data.manifest import StreamSpec, read_manifest
from ssm_mm.evaluation.report import markdown_table


def age_rows(
    values: Sequence[torch.Tensor], truth: Sequence[torch.Tensor], tick_seconds: float, bin_s: float
):
    """Per age bin ``[a, a + bin_s)`` (by tick end): (age, n, exact, mean error, MAE, within 1, mean
    count) over every (tick, label) of the streams; ``values`` / ``truth``: (n_ticks, C) per stream."""
    acc: dict[int, list[float]] = {}
    for v, t in zip(values, truth):
        n = min(len(v), len(t))
        v, t = v[:n].double(), t[:n].double()
        err = v - t
        exact = (v.round() == t).double()
        age = ((torch.arange(n, dtype=torch.float64) + 1) * tick_seconds - 1e-9) // bin_s
        for a in age.unique().tolist():
            s = age == a
            e = err[s]
            part = [
                e.numel(),
                exact[s].sum(),
                e.sum(),
                e.abs().sum(),
                (e.abs() <= 1.5).double().sum(),
                t[s].sum(),
            ]
            tot = acc.setdefault(int(a), [0.0] * 6)
            for j, x in enumerate(part):
                tot[j] += float(x)
    rows = []
    for a in sorted(acc):
        n, ex, e, ae, w1, c = acc[a]
        rows.append((a * bin_s, int(n), ex / n, e / n, ae / n, w1 / n, c / n))
    return rows


def increments(value: torch.Tensor, spec: StreamSpec, labels: list[str], tick_seconds: float):
    """(start time, how far ``value`` (n_ticks, C) moves across the segment) for each segment of
    ``spec`` whose span, one tick either side, holds no other start of its label."""
    out = []
    n = value.shape[0]
    starts: dict[str, list[float]] = {}
    for seg in spec.segments:
        starts.setdefault(seg.label, []).append(seg.start)
    for seg in spec.segments:
        if seg.label not in labels[1:]:
            continue
        k0 = int(seg.start / tick_seconds) - 1  # the tick before the one the segment begins in
        k1 = int(math.ceil(seg.end / tick_seconds))  # the tick after the one it ends in
        if k0 < 0 or k1 >= n:
            continue
        lo, hi = k0 * tick_seconds, (k1 + 1) * tick_seconds
        if sum(lo <= s < hi for s in starts[seg.label]) != 1:
            continue
        c = labels.index(seg.label) - 1
        out.append((seg.start, float(value[k1, c] - value[k0, c])))
    return out


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() < 3 or float(a.std()) == 0 or float(b.std()) == 0:
        return float("nan")
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


def error_sources(
    values: Sequence[torch.Tensor],
    truth: Sequence[torch.Tensor],
    scale: Sequence[torch.Tensor],
    min_count: int = 5,
    lag: int = 10,
) -> dict[str, float]:
    """Statistics of the count's error over (tick, label)s with a true count >= ``min_count``.
    ``values`` / ``truth``: (n_ticks, C) per stream; ``scale``: (n_ticks,) per stream, the RMS that the
    final norm divides the residual stream by at each tick.

    relative_sd:         sd of value / count;
    label_corr:          mean over label pairs of the correlation of value / count at the same tick
                         (near 1: one factor scales every count at once);
    scale_corr:          correlation of log(value / count) with log(scale);
    jitter_sd:           sd of the change of value from one tick to the next while the count stands;
    error_sd:            sd of value - count;
    persistence:         correlation of the error with the error ``lag`` ticks later, same count."""
    rel, sc, jit, err, now, later = [], [], [], [], [], []
    for v, t, s in zip(values, truth, scale):
        n = min(len(v), len(t), len(s))
        v, t, s = v[:n].double(), t[:n].double(), s[:n].double()
        big = t >= min_count
        rel.append(torch.where(big, v / t.clamp(min=1), torch.nan))
        sc.append(s.unsqueeze(-1).expand_as(v))
        still = (t[1:] == t[:-1]) & big[1:]
        jit.append((v[1:] - v[:-1])[still])
        err.append((v - t)[big])
        if n > lag:
            same = (t[lag:] == t[:-lag]) & big[lag:]
            now.append((v - t)[:-lag][same])
            later.append((v - t)[lag:][same])
    r, s = torch.cat(rel), torch.cat(sc)
    ok = ~torch.isnan(r) & (r > 0)
    pairs = []
    for a in range(r.shape[1]):
        for b in range(a + 1, r.shape[1]):
            both = ~torch.isnan(r[:, a]) & ~torch.isnan(r[:, b])
            pairs.append(_corr(r[both, a], r[both, b]))
    pairs = [x for x in pairs if not math.isnan(x)]
    return {
        "relative_sd": float(r[~torch.isnan(r)].std()) if bool((~torch.isnan(r)).any()) else float("nan"),
        "label_corr": sum(pairs) / len(pairs) if pairs else float("nan"),
        "scale_corr": _corr(r[ok].log(), s[ok].log()),
        "jitter_sd": float(torch.cat(jit).std()) if sum(len(j) for j in jit) > 1 else float("nan"),
        "error_sd": float(torch.cat(err).std()) if sum(len(e) for e in err) > 1 else float("nan"),
        "persistence": _corr(torch.cat(now), torch.cat(later)) if now else float("nan"),
    }


def mean_sd(xs: list[float]) -> str:
    if not xs:
        return "–"
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))
    return f"{m:.2f} ± {sd:.2f} ({len(xs)})"


def run(model_path: str, manifest: str, bin_s: float, streams: int | None) -> str:
    from ssm_mm.data.interleave import tick_event_counts

    if not Path(manifest).is_file():
        raise ProbeError(f"{manifest}: no such manifest")
    model = load_count_model(model_path)
    man = read_manifest(manifest)
    specs = list(man.streams)[:streams]
    ds = StreamDataset(specs, model.features, model.tokenizer, model.labels)  # no training targets needed
    tau = model.features.tick_seconds
    scale: list[torch.Tensor] = []
    get = model_counts(model, raw=True, scales=scale)
    vals, truth, incs = [], [], []
    for i, spec in enumerate(specs):
        v = get(ds, i)
        vals.append(v)
        truth.append(tick_event_counts(spec.segments, model.labels, v.shape[0], tau, stream_id=spec.id))
        incs += increments(v, spec, model.labels, tau)
    head = ["age (s)", "(tick, label)s", "exact", "mean error", "MAE", "within ±1", "mean count"]
    table = [
        [f"{a:.0f}", str(n), f"{ex:.1%}", f"{e:+.2f}", f"{ae:.2f}", f"{w1:.1%}", f"{c:.1f}"]
        for a, n, ex, e, ae, w1, c in age_rows(vals, truth, tau, bin_s)
    ]
    by_age = [
        [f"{a:.0f}", mean_sd([d for s, d in incs if a <= s < a + bin_s])]
        for a in sorted({(s // bin_s) * bin_s for s, _ in incs})
    ]
    lines = [f"{model_path} on {len(specs)} streams of {manifest}: the count head by stream age", ""]
    lines += markdown_table(head, table)
    lines += [
        "",
        f"per occurrence, how far the count moves (1 = a clean counter): {mean_sd([d for _, d in incs])}",
        "",
    ]
    lines += markdown_table(["segment begins at (s)", "move across it"], by_age)
    if vals:
        src = error_sources(vals, truth, scale)
        lines += [
            "",
            "where the error comes from (counts >= 5): value / count sd {relative_sd:.3f}; its correlation "
            "between two labels at one tick {label_corr:.2f}, with the log RMS the final norm divides by "
            "{scale_corr:.2f}; error sd {error_sd:.2f}, tick-to-tick jitter sd {jitter_sd:.2f} while the "
            "count stands, error kept 10 ticks later (correlation) {persistence:.2f}".format(**src),
        ]
    return "\n".join(lines)


def count_args(doc: str, argv: list[str] | None, min_streams: int = 1) -> argparse.Namespace:
    """The arguments shared by the scripts that read a count head over a manifest's streams (MODEL
    MANIFEST [--bin S] [--streams N]), checked: :class:`ProbeError` on a bin or a stream count out of
    range."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a model folder, checkpoint or run folder trained with objectives.count")
    ap.add_argument("manifest", help="a manifest of streams with segments (e.g. long held-out streams)")
    ap.add_argument("--bin", type=float, default=60.0, help="seconds of stream age per bin (default 60)")
    ap.add_argument("--streams", type=int, help=f"only the first N streams (>= {min_streams})")
    a = ap.parse_args(argv)
    if not a.bin > 0:
        raise ProbeError(f"--bin {a.bin}: must be > 0 seconds")
    if a.streams is not None and a.streams < min_streams:
        raise ProbeError(f"--streams {a.streams}: must be >= {min_streams}")
    return a


@exits_2_on("count_ages", ProbeError, FileNotFoundError)
def main(argv: list[str] | None = None) -> None:
    a = count_args(__doc__, argv)
    print(run(a.model, a.manifest, a.bin, a.streams))


if __name__ == "__main__":
    sys.exit(main())
