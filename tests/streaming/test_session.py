"""StreamingSession behaviour (SPEC §7): constant memory, snapshots (file round trip, another process,
forks), batched stepping == one by one, tick completion and time rules, and bad input."""

import dataclasses
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from streaming_helpers import Media, micro_model, states_equal, tiny_model

import ssm_mm
from ssm_mm.streaming.session import StreamingError, StreamingSession

# ------------------------------------------------------------------------------------- memory


def _synthetic_push(s, second: int, rng: np.random.Generator) -> None:
    """One second of synthetic media: 4 frames (64x64) and 16 kHz noise."""
    frames = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    s.push_video(frames, second + np.arange(4) / 4.0)
    s.push_audio(rng.normal(0, 0.1, 16000).astype(np.float32), 16000, float(second))


def _storage_bytes(obj) -> int:
    """Bytes of every distinct tensor storage reachable from ``obj`` (a generic walk, independent of
    the session's own accounting): a slice keeping a large buffer alive shows up here."""
    seen: dict[int, int] = {}
    visited: set[int] = set()

    def walk(x):
        if isinstance(x, torch.Tensor):
            st = x.untyped_storage()
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        elif isinstance(x, (str, bytes, int, float, bool, type(None), torch.nn.Module)):
            return
        elif id(x) in visited:
            return
        else:
            visited.add(id(x))
            if isinstance(x, dict):
                for v in x.values():
                    walk(v)
            elif isinstance(x, (list, tuple, set)):
                for v in x:
                    walk(v)
            elif dataclasses.is_dataclass(x) or hasattr(x, "__dict__"):
                for v in vars(x).values():
                    walk(v)

    walk(obj)
    return sum(seen.values())


def test_memory_is_constant_over_stream_length():
    model = micro_model()  # 1200 ticks: the smallest hybrid (one SSM, one windowed attention layer)
    s = model.stream(speak_threshold=1.0)  # never speaks: the stream is media only
    rng = np.random.default_rng(0)
    seen = {}
    for sec in range(600):  # 10 minutes
        _synthetic_push(s, sec, rng)
        if sec + 1 in (10, 600):
            assert len(s.segment_labels()) > 0  # drained, as the contract says
            s.poll()
            seen[sec + 1] = (s.memory_bytes(), _storage_bytes(s), _storage_bytes(s._st), s.buffered_bytes())
    assert s.ticks_done == 2 * 600 - 1  # the last tick waits for a frame after 600 s
    assert seen[10] == seen[600]
    mem, _, held, buffered = seen[600]
    state_bytes = model.init_state(1).nbytes()
    assert held <= mem and buffered > 0  # the accounting covers every storage the state keeps alive
    assert state_bytes <= mem <= state_bytes + buffered + 64 * 1024  # state + buffer + small carries


def test_pending_labels_are_capped_and_counted():
    model = tiny_model()
    s = model.stream(speak_threshold=1.0, max_pending=5)
    rng = np.random.default_rng(1)
    for sec in range(5):
        _synthetic_push(s, sec, rng)
    labels = s.segment_labels()
    assert len(labels) == 5 and s.dropped["labels"] == 9 - 5
    assert [x.tick for x in labels] == list(range(4, 9))  # the newest are kept
    assert s.segment_labels() == []  # drained


# ---------------------------------------------------------------------------------- snapshots


def _halves(m: Media):
    """Split a stream's media at its middle: (frames, times, samples) for each half."""
    tmid = m.t0 + 3.0
    fi = int((m.times < tmid).sum())
    ai = int(round((tmid - m.audio_t0) * m.sample_rate))
    first = (m.frames[:fi], m.times[:fi], m.samples[:ai], m.audio_t0)
    second = (m.frames[fi:], m.times[fi:], m.samples[ai:], m.audio_t0 + ai / m.sample_rate)
    return first, second


def _feed(s, part, sr, ask=None):
    """Push a half in 0.75 s steps (frames and samples before each step's end); ask after step 2."""
    frames, times, samples, a_t0 = part
    fi = ai = 0
    end = float(min(times[0], a_t0))
    step = 0
    while fi < frames.shape[0] or ai < samples.shape[0]:
        end += 0.75
        step += 1
        fj = int((times < end).sum())
        aj = min(samples.shape[0], max(ai, math.ceil((end - a_t0) * sr)))
        if fj > fi:
            s.push_video(frames[fi:fj], times[fi:fj])
        if aj > ai:
            s.push_audio(samples[ai:aj], sr, a_t0 + ai / sr)
        fi, ai = fj, aj
        if ask is not None and step == 2:
            ask.append(s.ask("what shape is on screen now?"))


def _outputs(s):
    s.close()
    labels = [dataclasses.astuple(x) for x in s.segment_labels()]
    events = [dataclasses.astuple(e) for e in s.poll()]
    return labels, events, s.state_dict()


def test_snapshot_resumes_exactly_in_another_process(tmp_path, media):
    model = tiny_model()
    m = media[0]
    first, second = _halves(m)
    a = model.stream(t0=m.t0, speak_threshold=0.52, max_answer_tokens=4)
    _feed(a, first, m.sample_rate)
    a.ask("how many times did the bell ring?")
    snap = a.state_dict()
    torch.save(snap, tmp_path / "snap.pt")
    torch.save({"second": second, "sr": m.sample_rate}, tmp_path / "media.pt")
    model.save_pretrained(tmp_path / "model")
    answers = []
    _feed(a, second, m.sample_rate, ask=answers)
    want = _outputs(a)
    assert want[1], "no proactive event after the snapshot: raise the coverage of this test"

    here = Path(__file__).resolve()
    paths = [str(here.parent), str(here.parents[1])]  # tests/streaming (test_session) and tests/ (support)
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path[:0] = {paths!r}
        torch.set_num_threads({torch.get_num_threads()})
        import ssm_mm
        from test_session import _feed, _outputs
        model = ssm_mm.MultimodalSSM.from_pretrained({str(tmp_path / "model")!r})
        snap = torch.load({str(tmp_path / "snap.pt")!r}, weights_only=True)
        media = torch.load({str(tmp_path / "media.pt")!r}, weights_only=True)
        s = model.stream(state=snap)
        answers = []
        _feed(s, tuple(media["second"]), media["sr"], ask=answers)
        labels, events, state = _outputs(s)
        torch.save({{"labels": labels, "events": events, "state": state, "answers": answers}},
                   {str(tmp_path / "out.pt")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=120)
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    assert got["answers"] == answers
    assert [tuple(x) for x in got["labels"]] == want[0]
    assert [tuple(x[:2]) for x in got["events"]] == [x[:2] for x in want[1]]
    assert states_equal(got["state"], want[2])


def test_forked_sessions_are_independent(media):
    model = tiny_model()
    m = media[1]
    first, second = _halves(m)
    a = model.stream(t0=m.t0, speak_threshold=1.0)
    _feed(a, first, m.sample_rate)
    snap = a.state_dict()
    b, c = model.stream(state=snap), model.stream(state=snap)
    before_c = c.state_dict()
    _feed(b, second, m.sample_rate)
    assert states_equal(c.state_dict(), before_c)  # b's progress did not touch c
    assert states_equal(snap, a.state_dict())  # nor the snapshot or the session it came from
    _feed(c, second, m.sample_rate)
    assert states_equal(b.state_dict(), c.state_dict())
    # a different continuation diverges
    d = model.stream(state=snap)
    frames, times, samples, a_t0 = second
    _feed(d, (frames.flip(0)[: len(frames)], times, samples * 0.5, a_t0), m.sample_rate)
    assert not states_equal(d.state_dict(), b.state_dict())


def test_resume_refuses_other_models_and_stream_changes(media):
    s = tiny_model().stream(t0=5.0)
    snap = s.state_dict()
    tiny_model(seed=0).stream(state=snap)  # the same configuration and weights: accepted
    with pytest.raises(ValueError, match="other weights"):  # (tests/streaming/test_session_reliability.py)
        tiny_model(seed=1).stream(state=snap)
    from ssm_mm.config import ModelConfig
    from ssm_mm.models.multimodal import MultimodalSSM

    bigger = MultimodalSSM(ModelConfig(d_model=48, pattern="MA", headdim=8, attn_heads=2, attn_kv_heads=2))
    with pytest.raises(ValueError, match="another configuration"):
        bigger.stream(state=snap)
    with pytest.raises(ValueError, match="cannot change t0"):
        tiny_model().stream(state=snap, t0=6.0)
    with pytest.raises(ValueError, match="cannot change modalities"):
        tiny_model().stream(state=snap, modalities=("audio",))
    resumed = tiny_model().stream(state=snap, speak_threshold=0.9, modalities=("audio", "video"))
    assert resumed.options.speak_threshold == 0.9 and resumed.t0 == 5.0


# ------------------------------------------------------------------------------------ batching


def _drive_group(sessions, media, rng_seed, step):
    """Push three streams in random pieces, round robin; ``step``: call step_sessions after each round
    and close the streams with close_sessions."""
    rngs = [np.random.default_rng(rng_seed + i) for i in range(len(sessions))]
    cursors = [[0, 0] for _ in sessions]
    answers = []
    for rnd in range(400):
        active = False
        for s, m, rng, cur in zip(sessions, media, rngs, cursors):
            if "video" in s.modalities and cur[0] < m.frames.shape[0]:
                n = int(rng.integers(1, 4))
                s.push_video(m.frames[cur[0] : cur[0] + n], m.times[cur[0] : cur[0] + n])
                cur[0] += n
                active = True
            if "audio" in s.modalities and cur[1] < m.samples.shape[0]:
                n = int(rng.integers(800, 9000))
                s.push_audio(
                    m.samples[cur[1] : cur[1] + n], m.sample_rate, m.audio_t0 + cur[1] / m.sample_rate
                )
                cur[1] += n
                active = True
        if step:
            ssm_mm.step_sessions(sessions)
        if rnd == 6:
            answers.append(sessions[0].ask("how many times did the bell ring?"))
        if not active:
            break
    if step:  # the streams' ends together: their last ticks in batched rounds
        ssm_mm.close_sessions(sessions)
    for s in sessions:
        s.close()  # idempotent after close_sessions
    return answers


def test_batched_sessions_equal_one_by_one(media):
    model = tiny_model()
    # the third session: stream 0 again, video only and on a clock one hour later
    shifted = dataclasses.replace(
        media[0], t0=media[0].t0 + 3600.0, times=media[0].times + 3600.0, audio_t0=media[0].audio_t0 + 3600.0
    )
    streams = [media[0], media[1], shifted]
    mods = [("video", "audio"), ("video", "audio"), ("video",)]
    opts = dict(speak_threshold=0.55, max_answer_tokens=4)
    one = [model.stream(modalities=md, t0=m.t0, **opts) for md, m in zip(mods, streams)]
    batched = [model.stream(modalities=md, t0=m.t0, auto_step=False, **opts) for md, m in zip(mods, streams)]
    calls = []
    orig = model.forward

    def counting_forward(kind, *args, **kw):
        calls.append(kind.shape[0])
        return orig(kind, *args, **kw)

    ans_one = _drive_group(one, streams, 7, step=False)
    model.forward = counting_forward
    try:
        ans_batched = _drive_group(batched, streams, 7, step=True)
    finally:
        del model.forward
    assert max(calls) == 3  # ticks of all three sessions went through one forward
    assert ans_one == ans_batched
    n_events = 0
    for a, b in zip(one, batched):
        la, lb = a.segment_labels(), b.segment_labels()
        assert [(x.tick, x.index, x.has_media) for x in la] == [(x.tick, x.index, x.has_media) for x in lb]
        assert max(abs(x.speak - y.speak) for x, y in zip(la, lb)) <= 1e-5
        ea, eb = a.poll(), b.poll()
        assert [(e.t, e.ids) for e in ea] == [(e.t, e.ids) for e in eb]
        n_events += len(ea)
        sa, sb = a.state_dict()["model_state"], b.state_dict()["model_state"]
        for k in sa:  # floats within 1e-5 (times equal, -inf included), counts exact
            torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=1e-5, msg=k)
    assert n_events > 0, "no proactive response: batched generation was not exercised"


def test_step_sessions_checks_its_input():
    model = tiny_model()
    s = model.stream(auto_step=False)
    assert ssm_mm.step_sessions([]) == []
    assert ssm_mm.step_sessions([s]) == [0]
    with pytest.raises(ValueError, match="twice"):
        ssm_mm.step_sessions([s, s])
    with pytest.raises(ValueError, match="same model"):
        ssm_mm.step_sessions([s, tiny_model().stream()])
    with pytest.raises(ValueError, match="close_sessions: the same session appears twice"):
        ssm_mm.close_sessions([s, s])
    with pytest.raises(ValueError, match="close_sessions takes StreamingSession"):
        ssm_mm.close_sessions([s, "s"])
    assert ssm_mm.close_sessions([]) == [] and not s.closed


def test_batched_calls_build_no_autograd_graph(media):
    """step_sessions / close_sessions run the model without gradients (as every session method does):
    a graph per tick would cost time and keep activations alive."""
    model = tiny_model()
    m = media[0]
    s = model.stream(auto_step=False)
    s.push_video(m.frames, m.times)
    s.push_audio(m.samples, m.sample_rate, m.audio_t0)
    modes = []
    orig = model.forward

    def recording_forward(*args, **kw):
        modes.append(torch.is_grad_enabled())
        return orig(*args, **kw)

    model.forward = recording_forward
    try:
        assert ssm_mm.step_sessions([s])[0] > 0
        ssm_mm.close_sessions([s])
    finally:
        del model.forward
    assert modes and not any(modes)
    assert not any(t.requires_grad for t in s.state_dict()["model_state"].values() if torch.is_tensor(t))


def test_close_sessions_is_all_or_nothing(media):
    """A failing forward while close_sessions steps the last ticks leaves every session as it was
    (open, same ticks and buffers), and closing again then gives what closing each alone gives."""
    model = tiny_model()
    m = media[0]

    def opened():
        s = model.stream(auto_step=False)
        s.push_video(m.frames, m.times)
        s.push_audio(m.samples[: m.samples.shape[0] // 2], m.sample_rate, m.audio_t0)
        return s

    sessions = [opened(), opened()]
    before = [(s.ticks_done, s.buffered_bytes()) for s in sessions]

    def broken(*args, **kw):
        raise RuntimeError("device lost")

    model.forward = broken
    try:
        with pytest.raises(RuntimeError, match="device lost"):
            ssm_mm.close_sessions(sessions)
    finally:
        del model.forward
    assert [(s.ticks_done, s.buffered_bytes()) for s in sessions] == before
    assert not any(s.closed for s in sessions)
    alone = opened()
    alone.close()
    n = ssm_mm.close_sessions(sessions)
    assert n == [alone.ticks_done - before[0][0]] * 2 and all(s.closed for s in sessions)
    ref = [(x.tick, x.index) for x in alone.segment_labels()]
    assert all([(x.tick, x.index) for x in s.segment_labels()] == ref for s in sessions)
    assert ssm_mm.close_sessions(sessions) == []  # closed sessions are skipped


# ------------------------------------------------------------------------------- ticks and time


def test_tick_completion_follows_the_closed_right_end():
    model = tiny_model()
    s = model.stream(modalities=("video",), speak_threshold=1.0)
    frame = np.zeros((1, 64, 64, 3), dtype=np.uint8)
    s.push_video(frame, [0.5])  # belongs to tick 0; another frame at 0.5 may still come
    assert s.ticks_done == 0 and s.time == 0.0
    s.push_video(frame, [0.5])
    s.advance_to(0.5)  # media at 0.5 may still arrive
    assert s.ticks_done == 0
    s.advance_to(0.5001)
    assert s.ticks_done == 1 and s.time == 0.5
    with pytest.raises(ValueError, match="backwards"):
        s.push_video(frame, [0.5])
    s.push_video(frame, [2.2])  # ticks 1..3 complete; 1-3 have no media and repeat tick 0's label
    labels = s.segment_labels()
    assert [x.tick for x in labels] == [0, 1, 2, 3]
    assert [x.has_media for x in labels] == [True, False, False, False]
    assert len({x.index for x in labels}) == 1
    s.close()
    assert s.time == 2.5 and s.closed
    with pytest.raises(ValueError, match="closed"):
        s.push_video(frame, [3.0])


def test_audio_completion_gaps_and_advance():
    model = tiny_model()
    s = model.stream(modalities=("audio",), speak_threshold=1.0, t0=10.0)
    s.advance_to(10.3)  # audio starts at or after 10.3
    assert s.ticks_done == 0
    x = np.zeros(16000, dtype=np.float32)
    s.push_audio(x[:3200], 16000, 10.3)  # tokens end at 10.4, 10.5: tick 0 (10.0, 10.5] complete
    assert s.ticks_done == 1
    s.push_audio(x[:1600], 16000, 11.0)  # a 0.5 s gap filled with silence, then 0.1 s
    assert s.ticks_done == 2  # 10.6 .. 11.0 and 11.1: tick 1 complete, tick 2 waits for 11.5
    with pytest.raises(ValueError, match="overlaps"):
        s.push_audio(x[:10], 16000, 11.05)
    s.advance_to(11.6)  # silence up to 11.6
    assert s.ticks_done == 3 and s.time == 11.5
    labels = s.segment_labels()
    assert all(x.has_media for x in labels)


def test_audio_needs_the_resampler_lookahead():
    model = tiny_model()
    s = model.stream(modalities=("audio",), speak_threshold=1.0)
    x = np.zeros(44100, dtype=np.float32)
    s.push_audio(x[: int(0.5 * 44100)], 44100, 0.0)
    assert s.ticks_done == 0  # the last token (ending at 0.5 s) needs input past 0.5 s
    look = s.audio_lookahead(44100)
    assert 0 < look < 0.02
    n = int(math.ceil((0.5 + look) * 44100))
    s.push_audio(x[int(0.5 * 44100) : n], 44100, int(0.5 * 44100) / 44100)
    assert s.ticks_done == 1


def test_ask_before_the_first_tick_is_refused_and_after_close_works():
    model = tiny_model()
    s = model.stream(modalities=("video",), max_answer_tokens=3, record=True)
    with pytest.raises(ValueError, match="first tick"):
        s.ask("what is on screen?")
    s.push_video(np.zeros((2, 32, 48, 3), dtype=np.uint8), [0.1, 0.6])  # any frame size
    answer = s.ask("what is on screen?")
    assert isinstance(answer, str)
    tr = s.transcript()
    assert [(x.t, x.role) for x in tr] == [(0.5, "user"), (0.5, "assistant")]
    assert 3 <= len(tr[1].ids) <= 3 + 3  # BOT, ROLE, <= 3 content tokens, EOT
    s.close()
    s.ask("and now?")
    assert s.transcript()[-1].t == 1.0


def test_auto_step_false_waits_for_step_sessions():
    model = tiny_model()
    s = model.stream(modalities=("video",), auto_step=False, speak_threshold=1.0)
    s.push_video(np.zeros((3, 64, 64, 3), dtype=np.uint8), [0.0, 0.6, 1.2])
    assert s.ticks_done == 0
    assert ssm_mm.step_sessions([s]) == [2]
    assert s.ticks_done == 2


# ------------------------------------------------------------------------------------ bad input


def _session():
    s = tiny_model().stream(max_buffer_bytes=600_000, speak_threshold=1.0)
    s.push_video(np.zeros((2, 64, 64, 3), dtype=np.uint8), [0.0, 0.3])
    s.push_audio(np.zeros(8000, dtype=np.float32), 16000, 0.0)
    return s


FRAME = np.zeros((1, 64, 64, 3), dtype=np.uint8)
BAD_CALLS = {
    "frames going backwards": (lambda s: s.push_video(FRAME, [0.2]), "backwards"),
    "timestamps going backwards in a call": (
        lambda s: s.push_video(np.zeros((2, 64, 64, 3), np.uint8), [0.9, 0.8]),
        "non-decreasing",
    ),
    "frames/timestamps length mismatch": (
        lambda s: s.push_video(FRAME, [0.5, 0.6]),
        "one timestamp per frame",
    ),
    "float frames": (lambda s: s.push_video(FRAME.astype(np.float32), [0.5]), "uint8"),
    "grey frames": (lambda s: s.push_video(np.zeros((1, 64, 64), np.uint8), [0.5]), r"\(T, H, W, 3\)"),
    "NaN timestamp": (lambda s: s.push_video(FRAME, [float("nan")]), "NaN"),
    "frames before t0": (
        lambda s: tiny_model().stream(t0=5.0).push_video(FRAME, [4.0]),
        "before the stream start",
    ),
    "NaN audio": (lambda s: s.push_audio(np.full(10, np.nan, np.float32), 16000, 0.5), "NaN or Inf"),
    "Inf audio": (lambda s: s.push_audio(np.full(10, np.inf, np.float32), 16000, 0.5), "NaN or Inf"),
    "int16 audio": (lambda s: s.push_audio(np.zeros(10, np.int16), 16000, 0.5), "floating point"),
    "(N, C) audio": (lambda s: s.push_audio(np.zeros((100, 2), np.float32), 16000, 0.5), r"\(C, N\)"),
    "3-d audio": (lambda s: s.push_audio(np.zeros((1, 2, 100), np.float32), 16000, 0.5), "shape"),
    "sample rate 0": (lambda s: s.push_audio(np.zeros(10, np.float32), 0, 0.5), "sample_rate"),
    "negative sample rate": (lambda s: s.push_audio(np.zeros(10, np.float32), -16000, 0.5), "sample_rate"),
    "fractional sample rate": (
        lambda s: s.push_audio(np.zeros(10, np.float32), 16000.5, 0.5),
        "whole number",
    ),
    "other sample rate": (lambda s: s.push_audio(np.zeros(10, np.float32), 48000, 0.5), "one input rate"),
    "unresamplable rate": (
        lambda s: tiny_model().stream(modalities=("audio",)).push_audio(np.zeros(10, np.float32), 44101, 0.0),
        "share too small a factor",
    ),
    "audio going backwards": (lambda s: s.push_audio(np.zeros(10, np.float32), 16000, 0.2), "overlaps"),
    "NaN audio t0": (lambda s: s.push_audio(np.zeros(10, np.float32), 16000, float("nan")), "finite"),
    "empty question": (lambda s: s.ask(""), "empty"),
    "blank question": (lambda s: s.ask("   "), "empty"),
    "question not a str": (lambda s: s.ask(b"bytes"), "str"),
    "undeclared modality": (
        lambda s: tiny_model().stream(modalities=("video",)).push_audio(np.zeros(10, np.float32), 16000, 0.0),
        "does not take audio",
    ),
    "buffer cap": (
        lambda s: s.push_video(np.zeros((20, 64, 64, 3), np.uint8), np.linspace(0.4, 5, 20)),
        "max_buffer",
    ),
    "NaN advance_to": (lambda s: s.advance_to(float("nan")), "finite"),
    "unknown option": (lambda s: tiny_model().stream(speak_treshold=0.3), "unknown session option"),
    "bad option value": (lambda s: tiny_model().stream(speak_threshold=2.0), "speak_threshold"),
    "bad modality": (lambda s: tiny_model().stream(modalities=("text",)), "modalities"),
    "not a snapshot": (lambda s: tiny_model().stream(state={"x": 1}), "snapshot"),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_input_raises_and_leaves_the_session_unchanged(name):
    s = _session()
    before = s.state_dict()
    call, match = BAD_CALLS[name]
    with pytest.raises(ValueError, match=match) as err:
        call(s)
    assert isinstance(err.value, StreamingError)
    assert states_equal(s.state_dict(), before)


def test_a_failed_push_keeps_working_afterwards():
    s = _session()
    with pytest.raises(ValueError, match="max_buffer"):
        s.push_video(np.zeros((20, 64, 64, 3), np.uint8), np.linspace(0.4, 5, 20))
    s.push_audio(np.zeros(16000, dtype=np.float32), 16000, 0.5)
    s.push_video(FRAME, [0.8])
    assert s.ticks_done == 1


def test_public_names():
    from ssm_mm.streaming import batched, session

    assert ssm_mm.StreamingSession is StreamingSession
    assert ssm_mm.step_sessions is batched.step_sessions is session.step_sessions
    assert isinstance(tiny_model().stream(), ssm_mm.StreamingSession)
