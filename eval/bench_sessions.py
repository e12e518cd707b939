"""Concurrent sessions (SPEC §9): how many live streams the CPU serves in real time.

N sessions of the default model (``configs/default.yaml``, random init, speak-now head off: see
``bench_streaming.py`` for why) each receive one tick of AVWorld-like media per round (0.5 s of
stream: 2 frames + 0.5 s of 16 kHz audio, :class:`benchutil.AVWorldSource`), then

- **batched**: sessions opened with ``auto_step=False``; all pushes, then ONE ``step_sessions`` call
  that runs every session's tick in one batched forward;
- **one by one**: sessions with ``auto_step=True``; each push processes that session's tick alone.

A round's wall time is the latency of its slowest tick (every tick's media is there at the round's
start). N streams are served in real time when the p99 round time is at most one tick (0.5 s):
the server then keeps up and no tick waits longer than a tick. N is stepped up (``--sessions``);
the one-by-one loop is no longer timed once it misses real time by 2x (it only gets worse).

    python eval/bench_sessions.py                      # -> eval/results/bench_sessions.json
    python eval/bench_sessions.py --quick --out /tmp/sessions.json
    python eval/bench_sessions.py --device cuda --out eval/results/bench_sessions_cuda.json   # on a GPU

On CUDA (``--device cuda``) the model and every session's state live on the GPU (featurizing stays on
the CPU, as a server would do it); N climbs ``--sessions`` (default 250 ... 3000) batched only, and
stops at the first N that misses real time: the result is the largest N served in real time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import (  # noqa: E402
    DEFAULT_CONFIG,
    AVWorldSource,
    build_model,
    machine_info,
    percentiles,
    set_threads,
    sync,
    wait_for_low_load,
    write_json,
)

from ssm_mm.streaming.session import step_sessions  # noqa: E402


def run_rounds(model, source: AVWorldSource, n: int, batched: bool, warmup: int, rounds: int) -> dict:
    """Stream ``warmup + rounds`` ticks through ``n`` fresh sessions; time each round."""
    sessions = [model.stream(speak_threshold=1.0, auto_step=not batched) for _ in range(n)]
    times, step_times = [], []
    for k in range(warmup + rounds):
        t0 = time.perf_counter()
        for s in sessions:
            source.push_tick(s, k)
        t1 = time.perf_counter()
        if batched:
            counts = step_sessions(sessions)
            if counts != [1] * n:
                raise RuntimeError(f"step_sessions processed {set(counts)} ticks per session, expected 1")
            sync()
        elif any(s.ticks_done != k + 1 for s in sessions):
            raise RuntimeError(f"round {k}: a session did not process its tick")
        t2 = time.perf_counter()
        if k >= warmup:
            times.append(t2 - t0)
            step_times.append(t2 - t1)
    tau = source.tau
    p = percentiles(times)
    return {
        "sessions": n,
        "round": p,
        "step_sessions_share": sum(step_times) / sum(times) if batched else None,
        "p99_over_tick": p["p99_s"] / tau,
        "realtime": p["p99_s"] <= tau,
        "stream_seconds_per_wall_second": n * tau / p["mean_s"],
        "memory_bytes_per_session": sessions[0].memory_bytes(),
    }


def _cells(r: dict | None, header: str) -> str:
    """Table cells ``p50 p99 real-time?`` of one timing (a header when ``r`` is None and ``header``)."""
    if r is None:
        return f"{header + ' p50':>15} {'p99':>7} {'RT':>3}" if header else f"{'-':>15} {'-':>7} {'-':>3}"
    p50, p99 = 1e3 * r["round"]["p50_s"], 1e3 * r["round"]["p99_s"]
    return f"{p50:>13.0f}ms {p99:>5.0f}ms {'yes' if r['realtime'] else 'no':>3}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, nargs="+", default=None, help="N to try (ascending)")
    ap.add_argument("--threads", type=int, nargs="+", default=None, help="torch threads settings to try")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=30, help="timed rounds (ticks) per N, batched")
    ap.add_argument("--rounds-one-by-one", type=int, default=10)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="the model's config")
    ap.add_argument("--max-load", type=float, default=1.5, help="wait for this 1-min load average first")
    ap.add_argument("--quick", action="store_true", help="tiny N and few rounds (smoke test)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_sessions.json"))
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    if not Path(args.config).is_file():
        ap.error(f"--config {args.config}: no such config file")
    if args.sessions is None:
        args.sessions = [250, 500, 750, 1000, 1500, 2000, 3000] if cuda else [25, 50, 100, 125, 150, 200]
    if args.threads is None:
        args.threads = [0] if cuda else [1, 2]
    if args.quick:
        args.sessions, args.threads, args.warmup, args.rounds, args.rounds_one_by_one = [2, 4], [1], 1, 2, 2
        args.max_load = 1e9
    load = wait_for_low_load(args.max_load)
    model = build_model(args.config, seed=0).to(args.device)
    source = AVWorldSource.for_model(model)
    tau = source.tau
    by_threads = []
    print(f"{'threads':>7} {'N':>5} " + _cells(None, "batched") + " " + _cells(None, "one by one"))
    for threads in args.threads:
        set_threads(threads)
        # one by one only with the first setting, and never on CUDA (thousands of single-tick forwards)
        rows, seq_alive = [], threads == args.threads[0] and not cuda
        for n in args.sessions:
            row = {"sessions": n, "batched": run_rounds(model, source, n, True, args.warmup, args.rounds)}
            if seq_alive:
                row["one_by_one"] = run_rounds(model, source, n, False, 1, args.rounds_one_by_one)
                seq_alive = row["one_by_one"]["p99_over_tick"] <= 2.0
            rows.append(row)
            cells = _cells(row["batched"], "") + " " + _cells(row.get("one_by_one"), "")
            print(f"{torch.get_num_threads():>7} {n:>5} {cells}", flush=True)
            if cuda and not row["batched"]["realtime"]:
                break  # the largest real-time N is found: larger ones only take longer
        ok_b = [r["sessions"] for r in rows if r["batched"]["realtime"]]
        ok_s = [r["sessions"] for r in rows if r.get("one_by_one", {}).get("realtime")]
        by_threads.append(
            {
                "threads": torch.get_num_threads(),
                "rows": rows,
                "max_realtime_sessions_batched": max(ok_b, default=0),
                "max_realtime_sessions_one_by_one": max(ok_s, default=0) if "one_by_one" in rows[0] else None,
            }
        )
    best = max(by_threads, key=lambda r: r["max_realtime_sessions_batched"])
    report = {
        "benchmark": "concurrent real-time sessions, batched step_sessions vs one by one (SPEC §9)",
        "machine": {**machine_info(), **load},
        "settings": {
            "config": args.config,
            "device": args.device,
            "weights": "random init (seed 0)",
            "speak_threshold": 1.0,
            "tick_seconds": tau,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "rounds_one_by_one": args.rounds_one_by_one,
            "note": "max N is bounded by the largest N tried",
        },
        "target": "max_realtime_sessions_batched >= 100 (p99 tick latency <= 1 tick)",
        "results": by_threads,
        "max_realtime_sessions_batched": best["max_realtime_sessions_batched"],
        "max_realtime_sessions_batched_threads": best["threads"],
        "max_realtime_sessions_one_by_one": by_threads[0]["max_realtime_sessions_one_by_one"],
    }
    path = write_json(report, args.out)
    print(
        f"max real-time sessions: batched {report['max_realtime_sessions_batched']} "
        f"(threads={best['threads']}), one by one {report['max_realtime_sessions_one_by_one']}"
    )
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
