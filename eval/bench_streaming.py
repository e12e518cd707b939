"""Streaming speed (SPEC §9 "streaming speed"): real-time factor and per-tick latency of one session.

The default model (``configs/default.yaml``: hybrid MMMA, 256-token attention window) and the
Transformer baseline (``configs/baseline_transformer.yaml``: AAAA, full attention, same parameter
budget) each stream the same AVWorld-like media (rendered in memory, looped; video 4 fps + 16 kHz
audio) through ``model.stream()`` one tick (0.5 s: 2 frames + 5 audio tokens -> 13 tokens) at a
time, exactly as a live source delivers it (:class:`benchutil.AVWorldSource`). The two sessions
advance in lockstep, alternating which goes first, so load on the shared machine slows both alike.

Per-tick latency = wall time of the pushes that complete a tick (featurizing + interleaving + the
model forward + heads + session bookkeeping), after ``--warmup-ticks``. Real-time factor = stream
seconds / wall seconds spent (from the mean tick time; the median-based figure is reported too).
``model_forward_frac`` is the share of that time inside ``MultimodalSSM.forward``.

Weights: freshly initialised models unless ``--model DIR`` (a ``save_pretrained`` folder, e.g.
``runs/default/final`` from ``python train.py``) replaces the hybrid's. Speed does not depend on the
weights, but how often the speak-now head fires (and starts a generation) does: random weights fire
arbitrarily, so a randomly initialised model streams with the head off (speak threshold 1: the
perception path alone) and only a trained model uses ``--speak-threshold``. The cost of a proactive
response (greedy generation of up to ``max_answer_tokens``) and of ``ask()`` is measured apart.

    python eval/bench_streaming.py                     # -> eval/results/bench_streaming.json
    python eval/bench_streaming.py --model runs/default/final --out eval/results/bench_streaming_trained.json
    python eval/bench_streaming.py --quick --out /tmp/s.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import (  # noqa: E402
    HYBRID_AND_BASELINE,
    AVWorldSource,
    build_model,
    machine_info,
    percentiles,
    set_threads,
    wait_for_low_load,
    write_json,
)

TICK_BUDGET_FRAC = 0.1  # SPEC §9: p99 tick latency <= 1/10 of a tick


class ForwardTimer:
    """Accumulates wall time spent inside ``model.forward`` (via forward pre/post hooks)."""

    def __init__(self, model: torch.nn.Module):
        self.total = 0.0
        self._t0 = 0.0
        self._depth = 0
        model.register_forward_pre_hook(self._pre)
        model.register_forward_hook(self._post)

    def _pre(self, *_):
        if self._depth == 0:
            self._t0 = time.perf_counter()
        self._depth += 1

    def _post(self, *_):
        self._depth -= 1
        if self._depth == 0:
            self.total += time.perf_counter() - self._t0


def load_models(args) -> tuple[dict[str, torch.nn.Module], dict[str, str]]:
    """The models, and where each one's weights come from."""
    models = {name: build_model(path, seed=0) for name, path in HYBRID_AND_BASELINE.items()}
    weights = dict.fromkeys(models, "random init (seed 0)")
    if args.model:
        from ssm_mm.models.multimodal import MultimodalSSM

        models["hybrid"] = MultimodalSSM.from_pretrained(args.model).eval()
        weights["hybrid"] = str(args.model)
    return models, weights


def stream_lockstep(models: dict, thresholds: dict[str, float], source: AVWorldSource, args) -> dict:
    """Stream ``args.seconds`` (+ warm-up) through one session per model, tick by tick in lockstep."""
    tau = source.tau
    sessions = {name: m.stream(speak_threshold=thresholds[name]) for name, m in models.items()}
    timers = {name: ForwardTimer(m) for name, m in models.items()}
    n_ticks = args.warmup_ticks + round(args.seconds / tau)
    times: dict[str, list[float]] = {name: [] for name in models}
    fwd: dict[str, float] = dict.fromkeys(models, 0.0)
    names = list(models)
    for k in range(n_ticks):
        order = names if k % 2 == 0 else names[::-1]
        for name in order:
            s, timer = sessions[name], timers[name]
            f0 = timer.total
            t0 = time.perf_counter()
            source.push_tick(s, k)
            dt = time.perf_counter() - t0
            if s.ticks_done != k + 1:
                raise RuntimeError(f"{name}: tick {k} was not processed by its pushes ({s.ticks_done} done)")
            if k >= args.warmup_ticks:
                times[name].append(dt)
                fwd[name] += timer.total - f0
    out = {}
    for name, s in sessions.items():
        t = times[name]
        p = percentiles(t)
        labels = s.segment_labels()
        out[name] = {
            "ticks_timed": len(t),
            "stream_seconds_timed": len(t) * tau,
            "tick_latency": p,
            "realtime_factor": tau / p["mean_s"],
            "realtime_factor_median": tau / p["p50_s"],
            "p99_over_tick": p["p99_s"] / tau,
            "model_forward_frac": fwd[name] / sum(t),
            "proactive_events": len(s.poll()),
            "labels_seen": len(labels),
            "memory_bytes_end": s.memory_bytes(),
            "pass": tau / p["mean_s"] >= 20.0 and p["p99_s"] / tau <= TICK_BUDGET_FRAC,
        }
    out["_sessions"] = sessions
    return out


def generation_cost(model, session, max_tokens: int, repeat: int) -> dict:
    """Time a proactive-style generation (``[BOT, ROLE_ASSISTANT]`` + up to ``max_tokens`` greedy
    tokens) from the session's current state, and one ``ask()``; per forward call (token)."""
    state = session._st.model  # the live state (read only: generate returns a new state)
    t = session.time
    per_tok, total = [], []
    with torch.no_grad():
        for i in range(repeat + 1):
            t0 = time.perf_counter()
            ids, _, _ = model.generate(state, t, max_tokens, role="assistant")
            dt = time.perf_counter() - t0
            n_fwd = 1 + len(ids[0]) + 1  # prefix call, one call per content token, EOT / closing call
            if i:  # the first is warm-up
                per_tok.append(dt / n_fwd)
                total.append(dt)
    t0 = time.perf_counter()
    session.ask("how many times did the bell ring?")
    ask_s = time.perf_counter() - t0
    return {
        "max_tokens": max_tokens,
        "tokens_generated_last": len(ids[0]),
        "generate_s": percentiles(total),
        "per_forward_call_s": percentiles(per_tok),
        "worst_case_response_s": max(per_tok) * (max_tokens + 2),
        "ask_s": ask_s,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120.0, help="stream seconds timed per model")
    ap.add_argument("--warmup-ticks", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch default)")
    ap.add_argument("--model", help="a save_pretrained folder for the hybrid (default: random init)")
    ap.add_argument("--speak-threshold", type=float, default=0.5, help="for a trained --model only")
    ap.add_argument("--gen-repeat", type=int, default=5)
    ap.add_argument("--max-load", type=float, default=1.5, help="wait for this 1-min load average first")
    ap.add_argument("--quick", action="store_true", help="a few seconds of stream (smoke test)")
    ap.add_argument(
        "--out", default=str(Path(__file__).resolve().parent / "results" / "bench_streaming.json")
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup_ticks, args.gen_repeat, args.max_load = 3.0, 2, 1, 1e9
    threads = set_threads(args.threads)
    load = wait_for_low_load(args.max_load)
    models, weights = load_models(args)
    thresholds = {name: args.speak_threshold if args.model and name == "hybrid" else 1.0 for name in models}
    source = AVWorldSource.for_model(models["hybrid"])
    res = stream_lockstep(models, thresholds, source, args)
    sessions = res.pop("_sessions")
    max_tok = sessions["hybrid"].options.max_answer_tokens
    for name, m in models.items():
        res[name]["params"] = sum(p.numel() for p in m.parameters())
        res[name]["generation"] = generation_cost(m, sessions[name], max_tok, args.gen_repeat)
    h, tr = res["hybrid"], res["transformer"]
    report = {
        "benchmark": "streaming speed: one StreamingSession, tick by tick (SPEC §9 streaming speed)",
        "machine": {**machine_info(), **load},
        "settings": {
            "threads": threads,
            "tick_seconds": source.tau,
            "fps": source.fps,
            "audio_rate": source.sr,
            "tokens_per_tick": 13,
            "speak_threshold": thresholds,
            "weights": weights,
            "seconds": args.seconds,
            "warmup_ticks": args.warmup_ticks,
        },
        "targets": {"realtime_factor": ">= 20", "p99_over_tick": f"<= {TICK_BUDGET_FRAC}"},
        "results": res,
        "hybrid_vs_transformer_mean_tick_speedup": tr["tick_latency"]["mean_s"] / h["tick_latency"]["mean_s"],
    }
    path = write_json(report, args.out)
    print(f"threads={threads}, {args.seconds:.0f} s of stream per model, load {load['load_at_start']:.2f}")
    print(
        f"{'model':>12} {'p50 ms':>8} {'p99 ms':>8} {'RTx':>7} {'p99/tick':>9} {'fwd %':>6} {'gen ms/tk':>9}"
    )
    for name in models:
        r = res[name]
        p = r["tick_latency"]
        print(
            f"{name:>12} {1e3 * p['p50_s']:>8.2f} {1e3 * p['p99_s']:>8.2f} {r['realtime_factor']:>7.1f} "
            f"{r['p99_over_tick']:>9.4f} {100 * r['model_forward_frac']:>6.1f} "
            f"{1e3 * r['generation']['per_forward_call_s']['p50_s']:>9.2f}"
        )
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
