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


def test_regressed_count_is_a_huber_loss_on_the_unclipped_count(tmp_path, make_dataset):
    cfg = CountConfig(max=1000, loss="huber")
    ds = make_dataset(None, {"count": cfg})
    batch = ds.collate([ds[0], ds[1]])
    model = tiny_model(objectives={"count": cfg}).train()
    out = model.forward_batch(batch)
    sums, counts = model.loss_sums(out, batch)
    tv = batch.tick_valid
    assert counts["count"] == int(tv.sum()) * (len(LABELS) - 1)
    head, obj = model.heads["count"], model.objectives["count"]
    assert head.out_features == len(LABELS) - 1  # one number per label, whatever max is
    ticks = model.readout(out, batch).ticks
    target = batch.targets["count"][tv].float()
    pred = head(ticks)
    manual = torch.nn.functional.huber_loss(pred, target, reduction="sum", delta=1.0)
    torch.testing.assert_close(sums["count"], manual)
    # the metric is the rounded count, so a head that outputs count + 0.4 is exact everywhere
    constant = torch.nn.Linear(head.in_features, head.out_features)
    with torch.no_grad():
        constant.weight.zero_()
        constant.bias.fill_(0.4)
    hits, n = obj.metric(constant, model.readout(out, batch), batch)
    assert n == target.numel() and hits == int((target == 0).sum()) > 0
    zero_share = float((target == 0).float().mean())
    assert obj.summarize([(hits, n)])["count_accuracy"] == pytest.approx(zero_share)
    # counts above max are max in the regressed form too
    small = tiny_model(objectives={"count": CountConfig(max=1, loss="huber")})
    assert bool((small.objectives["count"].class_targets(batch) <= 1).all())
    check_head_trains_and_round_trips(tmp_path, model, batch, "count", sums["count"], model.audio_in.proj[0])


def test_count_loss_must_be_known():
    assert load_config(None, ["objectives.count.loss=huber"]).objectives.count.loss == "huber"
    with pytest.raises((ConfigError, ValueError), match=r"objectives.count.loss='mse'.*classes, huber"):
        load_config(None, ["objectives.count.loss=mse"])
