"""Which run a training start belongs to, and what it may load (issue 29).

Every run has an id, minted at a fresh start and kept across resumes, in ``<run_dir>/run.json``; each
checkpoint records it with the hash of the run's *resume-relevant* config (every key except those in
:data:`MAY_CHANGE_ON_RESUME`). :func:`plan_start` decides, before any data preparation and without
changing a file, what a start does:

* ``train.resume=false`` (a fresh run): a previous run found in the folder (its checkpoints, metrics,
  final/best models, eval, run.json) is moved aside into ``<run_dir>/previous/<run id>-<time>/``, so
  the new run never mixes with it and nothing of it is lost; then a new run id is minted.
* ``train.resume=true``: only checkpoints of the folder's run (``run.json``; without one, the run of
  the newest checkpoint that verifies) are candidates; the newest one that verifies is loaded. A
  changed resume-relevant key is refused (:class:`ResumeError` naming each key, old -> new); so is
  a folder whose checkpoints are all unusable (start over with ``train.resume=false``). Unusable
  checkpoints are set apart into ``checkpoints/corrupt/`` (with a warning) so they never outrank a
  good one; other runs' checkpoints are never loaded nor pruned. No checkpoint at all: the run starts
  at step 0 (a requeued job that was stopped before its first checkpoint).
* ``train.init_from=PATH`` (a checkpoint file, a run or checkpoints folder, or a ``save_pretrained``
  folder): a run that starts at step 0 takes its model weights from there (weights only: optimizer,
  schedule, RNG and data position start fresh); the config may differ except for the architecture.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssm_mm.training.checkpoint import RunIdentity, scan, set_apart

# Keys that may change when a run is resumed (a trailing "." = the whole section): how long it runs
# and how it saves, logs and evaluates. train.max_steps also sets the cosine schedule's length, so
# changing it re-shapes the remaining learning-rate curve (the usual way to extend a run).
MAY_CHANGE_ON_RESUME = (
    "train.max_steps",
    "train.ckpt_every",
    "train.keep_last",
    "train.eval_every",
    "train.resume",
    "train.init_from",
    "train.threads",
    "train.parallel",  # checkpoints hold full state dicts: DDP, FSDP and one process resume each other
    "train.compile",  # the same step, compiled or eager
    "train.run_dir",  # a run folder may be moved
    "train.debug_signal_at_step",  # a removed test-only key: configs of older runs still hold it
    "data.num_workers",
    "data.memory_cache_mb",
    "data.cache_dir",
    "data.feature_cache",
    "data.val_manifest",
    "logging.",
    "eval.",
)

# What a previous run leaves in its folder (moved aside together by a fresh start there).
RUN_ARTIFACTS = (
    "checkpoints", "metrics.jsonl", "run.json", "config.yaml", "final", "best", "eval", "wandb_id.txt"
)  # fmt: skip


class ResumeError(ValueError):
    """A start that must not go ahead (incompatible config, unusable checkpoints, bad init_from)."""


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v) and not k.startswith("loss_"):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _may_change(key: str) -> bool:
    if any(key == k or (k.endswith(".") and key.startswith(k)) for k in MAY_CHANGE_ON_RESUME):
        return True
    # a world's split knobs (which held-out streams validate) may change too: data.worlds.<name>.<knob>
    parts = key.split(".")
    if len(parts) == 4 and parts[:2] == ["data", "worlds"]:
        from ssm_mm import worlds

        return parts[2] in worlds.names() and parts[3] in worlds.get(parts[2]).split_knobs
    return False


# Resume-relevant keys added since runs were started (a trailing "." = the whole section); a view
# without them reads them at their defaults, which keep the behaviour from before they existed.
ADDED_KEYS = ("data.mix", "data.curriculum.", "data.join_seconds", "model.rotate_pairs", "model.gain")


def upgrade_view(old: dict[str, Any]) -> dict[str, Any]:
    """A resume view written before worlds were plugins, in today's keys: ``data.<world>.knob`` read as
    ``data.worlds.<world>.knob``, and the keys that change added then (``data.world``, a world's knobs
    that were not in the config yet) at their defaults, so such a run resumes as it was. Keys of
    :data:`ADDED_KEYS` it lacks are read at their defaults too, as is each objective's ``weight_from``."""
    from ssm_mm import worlds
    from ssm_mm.config import Config, to_dict, upgrade_key

    added = {
        k: v
        for k, v in resume_view(to_dict(Config())).items()
        if k not in old and any(k == a or (a.endswith(".") and k.startswith(a)) for a in ADDED_KEYS)
    }
    # every objective's weight schedule (objectives.<name>.weight_from), none before it existed
    schedules = [
        f"{k[: -len('weight')]}weight_from"
        for k in old
        if k.startswith("objectives.") and k.endswith(".weight")
    ]
    added.update({k: {} for k in schedules if k not in old})
    if added:
        old = dict(sorted({**old, **added}.items()))
    if not any(k.split(".")[:2] == ["data", n] for k in old for n in worlds.names()):
        return old
    out = {upgrade_key(k): v for k, v in old.items()}

    for k, v in resume_view(to_dict(Config())).items():
        if k.startswith(("data.world.", "data.worlds.")) or k == "data.world":
            out.setdefault(k, v)
    return dict(sorted(out.items()))


def resume_view(cfg_dict: dict) -> dict[str, Any]:
    """The resume-relevant keys of a config dict (``to_dict(cfg)``), dotted -> JSON-normal value."""
    flat = json.loads(json.dumps(_flatten(cfg_dict), default=str))
    # an objective that is off (objectives.<name>: null) is the same as one this process has not
    # registered (a user's plugin imported by one run and not by another)
    flat = {
        k: v for k, v in flat.items() if not (v is None and k.startswith("objectives.") and k.count(".") == 1)
    }
    return {k: v for k, v in sorted(flat.items()) if not _may_change(k)}


def config_hash(view: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(view, sort_keys=True).encode()).hexdigest()[:16]


def config_diff(old: dict[str, Any], new: dict[str, Any], legacy: bool = False) -> list[str]:
    """``key (old -> new)`` for each key whose value differs (NaN equals NaN). ``legacy``: ``old`` is
    the full config a pre-run-id checkpoint stored (after data preparation): keys it lacks (added to
    the code since) and a recall_values vocabulary filled from the data are not differences."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if legacy and (k not in old or (k == "model.recall_values" and b == [])):
            continue
        same = a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
        if not same:
            out.append(f"{k} ({a!r} -> {b!r})")
    return out


def read_run_id(run_dir: Path) -> str | None:
    f = run_dir / "run.json"
    if not f.is_file():
        return None
    try:
        return str(json.loads(f.read_text())["run_id"])
    except (ValueError, KeyError, TypeError):
        raise ResumeError(f"{f}: unreadable (not the run.json train.py writes)") from None


@dataclass
class StartPlan:
    """What a start does (see the module docstring); computed by :func:`plan_start`."""

    view: dict[str, Any]  # this config's resume-relevant keys
    run_id: str | None  # None: a fresh run (minted by apply_plan)
    resume_from: Path | None = None  # the verified checkpoint to continue from
    resume_step: int = 0
    init_from: Path | None = None  # weights-only source for a run starting at step 0
    archive: bool = False  # a fresh start in a used folder: move the previous run aside
    set_apart: list[tuple[Path, str]] = field(default_factory=list)  # unusable checkpoints (+ why)
    notes: list[str] = field(default_factory=list)  # log lines

    def identity(self) -> RunIdentity:
        assert self.run_id is not None, "apply_plan mints the id of a fresh run"
        return RunIdentity(self.run_id, config_hash(self.view), self.view)


def _used(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in RUN_ARTIFACTS if name != "config.yaml")


def plan_start(cfg, cfg_dict: dict) -> StartPlan:
    """Decide a start of ``cfg`` (its ``to_dict`` taken before data preparation); reads only.
    :class:`ResumeError` with a one-line reason where the start must not go ahead."""
    tc = cfg.train
    run_dir = Path(tc.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    plan = StartPlan(view=resume_view(cfg_dict), run_id=None)
    if tc.resume:
        run_id = read_run_id(run_dir)
        found = scan(ckpt_dir, run_id)
        plan.set_apart = list(found.bad)
        if found.foreign:
            plan.notes.append(
                f"ignoring {len(found.foreign)} checkpoint(s) of other runs in {ckpt_dir} "
                f"(e.g. {found.foreign[0][0].name} of run {found.foreign[0][1]})"
            )
        if found.good:
            step, path, meta = found.good[-1]
            run_id = meta["run_id"]
            old = meta.get("config")
            legacy = old is None
            if legacy:  # written before run ids: its full config is in the payload
                from ssm_mm.training.checkpoint import load_checkpoint

                old = resume_view(load_checkpoint(path).get("config") or {})
            old = upgrade_view(old)
            diff = config_diff(old, plan.view, legacy=legacy)
            if diff:
                raise ResumeError(
                    f"cannot resume {path} (run {run_id}, step {step}): the config differs in "
                    f"{', '.join(diff)}; resume with the run's values, or start a new run (another "
                    f"train.run_dir, or train.resume=false) from its weights with train.init_from={path}"
                )
            if tc.max_steps < step:
                raise ResumeError(
                    f"cannot resume {path}: train.max_steps={tc.max_steps} is below its step {step}"
                )
            plan.run_id, plan.resume_from, plan.resume_step = run_id, path, step
            return plan
        if found.bad:
            first = found.bad[-1][1]
            raise ResumeError(
                f"train.resume=true but no usable checkpoint in {ckpt_dir}: {len(found.bad)} unusable "
                f"(newest: {first}); nothing was changed. To start over pass train.resume=false (the "
                f"previous run is then moved into {run_dir / 'previous'})"
            )
        plan.run_id = run_id  # a run stopped before its first checkpoint (or a new folder)
        plan.notes.append(f"train.resume=true but no checkpoint of this run in {ckpt_dir}: step 0")
    else:
        plan.archive = _used(run_dir)
    if tc.init_from:
        plan.init_from = _resolve_init(Path(tc.init_from))
    return plan


def _resolve_init(p: Path) -> Path:
    """A checkpoint file, a save_pretrained folder, or the newest verified checkpoint of a run or
    checkpoints folder."""
    if p.is_file() or (p.is_dir() and (p / "config.json").is_file()):
        return p
    for folder in (p, p / "checkpoints"):
        found = scan(folder, None)
        if found.good:
            return found.good[-1][1]
    raise ResumeError(
        f"train.init_from={p}: not a checkpoint file, a save_pretrained folder, or a folder with a "
        "usable checkpoint"
    )


def apply_plan(plan: StartPlan, run_dir: Path, log=print) -> None:
    """Carry out a plan's file changes (main rank, before data preparation): move a previous run
    aside, set unusable checkpoints apart, write ``run.json`` for a fresh run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if plan.archive:
        old = None
        try:
            old = read_run_id(run_dir)
        except ResumeError:
            pass
        dest = run_dir / "previous" / f"{old or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while dest.exists():
            dest = dest.with_name(f"{dest.name.rsplit('~', 1)[0]}~{n}")
            n += 1
        dest.mkdir(parents=True)
        for name in RUN_ARTIFACTS:
            if (run_dir / name).exists():
                shutil.move(str(run_dir / name), str(dest / name))
        log(f"fresh run (train.resume=false) in a used folder: the previous run moved to {dest}")
    for path, why in plan.set_apart:
        where = set_apart(path, path.parent / "corrupt")
        warnings.warn(f"refusing checkpoint: {why}; set apart as {where}", stacklevel=2)
    for line in plan.notes:
        log(line)
    if plan.run_id is None or not (run_dir / "run.json").is_file():
        plan.run_id = plan.run_id or uuid.uuid4().hex[:12]
        tmp = run_dir / f".run.json.tmp-{os.getpid()}"
        tmp.write_text(
            json.dumps({"run_id": plan.run_id, "config_hash": config_hash(plan.view), "created": time.time()})
            + "\n"
        )
        os.replace(tmp, run_dir / "run.json")


def init_weights(path: Path) -> tuple[dict, str]:
    """The model weights at ``path`` (see :func:`_resolve_init`) and a description for the log."""
    from ssm_mm.training.checkpoint import load_checkpoint

    if path.is_dir():
        from ssm_mm.models.multimodal import MultimodalSSM

        return MultimodalSSM.from_pretrained(path).state_dict(), f"{path} (save_pretrained)"
    ck = load_checkpoint(path)
    if "model" not in ck:
        raise ResumeError(f"train.init_from={path}: not an ssm_mm training checkpoint (no model weights)")
    return ck["model"], f"{path} (step {ck.get('step')})"


def check_weights_fit(model_sd: dict, weights: dict, source: str) -> None:
    """:class:`ResumeError` naming the tensors that are missing, unexpected or of another size."""
    missing = sorted(set(model_sd) - set(weights))
    extra = sorted(set(weights) - set(model_sd))
    sizes = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in model_sd.items()
        if k in weights and tuple(weights[k].shape) != tuple(v.shape)
    ]
    if missing or extra or sizes:
        parts = [f"sizes differ: {'; '.join(sizes[:4])}{' ...' if len(sizes) > 4 else ''}"] if sizes else []
        parts += [f"missing {missing[:4]}"] if missing else []
        parts += [f"unexpected {extra[:4]}"] if extra else []
        raise ResumeError(
            f"train.init_from={source}: the weights do not fit this model ({', '.join(parts)}); "
            "the architecture (model.d_model, model.pattern, ... and the labels) must match"
        )
