"""Checkpoint files on their own: records, verification, pruning by run (no training)."""

import hashlib
import json

import pytest
import torch

from ssm_mm.training.checkpoint import (
    CheckpointError,
    RunIdentity,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    save_checkpoint,
    scan,
)

A, B = RunIdentity("aaaa", "h1", {"train.seed": 0}), RunIdentity("bbbb", "h2", {"train.seed": 1})


def _save(folder, step, run, keep_last=2):
    return save_checkpoint({"step": step, "w": torch.full((4,), float(step))}, folder, step, keep_last, run)


def test_pruning_keeps_what_this_run_wrote_and_never_touches_other_runs(tmp_path):
    for s in (15, 20):
        _save(tmp_path, s, A)
    p7 = _save(tmp_path, 7, B)  # a new run writing lower step numbers in the same folder
    assert p7.exists() and [s for s, _ in list_checkpoints(tmp_path)] == [7, 15, 20]
    for s in (8, 9):
        _save(tmp_path, s, B)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [8, 9, 15, 20]  # B keeps its 2, A untouched
    assert load_latest(tmp_path, run_id="bbbb")[1].name == "step_00000009.pt"
    found = scan(tmp_path, "bbbb")
    assert [s for s, _, _ in found.good] == [8, 9] and len(found.foreign) == 2
    meta = json.loads((tmp_path / "step_00000009.json").read_text())
    assert meta["run_id"] == "bbbb" and meta["config_hash"] == "h2" and meta["config"] == {"train.seed": 1}


def test_a_corrupt_checkpoint_does_not_count_as_kept(tmp_path):
    for s in (1, 2, 3):
        _save(tmp_path, s, A, keep_last=3)
    p3 = tmp_path / "step_00000003.pt"
    data = bytearray(p3.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern in the middle
    p3.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(p3)
    _save(tmp_path, 4, A, keep_last=2)  # keeps 4 and 2 (good), not 3 (corrupt) in place of 2
    steps = [s for s, _ in list_checkpoints(tmp_path)]
    assert 2 in steps and 4 in steps and 1 not in steps


def test_a_checkpoint_without_its_record_is_unverified(tmp_path):
    p = _save(tmp_path, 1, A)
    (tmp_path / "step_00000001.json").unlink()  # killed between the rename and the record
    with pytest.raises(CheckpointError, match="did not finish"):
        load_checkpoint(p)
    assert scan(tmp_path, "aaaa").bad and not scan(tmp_path, "aaaa").good


def test_checkpoints_from_before_run_ids_still_load(tmp_path):
    p = tmp_path / "step_00000005.pt"
    torch.save({"step": 5}, p)
    p.with_suffix(".sha256").write_text(hashlib.sha256(p.read_bytes()).hexdigest() + "\n")
    assert load_checkpoint(p)["step"] == 5
    found = scan(tmp_path, None)
    assert [s for s, _, m in found.good if m["run_id"] == "legacy"] == [5]
