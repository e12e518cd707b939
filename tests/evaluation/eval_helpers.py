"""Helpers shared by the evaluation tests: the tiny model settings and a tiny untrained model."""

import torch
from support import TINY_MODEL

from ssm_mm.config import ModelConfig
from ssm_mm.models.multimodal import MultimodalSSM
from ssm_mm.worlds.avworld import CLASSES

LABELS = ["background"] + [c.name for c in CLASSES[:4]]  # AVWorld's default 4 classes

TINY = {**TINY_MODEL, "pattern": "MMA", "attn_window": 16}  # also passed to train.py as model.* overrides


def tiny_model(seed: int = 0) -> MultimodalSSM:
    torch.manual_seed(seed)
    return MultimodalSSM(ModelConfig(**TINY), labels=LABELS).eval()


def load_eval_script(name: str):
    """``eval/{name}.py`` imported as a module (the scripts are not part of the package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "eval" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"eval_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_run_py():
    """``eval/run.py`` imported as a module."""
    return load_eval_script("run")


def _strict(text: str):
    import json

    def refuse(x):
        raise AssertionError(f"results.json has a non-JSON number {x}")

    return json.loads(text, parse_constant=refuse)


def check_results(path, n_models: int, datasets: list[str]) -> dict:
    """Load ``results.json`` (strict JSON) and check it against the schema documented in
    ``ssm_mm/evaluation/report.py``; returns it."""
    from pathlib import Path

    res = _strict(Path(path).read_text())
    assert res["schema"] == "ssm_mm.eval/1"
    keys = {"schema", "created", "options", "models", "datasets", "results", "sweeps", "lengths", "plots"}
    assert set(res) == keys
    assert set(res["options"]) == {
        "tolerance",
        "max_answer_tokens",
        "speak_threshold",
        "span_seconds",
        "batch_streams",
        "threads",
        "age_bin",
    }
    assert len(res["models"]) == n_models
    for m in res["models"].values():
        assert {"path", "parameters", "pattern", "d_model", "labels", "fps", "tick_seconds"} <= set(m)
        assert m["labels"][0] == "background" and m["parameters"] > 0
    assert list(res["datasets"]) == datasets
    assert len(res["results"]) == n_models * len(datasets)
    for r in res["results"]:
        assert r["model"] in res["models"] and r["dataset"] in res["datasets"]
        m = r["metrics"]
        assert set(m) == {"n_streams", "events", "qa", "proactive", "speed", "unknown_labels", "by_age"}
        age = m["by_age"]
        assert sum(age["n_ticks"]) == m["events"]["n_ticks"] and sum(age["n_qa"]) == m["qa"]["n"]
        assert sum(age["n_references"]) == m["proactive"]["n_references"]
        assert len(age["start"]) == len(age["tick_accuracy"]) == len(age["proactive_recall"]) >= 1
        ev = m["events"]
        for k in ("tick_accuracy", "macro_f1", "majority_rate", "span_accuracy", "span_majority_rate"):
            assert ev[k] is None or 0.0 <= ev[k] <= 1.0, (k, ev[k])
        assert {"n_ticks", "missing_ticks", "per_class", "n_spans", "span_macro_f1"} <= set(ev)
        assert {"accuracy", "n", "late", "per_type"} <= set(m["qa"])
        pro = m["proactive"]
        assert {
            "precision",
            "recall",
            "f1",
            "tp",
            "fp",
            "fn",
            "mean_delay",
            "p90_delay",
            "text_accuracy",
        } <= set(pro)
        assert pro["tp"] + pro["fn"] == pro["n_references"] and pro["tp"] + pro["fp"] == pro["n_responses"]
        sp = m["speed"]
        assert sp["rtf"] > 0 and sp["throughput_rtf"] > 0 and sp["wall_seconds"] > 0
        assert {"p50_ms", "p90_ms", "p99_ms"} <= set(sp["tick_latency"]) and sp["tick_latency"]["n"] > 0
        assert len(r["streams"]) == m["n_streams"] == res["datasets"][r["dataset"]]["streams"]
        n_ticks = 0
        for s in r["streams"]:
            assert len(s["true"]) == len(s["pred"]) == s["n_ticks"]
            assert {"id", "qa", "answers", "responses", "references", "rtf", "missing_ticks"} <= set(s)
            n_ticks += s["n_ticks"]
        assert n_ticks == ev["n_ticks"]
    for name in res["plots"]:
        f = Path(path).parent / name
        assert f.suffix == ".png" and f.stat().st_size > 1000, name
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return res


def truncated_mp4(src, dst, keep: float = 0.5):
    """``src`` (an mp4) remuxed with its index (moov) first, then cut to ``keep`` of its bytes: the
    header is intact, so the file probes (and passes manifest validation), but decoding fails
    mid-data, as with an interrupted download. Returns ``dst``."""
    from pathlib import Path

    import av

    dst = Path(dst)
    full = dst.with_name(dst.stem + ".full.mp4")
    with av.open(str(src)) as inp, av.open(str(full), "w", options={"movflags": "+faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is None:  # the demuxer's flush packets
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    data = full.read_bytes()
    full.unlink()
    assert data.find(b"moov") < data.find(b"mdat"), "the index must come first"
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst
