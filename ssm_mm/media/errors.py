"""The one error type of ``ssm_mm.media``."""

from __future__ import annotations

from pathlib import Path


class MediaError(ValueError):
    """A media file cannot be used: missing, zero bytes, corrupt, empty, or lacking a needed stream.

    ``path`` is the file and ``reason`` says what is wrong; the message holds both.
    """

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
