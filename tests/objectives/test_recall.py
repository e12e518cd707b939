"""The recall objective: each event label's frame when it last happened, pooled, looked back on
across windows (the frames travel as a "rows" target)."""

import numpy as np
import pytest
import torch
from objective_helpers import check_head_trains_and_round_trips, tiny_model

from ssm_mm.objectives import RecallConfig
from ssm_mm.objectives.recall import nearest_frames


def test_nearest_frames():
    ft = np.array([0.0, 0.25, 0.5, 1.0])
    q = torch.tensor([[-1.0, 0.1, 0.125, 0.13], [0.75, 0.9, 5.0, float("nan")]], dtype=torch.float64)
    # before the first / after the last frame: the end frames; a tie (0.125, 0.75): the earlier one
    assert nearest_frames(q, ft).tolist() == [[0, 0, 0, 1], [2, 3, 3, -1]]
    assert nearest_frames(q, np.array([2.0])).tolist() == [[0, 0, 0, 0], [0, 0, 0, -1]]
    assert nearest_frames(q, np.zeros(0)).tolist() == [[-1] * 4] * 2


def test_recall_head_reads_past_frames_and_round_trips(tmp_path, make_dataset):
    ds = make_dataset(2.0, {"recall": RecallConfig(size=2)})  # later windows recall frames from before them
    batch = ds.collate([ds[1], ds[3], ds[6]])
    tv = batch.tick_valid
    index = batch.targets["recall"]
    assert bool((index[~tv] == -1).all()) and int((index >= 0).sum()) > 0
    model = tiny_model(objectives={"recall": RecallConfig(size=2)}).train()
    out = model.forward_batch(batch)
    sums, counts = model.loss_sums(out, batch)
    seen = index[tv] >= 0
    assert counts["recall"] == int(seen.sum()) and sums["recall"] > 0
    # the loss: squared error against each recalled frame pooled to 2 x 2 x 3, averaged per item
    pred = model.objectives["recall"].logits(model.heads["recall"], model.readout(out, batch).ticks)[seen]
    frames = batch.targets["recall_frames"][index[tv][seen]]  # (n, 3, 64, 64)
    quadrants = frames.unflatten(-1, (2, 32)).unflatten(-3, (2, 32))  # (n, 3, 2, 32, 2, 32)
    target = quadrants.mean((-1, -3)).flatten(1)  # (n, 3 * 2 * 2): channel, row, column
    torch.testing.assert_close(sums["recall"], (pred - target).pow(2).mean(-1).sum(), rtol=1e-5, atol=0)
    check_head_trains_and_round_trips(
        tmp_path, model, batch, "recall", sums["recall"], model.video_in.stem[0]
    )
    with pytest.raises(ValueError, match=r"objectives.recall.size=65 must be in \[1, frame_size=64\]"):
        tiny_model(objectives={"recall": RecallConfig(size=65)})
