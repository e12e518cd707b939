"""Streaming == offline (SPEC §7): a session fed in random pieces, with questions and proactive
responses, gives the same hidden states / head outputs as one offline forward over the interleaved
sequence of the same media plus the session's own transcript."""

import numpy as np
import pytest
import torch
from streaming_helpers import ForwardRecorder, check_session_parity, drive

from ssm_mm.media import sinc_resample

TOL = 1e-4


@pytest.mark.parametrize("modalities", [("video", "audio"), ("audio",), ("video",)])
def test_session_equals_offline_forward(model, media, modalities):
    check_session_parity(model, media[0], modalities, seed=1)


def test_session_with_rotated_state_pairs_equals_offline(media):
    """``model.rotate_pairs``: the carried angles of every SSM layer, token by token in the session."""
    import support
    from streaming_helpers import LABELS

    model = support.tiny_model(0, LABELS, rotate_pairs=2)
    with torch.no_grad():
        for blk in model.backbone.blocks:
            if getattr(blk.mixer, "angle_proj", None) is not None:
                blk.mixer.angle_proj.weight.normal_(0, 8.0)  # the init is zero: make them turn
    check_session_parity(model, media[0], ("video", "audio"), seed=4)


def test_session_with_relu_gains_equals_offline(media):
    """``model.gain=relu``: tokens a head leaves out (γ exactly 0) are left out in the session too."""
    import support
    from streaming_helpers import LABELS

    model = support.tiny_model(0, LABELS, gain="relu")
    with torch.no_grad():
        for blk in model.backbone.blocks:
            if getattr(blk.mixer, "gain_log_scale", None) is not None:
                blk.mixer.gate_bias[blk.mixer.nheads :] = 0.0  # about half the writes exactly zero
    check_session_parity(model, media[0], ("video", "audio"), seed=5)


def test_session_equals_offline_with_resampled_audio(model, media):
    """Audio pushed at 48 kHz: the session's streaming resampler vs resampling the whole track."""
    m = media[1]
    audio48 = sinc_resample(m.samples, 16000, 48000)
    check_session_parity(model, m, ("video", "audio"), seed=2, audio=audio48, sr=48000)


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
        pred = model.heads["event"](model.tick_hidden(ref[None], batch.summary_pos))[0].argmax(-1)
    assert [x.index for x in labels] == pred[batch.tick_valid[0]].tolist()
