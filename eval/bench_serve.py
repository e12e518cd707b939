"""Served live streams (SPEC §9, serving row): how many WebSocket streams one server keeps in real time.

The server (``python -m ssm_mm.serve``, the default model ``configs/default.yaml`` with random
weights and the speak-now head off, as ``bench_sessions.py``) runs in its own process on 127.0.0.1;
this process runs N :class:`ssm_mm.serve.Client` streams at once (one asyncio loop), each pushing an
AVWorld scene rendered in memory in real time (frames at 4 fps as raw RGB, 0.1-s audio chunks at
16 kHz), starts spread over one tick. Per N:

- **tick latency** (client side): receipt of a tick's label minus the wall time the message that
  completed the tick was sent; p50 / p99 over every tick of every stream after the first second;
- questions: one per ``--question-every`` seconds of stream on average (answers capped at 4 tokens:
  random weights never end a turn, a trained model answers in 1-3 tokens);
- **lost**: ticks without a label, questions without an answer, error messages (must be 0);
- the server's own ``/metrics`` (round time, its tick latency bound, bytes per session).

N is served in real time when p99 ≤ one tick (0.5 s) and nothing is lost; N climbs ``--sessions``
and stops at the first N that fails. Traffic goes to 127.0.0.1 only; every loop is bounded.

    python eval/bench_serve.py                               # -> eval/results/bench_serve.json
    python eval/bench_serve.py --sessions 5 10 --seconds 6 --out /tmp/serve.json   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import DEFAULT_CONFIG, build_model, machine_info, render_avworld, write_json  # noqa: E402

from ssm_mm.serve import Client  # noqa: E402
from ssm_mm.streaming.drive import StreamMedia  # noqa: E402

QUESTION = "how many times did the bell ring?"
# Answer length cap: random weights never emit end-of-turn, so answers would run to the default cap
# (32 tokens, ~0.1 s each on the default model); a trained model answers in 1-3 tokens ("3", "drum").
ANSWER_TOKENS = 4


def make_media(seconds: float, fps: float, seed: int) -> StreamMedia:
    av = render_avworld(seconds, fps=fps, seed=seed)
    n = av.frames.shape[0]
    return StreamMedia(
        t0=0.0,
        frames=av.frames,
        frame_times=np.arange(n, dtype=np.float64) / fps,
        samples=av.audio,
        sample_rate=16000,
        audio_t0=0.0,
        has_video=True,
        has_audio=True,
    )


def start_server(
    model_dir: Path, max_sessions: int, round_interval: float, threads: int
) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "ssm_mm.serve", str(model_dir), "--port", "0", "--quiet"]
    cmd += [
        "--max-sessions",
        str(max_sessions),
        "--threads",
        str(threads),
        "--round-interval",
        str(round_interval),
    ]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    m = re.match(r"open (http://127\.0\.0\.1:\d+/)", line)
    if not m:
        p.kill()
        raise RuntimeError(f"the server did not start: {line!r} {p.stderr.read()}")
    return p, m.group(1)


async def run_n(url: str, media: StreamMedia, n: int, tau: float, warm: float, question_every: float) -> dict:
    client = Client(url.replace("http://", "ws://") + "ws", timeout=60.0)
    # one question per question_every seconds of each stream on average: that many streams ask one,
    # at times spread over 30%..80% of the stream
    asking = min(n, max(1, round(n * media.seconds / question_every)))
    askers = {int(k * n / asking) for k in range(asking)}

    async def one(i: int):
        await asyncio.sleep(tau * i / max(n, 1))  # starts spread over one tick
        asks = i in askers
        ask_at = media.seconds * (0.3 + 0.5 * i / n)
        return await client.astream(
            media,
            [(ask_at, QUESTION)] if asks else [],
            realtime=True,
            options={"speak_threshold": 1.0, "max_answer_tokens": ANSWER_TOKENS},
        )

    async def mid_metrics() -> dict:  # while every stream is live: memory per session
        await asyncio.sleep(media.seconds / 2)
        return await asyncio.to_thread(fetch_metrics, url)

    t0 = time.perf_counter()
    mid = asyncio.create_task(mid_metrics())
    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    live = await mid
    wall = time.perf_counter() - t0
    failed = [r for r in results if isinstance(r, BaseException)]
    ok = [r for r in results if not isinstance(r, BaseException)]
    lat = [x for r in ok for x, lab in zip(r.latency, r.labels.values()) if lab["end"] > warm]
    lost_labels = sum(r.closed["ticks"] - len(r.labels) if r.closed else 1 for r in ok)
    lost_answers = asking - sum(len(r.answers) for r in ok) if not failed else 0
    errors = sum(len(r.errors) for r in ok)
    lost = lost_labels + lost_answers + errors + len(failed)
    p = np.percentile(lat, [50, 99]) if lat else [float("nan")] * 2
    return {
        "sessions": n,
        "tick_latency": {"p50_s": float(p[0]), "p99_s": float(p[1]), "n": len(lat)},
        "p99_over_tick": float(p[1]) / tau,
        "lost": {
            "labels": lost_labels,
            "answers": lost_answers,
            "errors": errors,
            "failed_streams": len(failed),
        },
        "failures": [f"{type(e).__name__}: {e}" for e in failed[:3]]
        + [f"{e['code']}: {e['message']}" for r in ok for e in r.errors][:3],
        "realtime": bool(lat) and float(p[1]) <= tau and lost == 0,
        "wall_s": wall,
        "server_mid_stream": {"sessions": live["sessions"], "bytes_per_session": live["bytes_per_session"]},
    }


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fetch_metrics(url: str) -> dict:
    with urllib.request.urlopen(url + "metrics", timeout=30) as r:
        return json.loads(r.read())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--sessions", type=int, nargs="+", default=[10, 25, 50, 75, 100], help="N to try (ascending)"
    )
    ap.add_argument("--seconds", type=float, default=12.0, help="seconds of stream per client")
    ap.add_argument("--round-interval", type=float, default=0.1, help="the server's --round-interval (s)")
    ap.add_argument(
        "--question-every",
        type=float,
        default=60.0,
        help="seconds of stream per question, on average (default 60)",
    )
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="the model's config")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_serve.json"))
    args = ap.parse_args(argv)
    if not Path(args.config).is_file():
        ap.error(f"--config {args.config}: no such config file")
    if any(n < 1 for n in args.sessions) or sorted(args.sessions) != args.sessions:
        ap.error("--sessions must be ascending numbers >= 1")
    if not 2.0 <= args.seconds <= 600:
        ap.error("--seconds must be in [2, 600]")
    model = build_model(args.config, seed=0)
    tau = float(model.features.tick_seconds)
    media = make_media(args.seconds, model.features.fps, seed=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = model.save_pretrained(Path(tmp) / "model")
        proc, url = start_server(model_dir, max(args.sessions), args.round_interval, args.threads)
        try:
            for n in args.sessions:
                cpu0 = (resource.getrusage(resource.RUSAGE_SELF), process_cpu(proc.pid))
                row = asyncio.run(run_n(url, media, n, tau, 1.0, args.question_every))
                me = resource.getrusage(resource.RUSAGE_SELF)
                row["cpu_seconds"] = {  # the 2 cores are shared by the clients and the server
                    "clients": me.ru_utime + me.ru_stime - cpu0[0].ru_utime - cpu0[0].ru_stime,
                    "server": process_cpu(proc.pid) - cpu0[1],
                }
                m = fetch_metrics(url)
                row["server"] = {k: m[k] for k in ("tick_latency", "round_seconds", "rounds", "errors")}
                rows.append(row)
                lat = row["tick_latency"]
                print(
                    f"N={n:4d}  tick latency p50 {1e3 * lat['p50_s']:7.1f} ms"
                    f"  p99 {1e3 * lat['p99_s']:7.1f} ms  "
                    f"lost {sum(row['lost'].values())}  {'real time' if row['realtime'] else 'MISSED'}",
                    flush=True,
                )
                if not row["realtime"]:
                    break
        finally:
            proc.terminate()
            proc.wait(30)
    ok = [r["sessions"] for r in rows if r["realtime"]]
    report = {
        "benchmark": "live WebSocket streams served in real time by python -m ssm_mm.serve (SPEC §9 serving)",
        "machine": machine_info(),
        "settings": {
            "config": args.config,
            "weights": "random init (seed 0)",
            "speak_threshold": 1.0,
            "questions": f"one per {args.question_every:g} s of stream on average (at least one per N), "
            "at 30%..80% of a stream, spread over the streams",
            "max_answer_tokens": ANSWER_TOKENS,
            "tick_seconds": tau,
            "round_interval": args.round_interval,
            "server_threads": args.threads,
            "stream_seconds": args.seconds,
            "frames": "raw RGB 64x64 at 4 fps",
            "audio": "float32 16 kHz in 0.1-s chunks",
            "clients": "one asyncio process on the same machine (its CPU use competes with the server's)",
            "note": "max N is bounded by the largest N tried",
        },
        "target": "max_realtime_sessions >= 100 (p99 tick latency <= 1 tick, nothing lost)",
        "rows": rows,
        "max_realtime_sessions": max(ok, default=0),
    }
    path = write_json(report, args.out)
    print(f"max real-time served streams: {report['max_realtime_sessions']}; wrote {path}")
    return report


if __name__ == "__main__":
    main()
