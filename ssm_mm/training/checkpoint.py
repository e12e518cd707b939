"""Atomic, verified training checkpoints that name their run (SPEC §8).

A checkpoint is one file ``<run>/checkpoints/step_<N>.pt`` written by ``torch.save`` to a temporary
name in the same folder, fsynced and renamed into place (``os.replace`` is atomic on POSIX), so a
reader never picks up a half-written file. It holds only tensors and plain Python values and is loaded
with ``weights_only=True``. Next to it, ``step_<N>.json`` (written atomically after the rename: it is
the commit point) records the payload's ``sha256``, the step, and the run it belongs to
(:class:`RunIdentity`: run id, hash of the resume-relevant config keys, and those keys' values, so a
resume can name the keys that differ). A checkpoint without that file, or whose bytes do not match
its digest, is *unverified*: never loaded, never counted as a kept checkpoint.

Pruning (:func:`prune`) keeps the checkpoint just written plus the newest verified ones of the same
run, up to ``keep_last``; checkpoints of other runs and unverified files are never pruned in favour of
it (the trainer sets those apart before training, see :mod:`ssm_mm.training.runs`). Checkpoints
written before run ids existed (a ``.sha256`` side file) are read as run ``"legacy"``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

_NAME = re.compile(r"^step_(\d{8})\.pt$")
LEGACY_RUN = "legacy"

# digests of files this process wrote or verified, keyed by (path, size, mtime_ns): a file is hashed
# at most once per process however often pruning looks at it
_VERIFIED: dict[tuple[str, int, int], str] = {}


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used (truncated, corrupt, incomplete)."""


@dataclass(frozen=True)
class RunIdentity:
    """Which run a checkpoint belongs to: ``run_id`` (minted at a fresh start, kept across resumes),
    ``config_hash`` (sha256 of ``config``) and ``config`` (the resume-relevant keys, dotted -> value)."""

    run_id: str
    config_hash: str
    config: dict[str, Any] = field(default_factory=dict)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _key(path: Path) -> tuple[str, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every filesystem lets a folder be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def checkpoint_path(folder: str | os.PathLike, step: int) -> Path:
    return Path(folder) / f"step_{step:08d}.pt"


def meta_path(path: str | os.PathLike) -> Path:
    """The side file of a checkpoint: ``step_<N>.json`` next to ``step_<N>.pt``."""
    return Path(path).with_suffix(".json")


def save_checkpoint(
    payload: dict[str, Any],
    folder: str | os.PathLike,
    step: int,
    keep_last: int = 2,
    run: RunIdentity | None = None,
) -> Path:
    """Write ``payload`` atomically as step ``step`` of ``run``, then :func:`prune` to ``keep_last``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    run = run or RunIdentity(LEGACY_RUN, "")
    final = checkpoint_path(folder, step)
    tmp = folder / f".{final.name}.tmp-{os.getpid()}"
    torch.save(payload, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    digest = _digest(tmp)
    meta_path(final).unlink(missing_ok=True)  # an older step N's record must not vouch for these bytes
    os.replace(tmp, final)
    meta = {
        "step": step,
        "sha256": digest,
        "run_id": run.run_id,
        "config_hash": run.config_hash,
        "config": run.config,
    }
    side, side_tmp = meta_path(final), folder / f".{meta_path(final).name}.tmp-{os.getpid()}"
    side_tmp.write_text(json.dumps(meta, indent=1) + "\n")
    with open(side_tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(side_tmp, side)
    _fsync_dir(folder)
    if (k := _key(final)) is not None:
        _VERIFIED[k] = digest
    prune(folder, keep_last, run.run_id, keep=final)
    return final


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoints in ``folder``, oldest first (temporary files ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The side record of a checkpoint (``sha256``, ``step``, ``run_id``, ``config_hash``, ``config``),
    without checking the payload; :class:`CheckpointError` if it is missing or unreadable."""
    path = Path(path)
    side = meta_path(path)
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
            if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
                raise ValueError("no sha256")
        except (ValueError, OSError) as e:
            raise CheckpointError(f"{path}: its record {side.name} is unreadable ({e})") from None
        return meta
    legacy = path.with_suffix(".sha256")
    if legacy.is_file():
        digest = legacy.read_text().strip()
        return {"sha256": digest, "run_id": LEGACY_RUN, "config_hash": None, "config": None}
    raise CheckpointError(f"{path}: no {side.name} next to it (the write did not finish)")


def verify(path: str | os.PathLike) -> dict[str, Any]:
    """The record of a checkpoint whose bytes match its digest; :class:`CheckpointError` otherwise."""
    path = Path(path)
    meta = read_meta(path)
    want = meta["sha256"]
    k = _key(path)
    if k is not None and _VERIFIED.get(k) == want:
        return meta
    if k is None:
        raise CheckpointError(f"{path}: missing")
    got = _digest(path)
    if got != want:
        raise CheckpointError(
            f"{path}: content digest {got[:12]}… does not match {want[:12]}… (truncated or corrupt)"
        )
    _VERIFIED[k] = got
    return meta


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load one checkpoint, verifying its digest; :class:`CheckpointError` if unusable."""
    path = Path(path)
    verify(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means unusable
        raise CheckpointError(f"{path}: cannot be loaded ({type(e).__name__}: {e})") from None


def load_latest(folder: str | os.PathLike, run_id: str | None = None) -> tuple[dict[str, Any], Path] | None:
    """The newest usable checkpoint in ``folder`` (of run ``run_id`` if given), falling back past
    unusable ones with a warning; None if there is none."""
    for _, p in reversed(list_checkpoints(folder)):
        try:
            if run_id is not None and read_meta(p).get("run_id") != run_id:
                continue
            return load_checkpoint(p), p
        except CheckpointError as e:
            warnings.warn(f"refusing checkpoint: {e}; trying the previous one", stacklevel=2)
    return None


@dataclass
class Scan:
    """The checkpoints of one folder, sorted into those of run ``run_id`` that verify (``good``, oldest
    first, with their records), those that do not (``bad``: path, reason) and other runs' (``foreign``)."""

    good: list[tuple[int, Path, dict]] = field(default_factory=list)
    bad: list[tuple[Path, str]] = field(default_factory=list)
    foreign: list[tuple[Path, str]] = field(default_factory=list)


def scan(folder: str | os.PathLike, run_id: str | None) -> Scan:
    """Sort ``folder``'s checkpoints for run ``run_id`` (None: whichever run the newest verified
    checkpoint belongs to). Reads records and hashes payloads; changes nothing."""
    out = Scan()
    found = []
    for step, p in list_checkpoints(folder):
        try:
            found.append((step, p, read_meta(p)))
        except CheckpointError as e:
            out.bad.append((p, str(e)))
    if run_id is None:  # adopt the run of the newest checkpoint that verifies
        for _step, p, meta in reversed(found):
            try:
                verify(p)
            except CheckpointError:
                continue
            run_id = meta.get("run_id")
            break
    for step, p, meta in found:
        if meta.get("run_id") != run_id:
            out.foreign.append((p, str(meta.get("run_id"))))
            continue
        try:
            out.good.append((step, p, verify(p)))
        except CheckpointError as e:
            out.bad.append((p, str(e)))
    return out


def set_apart(path: str | os.PathLike, into: str | os.PathLike) -> Path:
    """Move a checkpoint and its side files into folder ``into`` (same names; an older file of the
    same name there is replaced). Returns the new path of the checkpoint."""
    path, into = Path(path), Path(into)
    into.mkdir(parents=True, exist_ok=True)
    for p in (path, meta_path(path), path.with_suffix(".sha256")):
        if p.exists():
            shutil.move(str(p), str(into / p.name))
    return into / path.name


def prune(
    folder: str | os.PathLike, keep_last: int, run_id: str | None = None, keep: Path | None = None
) -> None:
    """Delete verified checkpoints of run ``run_id`` beyond the newest ``keep_last`` (``keep``, the one
    just written, always counts among them). Unverified files and other runs' checkpoints are left
    alone, so a corrupt or foreign checkpoint can never push out a good one."""
    ours = []
    for step, p in list_checkpoints(folder):
        if keep is not None and p == keep:
            ours.append((step, p))
            continue
        try:
            meta = verify(p)
        except CheckpointError:
            continue
        if run_id is None or meta.get("run_id") == run_id:
            ours.append((step, p))
    others = [p for _, p in ours if p != keep]
    room = max(1, keep_last) - (keep is not None)
    kept = set(others[len(others) - room :]) if room > 0 else set()
    if keep is not None:
        kept.add(keep)
    for _, p in ours:
        if p not in kept:
            p.unlink(missing_ok=True)
            meta_path(p).unlink(missing_ok=True)
            p.with_suffix(".sha256").unlink(missing_ok=True)
