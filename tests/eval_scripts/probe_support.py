"""Bad-input cases shared by the probe scripts' tests (fixtures: conftest.py)."""

from __future__ import annotations


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
