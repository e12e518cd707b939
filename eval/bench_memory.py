"""Streaming memory (SPEC §9 "streaming memory"): session memory after 1, 10 and 60 minutes of stream.

One session of the default hybrid (``configs/default.yaml``: SSM state + a 256-token attention
window) and one of the Transformer baseline (``configs/baseline_transformer.yaml``: full attention,
whose KV cache keeps every token) stream AVWorld-like media (:class:`benchutil.AVWorldSource`, 13
tokens per 0.5 s tick), with labels and events drained every tick as a client does. Recorded every
minute of stream: ``session.memory_bytes()`` (every tensor storage the session keeps alive), process
RSS (after ``gc.collect()``), and that minute's tick latencies.

Each model runs in its own child process, so RSS is that model's alone. The hybrid streams the full
60 minutes (7200 ticks). The Transformer's per-tick cost grows with its cache, so it runs until
``--budget-s`` seconds of wall time are spent (or 60 minutes are reached); its memory beyond the
last measured minute is *extrapolated* by a least-squares line through the measured minutes and is
labelled so in the JSON. The figure of merit is growth = (m(60) − m(1)) / m(1); target for the hybrid:
< 1%.

    python eval/bench_memory.py                        # -> eval/results/bench_memory.json
    python eval/bench_memory.py --quick --out /tmp/mem.json
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import (  # noqa: E402
    HYBRID_AND_BASELINE,
    AVWorldSource,
    build_model,
    machine_info,
    percentiles,
    rss_bytes,
    set_threads,
    wait_for_low_load,
    write_json,
)

GROWTH_TARGET = 0.01


def stream_child(name: str, minutes: list[float], budget_s: float, threads: int) -> dict:
    """Stream one model's session up to ``max(minutes)`` (or until ``budget_s``); record every minute
    and at each of ``minutes``."""
    set_threads(threads)
    model = build_model(HYBRID_AND_BASELINE[name], seed=0)
    source = AVWorldSource.for_model(model)
    tau = source.tau
    ticks_per_min = round(60.0 / tau)
    marks = {max(1, round(m * 60.0 / tau)) for m in minutes}
    last = max(marks)
    marks |= set(range(ticks_per_min, last + 1, ticks_per_min))
    session = model.stream(speak_threshold=1.0)
    gc.collect()
    rss0 = rss_bytes()
    points, lat = [], []
    t_start = time.perf_counter()
    for k in range(last):
        t0 = time.perf_counter()
        source.push_tick(session, k)
        lat.append(time.perf_counter() - t0)
        session.segment_labels()  # drained, as a client does: pending labels are not stream memory
        session.poll()
        n = k + 1
        if n in marks:
            gc.collect()
            points.append(
                {
                    "minutes": n * tau / 60.0,
                    "ticks": n,
                    "memory_bytes": session.memory_bytes(),
                    "model_state_bytes": session._st.model.nbytes(),
                    "rss_bytes": rss_bytes(),
                    "wall_s": time.perf_counter() - t_start,
                    "tick_latency": percentiles(lat),
                }
            )
            lat = []
            if time.perf_counter() - t_start > budget_s and n < last:
                break
    return {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "rss_before_stream_bytes": rss0,
        "points": points,
        "reached_minutes": points[-1]["minutes"],
        "complete": points[-1]["ticks"] == last,
    }


def _fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b·x``."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = 0.0 if sxx == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - b * mx, b


def at_minutes(run: dict, minutes: list[float], key: str) -> dict:
    """``key`` at each of ``minutes``: measured where reached, else a labelled linear extrapolation."""
    pts = run["points"]
    out = {}
    a, b = _fit_line([p["minutes"] for p in pts], [p[key] for p in pts])
    for m in minutes:
        hit = [p for p in pts if abs(p["minutes"] - m) < 1e-9]
        if hit:
            out[f"{m:g}"] = {"value": hit[0][key], "measured": True}
        else:
            out[f"{m:g}"] = {"value": a + b * m, "measured": False}
    out["slope_per_minute"] = b
    return out


def run_child(name: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.json"
        cmd = [
            sys.executable,
            __file__,
            "--child",
            name,
            "--child-out",
            str(out),
            "--threads",
            str(args.threads),
        ]
        cmd += ["--budget-s", str(args.budget_s), "--minutes", *map(str, args.minutes)]
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0, 60.0])
    ap.add_argument(
        "--budget-s", type=float, default=300.0, help="wall-time cap per model (the hybrid needs ~60 s)"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-load", type=float, default=1.5, help="wait for this 1-min load average first")
    ap.add_argument("--quick", action="store_true", help="a few seconds of stream (smoke test)")
    ap.add_argument("--child", choices=sorted(HYBRID_AND_BASELINE), help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_memory.json"))
    args = ap.parse_args(argv)
    if args.child:
        res = stream_child(args.child, args.minutes, args.budget_s, args.threads)
        Path(args.child_out).write_text(json.dumps(res))
        return res
    if args.quick:
        args.minutes, args.max_load = [0.025, 0.05, 0.1], 1e9  # 3, 6 and 12 ticks
    load = wait_for_low_load(args.max_load)
    results = {}
    for name in HYBRID_AND_BASELINE:
        run = run_child(name, args)
        lo, hi = f"{min(args.minutes):g}", f"{max(args.minutes):g}"
        mem, rss = at_minutes(run, args.minutes, "memory_bytes"), at_minutes(run, args.minutes, "rss_bytes")
        run["memory_bytes_at"], run["rss_bytes_at"] = mem, rss
        run["memory_growth"] = (mem[hi]["value"] - mem[lo]["value"]) / mem[lo]["value"]
        run["rss_growth"] = (rss[hi]["value"] - rss[lo]["value"]) / rss[lo]["value"]
        run["growth_measured"] = mem[hi]["measured"]
        results[name] = run
        how = "measured" if mem[hi]["measured"] else "extrapolated"
        m0, m1, r0, r1 = (d[k]["value"] / 1e6 for d in (mem, rss) for k in (lo, hi))
        print(
            f"{name:>12}: memory_bytes {m0:.3f} MB @ {lo} min -> {m1:.3f} MB @ {hi} min ({how}; growth "
            f"{100 * run['memory_growth']:+.2f}%), RSS {r0:.0f} -> {r1:.0f} MB "
            f"({100 * run['rss_growth']:+.1f}%); "
            f"streamed {run['reached_minutes']:.1f} min in {run['points'][-1]['wall_s']:.0f} s",
            flush=True,
        )
    h = results["hybrid"]
    report = {
        "benchmark": "streaming session memory over a long stream (SPEC §9 streaming memory)",
        "machine": {**machine_info(), **load},
        "settings": {
            "threads": args.threads,
            "minutes": args.minutes,
            "budget_s": args.budget_s,
            "weights": "random init (seed 0)",
            "speak_threshold": 1.0,
            "labels_and_events_drained_every_tick": True,
        },
        "target": f"hybrid memory growth < {GROWTH_TARGET:.0%} from {lo} to {hi} min",
        "results": results,
        "hybrid_pass": h["complete"] and h["memory_growth"] < GROWTH_TARGET,
    }
    path = write_json(report, args.out)
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
