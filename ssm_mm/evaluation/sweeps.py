"""Robustness sweeps (SPEC §8): held-out streams of the world ``data.world`` with one knob changed
per sweep point.

A sweep is a knob and its values. Each point is a dataset of the world (:mod:`ssm_mm.worlds`) whose
config is the evaluated *base world* (``data.worlds.<data.world>``, adapted to the models' labels)
turned by the world's ``sweep_point`` into ``eval.sweep_streams`` held-out streams of
``eval.sweep_seconds`` with ``eval.sweep_seed`` and the knob set to the point's value. Points are
generated once into ``<data.cache_dir>/<world>`` (keyed by the whole config) and reused by later
runs. The knobs and their default values are the world's (``World.sweep_values``; ``eval.sweep=all``
runs ``World.sweep_all``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssm_mm.evaluation.harness import EvalError
from ssm_mm.worlds import World

__all__ = ["SweepPoint", "sweep_spec", "sweep_points", "ensure_point"]


@dataclass(frozen=True)
class SweepPoint:
    """One point: ``knob = value`` and the world config whose ``"val"`` split are its streams."""

    knob: str
    value: float
    config: Any

    @property
    def name(self) -> str:
        return f"{self.knob}={self.value:g}"


def sweep_spec(
    sweep: str | None, values: list[float], sweeps: dict[str, list[float]], world: World
) -> dict[str, list[float]]:
    """The sweeps asked for by ``eval.sweep`` / ``eval.sweep_values`` / ``eval.sweeps`` as
    ``{knob: values}`` over ``world``'s knobs (``sweep=all``: its ``sweep_all`` with default values)."""
    defaults = world.sweep_values
    out: dict[str, list[float]] = {}
    if sweep:
        names = (
            list(world.sweep_all) if sweep == "all" else [k.strip() for k in sweep.split(",") if k.strip()]
        )
        if sweep == "all" and values:
            raise EvalError("eval.sweep=all takes no eval.sweep_values (each knob uses its defaults)")
        if len(names) > 1 and values:
            raise EvalError(
                f"eval.sweep={sweep!r} names several knobs: give their values with eval.sweeps.KNOB=[...]"
            )
        for k in names:
            out[k] = list(values) if values else list(defaults.get(k, []))
    elif values:
        raise EvalError("eval.sweep_values given without eval.sweep (which knob?)")
    for k, v in (sweeps or {}).items():
        out[k] = list(v) if v else list(defaults.get(k, []))
    for k, v in out.items():
        if k not in defaults:
            raise EvalError(
                f"unknown sweep knob {k!r} of world {world.name!r}; valid: {', '.join(defaults)} (or all)"
            )
        if not v:
            raise EvalError(f"sweep {k!r} has no values")
        if any(not math.isfinite(float(x)) for x in v):
            raise EvalError(f"sweep {k!r}: values must be finite numbers, got {v}")
    return out


def sweep_points(
    world: World, base: Any, knob: str, values: list[float], *, streams: int, seconds: float, seed: int
) -> list[SweepPoint]:
    """The points of one sweep over ``world``'s config ``base`` (each validated by the world)."""
    points = []
    for v in values:
        try:
            config = world.sweep_point(base, knob, float(v), streams=streams, seconds=seconds, seed=seed)
        except (TypeError, ValueError) as e:
            raise EvalError(f"sweep point {knob}={v:g}: {e}") from None
        points.append(SweepPoint(knob, float(v), config))
    return points


def ensure_point(world: World, point: SweepPoint, cache_dir: str | Path, workers: int = 1) -> Path:
    """The manifest of a sweep point's streams (generated on first use, then cached)."""
    return world.ensure(Path(cache_dir) / world.name, point.config, "val", workers=workers)
