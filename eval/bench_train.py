"""Training throughput (SPEC §9 "training throughput"): tokens/s of a training step, hybrid vs Transformer.

One optimizer step as ``Trainer`` runs it — ``TrainStep`` (forward over the batch from a fresh state,
LM + event + speak-now losses), backward, gradient clipping, AdamW — for the default hybrid
(``configs/default.yaml``) and the same-size Transformer (``configs/baseline_transformer.yaml``,
full causal attention), at sequence lengths ``--lengths`` (1024, 4096, 16384 tokens). Every step
holds ``--tokens-per-step`` tokens (batch = tokens / length rows: 16 x 1024, 4 x 4096, 1 x 16384),
so the lengths differ only in how long the sequences are.

The batch is real-looking: AVWorld media rendered in memory (:func:`benchutil.render_avworld`),
featurized by the library's featurizers, interleaved with the scene's dialogue by
``build_example`` and cut into windows of consecutive ticks by ``cut_window``, then ``collate``\\ d —
the same path as the training data. A window holds whole ticks, so its length is the largest
number of whole ticks that fits in the target length (a few tokens short); tokens/s counts the real
(valid) tokens.

The two models are timed in interleaved rounds (hybrid, Transformer, hybrid, ...) so that load
on the shared machine slows both alike; medians after warm-up. ``--profile`` adds a
``torch.profiler`` table of the top ops of one step of each model at each length.

    python eval/bench_train.py                          # -> eval/results/bench_train.json
    python eval/bench_train.py --quick --out /tmp/train.json
    python eval/bench_train.py --device cuda --out eval/results/bench_train_cuda.json   # on a GPU

On CUDA the hybrid's SSM layers run mamba_ssm's Triton SSD kernel, its windowed attention runs
FlexAttention with a sliding-window block mask (``--attn-backend`` picks another), the Transformer
runs SDPA's fused causal kernel; ``--bf16`` adds bf16 autocast as ``train.bf16=true`` does. The SPEC
target is a CPU one; on a GPU the figure says how the two compare where both have fast kernels.
``--compile`` runs both models' forward under ``torch.compile`` as ``train.compile=true`` does (the
losses stay eager; lengths padded to the compile buckets, tokens/s still counts real tokens); the
compile happens in the warm-up steps (at least one with ``--compile``).
``--config`` / ``--baseline`` pick other models (issue 32: ``configs/gpu_base.yaml`` against
``configs/gpu_base_transformer.yaml`` at 4K/16K/64K tokens); a model that runs out of GPU memory at a
length is reported as ``"oom": true`` there (the other model still runs).

**Model FLOPs** (``model_flops``, for MFU): training = 3 x forward (backward = 2 x forward), counted
analytically per token over the backbone, where >97% of the parameters are:

- projections and MLPs: 2 x (weights of every ``nn.Linear`` in the backbone);
- attention, per layer: 4 x d_attn x (keys the query sees): QK^T and PV, each 2 FLOPs per key and
  channel; a window W sees min(W, i + 1) keys at position i, full causal attention i + 1 (averaged
  over the sequence, padding excluded);
- Mamba-2 SSD scan, per layer (chunk Q, heads H, head dim P, state N, groups G): C B^T within a chunk
  2·Q·N·G, its product with x 2·Q·P·H, chunk states B^T x 2·N·P·H, state read-out C·h 2·N·P·H.

Frontends, heads, norms, the depthwise conv and elementwise ops are left out (MFU is a slight
under-count). MFU = model FLOPs per second / the device's dense peak (``--peak-tflops``, else
H100/H200 SXM: 989 TFLOP/s bf16, 495 TF32 for fp32).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import (  # noqa: E402
    BASELINE_CONFIG,
    DEFAULT_CONFIG,
    avworld_labels,
    build_model,
    machine_info,
    render_avworld,
    set_threads,
    summarize,
    wait_for_low_load,
    write_json,
)

from ssm_mm.config import TrainConfig  # noqa: E402
from ssm_mm.data.dataset import Batch, StreamFeatures, build_example, collate, cut_window  # noqa: E402
from ssm_mm.data.featurize import AudioFeaturizer, VideoFeaturizer  # noqa: E402
from ssm_mm.data.manifest import Segment, StreamSpec  # noqa: E402
from ssm_mm.layers.attention import AttentionLayer  # noqa: E402
from ssm_mm.layers.mamba2 import Mamba2Mixer  # noqa: E402
from ssm_mm.ops.attention import BACKENDS, set_attention_backend  # noqa: E402
from ssm_mm.training.trainer import TrainStep, build_optimizer  # noqa: E402

# dense peak FLOP/s by device name fragment: (bf16, fp32 as TF32)
PEAKS = {"H200": (989.4e12, 494.7e12), "H100": (989.4e12, 494.7e12), "A100": (312e12, 156e12)}


def model_flops(model, lengths: list[int]) -> float:
    """Training FLOPs of one step over rows of the given valid lengths (see the module docstring)."""
    bb = model.backbone
    linear = sum(m.weight.numel() for m in bb.modules() if isinstance(m, torch.nn.Linear))
    fwd = 0.0
    for n in lengths:
        fwd += 2.0 * linear * n
        for m in bb.modules():
            if isinstance(m, AttentionLayer):
                keys = n * (n + 1) / 2 if m.window is None else sum(min(m.window, i + 1) for i in range(n))
                fwd += 4.0 * m.n_heads * m.head_dim * keys
            elif isinstance(m, Mamba2Mixer):
                q, h, p, d_state, g = m.chunk_size, m.nheads, m.headdim, m.d_state, m.ngroups
                fwd += n * (2 * q * d_state * g + 2 * q * p * h + 4 * d_state * p * h)
    return 3.0 * fwd


def _peak_flops(device: str, bf16: bool, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name(0)
    for key, (p_bf16, p_tf32) in PEAKS.items():
        if key in name:
            return p_bf16 if bf16 else p_tf32
    return None


def avworld_batches(model, lengths: list[int], tokens_per_step: int, seed: int = 0) -> dict[int, Batch]:
    """One collated batch per length: ``tokens_per_step // length`` windows of consecutive ticks of one
    AVWorld stream, each the longest run of whole ticks with at most ``length`` tokens."""
    fc = model.features
    rows = {L: max(1, tokens_per_step // L) for L in lengths}
    # media tokens of a tick + ~1 of dialogue text: render enough stream for every batch
    per_tick = fc.fps * fc.tick_seconds * fc.patches_per_frame + fc.tick_seconds / fc.audio_token_seconds + 1
    seconds = float(np.ceil(max(rows[L] * L for L in lengths) / per_tick * fc.tick_seconds * 1.05 + 10))
    av = render_avworld(seconds, fc.fps, fc.sample_rate, fc.frame_size, seed)
    times = np.arange(av.frames.shape[0], dtype=np.float64) / fc.fps
    video, _ = VideoFeaturizer(fc)(av.frames, torch.from_numpy(times))
    audio, _, _ = AudioFeaturizer(fc)(av.audio)
    feats = StreamFeatures(video=video.numpy(), video_times=times, audio=audio.numpy(), audio_t0=0.0)
    from ssm_mm.worlds.avworld import make_dialogue

    dialogue = make_dialogue(av.config, 0, av.scene, 0.5)
    segments = [Segment(e.start, e.end, e.cls) for e in sorted(av.scene.events, key=lambda e: e.start)]
    spec = StreamSpec(
        id="bench", video=None, audio=None, audio_from_video=False, duration=seconds, dialogue=dialogue,
        segments=segments,
    )  # fmt: skip
    ex = build_example(spec, feats, model.tokenizer, model.labels, fc)
    per_tick = torch.bincount(ex.tokens.tick, minlength=ex.n_ticks)  # (n_ticks,) tokens of each tick
    out = {}
    for L in lengths:
        windows, k0 = [], 0
        for _ in range(rows[L]):
            k1 = k0
            while k1 < ex.n_ticks and int(per_tick[k0 : k1 + 1].sum()) <= L:
                k1 += 1
            if k1 == k0:
                raise ValueError(
                    f"length {L}: tick {k0} alone holds {int(per_tick[k0])} tokens (use longer lengths)"
                )
            if k1 >= ex.n_ticks:
                raise RuntimeError(f"rendered stream too short for {rows[L]} windows of {L} tokens")
            windows.append(cut_window(ex, k0, k1, fc))
            k0 = k1
        out[L] = collate(windows, model.tokenizer.pad_id)
    return out


class Stepper:
    """One model, its AdamW (Trainer's parameter groups) and one full training step on a batch."""

    def __init__(self, model, tc: TrainConfig, device: str = "cpu", bf16: bool = False):
        self.model = model.to(device).train()
        self.tc = tc
        self.device = torch.device(device)
        self.autocast = lambda: torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)
        self.step_module = TrainStep(model, {k: 1.0 for k in model.objectives}, compile=tc.compile)
        self.opt = build_optimizer(model, tc)

    def step(self, batch: Batch) -> float:
        """One full step on a batch already on the model's device; returns the loss (which syncs)."""
        state = self.model.init_state(batch.batch_size, self.device)
        norm = {k: max(1.0, float(c)) for k, c in self.model.supervised_counts(batch).items()}
        with self.autocast():
            loss, _, _, _ = self.step_module(batch, state, norm)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


def profile_step(stepper: Stepper, batch: Batch, top: int) -> list[dict]:
    """Top ops (by self CPU time) of one training step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        stepper.step(batch)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [
        {
            "op": e.key,
            "self_cpu_ms": e.self_cpu_time_total / 1e3,
            "share": e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in events[:top]
    ]


def _timed_step(st: Stepper, batch: Batch, device: str) -> float | None:
    """Wall time of one step (None when it ran out of GPU memory; memory is freed for the next)."""
    try:
        t0 = time.perf_counter()
        st.step(batch)  # float(loss) syncs
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0
    except torch.OutOfMemoryError:
        st.opt.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        return None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="the hybrid's config")
    ap.add_argument("--baseline", default=str(BASELINE_CONFIG), help="the Transformer's config")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--tokens-per-step", type=int, default=16384, help="rows = max(1, this // length)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default = cores)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="add torch.profiler top ops per model/length")
    ap.add_argument("--profile-top", type=int, default=12)
    ap.add_argument("--max-load", type=float, default=1.5, help="wait for this 1-min load average first")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (as train.bf16=true)")
    ap.add_argument("--attn-backend", choices=BACKENDS, default="auto", help="windowed attention backend")
    ap.add_argument(
        "--compile", action="store_true", help="both models' forward under torch.compile (train.compile=true)"
    )
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: by name)")
    ap.add_argument("--quick", action="store_true", help="short sequences, one timed step (smoke test)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_train.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.lengths, args.tokens_per_step, args.warmup, args.repeat, args.max_load = (
            [64, 128],
            256,
            0,
            1,
            1e9,
        )
    if args.compile:  # the compile runs in the first step at each length: never time it
        args.warmup = max(1, args.warmup)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    for flag, path in (("--config", args.config), ("--baseline", args.baseline)):
        if not Path(path).is_file():
            ap.error(f"{flag} {path}: no such config file")
    set_attention_backend(args.attn_backend)
    threads = set_threads(args.threads)
    load = wait_for_low_load(args.max_load)
    tc = TrainConfig(compile=args.compile)
    models = {"hybrid": args.config, "transformer": args.baseline}
    try:
        steppers = {
            name: Stepper(build_model(path, seed=0), tc, args.device, args.bf16)
            for name, path in models.items()
        }
    except ValueError as e:  # a config the library rejects
        ap.error(str(e))
    for name, st in steppers.items():
        if st.model.labels != avworld_labels():
            raise RuntimeError(f"{name}: unexpected label vocabulary {st.model.labels}")
    if steppers["hybrid"].model.features != steppers["transformer"].model.features:
        ap.error(
            f"{args.config} and {args.baseline} have different features: the two must see the same tokens"
        )
    params = {name: sum(p.numel() for p in st.model.parameters()) for name, st in steppers.items()}
    peak = _peak_flops(args.device, args.bf16, args.peak_tflops)
    try:
        batches = avworld_batches(steppers["hybrid"].model, args.lengths, args.tokens_per_step)
    except ValueError as e:
        ap.error(str(e))
    batches = {L: b.to(args.device) for L, b in batches.items()}

    def make_report(complete: bool) -> dict:
        """The JSON report over the lengths done so far (written after each, so a time limit keeps them)."""
        ratios = [r["ratio_hybrid_over_transformer"] for r in results]
        at = {r["length"]: r["ratio_hybrid_over_transformer"] for r in results}
        grows = all(a is not None and b is not None and b > a for a, b in zip(ratios, ratios[1:]))
        report = {
            "benchmark": "training step tokens/s, hybrid vs same-size Transformer (SPEC §9 training speed)",
            "machine": {**machine_info(), **load},
            "settings": {
                "device": args.device,
                "bf16": args.bf16,
                "attention_backend": args.attn_backend,
                "compile": args.compile,
                "config": args.config,
                "baseline": args.baseline,
                "parameters": params,
                "peak_flops": peak,
                "threads": threads,
                "tokens_per_step": args.tokens_per_step,
                "warmup": args.warmup,
                "repeat": args.repeat,
                "step": "TrainStep forward + losses, backward, clip_grad_norm_, AdamW (train.* defaults)",
                "data": "AVWorld rendered in memory -> featurize -> build_example -> cut_window -> collate",
                "flops": "3 x forward: 2 x backbone Linear weights + attention 4·d·keys + SSD scan per token",
            },
            "target": "ratio >= 1.3 at 4096 tokens and growing with length",
            "results": results,
            "ratio_grows_with_length": grows,
            "pass": (at.get(4096) or 0.0) >= 1.3 and grows,
        }
        report["complete"] = complete
        return report

    results = []
    print(
        f"device={args.device}, bf16={args.bf16}, compile={args.compile}, threads={threads}, "
        f"attention={args.attn_backend}, "
        f"params hybrid {params['hybrid'] / 1e6:.1f}M transformer {params['transformer'] / 1e6:.1f}M"
    )
    print(
        f"{'length':>7} {'rows':>5} {'tokens':>7} {'hybrid tok/s':>13} {'transf. tok/s':>14} {'ratio':>6} "
        f"{'MFU h/t':>11} {'peak GB h/t':>13}"
    )
    for L, batch in batches.items():
        tokens = int(batch.valid.sum())
        flops = {name: model_flops(st.model, batch.valid.sum(1).tolist()) for name, st in steppers.items()}
        oom = {name: False for name in steppers}
        for name, st in steppers.items():
            if args.device == "cuda":
                torch.cuda.empty_cache()
            for _ in range(args.warmup):
                oom[name] = oom[name] or _timed_step(st, batch, args.device) is None
        times: dict[str, list[float]] = {name: [] for name in steppers}
        mem: dict[str, float | None] = {name: None for name in steppers}
        for _ in range(args.repeat):  # interleaved rounds
            for name, st in steppers.items():
                if oom[name]:
                    continue
                if args.device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                t = _timed_step(st, batch, args.device)
                if t is None:
                    oom[name] = True
                    continue
                times[name].append(t)
                if args.device == "cuda":
                    mem[name] = max(mem[name] or 0.0, torch.cuda.max_memory_allocated() / 2**30)
        row = {"length": L, "rows": batch.batch_size, "tokens": tokens, "max_row_tokens": batch.kind.shape[1]}
        for name, t in times.items():
            if oom[name] or not t:
                row[name] = {"oom": True, "model_flops": flops[name]}
                continue
            s = summarize(t)
            row[name] = {
                **s,
                "oom": False,
                "tokens_per_s": tokens / s["median_s"],
                "model_flops": flops[name],
                "model_tflops_per_s": flops[name] / s["median_s"] / 1e12,
                "mfu": flops[name] / s["median_s"] / peak if peak else None,
                "peak_memory_gib": mem[name],
            }
        h, tr = row["hybrid"], row["transformer"]
        row["ratio_hybrid_over_transformer"] = (
            h["tokens_per_s"] / tr["tokens_per_s"] if not (h["oom"] or tr["oom"]) else None
        )
        row["transformer_oom_only"] = tr["oom"] and not h["oom"]
        if args.profile and not any(oom.values()):
            row["profile"] = {
                name: profile_step(st, batch, args.profile_top) for name, st in steppers.items()
            }
        results.append(row)
        write_json(make_report(False), args.out)

        def cell(r, key, fmt):
            return "OOM" if r["oom"] else "-" if r.get(key) is None else format(r[key], fmt)

        ratio = row["ratio_hybrid_over_transformer"]
        print(
            f"{L:>7} {batch.batch_size:>5} {tokens:>7} {cell(h, 'tokens_per_s', '.0f'):>13} "
            f"{cell(tr, 'tokens_per_s', '.0f'):>14} {'-' if ratio is None else format(ratio, '.2f'):>6} "
            f"{cell(h, 'mfu', '.3f') + '/' + cell(tr, 'mfu', '.3f'):>11} "
            f"{cell(h, 'peak_memory_gib', '.1f') + '/' + cell(tr, 'peak_memory_gib', '.1f'):>13}",
            flush=True,
        )
    report = make_report(True)
    path = write_json(report, args.out)
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
