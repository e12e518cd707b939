"""Shared helpers for the benchmark scripts: machine info, warm-up + median timing, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def time_fn(fn: Callable[[], object], warmup: int = 2, repeat: int = 5, min_time: float = 0.0) -> list[float]:
    """Run ``fn`` ``warmup`` times, then time ``repeat`` runs (more while under ``min_time`` seconds)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def summarize(times: list[float]) -> dict:
    s = sorted(times)
    return {
        "median_s": statistics.median(s),
        "p99_s": s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))],
        "min_s": s[0],
        "n": len(s),
    }


def write_json(obj: dict, path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2) + "\n")
    return p
