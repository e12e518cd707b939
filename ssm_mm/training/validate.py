"""Offline validation during training: losses and per-tick event metrics on held-out streams.

Each validation stream is one window run from a fresh state (the whole stream at once), so this
measures the same thing streaming evaluation does, without the session's per-tick overhead.
"""

from __future__ import annotations

import torch

from ssm_mm.data.dataset import StreamDataset
from ssm_mm.metrics import event_metrics
from ssm_mm.models.multimodal import MultimodalSSM


@torch.no_grad()
def validate(model: MultimodalSSM, dataset: StreamDataset, batch_size: int = 8, device="cpu") -> dict:
    """Mean per-head losses and event metrics over every stream of ``dataset`` (one window each)."""
    was_training = model.training
    model.eval()
    preds, trues = [], []
    heads = model.active_heads()
    sums = {k: 0.0 for k in heads}
    counts = {k: 0.0 for k in heads}
    speak_hits = speak_pos = 0
    count_hits = count_n = 0
    order_hits = order_n = 0
    attr_hits, attr_values = 0, []
    items = list(range(len(dataset)))
    for i in range(0, len(items), batch_size):
        batch = dataset.collate([dataset[j] for j in items[i : i + batch_size]]).to(device)
        out = model.forward_batch(batch)
        s, n = model.loss_sums(out, batch)
        for k in sums:
            sums[k] += float(s[k])
            counts[k] += float(n[k])
        th = model.tick_hidden(out.hidden, batch.summary_pos)
        tv = batch.tick_valid
        preds.append(model.event_head(th[tv]).argmax(-1).cpu())
        trues.append(batch.event_label[tv].cpu())
        speak_pred = model.speak_head(th[tv]).squeeze(-1) > 0
        speak_true = batch.speak[tv] > 0.5
        speak_hits += int((speak_pred & speak_true).sum())
        speak_pos += int(speak_true.sum())
        if model.count_head is not None:
            target = batch.event_count[tv].clamp_max(model.cfg.count_head)
            count_hits += int((model.count_logits(th[tv]).argmax(-1) == target).sum())
            count_n += target.numel()
        if model.order_head is not None:
            target = batch.first_rank[tv]
            order_hits += int((model.order_logits(th[tv]).argmax(-1) == target).sum())
            order_n += target.numel()
        if model.attribute_head is not None:
            target = batch.recall_value[tv]
            known = target >= 0
            attr_hits += int((model.attribute_logits(th[tv]).argmax(-1) == target)[known].sum())
            attr_values.append(target[known].cpu())
    model.train(was_training)
    pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    true = torch.cat(trues) if trues else torch.zeros(0, dtype=torch.long)
    res = event_metrics(pred, true, model.labels)
    res["loss"] = {k: sums[k] / max(1, counts[k]) for k in sums}
    res["speak_recall_ticks"] = speak_hits / speak_pos if speak_pos else float("nan")
    if model.count_head is not None:  # exact running counts, per tick and event label
        res["count_accuracy"] = count_hits / count_n if count_n else float("nan")
    if model.order_head is not None:  # exact first-occurrence ranks, per tick and event label
        res["order_accuracy"] = order_hits / order_n if order_n else float("nan")
    if model.attribute_head is not None:  # the recalled attribute, per tick and label that has happened
        values = torch.cat(attr_values) if attr_values else torch.zeros(0, dtype=torch.long)
        n = len(values)
        res["attribute_accuracy"] = attr_hits / n if n else float("nan")
        res["attribute_majority"] = int(values.bincount().max()) / n if n else float("nan")
    return res
