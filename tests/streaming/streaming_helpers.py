"""Helpers for the streaming tests: a tiny model, decoded media on the stream clock, a driver that
pushes a stream in random pieces, and the offline path rebuilt from a session's transcript."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import support
import torch

from ssm_mm.data.featurize import AudioFeaturizer, VideoFeaturizer, audio_token_times
from ssm_mm.data.interleave import TEXT, TextTurn, interleave, tick_summary_positions
from ssm_mm.data.tokenizer import role_index
from ssm_mm.models.multimodal import MultimodalSSM
from ssm_mm.worlds.avworld import CLASSES

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


def offline_inputs(model: MultimodalSSM, m: Media, transcript, modalities, audio=None, sr=None):
    """The offline path's inputs: the dataset's featurizers and interleaver over the whole stream plus
    the session's transcript as dialogue turns. Returns (TimedTokens, video features or None, audio
    features or None), on the CPU."""
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
    return interleave(vt, at, turns, cfg, t0=m.t0), video, audio_feats


def offline_forward(model: MultimodalSSM, m: Media, transcript, modalities, audio=None, sr=None):
    """:func:`offline_inputs` through one forward on the model's device. Returns (TimedTokens,
    hidden (L, d) on that device)."""
    tokens, video, audio_feats = offline_inputs(model, m, transcript, modalities, audio, sr)
    dev = next(model.parameters()).device
    video, audio_feats = (None if x is None else x.to(dev) for x in (video, audio_feats))
    with torch.no_grad():
        kind, t, src = (x[None].to(dev) for x in (tokens.kind, tokens.t, tokens.src))
        out = model(kind, t, src, None, video, audio_feats)
    return tokens, out.hidden[0]


def speak_threshold_for(model, m: Media, modalities, quantile=0.75) -> float:
    """A speak threshold at which some (not all) ticks of this stream fire: a dry run's quantile."""
    s = model.stream(modalities=modalities, t0=m.t0, speak_threshold=1.0)
    drive(s, m, np.random.default_rng(0))
    speaks = [x.speak for x in s.segment_labels() if x.has_media]
    return float(np.quantile(speaks, quantile))


def check_session_parity(model, m, modalities, seed, audio=None, sr=None, tol=1e-4):
    """A session fed ``m`` in random pieces, with questions and proactive responses, against one
    offline forward over the same media plus the session's transcript: the same tokens, and hidden
    states, LM logits, event scores and speak-now probabilities within ``tol`` (absolute) at every
    token / tick. Works on any device the model is on (comparisons on the CPU)."""
    thr = speak_threshold_for(model, m, modalities)
    s = model.stream(modalities=modalities, t0=m.t0, speak_threshold=thr, max_answer_tokens=5, record=True)
    rec = ForwardRecorder(model)
    try:
        answers = drive(s, m, np.random.default_rng(seed), asks=0.25, audio=audio, sr=sr)
    finally:
        rec.close()
    transcript = s.transcript()
    kinds, times, srcs, hidden = (x.cpu() for x in rec.cat())
    tokens, ref = offline_forward(model, m, transcript, modalities, audio=audio, sr=sr)
    ref = ref.cpu()

    # the same tokens in the same order at the same times
    assert torch.equal(kinds, tokens.kind)
    assert torch.equal(times, tokens.t)
    text = tokens.kind == TEXT
    assert torch.equal(srcs[text], tokens.src[text])
    # the same hidden states, hence the same LM logits, at every token
    assert (hidden - ref).abs().max().item() <= tol
    dev = next(model.parameters()).device
    with torch.no_grad():
        lm_diff = (model.heads["lm"](hidden.to(dev)) - model.heads["lm"](ref.to(dev))).abs().max().item()
    assert lm_diff <= tol

    # per-tick labels and speak-now probabilities read at the offline summary positions
    labels = [x for x in s.segment_labels() if x.has_media]
    ticks, pos = tick_summary_positions(tokens)
    assert [x.tick for x in labels] == ticks.tolist()
    with torch.no_grad():
        probs = torch.softmax(model.heads["event"](ref[pos].to(dev)), -1).cpu()
        speak = torch.sigmoid(model.heads["speak"](ref[pos].to(dev))).squeeze(-1).cpu()
    got_score = torch.tensor([x.score for x in labels])
    got_index = torch.tensor([x.index for x in labels])
    assert (probs.gather(1, got_index[:, None])[:, 0] - got_score).abs().max() <= tol
    assert (probs.max(-1).values - got_score).abs().max() <= tol  # the chosen label is the argmax
    assert (speak - torch.tensor([x.speak for x in labels])).abs().max() <= tol

    # the scenario exercised what it should: questions and proactive responses in the sequence
    roles = [(x.role, x.proactive) for x in transcript]
    assert len(answers) >= 1 and ("user", False) in roles
    assert ("assistant", True) in roles, "no proactive response fired: the test lost its coverage"
    events = s.poll()
    assert [e.t for e in events] == [x.t for x in transcript if x.proactive]


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
