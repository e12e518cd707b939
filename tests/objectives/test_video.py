"""The video objective: each video token predicts its own patch, pooled; targets in the frontend's order."""

import pytest
import torch
from objective_helpers import check_head_trains_and_round_trips, tiny_model

from ssm_mm.data.interleave import VIDEO
from ssm_mm.objectives import VideoConfig


def test_video_targets_follow_the_frontend_patch_order():
    model = tiny_model(objectives={"video": VideoConfig(size=2)})
    video_obj = model.objectives["video"]
    s = model.features.frame_size
    h = s // 2  # 2x2 patches
    video = torch.zeros(2, 3, s, s)
    video[1, 0, :h, h:] = 1.0  # frame 1: the top-right patch red, ...
    video[1, 2, h + h // 2 :, : h // 2] = 4.0  # ... the bottom-left patch blue in its lower-left quarter
    tgt = video_obj.targets_of(video)
    assert tgt.shape == (2 * 4, 3 * 2 * 2)
    assert tgt[:4].abs().sum() == 0  # frame 0 is empty
    # frame 1: patch 1 (row 0, col 1) = all red; patch 2 (row 1, col 0) = blue in its (1, 0) cell
    assert torch.equal(tgt[5], torch.tensor([1.0] * 4 + [0.0] * 8))
    assert torch.equal(tgt[6], torch.tensor([0.0] * 8 + [0.0, 0.0, 4.0, 0.0]))
    assert tgt[4].abs().sum() == 0 and tgt[7].abs().sum() == 0
    # the token whose embedding a change of one region moves is the token whose target row it moves
    with torch.no_grad():
        for p, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            moved = video.clone()
            moved[0, 1, r * h : (r + 1) * h, c * h : (c + 1) * h] += 0.5
            d_emb = (model.video_in(moved) - model.video_in(video)).flatten(0, 1).abs().sum(-1)
            d_tgt = (video_obj.targets_of(moved) - tgt).abs().sum(-1)
            assert d_emb.nonzero().flatten().tolist() == d_tgt.nonzero().flatten().tolist() == [p]


def test_video_head_trains_and_round_trips(tmp_path, make_dataset):
    ds = make_dataset(None)
    batch = ds.collate([ds[0], ds[1]])
    model = tiny_model(objectives={"video": VideoConfig(size=2)}).train()
    out = model.forward_batch(batch)
    sums, counts = model.loss_sums(out, batch)
    n_video = int(((batch.kind == VIDEO) & batch.valid).sum())
    assert counts["video"] == n_video > 0 and sums["video"] > 0
    check_head_trains_and_round_trips(tmp_path, model, batch, "video", sums["video"], model.video_in.stem[0])
    with pytest.raises(ValueError, match=r"objectives.video.size=64 must be in \[1, patch_size=32\]"):
        tiny_model(objectives={"video": VideoConfig(size=64)})
