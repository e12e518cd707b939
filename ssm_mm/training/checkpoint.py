"""Atomic training checkpoints with exact resume (SPEC §8).

A checkpoint is one file ``<run>/checkpoints/step_<N>.pt`` written by ``torch.save`` to a temporary
name in the same folder and renamed into place (``os.replace`` is atomic on POSIX), so a reader can
never pick up a half-written file. It holds only tensors and plain Python values and is loaded with
``weights_only=True`` (nothing is unpickled beyond that). A ``sha256`` of the payload bytes is kept
in a ``.sha256`` side file written after the rename; a file whose digest does not match (truncated
or corrupted on disk) is refused with a clear error and the previous checkpoint is used.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

_NAME = re.compile(r"^step_(\d{8})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used (truncated, corrupt, incompatible)."""


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_path(folder: str | os.PathLike, step: int) -> Path:
    return Path(folder) / f"step_{step:08d}.pt"


def save_checkpoint(
    payload: dict[str, Any], folder: str | os.PathLike, step: int, keep_last: int = 2
) -> Path:
    """Write ``payload`` atomically as step ``step`` and prune all but the newest ``keep_last``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(folder, step)
    tmp = folder / f".{final.name}.tmp-{os.getpid()}"
    torch.save(payload, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    digest = _digest(tmp)
    os.replace(tmp, final)
    side = final.with_suffix(".sha256")
    side_tmp = folder / f".{side.name}.tmp-{os.getpid()}"
    side_tmp.write_text(digest + "\n")
    os.replace(side_tmp, side)
    prune(folder, keep_last)
    return final


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoints in ``folder``, oldest first (temporary files ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def prune(folder: str | os.PathLike, keep_last: int) -> None:
    ckpts = list_checkpoints(folder)
    for _, p in ckpts[: max(0, len(ckpts) - max(1, keep_last))]:
        p.unlink(missing_ok=True)
        p.with_suffix(".sha256").unlink(missing_ok=True)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load one checkpoint, verifying its digest; :class:`CheckpointError` if unusable."""
    path = Path(path)
    side = path.with_suffix(".sha256")
    if not side.exists():
        raise CheckpointError(f"{path}: no {side.name} next to it (the write did not finish)")
    want = side.read_text().strip()
    got = _digest(path)
    if got != want:
        raise CheckpointError(
            f"{path}: content digest {got[:12]}… does not match {want[:12]}… (truncated or corrupt)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means unusable
        raise CheckpointError(f"{path}: cannot be loaded ({type(e).__name__}: {e})") from None


def load_latest(folder: str | os.PathLike) -> tuple[dict[str, Any], Path] | None:
    """The newest usable checkpoint in ``folder`` (falling back past unusable ones, with a warning)."""
    for _, p in reversed(list_checkpoints(folder)):
        try:
            return load_checkpoint(p), p
        except CheckpointError as e:
            warnings.warn(f"refusing checkpoint: {e}; trying the previous one", stacklevel=2)
    return None
