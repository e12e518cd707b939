"""Stateful data schedule: each batch slot walks its streams window by window (SPEC §8).

Slot ``j`` of a global batch of ``B`` slots takes the streams at positions ``j, j+B, j+2B, ...`` of an
endless sequence of per-epoch permutations, and walks each of them window by window; the model's
recurrent state is carried from one window of a slot to the next and reset when a new stream starts
(``Batch.is_first``). The whole schedule is a pure function of ``(seed, step)``: the data position
in a checkpoint is just the micro-step counter, resume replays index arithmetic (no decoding), and
DataLoader workers can prefetch without owning any state.

Data-parallel ranks split the slots: rank ``r`` of ``W`` owns slots ``[r·B/W, (r+1)·B/W)``, so a
run on W ranks sees exactly the windows of a single-process run with the same global batch.

A length curriculum (:class:`Curriculum`, ``data.curriculum``) caps how many windows of a stream a
slot walks, by stage of training: during a stage with a cap of ``n`` windows a slot walks the first
``n`` windows of each stream occurrence, then moves on to its next stream (``is_first``, a fresh
state). The cap is a function of the micro-step, so the schedule stays a pure function of
``(seed, step)``, and each slot's walk depends on its own slot only, so ranks still split slots.

Joined streams (``data.join_seconds``): a slot may join the streams it walks end to end on one clock
into a *run* of at least ``join_seconds`` seconds, its state carried across every join, so a set of
short streams (any manifest's clips) trains the state at ages far past any one of them. Piece ``k`` of
a run is shifted in time so that it starts where piece ``k - 1`` ends (``Item.shift``), and its first
window carries the state (``Item.carry``) instead of starting fresh. Each piece keeps its own dialogue,
segments and targets, exactly as the evaluation joins a manifest's streams into its long streams
(:mod:`ssm_mm.evaluation.long`). A curriculum cap counts the windows of a whole run. Without
joins (``join_seconds = 0``) a run is one stream occurrence and the walk is as it always was.

Per run (one pass of one slot over one stream, or over the pieces it joins) the schedule also fixes
a random clock offset (SPEC §6: train with random clock offsets so hour-long streams are in
distribution) and an optional modality dropout; both are applied to the window by
:class:`ScheduledWindows`.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Iterator, Sequence

import torch

from ssm_mm.data.dataset import StreamDataset, Window
from ssm_mm.data.interleave import AUDIO, VIDEO


@dataclasses.dataclass(frozen=True)
class Item:
    """One slot's window at one micro-step."""

    index: int  # dataset item (stream-major window index)
    occurrence: int  # global position of this stream pass in the endless stream sequence
    run: int  # occurrence that began this item's run (``occurrence`` itself without joins)
    shift: float = 0.0  # seconds added to this piece's clock: it starts where the run's previous piece ends
    carry: bool = False  # a window of a later piece of a run (its first carries the state across the join)


@dataclasses.dataclass(frozen=True)
class Curriculum:
    """Stages of training, each with a cap on the windows a slot walks per stream occurrence.

    ends: ascending optimizer steps at which stages end (stage ``i`` covers optimizer steps
        ``[ends[i-1], ends[i])``; the last stage runs to the end of training).
    max_windows: one cap per stage (``len(ends) + 1``); 0 = no cap (whole streams).
    micro_steps: micro-steps per optimizer step (``train.grad_accum``): micro-step ``m`` belongs to
        optimizer step ``m // micro_steps``.
    """

    ends: tuple[int, ...] = ()
    max_windows: tuple[int, ...] = (0,)
    micro_steps: int = 1

    def __post_init__(self):
        if len(self.max_windows) != len(self.ends) + 1:
            raise ValueError(f"Curriculum: {len(self.ends)} stage ends need {len(self.ends) + 1} caps")
        if any(b <= a for a, b in zip(self.ends, self.ends[1:])) or any(e < 1 for e in self.ends):
            raise ValueError(f"Curriculum: stage ends {self.ends} must be ascending and >= 1")
        if any(n < 0 for n in self.max_windows) or self.micro_steps < 1:
            raise ValueError(f"Curriculum: caps {self.max_windows} must be >= 0, micro_steps >= 1")

    @classmethod
    def from_config(cls, cfg, window_seconds: float, micro_steps: int = 1) -> Curriculum:
        """From ``data.curriculum`` (:class:`ssm_mm.config.CurriculumConfig`): a cap of
        ``max_seconds`` is ``ceil(max_seconds / window_seconds)`` windows (so a stream's first
        ``max_seconds`` seconds are always covered)."""
        return cls(
            tuple(int(e) for e in cfg.steps),
            tuple(windows_for(s, window_seconds) for s in cfg.max_seconds),
            int(micro_steps),
        )

    @property
    def enabled(self) -> bool:
        return any(self.max_windows)

    def stage(self, optimizer_step: int) -> int:
        """Index of the stage that optimizer step ``optimizer_step`` is in."""
        return bisect.bisect_right(self.ends, optimizer_step)

    def cap(self, micro_step: int) -> int:
        """The cap (windows per occurrence, 0 = none) in force at micro-step ``micro_step``."""
        return self.max_windows[self.stage(micro_step // self.micro_steps)]


def windows_for(seconds: float, window_seconds: float) -> int:
    """``ceil(seconds / window_seconds)`` windows (0 for 0 s), with float noise forgiven: 1.1 s of
    0.1-s windows is 11 windows, not 12."""
    if seconds <= 0:
        return 0
    q = seconds / window_seconds
    return max(1, round(q) if abs(q - round(q)) <= 1e-9 * max(1.0, q) else math.ceil(q))


class SlotSchedule:
    """Deterministic (stream, window) for every slot and micro-step.

    Args:
        windows_per_stream: number of windows of each stream (``StreamDataset.windows_per_stream``).
        batch_size: global number of slots B.
        seed: permutation seed.
        rank, world: this process owns slots ``[rank·B/world, (rank+1)·B/world)``.
        curriculum: caps on the windows walked per run by stage (default: none).
        join_seconds: join a slot's streams into runs of at least this many seconds (0 = no joins).
        seconds, starts: each stream's duration and clock start (needed with joins: the shift that
            puts a piece where the previous one ends).
    """

    def __init__(
        self,
        windows_per_stream: Sequence[int],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        curriculum: Curriculum | None = None,
        join_seconds: float = 0.0,
        seconds: Sequence[float] | None = None,
        starts: Sequence[float] | None = None,
    ):
        if not windows_per_stream:
            raise ValueError("SlotSchedule: no streams to train on")
        if batch_size % world:
            raise ValueError(f"train.batch_size={batch_size} must be divisible by the world size {world}")
        if not (math.isfinite(join_seconds) and join_seconds >= 0):
            raise ValueError(f"SlotSchedule: join_seconds={join_seconds} must be finite and >= 0")
        n = len(windows_per_stream)
        if join_seconds and (seconds is None or starts is None or len(seconds) != n or len(starts) != n):
            raise ValueError(f"SlotSchedule: joins need every stream's seconds and clock start ({n} each)")
        self.join_seconds = float(join_seconds)
        self.seconds = [float(x) for x in seconds] if join_seconds else []
        self.starts = [float(x) for x in starts] if join_seconds else []
        self.curriculum = curriculum or Curriculum()
        self.wps = list(windows_per_stream)
        self.first = [0]
        for n in self.wps:
            self.first.append(self.first[-1] + n)
        self.B = batch_size
        self.seed = seed
        per = batch_size // world
        self.slots = list(range(rank * per, (rank + 1) * per))
        self._perms: dict[int, list[int]] = {}

    def stream_at(self, position: int) -> int:
        """Stream index at ``position`` of the endless sequence of per-epoch permutations."""
        n = len(self.wps)
        epoch, i = divmod(position, n)
        perm = self._perms.pop(epoch, None)  # kept least recently used first: slots may be epochs apart
        if perm is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(n, generator=g).tolist()
        self._perms[epoch] = perm
        if len(self._perms) > 8:
            del self._perms[next(iter(self._perms))]
        return perm[i]

    def iterate(self, start_step: int = 0) -> Iterator[list[Item]]:
        """Items of this rank's slots for micro-steps ``start_step, start_step + 1, ...``.

        A slot's run goes on to its next window at micro-step ``m + 1`` only if the run has walked
        fewer windows than the curriculum's cap at ``m + 1``, and that window exists in its stream or,
        with joins, the run is still shorter than ``join_seconds`` (its next piece is the slot's next
        stream); otherwise the slot starts a new run with its next stream there. (Replayed from
        micro-step 0, so ``iterate(k)`` is exactly the tail of ``iterate(0)``.)"""
        # occurrence k of slot j is stream position j + k·B; a run is one or more occurrences
        cursors = {j: _Cursor(run=j) for j in self.slots}
        cap = self.curriculum.cap
        step = 0
        while True:
            items = []
            limit_next = cap(step + 1)
            for j in self.slots:
                c = cursors[j]
                pos = j + c.k * self.B
                s = self.stream_at(pos)
                items.append(Item(self.first[s] + c.w, pos, c.run, c.shift, c.carry))
                c.w += 1
                c.walked += 1
                capped = bool(limit_next) and c.walked >= limit_next
                if c.w < self.wps[s] and not capped:
                    continue
                nxt = j + (c.k + 1) * self.B
                c.k, c.w = c.k + 1, 0
                if self.join_seconds and not capped:
                    c.joined += self.seconds[s]
                    if c.joined < self.join_seconds * (1 - 1e-9):  # the next stream joins this run
                        c.shift += self.starts[s] + self.seconds[s] - self.starts[self.stream_at(nxt)]
                        c.carry = True
                        continue
                cursors[j] = _Cursor(k=c.k, run=nxt)
            if step >= start_step:
                yield items
            step += 1


@dataclasses.dataclass
class _Cursor:
    """Where one slot is: its occurrence number ``k`` and window ``w`` in that stream, and its run (the
    occurrence that began it, windows walked, seconds of the pieces joined so far, the current piece's
    clock shift, whether the current piece carries the state)."""

    k: int = 0
    w: int = 0
    run: int = 0
    walked: int = 0
    joined: float = 0.0
    shift: float = 0.0
    carry: bool = False


class ScheduleSampler(torch.utils.data.Sampler):
    """A batch sampler over :class:`SlotSchedule` for ``DataLoader(batch_sampler=...)``."""

    def __init__(self, schedule: SlotSchedule, start_step: int, n_steps: int):
        self.schedule, self.start, self.n = schedule, start_step, n_steps

    def __iter__(self):
        it = self.schedule.iterate(self.start)
        for _ in range(self.n):
            yield next(it)

    def __len__(self) -> int:
        return self.n


class ScheduledWindows(torch.utils.data.Dataset):
    """``dataset[item]`` plus the run's clock offset and modality dropout, the piece's shift onto the
    run's clock and whether it carries the state (``Window.carry``).

    clock_offset: offsets are uniform in ``[0, clock_offset)`` seconds, one per run.
    modality_dropout: probability that one of video/audio (chosen at random) is blanked for a whole
        run (frames set to mid-grey 0, audio tokens to silence) — its tokens and times stay, so the
        model learns to cope with a dead sensor.
    """

    def __init__(
        self, dataset: StreamDataset, seed: int, clock_offset: float = 0.0, modality_dropout: float = 0.0
    ):
        self.dataset = dataset
        self.seed = seed
        self.clock_offset = clock_offset
        self.modality_dropout = modality_dropout
        self.silence = float(torch.log(torch.tensor(dataset.cfg.log_floor)))

    def draws(self, occurrence: int) -> tuple[float, int | None]:
        g = torch.Generator().manual_seed(self.seed * 7_919 + occurrence)
        u = torch.rand(3, generator=g, dtype=torch.float64).tolist()
        offset = u[0] * self.clock_offset
        dropped = None
        if u[1] < self.modality_dropout:
            dropped = VIDEO if u[2] < 0.5 else AUDIO
        return offset, dropped

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: Item) -> Window:
        w = self.dataset[item.index]
        offset, dropped = self.draws(item.run)
        tokens = dataclasses.replace(w.tokens, t=w.tokens.t + (offset + item.shift))
        video, audio = w.video, w.audio
        if dropped == VIDEO:
            video = torch.zeros_like(video)
        elif dropped == AUDIO:
            audio = torch.full_like(audio, self.silence)
        return dataclasses.replace(w, tokens=tokens, video=video, audio=audio, carry=item.carry)
