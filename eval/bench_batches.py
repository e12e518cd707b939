"""The training data path alone: milliseconds to build one batch of a config, no model.

What a training step waits for when ``data.num_workers=0`` (train.py's default): the slot schedule's
windows read through ``ScheduledWindows`` (build the stream's example — interleave, targets — cut
the window, normalise its frames) and collated, exactly as ``Trainer`` draws them. Measured for the
first curriculum stage's cap (or whole streams without a curriculum) and for whole streams, each
twice over the same draws: the first pass builds every stream it meets (as early in a run), the
second finds them kept in memory when ``data.memory_cache_mb`` holds them (as later in a run).
The data is the config's own (generated and decoded into ``data.cache_dir`` on first use; that
preparation is not timed).

    python eval/bench_batches.py --config configs/avworld_1h.yaml     # -> eval/results/bench_batches.json
    python eval/bench_batches.py --batches 50 data.memory_cache_mb=0 --out /tmp/b.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import DEFAULT_CONFIG, machine_info, set_threads, wait_for_low_load, write_json  # noqa: E402

from ssm_mm.config import load_config  # noqa: E402
from ssm_mm.training.schedule import Curriculum, ScheduledWindows, ScheduleSampler, SlotSchedule  # noqa: E402
from ssm_mm.training.trainer import prepare_data  # noqa: E402


def time_batches(data, cfg, curriculum: Curriculum, n: int) -> dict:
    """Two passes of ``n`` batches of ``curriculum``'s first stage from an empty memory cache."""
    ds = data.train
    ds.forget()
    out = {}
    for name in ("first_pass", "second_pass"):
        schedule = SlotSchedule(
            ds.windows_per_stream, cfg.train.batch_size, cfg.train.seed, curriculum=curriculum
        )
        windows = ScheduledWindows(
            ds, cfg.train.seed, cfg.model.temporal.train_clock_offset, cfg.train.modality_dropout
        )
        loader = torch.utils.data.DataLoader(
            windows, batch_sampler=ScheduleSampler(schedule, 0, n), collate_fn=ds.collate
        )
        tokens, t = 0, time.perf_counter()
        for batch in loader:
            tokens += int(batch.valid.sum())
        dt = time.perf_counter() - t
        out[name] = {"ms_per_batch": 1000 * dt / n, "tokens_per_batch": tokens / n}
    streams, nbytes = ds.kept
    out["streams_kept"], out["kept_mib"] = streams, nbytes / 2**20
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--batches", type=int, default=600, help="batches per pass")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the training default here)")
    ap.add_argument("--max-load", type=float, default=1.5, help="wait for this 1-min load average first")
    ap.add_argument(
        "--quick", action="store_true", help="a tiny AVWorld with a curriculum, 4 batches (smoke test)"
    )
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_batches.json"))
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = ap.parse_args(argv)
    if args.quick:
        args.batches, args.max_load = 4, 1e9
        args.overrides = [
            "data.mix=[]",
            "data.worlds.avworld.streams=3",
            "data.worlds.avworld.seconds=6",
            "data.worlds.avworld.val_streams=1",
            "data.window_seconds=2",
            "train.batch_size=2",
            "data.curriculum.steps=[2]",
            "data.curriculum.max_seconds=[2,0]",
            *args.overrides,
        ]
    cfg = load_config(args.config, args.overrides)
    set_threads(args.threads)
    data = prepare_data(cfg, log=lambda *a: None)
    load = wait_for_low_load(args.max_load)
    first = Curriculum.from_config(cfg.data.curriculum, cfg.data.window_seconds, 1)
    stages = {"whole streams": Curriculum()}
    if first.enabled and first.max_windows[0]:
        cap = Curriculum((10**12,), (first.max_windows[0], 0), 1)  # the first stage's cap, throughout
        n = first.max_windows[0]
        stages = {f"first stage ({n} window{'s' if n > 1 else ''} per stream)": cap, **stages}
    results = {}
    for name, curriculum in stages.items():
        r = time_batches(data, cfg, curriculum, args.batches)
        results[name] = r
        print(
            f"{name}: {r['first_pass']['ms_per_batch']:.1f} ms per batch building, "
            f"{r['second_pass']['ms_per_batch']:.1f} ms with {r['streams_kept']} streams kept "
            f"({r['kept_mib']:.0f} MiB); {r['first_pass']['tokens_per_batch']:.0f} tokens per batch"
        )
    out = {
        "benchmark": "training data path alone: ms to build one batch (no model)",
        "machine": {**machine_info(), "load_1min_before": load},
        "settings": {
            "config": args.config,
            "overrides": args.overrides,
            "batches": args.batches,
            "threads": args.threads,
            "batch_size": cfg.train.batch_size,
            "training_streams": len(data.train.streams),
            "memory_cache_mb": cfg.data.memory_cache_mb,
        },
        "results": results,
    }
    print(f"wrote {write_json(out, args.out)}")
    return out


if __name__ == "__main__":
    main()
