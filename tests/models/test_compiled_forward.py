"""The model forward under torch.compile (``train.compile``, issue 32 item 2): one graph with no breaks
on a real training batch, and the compiled forward equal to the eager one (values, state, gradients)."""

import pytest
import support
import torch

from ssm_mm.models.multimodal import bucket_length, prepare_compile
from ssm_mm.worlds.avworld import CLASSES

LABELS = ["background"] + [c.name for c in CLASSES]
HYBRID = {}  # the tiny hybrid: SSM, SSM, windowed attention, SSM
TRANSFORMER = {"pattern": "AA", "attn_window": None}  # full attention: its cache grows every window
ROTATED = {"rotate_pairs": 2}  # the hybrid with rotated state pairs (their angles summed in float64)


def rel(a, b) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def windows(make_dataset, j: int):
    """Window ``j`` of streams 0 and 1 of the tiny world, collated (2-s windows: a training batch)."""
    ds = make_dataset(2.0)
    return ds.collate([ds.windows(0)[j], ds.windows(1)[j]])


def carried_state(model, make_dataset):
    """The state after the first window: what the trainer carries into the second."""
    with torch.no_grad():
        return model.forward_batch(windows(make_dataset, 0), model.init_state(2)).state


@pytest.mark.parametrize("arch", [HYBRID, TRANSFORMER, ROTATED], ids=["hybrid", "transformer", "rotated"])
def test_training_forward_has_no_graph_breaks(make_dataset, arch):
    model = support.tiny_model(0, LABELS, **arch).train()
    batch = windows(make_dataset, 1)
    assert batch.video.shape[0] and batch.audio.shape[0] and not bool(batch.valid.all())  # media + padding
    state = carried_state(model, make_dataset)
    prepare_compile()
    torch._dynamo.reset()
    ex = torch._dynamo.explain(model.forward_batch)(batch, state)
    assert ex.graph_break_count == 0, [r.reason.splitlines()[0] for r in ex.break_reasons]
    assert ex.graph_count == 1


def test_bucket_length_pads_at_most_an_eighth_with_eight_buckets_per_octave():
    got = [bucket_length(n) for n in range(1, 5000)]
    assert got[:8] == list(range(1, 9))
    for n, b in zip(range(1, 5000), got):
        assert n <= b <= n + n / 8, (n, b)
        assert bucket_length(b) == b  # a bucket is its own bucket
    for k in range(3, 12):  # lengths in (2^k, 2^(k+1)] fall in 8 buckets
        assert len({bucket_length(n) for n in range(2**k + 1, 2 ** (k + 1) + 1)}) == 8
    assert bucket_length(100, per_octave=4) == 112  # multiples of 64 / 4 = 16


@pytest.mark.slow
def test_compiled_forward_equals_eager_with_carried_state(make_dataset):
    """The second window of two streams from the state the first left (length 84, padded to its bucket,
    88): outputs, the new state and gradients of the compiled forward equal eager's up to float32
    rounding (inductor fuses and reorders sums: ~1e-6 relative, as much as a 1e-7 relative change of
    the weights moves the eager values). One inductor compile (forward and backward): ~25 s, several
    minutes with a cold inductor cache."""
    compiled = support.tiny_model(0, LABELS).train()
    eager = support.tiny_model(0, LABELS).train()
    state = carried_state(eager, make_dataset)
    batch = windows(make_dataset, 1)
    assert bucket_length(batch.kind.shape[1]) > batch.kind.shape[1]  # the padding is exercised
    torch._dynamo.reset()
    out_c, out_e = compiled.compiled_forward()(batch, state), eager.forward_batch(batch, state)
    assert out_c.hidden.shape == out_e.hidden.shape
    assert rel(out_c.hidden, out_e.hidden) <= 1e-5
    new_c, new_e = out_c.state.to_dict(), out_e.state.to_dict()
    for k, v in new_e.items():
        assert new_c[k].shape == v.shape and new_c[k].dtype == v.dtype, k
        if v.dtype == torch.float32:
            assert rel(new_c[k], v) <= 1e-5 or not v.any(), k
        else:  # token counts, cache validity, the float64 times of the last tokens: exact
            assert torch.equal(new_c[k], v), k
    # a fixed random read-out: a well-conditioned loss (the hidden states are RMS-normalised, so e.g.
    # their mean square has near-cancelling gradients that amplify any rounding difference)
    readout = torch.randn(out_e.hidden.shape, generator=torch.Generator().manual_seed(0))
    (out_c.hidden * readout).sum().backward()
    (out_e.hidden * readout).sum().backward()
    for (name, p), q in zip(compiled.named_parameters(), eager.parameters()):
        if q.grad is None or not q.grad.any():  # unused, or exactly zero
            assert p.grad is None or not p.grad.any(), name
            continue
        assert rel(p.grad, q.grad) <= 1e-4, name


def test_media_tokens_without_their_features_are_refused(make_dataset):
    """embed reads media rows by position, with no shape check a wrong batch would trip: the eager
    forward names the missing modality instead of reading other rows."""
    model = support.tiny_model(0, LABELS)
    batch = windows(make_dataset, 0)
    for name, video, audio in (("video", None, batch.audio), ("audio", batch.video, batch.audio[:0])):
        with pytest.raises(ValueError, match=f"{name} tokens but no {name} features"):
            model(batch.kind, batch.t, batch.src, batch.valid, video, audio)
