"""Worlds as plugins: the registry, the typed data.worlds section, older configs' data.<world> keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ssm_mm import worlds
from ssm_mm.config import ConfigError, load_config, to_dict
from ssm_mm.evaluation.sweeps import sweep_spec
from ssm_mm.training.runs import resume_view, upgrade_view
from ssm_mm.worlds.avworld import AVWorldConfig

REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class PondConfig:
    frogs: int = 3
    seconds: float = 10.0

    def __post_init__(self):
        if self.frogs < 1:
            raise ValueError(f"PondConfig.frogs: must be >= 1 (got {self.frogs})")


class Pond(worlds.World):
    name = "pond"
    config = PondConfig
    sweep_values = {"frogs": [1.0, 5.0]}
    sweep_all = ("frogs",)

    def ensure(self, cache_dir, cfg, split, *, workers=1):
        raise AssertionError("not generated in this test")


@pytest.fixture
def pond():
    world = worlds.register(Pond())
    yield world
    worlds._REGISTRY.pop("pond")


def test_default_world_and_unknown_names_list_the_known_ones():
    cfg = load_config(None)
    assert cfg.data.world == worlds.DEFAULT == "avworld"
    assert cfg.data.worlds == {"avworld": AVWorldConfig()}  # the training defaults live with the world
    assert worlds.selected(cfg.data) == (worlds.get("avworld"), AVWorldConfig())
    with pytest.raises(ConfigError, match=r"data\.world: unknown world 'nope'; known: avworld"):
        load_config(None, ["data.world=nope"])
    with pytest.raises(ConfigError, match=r"data\.worlds\.nope: unknown world 'nope'; known: avworld"):
        load_config(None, ["data.worlds.nope.x=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'data\.worlds\.avworld\.streamz'.*streams"):
        load_config(None, ["data.worlds.avworld.streamz=1"])


def test_older_configs_data_world_sections_still_load(tmp_path):
    # a results folder's config.yaml written before worlds were plugins
    old = load_config(REPO / "results" / "avworld" / "1h" / "config.yaml")
    assert old.data.worlds["avworld"].streams == 1536 and old.data.worlds["avworld"].val_streams == 64
    (tmp_path / "old.yaml").write_text("data:\n  avworld:\n    streams: 7\n    seed: 3\n")
    cfg = load_config(tmp_path / "old.yaml", ["data.avworld.fps=8"])  # and an older override
    assert (cfg.data.worlds["avworld"].streams, cfg.data.worlds["avworld"].seed) == (7, 3)
    assert cfg.data.worlds["avworld"].fps == 8.0
    assert cfg == load_config(None, ["data.worlds.avworld.streams=7", "data.worlds.avworld.seed=3",
                                     "data.worlds.avworld.fps=8"])  # fmt: skip


def test_a_registered_world_is_typed_selected_and_swept(pond):
    cfg = load_config(None, ["data.world=pond", "data.worlds.pond.frogs=5"])
    world, pond_cfg = worlds.selected(cfg.data)
    assert world is pond and pond_cfg == PondConfig(frogs=5)
    with pytest.raises(ConfigError, match=r"data\.worlds\.pond: PondConfig\.frogs: must be >= 1"):
        load_config(None, ["data.worlds.pond.frogs=0"])
    with pytest.raises(ConfigError, match=r"data\.worlds\.pond\.seconds"):
        load_config(None, ["data.worlds.pond.seconds=abc"])
    assert sweep_spec("all", [], {}, pond) == {"frogs": [1.0, 5.0]}
    with pytest.raises(ValueError, match="unknown sweep knob 'fps' of world 'pond'; valid: frogs"):
        sweep_spec("fps", [], {}, pond)


def test_a_resume_view_of_an_older_run_reads_as_todays():
    """Checkpoints record the resume view; one written before worlds were plugins (data.avworld.*,
    no data.world, no size / sample_rate knobs) must compare equal to today's view of its config."""
    today = resume_view(to_dict(load_config(None, ["data.worlds.avworld.streams=16"])))
    older = {k.replace("data.worlds.avworld.", "data.avworld."): v for k, v in today.items()}
    for gone in ("data.world", "data.avworld.size", "data.avworld.sample_rate"):
        del older[gone]
    assert upgrade_view(older) == today
    assert upgrade_view(today) is today
    assert "data.worlds.avworld.val_streams" not in today  # which streams validate may change on resume
    changed = dict(older, **{"data.avworld.streams": 32})
    assert upgrade_view(changed)["data.worlds.avworld.streams"] == 32
