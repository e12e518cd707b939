"""AVWorld's one config: the generator's knobs, whose defaults are the default training run's world.

The same dataclass is the typed config section ``data.worlds.avworld`` (train.py, eval/run.py), the
generator's argument (:func:`ssm_mm.worlds.avworld.generate.generate`) and the defaults of its command
line (``python -m ssm_mm.worlds.avworld``). It validates itself on construction (a ``ValueError``
naming the field), so a bad knob fails when the config is loaded, before any work.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from ssm_mm.worlds.avworld.scene import CLASSES

SPREAD_KNOBS = ("jitter_spread", "drop_spread", "offset_spread")  # per-stream timing variation
ASKED_TYPES = ("count", "color", "kind", "order", "now")  # question types with an immediate answer
QUESTION_TYPES = ("count", "color", "kind", "order", "now", "proactive")
SPLIT_KNOBS = ("val_streams", "val_seed")  # pick the validation streams; not generator knobs


@dataclass
class AVWorldConfig:
    """AVWorld's knobs (SPEC §5). Times in seconds.

    ``streams`` / ``seed`` are the training streams; ``val_streams`` / ``val_seed`` the held-out
    validation streams, rendered at the nominal jitter / drop / offset and with the uniform question
    mix (:func:`~ssm_mm.worlds.avworld.generate.ensure`). The scene depends only on
    ``(seed, seconds, density, classes)``; the other knobs render the same world differently.
    """

    streams: int = 128
    seconds: float = 30.0
    fps: float = 4.0
    size: int = 64  # frame height = width (pixels, even)
    sample_rate: int = 16000
    jitter: float = 0.0  # per-frame timestamp noise, uniform in [-jitter, jitter] (< 0.45 / fps)
    drop: float = 0.0  # probability that a frame (not the first) is dropped
    offset: float = 0.0  # audio track start minus video track start (> 0: audio starts later)
    noise: float = 0.02  # background noise: audio RMS; video pixel noise std is noise * 128 levels
    clock: float = 0.0  # clock time of media time 0 (the manifest's "t0")
    density: float = 2.0  # AV events per 10 s
    classes: int = 4  # how many of CLASSES are used
    question_every: float = 4.0  # mean seconds between dialogue questions
    seed: int = 0
    # Training streams only (validation and sweep streams use the nominal values above and the uniform
    # question mix): timing augmentation, stream i drawing its own jitter in [jitter, jitter +
    # jitter_spread], drop in [drop, drop + drop_spread] and offset in [offset - offset_spread,
    # offset + offset_spread] (see generate.stream_config); 0 = every stream alike ...
    jitter_spread: float = 0.0
    drop_spread: float = 0.0
    offset_spread: float = 0.0
    # ... and the relative frequency of the question types (ASKED_TYPES: count, color, kind, order,
    # now; missing types weigh 1), e.g. {color: 3, now: 3}; {} = uniform. Within "now", the count /
    # shape / colour question is picked by the count / kind / color weight. (5 weights in ASKED_TYPES
    # order are accepted too and stored as the mapping.)
    question_mix: dict[str, float] = field(default_factory=dict)
    val_streams: int = 8
    val_seed: int = 1000

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"AVWorldConfig.{name}: {why} (got {getattr(self, name)!r})")

        # canonical values: a float knob given as an int (seconds=30) is the same world as 30.0, so
        # equal configs compare, print and hash (cache_key) alike
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type == "float" and isinstance(v, int) and not isinstance(v, bool):
                setattr(self, f.name, float(v))
        self.question_mix = _mix_mapping(self.question_mix)
        question_weights(self.question_mix)  # validates

        if not isinstance(self.streams, int) or self.streams < 1:
            bad("streams", "must be an integer >= 1")
        if not self.seconds >= 4.0 or not math.isfinite(self.seconds):
            bad("seconds", "must be >= 4")
        if not 0 < self.fps <= 60:
            bad("fps", "must be in (0, 60]")
        if not isinstance(self.size, int) or self.size < 32 or self.size % 2:
            bad("size", "must be an even integer >= 32")
        if self.sample_rate not in (16000, 22050, 24000, 32000, 44100, 48000):
            bad(
                "sample_rate",
                "must be one of 16000, 22050, 24000, 32000, 44100, 48000 (>= 16 kHz for the drum band)",
            )
        for name in SPREAD_KNOBS:
            if not getattr(self, name) >= 0:
                bad(name, "must be >= 0")
        if not 0 <= self.jitter < 0.45 / self.fps:
            bad("jitter", f"must be in [0, 0.45/fps = {0.45 / self.fps:.4f}) so frames stay in order")
        if not self.jitter + self.jitter_spread < 0.45 / self.fps:
            bad("jitter_spread", f"jitter + jitter_spread must stay below 0.45/fps = {0.45 / self.fps:.4f}")
        if not 0 <= self.drop < 1:
            bad("drop", "must be in [0, 1)")
        if not self.drop + self.drop_spread < 1:
            bad("drop_spread", "drop + drop_spread must stay below 1")
        if not abs(self.offset) <= min(5.0, self.seconds / 4):
            bad("offset", "must satisfy |offset| <= min(5, seconds / 4)")
        if not abs(self.offset) + self.offset_spread <= min(5.0, self.seconds / 4):
            bad("offset_spread", "|offset| + offset_spread must stay <= min(5, seconds / 4)")
        if not 0 <= self.noise <= 0.5:
            bad("noise", "must be in [0, 0.5]")
        if not math.isfinite(self.clock):
            bad("clock", "must be finite")
        if not 0 < self.density <= 5:
            bad("density", "must be in (0, 5] AV events per 10 s")
        if not isinstance(self.classes, int) or not 2 <= self.classes <= len(CLASSES):
            bad("classes", f"must be an integer in [2, {len(CLASSES)}]")
        if not self.question_every >= 1.0:
            bad("question_every", "must be >= 1 s")
        if not isinstance(self.seed, int) or self.seed < 0:
            bad("seed", "must be an integer >= 0")
        if not isinstance(self.val_streams, int) or self.val_streams < 1:
            bad("val_streams", "must be an integer >= 1")
        if not isinstance(self.val_seed, int) or self.val_seed < 0:
            bad("val_seed", "must be an integer >= 0")

    @property
    def question_weights(self) -> tuple[float, ...]:
        """``question_mix`` as one weight per :data:`ASKED_TYPES` type, or () for the uniform mix."""
        return question_weights(self.question_mix)

    def generator_knobs(self) -> dict:
        """The knobs that decide the generated streams (the split knobs left out), in field order,
        ``question_mix`` as its weights: what ``config.json`` records and ``cache_key`` hashes."""
        fields = [f.name for f in dataclasses.fields(self) if f.name not in SPLIT_KNOBS]
        knobs = {name: getattr(self, name) for name in fields}
        knobs["question_mix"] = self.question_weights
        return knobs

    @classmethod
    def from_knobs(cls, config: AVWorldConfig | None = None, **knobs) -> AVWorldConfig:
        """``config`` (or the defaults) with ``knobs`` replaced; unknown names raise with the valid list."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(knobs) - set(valid))
        if unknown:
            raise ValueError(f"unknown AVWorld knob(s) {unknown}; valid: {valid}")
        return dataclasses.replace(config or cls(), **knobs)


def _mix_mapping(mix) -> dict[str, float]:
    """``question_mix`` given as a mapping (dict, OmegaConf DictConfig) or as len(ASKED_TYPES) weights,
    as a plain {type: weight} dict (unknown types are kept for :func:`question_weights` to name)."""
    if isinstance(mix, Mapping) or hasattr(mix, "items"):
        return dict(mix.items())
    try:
        w = list(mix)
    except TypeError:
        raise ValueError(f"AVWorldConfig.question_mix: expected {{type: weight}} (got {mix!r})") from None
    if w and len(w) != len(ASKED_TYPES):
        need = f"need {len(ASKED_TYPES)} weights for {list(ASKED_TYPES)}"
        raise ValueError(f"AVWorldConfig.question_mix: {need} (got {mix!r})")
    return dict(zip(ASKED_TYPES, w))


def question_weights(mix: Mapping[str, float]) -> tuple[float, ...]:
    """A {type: weight} mix as a tuple of len(ASKED_TYPES) weights (missing types weigh 1), or () for
    the uniform mix; ValueError naming an unknown type or a bad weight."""
    unknown = sorted(set(mix) - set(ASKED_TYPES))
    if unknown:
        raise ValueError(f"AVWorldConfig.question_mix: unknown type(s) {unknown}; valid: {list(ASKED_TYPES)}")
    try:
        w = tuple(float(mix.get(t, 1.0)) for t in ASKED_TYPES)
    except (TypeError, ValueError):
        raise ValueError(f"AVWorldConfig.question_mix: expected {{type: weight}} (got {mix!r})") from None
    if not all(math.isfinite(x) and x >= 0 for x in w) or not any(w):
        raise ValueError(
            f"AVWorldConfig.question_mix: need {len(ASKED_TYPES)} finite weights >= 0, not all 0, for "
            f"{list(ASKED_TYPES)} (got {dict(mix)!r})"
        )
    return () if all(x == 1.0 for x in w) else w
