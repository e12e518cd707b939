"""Durable session snapshots on disk: one file per session, written atomically.

A file ``<dir>/<session id>.pt`` holds (``torch.save``, loadable with ``weights_only=True``)::

    {"format": "ssm_mm.serve.snapshot", "version": 1, "session": id,
     "state": StreamingSession.state_dict(),
     "cursor": {"video_until": t, "audio_until": t, "audio_rate": Hz},  # media the state consumed (or None)
     "questions": [[placed, t, id, text], ...],                        # asked, not answered yet
     "written": unix time}

The write goes to a temporary file in the same folder, is fsync'ed, then ``os.replace``'d over the
old one (and the folder fsync'ed): a ``kill -9`` at any point leaves the previous snapshot or the new
one, never a torn file.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

import torch

FORMAT = "ssm_mm.serve.snapshot"
VERSION = 1
# Session ids the server makes (and the only ones it looks up on disk: no path tricks).
SESSION_ID = re.compile(r"^[0-9a-f]{16}$")


class SnapshotError(ValueError):
    """A snapshot file that cannot be read back (damaged, another format)."""


class SnapshotStore:
    """Atomic per-session snapshot files in one folder (created if missing)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(".*.tmp"):  # left by a kill -9 in the middle of a write
            stale.unlink(missing_ok=True)

    def path(self, sid: str) -> Path:
        if not SESSION_ID.match(sid):
            raise SnapshotError(f"session id {sid!r} is not 16 lowercase hex digits")
        return self.folder / f"{sid}.pt"

    def write(self, sid: str, payload: dict) -> Path:
        """Write ``payload`` as ``sid``'s snapshot atomically."""
        path = self.path(sid)
        tmp = self.folder / f".{sid}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "wb") as f:
                torch.save(
                    {"format": FORMAT, "version": VERSION, "session": sid, **payload, "written": time.time()},
                    f,
                )
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself is durable
        finally:
            os.close(fd)
        return path

    def read(self, sid: str) -> dict | None:
        """``sid``'s snapshot, or None when there is none."""
        path = self.path(sid)
        if not path.is_file():
            return None
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged file: unpickling errors of several types
            raise SnapshotError(f"snapshot {path} cannot be read: {type(e).__name__}: {e}") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("version") != VERSION:
            raise SnapshotError(f"snapshot {path} is not a {FORMAT} version {VERSION} file")
        return d

    def remove(self, sid: str) -> None:
        self.path(sid).unlink(missing_ok=True)

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.pt") if SESSION_ID.match(p.stem))
