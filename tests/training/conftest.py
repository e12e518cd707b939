import pytest

from ssm_mm.worlds.avworld import generate


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """4 training streams + 2 validation streams of 6 s, real mp4 with audio."""
    root = tmp_path_factory.mktemp("world")
    train = generate(root / "train", streams=4, seconds=6.0, seed=5)
    val = generate(root / "val", streams=2, seconds=6.0, seed=6)
    return train, val


@pytest.fixture(scope="session")
def tiny_overrides():
    """``tiny_overrides(tmp, train_manifest, val_manifest, *extra)`` -> key=value list for a tiny run."""
    return _tiny_overrides


def _tiny_overrides(tmp, train, val, *extra):
    return [
        f"data.manifest={train}",
        f"data.val_manifest={val}",
        f"data.cache_dir={tmp / 'cache'}",
        f"train.run_dir={tmp / 'run'}",
        "data.window_seconds=2.0",
        "model.d_model=32",
        "model.d_state=8",
        "model.headdim=8",
        "model.attn_heads=2",
        "model.attn_kv_heads=2",
        "model.pattern=MMA",
        "model.attn_window=16",
        "model.chunk_size=16",
        "train.batch_size=2",
        "train.max_steps=8",
        "train.warmup_steps=2",
        "train.lr=3e-3",
        "train.ckpt_every=2",
        "train.keep_last=3",
        "logging.wandb.mode=disabled",
        "logging.progress=false",
        "eval.lengths=[1]",  # no long-stream evaluation: the evaluation tests cover it
        # train.py reads configs/default.yaml, whose data.mix is a recipe for the built-in world (not
        # used with a manifest, but part of the resume check): the in-process Trainer runs start bare
        "data.mix=[]",
        *extra,
    ]
