"""Fixtures shared by the probe scripts' tests: a tiny AVWorld dataset and a tiny model over its classes."""

from __future__ import annotations

import pytest
from support import tiny_model

from ssm_mm.worlds.avworld import CLASSES, generate


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """Manifest of 4 AVWorld streams of 6 s (scenes.jsonl beside it)."""
    return generate(tmp_path_factory.mktemp("probe_world"), streams=4, seconds=6.0, seed=9)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A saved, untrained tiny model whose event labels are the first four AVWorld classes."""
    labels = ["background"] + [c.name for c in CLASSES[:4]]
    out = tmp_path_factory.mktemp("probe_model") / "m"
    tiny_model(labels=labels).save_pretrained(out)
    return out
