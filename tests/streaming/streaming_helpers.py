"""Helpers for the streaming tests: a tiny model, decoded media on the stream clock, a driver that
pushes a stream in random pieces, and the offline path rebuilt from a session's transcript."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import support
import torch

from ssm_mm.data.avworld import CLASSES
from ssm_mm.data.featurize import AudioFeaturizer, VideoFeaturizer, audio_token_times
from ssm_mm.data.interleave import TextTurn, interleave
from ssm_mm.data.tokenizer import role_index
from ssm_mm.models.multimodal import MultimodalSSM

LABELS = ["background"] + [c.name for c in CLASSES]
QUESTIONS = [
    "how many times did the bell ring?",
    "what shape is on screen now?",
    "tell me when the drum plays",
]


def tiny_model(seed: int = 0) -> MultimodalSSM:
    """The suite's tiny model (tests/support.py): d_model 32, a 24-token window that wraps in a few ticks."""
    return support.tiny_model(seed, LABELS)


def micro_model(seed: int = 0) -> MultimodalSSM:
    """The smallest hybrid (d_model 16, one SSM and one attention layer, window 8): for long streams."""
    return support.tiny_model(seed, LABELS, d_model=16, pattern="MA", attn_window=8, mlp_ratio=1.0)


@dataclass
class Media:
    """A decoded stream on the stream clock (``t0`` = the manifest's clock start)."""

    path: object
    t0: float
    frames: torch.Tensor  # (F, H, W, 3) uint8
    times: torch.Tensor  # (F,) float64 stream clock
    samples: torch.Tensor  # (N,) float32 at sample_rate
    sample_rate: int
    audio_t0: float  # stream time of samples[0]


class ForwardRecorder:
    """Wraps ``model.forward`` to record, per call, the valid tokens' kind, time, src and hidden state
    (batch 1 only), so a session's outputs can be compared with the offline forward token by token."""

    def __init__(self, model: MultimodalSSM):
        self.model = model
        self.kind, self.t, self.src, self.hidden = [], [], [], []
        self._orig = model.forward

        def forward(kind, t, src, valid=None, video=None, audio=None, state=None):
            out = self._orig(kind, t, src, valid, video, audio, state)
            assert kind.shape[0] == 1, "ForwardRecorder records batch-1 calls only"
            v = torch.ones_like(kind, dtype=torch.bool) if valid is None else valid
            self.kind.append(kind[v])
            self.t.append(t.to(torch.float64)[v])
            self.src.append(src[v])
            self.hidden.append(out.hidden[v])
            return out

        model.forward = forward

    def close(self) -> None:
        del self.model.forward  # back to the class's forward

    def cat(self):
        return torch.cat(self.kind), torch.cat(self.t), torch.cat(self.src), torch.cat(self.hidden)


def drive(session, m: Media, rng: np.random.Generator, *, asks: float = 0.0, audio=None, sr=None, close=True):
    """Push ``m``'s media into ``session`` in random-sized pieces, the modalities interleaved at random
    (either may run ahead), asking a question after a piece with probability ``asks``.

    ``audio``/``sr``: push these samples (stream time ``m.audio_t0``) instead of ``m.samples``.
    Returns the answers given.
    """
    samples = m.samples if audio is None else audio
    sr = m.sample_rate if sr is None else sr
    fi, ai = 0, 0
    F, N = m.frames.shape[0], samples.shape[0]
    has_v, has_a = "video" in session.modalities, "audio" in session.modalities
    answers = []
    while (has_v and fi < F) or (has_a and ai < N):
        todo = [x for x, left in (("v", has_v and fi < F), ("a", has_a and ai < N)) if left]
        if rng.choice(todo) == "v":
            n = int(rng.integers(1, 5))
            session.push_video(m.frames[fi : fi + n], m.times[fi : fi + n])
            fi += n
        else:
            n = int(rng.integers(50, sr))  # up to 1 s of audio
            session.push_audio(samples[ai : ai + n], sr, m.audio_t0 + ai / sr)
            ai += n
        if asks and session.ticks_done > 0 and rng.random() < asks:
            answers.append(session.ask(str(rng.choice(QUESTIONS))))
    if close:
        session.close()
    return answers


def offline_forward(model: MultimodalSSM, m: Media, transcript, modalities, audio=None, sr=None):
    """The offline path: the dataset's featurizer and interleaver over the whole stream plus the
    session's transcript as dialogue turns, one forward. Returns (TimedTokens, hidden (L, d))."""
    cfg = model.features
    vt = at = None
    video = audio_feats = None
    if "video" in modalities:
        video, vt = VideoFeaturizer(cfg)(m.frames, m.times)  # times already on the stream clock
    if "audio" in modalities:
        samples = m.samples if audio is None else audio
        if sr is not None and sr != cfg.sample_rate:
            from ssm_mm.media import resample

            samples = resample(samples, sr, cfg.sample_rate)  # the whole signal at once, as decoding does
        fz = AudioFeaturizer(cfg)
        audio_feats, _, _ = fz(samples, fz.init_state(t0=m.audio_t0))
        at = audio_token_times(cfg, m.audio_t0, 0, audio_feats.shape[0])
    turns = [
        TextTurn(t=x.t, role=role_index(x.role), ids=list(x.ids), index=i) for i, x in enumerate(transcript)
    ]
    tokens = interleave(vt, at, turns, cfg, t0=m.t0)
    with torch.no_grad():
        out = model(tokens.kind[None], tokens.t[None], tokens.src[None], None, video, audio_feats)
    return tokens, out.hidden[0]


def states_equal(a, b) -> bool:
    """Exact equality of two snapshots (nested dicts/lists of tensors and primitives)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(states_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(states_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return type(a) is type(b) and a == b
