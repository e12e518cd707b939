"""Streaming inference: per-layer state dataclasses (and the StreamingSession built on them)."""
