"""train.py with a real SIGTERM sent to rank 0 after step ``SSM_MM_TEST_SIGTERM_AT`` (for torchrun tests).

Runs ``train.main`` unchanged (the same config parsing, exit codes and signal handling); only the
Trainer it builds gets a public callback (``Trainer(cfg, callbacks=[...])``) that signals this process
on rank 0 at that step, so the other ranks learn of the stop the production way (``any_rank``).
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # train.py at the repository root

import train  # noqa: E402
from ssm_mm.training import trainer as trainer_mod  # noqa: E402

AT = int(os.environ["SSM_MM_TEST_SIGTERM_AT"])


def _sigterm_rank0(step: int, _metrics: dict) -> None:
    if step == AT and int(os.environ.get("RANK", "0")) == 0:
        os.kill(os.getpid(), signal.SIGTERM)


class _SignalledTrainer(trainer_mod.Trainer):
    def __init__(self, cfg, callbacks=()):
        super().__init__(cfg, [*callbacks, _sigterm_rank0])


trainer_mod.Trainer = _SignalledTrainer  # train.main imports Trainer when it runs

if __name__ == "__main__":
    raise SystemExit(train.main(sys.argv[1:]))
