"""Worlds: built-in data generators, plugged in by name (SPEC §2, §5).

A world writes §4 datasets (real media files plus a manifest) from a typed config, so a run with no
``data.manifest`` trains and validates on it. The core (training, evaluation, config) knows worlds
only through this registry; everything about one world (its generator, question templates, attribute
names, sweeps, command line) lives in its own package below this one.

    data:
      world: avworld            # which registered world (default: the built-in one)
      worlds:
        avworld: {streams: 64, seconds: 30, fps: 4}   # its config section, typed by world.config

A world is a :class:`World` subclass instance given to :func:`register`; its config dataclass becomes
the section ``data.worlds.<name>`` of every config loaded afterwards (unknown keys and wrong types fail
at load, and its ``__post_init__`` checks the values). Register your own from your own code::

    from ssm_mm.worlds import World, register
    register(MyWorld())  # before load_config(...)
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = ["World", "register", "get", "names", "DEFAULT", "default_configs", "selected"]


class World:
    """What the core asks of a world. Subclasses set :attr:`name` and :attr:`config` and implement
    :meth:`ensure`; the other members have defaults for a world without pinned labels or sweeps."""

    name: str = ""
    # its knobs: a dataclass whose no-argument instance is the default run's world; it checks its
    # values in __post_init__ (ValueError naming the field)
    config: type = object
    # robustness sweeps (eval.sweep / eval.sweeps): knob -> the values used when none are given;
    # sweep_all: the knobs eval.sweep=all runs
    sweep_values: Mapping[str, Sequence[float]] = {}
    sweep_all: Sequence[str] = ()
    # config fields that only pick which held-out streams validate (a resumed run may change them)
    split_knobs: Sequence[str] = ()

    def ensure(self, cache_dir: Path, cfg: Any, split: str, *, workers: int = 1) -> Path:
        """The manifest of ``split`` ("train" | "val") of the world ``cfg``, generated into
        ``cache_dir`` on first use and reused afterwards (same config -> same dataset)."""
        raise NotImplementedError

    def with_knobs(self, cfg: Any, knobs: Mapping[str, Any]) -> Any:
        """``cfg`` (this world's config) with ``knobs`` replaced, typed and checked as the section
        ``data.worlds.<name>`` is: ValueError naming an unknown knob (and the one likely meant), a
        value of the wrong type, or a value the config's own checks refuse."""
        valid = [f.name for f in dataclasses.fields(self.config)]
        for key in knobs:
            if key not in valid:
                near = difflib.get_close_matches(str(key), valid, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise ValueError(f"unknown {self.name} knob {key!r}{hint}; valid: {', '.join(valid)}")
        try:
            return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cfg), dict(knobs)))
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or "?"
            raise ValueError(f"{self.name} knob {key}: {str(e).splitlines()[0]}") from None

    def labels(self, cfg: Any) -> list[str] | None:
        """The event labels a model trained on ``cfg`` pins, in order (``background`` excluded), or
        None to learn them from the training streams' segments."""
        return None

    def covering(self, cfg: Any, labels: Sequence[str]) -> Any | None:
        """``cfg`` changed so its streams carry event labels a model with ``labels`` knows (for
        evaluating that model on generated streams), or None when ``labels`` are not this world's."""
        return cfg

    def sweep_point(
        self, cfg: Any, knob: str, value: float, *, streams: int, seconds: float, seed: int
    ) -> Any:
        """The config of one sweep point: held-out streams (``streams`` of ``seconds`` with ``seed``,
        generated as the ``"val"`` split of the returned config) with ``knob`` set to ``value``;
        ValueError when that point is not a valid world."""
        raise ValueError(f"world {self.name!r} has no sweeps")

    def stream_seconds(self, cfg: Any) -> float | None:
        """The length in seconds of one stream of ``cfg`` (the training length T that long-stream
        evaluation multiplies), or None when its streams have no one length."""
        return None

    def long_streams(self, cfg: Any, multiple: float, *, streams: int, seed: int) -> Any | None:
        """The config of held-out streams ``multiple`` times as long as ``cfg``'s (``streams`` of them,
        with ``seed``, generated as the ``"val"`` split of the returned config), or None when this world
        cannot render them (the evaluation then joins its validation streams end to end instead).

        By default the point ``multiple`` of the world's ``length`` sweep (the same world process run
        longer) when the world has that sweep knob and a :meth:`stream_seconds`."""
        seconds = self.stream_seconds(cfg)
        if seconds is None or "length" not in self.sweep_values:
            return None
        return self.sweep_point(cfg, "length", float(multiple), streams=streams, seconds=seconds, seed=seed)


_REGISTRY: dict[str, World] = {}


def register(world: World) -> World:
    """Add ``world`` under ``world.name`` (replacing a world of that name); returns it."""
    if not world.name or not isinstance(world.name, str) or not world.name.isidentifier():
        raise ValueError(f"a world's name must be an identifier (got {world.name!r})")
    _REGISTRY[world.name] = world
    return world


def names() -> list[str]:
    """The registered worlds' names, in registration order."""
    return list(_REGISTRY)


def get(name: str) -> World:
    """The world registered as ``name``; KeyError listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown world {name!r}; known: {', '.join(_REGISTRY) or 'none'}") from None


def default_configs() -> dict[str, Any]:
    """{name: default config} of every registered world: the default of ``data.worlds``."""
    return {name: w.config() for name, w in _REGISTRY.items()}


def selected(data_cfg: Any) -> tuple[World, Any]:
    """The world ``data.world`` names and its config from ``data.worlds`` (its defaults when the
    section is absent); KeyError listing the known worlds."""
    world = get(data_cfg.world)
    cfg = (data_cfg.worlds or {}).get(world.name)
    return world, world.config() if cfg is None else cfg


from ssm_mm.worlds.avworld import WORLD as _BUILTIN  # noqa: E402  (registers the built-in world)

DEFAULT = register(_BUILTIN).name  # the world a config uses unless data.world says otherwise
