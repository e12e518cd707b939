"""The length curriculum of SlotSchedule (data.curriculum): caps per stage, determinism, exact resume,
ranks splitting slots, and the conversion from seconds and optimizer steps."""

import pytest

from ssm_mm.config import CurriculumConfig
from ssm_mm.training.schedule import Curriculum, SlotSchedule, windows_for

WPS = [5, 2, 7, 1, 4, 9, 3]  # windows per stream
# optimizer steps [0, 4): 2 windows, [4, 9): 3 windows, from 9 on whole streams; 2 micro-steps a step
CUR = Curriculum(ends=(4, 9), max_windows=(2, 3, 0), micro_steps=2)


def walk(schedule: SlotSchedule, n: int, start: int = 0) -> list[list[tuple[int, int, int]]]:
    """(stream, window, occurrence) of each slot for micro-steps start .. start + n - 1."""
    it = schedule.iterate(start)
    out = []
    for _ in range(n):
        row = []
        for item in next(it):
            s = max(i for i, f in enumerate(schedule.first[:-1]) if f <= item.index)
            row.append((s, item.index - schedule.first[s], item.occurrence))
        out.append(row)
    return out


def test_each_occurrence_walks_its_first_windows_up_to_the_stage_cap():
    sched = SlotSchedule(WPS, batch_size=3, seed=4, curriculum=CUR)
    steps = walk(sched, 60)
    cut = whole_long = 0
    for j in range(3):
        slot = [row[j] for row in steps]
        for m, (s, w, occ) in enumerate(slot):
            cap = CUR.cap(m)
            assert cap == (2 if m < 8 else 3 if m < 18 else 0)
            assert cap == 0 or w < cap, (m, s, w, cap)
            if m + 1 == len(slot):
                break
            s2, w2, occ2 = slot[m + 1]
            if occ2 == occ:  # the same occurrence goes on to its next window, of the same stream
                assert (s2, w2) == (s, w + 1)
            else:  # it moved on only where the stream or the next micro-step's cap ends it
                assert w2 == 0 and occ2 > occ
                nxt = CUR.cap(m + 1)
                assert w + 1 == WPS[s] or (nxt and w + 1 >= nxt), (m, s, w)
                cut += w + 1 < WPS[s]
                whole_long += m >= 18 and w + 1 == WPS[s] and WPS[s] > 3
    assert cut > 0 and whole_long > 0  # the caps did cut streams short; later stages walk them whole


def test_caps_are_deterministic_and_change_the_walk():
    a = walk(SlotSchedule(WPS, 3, seed=4, curriculum=CUR), 40)
    assert a == walk(SlotSchedule(WPS, 3, seed=4, curriculum=CUR), 40)
    plain = walk(SlotSchedule(WPS, 3, seed=4), 40)
    assert a != plain
    # an uncapped curriculum is the plain schedule
    off = Curriculum(ends=(5,), max_windows=(0, 0), micro_steps=3)
    assert walk(SlotSchedule(WPS, 3, seed=4, curriculum=off), 40) == plain


@pytest.mark.parametrize("start", [1, 7, 8, 9, 17, 18, 25])  # around both stage boundaries (8, 18)
def test_resume_from_any_micro_step_is_the_tail_of_the_whole_walk(start):
    whole = walk(SlotSchedule(WPS, 3, seed=4, curriculum=CUR), start + 15)
    assert walk(SlotSchedule(WPS, 3, seed=4, curriculum=CUR), 15, start=start) == whole[start:]


def test_ranks_split_the_slots_of_a_curriculum_schedule():
    single = SlotSchedule(WPS, batch_size=4, seed=2, curriculum=CUR).iterate()
    r0 = SlotSchedule(WPS, batch_size=4, seed=2, rank=0, world=2, curriculum=CUR).iterate(3)
    r1 = SlotSchedule(WPS, batch_size=4, seed=2, rank=1, world=2, curriculum=CUR).iterate(3)
    for _ in range(3):
        next(single)
    for _ in range(30):
        assert next(single) == next(r0) + next(r1)


def test_a_shrinking_cap_ends_occurrences_already_past_it():
    cur = Curriculum(ends=(6,), max_windows=(0, 2), micro_steps=1)
    steps = walk(SlotSchedule([9], batch_size=1, seed=0, curriculum=cur), 12)
    assert [w for ((_, w, _),) in steps] == [0, 1, 2, 3, 4, 5, 0, 1, 0, 1, 0, 1]


def test_from_config_counts_windows_and_micro_steps():
    cfg = CurriculumConfig(steps=[10, 20], max_seconds=[25.0, 1.1, 0.0])
    cur = Curriculum.from_config(cfg, window_seconds=10.0, micro_steps=3)
    assert cur.max_windows == (3, 1, 0) and cur.ends == (10, 20) and cur.enabled
    assert [cur.cap(m) for m in (0, 29, 30, 59, 60, 10**6)] == [3, 3, 1, 1, 0, 0]
    assert not Curriculum.from_config(CurriculumConfig(), 10.0).enabled  # the default is off
    assert [windows_for(s, w) for s, w in [(30, 10), (1.1, 0.1), (0.7, 0.1), (0.5, 10), (0, 10)]] == [
        3, 11, 7, 1, 0,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="caps"):
        Curriculum(ends=(3,), max_windows=(1,))
    with pytest.raises(ValueError, match="ascending"):
        Curriculum(ends=(3, 3), max_windows=(1, 1, 1))
