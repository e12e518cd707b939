"""The streaming resampler: pieces of any size give the whole-signal sinc_resample result."""

import numpy as np
import pytest
import torch

from ssm_mm.media import sinc_resample
from ssm_mm.media.resampler import MAX_KERNEL_ELEMENTS, ResampleRateError, StreamingResampler


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


def test_streaming_resampler_refuses_rate_pairs_with_a_huge_filter():
    # 44101 and 16000 share no factor: the polyphase kernel would need 16000 x 44135 taps
    with pytest.raises(ResampleRateError, match="44101 Hz -> 16000 Hz.*gcd 1"):
        StreamingResampler(44101, 16000)
    rs = StreamingResampler(44100, 16000)  # gcd 100: a small kernel
    assert rs.new * rs.kernel_size <= MAX_KERNEL_ELEMENTS
