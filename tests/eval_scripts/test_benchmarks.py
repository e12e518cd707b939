"""The SPEC §9 benchmark scripts run end to end in ``--quick`` mode and write complete JSON.

No timing is asserted (the machine is shared and noisy): only that each script runs, measures both
the model and its baseline, and records what BENCHMARKS.md reads from it.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

EVAL = Path(__file__).resolve().parents[2] / "eval"


def load_script(name: str):
    """Import ``eval/<name>.py`` as a module (eval/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"eval_{name}", EVAL / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def run_quick(name: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    report = load_script(name).main(["--quick", "--out", str(out), *extra])
    on_disk = json.loads(out.read_text())
    assert on_disk["machine"]["cores"] >= 1 and "torch" in on_disk["machine"]
    assert on_disk["results"] == json.loads(json.dumps(report["results"]))
    return on_disk


def test_avworld_source_pushes_exactly_one_tick_per_call():
    bu = load_script("benchutil")
    model = bu.build_model(bu.DEFAULT_CONFIG, overrides=["model.d_model=32", "model.headdim=16"])
    src = bu.AVWorldSource(seconds=4.0)
    s = model.stream(speak_threshold=1.0)
    frames_pushed = 0
    for k in range(10):  # 10 ticks = 5 s: the 4 s scene wraps around
        frames, times, audio = src.tick_media(k)
        assert audio.shape == (src.samples_per_tick,)
        assert bool((times > k * src.tau).all()) or k == 0
        frames_pushed += frames.shape[0]
        src.push_tick(s, k)
        assert s.ticks_done == k + 1
    assert frames_pushed == src._last_frame(9) + 1  # every frame once, none skipped


def test_percentiles_nearest_rank():
    bu = load_script("benchutil")
    p = bu.percentiles([float(i) for i in range(1, 101)])
    assert (p["p50_s"], p["p99_s"], p["max_s"], p["n"]) == (50.0, 99.0, 100.0, 100)


def test_bench_streaming_quick(tmp_path):
    r = run_quick("bench_streaming", tmp_path)
    for name in ("hybrid", "transformer"):
        m = r["results"][name]
        assert m["ticks_timed"] == 6 and m["labels_seen"] == 8  # 3 s timed + 2 warm-up ticks
        assert m["tick_latency"]["p99_s"] >= m["tick_latency"]["p50_s"] > 0
        assert 0 < m["model_forward_frac"] <= 1
        assert m["generation"]["per_forward_call_s"]["n"] == 1
    assert r["settings"]["threads"] == 1


def test_bench_sessions_quick(tmp_path):
    r = run_quick("bench_sessions", tmp_path)
    rows = r["results"][0]["rows"]
    assert [row["sessions"] for row in rows] == [2, 4]
    for row in rows:
        assert row["batched"]["round"]["n"] == 2 and row["one_by_one"]["round"]["n"] == 2
    assert r["max_realtime_sessions_batched"] in (0, 2, 4)


def test_bench_memory_quick(tmp_path):
    r = run_quick("bench_memory", tmp_path)
    h, t = r["results"]["hybrid"], r["results"]["transformer"]
    assert h["complete"] and t["complete"]
    assert [p["ticks"] for p in h["points"]] == [3, 6, 12]
    # The hybrid's session memory is the same at every point; the full-attention cache grows.
    assert len({p["memory_bytes"] for p in h["points"]}) == 1 and h["memory_growth"] == 0.0
    assert t["points"][-1]["memory_bytes"] > t["points"][0]["memory_bytes"]


def test_bench_train_quick(tmp_path):
    r = run_quick("bench_train", tmp_path)
    assert [row["length"] for row in r["results"]] == [64, 128]
    assert r["complete"] and r["settings"]["attention_backend"] == "auto"
    for row in r["results"]:
        assert 0 < row["tokens"] <= row["rows"] * row["length"]
        for name in ("hybrid", "transformer"):
            m = row[name]
            assert m["tokens_per_s"] > 0 and not m["oom"] and m["model_flops"] > 0
            assert m["mfu"] is None and m["peak_memory_gib"] is None  # CPU: no peak, no GPU memory


def test_bench_train_model_flops():
    """The analytic FLOPs: per token flat in length for the windowed hybrid once past its window,
    growing for full attention; the attention term counts exactly the keys each query sees."""
    bt = load_script("bench_train")
    from benchutil import BASELINE_CONFIG, DEFAULT_CONFIG, build_model

    hybrid, transformer = build_model(DEFAULT_CONFIG), build_model(BASELINE_CONFIG)
    n, W = 2048, hybrid.cfg.attn_window
    per_token = [bt.model_flops(hybrid, [k * n]) / (k * n) for k in (1, 4)]
    assert abs(per_token[1] / per_token[0] - 1) < 0.05
    assert bt.model_flops(transformer, [4 * n]) / bt.model_flops(transformer, [n]) > 4 * 1.5
    # two rows == the sum of the rows; the window's key count: W·n − W(W−1)/2 for n ≥ W
    assert bt.model_flops(hybrid, [n, 300]) == bt.model_flops(hybrid, [n]) + bt.model_flops(hybrid, [300])
    att = [m for m in hybrid.backbone.modules() if isinstance(m, bt.AttentionLayer)]
    no_attn = bt.model_flops(hybrid, [n]) - 3 * sum(
        4.0 * m.n_heads * m.head_dim * (W * n - W * (W - 1) / 2) for m in att
    )
    for m in att:
        m.window = 1  # one key per query
    assert bt.model_flops(hybrid, [n]) - no_attn == 3 * sum(4.0 * m.n_heads * m.head_dim * n for m in att)


def test_bench_scan_times_ours_against_the_reference(tmp_path):
    out = tmp_path / "scan.json"
    argv = ["--lengths", "128", "--chunk-sizes", "64", "--repeat", "1", "--warmup", "0", "--out", str(out)]
    r = load_script("bench_scan").main(argv)
    (res,) = r["results"]
    assert r["device"] == "cpu" and "chunked_q64" in res["timings"] and "triton" not in res["timings"]
    if r["mamba_ssm"] is not None:  # the reference is installed: errors and speed-ups against it
        assert res["max_error_vs_ssd_minimal"] <= 1e-5 and "chunked_q64" in res["speedup_vs_ssd_minimal"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error without a GPU")
@pytest.mark.parametrize("name", ["bench_scan", "bench_train", "bench_sessions"])
def test_cuda_benchmarks_refuse_a_machine_without_cuda(name, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        load_script(name).main(["--device", "cuda", "--out", str(tmp_path / "x.json")])
    assert e.value.code == 2 and "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="AVWorld generation needs ffmpeg")
def test_bench_batches_quick(tmp_path):
    r = run_quick("bench_batches", tmp_path, f"data.cache_dir={tmp_path / 'cache'}")
    first, whole = r["results"].values()  # the curriculum's first stage (1 window per stream), whole streams
    assert list(r["results"])[0].startswith("first stage (1 window per stream)")
    for res in (first, whole):
        assert res["first_pass"]["ms_per_batch"] > 0 and res["first_pass"]["tokens_per_batch"] > 0
        assert res["streams_kept"] == 3 and res["kept_mib"] > 0  # the default budget holds all three
    lean = run_quick(
        "bench_batches", tmp_path, f"data.cache_dir={tmp_path / 'cache'}", "data.memory_cache_mb=0"
    )
    assert all(res["streams_kept"] == 2 for res in lean["results"].values())  # one per batch slot


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="AVWorld generation needs ffmpeg")
def test_bench_data_quick(tmp_path):
    r = run_quick("bench_data", tmp_path, "--cache-dir", str(tmp_path / "cache"))
    (res,) = r["results"]
    assert res["steps"] == 2 and 0 <= res["data_wait_frac"] < 1
    assert [s["step"] for s in res["per_step"]] == [1, 2]
