import pytest
from support import BAD_CONFIG_VALUES

from ssm_mm.config import Config, ConfigError, load_config, save_config


def test_defaults_are_typed():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.model.d_model == 128 and cfg.model.temporal.time_aware_dt is True


def test_yaml_then_dotlist_merge(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  d_model: 64\n  pattern: MMA\ntrain:\n  max_steps: 7\n")
    cfg = load_config(
        p, ["model.d_model=96", "model.temporal.embedding=false", "logging.wandb.mode=disabled"]
    )
    assert cfg.model.d_model == 96  # override beats YAML
    assert cfg.model.pattern == "MMA"  # YAML beats default
    assert cfg.train.max_steps == 7
    assert cfg.model.temporal.embedding is False
    assert cfg.logging.wandb.mode == "disabled"
    assert cfg.model.d_state == 32  # default kept


def test_several_files_merge_in_order(tmp_path):
    recipe, variant = tmp_path / "recipe.yaml", tmp_path / "variant.yaml"
    recipe.write_text("model:\n  d_model: 64\n  pattern: MMA\ntrain:\n  max_steps: 7\n")
    variant.write_text("model:\n  pattern: AAA\n")
    cfg = load_config([recipe, str(variant)], ["train.max_steps=9"])
    assert (cfg.model.d_model, cfg.model.pattern, cfg.train.max_steps) == (64, "AAA", 9)
    assert load_config([variant, recipe]).model.pattern == "MMA"  # the later file wins
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config([recipe, tmp_path / "missing.yaml"])


def test_typo_names_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.d_modle=3"])
    msg = str(e.value)
    assert "d_modle" in msg and "d_model" in msg and "d_state" in msg


def test_typo_in_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("trian:\n  max_steps: 3\n")
    with pytest.raises(ConfigError, match="trian.*Valid keys.*train"):
        load_config(p)


def test_wrong_type_and_bad_values():
    with pytest.raises(ConfigError, match="d_model"):
        load_config(None, ["model.d_model=abc"])
    with pytest.raises(ConfigError, match="pattern"):
        load_config(None, ["model.pattern=MMX"])
    # the objectives' own checks (tests/objectives: answer weights, attribute names, ranges)
    with pytest.raises(ConfigError, match=r"objectives.lm.answer_weights=\{'count': -1.0\}"):
        load_config(None, ["objectives.lm.answer_weights={count: -1.0}"])
    with pytest.raises(ConfigError, match=r"names=\['color_of_circle', ''\].*non-empty list of distinct"):
        load_config(None, ["objectives.attribute.names=[color_of_circle, '']"])
    assert load_config(None, ["objectives.attribute.names=[color]"]).objectives.attribute.names == ["color"]
    with pytest.raises(
        ConfigError, match="unknown config key 'objectives.cnt'. Valid keys here: attribute, count"
    ):
        load_config(None, ["objectives.cnt.max=3"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["model.d_model"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("does/not/exist.yaml")


def test_null_window_and_save_roundtrip(tmp_path):
    cfg = load_config(None, ["model.attn_window=null"])
    assert cfg.model.attn_window is None
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.glob("*.yaml"))
    assert files, "configs/ must ship at least default.yaml"
    for f in files:
        load_config(f)


def test_attn_windows_per_layer():
    cfg = load_config(None, ["model.pattern=MAMA", "model.attn_windows=[8,null]"])
    assert cfg.model.layer_windows() == [8, None]
    assert load_config(None, ["model.pattern=MAMA", "model.attn_window=5"]).model.layer_windows() == [5, 5]
    with pytest.raises(ConfigError, match=r"attn_windows=\[8\] has 1 entries .* 2 attention layers"):
        load_config(None, ["model.pattern=MAMA", "model.attn_windows=[8]"])
    with pytest.raises(ConfigError, match=r"attn_windows=\[8, 0\]: each must be >= 1"):
        load_config(None, ["model.pattern=MAMA", "model.attn_windows=[8,0]"])
    with pytest.raises(ConfigError, match="attn_windows"):
        load_config(None, ["model.attn_windows=[abc]"])


@pytest.mark.parametrize(
    "override, key",
    [
        *BAD_CONFIG_VALUES,
        ("train.keep_last=0", "train.keep_last"),
        ("train.grad_accum=0", "train.grad_accum"),
        ("model.headdim=0", "model.headdim"),
        ("model.attn_heads=0", "model.attn_heads"),
        ("train.lr=inf", "train.lr"),
        ("train.betas=[0.9,1.0]", "train.betas"),
        ("train.min_lr_ratio=2", "train.min_lr_ratio"),
        ("objectives.event.weight=-1", "objectives.event.weight"),
        ("objectives.count.max=0", "objectives.count.max"),
        ("data.window_seconds=0", "data.window_seconds"),
        ("logging.log_every=0", "logging.log_every"),
        ("eval.speak_threshold=1.5", "eval.speak_threshold"),
        ("model.temporal.min_period=0", "model.temporal.min_period"),
        ("model.temporal.rate_floor=-0.1", "model.temporal.rate_floor"),
        ("model.temporal.rate_floor=nan", "model.temporal.rate_floor"),
        ("data.worlds.avworld.streams=0", "data.worlds.avworld: AVWorldConfig.streams"),
        ("data.worlds.avworld.fps=-1", "data.worlds.avworld: AVWorldConfig.fps"),
        ("data.avworld.fps=-1", "data.worlds.avworld: AVWorldConfig.fps"),  # an older config's key
        ("objectives.speak.weight_from={0: 1.0}", "objectives.speak.weight_from"),  # steps count from 1
        ("objectives.speak.weight_from={5: -1.0}", "objectives.speak.weight_from"),
        ("objectives.speak.weight_from={5: nan}", "objectives.speak.weight_from"),
        ("objectives.speak.weight_from={5: inf}", "objectives.speak.weight_from"),
        ("objectives.speak.weight_from={a: 1.0}", "objectives.speak.weight_from"),
        ("objectives.speak.weight_from=3", "objectives.speak.weight_from"),
    ],
)
def test_values_out_of_range_are_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_rate_floor_needs_the_time_aware_step():
    assert load_config(None, ["model.temporal.rate_floor=0.05"]).model.temporal.rate_floor == 0.05
    with pytest.raises(ConfigError, match=r"rate_floor=0\.05: .*time_aware_dt=true"):
        load_config(None, ["model.temporal.rate_floor=0.05", "model.temporal.time_aware_dt=false"])


def test_ranges_leave_the_defaults_and_edges_alone():
    cfg = load_config(
        None, ["train.max_steps=1", "train.grad_clip=inf", "train.eval_every=0", "train.lr=1e-30"]
    )
    assert cfg.train.max_steps == 1 and cfg.train.grad_clip == float("inf")
    with pytest.raises(ConfigError, match=r"model.d_model=60 must be divisible by model.headdim"):
        load_config(None, ["model.d_model=30"])  # in range but not compatible with the heads


def test_every_numeric_field_has_a_range():
    """A new numeric config field must say what values it takes (config.RANGES)."""
    import dataclasses
    import typing

    from ssm_mm import config as C

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            t = hints[f.name]
            if dataclasses.is_dataclass(t):
                yield from walk(t, f"{prefix}{f.name}.")
            elif any(
                x in (int, float)
                for x in (t, *typing.get_args(t), *sum(map(typing.get_args, typing.get_args(t)), ()))
            ):
                yield f"{prefix}{f.name}"

    sections = {
        "model": C.ModelConfig,
        "data": C.DataConfig,
        "train": C.TrainConfig,
        "logging": C.LoggingConfig,
    }
    sections["eval"] = C.EvalConfig
    from ssm_mm.objectives import objective_class, objective_names

    sections.update({f"objectives.{n}": objective_class(n).Config for n in objective_names()})
    numeric = [k for name, cls in sections.items() for k in walk(cls, f"{name}.")]
    # mappings/lists checked where they are read: interleave.bad_answer_weights, the sweep knobs,
    # objectives.base.check_weight_from
    numeric = [
        k
        for k in numeric
        if k not in ("objectives.lm.answer_weights", "eval.sweep_values", "eval.sweeps")
        and not k.endswith(".weight_from")
    ]
    missing = [k for k in numeric if k not in C.ranges()]
    assert not missing, f"add these to ssm_mm.config.RANGES (objectives: their config's RANGES): {missing}"
