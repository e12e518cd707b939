"""AVWorld's robustness sweeps (SPEC §8): held-out streams with one knob changed per sweep point.

Each point is the evaluated world (``data.worlds.avworld``, with the models' class count and the
nominal knobs) rendered as ``eval.sweep_streams`` held-out streams of ``eval.sweep_seconds`` with
``eval.sweep_seed`` (training uses ``seed``, validation ``val_seed``), then the knob set to the point's
value. ``length`` multiplies ``sweep_seconds`` (x1, x10: the same world process run longer),
``seconds`` sets it, and ``fps``, ``jitter``, ``drop``, ``offset``, ``clock``, ``noise`` set the knob of
that name. Every point of a sweep renders the same kind of world (the scene depends only on seed,
seconds, density and classes), so a change of score is the knob's effect.
"""

from __future__ import annotations

import dataclasses

from ssm_mm.worlds.avworld.config import AVWorldConfig
from ssm_mm.worlds.avworld.generate import nominal

# knob -> AVWorldConfig field it sets ("length" scales seconds)
KNOBS: dict[str, str] = {
    "length": "seconds",
    "seconds": "seconds",
    "fps": "fps",
    "jitter": "jitter",
    "drop": "drop",
    "offset": "offset",
    "clock": "clock",
    "noise": "noise",
}
# Values used when a sweep is named without values (and by sweep=all).
DEFAULT_VALUES: dict[str, list[float]] = {
    "length": [1.0, 10.0],
    "seconds": [30.0, 300.0],
    "fps": [2.0, 4.0, 8.0],
    "jitter": [0.0, 0.02, 0.05],
    "drop": [0.0, 0.1, 0.2, 0.3],
    "offset": [0.0, 0.25, 0.5, 1.0],
    "clock": [0.0, 3600.0, 1e6],
    "noise": [0.0, 0.02, 0.05, 0.1],
}
ALL = ("length", "fps", "jitter", "drop", "offset", "clock", "noise")  # eval.sweep=all


def sweep_point(
    cfg: AVWorldConfig, knob: str, value: float, *, streams: int, seconds: float, seed: int
) -> AVWorldConfig:
    """The world of one point: ``cfg`` at its nominal knobs, whose validation split is ``streams``
    streams of ``seconds`` with ``seed``, and ``knob`` set to ``value``; ValueError when the point is
    not a valid world."""
    if knob not in KNOBS:
        raise ValueError(f"unknown sweep knob {knob!r}; valid: {', '.join(KNOBS)}")
    value = float(value)
    changes = {"seconds": float(seconds), KNOBS[knob]: float(seconds) * value if knob == "length" else value}
    # nominal first: the training-only spreads must not make a point (say fps=8) invalid
    return dataclasses.replace(nominal(cfg), val_streams=streams, val_seed=seed, **changes)
