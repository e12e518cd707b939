"""Data pipeline (SPEC §9 "data pipeline"): the share of a training step spent waiting for data.

Short real training runs of the default config (``configs/default.yaml``) on AVWorld through
``Trainer`` — the same code as ``python train.py`` — reading the Trainer's own ``data_wait_frac``:
seconds spent in ``next(loader)`` (+ moving the batch to the device) over those plus the seconds of
forward + backward, accumulated over the whole run (first batches and DataLoader start-up included,
so it is an upper bound on the steady state). The optimizer step is not in the denominator, which
overstates the share a little. Target: <= 10% (>= 90% of a step is model compute).

Variants (every combination of ``--workers`` and ``--feature-cache``):
- ``data.num_workers``: 0 (batches built in the training process) or N DataLoader worker processes;
- ``data.feature_cache``: 1 = decoded features cached on disk (the default; decoding happens once,
  before training), 0 = every stream is decoded from its mp4 (ffmpeg) when a batch first needs it
  (each process keeps the built streams that fit ``data.memory_cache_mb`` in memory, decoded
  features included).

The AVWorld data is generated into ``--cache-dir`` on first use (the train.py default location), so
the first invocation takes longer; that generation is not part of any figure. Validation runs on one
stream only (it is not measured).

    python eval/bench_data.py                          # -> eval/results/bench_data.json
    python eval/bench_data.py --quick --cache-dir /tmp/c --out /tmp/data.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import DEFAULT_CONFIG, machine_info, set_threads, wait_for_low_load, write_json  # noqa: E402

from ssm_mm.config import load_config  # noqa: E402
from ssm_mm.training.trainer import Trainer  # noqa: E402

TARGET = 0.10


def run_variant(args, workers: int, feature_cache: bool, run_dir: Path) -> dict:
    """One short Trainer run; the per-step metrics come from its ``on_step`` hook."""
    overrides = [
        f"train.run_dir={run_dir}",
        f"train.max_steps={args.steps}",
        f"train.batch_size={args.batch_size}",
        f"train.threads={args.threads}",
        "train.ckpt_every=100000",
        f"data.cache_dir={args.cache_dir}",
        f"data.num_workers={workers}",
        f"data.feature_cache={str(feature_cache).lower()}",
        "data.worlds.avworld.val_streams=1",
        "logging.wandb.mode=disabled",
        "logging.progress=false",
        "logging.log_every=100000",
        *args.override,
    ]
    cfg = load_config(DEFAULT_CONFIG, overrides)
    steps: list[dict] = []
    marks = [time.perf_counter()]

    def on_step(step: int, metrics: dict) -> None:
        marks.append(time.perf_counter())
        steps.append(
            {"step": step, "data_wait_frac": metrics["data_wait_frac"], "wall_s": marks[-1] - marks[-2]}
        )

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the Trainer's log lines
        res = Trainer(cfg, callbacks=[on_step]).run()
    walls = sorted(s["wall_s"] for s in steps[1:]) or [steps[0]["wall_s"]]
    return {
        "num_workers": workers,
        "feature_cache": feature_cache,
        "steps": res["step"],
        "data_wait_frac": res["data_wait_frac"],
        "data_wait_frac_after_first_step": steps[0]["data_wait_frac"] if steps else None,
        "median_step_s": walls[len(walls) // 2],
        "run_s": time.perf_counter() - t0,
        "per_step": steps,
        "pass": res["data_wait_frac"] <= TARGET,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--feature-cache", type=int, nargs="+", default=[1, 0], choices=[0, 1])
    ap.add_argument("--threads", type=int, default=0, help="train.threads (0: torch default)")
    ap.add_argument("--cache-dir", default="cache", help="AVWorld + feature cache (train.py's default)")
    ap.add_argument("--override", nargs="*", default=[], help="extra config overrides, key=value")
    ap.add_argument("--max-load", type=float, default=1.5, help="wait for this 1-min load average first")
    ap.add_argument("--quick", action="store_true", help="a tiny AVWorld and 2 steps (smoke test)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_data.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size, args.workers, args.feature_cache, args.max_load = 2, 2, [0], [1], 1e9
        args.override = [
            "data.worlds.avworld.streams=2",
            "data.worlds.avworld.seconds=6",
            "data.window_seconds=2",
            "model.d_model=32",
            "model.headdim=16",
            "model.d_state=8",
            *args.override,
        ]
    set_threads(args.threads)
    load = wait_for_low_load(args.max_load)
    results = []
    print(f"{'workers':>7} {'feat cache':>10} {'steps':>5} {'wait frac':>9} {'step s':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (w, c) in enumerate(itertools.product(args.workers, args.feature_cache)):
            r = run_variant(args, w, bool(c), Path(tmp) / f"run{i}")
            results.append(r)
            print(
                f"{w:>7} {'on' if c else 'off':>10} {r['steps']:>5} {r['data_wait_frac']:>9.3f} "
                f"{r['median_step_s']:>7.3f}",
                flush=True,
            )
    default = next((r for r in results if r["num_workers"] == 0 and r["feature_cache"]), results[0])
    report = {
        "benchmark": "share of a training step waiting for data, Trainer on AVWorld (SPEC §9 data pipeline)",
        "machine": {**machine_info(), **load},
        "settings": {
            "config": "configs/default.yaml",
            "steps": args.steps,
            "batch_size": args.batch_size,
            "threads": args.threads or "torch default",
            "overrides": args.override,
        },
        "target": f"data_wait_frac <= {TARGET}",
        "results": results,
        "default_settings_data_wait_frac": default["data_wait_frac"],
        "pass": all(r["pass"] for r in results if r["feature_cache"]),
    }
    path = write_json(report, args.out)
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
