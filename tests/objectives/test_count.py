"""The count objective: each event label's running count per tick, clipped to ``max``."""

import pytest
import torch
from objective_helpers import LABELS, check_head_trains_and_round_trips, tiny_model

from ssm_mm.config import ConfigError, load_config
from ssm_mm.data.interleave import IGNORE_INDEX
from ssm_mm.objectives import CountConfig


def test_count_head_reads_running_counts_and_round_trips(tmp_path, make_dataset):
    ds = make_dataset(None, {"count": CountConfig(max=2)})
    batch = ds.collate([ds[0], ds[1]])
    tv, count = batch.tick_valid, batch.targets["count"]
    assert bool((count[~tv] == IGNORE_INDEX).all())
    # the batch's counts are each stream's running counts of its manifest segments
    counts_seen = count[tv]
    assert counts_seen.shape[1] == len(LABELS) - 1 and int(counts_seen.max()) >= 1
    assert bool((count[:, 1:] >= count[:, :-1]).where(tv[:, 1:, None], True).all())
    model = tiny_model(objectives={"count": CountConfig(max=2)}).train()
    out = model.forward_batch(batch)
    sums, counts = model.loss_sums(out, batch)
    assert counts["count"] == int(tv.sum()) * (len(LABELS) - 1) and sums["count"] > 0
    # the loss is the cross-entropy of the counts clipped to max = 2
    logits = model.objectives["count"].logits(model.heads["count"], model.readout(out, batch).ticks)
    target = counts_seen.clamp_max(2)
    manual = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum")
    torch.testing.assert_close(sums["count"], manual)
    # the validation metric: exact counts per tick and label
    metric = model.objectives["count"].summarize(
        [model.objectives["count"].metric(model.heads["count"], model.readout(out, batch), batch)]
    )
    assert metric["count_accuracy"] == pytest.approx(float((logits.argmax(-1) == target).float().mean()))
    check_head_trains_and_round_trips(tmp_path, model, batch, "count", sums["count"], model.audio_in.proj[0])


def test_count_config_is_typed_and_ranged():
    assert load_config(None, ["objectives.count.max=3"]).objectives.count == CountConfig(max=3)
    with pytest.raises(ConfigError, match=r"objectives.count.max=0: must be >= 1"):
        load_config(None, ["objectives.count.max=0"])
    with pytest.raises(ConfigError, match="moved to objectives.count.max"):
        load_config(None, ["model.count_head=3"])
