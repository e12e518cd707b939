"""Reliability of training runs (issue 29): checkpoints that name their run, pruning that never loses
a good checkpoint, resumes that check the config, all-corrupt refusals, exit codes, and SIGKILL fault
injection (a run killed at random steps, its newest checkpoint corrupted at random, finishes with the
weights of an uninterrupted run)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from support import BAD_CONFIG_VALUES

import train as train_cli
from ssm_mm.config import load_config
from ssm_mm.models.multimodal import MultimodalSSM
from ssm_mm.training import trainer as trainer_mod
from ssm_mm.training.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from ssm_mm.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]


def _cfg(tiny_overrides, tmp, world, *extra):
    return load_config(None, tiny_overrides(tmp, *world, "eval.at_end=false", *extra))


def _run(tiny_overrides, tmp, world, *extra, sigterm_at=None):
    """One in-process run; ``sigterm_at``: a real SIGTERM to this process after that step (sent by a
    Trainer callback, the public per-step interface)."""
    callbacks = []
    if sigterm_at is not None:
        callbacks.append(lambda step, _m: step == sigterm_at and os.kill(os.getpid(), signal.SIGTERM))
    return Trainer(_cfg(tiny_overrides, tmp, world, *extra), callbacks).run()


def _steps(folder: Path) -> list[int]:
    return [s for s, _ in list_checkpoints(folder)]


def _good_steps(folder: Path) -> set[int]:
    good = set()
    for s, p in list_checkpoints(folder):
        try:
            load_checkpoint(p)
        except CheckpointError:
            continue
        good.add(s)
    return good


# ------------------------------------------------------------------------ case 1: a used run folder


def test_fresh_run_in_a_used_folder_keeps_its_checkpoints_and_resumes_itself(
    tmp_path, tiny_world, tiny_overrides, capsys
):
    ck = tmp_path / "run" / "checkpoints"
    _run(tiny_overrides, tmp_path, tiny_world, "train.keep_last=2")  # run A: steps 6, 8
    assert _steps(ck) == [6, 8]
    old = {s: load_checkpoint(p)["model"] for s, p in list_checkpoints(ck)}
    # run B, fresh (train.resume=false) in the same folder, stopped at step 3
    extra = ("train.keep_last=2", "objectives.speak.weight=3")
    res = _run(tiny_overrides, tmp_path, tiny_world, *extra, sigterm_at=3)
    assert res["interrupted"] == "SIGTERM" and res["step"] == 3
    assert _steps(ck) == [2, 3]  # what B wrote is kept; A's checkpoints no longer compete
    # ... and A's were moved aside, not deleted (nothing lost)
    moved = sorted((tmp_path / "run" / "previous").glob("*/checkpoints/step_*.pt"))
    assert [int(p.stem.split("_")[1]) for p in moved] == [6, 8]
    for p in moved:
        s = int(p.stem.split("_")[1])
        assert all(torch.equal(v, load_checkpoint(p)["model"][k]) for k, v in old[s].items())
    capsys.readouterr()
    res = _run(tiny_overrides, tmp_path, tiny_world, *extra, "train.resume=true")
    assert res["step"] == 8 and res["interrupted"] is None
    assert "step_00000003.pt at step 3" in capsys.readouterr().out  # B continued, not A


# ------------------------------------------------------------- case 2: pruning after a corrupt newest


def test_pruning_never_keeps_a_corrupt_checkpoint_over_a_good_one(tmp_path, tiny_world, tiny_overrides):
    ck = tmp_path / "run" / "checkpoints"
    _run(tiny_overrides, tmp_path, tiny_world, "train.keep_last=2")  # 6, 8
    p8 = dict(list_checkpoints(ck))[8]
    p8.write_bytes(p8.read_bytes()[:4000])  # truncated
    with pytest.warns(UserWarning, match="step_00000008"):
        res = _run(
            tiny_overrides, tmp_path, tiny_world, "train.keep_last=1", "train.resume=true", sigterm_at=7
        )
    assert res["step"] == 7
    assert _steps(ck) == [7] and _good_steps(ck) == {7}  # the corrupt 8 no longer outranks it
    assert (ck / "corrupt" / "step_00000008.pt").is_file()  # set apart for inspection


# ---------------------------------------------------------------- case 3: every checkpoint corrupt


def test_resume_with_every_checkpoint_corrupt_refuses_then_starts_over_only_when_asked(
    tmp_path, tiny_world, tiny_overrides, capsys
):
    ck = tmp_path / "run" / "checkpoints"
    _run(tiny_overrides, tmp_path, tiny_world, "train.max_steps=4")  # 2, 4
    for _, p in list_checkpoints(ck):
        p.write_bytes(p.read_bytes()[:1000])
    args = tiny_overrides(
        tmp_path, *tiny_world, "eval.at_end=false", "train.max_steps=4", "train.resume=true"
    )
    assert train_cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no usable checkpoint" in err and "train.resume=false" in err
    assert _steps(ck) == [2, 4]  # nothing deleted or overwritten
    # asked to start over: the broken checkpoints are set aside and a new run trains from step 0
    assert train_cli.main([*args[:-1], "train.resume=false"]) == 0
    assert _good_steps(ck) == {2, 4}


# ------------------------------------------------------------------- case 4: resume checks the config


def test_resume_refuses_a_changed_config_naming_the_keys_before_data_preparation(
    tmp_path, tiny_world, tiny_overrides, capsys, monkeypatch
):
    _run(tiny_overrides, tmp_path, tiny_world, "train.max_steps=4")
    capsys.readouterr()

    def no_data(*_a, **_k):
        raise AssertionError("data prepared before the resume check")

    monkeypatch.setattr(trainer_mod, "prepare_data", no_data)
    changed = ("train.seed=1", "data.window_seconds=3.0", "model.d_model=64")
    args = tiny_overrides(tmp_path, *tiny_world, "eval.at_end=false", "train.resume=true", *changed)
    assert train_cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    for key in ("train.seed", "data.window_seconds", "model.d_model"):
        assert key in err
    assert "train.init_from" in err  # the weights-only way is named
    # what may change on resume does not count: a longer run, other checkpoint/log/eval settings
    monkeypatch.undo()
    res = _run(
        tiny_overrides, tmp_path, tiny_world, "train.max_steps=6", "train.ckpt_every=3",
        "train.keep_last=4", "logging.log_every=1", "eval.streams=1", "train.resume=true",
    )  # fmt: skip
    assert res["step"] == 6


def test_resume_refuses_other_training_streams_under_the_same_config(
    tmp_path, tiny_world, tiny_overrides, capsys
):
    """The config names a manifest, not its streams: one edited after the checkpoint (a stream gone)
    would shift every later data position, so the resume stops with exit 2 and the checkpoint kept."""
    import shutil

    train = tmp_path / "world" / "manifest.jsonl"
    shutil.copytree(tiny_world[0].parent, train.parent)
    world = (train, tiny_world[1])
    _run(tiny_overrides, tmp_path, world, "train.max_steps=4")
    ck = load_checkpoint(dict(list_checkpoints(tmp_path / "run" / "checkpoints"))[4])
    assert ck["train_streams"]["streams"] == 4
    capsys.readouterr()
    lines = train.read_text().splitlines()
    train.write_text("\n".join(lines[1:]) + "\n")
    args = tiny_overrides(tmp_path, *world, "eval.at_end=false", "train.resume=true", "train.max_steps=6")
    assert train_cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "training streams are not those this run trained on" in err
    assert "(4 then, 3 now" in err and _steps(tmp_path / "run" / "checkpoints")[-1] == 4
    train.write_text("\n".join(lines) + "\n")  # the streams back: it resumes
    assert train_cli.main(args) == 0 and _steps(tmp_path / "run" / "checkpoints")[-1] == 6


def test_init_from_loads_weights_only_into_a_fresh_run(tmp_path, tiny_world, tiny_overrides):
    src = tmp_path / "src"
    _run(tiny_overrides, src, tiny_world, "train.max_steps=4")
    ck = load_checkpoint(dict(list_checkpoints(src / "run" / "checkpoints"))[4])
    # another seed and window (a new run), one step at a negligible lr: the weights are the checkpoint's
    dst = tmp_path / "dst"
    res = _run(
        tiny_overrides, dst, tiny_world, "train.seed=1", "data.window_seconds=3.0", "train.max_steps=1",
        "train.lr=1e-30", "train.warmup_steps=0", f"train.init_from={src / 'run'}",
    )  # fmt: skip
    assert res["step"] == 1
    m = MultimodalSSM.from_pretrained(dst / "run" / "final")
    for k, v in m.state_dict().items():
        assert torch.allclose(v, ck["model"][k], atol=1e-20), k
    # weights of another architecture: one clear error naming the tensors
    with pytest.raises(ValueError, match="init_from.*model.d_model|size"):
        _run(
            tiny_overrides, tmp_path / "bad", tiny_world, "model.d_model=64", f"train.init_from={src / 'run'}"
        )


# ----------------------------------------------------------------- case 14 / 15: value ranges at the CLI


@pytest.mark.parametrize("override, key", BAD_CONFIG_VALUES)
def test_bad_values_exit_2_in_one_line_before_any_work(
    tmp_path, tiny_world, tiny_overrides, capsys, override, key
):
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    (final / "marker").write_text("previous model")
    args = tiny_overrides(tmp_path, *tiny_world, override)
    assert train_cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["final"]  # nothing written
    assert (final / "marker").read_text() == "previous model"
    assert not (tmp_path / "cache").exists()  # before data preparation


# ---------------------------------------------------------------------- subprocess helpers (train.py)


def _launch(args, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    out = open(log, "a")
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=out, stderr=out, env=env)


def _metrics_size(run_dir: Path) -> int:
    f = run_dir / "metrics.jsonl"
    return f.stat().st_size if f.exists() else 0


def _last_step(run_dir: Path, since: int = 0) -> int:
    """The last step logged to metrics.jsonl after byte offset ``since`` (0 if none yet)."""
    f = run_dir / "metrics.jsonl"
    if not f.exists():
        return 0
    with open(f) as fh:
        fh.seek(since)
        lines = [x for x in fh.read().splitlines() if x.endswith("}")]
    return json.loads(lines[-1])["step"] if lines else 0


def _wait_until(
    proc: subprocess.Popen, run_dir: Path, step: int, since: int = 0, timeout: float = 120
) -> bool:
    """True once this process has logged ``step`` (or more) after byte ``since`` of metrics.jsonl;
    False if it exited first."""
    t = time.monotonic()
    while _last_step(run_dir, since) < step:
        if proc.poll() is not None:
            return False
        assert time.monotonic() - t < timeout, "training made no progress"
        time.sleep(0.01)
    return True


# ------------------------------------------------------------------------ case 16: exit code 75


def test_sigterm_exits_75_and_resume_exits_0(tmp_path, tiny_world, tiny_overrides):
    args = tiny_overrides(
        tmp_path, *tiny_world, "eval.at_end=false", "train.max_steps=30", "train.ckpt_every=10"
    )
    log = tmp_path / "log.txt"
    p = _launch(args, log)
    assert _wait_until(p, tmp_path / "run", 2)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 75, log.read_text()[-2000:]
    assert "SIGTERM: saved step" in log.read_text()
    stopped = _last_step(tmp_path / "run")
    assert max(_good_steps(tmp_path / "run" / "checkpoints")) == stopped
    p = _launch([*args, "train.resume=true", "train.max_steps=" + str(stopped + 1)], log)
    assert p.wait(timeout=120) == 0, log.read_text()[-2000:]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


# --------------------------------------------------------------------------- fault injection (SIGKILL)


def _fault_injection(tmp_path, tiny_world, tiny_overrides, kills: int, max_steps: int, seed: int):
    rng = random.Random(seed)
    base = (
        "eval.at_end=false",
        "data.val_manifest=null",
        f"train.max_steps={max_steps}",
        "train.ckpt_every=1",
    )
    base = (*base, "train.keep_last=2", "train.warmup_steps=2")
    ref_args = tiny_overrides(tmp_path / "ref", *tiny_world, *base)
    ref_args.append(f"data.cache_dir={tmp_path / 'cache'}")
    args = tiny_overrides(tmp_path, *tiny_world, *base)
    args.append(f"data.cache_dir={tmp_path / 'cache'}")
    run_dir, ck = tmp_path / "run", tmp_path / "run" / "checkpoints"
    log = tmp_path / "log.txt"
    assert _launch(ref_args, tmp_path / "ref.txt").wait(timeout=300) == 0, (tmp_path / "ref.txt").read_text()

    newest_good = 0
    done = False
    for i in range(kills):
        start = newest_good
        log.write_text("")
        since = _metrics_size(run_dir)
        p = _launch([*args, f"train.resume={'true' if i else 'false'}"], log)
        target = min(max_steps - 1, start + rng.randint(1, 3))
        reached = _wait_until(p, run_dir, target, since)
        if reached:
            time.sleep(rng.uniform(0.0, 0.15))  # anywhere in the step, the save included
            p.send_signal(signal.SIGKILL)
        rc = p.wait(timeout=120)
        out = log.read_text()
        if start:  # the resume started from the newest good checkpoint there was
            assert f"step_{start:08d}.pt at step {start}" in out, out[-3000:]
        if not reached or rc == 0:  # it finished (also when the last step's kill came too late)
            assert rc == 0, out[-3000:]
            done = True
            break
        assert rc == -signal.SIGKILL, (rc, out[-3000:])
        good = _good_steps(ck)
        if start:  # no good checkpoint lost: the one resumed from is still there, or a newer good one
            assert good and max(good) >= start, (good, start)
        newest_good = max(good, default=0)
        # corrupt the newest at random (truncate or flip bytes) where an older good one remains: with
        # the only good checkpoint corrupt, resume refuses by design (the all-corrupt test), which a
        # kill during the first save after a resume can leave here
        if len(good) >= 2 and rng.random() < 0.5:
            p_new = dict(list_checkpoints(ck))[newest_good]
            data = bytearray(p_new.read_bytes())
            if rng.random() < 0.5:
                data = data[: rng.randrange(len(data))]
            else:
                at = rng.randrange(len(data) - 8)
                data[at : at + 8] = bytes(255 - b for b in data[at : at + 8])
            p_new.write_bytes(bytes(data))
            good.discard(newest_good)
            newest_good = max(good)
    if not done:
        p = _launch([*args, "train.resume=true"], log)
        assert p.wait(timeout=300) == 0, log.read_text()[-3000:]
    a = MultimodalSSM.from_pretrained(tmp_path / "ref" / "run" / "final").state_dict()
    b = MultimodalSSM.from_pretrained(run_dir / "final").state_dict()
    assert a.keys() == b.keys()
    for k in a:  # bit-identical to the uninterrupted run
        assert torch.equal(a[k], b[k]), k


def test_sigkill_fault_injection_few_kills(tmp_path, tiny_world, tiny_overrides):
    _fault_injection(tmp_path, tiny_world, tiny_overrides, kills=3, max_steps=8, seed=1)


@pytest.mark.slow
def test_sigkill_fault_injection_20_kills(tmp_path, tiny_world, tiny_overrides):
    _fault_injection(tmp_path, tiny_world, tiny_overrides, kills=20, max_steps=40, seed=29)


# ------------------------------------------------------------- bad training data: one line, exit 2


@pytest.mark.parametrize("skip", [False, True])
def test_bad_manifest_exits_2_in_one_line(tmp_path, tiny_world, tiny_overrides, capsys, skip):
    """A non-UTF-8 manifest line under on_error=raise, or a manifest with no usable stream left after
    skipping, is bad input: one line naming the file, exit 2, no traceback."""
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": "x\xff", "video": "v.mp4", "duration": 3.0}\n')
    args = tiny_overrides(tmp_path, bad, tiny_world[1], *(["data.on_error=skip"] if skip else []))
    assert train_cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err, err
    assert ("no usable stream" in err) if skip else ("UTF-8" in err or "utf-8" in err), err
