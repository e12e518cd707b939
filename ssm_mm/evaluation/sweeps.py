"""Robustness sweeps (SPEC §8): held-out AVWorld streams with one knob changed per sweep point.

A sweep is a knob and its values. Each point is an AVWorld dataset whose config is the *base world*
(``data.avworld``: fps, jitter, drop, offset, noise, clock, density, classes, question rate) with
``streams = eval.sweep_streams``, ``seconds = eval.sweep_seconds``, ``seed = eval.sweep_seed`` (held
out: training uses ``data.avworld.seed``, validation ``val_seed``) and the model's number of classes,
and then the knob set to the point's value. Points are generated once into
``<data.cache_dir>/avworld`` (:func:`ssm_mm.data.avworld.ensure_avworld`, keyed by the whole config)
and reused by later runs.

Knobs (:data:`KNOBS`): ``length`` multiplies ``sweep_seconds`` (×1, ×10: the same world process run
longer), ``seconds`` sets it, and ``fps``, ``jitter``, ``drop``, ``offset``, ``clock``, ``noise`` set the
AVWorld knob of that name. Every point of a sweep renders the same kind of world (the scene depends
only on seed, seconds, density and classes), so a change of score is the knob's effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ssm_mm.evaluation.harness import EvalError

__all__ = ["KNOBS", "DEFAULT_VALUES", "SweepPoint", "sweep_spec", "sweep_points", "ensure_point"]

# knob -> AVWorld field it sets ("length" scales seconds)
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
_ALL = ("length", "fps", "jitter", "drop", "offset", "clock", "noise")


@dataclass(frozen=True)
class SweepPoint:
    """One point: ``knob = value`` and the AVWorld knobs that generate it."""

    knob: str
    value: float
    world: dict

    @property
    def name(self) -> str:
        return f"{self.knob}={self.value:g}"


def sweep_spec(
    sweep: str | None, values: list[float], sweeps: dict[str, list[float]]
) -> dict[str, list[float]]:
    """The sweeps asked for by ``eval.sweep`` / ``eval.sweep_values`` / ``eval.sweeps`` as
    ``{knob: values}`` (``sweep=all``: every knob with its default values)."""
    out: dict[str, list[float]] = {}
    if sweep:
        names = _ALL if sweep == "all" else [k.strip() for k in sweep.split(",") if k.strip()]
        if sweep == "all" and values:
            raise EvalError("eval.sweep=all takes no eval.sweep_values (each knob uses its defaults)")
        if len(names) > 1 and values:
            raise EvalError(
                f"eval.sweep={sweep!r} names several knobs: give their values with eval.sweeps.KNOB=[...]"
            )
        for k in names:
            out[k] = list(values) if values else list(DEFAULT_VALUES.get(k, []))
    elif values:
        raise EvalError("eval.sweep_values given without eval.sweep (which knob?)")
    for k, v in (sweeps or {}).items():
        out[k] = list(v) if v else list(DEFAULT_VALUES.get(k, []))
    for k, v in out.items():
        if k not in KNOBS:
            raise EvalError(f"unknown sweep knob {k!r}; valid: {', '.join(KNOBS)} (or all)")
        if not v:
            raise EvalError(f"sweep {k!r} has no values")
        if any(not math.isfinite(float(x)) for x in v):
            raise EvalError(f"sweep {k!r}: values must be finite numbers, got {v}")
    return out


def sweep_points(knob: str, values: list[float], base: dict) -> list[SweepPoint]:
    """The points of one sweep; ``base``: AVWorld knobs of the base world (validated per point)."""
    from ssm_mm.data.avworld import AVWorldConfig

    points = []
    for v in values:
        world = dict(base)
        field = KNOBS[knob]
        world[field] = float(base["seconds"]) * float(v) if knob == "length" else float(v)
        try:
            AVWorldConfig(**world)
        except (TypeError, ValueError) as e:
            raise EvalError(f"sweep point {knob}={v:g}: {e}") from None
        points.append(SweepPoint(knob, float(v), world))
    return points


def ensure_point(point: SweepPoint, cache_dir: str | Path, workers: int = 1) -> Path:
    """The manifest of a sweep point's streams (generated on first use, then cached)."""
    from ssm_mm.data.avworld import ensure_avworld

    return ensure_avworld(Path(cache_dir) / "avworld", workers=workers, **point.world)
