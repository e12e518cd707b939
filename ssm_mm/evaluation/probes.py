"""Linear probes on a model's residual stream (used by ``eval/probe_patches.py`` and
``eval/probe_binding.py``): read the output of every backbone block during an offline forward, and
score a softmax-regression probe trained on some streams on the others."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor


@contextmanager
def block_outputs(model, frontend: bool = False) -> Iterator[dict[str, Tensor]]:
    """A dict filled by every forward inside the ``with``: ``"block{j}:{kind}"`` -> (B, L, d) residual
    stream after block j (1-based; kind M or A from the pattern), in depth order, and with
    ``frontend=True`` first ``"frontend"`` -> the video frontend's (F, P, d) patch embeddings."""
    depth: dict[str, Tensor] = {}
    hooks = []
    if frontend:
        hooks.append(model.video_in.register_forward_hook(lambda m, i, o: depth.__setitem__("frontend", o)))
    for j, blk in enumerate(model.backbone.blocks):
        name = f"block{j + 1}:{model.cfg.pattern[j]}"
        hooks.append(blk.register_forward_hook(lambda m, i, o, name=name: depth.__setitem__(name, o[0])))
    try:
        yield depth
    finally:
        for h in hooks:
            h.remove()


def linear_probe(
    x: Tensor,
    y: Tensor,
    train: Tensor,
    n_classes: int,
    steps: int = 400,
    seed: int = 0,
    weight_decay: float = 0.0,
) -> Tensor:
    """Predicted classes of the rows ``~train`` by a softmax-regression probe trained on the rows
    ``train`` (bool mask): features standardised with the training rows' statistics, full-batch
    Adam (lr 1e-2, L2 ``weight_decay`` on the weights), ``steps`` steps, seeded initialisation."""
    g = torch.Generator().manual_seed(seed)
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mu) / sd
    w = (torch.randn(x.shape[1], n_classes, generator=g) * 0.01).requires_grad_()
    bias = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.Adam([w, bias], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[train] @ w + bias, y[train])
        (loss + weight_decay * w.square().sum()).backward()
        opt.step()
    with torch.no_grad():
        return (x[~train] @ w + bias).argmax(-1)
