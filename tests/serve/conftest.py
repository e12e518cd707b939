"""Fixtures for the server tests: a tiny random-weight model, short real AVWorld mp4 streams (video
with a late-starting audio track, jittered and dropped frames) and a server on a free loopback port."""

from __future__ import annotations

import pytest
import torch
from support import tiny_model

pytest.importorskip("websockets", reason="the serve extra is not installed (pip install -e '.[serve]')")

from ssm_mm.serve import ServeConfig, Server  # noqa: E402
from ssm_mm.streaming.drive import decode_stream_media  # noqa: E402
from ssm_mm.worlds.avworld import CLASSES, generate  # noqa: E402

LABELS = ["background"] + [c.name for c in CLASSES]


@pytest.fixture(autouse=True)
def single_thread():
    """One torch thread (a tick is a few dozen tokens; on the busy 2-core machine more only spin)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve_world")
    manifest = generate(out, streams=2, seconds=5.0, seed=5, jitter=0.02, drop=0.1, offset=0.3)
    return sorted((manifest.parent / "media").glob("*.mp4"))


@pytest.fixture(scope="session")
def model():
    return tiny_model(0, LABELS)


@pytest.fixture(scope="session")
def media(world):
    """Both streams decoded as the CLI decodes them (video at 4 fps, audio at the file's rate)."""
    return [decode_stream_media(p, p, fps=4.0) for p in world]


@pytest.fixture
def make_server(model):
    """``make_server(**config)`` -> a started Server on a free port (stopped after the test)."""
    servers = []

    def make(**kw):
        s = Server(model, ServeConfig(port=0, **kw)).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()
