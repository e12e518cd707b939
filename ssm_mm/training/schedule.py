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

Per stream *occurrence* (one pass of one slot over one stream) the schedule also fixes a random
clock offset (SPEC §6: train with random clock offsets so hour-long streams are in distribution) and
an optional modality dropout; both are applied to the window by :class:`ScheduledWindows`.
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
        curriculum: caps on the windows walked per stream occurrence by stage (default: none).
    """

    def __init__(
        self,
        windows_per_stream: Sequence[int],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        curriculum: Curriculum | None = None,
    ):
        if not windows_per_stream:
            raise ValueError("SlotSchedule: no streams to train on")
        if batch_size % world:
            raise ValueError(f"train.batch_size={batch_size} must be divisible by the world size {world}")
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
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(n, generator=g).tolist()
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
        return self._perms[epoch][i]

    def iterate(self, start_step: int = 0) -> Iterator[list[Item]]:
        """Items of this rank's slots for micro-steps ``start_step, start_step + 1, ...``.

        A slot's occurrence goes on to its next window at micro-step ``m + 1`` only if that window
        exists and is below the curriculum's cap at ``m + 1``; otherwise the slot starts its next
        stream there. (Replayed from micro-step 0, so ``iterate(k)`` is exactly the tail of
        ``iterate(0)``.)"""
        # cursor per slot: (occurrence number k -> stream position j + k·B, window)
        cursors = {j: [0, 0] for j in self.slots}
        cap = self.curriculum.cap
        step = 0
        while True:
            items = []
            limit_next = cap(step + 1)
            for j in self.slots:
                k, w = cursors[j]
                pos = j + k * self.B
                s = self.stream_at(pos)
                items.append(Item(self.first[s] + w, pos))
                w += 1
                if w >= self.wps[s] or (limit_next and w >= limit_next):
                    k, w = k + 1, 0
                cursors[j] = [k, w]
            if step >= start_step:
                yield items
            step += 1


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
    """``dataset[item]`` plus the occurrence's clock offset and modality dropout.

    clock_offset: offsets are uniform in ``[0, clock_offset)`` seconds, one per occurrence.
    modality_dropout: probability that one of video/audio (chosen at random) is blanked for a whole
        occurrence (frames set to mid-grey 0, audio tokens to silence) — its tokens and times stay, so
        the model learns to cope with a dead sensor.
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
        offset, dropped = self.draws(item.occurrence)
        tokens = dataclasses.replace(w.tokens, t=w.tokens.t + offset)
        video, audio = w.video, w.audio
        if dropped == VIDEO:
            video = torch.zeros_like(video)
        elif dropped == AUDIO:
            audio = torch.full_like(audio, self.silence)
        return dataclasses.replace(w, tokens=tokens, video=video, audio=audio)
