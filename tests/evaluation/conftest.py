"""Fixtures for the evaluation harness tests: tiny AVWorld sets (real mp4 with audio), a tiny
untrained model, and a tiny model trained for a few steps by the real Trainer (whose end-of-run
evaluation is the harness)."""

import pytest
from eval_helpers import TINY, load_run_py, tiny_model
from support import single_thread  # noqa: F401  (autouse: one torch thread in these tests)

from ssm_mm.config import load_config
from ssm_mm.worlds.avworld import generate


@pytest.fixture(scope="module")
def run_py():
    """``eval/run.py`` as a module."""
    return load_run_py()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny untrained model saved with ``save_pretrained`` (its folder)."""
    return tiny_model().save_pretrained(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """(train manifest, validation manifest): 2 + 2 streams of 6 s; the validation streams have an
    audio/video offset, jitter and dropped frames, and a clock start, so every path is exercised."""
    root = tmp_path_factory.mktemp("evalworld")
    train = generate(root / "train", streams=2, seconds=6.0, seed=21)
    val = generate(
        root / "val", streams=2, seconds=6.0, seed=22, jitter=0.02, drop=0.1, offset=0.3, clock=50.0
    )
    return train, val


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, world):
    """A tiny model trained for 4 steps with train.py's Trainer; returns (run_dir, result, cache_dir)."""
    from ssm_mm.training.trainer import Trainer

    tmp = tmp_path_factory.mktemp("evalrun")
    train, val = world
    overrides = [
        f"data.manifest={train}",
        f"data.val_manifest={val}",
        f"data.cache_dir={tmp / 'cache'}",
        f"train.run_dir={tmp / 'run'}",
        "data.window_seconds=2.0",
        *[f"model.{k}={v}" for k, v in TINY.items()],
        "train.batch_size=2",
        "train.max_steps=4",
        "train.warmup_steps=1",
        "train.ckpt_every=4",
        "logging.wandb.mode=disabled",
        "logging.progress=false",
        "eval.plot_streams=1",
        "eval.lengths=[1,2]",  # the manifest's streams joined end to end: 1 stream of 2 x 6 s
        "eval.long_streams=1",
    ]
    result = Trainer(load_config(None, overrides)).run()
    return tmp / "run", result, tmp / "cache"
