"""Fixtures shared across test folders: the tiny real AVWorld (support.tiny_avworld) of the model and
objective tests, and datasets over it carrying the targets of the objectives a test names."""

import pytest
import support


@pytest.fixture(scope="session")
def avworld_manifest(tmp_path_factory):
    return support.tiny_avworld(tmp_path_factory.mktemp("avworld"))


@pytest.fixture(scope="session")
def make_dataset(avworld_manifest):
    """``make_dataset(window_seconds=None, objectives=None)`` over the tiny world (every AVWorld class
    label, background first)."""
    from ssm_mm.worlds.avworld import CLASSES

    return support.dataset_factory(avworld_manifest, ["background"] + [c.name for c in CLASSES])
