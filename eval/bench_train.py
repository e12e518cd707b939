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

On CUDA the hybrid's SSM layers run mamba_ssm's Triton SSD kernel and attention runs SDPA; ``--bf16``
adds bf16 autocast as ``train.bf16=true`` does. The SPEC target is a CPU one; on a GPU the figure
says how the two compare where both have fast kernels.
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
from ssm_mm.models.multimodal import HEADS  # noqa: E402
from ssm_mm.training.trainer import TrainStep, build_optimizer  # noqa: E402

MODELS = {"hybrid": DEFAULT_CONFIG, "transformer": BASELINE_CONFIG}


def avworld_batches(model, lengths: list[int], tokens_per_step: int, seed: int = 0) -> dict[int, Batch]:
    """One collated batch per length: ``tokens_per_step // length`` windows of consecutive ticks of one
    AVWorld stream, each the longest run of whole ticks with at most ``length`` tokens."""
    fc = model.features
    rows = {L: max(1, tokens_per_step // L) for L in lengths}
    # ~14 tokens per tick (13 media + dialogue text): render enough stream for every batch
    seconds = float(np.ceil(max(rows[L] * L for L in lengths) / 13 * fc.tick_seconds * 1.05 + 10))
    av = render_avworld(seconds, fc.fps, fc.sample_rate, fc.frame_size, seed)
    times = np.arange(av.frames.shape[0], dtype=np.float64) / fc.fps
    video, _ = VideoFeaturizer(fc)(av.frames, torch.from_numpy(times))
    audio, _, _ = AudioFeaturizer(fc)(av.audio)
    feats = StreamFeatures(video=video.numpy(), video_times=times, audio=audio.numpy(), audio_t0=0.0)
    from ssm_mm.data.avworld import make_dialogue

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
            if k1 == k0 or k1 >= ex.n_ticks:
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
        self.step_module = TrainStep(model, {k: 1.0 for k in HEADS})
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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--tokens-per-step", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default = cores)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="add torch.profiler top ops per model/length")
    ap.add_argument("--profile-top", type=int, default=12)
    ap.add_argument("--max-load", type=float, default=1.5, help="wait for this 1-min load average first")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (as train.bf16=true)")
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
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    threads = set_threads(args.threads)
    load = wait_for_low_load(args.max_load)
    tc = TrainConfig()
    steppers = {
        name: Stepper(build_model(path, seed=0), tc, args.device, args.bf16) for name, path in MODELS.items()
    }
    for name, st in steppers.items():
        if st.model.labels != avworld_labels():
            raise RuntimeError(f"{name}: unexpected label vocabulary {st.model.labels}")
    batches = avworld_batches(steppers["hybrid"].model, args.lengths, args.tokens_per_step)
    batches = {L: b.to(args.device) for L, b in batches.items()}
    results = []
    print(
        f"device={args.device}, bf16={args.bf16}, threads={threads}, {args.tokens_per_step} tokens per step"
    )
    print(f"{'length':>7} {'rows':>5} {'tokens':>7} {'hybrid tok/s':>13} {'transf. tok/s':>14} {'ratio':>6}")
    for L, batch in batches.items():
        tokens = int(batch.valid.sum())
        for st in steppers.values():
            for _ in range(args.warmup):
                st.step(batch)
        times: dict[str, list[float]] = {name: [] for name in steppers}
        for _ in range(args.repeat):  # interleaved rounds
            for name, st in steppers.items():
                t0 = time.perf_counter()
                st.step(batch)
                times[name].append(time.perf_counter() - t0)
        row = {"length": L, "rows": batch.batch_size, "tokens": tokens, "max_row_tokens": batch.kind.shape[1]}
        for name, t in times.items():
            s = summarize(t)
            row[name] = {**s, "tokens_per_s": tokens / s["median_s"]}
        row["ratio_hybrid_over_transformer"] = (
            row["hybrid"]["tokens_per_s"] / row["transformer"]["tokens_per_s"]
        )
        if args.profile:
            row["profile"] = {
                name: profile_step(st, batch, args.profile_top) for name, st in steppers.items()
            }
        results.append(row)
        print(
            f"{L:>7} {batch.batch_size:>5} {tokens:>7} {row['hybrid']['tokens_per_s']:>13.0f} "
            f"{row['transformer']['tokens_per_s']:>14.0f} {row['ratio_hybrid_over_transformer']:>6.2f}",
            flush=True,
        )
    ratios = [r["ratio_hybrid_over_transformer"] for r in results]
    at = {r["length"]: r["ratio_hybrid_over_transformer"] for r in results}
    report = {
        "benchmark": "training step tokens/s, hybrid vs same-size Transformer (SPEC §9 training throughput)",
        "machine": {**machine_info(), **load},
        "settings": {
            "device": args.device,
            "bf16": args.bf16,
            "threads": threads,
            "tokens_per_step": args.tokens_per_step,
            "warmup": args.warmup,
            "repeat": args.repeat,
            "step": "TrainStep forward + losses, backward, clip_grad_norm_, AdamW (train.* defaults)",
            "data": "AVWorld rendered in memory -> featurize -> build_example -> cut_window -> collate",
        },
        "target": "ratio >= 1.3 at 4096 tokens and growing with length",
        "results": results,
        "ratio_grows_with_length": all(b > a for a, b in zip(ratios, ratios[1:])),
        "pass": at.get(4096, 0.0) >= 1.3 and all(b > a for a, b in zip(ratios, ratios[1:])),
    }
    path = write_json(report, args.out)
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
