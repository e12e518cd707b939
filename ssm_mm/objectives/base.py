"""The objective protocol and its registry: what a training objective is, in one place.

An objective is one loss of the model: its typed config (with its ``weight`` in the total loss), the
targets it builds from a stream's manifest record and its interleaved tokens, the head it trains
(built from ``d_model`` and the label vocabulary), its loss over a batch as a ``(sum, count)`` pair
(sums, so data-parallel ranks can normalise by the global count) and its validation metric.

    total loss = sum_k  weight_k * loss_sum_k / count_k        over the enabled objectives k

Targets travel as one dict (``example.targets`` -> ``window.targets`` -> ``batch.targets``); each key
is declared once by its objective as a :class:`Target` (its axis and pad value), so one generic
collate pads them all. Built-in objectives register themselves on import of :mod:`ssm_mm.objectives`;
a user's own objective is a subclass registered from their code (:func:`register_objective`), after
which the config (``objectives.<name>``), the dataset, the model, the trainer, validation and
``save_pretrained`` / ``from_pretrained`` all know it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, make_dataclass
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssm_mm.data.interleave import IGNORE_INDEX, bad_answer_weights

# (left bracket, low, high, right bracket) with None = unbounded: the rule format of ssm_mm.config.RANGES
Rule = tuple[str, float | None, float | None, str]


@dataclass
class ObjectiveConfig:
    """Fields every objective's config has. Subclasses add theirs (dataclass fields) and list the
    allowed range of each numeric one in ``RANGES`` (checked when a config is loaded)."""

    weight: float = 1.0  # the objective's weight in the total loss
    # the weight from an optimizer step on, {step: weight} (before the first step listed: ``weight``),
    # e.g. {4000: 1.0} to weigh a head more only while its skill is being found (weight_at)
    weight_from: dict[int, float] = field(default_factory=dict)

    RANGES: ClassVar[dict[str, Rule]] = {"weight": ("[", 0, None, ")")}


def weight_at(cfg: ObjectiveConfig, step: int) -> float:
    """The objective's weight at optimizer step ``step`` (0-based: the step being taken): the value of
    the last ``weight_from`` entry at or before it, else ``weight``. Keys may be strings of integers
    (a config read back from JSON)."""
    w = float(cfg.weight)
    for start, value in sorted((int(k), float(v)) for k, v in (cfg.weight_from or {}).items()):
        if start > step:
            break
        w = value
    return w


def check_weight_from(name: str, cfg: ObjectiveConfig) -> None:
    """ValueError naming ``objectives.<name>.weight_from`` unless its steps are >= 1 and its weights
    finite and >= 0 (the check of the LM's answer weights)."""
    sched = dict(cfg.weight_from or {})
    bad = {k: v for k, v in sched.items() if int(k) < 1} | bad_answer_weights(sched)
    if bad:
        raise ValueError(
            f"objectives.{name}.weight_from={sched}: each entry is step: weight, a step >= 1 and a "
            f"weight finite and >= 0 (bad: {bad})"
        )


@dataclass(frozen=True)
class Target:
    """How one target key travels from a window into a :class:`~ssm_mm.data.dataset.Batch`.

    axis:  "token" (window shape (L, ...), batch (B, L, ...)), "tick" ((K, ...) -> (B, K, ...); set to
           ``pad`` where a tick has no media token, i.e. is not ``tick_valid``) or "rows" ((R, ...)
           rows concatenated over the batch's windows, e.g. frames that a tick target indexes).
    pad:   the value of padding (and of missing items).
    dtype: the batch tensor's dtype.
    missing_below_zero: negative window values mean "no target here" and become ``pad``.
    rows:  for a tick target that indexes the rows of a "rows" target: that key (its values are
           re-based onto the batch's concatenated rows).
    """

    axis: str
    pad: float = IGNORE_INDEX
    dtype: torch.dtype = torch.int64
    missing_below_zero: bool = False
    rows: str | None = None


@dataclass(frozen=True)
class HeadSpec:
    """What a head is built from: model width, text vocabulary size, patch and frame sizes."""

    d_model: int
    vocab_size: int
    patch_size: int
    frame_size: int


@dataclass
class StreamContext:
    """One stream as target builders see it.

    spec: the manifest record (``StreamSpec``: id, dialogue, segments, duration, t0);
    tokens: its interleaved ``TimedTokens`` (L,) on the stream clock; features: its
    ``StreamFeatures`` (media time); tokenizer; labels (index 0 = background); n_ticks; tick_seconds.
    """

    spec: Any
    tokens: Any
    features: Any
    tokenizer: Any
    labels: Sequence[str]
    n_ticks: int
    tick_seconds: float


@dataclass
class WindowSpan:
    """Ticks ``[k0, k1)`` of a stream, tokens ``[lo, hi)``; the stream's features (for targets that
    carry media rows) and the frame size (for empty frame tensors)."""

    k0: int
    k1: int
    lo: int
    hi: int
    features: Any
    frame_size: int


@dataclass
class Readout:
    """What a loss or metric reads from a forward pass: ``hidden`` (B, L, d) final hidden states and
    ``ticks`` (T, d) the hidden state at the summary position of each valid tick (``batch.tick_valid``,
    row-major), shared by every tick-level objective."""

    hidden: Tensor
    ticks: Tensor


class Objective:
    """Base class of a training objective; subclasses set ``name``, ``Config`` and ``targets`` and
    implement :meth:`build_head`, :meth:`stream_targets`, :meth:`count` and :meth:`loss_sum` (plus
    :meth:`metric` / :meth:`summarize` for a validation metric).

    An instance binds a config to the label vocabulary (``labels[0] == "background"``; ``n_events``
    labels after it). ``always_on`` objectives (lm, event, speak) are part of every model.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[ObjectiveConfig]] = ObjectiveConfig
    always_on: ClassVar[bool] = False
    targets: ClassVar[dict[str, Target]] = {}

    def __init__(self, cfg: ObjectiveConfig | None = None, labels: Sequence[str] = ("background",)):
        self.cfg = self.Config() if cfg is None else cfg
        self.labels = list(labels)
        self.validate_config(self.cfg)

    @property
    def n_events(self) -> int:
        return len(self.labels) - 1

    # ----------------------------------------------------------------------------- config

    @classmethod
    def validate_config(cls, cfg: ObjectiveConfig) -> None:
        """ValueError (naming ``objectives.<name>.<field>``) on values no vocabulary could serve."""

    @classmethod
    def prepare(cls, cfg: ObjectiveConfig, streams: Sequence, where: str) -> None:
        """Fit ``cfg`` to the training streams before anything is built (e.g. fill a value vocabulary
        from them); ValueError when they cannot supply the targets. ``where``: the manifest's path."""

    # ---------------------------------------------------------------------------- targets

    def stream_targets(self, ctx: StreamContext) -> dict[str, Tensor]:
        """This objective's targets of a whole stream (token axis: (L, ...); tick axis: (n_ticks, ...))."""
        return {}

    def window_targets(self, targets: Mapping[str, Tensor], span: WindowSpan) -> dict[str, Tensor]:
        """The window ``span``'s slice of :meth:`stream_targets` (by each key's axis)."""
        out = {}
        for key, spec in self.targets.items():
            if spec.axis == "token":
                out[key] = targets[key][span.lo : span.hi].clone()
            elif spec.axis == "tick":
                out[key] = targets[key][span.k0 : span.k1].clone()
            else:
                raise NotImplementedError(
                    f"objective {self.name!r}: 'rows' target {key!r} needs window_targets"
                )
        return out

    # ------------------------------------------------------------------------ head + loss

    def build_head(self, spec: HeadSpec) -> nn.Module:
        raise NotImplementedError

    def count(self, batch) -> float:
        """The number of supervised items in ``batch`` (the loss is ``sum / count``)."""
        raise NotImplementedError

    def loss_sum(self, head: nn.Module, r: Readout, batch) -> Tensor | None:
        """The loss summed over ``batch``'s supervised items (float32), or None when it has none."""
        raise NotImplementedError

    def loss(self, head: nn.Module, r: Readout, batch) -> tuple[Tensor, float]:
        """``(sum, count)`` over ``batch``. With nothing to supervise the sum is an exact zero that still
        depends on the head (so the head takes part in every step, as DDP requires). The zero reads the
        head's first parameter only (a linear head's weight): a bias left without a gradient keeps its
        optimizer state as it was, as it always has (AdamW skips it; a zero gradient would count a step)."""
        zero = next(head.parameters()).sum() * 0.0
        s = self.loss_sum(head, r, batch)
        return (zero if s is None else s + zero), self.count(batch)

    # ----------------------------------------------------------------------------- metric

    def metric(self, head: nn.Module, r: Readout, batch) -> Any:
        """This batch's part of the validation metric (anything :meth:`summarize` can combine), or None."""
        return None

    def summarize(self, parts: list) -> dict[str, float]:
        """The validation metrics (flat ``{name: value}``) from every batch's :meth:`metric`."""
        return {}


class PerLabelClasses(Objective):
    """An objective that reads, at every valid tick and for each event label, one of ``n_classes``
    classes (its target ``batch.targets[name]``: (B, K, C) int64): a linear head to C x n_classes
    logits, cross-entropy per (tick, label), validated by the share of exact classes
    (``<name>_accuracy``). Subclasses set :attr:`n_classes` and build the stream targets."""

    @property
    def n_classes(self) -> int:
        raise NotImplementedError

    def class_targets(self, batch) -> Tensor:
        """(T, C) the class of each (valid tick, label)."""
        return tick_targets(batch, self.name)

    def build_head(self, spec: HeadSpec) -> nn.Module:
        return nn.Linear(spec.d_model, self.n_events * self.n_classes)

    def logits(self, head: nn.Module, ticks: Tensor) -> Tensor:
        """(..., C, n_classes) logits from tick hidden states (..., d)."""
        return head(ticks).unflatten(-1, (self.n_events, self.n_classes))

    def count(self, batch) -> float:
        return int(batch.tick_valid.sum()) * self.n_events

    def loss_sum(self, head: nn.Module, r: Readout, batch) -> Tensor | None:
        if not len(r.ticks) or not self.n_events:
            return None
        logits = self.logits(head, r.ticks).float()  # (T, C, n_classes)
        target = self.class_targets(batch)  # (T, C)
        return F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum")

    def metric(self, head: nn.Module, r: Readout, batch):
        target = self.class_targets(batch)
        return int((self.logits(head, r.ticks).argmax(-1) == target).sum()), target.numel()

    def summarize(self, parts: list) -> dict:
        return {f"{self.name}_accuracy": ratio(sum(h for h, _ in parts), sum(n for _, n in parts))}


def ratio(hits: float, n: float) -> float:
    """``hits / n``, NaN when there is nothing to count."""
    return hits / n if n else float("nan")


def per_tick(builder, ctx: StreamContext, *args) -> Tensor:
    """``builder(segments, labels, n_ticks, tick_seconds, *args, stream_id=...)`` on ``ctx``'s stream:
    the per-tick target builders of :mod:`ssm_mm.data.interleave` (``tick_event_labels``, ...)."""
    s = ctx.spec
    return builder(s.segments, ctx.labels, ctx.n_ticks, ctx.tick_seconds, *args, stream_id=s.id)


def tick_targets(batch, key: str) -> Tensor:
    """``batch.targets[key]`` at the valid ticks, (T, ...) in the order of :attr:`Readout.ticks`."""
    return batch.targets[key][batch.tick_valid]


# ------------------------------------------------------------------------------------ registry

_REGISTRY: dict[str, type[Objective]] = {}
_TARGETS: dict[str, Target] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Make ``cls`` known by its ``name`` (usable as a class decorator). Its target keys must be its
    name or start with ``<name>_`` and a ``rows`` reference must name one of its own "rows" targets.
    Registering the same class again is a no-op; another class under a taken name is an error."""
    name = cls.name
    if not (isinstance(name, str) and name.isidentifier()):
        raise ValueError(f"objective name must be an identifier, got {name!r} ({cls.__qualname__})")
    if name in _REGISTRY:
        if _REGISTRY[name] is cls:
            return cls
        raise ValueError(
            f"an objective named {name!r} is already registered ({_REGISTRY[name].__qualname__})"
        )
    if not (dataclasses.is_dataclass(cls.Config) and issubclass(cls.Config, ObjectiveConfig)):
        raise TypeError(f"objective {name!r}: Config must be a dataclass subclass of ObjectiveConfig")
    for key, spec in cls.targets.items():
        if key != name and not key.startswith(f"{name}_"):
            raise ValueError(
                f"objective {name!r}: target key {key!r} must be {name!r} or start with '{name}_'"
            )
        if spec.axis not in ("token", "tick", "rows"):
            raise ValueError(
                f"objective {name!r}: target {key!r} axis {spec.axis!r} is not token | tick | rows"
            )
        if spec.rows is not None and cls.targets.get(spec.rows, Target("tick")).axis != "rows":
            raise ValueError(
                f"objective {name!r}: target {key!r} indexes {spec.rows!r}, not one of its rows targets"
            )
    _REGISTRY[name] = cls
    _TARGETS.update(cls.targets)
    return cls


def objective_names() -> list[str]:
    """Registered objective names, in registration order (the order of losses and heads)."""
    return list(_REGISTRY)


def objective_class(name: str) -> type[Objective]:
    """The registered objective ``name`` (ValueError listing the known ones)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown objective {name!r}; known objectives: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def target_spec(key: str) -> Target:
    """The :class:`Target` declared for a target key (KeyError naming the known keys)."""
    if key not in _TARGETS:
        raise KeyError(f"no objective declares target {key!r}; known targets: {', '.join(_TARGETS)}")
    return _TARGETS[key]


_CONFIG_CLASSES: dict[tuple, type] = {}


def objectives_config() -> Any:
    """A fresh ``objectives`` config section: one field per registered objective, its config (the
    always-on ones) or None (off; set any of its fields, or ``{}``, to turn it on)."""
    names = tuple(_REGISTRY)
    if names not in _CONFIG_CLASSES:
        fields = [
            (n, Optional[c.Config], field(default_factory=c.Config) if c.always_on else None)  # noqa: UP045 - OmegaConf reads Optional
            for n, c in _REGISTRY.items()
        ]
        _CONFIG_CLASSES[names] = make_dataclass("ObjectivesConfig", fields)
    return _CONFIG_CLASSES[names]()


def enabled_configs(section: Any) -> dict[str, ObjectiveConfig | dict]:
    """``{name: config}`` of the enabled objectives of a config section (the dataclass of
    :func:`objectives_config`, or a mapping), None entries dropped."""
    if section is None:
        return {}
    items = section.items() if isinstance(section, Mapping) else vars(section).items()
    return {k: v for k, v in items if v is not None}


def config_from_dict(name: str, d: Mapping) -> ObjectiveConfig:
    """Objective ``name``'s config from a plain dict (``config.json``); ValueError on unknown keys."""
    cls = objective_class(name).Config
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"objectives.{name}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
    d = dict(d)
    if d.get("weight_from"):  # JSON keys are strings: the steps back as integers
        d["weight_from"] = {int(k): float(v) for k, v in d["weight_from"].items()}
    return cls(**d)


def build_objectives(section: Any, labels: Sequence[str]) -> dict[str, Objective]:
    """The enabled objectives of a config section (``{name: config | dict}`` or the dataclass of
    :func:`objectives_config`), bound to ``labels``, in registration order; the always-on ones are
    added with their default config when missing. Objective instances among the values are kept as
    they are (e.g. a model's ``objectives``)."""
    given = enabled_configs(section)
    unknown = [k for k in given if k not in _REGISTRY]
    if unknown:
        raise ValueError(f"unknown objectives {unknown}; known objectives: {', '.join(_REGISTRY)}")
    out = {}
    for name, cls in _REGISTRY.items():
        if name in given or cls.always_on:
            cfg = given.get(name)
            if isinstance(cfg, Objective):
                out[name] = cfg
                continue
            cfg = config_from_dict(name, cfg) if isinstance(cfg, Mapping) else cfg
            out[name] = cls(cfg, labels)
    return out


def ranges() -> dict[str, Rule]:
    """``objectives.<name>.<field>`` -> allowed range, for every registered objective's numeric fields."""
    return {f"objectives.{n}.{k}": rule for n, c in _REGISTRY.items() for k, rule in c.Config.RANGES.items()}
