"""AVWorld: a seeded generator of synthetic audio-visual streams written as real media (SPEC §5).

Shapes of several kinds and colours appear, drift and vanish on a 64x64 video; sounds of several
types play on a 16 kHz audio track; an audio-visual event of class ``c`` is when the sound of ``c`` is
audible *and* its shape is visible. A dialogue asks about the past (counting, colour or kind at the
time of a sound, order, what is on screen now) and makes proactive requests ("tell me when the drum
plays"). Every stream is an mp4 file with a line of a §4 manifest, so the real decoding path is
always exercised.

* :mod:`~ssm_mm.worlds.avworld.config`   — :class:`AVWorldConfig`, the one config (knobs + defaults);
* :mod:`~ssm_mm.worlds.avworld.scene`    — event classes, colours, shapes; what happens when;
* :mod:`~ssm_mm.worlds.avworld.dialogue` — question templates, vocabulary, the questions of a stream;
* :mod:`~ssm_mm.worlds.avworld.render`   — frames, sounds, frame times (jitter, drops);
* :mod:`~ssm_mm.worlds.avworld.generate` — writing streams, manifest and scenes; the cache;
* :mod:`~ssm_mm.worlds.avworld.sweeps`   — the robustness sweeps' knobs and points;
* ``python -m ssm_mm.worlds.avworld``    — the command line (:mod:`~ssm_mm.worlds.avworld.__main__`).

:data:`WORLD` is its registry entry (:mod:`ssm_mm.worlds`), selected by ``data.world: avworld`` and
configured by ``data.worlds.avworld``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ssm_mm.worlds import World
from ssm_mm.worlds.avworld import sweeps as _sweeps
from ssm_mm.worlds.avworld.config import (
    ASKED_TYPES,
    QUESTION_TYPES,
    SPLIT_KNOBS,
    SPREAD_KNOBS,
    AVWorldConfig,
)
from ssm_mm.worlds.avworld.dialogue import (
    ACK,
    Q_COLOR,
    Q_COUNT,
    Q_KIND,
    Q_NOW_COLOR,
    Q_NOW_COUNT,
    Q_NOW_SHAPE,
    Q_ORDER,
    Q_PROACTIVE,
    make_dialogue,
    vocabulary,
)
from ssm_mm.worlds.avworld.generate import (
    GENERATOR_VERSION,
    cache_key,
    ensure,
    ensure_avworld,
    generate,
    generate_stream,
    nominal,
    read_scenes,
    stream_config,
)
from ssm_mm.worlds.avworld.render import frame_times, render_frame, shape_mask, sound_wave
from ssm_mm.worlds.avworld.scene import (
    CLASSES,
    COLORS,
    AVEvent,
    EventClass,
    Scene,
    Shape,
    Sound,
    event_attributes,
    make_scene,
    visible_throughout,
)

__all__ = [
    "ACK", "ASKED_TYPES", "AVEvent", "AVWorld", "AVWorldConfig", "CLASSES", "COLORS", "EventClass",
    "GENERATOR_VERSION", "QUESTION_TYPES", "Q_COLOR", "Q_COUNT", "Q_KIND", "Q_NOW_COLOR", "Q_NOW_COUNT",
    "Q_NOW_SHAPE", "Q_ORDER", "Q_PROACTIVE", "SPREAD_KNOBS", "Scene", "Shape", "Sound", "WORLD",
    "cache_key", "ensure", "ensure_avworld", "event_attributes", "frame_times", "generate",
    "generate_stream", "make_dialogue", "make_scene", "nominal", "read_scenes", "render_frame",
    "shape_mask", "sound_wave", "stream_config", "visible_throughout", "vocabulary",
]  # fmt: skip


class AVWorld(World):
    """AVWorld as a registered world: its config, its splits, its pinned labels, its sweeps."""

    name = "avworld"
    config = AVWorldConfig
    sweep_values = _sweeps.DEFAULT_VALUES
    sweep_all = _sweeps.ALL
    split_knobs = SPLIT_KNOBS

    def ensure(self, cache_dir: Path, cfg: AVWorldConfig, split: str, *, workers: int = 1) -> Path:
        return ensure(cache_dir, cfg, split, workers=workers)

    def labels(self, cfg: AVWorldConfig) -> list[str]:
        """The first ``cfg.classes`` class names: the whole table a model trained on ``cfg`` may meet
        (a short training set need not show every class)."""
        return [c.name for c in CLASSES[: cfg.classes]]

    def covering(self, cfg: AVWorldConfig, labels: Sequence[str]) -> AVWorldConfig | None:
        """``cfg`` with enough classes for every label (AVWorld uses the first ``classes`` of its
        table, at least 2); None when a label is not a class. (A model trained on a manifest knows only
        the labels it saw, which need not be a prefix of the table; a class it lacks counts as missed.)"""
        names = [c.name for c in CLASSES]
        need = 2
        for label in labels:
            if label not in names:
                return None
            need = max(need, names.index(label) + 1)
        return AVWorldConfig.from_knobs(cfg, classes=need)

    def sweep_point(
        self, cfg: AVWorldConfig, knob: str, value: float, *, streams: int, seconds: float, seed: int
    ) -> AVWorldConfig:
        return _sweeps.sweep_point(cfg, knob, value, streams=streams, seconds=seconds, seed=seed)

    def stream_seconds(self, cfg: AVWorldConfig) -> float:
        return float(cfg.seconds)


WORLD = AVWorld()
