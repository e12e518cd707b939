"""Is a wrong count answer a memory error or a readout error? For a model trained with the count head
(``objectives.count.max=N``), read at every "how many times did the X ...?" question of a results file
what the count head says about X at the tick that ends at the question, beside the LM's answer.

    python research/avworld/count_probe.py runs/proxy/final runs/proxy/eval/results.json
    python research/avworld/count_probe.py MODEL results.json --dataset val --manifest DIR/manifest.jsonl

The count head reads each event label's running count from the hidden state at a tick's summary
position, the state the answer is generated from (only the question's tokens come between). Where
the head is right and the answer wrong, the state held the count and the LM did not read it out.
One row per model: count questions, head right, LM right, and the two disagreements. A question
whose text names no event label, or a count above the head's N, is left out (and counted).
Exit status 2 with a message naming what is wrong: a missing or malformed file, a model without a
count head, a dataset or question the results file does not hold.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from probes import ProbeError  # research/avworld/probes.py beside this script

from ssm_mm.cli import exits_2_on
from ssm_mm.data.dataset import StreamDataset
from ssm_mm.data.interleave import tick_of
from ssm_mm.data.manifest import StreamSpec, read_manifest
from ssm_mm.evaluation.report import fraction_cell, markdown_table, read_json


def asked_label(question: str, labels: list[str]) -> str | None:
    """The one event label named as a word of ``question`` (None when none or several are)."""
    words = set(re.findall(r"\w+", question.lower()))
    named = [lab for lab in labels[1:] if lab.lower() in words]
    return named[0] if len(named) == 1 else None


def model_counts(
    model, raw: bool = False, scales: list | None = None
) -> Callable[[StreamDataset, int], torch.Tensor]:
    """``predict(dataset, i)``: the count head's (n_ticks, C) counts over stream ``i``, whole stream
    (its argmax class, or its regressed count rounded); ``raw``: as float values, a regressed count
    unrounded. ``scales``: a list to which each call appends the (n_ticks,) RMS of the residual stream
    that the final norm divides by at each tick, read from the same forward."""

    @torch.no_grad()
    def predict(ds: StreamDataset, i: int) -> torch.Tensor:
        b = ds.collate([ds[i]])
        seen = {}
        hook = None
        if scales is not None:
            hook = model.backbone.norm_f.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0]))
        try:
            ticks = model.tick_hidden(model.forward_batch(b).hidden, b.summary_pos)[0]
        finally:
            if hook is not None:
                hook.remove()
        if scales is not None:
            scales.append(model.tick_hidden(seen["x"], b.summary_pos)[0].pow(2).mean(-1).sqrt())
        return read_counts(model, ticks, raw)

    return predict


def read_counts(model, ticks: torch.Tensor, raw: bool = False) -> torch.Tensor:
    """The count head's (n_ticks, C) counts read from the final hidden states ``ticks`` (n_ticks, d)
    at tick summary positions: its argmax class or its regressed count rounded; ``raw``: as float
    values, a regressed count unrounded."""
    obj, head = model.objectives["count"], model.heads["count"]
    if raw:
        return head(ticks).float() if obj.regressed else obj.predict(head, ticks).float()
    return obj.predict(head, ticks)


def load_count_model(model_path: str):
    """The model at ``model_path`` in eval mode; :class:`ProbeError` when it is missing or has no count
    head."""
    from ssm_mm.models.multimodal import MultimodalSSM

    if not Path(model_path).exists():
        raise ProbeError(f"{model_path}: no such model")
    model = MultimodalSSM.from_pretrained(model_path).eval()
    if "count" not in model.heads:
        raise ProbeError(f"{model_path}: the model has no count head (train it with objectives.count.max=N)")
    return model


def probe(
    streams: list[StreamSpec],
    ds: StreamDataset,
    qa: dict[tuple[str, float, str], dict],
    labels: list[str],
    tick_seconds: float,
    n_max: int,
    predict: Callable[[StreamDataset, int], torch.Tensor],
) -> Counter:
    """Counter of (head right, LM right) over the count questions of ``streams``, and of "unnamed" /
    "over_n" for the questions left out. ``qa``: (stream id, t, question) -> per-question record."""
    tab: Counter = Counter()
    for i, spec in enumerate(streams):
        questions = [d for d in spec.dialogue if d.role == "user" and d.type == "count"]
        if not questions:
            continue
        pred = predict(ds, i)
        for d in questions:
            rec = qa.get((spec.id, float(d.t), d.text))
            if rec is None:
                raise ProbeError(f"stream {spec.id}: no answer to {d.text!r} at t={d.t} in the results file")
            label = asked_label(d.text, labels)
            if label is None:
                tab["unnamed"] += 1
                continue
            ref = rec["reference"].strip()
            if not ref.isdigit() or int(ref) > n_max:
                tab["over_n"] += 1
                continue
            k = min(int(tick_of(torch.tensor(float(d.t)), tick_seconds)), pred.shape[0] - 1)
            head_ok = int(pred[k, labels.index(label) - 1]) == int(ref)
            tab[(head_ok, bool(rec["correct"]))] += 1
    return tab


def row(name: str, tab: Counter) -> list[str]:
    probed = {k: v for k, v in tab.items() if isinstance(k, tuple)}  # (head right, LM right) -> n
    n = sum(probed.values())
    head = sum(v for (h, _), v in probed.items() if h)
    lm = sum(v for (_, a), v in probed.items() if a)
    return [
        name,
        str(n),
        fraction_cell(head, n),
        fraction_cell(lm, n),
        fraction_cell(tab[(True, False)], n),
        fraction_cell(tab[(False, True)], n),
        str(tab["unnamed"] + tab["over_n"]),
    ]


HEAD = [
    "model",
    "count questions",
    "count head right",
    "LM right",
    "head right, LM wrong",
    "LM right, head wrong",
    "left out",
]


def run(model_path: str, results: str, dataset: str, manifest: str | None, entry: str | None) -> str:
    model = load_count_model(model_path)
    try:
        res = read_json(results)
    except ValueError as e:
        raise ProbeError(str(e)) from None
    entries = [r for r in res.get("results", []) if r.get("dataset") == dataset and r.get("knob") is None]
    if entry is not None:
        entries = [r for r in entries if r.get("model") == entry]
    if len(entries) != 1:
        names = sorted({str(r.get("model")) for r in res.get("results", [])})
        raise ProbeError(
            f"{results}: {len(entries)} result entries for dataset {dataset!r}"
            + (f" and model {entry!r}" if entry else "")
            + f" (models: {names}; pick one with --entry)"
        )
    if manifest is None:
        manifest = res.get("datasets", {}).get(dataset, {}).get("manifest")
        if manifest is None:
            raise ProbeError(f"{results}: no manifest recorded for dataset {dataset!r} (give --manifest)")
    if not Path(manifest).is_file():
        raise ProbeError(f"{manifest}: no such manifest")
    man = read_manifest(manifest)
    qa = {(s["id"], float(q["t"]), q["question"]): q for s in entries[0]["streams"] for q in s["qa"]}
    ds = StreamDataset(man, model.features, model.tokenizer, model.labels)
    tab = probe(
        list(man.streams),
        ds,
        qa,
        model.labels,
        model.features.tick_seconds,
        model.objectives["count"].cfg.max,
        model_counts(model),
    )
    return "\n".join(markdown_table(HEAD, [row(str(entries[0]["model"]), tab)]))


@exits_2_on("count_probe", ProbeError, FileNotFoundError)
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a model folder, checkpoint or run folder trained with objectives.count")
    ap.add_argument("results", help="the results.json (or .json.gz) of that model's evaluation")
    ap.add_argument("--dataset", default="val", help="dataset name in the results file (default: val)")
    ap.add_argument("--manifest", help="the dataset's manifest (default: the one the results file names)")
    ap.add_argument("--entry", help="the model's name in the results file, when it holds several")
    a = ap.parse_args(argv)
    print(run(a.model, a.results, a.dataset, a.manifest, a.entry))


if __name__ == "__main__":
    sys.exit(main())
