"""CPU scan benchmark (SPEC §9 "CPU scan"): our chunked SSD vs mamba_ssm's ``ssd_minimal_discrete``.

Forward + backward (gradients of x, log-decay, B, C for a fixed random cotangent of y and of the final
state) at b=1, h=8, p=64, n=64, ngroups=1, fp32, for L in {1024, 4096, 8192}:

- ``ssd_chunked`` at each chunk size in ``--chunk-sizes`` (the default chunk size is the headline);
- mamba_ssm's pure-PyTorch ``ssd_minimal_discrete`` (chunk 64; it takes per-head B and C, so it gets
  the group's B, C expanded to every head as a free view), when mamba_ssm is importable;
- the sequential twin ``ssd_sequential``, at L=1024 only (it is slow; nothing is extrapolated);
- with ``--device cuda``: everything on the GPU, plus mamba_ssm's Triton kernel as our layers call it
  (``ssd_scan(kernels="cuda")``, the time-aware step mapped onto it as in ``ops.ssd._ssd_cuda``), with
  its errors against ``ssd_minimal_discrete`` beside ours (TF32 products: ~1e-3, shared/GPU.md).

Timings are medians after warm-up; the candidates are measured in interleaved rounds so a noisy CPU
slows them alike. Errors are norm-relative (‖ours − ref‖ / ‖ref‖) of the output, the final state and
each gradient against ``ssd_minimal_discrete``; the SPEC asks for ≥ 1.5x at L=8192 within 1e-5.

    python eval/bench_scan.py                        # -> eval/results/bench_scan.json
    python eval/bench_scan.py --lengths 1024 --repeat 3 --out /tmp/scan.json
    python eval/bench_scan.py --device cuda --lengths 2048 8192 32768 --out eval/results/bench_scan_cuda.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import machine_info, summarize, sync, write_json  # noqa: E402

from ssm_mm.ops.mamba_ref import load_mamba_refs, mamba_refs_error  # noqa: E402
from ssm_mm.ops.ssd import DEFAULT_CHUNK_SIZE, ssd_chunked, ssd_scan, ssd_sequential  # noqa: E402

GRAD_NAMES = ("x", "log_decay", "B", "C")
REF_CHUNK = 64


def make_inputs(
    L: int, b: int, h: int, p: int, n: int, seed: int = 0, device="cpu"
) -> dict[str, torch.Tensor]:
    """Mamba-2-like inputs (as in mamba_ssm's own SSD test): x·dt, A·dt with dt = softplus(N(0,1) - 4)."""
    gen = torch.Generator().manual_seed(seed)
    dt = F.softplus(torch.randn(b, L, h, generator=gen) - 4)
    A = -torch.exp(torch.rand(h, generator=gen))
    x = torch.randn(b, L, h, p, generator=gen) * dt[..., None]
    leaves = {
        "x": x,
        "log_decay": A * dt,
        "B": torch.randn(b, L, 1, n, generator=gen),
        "C": torch.randn(b, L, 1, n, generator=gen),
    }
    cot = {"gy": torch.randn(b, L, h, p, generator=gen), "gs": torch.randn(b, h, p, n, generator=gen)}
    return {
        **{k: v.to(device).requires_grad_() for k, v in leaves.items()},
        **{k: v.to(device) for k, v in cot.items()},
    }


def fwd_bwd(scan, inp: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """y, final state, and the gradients of x, log_decay, B, C for the fixed cotangents."""
    y, final = scan(inp["x"], inp["log_decay"], inp["B"], inp["C"])
    grads = torch.autograd.grad([y, final], [inp[k] for k in GRAD_NAMES], [inp["gy"], inp["gs"]])
    return [y.detach(), final.detach(), *grads]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def _chunked_with(chunk_size: int):
    return lambda x, a, B, C: ssd_chunked(x, a, B, C, chunk_size)


def bench_length(L: int, args, refs) -> dict:
    b, h, p, n = 1, args.heads, args.headdim, args.dstate
    dev = args.device
    inp = make_inputs(L, b, h, p, n, device=dev)
    cands = {f"chunked_q{q}": _chunked_with(q) for q in args.chunk_sizes}
    if dev == "cuda":
        cands["triton"] = lambda x, a, B, C: ssd_scan(x, a, B, C, DEFAULT_CHUNK_SIZE, kernels="cuda")
    if refs is not None:
        cands["ssd_minimal_discrete"] = lambda x, a, B, C: refs.ssd_minimal_discrete(
            x, a, B.expand(b, L, h, n), C.expand(b, L, h, n), REF_CHUNK
        )
    for scan in cands.values():  # warm-up
        for _ in range(args.warmup):
            fwd_bwd(scan, inp)
    times: dict[str, list[float]] = {name: [] for name in cands}
    for _ in range(args.repeat):  # interleaved rounds
        for name, scan in cands.items():
            sync()
            t0 = time.perf_counter()
            fwd_bwd(scan, inp)
            sync()
            times[name].append(time.perf_counter() - t0)
    out: dict = {"L": L, "timings": {name: summarize(t) for name, t in times.items()}}

    headline = f"chunked_q{DEFAULT_CHUNK_SIZE}"
    if refs is not None:
        ref = fwd_bwd(cands["ssd_minimal_discrete"], inp)
        names = ["y", "final_state", *(f"d{k}" for k in GRAD_NAMES)]
        for cand, key in ((headline, "errors_vs_ssd_minimal"), ("triton", "triton_errors_vs_ssd_minimal")):
            if cand in cands:
                got = fwd_bwd(cands[cand], inp)
                out[key] = {k: rel_err(o, r) for k, o, r in zip(names, got, ref)}
        out["max_error_vs_ssd_minimal"] = max(out["errors_vs_ssd_minimal"].values())
        ref_med = out["timings"]["ssd_minimal_discrete"]["median_s"]
        out["speedup_vs_ssd_minimal"] = {
            name: ref_med / t["median_s"]
            for name, t in out["timings"].items()
            if name.startswith("chunked") or name == "triton"
        }
    if L <= args.sequential_max_len:
        seq_times = []
        for i in range(args.sequential_repeat + 1):
            sync()
            t0 = time.perf_counter()
            fwd_bwd(ssd_sequential, inp)
            sync()
            if i:  # the first run is warm-up
                seq_times.append(time.perf_counter() - t0)
        out["timings"]["sequential"] = summarize(seq_times)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 8192])
    ap.add_argument("--chunk-sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--headdim", type=int, default=64)
    ap.add_argument("--dstate", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--sequential-max-len", type=int, default=None, help="default: 1024 on CPU, 0 on CUDA")
    ap.add_argument("--sequential-repeat", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_scan.json"))
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    if args.sequential_max_len is None:  # token-by-token on a GPU is launch-bound: minutes, not news
        args.sequential_max_len = 1024 if args.device == "cpu" else 0
    if DEFAULT_CHUNK_SIZE not in args.chunk_sizes:
        args.chunk_sizes.append(DEFAULT_CHUNK_SIZE)
    if any(L % REF_CHUNK for L in args.lengths):
        ap.error(f"--lengths must be multiples of {REF_CHUNK} (ssd_minimal_discrete's requirement)")

    refs = load_mamba_refs()
    if args.device == "cuda" and (refs is None or refs.mamba_chunk_scan_combined is None):
        ap.error(f"--device cuda needs mamba_ssm's Triton kernel ({mamba_refs_error()})")
    if refs is None:
        print(
            f"[bench_scan] mamba_ssm not importable ({mamba_refs_error()}); timing ours only", file=sys.stderr
        )
    torch.manual_seed(0)
    results = [bench_length(L, args, refs) for L in args.lengths]
    report = {
        "benchmark": (
            "ssd scan forward+backward, pure PyTorch (SPEC §9 CPU scan)"
            if args.device == "cpu"
            else "ssd scan forward+backward on CUDA: ours (PyTorch), mamba_ssm's Triton kernel, ssd_minimal"
        ),
        "device": args.device,
        "machine": machine_info(),
        "mamba_ssm": None if refs is None else refs.mamba_ssm_version,
        "config": {
            "batch": 1,
            "heads": args.heads,
            "headdim": args.headdim,
            "dstate": args.dstate,
            "ngroups": 1,
            "dtype": "float32",
            "default_chunk_size": DEFAULT_CHUNK_SIZE,
            "ref_chunk_size": REF_CHUNK,
            "warmup": args.warmup,
            "repeat": args.repeat,
        },
        "results": results,
    }
    path = write_json(report, args.out)

    cols = [f"chunked_q{q}" for q in sorted(set(args.chunk_sizes))]
    cols += ["triton"] * (args.device == "cuda") + ["ssd_minimal_discrete", "sequential"]
    print(
        f"median seconds, forward+backward on {args.device} "
        f"(b=1, h={args.heads}, p={args.headdim}, n={args.dstate}, fp32)"
    )
    print(f"{'L':>6} " + " ".join(f"{c:>20}" for c in cols) + f" {'speedup':>8} {'max err':>9}")
    for r in results:
        cells = [r["timings"].get(c, {}).get("median_s") for c in cols]
        row = " ".join(f"{'-' if v is None else f'{v:.4f}':>20}" for v in cells)
        speed = r.get("speedup_vs_ssd_minimal", {}).get(f"chunked_q{DEFAULT_CHUNK_SIZE}")
        err = r.get("max_error_vs_ssd_minimal")
        print(
            f"{r['L']:>6} {row} {'-' if speed is None else f'{speed:.2f}x':>8} "
            f"{'-' if err is None else f'{err:.1e}':>9}"
        )
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
