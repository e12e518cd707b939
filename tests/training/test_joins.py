"""Joined training streams (data.join_seconds): a batch slot joins its streams end to end on one clock
into runs of at least join_seconds, the state carried across each join. The schedule (runs, shifts,
carries, caps, determinism, resume, ranks), the windows it yields (times on the run's clock, not a
fresh state at a join) and train.py (the notice, exact resume, the resume check, bad values)."""

import json
import os
import signal

import pytest
import torch

import train as train_cli
from ssm_mm.config import load_config
from ssm_mm.training.schedule import Curriculum, ScheduledWindows, SlotSchedule
from ssm_mm.training.trainer import Trainer, prepare_data

WPS = [5, 2, 7, 1, 4, 9, 3]  # windows per stream, 2 s each (the last one whole)
SECONDS = [2.0 * n for n in WPS]
STARTS = [0.0, 100.0, 0.0, 5.5, 0.0, 1e6, 0.0]  # clock starts differ: a join must shift onto the run


def joined(join_seconds=12.0, **kw) -> SlotSchedule:
    return SlotSchedule(WPS, 3, seed=4, join_seconds=join_seconds, seconds=SECONDS, starts=STARTS, **kw)


def stream_of(schedule: SlotSchedule, index: int) -> tuple[int, int]:
    s = max(i for i, f in enumerate(schedule.first[:-1]) if f <= index)
    return s, index - schedule.first[s]


def runs_of(schedule: SlotSchedule, n: int, slot: int) -> list[list[tuple]]:
    """Slot ``slot``'s walk over n micro-steps as runs: each a list of (stream, window, item)."""
    it, runs = schedule.iterate(), []
    for _ in range(n):
        item = next(it)[slot]
        s, w = stream_of(schedule, item.index)
        if not runs or item.run != runs[-1][-1][2].run:
            runs.append([])
        runs[-1].append((s, w, item))
    return runs[:-1]  # the last run may be cut by n


def test_without_joins_each_run_is_one_stream_occurrence_as_before():
    cur = Curriculum(ends=(4,), max_windows=(2, 0), micro_steps=2)
    for kw in ({}, {"curriculum": cur}):
        plain = SlotSchedule(WPS, 3, seed=4, **kw).iterate()
        off = SlotSchedule(WPS, 3, seed=4, join_seconds=0.0, seconds=SECONDS, starts=STARTS, **kw).iterate()
        for _ in range(60):
            items = next(plain)
            assert items == next(off)
            assert all(i.run == i.occurrence and i.shift == 0.0 and not i.carry for i in items)


@pytest.mark.parametrize("slot", [0, 1, 2])
def test_a_run_joins_whole_streams_until_it_is_long_enough_each_piece_where_the_last_ended(slot):
    sched = joined(12.0)
    runs = runs_of(sched, 200, slot)
    assert len(runs) > 5 and any(len({s for s, _, _ in r}) > 1 for r in runs)
    for run in runs:
        pieces = []  # (stream, occurrence, shift, carry) per piece, windows in order within each
        for (s, w, item), (_, w_before, _) in zip(run, [(None, -1, None), *run]):
            if not pieces or item.occurrence != pieces[-1][1]:
                assert w == 0
                pieces.append((s, item.occurrence, item.shift, item.carry))
            else:
                assert (s, w) == (pieces[-1][0], w_before + 1) and item.shift == pieces[-1][2]
        secs = [SECONDS[s] for s, *_ in pieces]
        assert sum(secs) >= 12.0 and sum(secs[:-1]) < 12.0  # long enough, and no piece more than needed
        assert [c for *_, c in pieces] == [False] + [True] * (len(pieces) - 1)
        assert pieces[0][2] == 0.0 and run[0][2].run == pieces[0][1]  # a run is named by its first occurrence
        for (s0, _, sh0, _), (s1, _, sh1, _) in zip(pieces, pieces[1:]):
            assert STARTS[s1] + sh1 == pytest.approx(STARTS[s0] + sh0 + SECONDS[s0])  # one clock


def test_a_curriculum_cap_counts_the_windows_of_a_whole_run():
    cur = Curriculum(ends=(10,), max_windows=(3, 0), micro_steps=1)
    sched = joined(12.0, curriculum=cur)
    it = sched.iterate()
    walked = {j: 0 for j in range(3)}
    runs = {j: None for j in range(3)}
    carried_late = False
    for m in range(120):
        for j, item in enumerate(next(it)):
            walked[j] = walked[j] + 1 if item.run == runs[j] else 1
            runs[j] = item.run
            if m < 10:
                assert walked[j] <= 3, (m, j, walked[j])  # a run, joined or not, stops at the cap
            carried_late |= item.carry
    assert carried_late  # once the cap is lifted, runs join streams


def test_joined_walks_are_deterministic_resume_as_their_tail_and_split_by_rank():
    cur = Curriculum(ends=(4,), max_windows=(2, 0), micro_steps=2)
    whole = joined(curriculum=cur).iterate()
    items = [next(whole) for _ in range(40)]
    assert items != [next(SlotSchedule(WPS, 3, seed=4, curriculum=cur).iterate()) for _ in range(40)]
    for start in (1, 7, 8, 9, 23):
        tail = joined(curriculum=cur).iterate(start)
        assert [next(tail) for _ in range(40 - start)] == items[start:]
    kw = {"join_seconds": 12.0, "seconds": SECONDS, "starts": STARTS}
    single = SlotSchedule(WPS, 4, seed=2, **kw).iterate()
    r0 = SlotSchedule(WPS, 4, seed=2, rank=0, world=2, **kw).iterate()
    r1 = SlotSchedule(WPS, 4, seed=2, rank=1, world=2, **kw).iterate()
    for _ in range(40):
        assert next(single) == next(r0) + next(r1)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"join_seconds": -1.0, "seconds": SECONDS, "starts": STARTS}, "join_seconds=-1.0"),
        ({"join_seconds": float("inf"), "seconds": SECONDS, "starts": STARTS}, "join_seconds=inf"),
        ({"join_seconds": 10.0}, "seconds and clock start"),
        ({"join_seconds": 10.0, "seconds": SECONDS[:-1], "starts": STARTS}, "seconds and clock start"),
    ],
)
def test_bad_joins_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        SlotSchedule(WPS, 3, seed=0, **kw)


def test_a_joined_piece_is_on_the_runs_clock_and_carries_the_state(tmp_path, tiny_world, tiny_overrides):
    cfg = load_config(None, tiny_overrides(tmp_path, *tiny_world, "data.join_seconds=12"))
    data = prepare_data(cfg)
    ds = data.train
    sched = SlotSchedule(
        ds.windows_per_stream, 2, seed=0, join_seconds=12.0,
        seconds=[s.duration for s in ds.streams], starts=[s.t0 for s in ds.streams],
    )  # fmt: skip
    windows = ScheduledWindows(ds, seed=0, clock_offset=1000.0)
    it = sched.iterate()
    walk = [next(it)[0] for _ in range(12)]  # slot 0: two 6-s streams of 3 windows per run
    assert [i.carry for i in walk[:6]] == [False] * 3 + [True] * 3 and walk[6].run != walk[0].run
    batches = [ds.collate([windows[i]]) for i in walk[:6]]
    assert batches[0].is_first.tolist() == [True] and not any(b.is_first.item() for b in batches[1:])
    # the pieces on one clock: the second starts where the first ends, both offset by the run's draw
    offset, _ = windows.draws(walk[0].run)
    first, second = ds.streams[ds.locate(walk[0].index)[0]], ds.streams[ds.locate(walk[3].index)[0]]
    assert first.id != second.id and offset > 0
    raw = [ds[i.index].tokens.t for i in walk[:6]]
    for b, r, item in zip(batches, raw, walk[:6]):
        assert torch.equal(b.t[0][b.valid[0]], r + (offset + item.shift))
    assert walk[3].shift == pytest.approx(first.t0 + first.duration - second.t0)
    end, start = batches[2].t[0][batches[2].valid[0]].max(), batches[3].t[0][batches[3].valid[0]].min()
    assert 0 <= start - end <= 0.5  # the join is a step of the streams' own rate, not a jump in time


def test_train_py_with_joins_says_so_resumes_exactly_and_checks_the_key(
    tmp_path, tiny_world, tiny_overrides, capsys
):
    base = ("eval.at_end=false", "train.max_steps=6", "data.join_seconds=12")
    full = tmp_path / "full"
    assert train_cli.main(tiny_overrides(full, *tiny_world, *base)) == 0
    out = capsys.readouterr().out
    assert "joins: each batch slot joins its streams end to end into runs of >= 12 s" in out
    part = tmp_path / "part"
    cfg = load_config(None, tiny_overrides(part, *tiny_world, *base))
    stop = [lambda s, _m: s == 4 and os.kill(os.getpid(), signal.SIGTERM)]  # in a run's second piece
    assert Trainer(cfg, stop).run()["interrupted"] == "SIGTERM"
    args = tiny_overrides(part, *tiny_world, *base, "train.resume=true", "data.join_seconds=18")
    assert train_cli.main(args) == 2
    assert "data.join_seconds (" in capsys.readouterr().err
    assert train_cli.main(tiny_overrides(part, *tiny_world, *base, "train.resume=true")) == 0
    a, b = _losses(full), _losses(part)
    assert sorted(a) == sorted(b) == list(range(1, 7)) and all(a[s] == b[s] for s in a), (a, b)
    # the same streams without joins: the same first piece of each run, then fresh states differ
    alone = tmp_path / "alone"
    assert train_cli.main(tiny_overrides(alone, *tiny_world, *base[:2], "data.join_seconds=0")) == 0
    c = _losses(alone)
    assert all(a[s] == c[s] for s in (1, 2, 3)) and all(a[s] != c[s] for s in (4, 5, 6)), (a, c)


def _losses(tmp) -> dict[int, float]:
    lines = (tmp / "run" / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}
