"""Fixtures for the streaming tests: a tiny model and two real AVWorld streams, decoded as the dataset
decodes them (mp4 with an audio track starting late, jittered and dropped frames, clock start 100 s)."""

import pytest
from streaming_helpers import Media, tiny_model
from support import single_thread  # noqa: F401  (autouse: one torch thread in these tests)

from ssm_mm.data.manifest import read_manifest
from ssm_mm.media import decode_audio, decode_video
from ssm_mm.models.multimodal import MultimodalSSM
from ssm_mm.worlds.avworld import generate


@pytest.fixture(scope="session")
def avworld_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("avworld_stream")
    return generate(
        out, streams=2, seconds=6.0, seed=5, jitter=0.02, drop=0.1, offset=0.3, clock=100.0
    ).parent


@pytest.fixture(scope="session")
def media(avworld_dir) -> list[Media]:
    """Both AVWorld streams decoded at the model's fps and rate, on the stream clock."""
    out = []
    for spec in read_manifest(avworld_dir / "manifest.jsonl").streams:
        v = decode_video(spec.video, fps=4.0)
        a = decode_audio(spec.video, sample_rate=16000)
        out.append(
            Media(spec.video, spec.t0, v.frames, spec.t0 + v.timestamps, a.samples, 16000, spec.t0 + a.t0)
        )
    return out


@pytest.fixture
def model() -> MultimodalSSM:
    return tiny_model()
