"""Does the state hold what a past-colour question asks? Linear probes at every tick of AVWorld
streams, for three targets of rising difficulty:

* ``now``: the colour of a shape kind on screen at the tick's end (read the screen);
* ``last``: the last colour a shape kind showed, on screen or not (a memory of colours, no binding);
* ``bound``: the colour a shape kind had during the last audio-visual event of an event class, i.e.
  the answer to "what color was the <kind> when the <class> last <sounded>?" asked at the tick's end.

    python research/avworld/probe_binding.py MODEL --manifest DIR/manifest.jsonl --streams 64
    python research/avworld/probe_binding.py MODEL --manifest DIR/manifest.jsonl --state

Each stream runs through the model offline from a fresh state; at each tick's summary position (where
the event and count heads read, after the tick's last media token) the residual stream is read after
every block, and ``hidden`` is the final normalised state the heads read; with ``--state``, the
recurrent state of every Mamba layer after each tick instead (the stream fed tick by tick; H x P x N
numbers per layer, probed on their top ``--dims`` principal components over the training ticks, as
what a query could read from the state is linear in it). One softmax-regression probe
per kind (``now``, ``last``) or per (class, kind) pair (``bound``) is trained on the ticks of the first
``train_share`` of the streams and scored on the rest; accuracies pool the probes' test rows. Rows
exist only where the target does (the kind is on screen, has been seen, was visible throughout the
class's last event, with one colour). Beside each target: the majority rate (each probe's most
frequent training colour) and, for ``bound``, how often the ``last`` colour of the kind is the answer
(what a model without binding could score). Consecutive ticks share a target until it changes, so
test rows are not independent: ``bindings`` counts the distinct (stream, event, kind) answers.

Exit status 2 with a message on bad input (missing model or manifest, no scenes file, a bad share,
too few streams, a model whose labels are not AVWorld classes).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from probes import (
    ProbeError,
    avworld_streams,
    block_outputs,
    linear_probe,
    load_probe_inputs,
    probe_parser,
    run_probe_script,
    train_cut,
)

from ssm_mm.evaluation.report import write_json

TARGETS = ("now", "last", "bound")


def tick_targets(scene: dict, classes: list[str], n_ticks: int, tick_seconds: float) -> list[dict]:
    """Per tick k (media time ending at ``(k + 1) * tick_seconds``): ``{"now": {kind: colour},
    "last": {kind: colour}, "bound": {(class, kind): (colour, event index)}}``, entries only where the
    target is defined and has one colour (two shapes of a kind in different colours: left out)."""
    shapes, events = scene["shapes"], scene["events"]
    out = []
    for k in range(n_ticks):
        te = (k + 1) * tick_seconds
        now: dict[str, set] = {}
        for s in shapes:
            if s["start"] <= te < s["end"]:
                now.setdefault(s["kind"], set()).add(s["color"])
        last: dict[str, tuple] = {}
        for s in shapes:
            if s["start"] <= te and (s["kind"] not in last or s["start"] > last[s["kind"]][0]):
                last[s["kind"]] = (s["start"], s["color"])
        bound = {}
        for c in classes:
            done = [(e["start"], j) for j, e in enumerate(events) if e["cls"] == c and e["end"] <= te]
            if not done:
                continue
            j = max(done)[1]
            e = events[j]
            during: dict[str, set] = {}
            for s in shapes:
                if s["start"] <= e["start"] and s["end"] >= e["end"]:
                    during.setdefault(s["kind"], set()).add(s["color"])
            for kind, cols in during.items():
                if len(cols) == 1:
                    bound[(c, kind)] = (next(iter(cols)), j)
        out.append(
            {
                "now": {kd: next(iter(cs)) for kd, cs in now.items() if len(cs) == 1},
                "last": {kd: col for kd, (_, col) in last.items()},
                "bound": bound,
            }
        )
    return out


def tick_features(model, ds, i: int, state: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Features of every tick of stream ``i`` (name -> (K, d)) and which ticks have them (K,) bool.

    Residual stream (``state=False``): the output of every block and the final ``hidden`` at each
    tick's summary position, one offline forward over the stream. Recurrent state (``state=True``):
    each Mamba layer's SSM state (H x P x N, flattened) after the tick, the stream fed tick by tick
    with the state carried (``ds`` must window by one tick)."""
    from ssm_mm.state import SSMState

    if not state:
        b = ds.collate([ds[i]])
        with block_outputs(model) as depth, torch.no_grad():
            out = model.forward_batch(b)
            pos = b.summary_pos[0]
            have = pos >= 0
            idx = pos.clamp_min(0)
            feats = {name: h[0, idx] for name, h in depth.items()}
            feats["hidden"] = out.hidden[0, idx]
        return feats, have
    st, rows = None, []
    for w in ds.windows(i):
        with torch.no_grad():
            st = model.forward_batch(ds.collate([w]), st).state
        rows.append(st)
    feats = {
        f"ssm{j + 1}:{model.cfg.pattern[j]}": torch.stack(
            [r.backbone.layers[j].ssm[0].flatten() for r in rows]
        )
        for j, layer in enumerate(rows[0].backbone.layers)
        if isinstance(layer, SSMState)
    }
    return feats, torch.ones(len(rows), dtype=torch.bool)


def collect(model, manifest: Path, n_streams: int, state: bool = False):
    """Tick features (name -> (T, d), see :func:`tick_features`), the rows of each target (a list of
    (tick row, probe key, colour index, stream index, binding id, the kind's last colour is the
    answer) per target name) and the stream index of each tick row (T,)."""
    from ssm_mm.data.dataset import StreamDataset
    from ssm_mm.worlds.avworld import COLORS

    specs, scenes, scenes_path = avworld_streams(manifest, n_streams)
    classes = list(model.labels[1:])
    known = {e["cls"] for sc in scenes.values() for e in sc["events"]}
    if not classes or not set(classes) & known:
        raise ProbeError(
            f"the model's event labels {classes} name none of the dataset's classes {sorted(known)}"
        )
    colors = list(COLORS)
    tick = model.features.tick_seconds
    ds = StreamDataset(
        specs, model.features, model.tokenizer, model.labels, window_seconds=tick if state else None
    )
    feats: dict[str, list] = {}
    rows: dict[str, list] = {t: [] for t in TARGETS}
    tick_stream: list[int] = []  # the stream of each tick row; its length is the next row's index
    for i in range(len(specs)):
        scene = scenes.get(specs[i].id)
        if scene is None:
            raise ProbeError(f"stream {specs[i].id!r} is not in {scenes_path}")
        f, have = tick_features(model, ds, i, state)
        targets = tick_targets(scene, classes, len(have), tick)
        for k in have.nonzero().flatten().tolist():
            for name, x in f.items():
                feats.setdefault(name, []).append(x[k])
            tg = targets[k]
            row = len(tick_stream)
            for kind, col in tg["now"].items():
                rows["now"].append((row, kind, colors.index(col), i, None, None))
            for kind, col in tg["last"].items():
                rows["last"].append((row, kind, colors.index(col), i, None, None))
            for key, (col, j) in tg["bound"].items():
                hit = tg["last"].get(key[1]) == col
                rows["bound"].append((row, key, colors.index(col), i, (i, j, key[1]), hit))
            tick_stream.append(i)
    if not tick_stream:
        raise ProbeError(f"{manifest}: no tick in the first {n_streams} streams")
    return {k: torch.stack(v) for k, v in feats.items()}, rows, torch.tensor(tick_stream)


def reduce(x: torch.Tensor, train: torch.Tensor, dims: int, seed: int = 0) -> torch.Tensor:
    """``x`` (T, d) projected on the top ``dims`` principal components of its rows ``train`` (centred
    by their mean; randomized PCA, seeded; at most as many components as training rows); ``x``
    unchanged when ``d <= dims``."""
    if dims <= 0 or x.shape[1] <= dims:
        return x
    mu = x[train].mean(0)
    with torch.random.fork_rng():  # seeded without touching the caller's random state
        torch.manual_seed(seed)
        _, _, v = torch.pca_lowrank(x[train] - mu, q=min(dims, int(train.sum())), center=False)
    return (x - mu) @ v


def score(x: torch.Tensor, rows: list, cut: int, n_classes: int, steps: int, weight_decay: float) -> dict:
    """Pooled held-out accuracy of one probe per key over ``rows`` (tick row, key, class, stream, ...):
    streams below ``cut`` train, the others test; keys without training or test rows are skipped."""
    by_key: dict = {}
    for r in rows:
        by_key.setdefault(r[1], []).append(r)
    right = majority = n = 0
    for key in sorted(by_key, key=str):
        rs = by_key[key]
        idx = torch.tensor([r[0] for r in rs])
        y = torch.tensor([r[2] for r in rs])
        train = torch.tensor([r[3] < cut for r in rs])
        if not train.any() or train.all():
            continue
        pred = linear_probe(x[idx], y, train, n_classes, steps, weight_decay=weight_decay)
        right += int((pred == y[~train]).sum())
        top = Counter(y[train].tolist()).most_common(1)[0][0]
        majority += int((y[~train] == top).sum())
        n += int((~train).sum())
    nan = float("nan")
    return {"accuracy": right / n if n else nan, "majority": majority / n if n else nan, "test_rows": n}


def main(argv: list[str] | None = None) -> dict:
    ap = probe_parser(__doc__, streams=64, steps=300)
    ap.add_argument("--weight-decay", type=float, default=1e-3, help="L2 on the probe weights")
    ap.add_argument(
        "--state",
        action="store_true",
        help="probe each Mamba layer's recurrent state, not the residual stream",
    )
    ap.add_argument(
        "--dims",
        type=int,
        default=256,
        help="probe features wider than this on their top principal components (0: never)",
    )
    a = ap.parse_args(argv)
    from ssm_mm.worlds.avworld import COLORS

    model, manifest = load_probe_inputs(a)
    feats, rows, tick_stream = collect(model, manifest, a.streams, a.state)
    n = int(tick_stream.max()) + 1
    cut = train_cut(n, a.train_share)
    acc, dims = {}, {}
    for name, x in feats.items():
        x = reduce(x, tick_stream < cut, a.dims)
        dims[name] = int(x.shape[1])
        acc[name] = {t: score(x, rows[t], cut, len(COLORS), a.steps, a.weight_decay) for t in TARGETS}
    shortcut = [r[5] for r in rows["bound"] if r[3] >= cut]
    res = {
        "model": a.model,
        "manifest": str(manifest),
        "features": "recurrent state" if a.state else "residual stream",
        "streams": n,
        "train_streams": cut,
        "ticks": int(next(iter(feats.values())).shape[0]),
        "bindings": len({r[4] for r in rows["bound"]}),
        "test_bindings": len({r[4] for r in rows["bound"] if r[3] >= cut}),
        "bound_by_last_colour": sum(shortcut) / len(shortcut) if shortcut else float("nan"),
        "chance": 1 / len(COLORS),
        "dims": dims,
        "accuracy": acc,
    }
    print(f"{'depth':10s} " + "  ".join(f"{t:>18s}" for t in TARGETS) + "   (probe / majority)")
    for name, r in acc.items():
        cells = "  ".join(f"{r[t]['accuracy']:8.3f} / {r[t]['majority']:.3f}" for t in TARGETS)
        print(f"{name:10s} {cells}")
    print(
        f"bound: {res['test_bindings']} distinct test bindings, "
        f"{next(iter(acc.values()))['bound']['test_rows']} test ticks; "
        f"the kind's last colour answers {res['bound_by_last_colour']:.3f} of them"
    )
    if a.out:
        write_json(res, a.out)
    return res


if __name__ == "__main__":
    run_probe_script(main, "probe_binding")
