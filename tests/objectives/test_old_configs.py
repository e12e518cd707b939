"""Config files written before objectives were plugins still load: their head settings and loss
weights become the objectives section (saved run configs list every weight; only those of objectives
the file turns on count). On the command line the old keys name their new place."""

import pytest

from ssm_mm.config import ConfigError, load_config
from ssm_mm.objectives import AttributeConfig, CountConfig, LMConfig, ObjectiveConfig, VideoConfig

OLD = """model:
  d_model: 32
  video_target: 4
  count_head: 7
  order_head: true
  recall_head: 0
  recall_attribute: color
  recall_attributes: [color_of_circle]
  recall_values: []
train:
  loss_lm: 1.0
  loss_event: 1.0
  loss_speak: 3.0
  loss_video: 1.0
  loss_count: 1.0
  loss_order: 1.0
  loss_recall: 5.0
  loss_attribute: 2.0
  loss_answer: {count: 4}
"""


def test_an_old_config_file_loads_as_objectives(tmp_path):
    p = tmp_path / "old.yaml"
    p.write_text(OLD)
    o = load_config(p).objectives
    assert o.lm == LMConfig(answer_weights={"count": 4.0}) and o.speak == ObjectiveConfig(weight=3.0)
    assert o.video == VideoConfig(size=4) and o.count == CountConfig(max=7) and o.order == ObjectiveConfig()
    assert o.attribute == AttributeConfig(weight=2.0, names=["color", "color_of_circle"])
    assert o.recall is None  # off in the file (recall_head: 0): its listed weight does not turn it on
    assert load_config("configs/avworld_1h.yaml").objectives.attribute.names[:2] == [
        "color",
        "color_of_circle",
    ]


@pytest.mark.parametrize(
    "override, new",
    [("model.count_head=3", "objectives.count.max"), ("train.loss_speak=3", "objectives.speak.weight")],
)
def test_old_override_keys_name_their_new_place(override, new):
    with pytest.raises(ConfigError, match=f"moved to {new}"):
        load_config(None, [override])
