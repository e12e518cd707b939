"""The always-on event and speak objectives: their losses and validation metrics from the batch."""

import torch
import torch.nn.functional as F
from objective_helpers import LABELS, tiny_model


def test_event_and_speak_losses_and_metrics(make_dataset):
    ds = make_dataset(2.0)
    batch = ds.collate([ds[0], ds[3], ds[6]])
    tv = batch.tick_valid
    model = tiny_model().eval()
    with torch.no_grad():
        out = model.forward_batch(batch)
        sums, counts = model.loss_sums(out, batch)
        th = model.tick_hidden(out.hidden, batch.summary_pos)[tv]
        event, speak = batch.targets["event"][tv], batch.targets["speak"][tv]
        assert counts["event"] == counts["speak"] == int(tv.sum()) > 0
        torch.testing.assert_close(
            sums["event"], F.cross_entropy(model.heads["event"](th), event, reduction="sum")
        )
        logit = model.heads["speak"](th).squeeze(-1)
        torch.testing.assert_close(
            sums["speak"], F.binary_cross_entropy_with_logits(logit, speak, reduction="sum")
        )
        r = model.readout(out, batch)
        ev = model.objectives["event"]
        m = ev.summarize([ev.metric(model.heads["event"], r, batch)])
        pred = model.heads["event"](th).argmax(-1)
        assert m["tick_accuracy"] == (pred == event).float().mean().item() and m["n_ticks"] == len(event)
        assert set(m["per_class"]) == set(LABELS[1:])
        sp = model.objectives["speak"]
        hits = int(((logit > 0) & (speak > 0.5)).sum())
        got = sp.summarize([sp.metric(model.heads["speak"], r, batch)])["speak_recall_ticks"]
        n_pos = int((speak > 0.5).sum())
        assert (got == hits / n_pos) if n_pos else got != got  # NaN without a speak tick
    # a batch without valid ticks: exact zeros that still reach the heads (DDP needs every head used)
    empty = ds.collate([ds[0]])
    empty.tick_valid[:] = False
    sums, counts = model.loss_sums(model.forward_batch(empty), empty)
    assert counts["event"] == 0 and sums["event"].item() == 0.0 and sums["event"].requires_grad
