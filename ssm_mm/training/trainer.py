"""The training loop (SPEC §8): stateful over long streams, exact resume, DDP, wandb.

``Trainer(cfg).run()`` is everything ``train.py`` does (``setup()`` then ``step()`` in a loop, see
:class:`Trainer`):

1. data: the manifest (or the built-in world generated into the cache on first use) and the extra
   sources of ``data.mix`` (manifests, or worlds generated likewise) as one training set, validated,
   with bad streams skipped and counted when ``data.on_error=skip``; features decoded once into a disk
   cache;
2. model + AdamW (no weight decay on gains/biases) + linear warm-up and cosine decay;
3. the loop: every micro-step each batch slot runs its next window with its carried recurrent state
   (detached: gradients are truncated between windows); an optimizer step every ``grad_accum``
   micro-steps, with gradient clipping; non-finite losses are caught, reported and skipped;
4. checkpoints at optimizer-step boundaries (atomic; model, optimizer, scheduler, RNG, step = data
   position, every slot's carried state); SIGTERM/SIGINT save and exit at the next step;
5. validation (offline, per tick) at ``train.eval_every`` and at the end; the best model by
   validation score is kept apart; the final model is saved with ``save_pretrained``; then the
   streaming evaluation harness (:mod:`ssm_mm.evaluation`, ``eval.at_end``) runs the final model on
   the validation streams as a user would and writes ``results.json`` + PNGs into
   ``<run_dir>/eval/`` (logged to wandb).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ssm_mm.config import Config, ConfigError, mix_sources, save_config, to_dict
from ssm_mm.data.dataset import StreamDataset
from ssm_mm.data.feature_cache import load_features
from ssm_mm.data.manifest import read_manifest
from ssm_mm.data.tokenizer import load_tokenizer
from ssm_mm.models.multimodal import ModelState, MultimodalSSM
from ssm_mm.objectives import objective_class
from ssm_mm.objectives.base import enabled_configs, weight_at
from ssm_mm.training import distributed as D
from ssm_mm.training.checkpoint import load_checkpoint, save_checkpoint
from ssm_mm.training.logger import RunLogger, Throughput
from ssm_mm.training.runs import ResumeError, apply_plan, check_weights_fit, init_weights, plan_start
from ssm_mm.training.schedule import Curriculum, ScheduledWindows, ScheduleSampler, SlotSchedule
from ssm_mm.training.validate import validate

# Checkpoints hold full state dicts; on load every rank reads the file and keeps its own shard.
_FULL = StateDictOptions(full_state_dict=True)


class NonFiniteLossError(RuntimeError):
    pass


class DataError(ValueError):
    """The training data cannot be used as a whole (e.g. every stream of a manifest was skipped)."""


class TrainStep(nn.Module):
    """Model + losses in one ``forward`` so that DDP sees every head's parameters used.

    ``weights``: each objective's weight in the total loss (default: its config's ``weight``);
    ``norm`` (forward): each objective's normaliser (its global count of supervised items).

    ``compile`` (``train.compile``): the model's forward runs under ``torch.compile``
    (:class:`ssm_mm.models.multimodal.CompiledForward`: one graph, no breaks, lengths bucketed) and the
    losses stay eager. The forward is what is compiled, not this module or the losses: the losses
    select supervised positions with boolean masks and count items on the host (graph breaks and a
    recompile per new count), and the compiled function is an ordinary call inside this module, so
    DDP / FSDP wrap this module as they do eagerly and the carried state is a plain input/output.
    Off, the step is the eager one, unchanged."""

    def __init__(self, model: MultimodalSSM, weights: dict[str, float] | None = None, compile: bool = False):
        super().__init__()
        self.model = model
        self.weights = weights or {k: obj.cfg.weight for k, obj in model.objectives.items()}
        self.forward_model = model.compiled_forward() if compile else model.forward_batch

    def forward(self, batch, state: ModelState, norm: dict[str, float]):
        out = self.forward_model(batch, state)
        sums, counts = self.model.loss_sums(out, batch)
        loss = sum(self.weights[k] * sums[k] / norm[k] for k in sums)
        return loss, {k: v.detach() for k, v in sums.items()}, counts, out.state


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embed" not in name and "pos" not in name else no_decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=tuple(cfg.betas),
    )


@dataclass
class DataSetup:
    train: StreamDataset  # every training source's streams: the main source's first, then data.mix's
    val: StreamDataset | None
    labels: list[str]
    skipped: list[tuple]
    train_manifest: Path  # the main source's
    val_manifest: Path | None
    # (name, manifest, usable streams) of each training source: ("data", main), ("data.mix[i]", ...)
    sources: list[tuple[str, Path, int]] = field(default_factory=list)


def _data_workers() -> int:
    """Processes / threads for generating and decoding data before training (the output does not
    depend on it)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores))


def prepare_data(cfg: Config, log=print) -> DataSetup:
    """Manifests (the world ``data.world`` and the worlds of ``data.mix`` generated on first use),
    validation with skip/raise, feature cache warm-up.

    The training set is the main source's streams followed by each ``data.mix`` source's, in one
    :class:`StreamDataset` (the schedule shuffles them together); its event labels are the union:
    the labels the sources' worlds pin (the main world's first, in their order), then every other
    label of the training and validation streams, sorted. Validation is the main source's."""
    from ssm_mm import worlds

    d = cfg.data
    cache = Path(d.cache_dir)
    mix = mix_sources(d, check_files=True)  # a bad entry fails here, before anything is generated
    pinned: list[str] = []  # labels the worlds of the training sources pin, in order

    def pin(world, world_cfg) -> None:
        pinned.extend(x for x in world.labels(world_cfg) or [] if x not in pinned)

    if d.manifest is None:
        world, world_cfg = worlds.selected(d)
        train_m = world.ensure(cache / world.name, world_cfg, "train", workers=_data_workers())
        val_m = d.val_manifest or world.ensure(cache / world.name, world_cfg, "val", workers=_data_workers())
        pin(world, world_cfg)
    else:
        train_m, val_m = d.manifest, d.val_manifest
    train_ms: list[tuple[str, Path]] = [("data", Path(train_m))]
    for src in mix:
        if src.unused:
            log(src.unused)
            continue
        if src.manifest is not None:
            train_ms.append((src.where, Path(src.manifest)))
        else:
            w = worlds.get(src.world)
            path = w.ensure(cache / w.name, src.world_config, "train", workers=_data_workers())
            train_ms.append((src.where, Path(path)))
            pin(w, src.world_config)
    skipped: list[tuple] = []

    def load(path) -> list:
        m = read_manifest(path, on_error=d.on_error)
        skipped.extend(m.skipped)
        fcache = cache / "features" if d.feature_cache else None

        def decode(spec) -> ValueError | None:
            try:
                load_features(spec, cfg.features, fcache)
            except ValueError as e:
                return e
            return None

        good = []
        # decode once (fills the feature cache; decoders and torch release the GIL, so threads
        # overlap); bad media -> skip or raise, in manifest order either way
        pool = ThreadPoolExecutor(max_workers=_data_workers())
        try:
            for spec, err in zip(m.streams, pool.map(decode, m.streams)):
                if err is None:
                    good.append(spec)
                elif d.on_error == "raise":
                    raise err
                else:
                    skipped.append((spec.line, spec.id, str(err)))
        finally:  # on the first bad stream (or Ctrl-C) do not decode the rest of the manifest
            pool.shutdown(wait=True, cancel_futures=True)
        if not good:
            raise DataError(f"{path}: no usable stream ({len(skipped)} skipped)")
        return good

    per_source = [load(path) for _, path in train_ms]
    train_streams = [spec for specs in per_source for spec in specs]
    if len(train_ms) > 1:
        log(
            f"training streams: {len(train_streams)} = "
            + " + ".join(
                f"{len(specs)} of {name} ({path})" for (name, path), specs in zip(train_ms, per_source)
            )
        )
    val_streams = load(val_m) if val_m else None
    # label vocabulary (pinned in the model): what the worlds pin (a world may pin its whole table,
    # classes a short training set need not show), then every other label of the streams
    seen = {s.label for st in train_streams + (val_streams or []) for s in st.segments}
    labels = pinned + sorted(seen - set(pinned))
    labels = ["background"] + [x for x in labels if x != "background"]
    where = ", ".join(str(path) for _, path in train_ms)
    for name, ocfg in enabled_configs(cfg.objectives).items():  # fit each objective to the training streams
        try:
            objective_class(name).prepare(ocfg, train_streams, where)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    tok = load_tokenizer(cfg.tokenizer)
    fcache = cache / "features" if d.feature_cache else None
    mem = max(1, cfg.train.batch_size)
    train = StreamDataset(
        train_streams,
        cfg.features,
        tok,
        labels,
        window_seconds=d.window_seconds,
        cache_dir=fcache,
        memory_cache=mem,
        memory_budget=int(d.memory_cache_mb * 2**20),
        objectives=cfg.objectives,
    )
    val = (
        StreamDataset(
            val_streams,
            cfg.features,
            tok,
            labels,
            window_seconds=None,
            cache_dir=fcache,
            memory_cache=1,
            objectives=cfg.objectives,
        )
        if val_streams
        else None
    )
    for line, sid, msg in skipped:
        log(f"skipped bad stream {sid!r} (line {line}): {msg}")
    sources = [(name, path, len(specs)) for (name, path), specs in zip(train_ms, per_source)]
    return DataSetup(train, val, labels, skipped, Path(train_m), Path(val_m) if val_m else None, sources)


def training_set_fingerprint(data: StreamDataset) -> dict[str, object]:
    """What a checkpoint's data position indexes: the training streams in order, each with its window
    count, as ``{"streams": n, "sha256": 16 hex digits}``. A resume on other streams (a manifest
    edited, a world generated with other seeds) would continue at a position that names other
    windows, so :class:`Trainer` refuses it."""
    rows = [[s.id, round(s.duration, 6), n] for s, n in zip(data.streams, data.windows_per_stream)]
    digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
    return {"streams": len(rows), "sha256": digest}


class Trainer:
    """The training run of a :class:`~ssm_mm.config.Config` (module docstring: what it does).

    ``run()`` is ``train.py``: :meth:`setup`, then :meth:`step` until ``train.max_steps``, with
    logging, validation, checkpoints and SIGTERM/SIGINT handling around it, then the final model and
    evaluation. :meth:`setup` and :meth:`step` can be driven by hand (a notebook, a custom loop)::

        t = Trainer(cfg)
        t.setup()
        while t.global_step < cfg.train.max_steps:
            metrics = t.step()          # None when a non-finite loss skipped the step

    ``callbacks``: functions called as ``callback(step, metrics)`` on every rank after each logged
    optimizer step of :meth:`run` (``metrics`` is the dict written to ``metrics.jsonl``), e.g. for
    custom logging or to stop a run: a callback may send the process SIGTERM / SIGINT, and the run
    stops after that step with a checkpoint, as when the signal comes from outside.
    """

    def __init__(self, cfg: Config, callbacks: Sequence[Callable[[int, dict], object]] = ()):
        self.cfg = cfg
        self.callbacks = list(callbacks)

    # ------------------------------------------------------------------------ slot states

    def _slot_state(self, model: MultimodalSSM, carried: ModelState | None, is_first: torch.Tensor, device):
        """Carried state per slot, reset to a fresh state where a new stream starts."""
        b = is_first.shape[0]
        fresh = model.init_state(b, device)
        if carried is None or bool(is_first.all()):
            return fresh
        rows = [fresh.select([i]) if bool(is_first[i]) else carried.select([i]) for i in range(b)]
        return ModelState.stack(rows)

    # -------------------------------------------------------------------------------- setup

    def setup(self) -> None:
        """Everything before the first step: distributed init, the run folder (a fresh run moves a
        previous one aside; a resume checks its config), data, model, optimizer and schedule, the
        resumed or initial weights, and the data loader from the resumed position. Sets the
        attributes :meth:`step` uses (``model``, ``opt``, ``sched``, ``global_step``, ...)."""
        cfg, tc = self.cfg, self.cfg.train
        self.info = info = D.init_distributed()
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.run_dir = run_dir = Path(tc.run_dir)
        self.ckpt_dir = run_dir / "checkpoints"
        log = print if info.is_main else (lambda *_: None)
        # which run this is and what it loads, decided (and refused, ResumeError) before any data
        # preparation; every rank reads the same files, only rank 0 changes them
        if tc.batch_size % info.world:
            raise ConfigError(
                f"train.batch_size={tc.batch_size} must be divisible by the world size {info.world}"
            )
        mix_sources(cfg.data, check_files=True)  # a missing data.mix manifest: before the folder changes
        plan = plan_start(cfg, to_dict(cfg))
        D.barrier(info)  # every rank has read the folder before rank 0 changes it
        if info.is_main:
            apply_plan(plan, run_dir, log)
            save_config(cfg, run_dir / "config.yaml")
        D.barrier(info)
        if plan.run_id is None:  # a fresh run: rank 0 minted its id
            plan.run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
        self.run_identity = plan.identity()

        data = prepare_data(cfg, log) if info.is_main else None
        D.barrier(info)
        if not info.is_main:
            data = prepare_data(cfg, lambda *_: None)  # the cache is warm now: fast
        self.data = data
        local_b = tc.batch_size // info.world

        torch.manual_seed(tc.seed)
        random.seed(tc.seed)
        model = MultimodalSSM(cfg.model, cfg.features, data.labels, data.train.tokenizer, cfg.objectives)
        model = model.to(info.device)
        self.loss_names = list(model.objectives)  # the losses, in objective order
        # objectives.<name>.weight (and .weight_from: self.weights is updated in place every step)
        self.weights = {k: weight_at(obj.cfg, 0) for k, obj in model.objectives.items()}
        step_module: nn.Module = TrainStep(model, self.weights, compile=tc.compile)
        if info.enabled and tc.parallel == "fsdp":
            # FSDP2: shard each backbone block, then the rest (frontends, heads) at the root, which is
            # the TrainStep so that the heads are used inside its forward
            from torch.distributed.fsdp import fully_shard

            for blk in model.backbone.blocks:
                fully_shard(blk)
            fully_shard(step_module)
        elif info.enabled:
            # find_unused_parameters: a batch without video (or audio) leaves that frontend unused
            step_module = nn.parallel.DistributedDataParallel(
                step_module,
                device_ids=[info.local_rank] if info.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        opt = build_optimizer(model, tc)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_lambda(s, tc.warmup_steps, tc.max_steps, tc.min_lr_ratio)
        )

        step, carried = 0, None
        if plan.resume_from is not None:
            path = plan.resume_from
            ck = load_checkpoint(path)  # verified by plan_start; a change since then fails here
            set_model_state_dict(model, ck["model"], options=_FULL)
            set_optimizer_state_dict(model, opt, ck["optimizer"], options=_FULL)
            sched.load_state_dict(ck["scheduler"])
            torch.set_rng_state(ck["rng"]["torch"])
            random.setstate(_to_tuple(ck["rng"]["python"]))
            step = int(ck["step"])
            then, now = ck.get("train_streams"), training_set_fingerprint(data.train)
            if then is not None and then != now:  # checkpoints from before the fingerprint: not checked
                raise ResumeError(
                    f"{path}: the training streams are not those this run trained on ({then['streams']} "
                    f"then, {now['streams']} now; fingerprint {then['sha256']} -> {now['sha256']}): its "
                    "data position would name other windows; restore them, or start afresh "
                    "(train.resume=false)"
                )
            if ck.get("slot_state") is not None:
                glob = ModelState.from_dict(ck["slot_state"])
                lo = info.rank * local_b
                carried = glob.select(list(range(lo, lo + local_b)))
                carried = _to_device(carried, info.device)
            log(f"resumed from {path} at step {step}")
        elif plan.init_from is not None:
            weights_sd, source = init_weights(plan.init_from)
            own = get_model_state_dict(model, options=_FULL)
            check_weights_fit(own, weights_sd, str(plan.init_from))
            set_model_state_dict(model, {k: weights_sd[k] for k in own}, options=_FULL)
            log(f"weights from {source}; optimizer, schedule and data start at step 0")

        self.accum = accum = max(1, tc.grad_accum)
        curriculum = Curriculum.from_config(cfg.data.curriculum, cfg.data.window_seconds, accum)
        if curriculum.enabled:
            stages = [
                (f"steps {lo}-{hi - 1}" if hi is not None else f"from step {lo}")
                + (f": {n} ({n * cfg.data.window_seconds:g} s)" if n else ": all")
                for lo, hi, n in zip([0, *curriculum.ends], [*curriculum.ends, None], curriculum.max_windows)
            ]
            log("curriculum, windows walked per stream: " + "; ".join(stages))
        streams = data.train.streams
        schedule = SlotSchedule(
            data.train.windows_per_stream,
            tc.batch_size,
            tc.seed,
            info.rank,
            info.world,
            curriculum,
            cfg.data.join_seconds,
            [float(spec.duration) for spec in streams],
            [float(spec.t0) for spec in streams],
        )
        if cfg.data.join_seconds:
            log(
                f"joins: each batch slot joins its streams end to end into runs of >= "
                f"{cfg.data.join_seconds:g} s, the state carried across each join"
            )
        windows = ScheduledWindows(
            data.train, tc.seed, cfg.model.temporal.train_clock_offset, tc.modality_dropout
        )
        n_micro = (tc.max_steps - step) * accum
        loader = torch.utils.data.DataLoader(
            windows,
            batch_sampler=ScheduleSampler(schedule, step * accum, n_micro),
            collate_fn=data.train.collate,
            num_workers=cfg.data.num_workers,
            worker_init_fn=D.ignore_signals_in_worker if cfg.data.num_workers else None,
            persistent_workers=False,
        )
        self.model, self.step_module, self.opt, self.sched = model, step_module, opt, sched
        self.global_step, self.carried = step, carried
        self._update_weights(announce=False)  # a resumed run starts at its step's weights
        self.batches = iter(loader)
        self.autocast = torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=tc.bf16)
        self.nonfinite = 0  # skipped steps so far (NonFiniteLossError at 5)
        self.tokens_seen = 0  # valid tokens trained on since setup, all ranks
        self.wait_s = self.compute_s = 0.0  # time waiting for data / computing, this rank
        model.train()

    # --------------------------------------------------------------------------------- step

    def step(self) -> dict[str, float] | None:
        """One optimizer step: ``train.grad_accum`` micro-batches (every slot runs its next window with
        its carried, detached recurrent state), losses normalised by the global count of supervised
        items, gradient clipping, AdamW and the schedule. Advances ``global_step``.

        Returns ``{"loss", "loss_<head>"..., "lr", "grad_norm"}`` (every rank's mean), or None when a
        non-finite loss on any rank skipped the step (gradients dropped, carried states reset);
        raises :class:`NonFiniteLossError` at the fifth such step.
        """
        info, model, accum = self.info, self.model, self.accum
        names = self.loss_names
        self._update_weights()
        acc = {k: 0.0 for k in names}
        tokens = 0
        for micro in range(accum):
            t_w = time.perf_counter()
            batch = next(self.batches).to(info.device)
            t_c = time.perf_counter()
            self.wait_s += t_c - t_w
            state = self._slot_state(model, self.carried, batch.is_first, info.device)
            counts = model.supervised_counts(batch)
            counts = D.all_reduce_sum(torch.tensor([counts[k] for k in names], dtype=torch.float64), info)
            # normalise by the global count of supervised items of the whole optimizer step
            # (x accum micro-steps, x world since DDP averages gradients over ranks)
            norm = {k: max(1.0, c) * accum / info.world for k, c in zip(names, counts.tolist())}
            with self.autocast:
                loss, sums, _, new_state = self.step_module(batch, state, norm)
            if D.any_rank(not bool(torch.isfinite(loss)), info):
                for _ in range(accum - 1 - micro):  # the step's other micro-batches are skipped too:
                    next(self.batches)  # the data position stays global_step x accum (exact resume)
                self.carried = None
                self.opt.zero_grad(set_to_none=True)
                self.nonfinite += 1
                self.global_step += 1
                self.sched.step()
                if self.nonfinite >= 5:
                    raise NonFiniteLossError(
                        f"{self.nonfinite} non-finite losses: stopping (lower train.lr?)"
                    )
                return None
            loss.backward()
            self.carried = new_state.detach()
            for k in names:  # this rank's share of the step's mean loss
                acc[k] += float(sums[k]) / (norm[k] * info.world)
            tokens += int(batch.valid.sum())
            self.compute_s += time.perf_counter() - t_c
        if info.enabled:
            acc = dict(zip(names, D.all_reduce_sum(torch.tensor([acc[k] for k in names]), info).tolist()))
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.train.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        self.global_step += 1
        self.tokens_seen += tokens * info.world
        return {
            "loss": sum(self.weights[k] * acc[k] for k in names),
            **{f"loss_{k}": acc[k] for k in names},
            "lr": self.sched.get_last_lr()[0],
            "grad_norm": float(gnorm),
        }

    def _update_weights(self, announce: bool = True) -> None:
        """Set each objective's weight for the step about to be taken (``objectives.<name>.weight_from``),
        in place: the step module holds the same dict. A function of the step alone, so a resumed run
        weighs every step as the uninterrupted one did."""
        for k, obj in self.model.objectives.items():
            w = weight_at(obj.cfg, self.global_step)
            if w != self.weights[k]:
                if announce and self.info.is_main:
                    print(
                        f"step {self.global_step}: objectives.{k} weight {self.weights[k]:g} -> {w:g}",
                        flush=True,
                    )
                self.weights[k] = w

    # ---------------------------------------------------------------------------------- run

    def run(self) -> dict:
        """Train to ``train.max_steps`` (or a stop signal): :meth:`setup`, :meth:`step` in a loop with
        logging, validation and checkpoints, then the final model, validation and the streaming
        evaluation. Returns ``step``, ``losses``, ``interrupted`` (the signal's name or None),
        ``skipped`` (bad streams), ``data_wait_frac`` and, after a finished run, ``final_model``,
        ``eval``, ``eval_stream`` and ``elapsed_s``."""
        cfg, tc = self.cfg, self.cfg.train
        t_start = time.perf_counter()
        self.setup()
        info, data, run_dir, ckpt_dir = self.info, self.data, self.run_dir, self.ckpt_dir
        logger = RunLogger(cfg, run_dir, to_dict(cfg), tc.max_steps, self.global_step, enabled=info.is_main)
        stop = D.StopFlag().install()
        thr = Throughput()
        losses_hist: list[float] = []
        best = -math.inf
        interrupted = None
        try:
            while self.global_step < tc.max_steps:
                tokens_before = self.tokens_seen
                metrics = self.step()
                step = self.global_step
                if metrics is None:
                    logger.print(f"step {step}: non-finite loss, step skipped ({self.nonfinite} so far)")
                    continue
                losses_hist.append(metrics["loss"])
                metrics["tokens_per_s"] = thr.update(self.tokens_seen - tokens_before)
                metrics["eta_s"] = thr.step_time() * (tc.max_steps - step)
                metrics["data_wait_frac"] = self.wait_s / max(1e-9, self.wait_s + self.compute_s)
                logger.step(step, metrics, tc.max_steps)
                for callback in self.callbacks:
                    callback(step, metrics)
                stopping = D.any_rank(stop.requested, info)  # a signal to any rank stops them all
                if (
                    tc.eval_every
                    and step % tc.eval_every == 0
                    and data.val is not None
                    and step < tc.max_steps
                ):
                    export = self._export(self.model, info)  # collective under FSDP
                    if info.is_main:
                        best = self._maybe_best(export, data, run_dir, step, best, logger)
                    D.barrier(info)
                if stopping or step % tc.ckpt_every == 0 or step == tc.max_steps:
                    self._save(
                        self.model, self.opt, self.sched, step, self.carried, info, ckpt_dir, tc, data.labels
                    )
                if stopping:
                    interrupted = stop.signal or "stop"
                    logger.print(
                        f"{interrupted}: saved step {step} to {ckpt_dir}; resume with train.resume=true"
                    )
                    break
        finally:
            stop.restore()

        step = self.global_step
        result = {
            "step": step,
            "losses": losses_hist,
            "interrupted": interrupted,
            "skipped": len(data.skipped),
            "data_wait_frac": self.wait_s / max(1e-9, self.wait_s + self.compute_s),
        }
        model = self.model
        if interrupted is None:
            model = self._export(model, info)  # a whole (unsharded) model on rank 0
        if interrupted is None and info.is_main:
            final = model.save_pretrained(run_dir / "final")
            result["final_model"] = str(final)
            if data.val is not None:
                res = validate(model, data.val, device=info.device)
                self._report_eval(res, logger, step)
                result["eval"] = res
                eval_dir = Path(cfg.eval.out_dir) if cfg.eval.out_dir else run_dir / "eval"
                eval_dir.mkdir(parents=True, exist_ok=True)
                (eval_dir / "offline.json").write_text(json.dumps(res, indent=2) + "\n")
                self._update_best(model, run_dir, res, best)
                if cfg.eval.at_end:  # the streaming harness (SPEC §8): results.json + PNGs in eval_dir
                    result["eval_stream"] = self._stream_eval(model, data, eval_dir, logger, step)
            result["elapsed_s"] = time.perf_counter() - t_start
            logger.print(f"final model: {final}  (load with ssm_mm.MultimodalSSM.from_pretrained)")
            if logger.wandb_dir:
                logger.print(
                    f"wandb run: {logger.wandb_dir} (sync later with `wandb sync {logger.wandb_dir}`)"
                )
            logger.print(f"skipped streams: {len(data.skipped)}; total time {result['elapsed_s']:.0f}s")
        logger.close()
        D.barrier(info)
        D.cleanup(info)
        return result

    # ------------------------------------------------------------------------------ helpers

    def _export(self, model: MultimodalSSM, info: D.DistInfo) -> MultimodalSSM | None:
        """The model as one whole module on rank 0 (under FSDP its parameters are gathered into a fresh
        copy; a collective, so every rank calls it). Without FSDP, the model itself."""
        if not (info.enabled and self.cfg.train.parallel == "fsdp"):
            return model
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not info.is_main:
            return None
        copy = MultimodalSSM(model.cfg, model.features, model.labels, model.tokenizer, model.objectives)
        copy.load_state_dict(full)
        return copy

    def _save(self, model, opt, sched, step, carried, info, ckpt_dir, tc, labels):
        # full (unsharded) state dicts keyed by parameter name: the same checkpoint resumes under DDP,
        # FSDP or a single process
        full = StateDictOptions(full_state_dict=True, cpu_offload=info.enabled)
        model_sd = get_model_state_dict(model, options=full)
        optim_sd = get_optimizer_state_dict(model, opt, options=full)
        slot = None if carried is None else carried.to_dict()
        if info.enabled:  # gather every rank's slot states, in rank (= slot) order
            gathered = [None] * info.world
            torch.distributed.all_gather_object(gathered, slot)
            if all(g is not None for g in gathered):
                slot = ModelState.stack([ModelState.from_dict(g) for g in gathered]).to_dict()
            else:
                slot = None
        if info.is_main:
            payload = {
                "step": step,
                "model": model_sd,
                "optimizer": optim_sd,
                "scheduler": sched.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "python": _to_lists(random.getstate())},
                "slot_state": None if slot is None else {k: v.cpu() for k, v in slot.items()},
                "config": to_dict(self.cfg),
                "model_config": model.config_dict(),
                "labels": labels,
                "world": info.world,
                "train_streams": training_set_fingerprint(self.data.train),
            }
            run = self.run_identity
            payload["run_id"], payload["config_hash"] = run.run_id, run.config_hash
            save_checkpoint(payload, ckpt_dir, step, keep_last=tc.keep_last, run=run)
        D.barrier(info)

    def _report_eval(self, res: dict, logger: RunLogger, step: int) -> None:
        """Print and log :func:`validate`'s result: the event metrics, every objective's validation loss
        and, after it, its own metrics (e.g. ``count 0.412 (count accuracy 0.875)``)."""
        own = {name: m for name, m in res["objectives"].items() if name != "event"}  # event's: the header
        parts = []
        for name, loss in res["loss"].items():
            extra = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in own.get(name, {}).items())
            parts.append(f"{name} {loss:.3f}" + (f" ({extra})" if extra else ""))
        logger.print(
            f"eval @ step {step}: tick accuracy {res['tick_accuracy']:.3f} (majority-class rate "
            f"{res['majority_rate']:.3f}) | event macro-F1 {res['macro_f1']:.3f} | val loss "
            + " ".join(parts)
        )
        extra = {k: v for m in own.values() for k, v in m.items()}
        logger.log(
            {
                "eval/tick_accuracy": res["tick_accuracy"],
                "eval/macro_f1": res["macro_f1"],
                "eval/majority_rate": res["majority_rate"],
                **{f"eval/loss_{k}": v for k, v in res["loss"].items()},
                **{f"eval/{k}": v for k, v in extra.items()},
            },
            step=step,
        )

    def _stream_eval(self, model, data: DataSetup, out_dir: Path, logger: RunLogger, step: int) -> dict:
        """Run the streaming evaluation harness on the validation streams (and any eval.sweep points),
        print its table, and log its headline metrics and plots to wandb. Returns the headline
        metrics of the validation set."""
        from ssm_mm.evaluation import (
            Dataset,
            EvalOptions,
            format_lengths,
            format_table,
            headline,
            length_datasets,
            model_labels,
            run_suite,
        )
        from ssm_mm.evaluation.suite import sweep_datasets

        cfg = self.cfg
        streams = list(data.val.streams)
        if cfg.eval.streams > 0:
            streams = streams[: cfg.eval.streams]
        name = Path(cfg.train.run_dir).name or "model"
        datasets = [Dataset("val", streams, data.val_manifest)]
        datasets += length_datasets(cfg, datasets[0], model_labels({name: model}), logger.print)
        datasets += sweep_datasets(cfg, model_labels({name: model}), logger.print)
        t = time.perf_counter()
        res = run_suite(
            {name: model},
            datasets,
            EvalOptions.from_config(cfg.eval),
            out_dir,
            plots=cfg.eval.plots,
            plot_streams=cfg.eval.plot_streams,
            log=lambda *_: None,
        )
        logger.print(f"streaming eval ({time.perf_counter() - t:.1f} s, {out_dir / 'results.json'}):")
        logger.print(format_table(res["results"]))
        if format_lengths(res["lengths"]):
            logger.print(format_lengths(res["lengths"]))
        logged = {}
        for r in res["results"]:
            prefix = "eval_stream" if r["dataset"] == "val" else f"eval_stream/{r['dataset']}"
            logged.update({f"{prefix}/{k}": v for k, v in headline(r["metrics"]).items()})
        logger.log(logged, step=step)
        for f in res["plots"]:
            logger.image(f"eval_stream/{Path(f).stem}", out_dir / f, step)
        return headline(res["results"][0]["metrics"])

    def _maybe_best(self, model, data, run_dir, step, best, logger) -> float:
        res = validate(model, data.val)
        self._report_eval(res, logger, step)
        return self._update_best(model, run_dir, res, best)

    def _update_best(self, model, run_dir: Path, res: dict, best: float) -> float:
        score = res["macro_f1"] if not math.isnan(res["macro_f1"]) else res["tick_accuracy"]
        if score > best:
            model.save_pretrained(run_dir / "best")
            (run_dir / "best" / "score.json").write_text(json.dumps({"score": score}) + "\n")
            return score
        return best


def _to_lists(x):
    if isinstance(x, tuple):
        return [_to_lists(v) for v in x]
    return x


def _to_tuple(x):
    if isinstance(x, list):
        return tuple(_to_tuple(v) for v in x)
    return x


def _to_device(state: ModelState, device) -> ModelState:
    if device.type == "cpu":
        return state
    return ModelState.from_dict({k: v.to(device) for k, v in state.to_dict().items()})
