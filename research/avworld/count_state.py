"""Where along the model is a long count still exact? Fit a linear read-out of every event label's
running count (the count head's targets) to each stage the count passes on its way to the heads, and
score it per bin of stream age on streams the read-out was not fitted on:

    python research/avworld/count_state.py MODEL MANIFEST [--bin 60] [--streams N]

Stages, read at every tick's summary position (the token the heads and the answers are read from):

- ``state L<i>``: the recurrent state of SSM layer i after that token (heads x headdim x d_state),
  before any norm; ``best head L<i>``: the one head of that layer whose state reads best;
- ``mixer L<i>``: that layer's output after its gated RMS norm, before its out-projection;
- ``residual L<i>``: the residual stream after block i (what the next block's pre-norm divides);
- ``final norm``: what the heads and the LM read (the count head is one such read-out).

Then the SSM heads slow enough to hold a count (time constant of a minute or more): where their
writes come from, as shares of the summed input gain γ over video, audio and text tokens. A counter
written only by the tokens that mark an occurrence would take none from the others.

Each read-out is ridge regression on standardised features, fitted on three of four folds of the
streams and scored on the fourth (every stream scored once, by a read-out that never saw it), the
ridge strength the one of a small grid with the lowest mean absolute error over all folds (the same
for every fold). A stage whose read-out is exact where the
count head is not holds the count the head misses; the first stage where it stops being exact is
where the count is lost. Needs at least 2 streams. Exit status 2 with a message naming what is
wrong: a missing file, too few streams.
"""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import torch
from count_ages import age_rows, count_args  # beside this script
from probes import ProbeError

from ssm_mm.cli import exits_2_on
from ssm_mm.data.dataset import StreamDataset
from ssm_mm.data.interleave import AUDIO, TEXT, VIDEO, tick_event_counts
from ssm_mm.data.manifest import read_manifest
from ssm_mm.evaluation.report import markdown_table

RIDGE = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # x the number of fitted samples, on standardised features
MIN_TAU = 60.0  # the heads listed: those that keep a write for a minute or more


@torch.no_grad()
def stages(model, ds: StreamDataset, i: int) -> dict[str, torch.Tensor]:
    """Every stage's features (n_ticks, D) at the tick summary positions of stream ``i``: the model's
    own forward, run piece by piece up to each summary token with the state carried (chunked == full),
    so the SSM states after each summary token can be read."""
    b = ds.collate([ds[i]])
    pos = b.summary_pos[0]
    bb = model.backbone
    state = model.init_state(1)
    gap, gap_same, _, _ = model._gaps(b.kind, b.t.double(), b.valid, state)
    x = model.embed(b.kind, b.src, b.video, b.audio) + model.time_emb(b.t.double(), gap, gap_same)
    dt = torch.where(torch.isinf(gap), torch.zeros_like(gap), gap).to(x.dtype)
    last: dict[str, torch.Tensor] = {}
    hooks = []
    for j, blk in enumerate(bb.blocks):
        hooks.append(
            blk.register_forward_hook(lambda m, a, out, j=j: last.update({f"residual L{j}": out[0][0, -1]}))
        )
        if blk.letter == "M":
            hooks.append(
                blk.mixer.norm.register_forward_hook(
                    lambda m, a, out, j=j: last.update({f"mixer L{j}": out[0, -1]})
                )
            )
    hooks.append(bb.norm_f.register_forward_hook(lambda m, a, out: last.update({"final norm": out[0, -1]})))
    rows: dict[str, list[torch.Tensor]] = {}
    s = state.backbone
    start = 0
    try:
        for p in pos.tolist():
            if p < start:  # a tick without media of its own: it reads what the last one read
                if not rows:
                    raise ProbeError(f"stream {i}: its first tick has no media token to read")
                for v in rows.values():
                    v.append(v[-1])
                continue
            _, s = bb(x[:, start : p + 1], dt[:, start : p + 1], s, b.valid[:, start : p + 1])
            start = p + 1
            feats = dict(last)
            for j, (blk, ls) in enumerate(zip(bb.blocks, s.layers)):
                if blk.letter == "M":
                    feats[f"state L{j}"] = ls.ssm[0].flatten(1)  # (H, P*N)
            for k, v in feats.items():
                rows.setdefault(k, []).append(v.float().clone())
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.stack(v) for k, v in rows.items()}


@torch.no_grad()
def head_writes(model, ds: StreamDataset, i: int) -> dict[int, dict[str, torch.Tensor]]:
    """Per SSM layer j of stream ``i``'s forward: ``forget`` (H,) the summed −A·λ (log-decay) of each
    head, ``gain`` (H, 3) its summed write gain γ over the video / audio / text tokens, ``median`` (H, 3)
    the median γ per token of each kind, and ``seconds`` the stream's span."""
    from ssm_mm.layers.mamba2 import Mamba2Mixer

    b = ds.collate([ds[i]])
    seen: dict[int, tuple] = {}
    gates = Mamba2Mixer._gates

    def record(mixer, g, dt):
        log_decay, gain = gates(mixer, g, dt)
        seen[id(mixer)] = (log_decay[0], gain[0])
        return log_decay, gain

    with mock.patch.object(Mamba2Mixer, "_gates", record):
        model.forward_batch(b)
    kind = b.kind[0][b.valid[0]]
    out = {}
    for j, blk in enumerate(model.backbone.blocks):
        if blk.letter != "M":
            continue
        log_decay, gain = (v[b.valid[0]].double() for v in seen[id(blk.mixer)])
        per_kind = [gain[kind == k] for k in (VIDEO, AUDIO, TEXT)]
        out[j] = {
            "forget": -log_decay.sum(0),
            "gain": torch.stack([g.sum(0) for g in per_kind], -1),
            "median": torch.stack(
                [g.median(0).values if len(g) else torch.zeros(gain.shape[1]) for g in per_kind], -1
            ),
            "seconds": torch.tensor(float(b.t[0][b.valid[0]].max() - b.t[0][b.valid[0]].min())),
        }
    return out


def head_rows(per_stream: list[dict[int, dict[str, torch.Tensor]]], min_tau: float) -> list[list[str]]:
    """One row per SSM head whose time constant (stream seconds / summed −A·λ) is at least ``min_tau``:
    its time constant, the share of its summed write gain from each token kind, the median gain per
    token of each kind (medians averaged over streams)."""
    rows = []
    for j in per_stream[0]:
        forget = sum(d[j]["forget"] for d in per_stream)
        gain = sum(d[j]["gain"] for d in per_stream)
        median = sum(d[j]["median"] for d in per_stream) / len(per_stream)
        seconds = sum(float(d[j]["seconds"]) for d in per_stream)
        for h in range(len(forget)):
            tau = seconds / max(float(forget[h]), 1e-12)
            if tau < min_tau:
                continue
            share = gain[h] / gain[h].sum().clamp_min(1e-12)
            rows.append(
                [f"L{j} head {h}", f"{tau:,.0f}"]
                + [f"{float(x):.0%}" for x in share]
                + [" / ".join(f"{float(x):.1e}" for x in median[h])]
            )
    return rows


def ridge_folds(
    xs: list[torch.Tensor], ys: list[torch.Tensor], lams=RIDGE, folds: int = 4
) -> dict[float, list[torch.Tensor]]:
    """Ridge predictions for every stream from a read-out fitted on the other folds' streams (streams
    dealt round-robin into ``folds`` folds), for each strength in ``lams`` (times the number of fitted
    samples, on standardised features): {lam: [predictions per stream]}."""
    folds = min(folds, len(xs))
    out: dict[float, list] = {lam: [None] * len(xs) for lam in lams}
    for f in range(folds):
        test = [k for k in range(len(xs)) if k % folds == f]
        x = torch.cat([a for j, a in enumerate(xs) if j % folds != f]).double()
        y = torch.cat([a for j, a in enumerate(ys) if j % folds != f]).double()
        mu, sd = x.mean(0), x.std(0).clamp_min(1e-8)
        ym = y.mean(0)
        xz, yc = (x - mu) / sd, y - ym
        n, d = xz.shape
        if d <= n:  # primal: (XᵀX + λn)⁻¹ Xᵀy through one eigendecomposition for every λ
            ev, q = torch.linalg.eigh(xz.T @ xz)
            qty = q.T @ (xz.T @ yc)
            ws = {lam: q @ (qty / (ev + lam * n).unsqueeze(-1)) for lam in lams}
        else:  # dual: Xᵀ(XXᵀ + λn)⁻¹ y
            ev, q = torch.linalg.eigh(xz @ xz.T)
            qty = q.T @ yc
            ws = {lam: xz.T @ (q @ (qty / (ev + lam * n).unsqueeze(-1))) for lam in lams}
        for k in test:
            xt = (xs[k].double() - mu) / sd
            for lam in lams:
                out[lam][k] = xt @ ws[lam] + ym
    return out


def best_readout(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> tuple[list[torch.Tensor], float, float]:
    """The held-out predictions at the ridge strength of ``RIDGE`` with the lowest mean absolute error,
    that strength and that error."""
    best = None
    for lam, pred in ridge_folds(xs, ys).items():
        mae = float(torch.cat([(p - y).abs().flatten() for p, y in zip(pred, ys)]).mean())
        if best is None or mae < best[2]:
            best = (pred, lam, mae)
    return best


def run(model_path: str, manifest: str, bin_s: float, streams: int | None) -> str:
    from count_probe import load_count_model, read_counts

    if not Path(manifest).is_file():
        raise ProbeError(f"{manifest}: no such manifest")
    model = load_count_model(model_path)
    specs = list(read_manifest(manifest).streams)[:streams]
    if len(specs) < 2:
        raise ProbeError(f"{manifest}: {len(specs)} stream(s); a read-out fitted on other streams needs >= 2")
    ds = StreamDataset(specs, model.features, model.tokenizer, model.labels)
    tau = model.features.tick_seconds
    feats, truth, head_vals, writes = [], [], [], []
    for i, spec in enumerate(specs):
        writes.append(head_writes(model, ds, i))
        f = stages(model, ds, i)
        n = next(iter(f.values())).shape[0]
        feats.append(f)
        truth.append(tick_event_counts(spec.segments, model.labels, n, tau, stream_id=spec.id).float())
        with torch.no_grad():  # the count head on the final-norm features the stages already read
            head_vals.append(read_counts(model, f["final norm"], raw=True))
    bins = [a for a, *_ in age_rows(truth, truth, tau, bin_s)]
    rows = [["count head"] + [""] + _cells(age_rows(head_vals, truth, tau, bin_s))]
    order = [k for k in feats[0] if k.startswith("state")] + [
        k for k in feats[0] if not k.startswith("state")
    ]
    for key in order:
        xs = [f[key] for f in feats]
        if xs[0].dim() == 3:  # an SSM state: every head together, then the best head alone
            pred, lam, _ = best_readout([x.flatten(1) for x in xs], truth)
            rows.append([key, f"{lam:g}"] + _cells(age_rows(pred, truth, tau, bin_s)))
            per_head = [(*best_readout([x[:, h] for x in xs], truth), h) for h in range(xs[0].shape[1])]
            p, lam_h, _, h = min(per_head, key=lambda r: r[2])
            rows.append(
                [f"best head {key.split()[1]} (head {h})", f"{lam_h:g}"]
                + _cells(age_rows(p, truth, tau, bin_s))
            )
        else:
            pred, lam, _ = best_readout(xs, truth)
            rows.append([key, f"{lam:g}"] + _cells(age_rows(pred, truth, tau, bin_s)))
    cols = ["stage", "ridge"] + [f"{a:.0f}-{a + bin_s:.0f} s" for a in bins]
    lines = [
        f"{model_path} on {len(specs)} streams of {manifest}: a linear read-out of every label's running "
        "count per stage, fitted on the other streams; per age bin: exact (rounded) / mean absolute error",
        "",
    ]
    lines += markdown_table(cols, rows)
    lines += [
        "",
        f"SSM heads that keep a write for at least {MIN_TAU:.0f} s (time constant = stream seconds / summed "
        "−A·λ): where their writes come from (share of the summed gain γ) and the median γ per token",
        "",
    ]
    lines += markdown_table(
        ["head", "time constant (s)", "video", "audio", "text", "median γ video / audio / text"],
        head_rows(writes, MIN_TAU),
    )
    return "\n".join(lines)


def _cells(rows) -> list[str]:
    return [f"{ex:.0%} / {ae:.2f}" for _, _, ex, _, ae, _, _ in rows]


@exits_2_on("count_state", ProbeError, FileNotFoundError)
def main(argv: list[str] | None = None) -> None:
    a = count_args(__doc__, argv, min_streams=2)
    print(run(a.model, a.manifest, a.bin, a.streams))


if __name__ == "__main__":
    sys.exit(main())
