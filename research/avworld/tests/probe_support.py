"""Helpers shared by the probe scripts' tests: loading a script, bad-input cases (fixtures: conftest.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

RESEARCH = Path(__file__).resolve().parents[1]  # research/avworld/: a folder of scripts, not a package


def load_script(name: str):
    """Import ``research/avworld/<name>.py`` as a module (its folder on ``sys.path``, as when it runs as a
    script, so it finds the shared ``probes`` module beside it)."""
    if str(RESEARCH) not in sys.path:
        sys.path.insert(0, str(RESEARCH))
    spec = importlib.util.spec_from_file_location(f"research_avworld_{name}", RESEARCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def bad_probe_args(world, tmp_path, case: str) -> tuple[str, list[str]]:
    """(manifest, extra arguments) of a probe script for one bad-input case shared by the probes:
    ``missing`` manifest, ``no_scenes`` beside it, a bad ``share``, ``one_stream`` (no test side)."""
    manifest, extra = str(world), []
    if case == "missing":
        manifest = str(tmp_path / "nope.jsonl")
    elif case == "no_scenes":
        (tmp_path / "w").mkdir()
        copy = tmp_path / "w" / "manifest.jsonl"
        copy.write_text(world.read_text().replace('"media/', f'"{world.parent}/media/'))
        manifest = str(copy)
    elif case == "share":
        extra = ["--train-share", "1.5"]
    elif case == "one_stream":
        extra = ["--streams", "1"]
    return manifest, extra


BAD_PROBE_CASES = [
    ("missing", "no such file"),
    ("no_scenes", "no scenes.jsonl"),
    ("share", "train-share"),
    ("one_stream", "both sides"),
]
