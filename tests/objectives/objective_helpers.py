"""What every optional objective's test checks once its loss is known to be right."""

import support
import torch

from ssm_mm.models.multimodal import MultimodalSSM
from ssm_mm.worlds.avworld import CLASSES

LABELS = ["background"] + [c.name for c in CLASSES]


def tiny_model(seed=0, objectives=None, **kw) -> MultimodalSSM:
    return support.tiny_model(seed, LABELS, objectives=objectives, **kw)


def check_head_trains_and_round_trips(tmp_path, model, batch, name: str, loss, frontend) -> None:
    """``loss`` (the objective's loss sum from ``model.loss_sums``) backpropagates into its head and
    through the backbone to ``frontend``; a save/load round trip keeps the head and its config; a model
    without the objective has no such head and no such loss."""
    loss.backward()
    head = model.heads[name]
    assert head.weight.grad.abs().sum() > 0
    assert frontend.weight.grad.abs().sum() > 0  # through the backbone to the frontends
    model.save_pretrained(tmp_path / "m")
    again = MultimodalSSM.from_pretrained(tmp_path / "m")
    assert again.objectives[name].cfg == model.objectives[name].cfg
    assert torch.equal(again.heads[name].weight, head.weight)
    assert list(again.heads) == ["lm", "event", "speak", name]
    plain = tiny_model()
    s2, c2 = plain.loss_sums(plain.forward_batch(batch), batch)
    assert name not in plain.heads and name not in s2 and name not in c2
    assert list(plain.heads) == ["lm", "event", "speak"]
