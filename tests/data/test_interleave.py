"""The interleaver: order and time rules, ticks, text placement, incremental == offline, targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ssm_mm.data.featurize import FeaturizerConfig
from ssm_mm.data.interleave import (
    AUDIO,
    IGNORE_INDEX,
    TEXT,
    VIDEO,
    TextTurn,
    TimedTokens,
    encode_dialogue,
    interleave,
    lm_targets,
    lm_weights,
    missing_attributes,
    num_ticks,
    place_text_time,
    proactive_flags,
    speak_targets,
    tick_event_counts,
    tick_event_labels,
    tick_first_ranks,
    tick_index,
    tick_of,
    tick_recall_times,
    tick_recall_values,
    tick_summary_positions,
)
from ssm_mm.data.tokenizer import ByteTokenizer

CFG = FeaturizerConfig()
TOK = ByteTokenizer()
LABELS = ["background", "bell", "drum"]


@dataclass
class Turn:  # the fields of a manifest Turn that the interleaver reads
    t: float
    role: str
    text: str
    type: str | None = None


@dataclass
class Segment:
    start: float
    end: float
    label: str
    attributes: dict = field(default_factory=dict)


def _audio_times(seconds: float, t0: float = 0.0) -> torch.Tensor:
    n = int(round(seconds * 10))
    return t0 + torch.arange(1, n + 1, dtype=torch.float64) * 1600 / 16000


def _check_order(x: TimedTokens, t0: float = 0.0) -> None:
    """Non-decreasing time; ties by kind, then index; ticks follow from the times."""
    assert torch.all(x.t[1:] >= x.t[:-1])
    assert torch.equal(x.tick, tick_of(x.t - t0, CFG.tick_seconds))
    same_t = x.t[1:] == x.t[:-1]
    assert torch.all(x.kind[1:][same_t] >= x.kind[:-1][same_t])
    for k in (VIDEO, AUDIO):
        src = x.src[x.kind == k]
        assert torch.all(src[1:] > src[:-1])  # index order within a modality
    turns = x.turn[x.kind == TEXT]
    assert torch.all(turns[1:] >= turns[:-1])


# ------------------------------------------------------------------------------------ order / time


def test_order_ties_and_frame_grouping():
    vt = torch.arange(9, dtype=torch.float64) * 0.25  # 0 .. 2.0 s at 4 fps
    at = _audio_times(2.0)
    dialogue = [Turn(0.5, "user", "q?"), Turn(0.5, "assistant", "3"), Turn(1.3, "user", "hey")]
    x = interleave(vt, at, encode_dialogue(dialogue, TOK), CFG)
    n_text = sum(len(TOK.encode_turn(d.role, d.text)) for d in dialogue)
    assert len(x) == 9 * 4 + 20 + n_text
    _check_order(x)
    # every frame's 4 patch tokens are consecutive and share the frame's time
    vpos = torch.nonzero(x.kind == VIDEO).squeeze(1).view(9, 4)  # (frames, patches)
    assert torch.all(vpos[:, 1:] - vpos[:, :-1] == 1)
    assert torch.equal(x.t[vpos], vt[:, None].expand(9, 4))
    assert torch.equal(x.src[vpos], torch.arange(36).view(9, 4))  # frame_row * 4 + patch
    # at t = 0.5: frame 2, then audio token 4 (ends at 0.5), then the two turns in dialogue order
    at05 = torch.nonzero(x.t == 0.5).squeeze(1)
    assert x.kind[at05].tolist() == [VIDEO] * 4 + [AUDIO] + [TEXT] * (5 + 4)
    assert x.src[at05][4].item() == 4
    assert x.turn[at05][5:].tolist() == [0] * 5 + [1] * 4
    assert x.role[at05][5:].tolist() == [0] * 5 + [1] * 4
    # the turn at 1.3 s is snapped up to the end of its tick, 1.5 s
    t2 = x.turn == 2
    assert torch.all(x.t[t2] == 1.5) and torch.all(x.tick[t2] == 2)
    assert torch.equal(x.src[t2], torch.tensor(TOK.encode_turn("user", "hey")))
    # media columns role/turn are -1
    assert torch.all(x.role[x.kind != TEXT] == -1) and torch.all(x.turn[x.kind != TEXT] == -1)


def test_tick_membership():
    t = torch.tensor(
        [0.0, 1e-9, 0.25, 0.5, 0.5 + 1e-3, 1.0, 1.0 + 1e-7, 1.4999999999999998, 1.5000000000000002]
    )
    assert tick_of(t, 0.5).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2]
    # float noise from a large clock offset does not move a token across a tick boundary
    t0 = 1_234_567.891
    rel = (t0 + torch.tensor([0.5, 1.0, 7.5], dtype=torch.float64)) - t0
    assert tick_of(rel, 0.5).tolist() == [0, 1, 14]
    assert num_ticks(30.0, 0.5) == 60 and num_ticks(30.2, 0.5) == 61 and num_ticks(0.0, 0.5) == 1


def test_scalar_twins_equal_the_tensor_formulas():
    """tick_index / audio_token_time (the serving hot path) give exactly tick_of / audio_token_times,
    boundaries, the ε below them, huge clocks and every token count included."""
    from ssm_mm.data.featurize import audio_token_time, audio_token_times

    g = np.random.default_rng(0)
    for tau in (0.5, 0.25, 1 / 3, 2.0):
        k = g.integers(0, 10**6, 500)
        near = [k * tau, k * tau + 1e-7 * tau, k * tau - 1e-7]
        t = np.concatenate([*near, g.uniform(0, 1e9, 500), [0.0, -1.0]])
        assert [tick_index(x, tau) for x in t] == tick_of(torch.from_numpy(t), tau).tolist()
    for cfg in (CFG, FeaturizerConfig(sample_rate=22050, hop=147, audio_token_seconds=0.02)):
        for t0 in (0.0, 1.7e9 + 0.123, -3.5):
            n = g.integers(0, 10**8, 200)
            ref = [float(audio_token_times(cfg, t0, int(i), 1)[0]) for i in n]
            assert [audio_token_time(cfg, t0, int(i)) for i in n] == ref


def test_text_placement():
    tau = CFG.tick_seconds
    assert place_text_time(12.5, tau) == 12.5
    assert place_text_time(21.3, tau) == 21.5
    assert place_text_time(0.0, tau) == 0.5  # tick 0 owns t = 0: text goes after its media
    assert place_text_time(1000.0 + 21.3, tau, t0=1000.0) == 1021.5
    for t in (0.0, 0.2, 3.7, 12.5):
        once = place_text_time(t, tau)
        assert place_text_time(once, tau) == once  # idempotent: streaming inserts at tick ends


def _stream(seed: int, jitter: float, drop: float, seconds: float = 6.0):
    rng = np.random.default_rng(seed)
    t0 = float(rng.uniform(0, 1e5))
    base = np.arange(int(seconds * 4)) * 0.25
    vt = np.sort(base + rng.uniform(-jitter, jitter, base.size).clip(-0.12, 0.12))
    vt = vt[(vt >= 0) & (rng.random(vt.size) >= drop)]
    turns = [
        Turn(float(t), role, "x" * int(rng.integers(0, 4)))
        for t, role in zip(np.sort(rng.uniform(0, seconds, 6)).round(2), ["user", "assistant"] * 3)
    ]
    return t0, torch.from_numpy(t0 + vt), _audio_times(seconds, t0), turns


@pytest.mark.parametrize("seed, jitter, drop", [(0, 0.0, 0.0), (1, 0.05, 0.0), (2, 0.0, 0.3), (3, 0.1, 0.2)])
def test_tick_by_tick_equals_offline(seed, jitter, drop):
    t0, vt, at, dialogue = _stream(seed, jitter, drop)
    turns = encode_dialogue(dialogue, TOK, t0)
    offline = interleave(vt, at, turns, CFG, t0=t0)
    _check_order(offline, t0)
    vtick = tick_of(vt - t0, CFG.tick_seconds)
    atick = tick_of(at - t0, CFG.tick_seconds)
    ttick = [int(tick_of(tt.t - t0, CFG.tick_seconds)) for tt in turns]
    pieces = []
    for k in range(int(max(vtick.max(), atick.max())) + 1):
        fv, fa = torch.nonzero(vtick == k).squeeze(1), torch.nonzero(atick == k).squeeze(1)
        v0 = int(fv[0]) if fv.numel() else 0
        a0 = int(fa[0]) if fa.numel() else 0
        # streaming: the tick's media in one call, then the text inserted at the tick end
        pieces.append(interleave(vt[fv], at[fa], [], CFG, t0=t0, video_start=v0, audio_start=a0))
        pieces.append(interleave(None, None, [tt for tt, kk in zip(turns, ttick) if kk == k], CFG, t0=t0))
    online = TimedTokens.cat(pieces)
    assert online.equal(offline)


def test_dropped_frame_leaves_a_gap_and_shifts_nothing():
    vt = torch.arange(16, dtype=torch.float64) * 0.25 + 0.013  # slightly jittered clock
    at = _audio_times(4.0)
    full = interleave(vt, at, [], CFG)
    keep = torch.ones(16, dtype=torch.bool)
    keep[5] = False
    dropped = interleave(vt[keep], at, [], CFG)
    assert len(dropped) == len(full) - 4
    # every remaining token keeps its time and tick; the dropped frame's time is simply absent
    full_wo = full.select(~((full.kind == VIDEO) & (full.t == vt[5])))
    assert torch.equal(dropped.t, full_wo.t) and torch.equal(dropped.kind, full_wo.kind)
    assert torch.equal(dropped.tick, full_wo.tick)
    assert not torch.any((dropped.kind == VIDEO) & (dropped.t > vt[4]) & (dropped.t < vt[6]))


def test_single_modality_and_empty_streams():
    at = _audio_times(1.0)
    turns = encode_dialogue([Turn(0.3, "user", "hi")], TOK)
    a = interleave(None, at, turns, CFG)
    assert a.kind.tolist() == [AUDIO] * 5 + [TEXT] * 5 + [AUDIO] * 5
    v = interleave(torch.tensor([0.0, 0.5, 0.75]), torch.zeros(0), [], CFG)
    assert v.kind.tolist() == [VIDEO] * 12 and v.tick.tolist() == [0] * 8 + [1] * 4
    assert len(interleave(None, None, [], CFG)) == 0
    x = interleave(None, None, turns, CFG)
    assert x.kind.tolist() == [TEXT] * 5 and torch.all(x.t == 0.5)


@pytest.mark.parametrize(
    "vt, at, turns, match",
    [
        (torch.tensor([0.0, 0.5, 0.25]), None, [], "non-decreasing"),
        (None, torch.tensor([0.1, float("nan")]), [], "NaN"),
        (torch.zeros(2, 2), None, [], "1-D"),
        (None, None, [TextTurn(t=0.0, role=0, ids=[], index=0)], "no tokens"),
        (None, None, [TextTurn(t=0.0, role=5, ids=[1], index=0)], "role"),
    ],
)
def test_interleave_rejects_bad_input(vt, at, turns, match):
    with pytest.raises(ValueError, match=match):
        interleave(vt, at, turns, CFG)


def test_tick_summary_positions():
    # video-only with frames missing over the whole tick [1.0, 1.5): that tick has no summary
    vt = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 1.75])
    turns = encode_dialogue([Turn(0.6, "user", "a")], TOK)
    x = interleave(vt, None, turns, CFG)
    ticks, pos = tick_summary_positions(x)
    assert ticks.tolist() == [0, 1, 3]
    # last patch of frames 0.5, 1.0 and (after the 4 text tokens placed at 1.0) 1.75
    assert pos.tolist() == [11, 19, 27]
    assert torch.all(x.kind[pos] == VIDEO) and torch.all(x.kind[20:24] == TEXT)
    e = tick_summary_positions(interleave(None, None, turns, CFG))
    assert e[0].numel() == 0 and e[1].numel() == 0


# ---------------------------------------------------------------------------------------- targets


def test_event_labels_majority_ties_and_overlaps():
    segs = [
        Segment(3.0, 3.25, "bell"),  # tick 6: half event, half background -> tie -> bell
        Segment(4.0, 4.2, "bell"),  # tick 8: 0.2 < 0.3 background -> background
        Segment(5.1, 5.5, "drum"),  # tick 10: drum
        Segment(8.0, 8.2, "bell"),  # tick 16: overlapping bell segments count once: 0.2 -> background
        Segment(8.05, 8.2, "bell"),
        Segment(9.0, 9.25, "drum"),  # tick 18: drum 0.25 vs bell 0.25, no background -> lower index (bell)
        Segment(9.25, 9.5, "bell"),
        Segment(10.0, 10.2, "drum"),  # tick 20: bg 0.1, drum 0.2, bell 0.2 -> bell
        Segment(10.2, 10.4, "bell"),
        Segment(11.1, 12.4, "drum"),  # ticks 22 (0.4), 23, 24 (0.4) -> drum
        Segment(0.1, 0.35, "drum"),  # tick 0: 0.25 vs 0.25 up to float noise -> drum
    ]
    lab = tick_event_labels(segs, LABELS, 26, 0.5)
    expect = {6: 1, 8: 0, 10: 2, 16: 0, 18: 1, 20: 1, 22: 2, 23: 2, 24: 2, 0: 2}
    for k in range(26):
        assert lab[k].item() == expect.get(k, 0), k
    assert lab.dtype == torch.int64


def test_event_label_errors():
    with pytest.raises(ValueError, match=r"stream s7: segments\[0\].label='gong'"):
        tick_event_labels([Segment(0, 1, "gong")], LABELS, 4, 0.5, stream_id="s7")
    with pytest.raises(ValueError, match="background"):
        tick_event_labels([], ["bell", "background"], 4, 0.5)


def test_first_ranks_order_first_occurrences_by_start():
    labels = ["background", "bell", "drum", "chirp", "buzz"]
    segs = [
        Segment(1.2, 1.4, "drum"),  # drum begins first (tick 2)
        Segment(2.0, 2.2, "bell"),  # bell second, at 2.0 = tick 4's start: ranked from tick 4
        Segment(2.0, 2.6, "chirp"),  # chirp begins with bell: the same rank
        Segment(3.0, 3.5, "drum"),  # a second drum changes nothing
        Segment(3.9, 4.0, "bell"),
    ]
    ranks = tick_first_ranks(segs, labels, 10, 0.5)
    assert ranks.shape == (10, 4) and ranks.dtype == torch.int64
    C = 4  # "not begun yet"
    assert ranks[:, 1].tolist() == [C, C, 0, 0, 0, 0, 0, 0, 0, 0]  # drum
    assert ranks[:, 0].tolist() == [C, C, C, C, 1, 1, 1, 1, 1, 1]  # bell
    assert ranks[:, 2].tolist() == ranks[:, 0].tolist()  # chirp, tied with bell
    assert ranks[:, 3].tolist() == [C] * 10  # buzz never
    # brute force: at each tick, "X came first" == rank(X) < rank(Y), for every begun pair
    for k in range(10):
        end = (k + 1) * 0.5 - 1e-9
        first = {n: min((s.start for s in segs if s.label == n), default=None) for n in labels[1:]}
        for i, x in enumerate(labels[1:]):
            for j, y in enumerate(labels[1:]):
                if first[x] is not None and first[y] is not None and first[x] < end and first[y] < end:
                    assert (ranks[k, i] < ranks[k, j]) == (first[x] < first[y]), (k, x, y)
    assert tick_first_ranks([], labels, 2, 0.5).tolist() == [[C] * 4] * 2
    with pytest.raises(ValueError, match=r"stream s7: segments\[0\].label='gong'"):
        tick_first_ranks([Segment(0, 1, "gong")], labels, 4, 0.5, stream_id="s7")


def test_event_counts_run_from_the_stream_start_by_segment_start():
    segs = [
        Segment(0.2, 0.4, "bell"),  # tick 0 onwards
        Segment(1.0, 1.3, "drum"),  # starts exactly on tick 2's start: counted from tick 2, not tick 1
        Segment(1.2, 2.9, "bell"),  # counted from tick 2 while it lasts (start, not end)
        Segment(1.25, 1.4, "bell"),  # overlapping the one before: still one more occurrence
        Segment(3.9, 4.0, "drum"),  # tick 7
    ]
    cnt = tick_event_counts(segs, LABELS, 9, 0.5)
    assert cnt.shape == (9, 2) and cnt.dtype == torch.int64
    # the same running counts by brute force over tick ends
    for k in range(9):
        for j, name in enumerate(LABELS[1:]):
            expect = sum(1 for s in segs if s.label == name and s.start < (k + 1) * 0.5 - 1e-9)
            assert cnt[k, j].item() == expect, (k, name)
    assert cnt[:, 0].tolist() == [1, 1, 3, 3, 3, 3, 3, 3, 3]
    assert cnt[:, 1].tolist() == [0, 0, 1, 1, 1, 1, 1, 2, 2]
    assert tick_event_counts([], LABELS, 3, 0.5).tolist() == [[0, 0]] * 3
    with pytest.raises(ValueError, match=r"stream s7: segments\[0\].label='gong'"):
        tick_event_counts([Segment(0, 1, "gong")], LABELS, 4, 0.5, stream_id="s7")
    with pytest.raises(ValueError, match=r"segments\[0\] has start=2.0 end=1.0"):
        tick_event_counts([Segment(2.0, 1.0, "bell")], LABELS, 4, 0.5)


def test_recall_times_point_at_the_last_finished_segment():
    segs = [
        Segment(0.2, 0.4, "bell"),  # over in tick 0: recalled from tick 0 (mid 0.3)
        Segment(1.0, 1.5, "drum"),  # ends exactly at tick 2's end: recalled from tick 2 (mid 1.25)
        Segment(1.2, 2.9, "bell"),  # over in tick 5 (mid 2.05)
        Segment(1.25, 1.4, "bell"),  # over earlier (tick 2) and overtaken by the one before at tick 5
        Segment(3.9, 4.6, "drum"),  # still going at the last tick: never recalled
    ]
    rec = tick_recall_times(segs, LABELS, 9, 0.5)
    assert rec.shape == (9, 2) and rec.dtype == torch.float64
    # brute force: the midpoint of the segment with the latest end (then latest start) over by (k+1)τ
    for k in range(9):
        for j, name in enumerate(LABELS[1:]):
            over = [s for s in segs if s.label == name and s.end <= (k + 1) * 0.5 + 1e-9]
            got = rec[k, j].item()
            if not over:
                assert np.isnan(got), (k, name)
            else:
                last = max(over, key=lambda s: (s.end, s.start))
                assert got == pytest.approx((last.start + last.end) / 2), (k, name)
    nan = float("nan")
    torch.testing.assert_close(
        rec[:, 0], torch.tensor([0.3, 0.3, 1.325, 1.325, 1.325, 2.05, 2.05, 2.05, 2.05], dtype=torch.float64)
    )
    torch.testing.assert_close(
        rec[:, 1],
        torch.tensor([nan, nan, 1.25, 1.25, 1.25, 1.25, 1.25, 1.25, 1.25], dtype=torch.float64),
        equal_nan=True,
    )
    assert torch.isnan(tick_recall_times([], LABELS, 3, 0.5)).all()
    # the same segments' attribute: its value's index, -1 while none is over / missing / unknown value
    looks = [{"color": "red"}, {"color": "blue"}, {"color": "blue"}, {"shape": "x"}, {"color": "red"}]
    coloured = [Segment(s.start, s.end, s.label, a) for s, a in zip(segs, looks)]
    val = tick_recall_values(coloured, LABELS, 9, 0.5, ["color"], ["blue", "red"])
    assert val.dtype == torch.int64 and val.shape == (9, 2, 1)
    assert val[:, 0, 0].tolist() == [1, 1, -1, -1, -1, 0, 0, 0, 0]
    assert val[:, 1, 0].tolist() == [-1, -1, 0, 0, 0, 0, 0, 0, 0]
    assert (tick_recall_values(coloured, LABELS, 9, 0.5, ["color"], ["green"]) == -1).all()
    assert (tick_recall_values(segs, LABELS, 9, 0.5, ["color"], ["red"]) == -1).all()  # no attributes at all
    # several attributes share the value vocabulary; each is looked up on its own, -1 where missing
    both = tick_recall_values(coloured, LABELS, 9, 0.5, ["shape", "color"], ["blue", "red", "x"])
    assert both.shape == (9, 2, 2) and torch.equal(both[..., 1], val[..., 0])
    assert both[:, 0, 0].tolist() == [-1, -1, 2, 2, 2, -1, -1, -1, -1]  # segment 3 has a shape, no colour
    assert both[:, 1, 0].tolist() == [-1] * 9
    assert tick_recall_values(coloured, LABELS, 9, 0.5, [], ["red"]).shape == (9, 2, 0)
    with pytest.raises(TypeError, match="string 'color'"):
        tick_recall_values(coloured, LABELS, 9, 0.5, "color", ["red"])
    spec = SimpleNamespace(segments=coloured)
    assert missing_attributes([spec], ["shape", "color", "size"]) == ["size"]
    bare = SimpleNamespace(segments=segs)  # no attributes at all
    assert missing_attributes([bare], ["color"]) == ["color"]
    with pytest.raises(ValueError, match=r"stream s7: segments\[0\].label='gong'"):
        tick_recall_times([Segment(0, 1, "gong")], LABELS, 4, 0.5, stream_id="s7")


def test_speak_targets_answer_vs_proactive():
    dialogue = [
        Turn(2.0, "user", "tell me when the drum plays"),
        Turn(2.0, "assistant", "ok"),  # same time as the question: answer
        Turn(5.3, "assistant", "drum"),  # later: proactive, placed at 5.5 = end of tick 10
        Turn(7.1, "user", "what colour?"),
        Turn(7.4, "assistant", "red"),  # same tick end (7.5) as its question: answer
        Turn(8.0, "assistant", "drum"),  # proactive at tick 15
    ]
    assert proactive_flags(dialogue, 0.5) == [False, False, True, False, False, True]
    sp = speak_targets(dialogue, 20, 0.5)
    assert torch.nonzero(sp).squeeze(1).tolist() == [10, 15]
    # an assistant turn with no user turn before it is proactive
    assert proactive_flags([Turn(1.0, "assistant", "bell")], 0.5) == [True]
    with pytest.raises(ValueError, match="past the stream"):
        speak_targets([Turn(9.9, "assistant", "x")], 10, 0.5)


def test_lm_targets_supervise_assistant_content_and_eot():
    dialogue = [Turn(0.5, "user", "q"), Turn(0.5, "assistant", "ab"), Turn(0.9, "assistant", "")]
    x = interleave(torch.tensor([0.0]), None, encode_dialogue(dialogue, TOK), CFG)
    y = lm_targets(x, TOK)
    # layout: 4 video, user [BOT, USER, q, EOT] at 4..7, assistant [BOT, ASSISTANT, a, b, EOT] at 8..12,
    # assistant (empty) [BOT, ASSISTANT, EOT] at 13..15
    expect = torch.full((16,), IGNORE_INDEX)
    expect[9], expect[10], expect[11] = ord("a"), ord("b"), TOK.eot_id  # from ROLE..last content
    expect[14] = TOK.eot_id  # an empty answer: the model must stop at once
    assert torch.equal(y, expect)
    # the supervised target at position i is the input token at i + 1
    sup = torch.nonzero(y != IGNORE_INDEX).squeeze(1)
    assert torch.equal(y[sup], x.src[sup + 1])


def test_lm_weights_weigh_the_answer_to_each_question_type():
    dialogue = [
        Turn(0.5, "user", "q", "count"),
        Turn(0.5, "assistant", "2"),  # answers the count question
        Turn(0.9, "assistant", "x"),  # proactive: follows an assistant turn
        Turn(1.2, "user", "r", "color"),
        Turn(1.2, "assistant", "red"),  # answers a color question
        Turn(1.6, "user", "s"),  # untyped
        Turn(1.6, "assistant", "ok"),
        Turn(2.1, "user", "u", "count"),
        Turn(2.9, "assistant", "3"),  # a later tick: a proactive response, not the answer
    ]
    x = interleave(torch.tensor([0.0, 1.0, 2.0]), None, encode_dialogue(dialogue, TOK), CFG)
    assert torch.equal(lm_weights(x, dialogue, {}, CFG.tick_seconds), torch.ones(len(x)))  # none given
    w = lm_weights(x, dialogue, {"count": 4.0, "color": 0.0, "order": 9.0}, CFG.tick_seconds)
    expect = {0: 1.0, 1: 4.0, 2: 1.0, 3: 1.0, 4: 0.0, 5: 1.0, 6: 1.0, 7: 1.0, 8: 1.0}  # per dialogue turn
    for i, want in expect.items():
        assert torch.all(w[(x.kind == TEXT) & (x.turn == i)] == want), i
    assert torch.all(w[x.kind != TEXT] == 1.0)
    # every supervised position of the count answer (its content token and EOT) weighs 4
    y = lm_targets(x, TOK)
    answer = (y != IGNORE_INDEX) & (x.turn == 1)
    assert int(answer.sum()) == 2 and torch.all(w[answer] == 4.0)
