"""A non-finite loss skips its whole optimizer step (every micro-batch of it), so the data position
stays ``global_step x grad_accum`` and training goes on; the fifth such step stops the run."""

from __future__ import annotations

import pytest
import torch

from ssm_mm.config import load_config
from ssm_mm.training.trainer import NonFiniteLossError, Trainer


def _trainer(tmp_path, tiny_world, tiny_overrides, poisoned: set[int]) -> tuple[Trainer, list[int]]:
    """A set-up Trainer whose step module returns a NaN loss on the micro-steps in ``poisoned`` and
    whose batch iterator counts what it hands out (the returned list's one entry)."""
    cfg = load_config(None, tiny_overrides(tmp_path, *tiny_world, "train.grad_accum=2", "train.max_steps=6"))
    t = Trainer(cfg)
    t.setup()
    inner, drawn, calls = t.step_module, [0], [0]

    def step_module(batch, state, norm):
        loss, sums, extra, new_state = inner(batch, state, norm)
        calls[0] += 1
        return (loss * float("nan") if calls[0] - 1 in poisoned else loss), sums, extra, new_state

    def counted(it):
        for b in it:
            drawn[0] += 1
            yield b

    t.step_module, t.batches = step_module, counted(t.batches)
    return t, drawn


def test_a_nonfinite_first_micro_batch_skips_the_whole_step(tmp_path, tiny_world, tiny_overrides):
    t, drawn = _trainer(tmp_path, tiny_world, tiny_overrides, poisoned={4})  # step 3's first micro-batch
    before = [p.detach().clone() for p in t.model.parameters()]
    out = [t.step() for _ in range(6)]
    assert [m is None for m in out] == [False, False, True, False, False, False]
    assert t.global_step == 6 and t.nonfinite == 1
    assert drawn[0] == 12  # step 3's second micro-batch was drawn and dropped: the position is 6 x 2
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, t.model.parameters()))
    with pytest.raises(StopIteration):  # exactly max_steps x grad_accum micro-batches were scheduled
        next(t.batches)


def test_the_fifth_nonfinite_step_stops_the_run(tmp_path, tiny_world, tiny_overrides):
    t, _ = _trainer(tmp_path, tiny_world, tiny_overrides, poisoned=set(range(100)))
    for _ in range(4):
        assert t.step() is None
    with pytest.raises(NonFiniteLossError, match="5 non-finite losses"):
        t.step()
