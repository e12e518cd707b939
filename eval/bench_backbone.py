"""Size the default backbone against SPEC §9: throughput and per-tick streaming latency.

For each candidate (d_model, pattern) it measures, on the current machine (medians after warm-up):
- training-like throughput: tokens/s of forward and of forward+backward at batch x length;
- streaming: latency of one tick (the tokens of ``tick_seconds`` of stream at the SPEC §3 defaults:
  4 fps x 4 patches + 10 audio tokens/s -> 13 tokens per 0.5 s tick) through the backbone with the
  state carried, for one session and for ``--sessions`` sessions stepped as one batch;
- the real-time factor (tick_seconds / tick latency) and how many sessions one batched step serves in
  real time.

Backbone only (frontends and heads are small next to it and measured by the model benchmarks).

    python eval/bench_backbone.py                  # all candidates -> eval/results/bench_backbone.json
    python eval/bench_backbone.py --quick          # a fast smoke run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import machine_info, summarize, time_fn, write_json  # noqa: E402

from ssm_mm.config import ModelConfig  # noqa: E402
from ssm_mm.models.backbone import HybridBackbone  # noqa: E402

CANDIDATES = [
    dict(d_model=64, pattern="MMMA"),
    dict(d_model=128, pattern="MMMA"),
    dict(d_model=128, pattern="MMMAMMMA"),
    dict(d_model=192, pattern="MMMAMMMA"),
    dict(d_model=256, pattern="MMMAMMMA"),
]


def tick_tokens(
    tick_seconds: float = 0.5, fps: float = 4.0, patches: int = 4, audio_per_s: float = 10.0
) -> int:
    return int(round(tick_seconds * (fps * patches + audio_per_s)))


def dt_for(b: int, l: int, per_tick: int) -> torch.Tensor:
    """Plausible elapsed times: a few distinct timestamps per tick, the rest shared (dt = 0)."""
    dt = torch.zeros(b, l)
    dt[:, :: max(1, per_tick // 4)] = 0.1
    return dt


def bench_candidate(spec: dict, args) -> dict:
    cfg = ModelConfig(kernels="torch", headdim=32, d_state=32, **spec)
    torch.manual_seed(0)
    model = HybridBackbone(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    out = {"config": spec, "params": n_params, "state_bytes_per_session": model.state_nbytes(1)}
    b, l = args.batch, args.length
    x = torch.randn(b, l, cfg.d_model)
    dt = dt_for(b, l, 13)

    model.eval()
    with torch.no_grad():
        t = summarize(time_fn(lambda: model(x, dt), warmup=2, repeat=args.repeat))
    out["forward"] = {**t, "tokens_per_s": b * l / t["median_s"], "batch": b, "length": l}

    model.train()

    def fwd_bwd():
        y, _ = model(x, dt)
        y.square().mean().backward()
        model.zero_grad(set_to_none=True)

    t = summarize(time_fn(fwd_bwd, warmup=1, repeat=args.repeat))
    out["forward_backward"] = {**t, "tokens_per_s": b * l / t["median_s"], "batch": b, "length": l}

    model.eval()
    n_tick = tick_tokens(args.tick_seconds)
    for name, sessions in (("stream_single", 1), ("stream_batched", args.sessions)):
        xt = torch.randn(sessions, n_tick, cfg.d_model)
        dtt = dt_for(sessions, n_tick, n_tick)
        with torch.no_grad():
            _, state = model(xt, dtt)  # warm the state up
            holder = {"s": state}

            def step(xt=xt, dtt=dtt, holder=holder):
                _, holder["s"] = model(xt, dtt, holder["s"])

            t = summarize(time_fn(step, warmup=3, repeat=args.tick_repeat))
        out[name] = {
            **t,
            "sessions": sessions,
            "tokens_per_tick": n_tick,
            "realtime_factor_median": args.tick_seconds / t["median_s"],
            "p99_over_tick": t["p99_s"] / args.tick_seconds,
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="eval/results/bench_backbone.json")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--tick-seconds", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tick-repeat", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="one small candidate, few repeats")
    args = ap.parse_args(argv)
    cands = CANDIDATES
    if args.quick:
        cands, args.length, args.repeat, args.tick_repeat, args.sessions = CANDIDATES[:1], 256, 2, 10, 10
    results = []
    print(
        f"{'d_model':>7} {'pattern':>9} {'params':>9} {'fwd tok/s':>10} {'f+b tok/s':>10} "
        f"{'tick ms':>8} {'p99 ms':>7} {'RTx':>6} {'batch ms':>9} {'p99/tick':>8}"
    )
    for spec in cands:
        r = bench_candidate(spec, args)
        results.append(r)
        s1, sb = r["stream_single"], r["stream_batched"]
        fwd, fb = r["forward"]["tokens_per_s"], r["forward_backward"]["tokens_per_s"]
        print(
            f"{spec['d_model']:>7} {spec['pattern']:>9} {r['params']:>9} {fwd:>10.0f} {fb:>10.0f} "
            f"{1e3 * s1['median_s']:>8.2f} {1e3 * s1['p99_s']:>7.2f} {s1['realtime_factor_median']:>6.1f} "
            f"{1e3 * sb['median_s']:>9.1f} {sb['p99_over_tick']:>8.3f}"
        )
    path = write_json({"machine": machine_info(), "args": vars(args), "results": results}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
