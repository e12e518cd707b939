"""Offline validation during training: losses and every objective's metric on held-out streams.

Each validation stream is one window run from a fresh state (the whole stream at once), so this
measures the same thing streaming evaluation does, without the session's per-tick overhead.
"""

from __future__ import annotations

import torch

from ssm_mm.data.dataset import StreamDataset
from ssm_mm.models.multimodal import MultimodalSSM


@torch.no_grad()
def validate(model: MultimodalSSM, dataset: StreamDataset, batch_size: int = 8, device="cpu") -> dict:
    """Mean per-objective losses and metrics over every stream of ``dataset`` (one window each).

    Returns the event objective's metrics at the top level (``tick_accuracy``, ``macro_f1``,
    ``majority_rate``, ...) and every other objective's beside them (e.g. ``count_accuracy``), as
    well as ``loss`` {name: mean loss} and ``objectives`` {name: {metric: value}}.
    """
    was_training = model.training
    model.eval()
    names = list(model.objectives)
    sums = {k: 0.0 for k in names}
    counts = {k: 0.0 for k in names}
    parts: dict[str, list] = {k: [] for k in names}
    items = list(range(len(dataset)))
    for i in range(0, len(items), batch_size):
        batch = dataset.collate([dataset[j] for j in items[i : i + batch_size]]).to(device)
        out = model.forward_batch(batch)
        s, n = model.loss_sums(out, batch)
        r = model.readout(out, batch)
        for k, obj in model.objectives.items():
            sums[k] += float(s[k])
            counts[k] += float(n[k])
            part = obj.metric(model.heads[k], r, batch)
            if part is not None:
                parts[k].append(part)
    model.train(was_training)
    metrics = {k: obj.summarize(parts[k]) for k, obj in model.objectives.items()}
    res = {k: v for m in metrics.values() for k, v in m.items()}
    res["loss"] = {k: sums[k] / max(1, counts[k]) for k in names}
    res["objectives"] = metrics
    return res
