"""Models wired from layers: the hybrid backbone (and the multimodal model built on it)."""
