"""How far back do the recall heads remember? For a model trained with the recall-attribute head
(``objectives.attribute``) or the recall head (``objectives.recall``), read the head at every tick
of held-out streams for every event label that has happened, and score it by the seconds since that
label's last segment ended (the age of the memory asked for). A head that reads several attributes
is scored over all of them, each known (tick, label, attribute) one item.

    python research/avworld/recall_heads.py runs/avworld_1h_colour_recall/final --manifest VAL/manifest.jsonl
    python research/avworld/recall_heads.py MODEL --manifest M --ages 1,3,6,9,13 --out recall.json

Attribute head: accuracy per age bucket beside the bucket's majority rate (its most frequent value).
``--by-attribute`` adds a table per attribute name, its items split by whether they are about the
event's own shape (``color``, ``color_of_<its kind>``, ``shape_of_<its colour>``) or another shape on
screen throughout the event: whether the head binds the scene or only the shape that made the sound.
Recall head: squared error per value of the pooled frame, beside two floors measured on the same items:
predicting each label's mean frame, and the mean frame overall (a head that beats neither has
learned no more than the average look of each event). A model with both heads gets both tables.
Exit status 2 with a message naming what is wrong: a missing file, a model with neither head, a
manifest whose segments lack the head's attribute, bad ``--ages``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from probes import ProbeError

from ssm_mm.data.dataset import StreamDataset
from ssm_mm.data.interleave import missing_attributes, tick_last_segments
from ssm_mm.data.manifest import read_manifest
from ssm_mm.evaluation.report import fraction_cell, markdown_table, write_json
from ssm_mm.worlds.avworld import CLASSES


def parse_ages(text: str) -> list[float]:
    """Bucket edges in seconds from "1,3,6" (increasing, positive); buckets are [0, 1), ..., [6, inf)."""
    try:
        edges = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ProbeError(f"--ages {text!r}: not a comma-separated list of seconds") from None
    if not edges or edges[0] <= 0 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ProbeError(f"--ages {text!r}: seconds must be positive and increasing")
    return [0.0, *edges, float("inf")]


def bucket_names(edges: list[float]) -> list[str]:
    return [f"{a:g}–{b:g} s" if b != float("inf") else f"≥ {a:g} s" for a, b in zip(edges, edges[1:])]


@torch.no_grad()
def read_heads(model, ds: StreamDataset) -> dict[str, np.ndarray]:
    """Every (tick, label) item of ``ds`` whose label has happened, over whole streams: ``age`` (s since
    the label's last segment ended, at the tick's end), ``label``; with the attribute head, per item and
    attribute, ``value`` (target index, −1 unknown), ``pred`` and ``value_age`` (the item's age); with
    the recall head ``frame_pred`` and ``frame`` (3 N²)."""
    tau = ds.cfg.tick_seconds
    names = ("age", "label", "value", "pred", "value_age", "value_label", "value_name", "frame_pred", "frame")
    cols: dict[str, list] = {k: [] for k in names}
    for s in range(len(ds.streams)):
        if ds.windows_per_stream[s] != 1:
            raise ProbeError("the dataset must hold whole streams (window_seconds=None)")
        w = ds[ds.index(s, 0)]
        b = ds.collate([w])
        th = model.tick_hidden(model.forward_batch(b).hidden, b.summary_pos)[0]  # (K, d)
        spec = ds.streams[s]
        last = tick_last_segments(spec.segments, model.labels, w.tick_end, tau, spec.id)  # (K, C)
        ends = np.array([float(g.end) for g in spec.segments] + [np.nan])[last]
        age = (np.arange(w.tick_end)[:, None] + 1.0) * tau - ends
        item = (last >= 0) & b.tick_valid[0, :, None].numpy()  # (K, C)
        cols["age"].append(age[item])
        cols["label"].append(np.nonzero(item)[1])
        if "attribute" in model.heads:
            value = b.targets["attribute"]
            logits = model.objectives["attribute"].logits(model.heads["attribute"], th)
            cols["value"].append(value[0].numpy()[item].reshape(-1))  # (n, A) -> n A
            cols["pred"].append(logits.argmax(-1).numpy()[item].reshape(-1))
            cols["value_age"].append(np.repeat(age[item], value.shape[-1]))
            cols["value_label"].append(np.repeat(np.nonzero(item)[1], value.shape[-1]))
            cols["value_name"].append(np.tile(np.arange(value.shape[-1]), int(item.sum())))
        if "recall" in model.heads:
            recall = model.objectives["recall"]
            idx = torch.from_numpy(w.targets["recall"].numpy()[item])
            known = idx >= 0
            if not bool(known.all()):
                raise ProbeError(f"stream {spec.id}: no video frame to recall (the recall head needs video)")
            if len(idx):
                cols["frame_pred"].append(
                    recall.logits(model.heads["recall"], th)[torch.from_numpy(item)].numpy()
                )
                cols["frame"].append(recall.targets_of(w.targets["recall_frames"])[idx].numpy())
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}


def attribute_rows(items: dict[str, np.ndarray], edges: list[float]) -> list[dict]:
    """Per age bucket: items with a known value, head right, and the bucket's majority count."""
    rows = []
    known = items["value"] >= 0
    for name, lo, hi in zip(bucket_names(edges), edges, edges[1:]):
        m = known & (items["value_age"] >= lo) & (items["value_age"] < hi)
        v = items["value"][m]
        rows.append(
            {
                "age": name,
                "n": int(m.sum()),
                "right": int((items["pred"][m] == v).sum()),
                "majority": int(np.bincount(v).max()) if len(v) else 0,
            }
        )
    return rows


OWN_SHAPE = {c.name: c.shape for c in CLASSES}  # AVWorld: class c's sound and its shape kind
SCENE_PREFIXES = ("color_of_", "shape_of_")  # the attributes about one shape of the scene


def own_shape_items(
    items: dict[str, np.ndarray], names: list[str], values: list[str], labels: list[str]
) -> np.ndarray:
    """Per attribute item: is it about the event's own shape (``color`` always; ``color_of_<kind>``
    when the kind is the class's; ``shape_of_<colour>`` when its value is) rather than another shape
    on screen throughout the event. An item's label indexes the event classes (``labels[1:]``)."""
    events = labels[1:]
    kind = np.array([OWN_SHAPE.get(events[c], "") for c in items["value_label"]], dtype=object)
    value = np.array(values, dtype=object)[np.maximum(items["value"], 0)]  # unknown (-1): any, unused
    own = np.ones(len(kind), dtype=bool)
    for a, name in enumerate(names):
        m = items["value_name"] == a
        if name.startswith("color_of_"):
            own[m] = kind[m] == name.removeprefix("color_of_")
        elif name.startswith("shape_of_"):
            own[m] = kind[m] == value[m]
    return own


def _own_other(items: dict[str, np.ndarray], own: np.ndarray, m: np.ndarray) -> dict[str, int]:
    """Known items of mask ``m``: how many about the own shape / another, and how many the head got right."""
    m = m & (items["value"] >= 0)
    right = items["pred"] == items["value"]
    return {
        "own": int((m & own).sum()),
        "own_right": int((m & own & right).sum()),
        "other": int((m & ~own).sum()),
        "other_right": int((m & ~own & right).sum()),
    }


def attribute_name_rows(items: dict[str, np.ndarray], own: np.ndarray, names: list[str]) -> list[dict]:
    """Per attribute name: its known items and head right, the own shape's and another's
    (``own``: :func:`own_shape_items`)."""
    return [{"name": n, **_own_other(items, own, items["value_name"] == a)} for a, n in enumerate(names)]


def scene_age_rows(
    items: dict[str, np.ndarray], own: np.ndarray, names: list[str], edges: list[float]
) -> list[dict]:
    """Per age bucket: the same over the attributes about one shape of the scene (``color_of_*``,
    ``shape_of_*``) together."""
    scene = np.isin(items["value_name"], [a for a, n in enumerate(names) if n.startswith(SCENE_PREFIXES)])
    rows = []
    for name, lo, hi in zip(bucket_names(edges), edges, edges[1:]):
        m = scene & (items["value_age"] >= lo) & (items["value_age"] < hi)
        rows.append({"age": name, **_own_other(items, own, m)})
    return rows


def own_other_table(rows: list[dict], key: str, title: str) -> str:
    """Markdown of :func:`attribute_name_rows` / :func:`scene_age_rows` rows: ``key``, own, another."""
    cells = [
        [r[key], fraction_cell(r["own_right"], r["own"]), fraction_cell(r["other_right"], r["other"])]
        for r in rows
    ]
    return "\n".join(markdown_table([title, "own shape", "another shape"], cells))


def recall_rows(items: dict[str, np.ndarray], edges: list[float]) -> list[dict]:
    """Per age bucket: the head's squared error per value and the two floors (label mean, overall mean)."""
    frame, pred, label = items["frame"], items["frame_pred"], items["label"]
    label_mean = np.zeros_like(frame)
    for c in np.unique(label):
        label_mean[label == c] = frame[label == c].mean(0)
    err = {
        "head": ((pred - frame) ** 2).mean(-1),
        "label_mean": ((label_mean - frame) ** 2).mean(-1),
        "overall_mean": ((frame.mean(0) - frame) ** 2).mean(-1),
    }
    rows = []
    for name, lo, hi in zip(bucket_names(edges), edges, edges[1:]):
        m = (items["age"] >= lo) & (items["age"] < hi)
        rows.append(
            {
                "age": name,
                "n": int(m.sum()),
                **{k: float(e[m].mean()) if m.any() else None for k, e in err.items()},
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "model", help="a saved model (folder or checkpoint) with a recall or recall-attribute head"
    )
    p.add_argument("--manifest", required=True, help="held-out streams (SPEC §4 manifest)")
    p.add_argument("--ages", default="1,3,6,9,13", help="age bucket edges in seconds (default 1,3,6,9,13)")
    p.add_argument("--streams", type=int, default=64, help="the first N streams of the manifest (default 64)")
    p.add_argument("--out", help="write the tables as JSON here")
    p.add_argument(
        "--by-attribute",
        action="store_true",
        help="the attribute head per attribute name: items about the event's own shape and another",
    )
    a = p.parse_args(argv)
    try:
        from ssm_mm.models.multimodal import MultimodalSSM

        edges = parse_ages(a.ages)
        manifest = Path(a.manifest)
        if not manifest.is_file():
            raise ProbeError(f"--manifest {manifest}: no such file")
        if a.streams < 1:
            raise ProbeError(f"--streams must be >= 1, got {a.streams}")
        model = MultimodalSSM.from_pretrained(a.model).eval()
        if "attribute" not in model.heads and "recall" not in model.heads:
            raise ProbeError(
                f"{a.model}: the model has neither a recall head (objectives.recall) nor an attribute "
                "head (objectives.attribute)"
            )
        streams = read_manifest(manifest).streams[: a.streams]
        attrs = model.objectives["attribute"].cfg.names if "attribute" in model.heads else []
        missing = missing_attributes(streams, attrs)
        if missing:
            raise ProbeError(f"{manifest}: no segment has the attribute(s) {missing} the model's head reads")
        ds = StreamDataset(
            streams,
            model.features,
            model.tokenizer,
            model.labels,
            objectives=model.objectives,
        )
        items = read_heads(model, ds)
    except (ProbeError, OSError, ValueError) as e:
        print(f"recall_heads.py: {e}", file=sys.stderr)
        return 2
    out: dict = {"model": str(a.model), "manifest": str(manifest), "streams": len(streams)}
    if "attribute" in model.heads:
        rows = attribute_rows(items, edges)
        values = list(model.objectives["attribute"].cfg.values)
        out["attribute"] = {"names": attrs, "values": values, "rows": rows}
        print(f"attribute head ({', '.join(attrs)}), by seconds since the label's last segment ended:")
        cells = [
            [r["age"], fraction_cell(r["right"], r["n"]), fraction_cell(r["majority"], r["n"])] for r in rows
        ]
        print("\n".join(markdown_table(["age", "head right", "majority value"], cells)))
        if a.by_attribute:
            own = own_shape_items(items, list(attrs), values, list(model.labels))
            by_name = attribute_name_rows(items, own, list(attrs))
            out["attribute"]["by_name"] = by_name
            print("attribute head per attribute, the event's own shape or another on screen throughout it:")
            print(own_other_table(by_name, "name", "attribute"))
            by_age = scene_age_rows(items, own, list(attrs), edges)
            out["attribute"]["scene_by_age"] = by_age
            print("the same summed over the colour-of-kind and shape-of-colour attributes, by age:")
            print(own_other_table(by_age, "age", "age"))
    if "recall" in model.heads:
        rows = recall_rows(items, edges)
        out["recall"] = {"pool": model.objectives["recall"].cfg.size, "rows": rows}
        print("recall head: squared error per value of the pooled frame, by age:")
        fmt = lambda x: "–" if x is None else f"{x:.4f}"  # noqa: E731
        cells = [
            [r["age"], str(r["n"]), fmt(r["head"]), fmt(r["label_mean"]), fmt(r["overall_mean"])]
            for r in rows
        ]
        print(
            "\n".join(
                markdown_table(["age", "items", "head", "each label's mean frame", "mean frame"], cells)
            )
        )
    if a.out:
        write_json(out, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
