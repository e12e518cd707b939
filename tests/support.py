"""Helpers shared across the test suite (importable everywhere: pytest's ``pythonpath`` has tests/).

One tiny model configuration, so every parity test exercises the same small hybrid unless it says
what it changes: d_model 32, an SSM-SSM-attention-SSM stack, 8-dim SSM state, a 24-token attention
window (the KV cache wraps within a few ticks), pure-torch kernels.
"""

from __future__ import annotations

import pytest
import torch

from ssm_mm.config import ModelConfig
from ssm_mm.models.multimodal import MultimodalSSM

# Out-of-range config values and the key their one-line error names: refused by load_config
# (tests/test_config.py adds more) and by train.py before any work (tests/training/test_train_reliability.py).
BAD_CONFIG_VALUES = [
    ("train.max_steps=0", "train.max_steps"),
    ("train.max_steps=-5", "train.max_steps"),
    ("train.ckpt_every=0", "train.ckpt_every"),
    ("train.batch_size=0", "train.batch_size"),
    ("model.d_model=0", "model.d_model"),
    ("train.lr=-1", "train.lr"),
    ("train.lr=nan", "train.lr"),
    ("data.join_seconds=-30", "data.join_seconds"),
    ("data.join_seconds=inf", "data.join_seconds"),
    ("model.gain=sigmoid", "model.gain"),
]

TINY_MODEL = dict(
    d_model=32,
    pattern="MMAM",
    d_state=8,
    headdim=8,
    chunk_size=16,
    attn_heads=2,
    attn_kv_heads=2,
    attn_window=24,
    kernels="torch",
)


@pytest.fixture(autouse=True)
def single_thread():
    """One torch thread for each test of a folder whose conftest imports this fixture: a tick is a few
    dozen tokens, and on a busy 2-core machine a second thread only spins (ticks get many times slower,
    not faster)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_model_config(**overrides) -> ModelConfig:
    """The tiny ModelConfig, with ``overrides`` applied."""
    return ModelConfig(**{**TINY_MODEL, **overrides})


def tiny_model(seed: int = 0, labels: list[str] | None = None, objectives=None, **overrides) -> MultimodalSSM:
    """A freshly initialised (seeded) tiny MultimodalSSM in eval mode (``objectives``: ``{name: config}``
    beside the always-on ones)."""
    torch.manual_seed(seed)
    return MultimodalSSM(tiny_model_config(**overrides), labels=labels, objectives=objectives).eval()


def tiny_avworld(root):
    """The tiny real AVWorld of the model and objective tests (3 streams of 8 s, mp4 with audio, jittered
    and dropped frames, a shifted clock) generated into ``root``; returns its manifest path."""
    from ssm_mm.worlds.avworld import generate

    return generate(root, streams=3, seconds=8.0, seed=11, jitter=0.02, drop=0.1, clock=3600.0)


def dataset_factory(manifest_path, labels):
    """``make(window_seconds=None, objectives=None)`` -> a StreamDataset of the manifest's streams (default
    featurizer, byte tokenizer, ``labels``) carrying those objectives' targets (None: the always-on ones)."""
    from ssm_mm.data.dataset import StreamDataset
    from ssm_mm.data.featurize import FeaturizerConfig
    from ssm_mm.data.manifest import read_manifest
    from ssm_mm.data.tokenizer import ByteTokenizer

    manifest = read_manifest(manifest_path)

    def make(window_seconds=None, objectives=None):
        return StreamDataset(
            manifest,
            FeaturizerConfig(),
            ByteTokenizer(),
            labels,
            window_seconds=window_seconds,
            objectives=objectives,
        )

    return make
