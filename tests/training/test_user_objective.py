"""A user's own objective, registered from outside the package (user_objective.py), trains through
the Trainer beside the built-in ones, is saved and loaded with the model, and the model streams."""

import json

import numpy as np
import pytest
import torch
from user_objective import Dialogue, DialogueConfig

from ssm_mm.config import ConfigError, load_config
from ssm_mm.models.multimodal import MultimodalSSM
from ssm_mm.objectives import objective_names
from ssm_mm.training.trainer import Trainer


def test_a_user_objective_trains_saves_loads_and_streams(tmp_path, tiny_world, tiny_overrides, capsys):
    assert "dialogue" in objective_names()
    over = [
        "objectives.dialogue.weight=0.5",
        "objectives.count.max=2",
        "train.max_steps=2",
        "eval.at_end=false",
    ]
    cfg = load_config(None, tiny_overrides(tmp_path, *tiny_world, *over))
    assert cfg.objectives.dialogue == DialogueConfig(weight=0.5)
    res = Trainer(cfg).run()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["loss_dialogue"] > 0 for r in rows)
    for r in rows:  # the total weighs it by objectives.dialogue.weight, after the built-in losses
        parts = r["loss_lm"] + r["loss_event"] + r["loss_speak"] + r["loss_count"] + 0.5 * r["loss_dialogue"]
        assert abs(r["loss"] - parts) < 1e-5 * max(1.0, r["loss"])
    assert "dialogue_mae" in res["eval"] and "dialogue mae" in capsys.readouterr().out
    model = MultimodalSSM.from_pretrained(tmp_path / "run" / "final")
    assert list(model.heads) == ["lm", "event", "speak", "count", "dialogue"]
    assert (
        isinstance(model.objectives["dialogue"], Dialogue) and model.objectives["dialogue"].cfg.weight == 0.5
    )
    saved = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert saved["objectives"]["dialogue"] == {"weight": 0.5, "weight_from": {}, "scale": 10.0}
    s = model.stream()
    rng = np.random.default_rng(0)
    s.push_video(rng.integers(0, 255, (8, 64, 64, 3), dtype=np.uint8), np.arange(8) / 4)
    s.push_audio(rng.standard_normal(32000).astype(np.float32) * 0.1, 16000, 0.0)
    s.close()
    assert len(s.segment_labels()) == 4
    with torch.no_grad():
        assert model.heads["dialogue"](torch.zeros(1, model.cfg.d_model)).shape == (1, 1)


def test_a_user_objectives_config_is_typed_and_ranged():
    with_it = load_config(None, ["objectives.dialogue.scale=5"])
    assert with_it.objectives.dialogue == DialogueConfig(scale=5.0)
    assert load_config(None, []).objectives.dialogue is None  # registered, off until configured
    with pytest.raises(ConfigError, match=r"objectives.dialogue.scale=0.0: must be > 0"):
        load_config(None, ["objectives.dialogue.scale=0"])
    with pytest.raises(ConfigError, match="Valid keys here: .*dialogue"):
        load_config(None, ["objectives.dialog.weight=1"])
