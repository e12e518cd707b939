"""Streaming evaluation of trained models (SPEC §8): event localization, streaming QA, proactive
responses, speed; robustness sweeps; several models compared in one run.

    python eval/run.py model=runs/default/final data.manifest=path/to/test.jsonl
    python eval/run.py model=runs/default/final,runs/baseline_ssm/final      # AVWorld validation set
    python eval/run.py model=runs/default/final eval.sweep=fps eval.sweep_values=[2,4,8]
    python eval/run.py model=A model=B eval.sweeps.drop=[0,0.1,0.3] eval.sweeps.length=[1,10]
    python eval/run.py model=DIR data.manifest=test.jsonl eval.lengths=[1,10,100] eval.age_bin=60
    python eval/run.py --config configs/default.yaml model=DIR eval.tolerance=0.5 eval.out_dir=out/

``model=`` takes a save_pretrained folder, a training checkpoint or a run folder; give it several
times (or a comma list) to compare models. Every other argument is a config override (``data.*``,
``eval.*``; see ``ssm_mm.config.EvalConfig``), merged onto ``--config`` (default: the dataclass
defaults) exactly as train.py merges; ``model.*`` overrides do not apply (a model's architecture
comes from its folder). Data: ``data.manifest`` (any §4 manifest: AVWorld, converted AVE or
MUSIC-AVQA), else ``data.val_manifest``, else the AVWorld validation streams; then its long streams
at each ``eval.lengths`` multiple of the training length T (default 1 T and 10 T; ``eval.long_streams``
streams each: the world's own long streams, or a manifest's streams joined end to end on one clock,
see ``ssm_mm/evaluation/long.py``); plus one dataset per sweep point. Every result carries its scores
by stream age (bins of ``eval.age_bin`` seconds, default T), plotted per model (``age_<model>.png``);
a second table puts each length's scores beside their fraction of the 1 T score. Writes
``results.json`` (schema: ``ssm_mm/evaluation/report.py``) and PNG plots into ``eval.out_dir``
(default ``runs/eval/<date-time>``) and prints a table.

Exit status 2 with a message naming the problem on bad input (unknown key, missing model folder,
manifest line with missing media, a stream whose media fail to decode, ...). With
``data.on_error=skip`` bad manifest lines and streams whose media fail to decode are left out (for
every model), named as they are dropped, counted at the end (``skipped streams: N``, as train.py
does) and listed in ``results.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ssm_mm.cli import exits_2_on

_GENERIC = {"final", "best", "model", "checkpoints"}


def model_names(paths: list[str]) -> list[str]:
    """Short unique display names: the folder name, with its parent for generic names ("final"),
    and more parents until the names differ."""
    parts = [Path(p).resolve().parts for p in paths]
    depth = [2 if len(p) > 1 and p[-1] in _GENERIC else 1 for p in parts]
    for _ in range(max((len(p) for p in parts), default=0)):
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        dup = {n for n in names if names.count(n) > 1}
        if not dup:
            return names
        depth = [d + 1 if n in dup and d < len(p) else d for p, d, n in zip(parts, depth, names)]
    return [f"{n}#{i}" for i, n in enumerate(names)]


def parse(argv: list[str] | None) -> tuple[list[str] | None, list[str], list[str]]:
    """(config files, model paths, overrides) from the command line."""
    ap = argparse.ArgumentParser(
        prog="eval/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--config",
        action="append",
        help="YAML config (default: the dataclass defaults); repeat to merge several in order",
    )
    ap.add_argument("args", nargs="*", help="model=DIR (repeatable, or a comma list) and key=value overrides")
    a = ap.parse_args(argv)
    models, overrides = [], []
    for item in a.args:
        if item.startswith("model="):
            models += [p.strip() for p in item[len("model=") :].split(",") if p.strip()]
        else:
            overrides.append(item)
    return a.config, models, overrides


def run(argv: list[str] | None = None, out=None) -> dict:
    """The whole evaluation; returns the results dict. Raises a ValueError subclass on bad input."""
    import torch

    from ssm_mm.config import load_config
    from ssm_mm.evaluation import (
        EvalError,
        EvalOptions,
        datasets_from_config,
        format_lengths,
        format_table,
        model_labels,
        run_suite,
    )
    from ssm_mm.models.multimodal import MultimodalSSM

    out = out or sys.stdout

    def log(msg: str) -> None:
        print(msg, file=out, flush=True)

    config, paths, overrides = parse(argv)
    if not paths:
        raise EvalError("no model given: pass model=DIR (a save_pretrained folder, checkpoint or run folder)")
    cfg = load_config(config, overrides)  # ConfigError names an unknown key and the valid ones
    ignored = [o.split("=", 1)[0] for o in overrides if o.startswith("model.")]
    if ignored:
        log(f"note: {', '.join(ignored)} ignored: a model's architecture comes from its folder")
    options = EvalOptions.from_config(cfg.eval)
    if options.threads > 0:
        torch.set_num_threads(options.threads)
    models = {}
    for name, path in zip(model_names(paths), paths):
        if not Path(path).exists():
            raise EvalError(f"model={path}: folder or file not found")
        try:
            models[name] = MultimodalSSM.from_pretrained(path)
        except (ValueError, FileNotFoundError) as e:
            raise EvalError(f"model={path}: cannot load it: {e}") from e
        n = models[name].num_parameters()["total"]
        log(f"model {name}: {path} ({n / 1e6:.2f} M parameters, pattern {models[name].cfg.pattern})")
    datasets = datasets_from_config(cfg, model_labels(models), log)
    for ds in datasets:
        where = f" ({ds.manifest})" if ds.manifest is not None else ""
        skipped = f", {len(ds.skipped)} bad streams skipped" if ds.skipped else ""
        log(f"data {ds.name}: {len(ds.specs)} streams{where}{skipped}")
    out_dir = Path(cfg.eval.out_dir or f"runs/eval/{time.strftime('%Y%m%d-%H%M%S')}")
    start = time.perf_counter()
    res = run_suite(
        models,
        datasets,
        options,
        out_dir,
        plots=cfg.eval.plots,
        plot_streams=cfg.eval.plot_streams,
        paths=dict(zip(models, paths)),
        log=log,
    )
    log("")
    log(format_table(res["results"]))
    if format_lengths(res["lengths"]):
        log("")
        log(format_lengths(res["lengths"]))
    skipped = [(ds.manifest, *s) for ds in datasets for s in ds.skipped]
    if skipped:
        log(f"\nskipped streams: {len(skipped)} (data.on_error=skip)")
        for manifest, line, sid, _ in skipped:
            log(f"  {manifest}:{line}: stream {sid!r}" if sid is not None else f"  {manifest}:{line}")
    dt = time.perf_counter() - start
    log(f"\nwrote {out_dir / 'results.json'} and {len(res['plots'])} plots in {dt:.1f} s")
    return res


# main(argv): exit status 0 done, or 2 with one line on stderr on bad input
# (ConfigError, EvalError, ManifestError, MediaError are ValueErrors)
main = exits_2_on("eval/run.py: error", ValueError, FileNotFoundError)(run)


if __name__ == "__main__":
    raise SystemExit(main())
