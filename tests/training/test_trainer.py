"""train.py / Trainer: exact resume after SIGTERM, corrupt checkpoints, bad streams, DDP parity."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssm_mm.config import load_config
from ssm_mm.models.multimodal import MultimodalSSM
from ssm_mm.training.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from ssm_mm.training.schedule import SlotSchedule
from ssm_mm.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
SIGTERM_DRIVER = Path(__file__).with_name("train_with_sigterm.py")


def losses_of(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def sigterm_after(step: int):
    """A Trainer callback sending this process a real SIGTERM after optimizer step ``step``."""
    return lambda s, _metrics: s == step and os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(scope="module")
def run(tiny_overrides):
    def run(tmp, world, *extra, sigterm_at=None):
        cfg = load_config(None, tiny_overrides(tmp, *world, *extra))
        return Trainer(cfg, [] if sigterm_at is None else [sigterm_after(sigterm_at)]).run()

    return run


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_world, run):
    tmp = tmp_path_factory.mktemp("full")
    res = run(tmp, tiny_world)
    return tmp, res


def test_sigterm_then_resume_equals_uninterrupted(tmp_path, tiny_world, uninterrupted, run):
    full_tmp, full = uninterrupted
    assert full["interrupted"] is None and full["step"] == 8
    res = run(tmp_path, tiny_world, sigterm_at=3)
    assert res["interrupted"] == "SIGTERM" and res["step"] == 3
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")][-1] == 3
    res2 = run(tmp_path, tiny_world, "train.resume=true")
    assert res2["interrupted"] is None and res2["step"] == 8
    a, b = losses_of(full_tmp / "run"), losses_of(tmp_path / "run")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for s in a:  # CPU fp32, same windows, same carried state: bit-identical
        assert a[s] == b[s], (s, a[s], b[s])
    # the final models agree too
    m1 = MultimodalSSM.from_pretrained(full_tmp / "run" / "final")
    m2 = MultimodalSSM.from_pretrained(tmp_path / "run" / "final")
    for (k, v), (_, w) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(v, w), k


def test_truncated_checkpoint_is_refused_and_previous_used(tmp_path, tiny_world, uninterrupted, run):
    full_tmp, _ = uninterrupted
    run(tmp_path, tiny_world, sigterm_at=5)  # checkpoints at 2, 4 and 5
    ckpts = dict(list_checkpoints(tmp_path / "run" / "checkpoints"))
    assert set(ckpts) >= {4, 5}
    data = ckpts[5].read_bytes()
    ckpts[5].write_bytes(data[: len(data) // 2])  # truncated on disk
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(ckpts[5])
    # the resumed run falls back to step 4 and still reproduces the uninterrupted curve
    (tmp_path / "run" / "metrics.jsonl").unlink()
    with pytest.warns(UserWarning, match="refusing checkpoint"):
        res = run(tmp_path, tiny_world, "train.resume=true")
    assert res["step"] == 8
    a, b = losses_of(full_tmp / "run"), losses_of(tmp_path / "run")
    assert sorted(b) == list(range(5, 9))
    for s in b:
        assert a[s] == b[s]


def test_bad_stream_is_skipped_and_counted(tmp_path, tiny_world, capsys, run):
    train, val = tiny_world
    lines = Path(train).read_text().splitlines()
    bad = json.loads(lines[0])
    bad["id"] = "broken"
    bad["video"] = "media/does_not_exist.mp4"
    manifest = tmp_path / "manifest.jsonl"
    shutil.copytree(Path(train).parent / "media", tmp_path / "media")
    manifest.write_text("\n".join([json.dumps(bad), *lines[1:]]) + "\n")
    res = run(tmp_path, (manifest, val), "data.on_error=skip", "train.max_steps=2")
    assert res["skipped"] == 1
    out = capsys.readouterr().out
    assert "broken" in out and "skipped streams: 1" in out
    with pytest.raises(ValueError, match="broken"):
        run(tmp_path, (manifest, val), "data.on_error=raise", "train.max_steps=2")


@pytest.mark.parametrize(
    "override, head, printed",
    [
        ("objectives.video.size=2", "video", [" video "]),
        ("objectives.count.max=2", "count", [" count ", "count accuracy"]),
        ("objectives.order={}", "order", [" order ", "order accuracy"]),
        ("objectives.recall.size=2", "recall", [" recall "]),
        ("objectives.attribute.names=[color]", "attribute", [" attribute ", "attribute accuracy"]),
        ("objectives.attribute.names=[color, shape]", "attribute", [" attribute ", "attribute accuracy"]),
    ],
)
def test_optional_objective_adds_its_weighted_loss(
    tmp_path, tiny_world, run, capsys, override, head, printed
):
    res = run(tmp_path, tiny_world, override, "train.max_steps=2", f"objectives.{head}.weight=0.5")
    assert res["step"] == 2
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    positive = [r[f"loss_{head}"] > 0 for r in rows]
    assert (
        all(positive) if head in ("video", "count", "order") else any(positive)
    )  # a batch may hold no finished event
    for r in rows:  # the total weighs it by objectives.<head>.weight
        parts = r["loss_lm"] + r["loss_event"] + r["loss_speak"] + 0.5 * r[f"loss_{head}"]
        assert abs(r["loss"] - parts) < 1e-5 * max(1.0, r["loss"])
    final = MultimodalSSM.from_pretrained(tmp_path / "run" / "final").objectives
    assert list(final) == ["lm", "event", "speak", head] and final[head].cfg.weight == 0.5
    if head == "attribute":  # the value vocabulary of the training streams, pinned in the model
        values = set(final[head].cfg.values)
        colours = {"red", "green", "blue", "yellow", "cyan", "purple"}
        if final[head].cfg.names == ["color", "shape"]:  # one vocabulary: the values of all its attributes
            kinds = {"circle", "square", "triangle", "cross", "diamond", "bar"}
            assert colours & values and values - colours and values - colours <= kinds
        else:
            assert values <= colours and len(values) >= 2
    out = capsys.readouterr().out
    assert all(p in out for p in printed)  # in the step and validation lines


def test_weight_schedule_weighs_each_step_and_resumes_exactly(tmp_path, tiny_world, run, capsys):
    """``objectives.<name>.weight_from``: the step taken at optimizer step s (logged as s + 1) weighs the
    objective by the last entry at or before s; an interrupted run resumed between two changes gives
    the uninterrupted run's losses and weights bit for bit."""
    sched = ("objectives.speak.weight_from={3: 0.25, 6: 4.0}", "eval.at_end=false")
    full = tmp_path / "full"
    assert run(full, tiny_world, *sched)["step"] == 8
    assert "step 3: objectives.speak weight 1 -> 0.25" in capsys.readouterr().out
    rows = [json.loads(x) for x in (full / "run" / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        w = 1.0 if r["step"] <= 3 else 0.25 if r["step"] <= 6 else 4.0
        parts = r["loss_lm"] + r["loss_event"] + w * r["loss_speak"]
        assert abs(r["loss"] - parts) < 1e-5 * max(1.0, r["loss"]), r
    part = tmp_path / "part"
    assert run(part, tiny_world, *sched, sigterm_at=5)["step"] == 5
    capsys.readouterr()
    assert run(part, tiny_world, *sched, "train.resume=true")["step"] == 8
    out = capsys.readouterr().out
    assert "weight 1 -> 0.25" not in out and "step 6: objectives.speak weight 0.25 -> 4" in out
    a, b = losses_of(full / "run"), losses_of(part / "run")
    assert sorted(a) == sorted(b) == list(range(1, 9)) and all(a[s] == b[s] for s in a), (a, b)
    m1 = MultimodalSSM.from_pretrained(full / "run" / "final")
    m2 = MultimodalSSM.from_pretrained(part / "run" / "final")
    assert all(torch.equal(v, w) for v, w in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert m2.objectives["speak"].cfg.weight_from == {3: 0.25, 6: 4.0}


def test_recall_attribute_missing_from_the_training_streams_is_named(tmp_path, tiny_world, run):
    with pytest.raises(ValueError, match=r"\['nope'\]: no segment of the training streams"):
        run(tmp_path, tiny_world, "objectives.attribute.names=[color, nope]", "train.max_steps=1")
    assert not (tmp_path / "run" / "final").exists()


def test_slot_schedule_ranks_partition_the_single_process_batch():
    wps = [3, 1, 2, 4, 2]
    single = SlotSchedule(wps, batch_size=4, seed=1).iterate()
    r0 = SlotSchedule(wps, batch_size=4, seed=1, rank=0, world=2).iterate()
    r1 = SlotSchedule(wps, batch_size=4, seed=1, rank=1, world=2).iterate()
    for _ in range(12):
        assert next(single) == next(r0) + next(r1)
    # resume from step k == continuing
    a = SlotSchedule(wps, 4, 1).iterate()
    for _ in range(5):
        next(a)
    b = SlotSchedule(wps, 4, 1).iterate(start_step=5)
    assert [next(a) for _ in range(6)] == [next(b) for _ in range(6)]


def test_train_py_rejects_typos_before_any_work(tmp_path):
    p = subprocess.run(
        [sys.executable, "train.py", "model.d_modle=3", f"train.run_dir={tmp_path / 'r'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert "d_modle" in p.stderr and "d_model" in p.stderr
    assert not (tmp_path / "r").exists()
    # several --config files merge in order; a missing one is named
    p = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--config",
            "configs/default.yaml",
            "--config",
            str(tmp_path / "no.yaml"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and "no.yaml" in p.stderr and not (tmp_path / "r").exists()


def free_port() -> int:
    """A TCP port nothing listens on now (a fixed one was once still taken: EADDRINUSE)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_matches_single_process_and_resumes_single(
    tmp_path, tiny_world, uninterrupted, run, tiny_overrides, parallel
):
    full_tmp, _ = uninterrupted
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "SSM_MM_TEST_SIGTERM_AT": "4"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={port}",
        str(SIGTERM_DRIVER),  # train.py whose rank 0 gets a real SIGTERM after step 4
        *tiny_overrides(tmp_path, *tiny_world, f"train.parallel={parallel}"),
    ]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    # the workers exit 75 (interrupted, resumable); torchrun reports that as a failed worker (1)
    assert p.returncode == 1 and "exitcode  : 75" in p.stderr, p.stderr[-3000:]
    assert "SIGTERM: saved step 4" in p.stdout  # rank 0 got the signal, rank 1 stopped with it
    a, b = losses_of(full_tmp / "run"), losses_of(tmp_path / "run")
    for s in range(1, 5):
        assert abs(a[s] - b[s]) <= 1e-4 * abs(a[s]), (s, a[s], b[s])
    # the DDP or sharded (FSDP) checkpoint of step 4 resumes in a single process, the same curve
    run(tmp_path, tiny_world, "train.resume=true")
    b = losses_of(tmp_path / "run")
    for s in range(5, 9):
        assert abs(a[s] - b[s]) <= 1e-4 * abs(a[s]), (s, a[s], b[s])
