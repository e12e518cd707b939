"""Linear probes on video patch tokens of AVWorld streams: how decodable is the colour and the kind
of the shape in a patch, from the video frontend's output and after every backbone block?

    python research/avworld/probe_patches.py MODEL --manifest DIR/manifest.jsonl --streams 24

The manifest must be an AVWorld one (``scenes.jsonl`` beside it says which shape sits in which
quadrant when). Each stream runs through the model offline from a fresh state; at every video patch
token whose quadrant holds a shape (away from its appearance / disappearance by ``margin``), the
residual stream is read at each depth. A softmax-regression probe per depth and target is trained on
the first ``train_share`` of the streams and scored on the rest (standardised features, Adam, a fixed
number of full-batch steps; seeded). Chance is 1/6 for both targets. Writes JSON with ``--out``.

Exit status 2 with a message on bad input (missing model or manifest, no scenes file, too few streams).
"""

from __future__ import annotations

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


def collect(model, manifest: Path, n_streams: int, margin: float = 0.05):
    """Features per depth (name -> (N, d)), colour / kind labels (N,), stream index (N,)."""
    from ssm_mm.data.dataset import StreamDataset
    from ssm_mm.data.interleave import VIDEO
    from ssm_mm.worlds.avworld import CLASSES, COLORS

    specs, scenes, scenes_path = avworld_streams(manifest, n_streams)
    colors, kinds = list(COLORS), [c.shape for c in CLASSES]
    ppf = model.features.patches_per_frame
    if ppf != 4:
        raise ProbeError(f"the probe maps patches to AVWorld quadrants: needs patches_per_frame 4, got {ppf}")
    ds = StreamDataset(specs, model.features, model.tokenizer, model.labels, window_seconds=None)
    feats: dict[str, list] = {}
    ycol, ykind, sid = [], [], []
    with block_outputs(model, frontend=True) as depth:
        for i in range(len(ds)):
            shapes = scenes.get(specs[i].id)
            if shapes is None:
                raise ProbeError(f"stream {specs[i].id!r} is not in {scenes_path}")
            b = ds.collate([ds[i]])
            with torch.no_grad():
                model.forward_batch(b)
            pos = (b.kind[0] == VIDEO).nonzero().flatten()
            for p in pos.tolist():
                src, t = int(b.src[0, p]), float(b.t[0, p]) - float(specs[i].t0)
                frame, quadrant = divmod(src, ppf)
                hit = [
                    s
                    for s in shapes["shapes"]
                    if s["quadrant"] == quadrant and s["start"] + margin < t < s["end"] - margin
                ]
                if not hit:
                    continue
                for name, h in depth.items():
                    row = h[frame, quadrant] if name == "frontend" else h[0, p]
                    feats.setdefault(name, []).append(row)
                ycol.append(colors.index(hit[0]["color"]))
                ykind.append(kinds.index(hit[0]["kind"]))
                sid.append(i)
    if not ycol:
        raise ProbeError(f"{manifest}: no patch token holds a shape in the first {n_streams} streams")
    order = ["frontend"] + [k for k in feats if k != "frontend"]
    return (
        {k: torch.stack(feats[k]) for k in order},
        torch.tensor(ycol),
        torch.tensor(ykind),
        torch.tensor(sid),
    )


def probe(x, y, train, n_classes: int, steps: int = 400, seed: int = 0) -> float:
    """Held-out accuracy of a softmax-regression probe trained on the rows ``train`` (bool mask)."""
    return float((linear_probe(x, y, train, n_classes, steps, seed) == y[~train]).float().mean())


def main(argv: list[str] | None = None) -> dict:
    a = probe_parser(__doc__, streams=24, steps=400).parse_args(argv)
    model, manifest = load_probe_inputs(a)
    feats, ycol, ykind, sid = collect(model, manifest, a.streams)
    n = int(sid.max()) + 1
    cut = train_cut(n, a.train_share)
    train = sid < cut
    rows = {
        name: {
            "colour": probe(x, ycol, train, 6, a.steps),
            "kind": probe(x, ykind, train, 6, a.steps),
        }
        for name, x in feats.items()
    }
    res = {
        "model": a.model,
        "manifest": str(manifest),
        "streams": n,
        "train_streams": cut,
        "tokens": int(len(sid)),
        "test_tokens": int((~train).sum()),
        "chance": 1 / 6,
        "accuracy": rows,
    }
    for name, r in rows.items():
        print(f"{name:12s} colour {r['colour']:.3f}  kind {r['kind']:.3f}")
    if a.out:
        write_json(res, a.out)
    return res


if __name__ == "__main__":
    run_probe_script(main, "probe_patches")
