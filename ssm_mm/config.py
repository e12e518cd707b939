"""Typed configuration for every part of ssm_mm, and the one merge that builds a run's config.

Merge order (lingua-style): dataclass defaults -> YAML file -> ``key=value`` overrides (OmegaConf
dotlist). Every node is a structured OmegaConf config, so an unknown key or a value of the wrong
type fails at once with a :class:`ConfigError` that lists the valid keys of that section.

    cfg = load_config("configs/default.yaml", ["model.d_model=256", "train.max_steps=2000"])
    cfg.model.d_model  # 256

Featurizer and tokenizer settings are defined next to their components
(``ssm_mm.data.featurize.FeaturizerConfig``, ``ssm_mm.data.tokenizer.TokenizerConfig``) and are
only collected here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException


class ConfigError(ValueError):
    """A config file or override is invalid (unknown key, wrong type, bad value)."""


# --------------------------------------------------------------------------------------------- model


@dataclass
class TemporalConfig:
    """How the model is told about real time (SPEC §6)."""

    embedding: bool = True  # temporal embedding (elapsed-time + periodic features); off = no time input
    time_aware_dt: bool = True  # SSM decays by real elapsed seconds; off = plain Mamba-2 (λ = γ = dt)
    n_periodic: int = 8  # number of sin/cos pairs of t (bounded periodic features)
    min_period: float = 0.5  # seconds; periods are log-spaced in [min_period, max_period]
    max_period: float = 600.0
    max_gap: float = 60.0  # elapsed-time features saturate at this many seconds (bounded input)
    train_clock_offset: float = 86400.0  # training adds a random clock offset in [0, this) seconds
    # SSM decay-rate init: |A|·softplus(b_λ) spans [rate_min, rate_max] per second across heads.
    rate_min: float = 0.002
    rate_max: float = 10.0
    # Memory horizon: every SSM head forgets at least this much per second, on top of its learned rate
    # (log-decay −(|A|·softplus(·) + rate_floor)·Δt). The state then settles within a few
    # 1/rate_floor seconds of any stream, so streams longer than that show no state older than training
    # did. 0 = off (heads may hold for as long as they learn to).
    rate_floor: float = 0.0


@dataclass
class ModelConfig:
    """Hybrid backbone + multimodal model sizes. Pattern letters: M = SSM mixer, A = attention."""

    d_model: int = 128
    pattern: str = "MMMA"
    # SSM mixer (Mamba-2)
    d_state: int = 32
    headdim: int = 32
    expand: int = 2
    ngroups: int = 1
    d_conv: int = 4
    # pairs of state dimensions that also rotate by a learned, input-dependent angle per token (a
    # complex-valued state; 0 = plain real decay; at most d_state / 2; layers/mamba2.py)
    rotate_pairs: int = 0
    # the SSM input gain γ_t per token and head: "softplus" (> 0 for every token) or "relu" (a learned
    # scale times relu(w·u_t + b): exactly 0 where the head ignores a token; layers/mamba2.py)
    gain: str = "softplus"
    chunk_size: int = 64
    # attention
    attn_heads: int = 4
    attn_kv_heads: int = 4
    attn_window: int | None = 256  # tokens; None = full causal attention (unbounded cache)
    # one window per "A" of the pattern, in order, overriding attn_window: e.g. pattern "MMAMMA" with
    # [256, 1024] mixes a local layer and a long one (null = full attention for that layer)
    attn_windows: list[int | None] | None = None
    rope_base: float = 10000.0
    rope_positions: str = "index"  # "index" (running token index) | "time" (seconds, ablation)
    rope_time_scale: float = 10.0  # rotary position = t * scale when rope_positions == "time"
    # MLP after every mixer
    mlp_ratio: float = 2.0  # hidden = mlp_ratio * d_model (gated, SwiGLU)
    norm_eps: float = 1e-5
    kernels: str = "auto"  # "auto" | "torch" | "cuda"
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    # multimodal frontends (SPEC §6); the heads belong to the objectives (the ``objectives`` section)
    patch_size: int = 32  # 64x64 frames -> 2x2 = 4 patch tokens
    tie_embeddings: bool = True

    def layer_windows(self) -> list[int | None]:
        """The attention window of each "A" in ``pattern``, in order (ValueError if ``attn_windows`` does
        not give one per "A", or gives one below 1)."""
        n_attn = self.pattern.count("A")
        if self.attn_windows is None:
            return [self.attn_window] * n_attn
        windows = list(self.attn_windows)
        if len(windows) != n_attn:
            raise ValueError(
                f"model.attn_windows={windows} has {len(windows)} entries but model.pattern='{self.pattern}' "
                f"has {n_attn} attention layers: give one window per 'A'"
            )
        if any(w is not None and w < 1 for w in windows):
            raise ValueError(f"model.attn_windows={windows}: each must be >= 1 or null (full attention)")
        return windows


# ---------------------------------------------------------------------------------- data / train


def _default_world() -> str:
    from ssm_mm.worlds import DEFAULT

    return DEFAULT


def _world_configs() -> dict[str, Any]:
    from ssm_mm.worlds import default_configs

    return default_configs()


@dataclass
class CurriculumConfig:
    """A length curriculum over the training windows (``ssm_mm.training.schedule.SlotSchedule``).

    Stage ``i`` runs up to optimizer step ``steps[i]`` (exclusive; the last stage to the end of the
    run). During stage ``i`` a batch slot walks at most ``ceil(max_seconds[i] / data.window_seconds)``
    windows of a stream (its first ones), then starts its next stream from a fresh state; 0 = no cap.
    The default, one stage without a cap, is off. E.g. 30-s pieces for 200 steps, 2 minutes until
    step 500, then whole streams: ``data.curriculum.steps=[200,500] data.curriculum.max_seconds=[30,120,0]``.
    """

    steps: list[int] = field(default_factory=list)  # ascending stage ends, in optimizer steps
    max_seconds: list[float] = field(default_factory=lambda: [0.0])  # len(steps) + 1; 0 = whole streams


@dataclass
class DataConfig:
    manifest: str | None = None  # a §4 JSONL file; None = the world ``world`` generated into cache_dir
    val_manifest: str | None = None
    cache_dir: str = "cache"
    window_seconds: float = 10.0
    on_error: str = "raise"  # "raise" | "skip"
    num_workers: int = 0
    feature_cache: bool = True
    # MiB of built training streams kept in memory per process (tokens, targets, in-memory features;
    # 64 KiB per memory-mapped feature array), so a stream drawn again is not rebuilt: the hour
    # config's 1656 streams take ~430 MiB. 0 = only the streams the batch slots are walking
    memory_cache_mb: float = 1024.0
    # The built-in world (ssm_mm.worlds) that trains and validates when no manifest is given, and the
    # evaluation's held-out and sweep streams: its name, and {name: config} of every registered world,
    # each typed by that world's own config dataclass (data.worlds.<name>.<knob>=...). Older configs'
    # data.<name> sections are read as data.worlds.<name>.
    world: str = field(default_factory=_default_world)
    worlds: dict[str, Any] = field(default_factory=_world_configs)
    # Extra training sources mixed into the main one (``manifest``, else the world ``world``): their
    # streams join the main source's in one training set, shuffled together (a batch mixes them),
    # with the union of their event labels; validation, and the training length T of eval.lengths,
    # stay the main source's. An entry is a manifest path (relative to the working directory, like
    # ``manifest``) or a mapping of world knobs: the config data.worlds.<world> with those knobs
    # replaced, generated into cache_dir like the main world (its "train" split). Without a ``world``
    # key the knobs are the run's own world's (data.world) and apply only while it is the main source
    # (``manifest`` null; otherwise the entry is not used, with a notice); to mix a world into a
    # manifest's streams (or mix another world) name it. Without a ``seed`` knob an entry draws
    # streams of its own, seeded by the section's seed + i + 1 (entry i).
    #   data.mix=[extra.jsonl]   'data.mix=[{seconds:120,streams:32}]'   'data.mix=[{world:NAME,seed:7}]'
    mix: list[Any] = field(default_factory=list)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    # Join each batch slot's training streams end to end on one clock into runs of at least this many
    # seconds, the recurrent state carried across every join (each stream keeps its own dialogue,
    # events and targets, as the evaluation joins a manifest's streams into its long streams): short
    # clips of any manifest then train the state at ages far past any one of them. A curriculum cap
    # counts a run's windows. 0 = every stream starts from a fresh state.
    join_seconds: float = 0.0


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    seed: int = 0
    max_steps: int = 700
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    bf16: bool = False
    modality_dropout: float = 0.0
    ckpt_every: int = 100
    keep_last: int = 2
    eval_every: int = 0  # 0 = only at the end
    resume: bool = False  # continue this run folder's run from its newest verified checkpoint
    # weights only (a checkpoint file, a run folder or a save_pretrained folder) for a run starting at
    # step 0; optimizer, schedule, RNG and data position start fresh (training.runs)
    init_from: str | None = None
    threads: int = 0  # 0 = torch default
    parallel: str = "ddp"  # with torchrun: "ddp" (replicated) | "fsdp" (FSDP2 fully_shard per block)
    # the model's forward under torch.compile (one graph; lengths padded to <= 8 buckets per octave;
    # the losses stay eager): one compile per length bucket, tens of seconds to minutes on a CPU
    compile: bool = False


@dataclass
class WandbConfig:
    mode: str = (
        "auto"  # "auto" (online iff WANDB_API_KEY is set, else offline) | "online" | "offline" | "disabled"
    )
    project: str = "ssm_mm"
    entity: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggingConfig:
    log_every: int = 10
    progress: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class EvalConfig:
    """The streaming evaluation harness (``eval/run.py``, end of ``train.py``; ``ssm_mm.evaluation``)."""

    tolerance: float = 1.0  # seconds, for proactive responses
    max_answer_tokens: int = 16
    out_dir: str | None = None  # default: <run_dir>/eval (train.py), runs/eval/<time> (eval/run.py)
    streams: int = 0  # 0 = all streams of the eval manifest
    speak_threshold: float = 0.5  # the session speaks when sigmoid(speak head) > this
    span_seconds: float = 1.0  # coarse (AVE-style per-second) label accuracy
    batch_streams: int = 0  # streams stepped together in one batch; 0 = all streams of a dataset
    threads: int = 1  # torch threads while evaluating (0 = torch's default)
    at_end: bool = True  # train.py: run the streaming harness on the validation set at the end
    plots: bool = True
    plot_streams: int = 3  # per-stream timeline PNGs per dataset
    # Robustness sweeps over the knobs of the world data.world (held-out streams generated into
    # data.cache_dir, cached): sweep=fps sweep_values=[2,4,8], or several at once: sweeps.fps=[2,4,8]
    # sweeps.drop=[0,0.3]; sweep=all runs the world's sweeps at their default values. The knobs are the
    # world's (its sweep_values); the base world is data.worlds.<data.world>.
    sweep: str | None = None
    sweep_values: list[float] = field(default_factory=list)
    sweeps: dict[str, list[float]] = field(default_factory=dict)
    sweep_streams: int = 4
    sweep_seconds: float = 30.0
    sweep_seed: int = 2000
    # Long streams (ssm_mm.evaluation.long): scores at these multiples of the training length T (1 = the
    # evaluated streams themselves), on long_streams held-out streams per multiple (the world's, else
    # the evaluated manifest's streams joined end to end); scores by stream age in bins of age_bin
    # seconds (0 = T). T is the main training source's stream length (the world's, else the evaluated
    # manifest's median duration): streams mixed in by data.mix do not change it
    lengths: list[float] = field(default_factory=lambda: [1.0, 10.0])
    long_streams: int = 4
    age_bin: float = 0.0


def _featurizer_config():
    from ssm_mm.data.featurize import FeaturizerConfig

    return FeaturizerConfig()


def _tokenizer_config():
    from ssm_mm.data.tokenizer import TokenizerConfig

    return TokenizerConfig()


def _objectives_config():
    from ssm_mm.objectives import objectives_config

    return objectives_config()


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    features: Any = field(default_factory=_featurizer_config)
    tokenizer: Any = field(default_factory=_tokenizer_config)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # what the model is trained for: one section per registered objective (ssm_mm.objectives), typed
    # by its own config; lm, event and speak are always on, the others off (null) until given, e.g.
    # objectives.count.max=7 or `order: {}` in a file; each has a weight in the total loss
    objectives: Any = field(default_factory=_objectives_config)


# ------------------------------------------------------------------------------------------ merge


def _valid_keys(node: Any, dotted: str) -> list[str]:
    """Valid keys of the deepest existing section on the path ``dotted`` (for error messages)."""
    parts = [p for p in dotted.split(".") if p]
    for p in parts[:-1]:
        if isinstance(node, DictConfig) and p in node and isinstance(node[p], DictConfig):
            node = node[p]
        else:
            break
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


# keys that moved into the objectives section (issue 30): old key -> where it lives now
MOVED = {
    "model.video_target": "objectives.video.size",
    "model.count_head": "objectives.count.max",
    "model.order_head": "objectives.order (an empty section {} turns it on)",
    "model.recall_head": "objectives.recall.size",
    "model.recall_attribute": "objectives.attribute.names",
    "model.recall_attributes": "objectives.attribute.names",
    "model.recall_values": "objectives.attribute.values",
    "train.loss_answer": "objectives.lm.answer_weights",
    **{f"train.loss_{k}": f"objectives.{k}.weight" for k in ("lm", "event", "speak", "video", "count")},
    **{f"train.loss_{k}": f"objectives.{k}.weight" for k in ("order", "recall", "attribute")},
}


def _explain(exc: OmegaConfBaseException, schema: DictConfig, source: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or ""
    if key in MOVED:
        return ConfigError(f"{source}: config key '{key}' moved to {MOVED[key]}")
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        valid = _valid_keys(schema, key)
        return ConfigError(f"{source}: unknown config key '{key}'. Valid keys here: {', '.join(valid)}")
    msg = str(exc).splitlines()[0]
    return ConfigError(f"{source}: invalid value for '{key}': {msg}")


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as e:
        raise _explain(e, base, source) from None


def load_config(
    path: str | os.PathLike | Sequence[str | os.PathLike] | None = None, overrides: list[str] | None = None
) -> Config:
    """Build a run's config: dataclass defaults -> YAML file(s) ``path`` -> ``key=value`` overrides.

    Several files merge in order, later keys winning (e.g. a recipe, then a model variant:
    ``[configs/default.yaml, configs/baseline_ssm.yaml]``). Returns a typed :class:`Config`
    object (plain dataclasses). Raises :class:`ConfigError` naming the bad key and the valid ones.
    """
    schema = OmegaConf.structured(Config)
    cfg = schema
    paths = [] if path is None else [path] if isinstance(path, (str, os.PathLike)) else list(path)
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = OmegaConf.load(p)
        except Exception as e:  # yaml errors
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, DictConfig):
            raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(loaded).__name__}")
        if loaded:
            cfg = _merge(cfg, _drop_removed(_upgrade_objectives(_upgrade(loaded))), str(p))
    for item in overrides or []:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key = item.split("=", 1)[0].strip()
        item = upgrade_key(key) + "=" + item.split("=", 1)[1]
        dot = _parse_override(item)
        cfg = _merge(cfg, dot, f"override '{key}'")
    for name in cfg.data.worlds:  # each world's own checks, named by its section
        try:
            OmegaConf.to_object(cfg.data.worlds[name])
        except ValueError as e:
            raise ConfigError(f"data.worlds.{name}: {e}") from None
        except OmegaConfBaseException:
            pass  # reported with its key below
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise _explain(e, schema, "config") from None
    except ValueError as e:  # a component config's own __post_init__ check
        raise ConfigError(f"config: {e}") from None
    validate_config(obj)
    return obj


def _parse_override(item: str) -> DictConfig:
    """One ``key=value`` override as a config; a value typed as ``{seconds:120}`` (no space after the
    colon, which YAML reads as one key ``"seconds:120"`` or refuses when nested) is read as the
    mapping ``{seconds: 120}`` that was meant. ConfigError when the value is not valid YAML."""
    try:
        dot, err = OmegaConf.from_dotlist([item]), None
    except (OmegaConfBaseException, yaml.YAMLError) as e:
        dot, err = None, e
    if err is not None or _glued_keys(OmegaConf.to_container(dot)):
        try:
            return OmegaConf.from_dotlist([_unglue(item)])
        except (OmegaConfBaseException, yaml.YAMLError):
            pass
    if err is not None:
        raise ConfigError(f"override '{item}': {' '.join(str(err).split())}") from None
    return dot


def _glued_keys(node: Any) -> bool:
    """Whether a parsed override holds a mapping key like ``"seconds:120"`` with no value: YAML reads
    ``{seconds:120}`` (no space after the colon, as one types on a command line) as that one key."""
    if isinstance(node, dict):
        return any((isinstance(k, str) and ":" in k and v is None) or _glued_keys(v) for k, v in node.items())
    return isinstance(node, list) and any(_glued_keys(v) for v in node)


def _unglue(item: str) -> str:
    """``key=[{a:1,b:x}]`` as ``key=[{a: 1,b: x}]``: a space after each colon that follows a word,
    a closing bracket or a quote, except before a slash or backslash (``C:/x``, ``s3://x`` stay)."""
    key, value = item.split("=", 1)
    return key + "=" + re.sub(r"(?<=[\w\]\}\"'])\:(?=[^\s/\\])", ": ", value)


# Allowed range of every numeric field of the sections above (lo, hi; None = unbounded; a
# "(" / ")" marks an open end). NaN is never allowed; +-inf only where a bound admits it (grad_clip).
# Featurizer and tokenizer settings are checked by their own __post_init__. A new numeric field needs
# an entry here (tests/test_config.py checks that every one has).
RANGES: dict[str, tuple[str, float | None, float | None, str]] = {
    "model.d_model": ("[", 1, None, ")"),
    "model.d_state": ("[", 1, None, ")"),
    "model.headdim": ("[", 1, None, ")"),
    "model.expand": ("[", 1, None, ")"),
    "model.ngroups": ("[", 1, None, ")"),
    "model.d_conv": ("[", 1, None, ")"),
    "model.rotate_pairs": ("[", 0, None, ")"),
    "model.chunk_size": ("[", 1, None, ")"),
    "model.attn_heads": ("[", 1, None, ")"),
    "model.attn_kv_heads": ("[", 1, None, ")"),
    "model.attn_window": ("[", 1, None, ")"),
    "model.rope_base": ("(", 1, None, ")"),
    "model.rope_time_scale": ("(", 0, None, ")"),
    "model.mlp_ratio": ("(", 0, None, ")"),
    "model.norm_eps": ("(", 0, 1, "]"),
    "model.patch_size": ("[", 1, None, ")"),
    "model.temporal.n_periodic": ("[", 0, None, ")"),
    "model.temporal.min_period": ("(", 0, None, ")"),
    "model.temporal.max_period": ("(", 0, None, ")"),
    "model.temporal.max_gap": ("(", 0, None, ")"),
    "model.temporal.train_clock_offset": ("[", 0, None, ")"),
    "model.temporal.rate_min": ("(", 0, None, ")"),
    "model.temporal.rate_max": ("(", 0, None, ")"),
    "model.temporal.rate_floor": ("[", 0, None, ")"),
    "data.window_seconds": ("(", 0, None, ")"),
    "data.num_workers": ("[", 0, None, ")"),
    "data.memory_cache_mb": ("[", 0, None, ")"),
    "data.curriculum.steps": ("[", 1, None, ")"),  # optimizer steps; ascending (validate_config)
    "data.curriculum.max_seconds": ("[", 0, None, ")"),  # 0 = no cap
    "data.join_seconds": ("[", 0, None, ")"),  # 0 = no joins
    "train.seed": ("[", 0, 2**63 - 1, "]"),
    "train.max_steps": ("[", 1, None, ")"),
    "train.batch_size": ("[", 1, None, ")"),
    "train.grad_accum": ("[", 1, None, ")"),
    "train.lr": ("(", 0, None, ")"),
    "train.min_lr_ratio": ("[", 0, 1, "]"),
    "train.warmup_steps": ("[", 0, None, ")"),
    "train.weight_decay": ("[", 0, None, ")"),
    "train.betas": ("[", 0, 1, ")"),
    "train.grad_clip": ("(", 0, math.inf, "]"),  # inf = no clipping
    "train.modality_dropout": ("[", 0, 1, ")"),
    "train.ckpt_every": ("[", 1, None, ")"),
    "train.keep_last": ("[", 1, None, ")"),
    "train.eval_every": ("[", 0, None, ")"),  # 0 = only at the end
    "train.threads": ("[", 0, None, ")"),  # 0 = torch's default
    "logging.log_every": ("[", 1, None, ")"),
    "eval.tolerance": ("[", 0, None, ")"),
    "eval.max_answer_tokens": ("[", 1, None, ")"),
    "eval.streams": ("[", 0, None, ")"),
    "eval.speak_threshold": ("[", 0, 1, "]"),
    "eval.span_seconds": ("(", 0, None, ")"),
    "eval.batch_streams": ("[", 0, None, ")"),
    "eval.threads": ("[", 0, None, ")"),
    "eval.plot_streams": ("[", 0, None, ")"),
    "eval.sweep_streams": ("[", 1, None, ")"),
    "eval.sweep_seconds": ("(", 0, None, ")"),
    "eval.sweep_seed": ("[", 0, None, ")"),
    "eval.lengths": ("[", 1, None, ")"),
    "eval.long_streams": ("[", 1, None, ")"),
    "eval.age_bin": ("[", 0, None, ")"),
}
# data.worlds.<name>.* are checked by each world's own config dataclass (ssm_mm.worlds).


def _in_range(v: float, rule: tuple[str, float | None, float | None, str]) -> bool:
    left, lo, hi, right = rule
    if math.isnan(v):
        return False
    lo_ok = lo is None or (v > lo if left == "(" else v >= lo)
    hi_ok = (v < math.inf) if hi is None else (v < hi if right == ")" else v <= hi)
    return lo_ok and hi_ok and (v > -math.inf)


def _range_text(rule: tuple[str, float | None, float | None, str]) -> str:
    left, lo, hi, right = rule
    if hi is None:
        return f"{'>' if left == '(' else '>='} {lo:g}"
    return f"in {left}{lo:g}, {hi:g}{right}"


def ranges() -> dict[str, tuple[str, float | None, float | None, str]]:
    """:data:`RANGES` and every registered objective's (``objectives.<name>.<field>``, from its config's
    own ``RANGES``)."""
    from ssm_mm.objectives.base import ranges as objective_ranges

    return {**RANGES, **objective_ranges()}


def check_ranges(cfg: Config) -> None:
    """:class:`ConfigError` naming the first value outside its :data:`RANGES` entry, so a bad value
    fails before any work."""
    for key, rule in ranges().items():
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part, None)  # None: an objective that is off
        for v in node if isinstance(node, (list, tuple)) else [node]:
            if v is not None and not _in_range(float(v), rule):
                raise ConfigError(f"{key}={node!r}: must be {_range_text(rule)}")
    t = cfg.model.temporal
    if t.max_period < t.min_period or t.rate_max < t.rate_min:
        raise ConfigError(
            "model.temporal: max_period must be >= min_period and rate_max >= rate_min "
            f"(got periods {t.min_period}..{t.max_period}, rates {t.rate_min}..{t.rate_max})"
        )
    if cfg.model.gain == "relu" and not t.time_aware_dt:
        raise ConfigError(
            "model.gain='relu' needs the time-aware step (model.temporal.time_aware_dt=true): in plain "
            "Mamba-2 one dt_t is both the decay step and the input gain"
        )
    if t.rate_floor > 0 and not t.time_aware_dt:
        raise ConfigError(
            f"model.temporal.rate_floor={t.rate_floor!r}: a floor in decay per second needs the "
            "time-aware step (model.temporal.time_aware_dt=true); plain Mamba-2 decays per token"
        )


def validate_config(cfg: Config) -> None:
    """Value ranges (:func:`check_ranges`), then cross-field checks that types alone cannot express."""
    check_ranges(cfg)
    m = cfg.model
    bad = set(m.pattern) - set(LAYER_LETTERS)
    if not m.pattern or bad:
        raise ConfigError(f"model.pattern='{m.pattern}': letters must be from {sorted(LAYER_LETTERS)}")
    if m.kernels not in ("auto", "torch", "cuda"):
        raise ConfigError(f"model.kernels='{m.kernels}': expected auto | torch | cuda")
    if m.rope_positions not in ("index", "time"):
        raise ConfigError(f"model.rope_positions='{m.rope_positions}': expected index | time")
    if m.gain not in ("softplus", "relu"):
        raise ConfigError(f"model.gain='{m.gain}': expected softplus | relu")
    d_inner = m.expand * m.d_model
    if d_inner % m.headdim:
        raise ConfigError(
            f"model.expand*model.d_model={d_inner} must be divisible by model.headdim={m.headdim}"
        )
    if (d_inner // m.headdim) % m.ngroups:
        raise ConfigError(
            f"model.ngroups={m.ngroups} must divide the number of SSM heads {d_inner // m.headdim}"
        )
    if m.rotate_pairs > m.d_state // 2:
        raise ConfigError(
            f"model.rotate_pairs={m.rotate_pairs}: at most model.d_state / 2 = {m.d_state // 2} "
            "(each rotated pair takes two state dimensions)"
        )
    if m.d_model % m.attn_heads or m.attn_heads % m.attn_kv_heads:
        raise ConfigError(
            "model.attn_heads must divide model.d_model and be a multiple of model.attn_kv_heads"
        )
    if (m.d_model // m.attn_heads) % 2:
        raise ConfigError("attention head dim (d_model / attn_heads) must be even for rotary embeddings")
    if m.attn_window is not None and m.attn_window < 1:
        raise ConfigError(f"model.attn_window={m.attn_window} must be >= 1 or null (full attention)")
    try:
        m.layer_windows()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _check_objectives(cfg.objectives)
    if cfg.train.parallel not in ("ddp", "fsdp"):
        raise ConfigError(f"train.parallel='{cfg.train.parallel}': expected ddp | fsdp")
    _check_worlds(cfg.data)
    _check_curriculum(cfg.data.curriculum)
    mix_sources(cfg.data)
    if cfg.data.on_error not in ("raise", "skip"):
        raise ConfigError(f"data.on_error='{cfg.data.on_error}': expected raise | skip")
    if cfg.logging.wandb.mode not in ("auto", "online", "offline", "disabled"):
        raise ConfigError(
            f"logging.wandb.mode='{cfg.logging.wandb.mode}': expected auto|online|offline|disabled"
        )


def _check_objectives(section: Any) -> None:
    """The always-on objectives are on, and each enabled objective's own checks pass."""
    from ssm_mm.objectives import objective_class
    from ssm_mm.objectives.base import check_weight_from

    for name, ocfg in vars(section).items():
        cls = objective_class(name)
        if ocfg is None:
            if cls.always_on:
                raise ConfigError(f"objectives.{name}: the {name} objective is always on (it cannot be null)")
            continue
        try:
            check_weight_from(name, ocfg)
            cls.validate_config(ocfg)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def _check_worlds(d: DataConfig) -> None:
    """``data.world`` and every ``data.worlds`` entry name a registered world (ssm_mm.worlds)."""
    from ssm_mm import worlds

    for name, where in [(d.world, "data.world"), *((n, f"data.worlds.{n}") for n in d.worlds)]:
        try:
            worlds.get(name)
        except KeyError as e:
            raise ConfigError(f"{where}: {e.args[0]}") from None


def _check_curriculum(c: CurriculumConfig) -> None:
    """Stage ends ascending, one ``max_seconds`` per stage (ranges: :data:`RANGES`)."""
    if any(b <= a for a, b in zip(c.steps, c.steps[1:])):
        raise ConfigError(f"data.curriculum.steps={c.steps}: stage ends must be strictly ascending")
    if len(c.max_seconds) != len(c.steps) + 1:
        n = len(c.max_seconds)
        raise ConfigError(
            f"data.curriculum.max_seconds={c.max_seconds} has {n} entr{'y' if n == 1 else 'ies'}; "
            f"data.curriculum.steps={c.steps} makes {len(c.steps) + 1} stages, one entry each (0 = no cap)"
        )


@dataclass(frozen=True)
class MixSource:
    """One entry of ``data.mix``, resolved (:func:`mix_sources`): a manifest, or a world's config."""

    where: str  # "data.mix[i]", for messages
    manifest: str | None = None  # a manifest path; None for a world
    world: str | None = None  # the registered world's name
    world_config: Any = None  # its config (the world's config dataclass)
    # why this entry does not apply (world knobs of the run's world while data.manifest is the main
    # source: the world is not in use), None when it does
    unused: str | None = None


def mix_sources(d: DataConfig, *, check_files: bool = False) -> list[MixSource]:
    """``d.mix`` resolved (the rules in :class:`DataConfig`'s comment): :class:`ConfigError` naming
    ``data.mix[i]`` and what is wrong with it (not a path nor a mapping, an unknown world or knob, a
    bad knob value, and with ``check_files`` a manifest file that does not exist). Knobs without a
    ``world`` while ``data.manifest`` is the main source are checked but marked ``unused`` (the run's
    world is not in use; the trainer says so). Generates nothing."""
    from ssm_mm import worlds

    out = []
    for i, entry in enumerate(d.mix):
        where = f"data.mix[{i}]"
        if isinstance(entry, str):
            if not entry.strip():
                raise ConfigError(f"{where}: an empty manifest path")
            if check_files and not Path(entry).is_file():
                raise ConfigError(f"{where}: manifest file not found: {entry}")
            out.append(MixSource(where, manifest=entry))
            continue
        if not isinstance(entry, dict):
            raise ConfigError(
                f"{where}={entry!r}: expected a manifest path or a mapping of world knobs "
                "(e.g. {seconds: 120, streams: 32})"
            )
        knobs = dict(entry)
        name = knobs.pop("world", None)
        unused = None
        if name is None:
            name = d.world
            if d.manifest is not None:  # e.g. a config's recipe for its world, run on a user's manifest
                unused = (
                    f"{where}={entry}: not used: knobs of the world {name}, which is not the main source "
                    f"(data.manifest={d.manifest}); to mix it in, name it: "
                    f"{{world: {name}, {', '.join(f'{k}: {v}' for k, v in knobs.items())}}}"
                )
        try:
            world = worlds.get(name)
        except KeyError as e:
            raise ConfigError(f"{where}.world: {e.args[0]}") from None
        base = (d.worlds or {}).get(world.name)
        base = world.config() if base is None else base
        if "seed" not in knobs and hasattr(base, "seed"):
            # streams of their own: a world draws stream k of a seed the same way whatever its length,
            # so with the section's seed the entry's streams would begin as the main source's do
            knobs["seed"] = base.seed + i + 1
        try:
            cfg = world.with_knobs(base, knobs)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        if getattr(cfg, "seed", None) is not None and cfg.seed == getattr(cfg, "val_seed", None):
            raise ConfigError(
                f"{where}: seed {cfg.seed} is the held-out streams' (data.worlds.{world.name}.val_seed): "
                f"validation would train; give the entry another seed"
            )
        out.append(MixSource(where, world=world.name, world_config=cfg, unused=unused))
    return out


def _upgrade(loaded: DictConfig) -> DictConfig:
    """An older file's ``data.<world>`` section (before worlds were plugins) as ``data.worlds.<world>``."""
    data = loaded.get("data") if isinstance(loaded, DictConfig) else None
    if not isinstance(data, DictConfig):
        return loaded
    from ssm_mm import worlds

    for name in worlds.names():
        if name in data and name not in (f.name for f in dataclasses.fields(DataConfig)):
            section = data.pop(name)
            data.setdefault("worlds", {})
            data.worlds[name] = OmegaConf.merge(data.worlds.get(name, {}), section)
    return loaded


# keys that no longer exist and mean nothing today; saved run configs of older runs still hold them
REMOVED = ("train.debug_signal_at_step",)  # a test-only hook, replaced by tests sending real signals


def _drop_removed(loaded: DictConfig) -> DictConfig:
    """An older file without the keys of :data:`REMOVED` (on the command line they stay unknown)."""
    if isinstance(loaded, DictConfig):
        for key in REMOVED:
            section, _, name = key.rpartition(".")
            node = OmegaConf.select(loaded, section)
            if isinstance(node, DictConfig) and name in node:
                node.pop(name)
    return loaded


def _upgrade_objectives(loaded: DictConfig) -> DictConfig:
    """An older file's head settings (``model.count_head``, ``train.loss_*``, ... see :data:`MOVED`) as
    its ``objectives`` section, so saved run configs still load. An optional objective's old weight
    counts only where the same file turns the objective on (older files list every weight)."""
    if not isinstance(loaded, DictConfig):
        return loaded
    model, train = loaded.get("model"), loaded.get("train")
    old_m = (
        {k: model.pop(k) for k in list(model) if f"model.{k}" in MOVED}
        if isinstance(model, DictConfig)
        else {}
    )
    old_t = (
        {k: train.pop(k) for k in list(train) if f"train.{k}" in MOVED}
        if isinstance(train, DictConfig)
        else {}
    )
    if not old_m and not old_t:
        return loaded
    new: dict[str, dict] = {}
    if old_m.get("video_target"):
        new["video"] = {"size": old_m["video_target"]}
    if old_m.get("count_head"):
        new["count"] = {"max": old_m["count_head"]}
    if old_m.get("order_head"):
        new["order"] = {}
    if old_m.get("recall_head"):
        new["recall"] = {"size": old_m["recall_head"]}
    names = ([old_m["recall_attribute"]] if old_m.get("recall_attribute") else []) + list(
        old_m.get("recall_attributes") or []
    )
    if names:
        new["attribute"] = {"names": names, "values": list(old_m.get("recall_values") or [])}
    for name in ("lm", "event", "speak", *new):
        if f"loss_{name}" in old_t:
            new.setdefault(name, {})["weight"] = old_t[f"loss_{name}"]
    if old_t.get("loss_answer"):
        new.setdefault("lm", {})["answer_weights"] = old_t["loss_answer"]
    loaded.objectives = OmegaConf.merge(OmegaConf.create(new), loaded.get("objectives") or {})
    return loaded


def upgrade_key(key: str) -> str:
    """An override's older ``data.<world>.knob`` key as ``data.worlds.<world>.knob``."""
    parts = key.split(".")
    if len(parts) > 1 and parts[0] == "data":
        from ssm_mm import worlds

        if parts[1] in worlds.names():
            return ".".join(["data", "worlds", *parts[1:]])
    return key


# Letters a layer pattern may use; the name -> class table lives in ssm_mm.models.backbone.
LAYER_LETTERS = ("M", "A")


def to_dict(cfg: Any) -> dict:
    """A plain, JSON-serialisable dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (into the run folder)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.structured(cfg), str(path))
