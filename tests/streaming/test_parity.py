"""Streaming == offline (SPEC §7): a session fed in random pieces, with questions and proactive
responses, gives the same hidden states / head outputs as one offline forward over the interleaved
sequence of the same media plus the session's own transcript."""

import numpy as np
import pytest
import torch
from streaming_helpers import ForwardRecorder, drive, offline_forward

from ssm_mm.data.interleave import TEXT, tick_summary_positions
from ssm_mm.media import sinc_resample
from ssm_mm.streaming.session import StreamingResampler

TOL = 1e-4


def _threshold_for(model, m, modalities, quantile=0.75) -> float:
    """A speak threshold at which some (not all) ticks of this stream fire: a dry run's quantile."""
    s = model.stream(modalities=modalities, t0=m.t0, speak_threshold=1.0)
    drive(s, m, np.random.default_rng(0))
    speaks = [x.speak for x in s.segment_labels() if x.has_media]
    return float(np.quantile(speaks, quantile))


def _check_parity(model, m, modalities, seed, audio=None, sr=None):
    thr = _threshold_for(model, m, modalities)
    s = model.stream(modalities=modalities, t0=m.t0, speak_threshold=thr, max_answer_tokens=5, record=True)
    rec = ForwardRecorder(model)
    try:
        answers = drive(s, m, np.random.default_rng(seed), asks=0.25, audio=audio, sr=sr)
    finally:
        rec.close()
    transcript = s.transcript()
    kinds, times, srcs, hidden = rec.cat()
    tokens, ref = offline_forward(model, m, transcript, modalities, audio=audio, sr=sr)

    # the same tokens in the same order at the same times
    assert torch.equal(kinds, tokens.kind)
    assert torch.equal(times, tokens.t)
    text = tokens.kind == TEXT
    assert torch.equal(srcs[text], tokens.src[text])
    # the same hidden states, hence the same LM logits, at every token
    assert (hidden - ref).abs().max().item() <= TOL
    with torch.no_grad():
        lm_diff = (model.lm_head(hidden) - model.lm_head(ref)).abs().max().item()
    assert lm_diff <= TOL

    # per-tick labels and speak-now probabilities read at the offline summary positions
    labels = [x for x in s.segment_labels() if x.has_media]
    ticks, pos = tick_summary_positions(tokens)
    assert [x.tick for x in labels] == ticks.tolist()
    with torch.no_grad():
        probs = torch.softmax(model.event_head(ref[pos]), -1)
        speak = torch.sigmoid(model.speak_head(ref[pos])).squeeze(-1)
    got_score = torch.tensor([x.score for x in labels])
    got_index = torch.tensor([x.index for x in labels])
    assert (probs.gather(1, got_index[:, None])[:, 0] - got_score).abs().max() <= TOL
    assert (probs.max(-1).values - got_score).abs().max() <= TOL  # the chosen label is the argmax
    assert (speak - torch.tensor([x.speak for x in labels])).abs().max() <= TOL

    # the scenario exercised what it should: questions and proactive responses in the sequence
    roles = [(x.role, x.proactive) for x in transcript]
    assert len(answers) >= 1 and ("user", False) in roles
    assert ("assistant", True) in roles, "no proactive response fired: the test lost its coverage"
    events = s.poll()
    assert [e.t for e in events] == [x.t for x in transcript if x.proactive]


@pytest.mark.parametrize("modalities", [("video", "audio"), ("audio",), ("video",)])
def test_session_equals_offline_forward(model, media, modalities):
    _check_parity(model, media[0], modalities, seed=1)


def test_session_equals_offline_with_resampled_audio(model, media):
    """Audio pushed at 48 kHz: the session's streaming resampler vs resampling the whole track."""
    m = media[1]
    audio48 = sinc_resample(m.samples, 16000, 48000)
    _check_parity(model, m, ("video", "audio"), seed=2, audio=audio48, sr=48000)


@pytest.mark.parametrize("orig", [44100, 22050, 48000, 8000, 16000])
def test_streaming_resampler_equals_whole_signal(orig):
    rng = np.random.default_rng(orig)
    x = torch.from_numpy(rng.normal(0, 0.3, orig + 777).astype(np.float32))  # ~1 s
    want = sinc_resample(x, orig, 16000)
    rs = StreamingResampler(orig, 16000)
    state, pieces, i, carry = rs.init_state(), [], 0, 0
    while i < x.shape[0]:
        n = int(rng.integers(1, 3000))
        y, state = rs(x[i : i + n], state)
        pieces.append(y)
        carry = max(carry, state.carry.shape[0])
        i += n
    y, state = rs.flush(state)
    pieces.append(y)
    got = torch.cat(pieces)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-6
    assert state.n_out == want.shape[0]
    # the carry stays bounded by one kernel plus one block, whatever the piece sizes
    assert carry < max(1, rs.kernel_size + rs.orig)


def test_media_only_session_equals_the_training_batch(model, media, avworld_dir):
    """The session against the dataset path itself (manifest -> load_features -> build_example ->
    collate -> forward_batch), on the stream without dialogue: same tokens, same hidden states."""
    import dataclasses

    from ssm_mm.data.dataset import build_example, collate, cut_window, load_features
    from ssm_mm.data.manifest import read_manifest

    spec = dataclasses.replace(read_manifest(avworld_dir / "manifest.jsonl").streams[0], dialogue=[])
    cfg = model.features
    ex = build_example(spec, load_features(spec, cfg), model.tokenizer, model.labels, cfg)
    batch = collate([cut_window(ex, 0, ex.n_ticks, cfg)], model.tokenizer.pad_id)
    with torch.no_grad():
        ref = model.forward_batch(batch).hidden[0]

    s = model.stream(t0=spec.t0, speak_threshold=1.0)
    rec = ForwardRecorder(model)
    try:
        drive(s, media[0], np.random.default_rng(3))
    finally:
        rec.close()
    kinds, times, _, hidden = rec.cat()
    n = batch.kind.shape[1]  # the dataset drops media past the manifest's duration; the session has it all
    assert torch.equal(kinds[:n], batch.kind[0]) and torch.equal(times[:n], batch.t[0])
    assert (hidden[:n] - ref).abs().max().item() <= TOL
    labels = [x for x in s.segment_labels() if x.has_media and x.tick < ex.n_ticks]
    with torch.no_grad():
        pred = model.event_head(model.tick_hidden(ref[None], batch.summary_pos))[0].argmax(-1)
    assert [x.index for x in labels] == pred[batch.tick_valid[0]].tolist()
