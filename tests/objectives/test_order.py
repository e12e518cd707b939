"""The order objective: the rank of each event label's first occurrence (or "not begun")."""

import torch
from objective_helpers import LABELS, check_head_trains_and_round_trips, tiny_model

from ssm_mm.data.interleave import IGNORE_INDEX
from ssm_mm.objectives import ObjectiveConfig


def test_order_head_reads_first_occurrence_ranks_and_round_trips(tmp_path, make_dataset):
    ds = make_dataset(2.0, {"order": {}, "count": {}})  # 2-s windows: later ones keep ranks begun before
    batch = ds.collate([ds[1], ds[3], ds[6]])
    tv = batch.tick_valid
    C = len(LABELS) - 1
    assert bool((batch.targets["order"][~tv] == IGNORE_INDEX).all())
    ranks = batch.targets["order"][tv]
    assert int(ranks.min()) == 0 and int(ranks.max()) <= C
    # a label has a rank exactly when it has begun (its running count is > 0)
    assert torch.equal(ranks < C, batch.targets["count"][tv] > 0)
    model = tiny_model(objectives={"order": ObjectiveConfig()}).train()
    out = model.forward_batch(batch)
    sums, counts = model.loss_sums(out, batch)
    assert counts["order"] == int(tv.sum()) * C and sums["order"] > 0
    logits = model.objectives["order"].logits(model.heads["order"], model.readout(out, batch).ticks)
    assert logits.shape == (int(tv.sum()), C, C + 1)
    manual = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ranks.flatten(), reduction="sum")
    torch.testing.assert_close(sums["order"], manual)
    check_head_trains_and_round_trips(tmp_path, model, batch, "order", sums["order"], model.audio_in.proj[0])
