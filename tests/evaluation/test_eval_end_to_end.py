"""End to end: train a tiny model a few steps (train.py's Trainer, whose final evaluation is the
streaming harness), then compare two models with a robustness sweep through eval/run.py."""

import io
import json
import re

from eval_helpers import check_results, load_run_py


def test_training_run_ends_with_the_streaming_harness(trained_run):
    run_dir, result, _ = trained_run
    out = run_dir / "eval"
    res = check_results(out / "results.json", n_models=1, datasets=["val", "val@2T"])
    assert (out / "offline.json").is_file()  # the offline validation is kept beside it
    assert sorted(res["plots"]) == [  # plot_streams=1
        "age_run.png",
        "qa_types_val.png",
        "qa_types_val_2T.png",
        "timeline_val_2T_2T-0.png",
        "timeline_val_avw22-00000.png",
    ]
    # 2 T: the two validation streams joined on one clock; the 1 T and 2 T scores side by side
    assert res["datasets"]["val@2T"]["pieces"] == [["avw22-00000", "avw22-00001"]]
    long = res["results"][1]["metrics"]
    assert long["events"]["n_ticks"] == 24 and long["qa"]["n"] == r_qa(res, "val")
    lengths = res["lengths"]["val"]
    assert lengths["seconds"] == 6.0 and lengths["multiples"] == [1.0, 2.0]
    assert lengths["datasets"] == ["val", "val@2T"]
    tick = lengths["models"]["run"]["tick_accuracy"]
    assert tick == [res["results"][0]["metrics"]["events"]["tick_accuracy"], long["events"]["tick_accuracy"]]
    assert lengths["models"]["run"]["fraction"]["tick_accuracy"] == [1.0, tick[1] / tick[0]]
    assert long["by_age"]["bin_seconds"] == 6.0 and long["by_age"]["n_ticks"] == [12, 12]
    r = res["results"][0]
    assert r["metrics"]["n_streams"] == 2 and r["model"] == "run"
    assert r["metrics"]["events"]["n_ticks"] == 2 * 12  # 2 streams x 6 s / 0.5 s ticks
    assert r["metrics"]["qa"]["n"] >= 1  # AVWorld dialogues ask questions
    # what train.py returns is the table's headline numbers
    assert result["eval_stream"]["tick_accuracy"] == r["metrics"]["events"]["tick_accuracy"]
    assert result["eval"]["n_ticks"] == 2 * 12  # the offline validation over the same ticks


def r_qa(res: dict, dataset: str) -> int:
    return next(r["metrics"]["qa"]["n"] for r in res["results"] if r["dataset"] == dataset)


def test_eval_run_py_compares_models_with_a_sweep(trained_run, world, tmp_path):
    run_dir, _, cache = trained_run
    out = io.StringIO()
    argv = [
        f"model={run_dir / 'final'},{run_dir / 'best'}",
        f"data.manifest={world[1]}",
        f"data.cache_dir={cache}",
        f"eval.out_dir={tmp_path}",
        "eval.sweep=drop",
        "eval.sweep_values=[0,0.3]",
        "eval.sweep_streams=1",
        "eval.sweep_seconds=6",
        "eval.plot_streams=1",
        "eval.batch_streams=1",
        "eval.lengths=[1]",
    ]
    load_run_py().run(argv, out=out)
    res = check_results(tmp_path / "results.json", n_models=2, datasets=["manifest", "drop=0", "drop=0.3"])
    assert list(res["models"]) == ["run/final", "run/best"]
    assert res["sweeps"]["drop"]["values"] == [0.0, 0.3]
    assert set(res["sweeps"]["drop"]["models"]) == {"run/final", "run/best"}
    assert all(len(v) == 2 for v in res["sweeps"]["drop"]["models"]["run/final"].values())
    assert {"sweep_drop.png", "compare_manifest.png", "compare_drop=0.3.png"} <= set(res["plots"])
    # final and best hold the same weights here: the streaming run is deterministic
    by = {(r["model"], r["dataset"]): r for r in res["results"]}
    for ds in res["datasets"]:
        a, b = by[("run/final", ds)], by[("run/best", ds)]
        for task in ("events", "qa", "proactive"):
            assert json.dumps(a["metrics"][task]) == json.dumps(b["metrics"][task])
    text = out.getvalue()
    assert "run/final  manifest" in text and "run/best   drop=0.3" in text and "results.json" in text


def test_end_of_run_logs_metrics_and_plots_to_the_run_logger(trained_run, world, tmp_path):
    """train.py's end-of-run step: the harness's headline metrics and every PNG go to the RunLogger
    (wandb when a run is active), for the validation set and any eval.sweep points."""
    from types import SimpleNamespace

    from ssm_mm.config import load_config
    from ssm_mm.data.manifest import read_manifest
    from ssm_mm.models.multimodal import MultimodalSSM
    from ssm_mm.training.trainer import Trainer

    run_dir, _, cache = trained_run
    overrides = [f"data.cache_dir={cache}", "eval.streams=1", "eval.sweep=noise", "eval.sweep_values=[0.05]"]
    overrides += ["eval.sweep_streams=1", "eval.sweep_seconds=6", "train.run_dir=runs/mine"]
    # the world's validation streams: 2 T streams are the world's own (generated, 12 s)
    overrides += ["data.worlds.avworld.seconds=6", "eval.lengths=[1,2]", "eval.long_streams=1"]
    cfg = load_config(None, overrides)

    class Logger:
        def __init__(self):
            self.logged, self.images, self.lines = {}, {}, []

        def log(self, data, step):
            assert step == 4
            self.logged.update(data)

        def image(self, key, path, step):
            self.images[key] = path

        def print(self, msg):
            self.lines.append(msg)

    logger = Logger()
    data = SimpleNamespace(
        val=SimpleNamespace(streams=read_manifest(world[1]).streams), val_manifest=world[1]
    )
    model = MultimodalSSM.from_pretrained(run_dir / "final")
    head = Trainer(cfg)._stream_eval(model, data, tmp_path, logger, step=4)
    assert head["tick_accuracy"] == logger.logged["eval_stream/tick_accuracy"]
    assert {"eval_stream/qa_accuracy", "eval_stream/proactive_f1", "eval_stream/rtf"} <= set(logger.logged)
    assert "eval_stream/noise=0.05/macro_f1" in logger.logged
    assert "eval_stream/val@2T/qa_accuracy" in logger.logged and "eval_stream/age_mine" in logger.images
    res = json.loads((tmp_path / "results.json").read_text())
    assert sorted(logger.images) == sorted(f"eval_stream/{p[:-4]}" for p in res["plots"])
    assert "eval_stream/sweep_noise" in logger.images and all(p.is_file() for p in logger.images.values())
    assert any(
        re.search(r"^mine\s+val\s+1\s", line, re.M) for line in logger.lines
    )  # table; named after the run
    assert any(re.search(r"^mine\s+val@2T\s+2T = 12 s\s", line, re.M) for line in logger.lines)  # lengths
    assert res["datasets"]["val@2T"]["pieces"] is None and res["datasets"]["val@2T"]["streams"] == 1
    long = next(r for r in res["results"] if r["dataset"] == "val@2T")
    assert long["metrics"]["events"]["n_ticks"] == 24  # one generated stream of 12 s
