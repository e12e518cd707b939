"""Shared fixtures of the objective tests: a tiny real AVWorld (mp4 with audio), decoded for real, and
datasets carrying the targets of the objectives a test names."""

import pytest

from ssm_mm.data.dataset import StreamDataset
from ssm_mm.data.featurize import FeaturizerConfig
from ssm_mm.data.manifest import read_manifest
from ssm_mm.data.tokenizer import ByteTokenizer
from ssm_mm.worlds.avworld import CLASSES, generate

LABELS = ["background"] + [c.name for c in CLASSES]


@pytest.fixture(scope="session")
def avworld_manifest(tmp_path_factory):
    out = tmp_path_factory.mktemp("avworld")
    return generate(out, streams=3, seconds=8.0, seed=11, jitter=0.02, drop=0.1, clock=3600.0)


@pytest.fixture(scope="session")
def make_dataset(avworld_manifest):
    """``make_dataset(window_seconds, objectives)``: the tiny world's windows with those objectives'
    targets (a ``{name: config}`` section; None: the always-on ones)."""
    manifest = read_manifest(avworld_manifest)

    def make(window_seconds=None, objectives=None):
        return StreamDataset(
            manifest,
            FeaturizerConfig(),
            ByteTokenizer(),
            LABELS,
            window_seconds=window_seconds,
            objectives=objectives,
        )

    return make
