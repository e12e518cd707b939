"""train.compile=true (issue 32 item 2): the Trainer's steps with the model's forward compiled give the
eager steps' losses (carried states across windows, gradient accumulation)."""

import json

import pytest

from ssm_mm.config import load_config
from ssm_mm.training.trainer import Trainer, TrainStep


def losses(run_dir) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def test_train_compile_defaults_off_and_off_is_the_eager_step():
    cfg = load_config(None, [])
    assert cfg.train.compile is False
    assert load_config(None, ["train.compile=true"]).train.compile is True


@pytest.mark.slow
def test_compiled_training_steps_equal_eager(tmp_path, tiny_world, tiny_overrides, monkeypatch):
    """3 optimizer steps x 2 micro-steps over the streams' 3 windows (fresh states, then carried ones):
    the losses of train.compile=true equal eager's. Compiled with Dynamo + AOTAutograd and eager
    kernels (backend "aot_eager") and lengths bucketed to powers of two (2 compiles), so the test
    checks the trainer's wiring in ~1 min; inductor's own numerics are checked by
    tests/models/test_compiled_forward.py (a cold inductor compile takes minutes on the 2-core CPU)."""
    from ssm_mm.models.multimodal import CompiledForward, MultimodalSSM

    made = []

    def compiled_forward(model):
        made.append(CompiledForward(model, per_octave=1, backend="aot_eager"))
        return made[-1]

    monkeypatch.setattr(MultimodalSSM, "compiled_forward", compiled_forward)
    extra = ["train.max_steps=3", "train.ckpt_every=3", "train.grad_accum=2", "eval.at_end=false"]
    runs = {}
    for mode in ("false", "true"):
        cfg = load_config(None, tiny_overrides(tmp_path / mode, *tiny_world, *extra, f"train.compile={mode}"))
        t = Trainer(cfg)
        t.run()
        runs[mode] = losses(tmp_path / mode / "run")
        assert isinstance(t.step_module, TrainStep)
        fwd = t.step_module.forward_model
        assert fwd is made[0] if mode == "true" else fwd == t.model.forward_batch  # a bound method
    assert len(made) == 1 and sorted(runs["true"]) == [1, 2, 3]
    for step, eager in runs["false"].items():
        assert abs(runs["true"][step] - eager) <= 1e-5 * abs(eager), (step, runs["true"][step], eager)
