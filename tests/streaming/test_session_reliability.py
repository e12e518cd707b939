"""Streaming sessions under hostile input (issue 29, ../shared/reliability-cases.md cases 7-10, 17):
snapshots tied to the weights and checked key by key, time jumps of any size at bounded cost, and a
question length cap."""

import copy
import time

import numpy as np
import pytest
import torch
from streaming_helpers import ForwardRecorder, states_equal, tiny_model

from ssm_mm.data.featurize import AudioFeaturizer, VideoFeaturizer, audio_token_times
from ssm_mm.data.interleave import interleave
from ssm_mm.streaming.session import StreamingError, weights_digest

EPOCH = 1.7e9  # an epoch-style clock: seconds since 1970
FRAMES = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
QUARTERS = np.arange(4) / 4.0


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, int(seconds * 16000)).astype(np.float32)


def _av_session(model, **opts):
    """A video+audio session fed its first second (4 frames, 1 s of noise), labels drained."""
    s = model.stream(speak_threshold=1.0, **opts)
    s.push_video(FRAMES, QUARTERS)
    s.push_audio(_noise(1.0), 16000, 0.0)
    s.segment_labels()
    return s


# ---------------------------------------------------------------------------------- snapshots


def test_snapshot_is_refused_by_a_model_with_the_same_config_but_other_weights():
    """Case 7: the fingerprint covers the weights, not only the configuration."""
    snap = _av_session(tiny_model(seed=0)).state_dict()
    tiny_model(seed=0).stream(state=snap)  # the same weights in another object: accepted
    with pytest.raises(StreamingError, match="other weights"):
        tiny_model(seed=1).stream(state=snap)


def test_weights_digest_is_cached_and_follows_in_place_updates():
    model = tiny_model()
    d0 = weights_digest(model)
    assert weights_digest(model) == d0 and len(d0) == 64
    snap = _av_session(model).state_dict()
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)  # an optimizer step changes weights in place
    d1 = weights_digest(model)
    assert d1 != d0
    with pytest.raises(StreamingError, match="other weights"):
        model.stream(state=snap)
    with torch.no_grad():
        next(model.parameters()).sub_(1e-3)
    model.load_state_dict(tiny_model().state_dict())  # back to the original values exactly
    assert weights_digest(model) == d0
    model.stream(state=snap)


def _paths(d, prefix=""):
    """Every key path of a nested snapshot dict, e.g. 'cursor.next_tick'."""
    for k, v in d.items():
        yield prefix + k
        if isinstance(v, dict) and k != "model_state":  # model_state keys are layer tensors
            yield from _paths(v, prefix + k + ".")


def _without(d, path):
    d = copy.deepcopy(d)
    *parents, last = path.split(".")
    x = d
    for p in parents:
        x = x[p]
    del x[last]
    return d


def test_snapshot_missing_a_key_names_it():
    """Case 8: a snapshot without any of its keys raises StreamingError naming the key (no KeyError);
    the snapshot passed in is not modified."""
    model = tiny_model()
    s = _av_session(model, record=True)
    s.ask("how many times did the bell ring?")
    snap = s.state_dict()
    paths = list(_paths(snap))
    assert "model_state" in paths and "cursor.next_tick" in paths and "audio.featurizer" in paths
    for path in paths:
        bad = _without(snap, path)
        before = copy.deepcopy(bad)
        with pytest.raises(StreamingError, match=path.split(".")[-1]) as err:
            model.stream(state=bad)
        assert "snapshot" in str(err.value)
        assert states_equal(bad, before), path
    for key in list(snap["model_state"])[:3]:
        bad = copy.deepcopy(snap)
        del bad["model_state"][key]
        with pytest.raises(StreamingError, match="model_state"):
            model.stream(state=bad)
    model.stream(state=snap)  # the intact snapshot still loads


# ---------------------------------------------------------------------------------- time jumps


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.mark.timeout(60)
def test_epoch_jump_in_video_only_session_is_bounded_and_keeps_working():
    """Case 9 (video): a jump of 1.7e9 s costs O(1): no tick-by-tick loop over the silence, memory
    bounded; the skipped ticks are reported as the pending-label cap reports undrained ones."""
    model = tiny_model()
    s = model.stream(modalities=("video",), speak_threshold=1.0, max_pending=16)
    s.push_video(FRAMES, QUARTERS)
    s.segment_labels()
    mem = s.memory_bytes()
    assert _timed(lambda: s.push_video(FRAMES, EPOCH + QUARTERS)) < 3.0
    assert s.memory_bytes() <= mem + 64 * 1024
    k = int(round(EPOCH / 0.5))  # tick k − 1 ends at EPOCH (holds the frame at EPOCH), tick k after it
    assert s.ticks_done == k + 1  # the frame at EPOCH + 0.75 leaves tick k + 1 open
    labels = s.segment_labels()
    assert [x.tick for x in labels] == list(range(k - 15, k + 1))  # the newest 16 kept
    assert s.dropped["labels"] == k - 16  # ticks 1 .. k were emitted, 16 kept
    assert [x.has_media for x in labels[-3:]] == [False, True, True]
    s.push_video(FRAMES, EPOCH + 1 + QUARTERS)  # keeps working: the frames after the jump are ticks
    got = s.segment_labels()
    assert [x.tick for x in got] == [k + 1, k + 2] and all(x.has_media for x in got)
    assert isinstance(s.ask("what shape is on screen now?"), str)
    assert s.time == EPOCH + 1.5


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["push_audio", "advance_to"])
def test_epoch_jump_in_audio_is_bounded_and_keeps_working(how):
    """Case 9 (audio): a 1.7e9 s gap is not filled sample by sample (that was 108 TB)."""
    model = tiny_model()
    s = model.stream(modalities=("audio",), speak_threshold=1.0)
    s.push_audio(_noise(1.0), 16000, 0.0)
    mem = s.memory_bytes()

    def jump():
        if how == "advance_to":
            s.advance_to(EPOCH)
        s.push_audio(_noise(1.0, seed=1), 16000, EPOCH)

    assert _timed(jump) < 3.0
    assert s.memory_bytes() <= mem + 256 * 1024
    assert s.ticks_done == int(round(EPOCH / 0.5)) + 2  # the next token (EPOCH + 1.1) is in the tick after
    last = s.segment_labels()[-1]
    assert last.has_media and last.end == EPOCH + 1.0
    assert isinstance(s.ask("how many times did the bell ring?"), str)


@pytest.mark.timeout(120)
def test_one_hour_gap_with_audio_is_bounded():
    """Case 10: an hour's jump in a video+audio session: no hour of silence is processed."""
    model = tiny_model()
    s = _av_session(model)
    mem = s.memory_bytes()

    def jump():
        s.push_audio(_noise(1.0, seed=2), 16000, 3600.0)
        s.push_video(FRAMES, 3600.0 + QUARTERS)
        s.push_video(FRAMES[:1], [3601.0])

    assert _timed(jump) < 3.0
    assert s.ticks_done == 2 * 3601 - 1  # tick 7201 (3600.5, 3601] may still get frames at 3601.0
    labels = s.segment_labels()
    assert len(labels) == s.options.max_pending and s.dropped["labels"] == 7200 - len(labels)  # ticks 1..7200
    assert s.memory_bytes() <= mem + 256 * 1024  # drained: state, carries and two buffered frames
    assert labels[-1].has_media and labels[-2].has_media and labels[-1].end == 3600.5
    assert not labels[-3].has_media


def test_short_audio_gaps_are_still_silence():
    """Gaps up to max_gap_seconds are filled with silence exactly as before (decode_audio's rule):
    pushing the silence explicitly gives bit-identical state."""
    model = tiny_model()
    a = model.stream(modalities=("audio",), speak_threshold=1.0)
    b = model.stream(modalities=("audio",), speak_threshold=1.0)
    for s in (a, b):
        s.push_audio(_noise(1.0), 16000, 0.0)
    a.push_audio(_noise(0.5, seed=1), 16000, 1.0 + a.options.max_gap_seconds)  # a gap of exactly the bound
    b.push_audio(np.zeros(int(16000 * b.options.max_gap_seconds), np.float32), 16000, 1.0)
    b.push_audio(_noise(0.5, seed=1), 16000, 1.0 + b.options.max_gap_seconds)
    assert states_equal(a.state_dict(), b.state_dict())


@pytest.mark.parametrize("gap", [3600.0, EPOCH])
def test_a_long_gap_equals_the_offline_forward_over_two_audio_segments(media, gap):
    """Semantics of a gap longer than max_gap_seconds: the audio before it gets max_gap_seconds of
    silence, the audio after it is featurized from its own start (as a new recording), and the model
    sees the real elapsed time once (the SSM decays by it in closed form). A session fed a stream with
    an hour cut out of it equals one offline forward over exactly those tokens."""
    m = media[0]
    model = tiny_model()
    cfg = model.features
    s = model.stream(t0=m.t0, speak_threshold=1.0, max_gap_seconds=1.0)
    half_f = int((m.times < m.t0 + 3.0).sum())
    half_a = int(round((m.t0 + 3.0 - m.audio_t0) * m.sample_rate))
    t_a2 = m.audio_t0 + half_a / m.sample_rate + gap
    frames2_t = m.times[half_f:] + gap
    rec = ForwardRecorder(model)
    try:
        s.push_video(m.frames[:half_f], m.times[:half_f])
        s.push_audio(m.samples[:half_a], m.sample_rate, m.audio_t0)
        s.push_audio(m.samples[half_a:], m.sample_rate, t_a2)
        s.push_video(m.frames[half_f:], frames2_t)
        s.close()
    finally:
        rec.close()
    kinds, times, _, hidden = rec.cat()

    fz = AudioFeaturizer(cfg)
    seg1 = torch.cat([m.samples[:half_a], torch.zeros(int(1.0 * m.sample_rate))])
    f1, _, _ = fz(seg1, fz.init_state(t0=m.audio_t0))
    f2, _, _ = fz(m.samples[half_a:], fz.init_state(t0=t_a2))
    t1 = audio_token_times(cfg, m.audio_t0, 0, f1.shape[0])
    t2 = audio_token_times(cfg, t_a2, 0, f2.shape[0])
    video, vt = VideoFeaturizer(cfg)(m.frames, torch.cat([m.times[:half_f], frames2_t]))
    tokens = interleave(vt, torch.cat([t1, t2]), [], cfg, t0=m.t0)
    with torch.no_grad():
        kind, t, src = (x[None] for x in (tokens.kind, tokens.t, tokens.src))
        ref = model(kind, t, src, None, video, torch.cat([f1, f2])).hidden[0]
    assert torch.equal(kinds, tokens.kind) and torch.equal(times, tokens.t)
    assert (hidden - ref).abs().max().item() <= 1e-4


# ---------------------------------------------------------------------------------- questions


def test_overlong_question_is_refused_and_later_questions_are_answered():
    """Case 17: a 10,000-character question raises, leaves the session unchanged, and the next
    question gets the answer it would have got without the refused one."""
    model = tiny_model()
    s = _av_session(model, max_answer_tokens=4)
    twin = model.stream(state=s.state_dict())
    before = s.state_dict()
    with pytest.raises(StreamingError, match="max_question_chars=512"):
        s.ask("b" * 10_000)
    assert states_equal(s.state_dict(), before)
    with pytest.raises(StreamingError, match="max_question_tokens=512"):
        s.ask("\U0001f514" * 200)  # 200 characters but 800 byte tokens
    assert states_equal(s.state_dict(), before)
    q = "how many times did the bell ring?"
    assert s.ask(q) == twin.ask(q)
    assert states_equal(s.state_dict(), twin.state_dict())
    long_ok = model.stream(state=before, max_question_chars=20_000, max_question_tokens=20_000)
    assert isinstance(long_ok.ask("b" * 10_000), str)  # the caps are options
    for bad in ({"max_question_chars": 0}, {"max_question_tokens": -1}, {"max_gap_seconds": -1.0}):
        with pytest.raises(StreamingError, match=next(iter(bad))):
            model.stream(**bad)


@pytest.mark.timeout(60)
def test_driver_fast_forwards_over_a_gap_in_the_media():
    """The CLI / evaluation driver pushes one tick per round; over a gap in a file's timestamps it
    jumps to the round of the next media (or of the next question) instead of looping over the gap."""
    from ssm_mm.streaming.drive import Question, StreamMedia, drive

    times = np.concatenate([QUARTERS, EPOCH + QUARTERS])
    media = StreamMedia(
        t0=0.0,
        frames=torch.from_numpy(np.concatenate([FRAMES, FRAMES])),
        frame_times=times,
        samples=torch.zeros(0),
        sample_rate=16000,
        audio_t0=0.0,
        has_video=True,
        has_audio=False,
    )
    s = tiny_model().stream(modalities=("video",), speak_threshold=1.0, max_pending=64)
    questions = [Question(0.6, "what shape is on screen now?"), Question(EPOCH + 0.3, "and now?")]
    rounds = []
    res = drive(s, media, questions, on_round=lambda rnd, *_: rounds.append(rnd))
    # O(1) rounds over the 1.7e9-s gap (a round per tick would be 3.4e9 of them), counted, not timed
    assert len(rounds) <= 16, rounds
    assert [a.placed for a in res.answers] == [1.0, EPOCH + 0.5]  # each at its own tick's end
    assert all(a.asked_at == a.placed and a.answer is not None for a in res.answers)
    k = int(EPOCH / 0.5)
    assert [x.tick for x in res.labels if x.has_media] == [0, 1, k - 1, k, k + 1]
    assert s.closed and s.time == EPOCH + 1.0
