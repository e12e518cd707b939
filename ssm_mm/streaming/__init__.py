"""Streaming inference (SPEC §7): ``session`` (StreamingSession), ``batched`` (step_sessions, the tick
stepper), ``records`` (StreamingError and the emitted records), ``inputs`` (checks of pushed media),
``drive`` (streaming a media file, for the CLI and evaluation) and ``__main__`` (the demo CLI).

The state types the session carries live in :mod:`ssm_mm.state` (``streaming.state`` re-exports them).
"""
