"""The LM objective: the weighted mean of next-token cross-entropy over answer tokens."""

import pytest
import torch
import torch.nn.functional as F
from objective_helpers import tiny_model

from ssm_mm.config import ConfigError, load_config
from ssm_mm.data.interleave import IGNORE_INDEX


def test_lm_loss_is_the_weighted_mean_over_answer_weights(make_dataset):
    """With every weight 1 the LM loss is the plain mean over supervised tokens; with weights it is
    their weighted mean, and a weight of 0 removes those answers."""
    ds = make_dataset(None)
    batch = ds.collate([ds[0], ds[1]])
    model = tiny_model().eval()
    target = batch.targets["lm"]
    with torch.no_grad():
        out = model.forward_batch(batch)
        sup = target != IGNORE_INDEX
        ce = F.cross_entropy(model.heads["lm"](out.hidden[sup]).float(), target[sup], reduction="none")
        assert torch.allclose(model.losses(out, batch)["lm"], ce.mean(), atol=1e-6)
        w = torch.rand(sup.shape) * 3
        w[0] = 0.0  # the first window's answers do not count
        batch.targets["lm_weight"] = w
        sums, counts = model.loss_sums(out, batch)
        assert counts["lm"] == pytest.approx(float(w[sup].sum()), rel=1e-6)
        assert float(sums["lm"]) == pytest.approx(float((ce * w[sup]).sum()), rel=1e-5)
        ce1 = ce[int(sup[0].sum()) :]  # window 1's supervised tokens (boolean indexing is row-major)
        assert len(ce1) > 0
        assert float(model.losses(out, batch)["lm"]) == pytest.approx(
            float((ce1 * w[1][sup[1]]).sum() / w[1][sup[1]].sum()), rel=1e-5
        )


def test_answer_weights_are_checked_and_the_lm_is_always_on():
    assert load_config(None, ["objectives.lm.answer_weights={count: 4}"]).objectives.lm.answer_weights == {
        "count": 4.0
    }
    with pytest.raises(ConfigError, match=r"objectives.lm.answer_weights=\{'count': -1.0\}"):
        load_config(None, ["objectives.lm.answer_weights={count: -1.0}"])
    with pytest.raises(ConfigError, match="answer_weights"):
        load_config(None, ["objectives.lm.answer_weights={count: nan}"])
    with pytest.raises(ConfigError, match="always on"):
        load_config(None, ["objectives.lm=null"])
    with pytest.raises(ConfigError, match="moved to objectives.lm.answer_weights"):
        load_config(None, ["train.loss_answer={count: 4}"])
