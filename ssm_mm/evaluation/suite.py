"""Models × datasets: the whole evaluation run behind ``eval/run.py`` and train.py's final evaluation.

    models = {"hybrid": MultimodalSSM.from_pretrained("runs/default/final"), ...}
    datasets = datasets_from_config(cfg, model_labels(models))  # the manifest and/or sweep points
    results = run_suite(models, datasets, EvalOptions.from_config(cfg.eval), out_dir="runs/eval/x")
    print(format_table(results["results"]))

Each dataset's media is decoded once per video rate and shared by every model; each model is then
run in streaming mode (:func:`ssm_mm.evaluation.harness.evaluate`). ``out_dir`` receives
``results.json`` (schema in :mod:`ssm_mm.evaluation.report`) and the PNG plots.

Long streams (:mod:`ssm_mm.evaluation.long`): ``eval.lengths`` adds, after the evaluated dataset, one
dataset per multiple of the training length (:func:`length_datasets`); every result carries its
scores by stream age, and ``results.json["lengths"]`` the scores at each multiple side by side.

Bad streams follow ``data.on_error`` as in training: a manifest line that fails validation, or a
stream whose media fail to decode (a file cut off mid-data passes validation, which only probes the
header), stops the run with an error naming the manifest line, stream and file under ``"raise"``;
under ``"skip"`` it is left out for every model and listed in :attr:`Dataset.skipped` and
``results.json``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ssm_mm.data.manifest import StreamSpec, read_manifest
from ssm_mm.evaluation import report
from ssm_mm.evaluation.harness import EvalError, EvalOptions, decode_each, decode_streams, evaluate
from ssm_mm.evaluation.long import age_metrics, concat_specs, lengths_summary, median_seconds, piece_plan
from ssm_mm.evaluation.sweeps import ensure_point, sweep_points, sweep_spec
from ssm_mm.models.multimodal import MultimodalSSM
from ssm_mm.streaming.drive import concat_media
from ssm_mm.worlds import World, selected

__all__ = [
    "Dataset",
    "load_dataset",
    "datasets_from_config",
    "sweep_datasets",
    "length_datasets",
    "model_labels",
    "run_suite",
]


@dataclass
class Dataset:
    """Streams to evaluate on: a manifest, one sweep point (``knob = value``), or the long streams of
    another dataset (``base``) at ``length`` times its training length ``unit_seconds`` (T).

    ``skipped``: ``(line, id, message)`` of the bad streams left out (``on_error="skip"``): the
    manifest's bad lines, then (added by :func:`run_suite`) the streams whose media fail to decode.
    ``pieces``: for streams joined end to end (:func:`ssm_mm.evaluation.long.concat_specs`), the
    manifest streams of each of ``specs``, whose decoded media :func:`run_suite` joins.
    """

    name: str
    specs: list[StreamSpec]
    manifest: Path | None = None
    knob: str | None = None
    value: float | None = None
    skipped: list[tuple] = field(default_factory=list)
    on_error: str = "raise"  # "raise" | "skip": what a stream whose media fail to decode does
    unit_seconds: float | None = None  # T: the training length its streams' ages are measured in
    length: float | None = None  # multiple of T (1 for the base of a length group)
    base: str | None = None  # the dataset this one is the long version of
    pieces: list[list[StreamSpec]] | None = None


def load_dataset(
    path: str | Path, name: str | None = None, on_error: str = "raise", streams: int = 0, **point
) -> Dataset:
    """Read (and validate, media included) a §4 manifest; ``streams`` > 0 keeps the first ones.

    Raises :class:`~ssm_mm.data.manifest.ManifestError` naming the file, line, stream and field of
    a bad line (a missing media file included) unless ``on_error="skip"``; :class:`EvalError` when no
    stream is left. ``on_error`` also decides, in :func:`run_suite`, what media that fail to decode do.
    """
    m = read_manifest(path, on_error=on_error)
    specs = m.streams[:streams] if streams > 0 else m.streams
    if not specs:
        why = f" ({len(m.skipped)} bad streams skipped)" if m.skipped else ""
        raise EvalError(f"{path}: no stream to evaluate{why}")
    return Dataset(
        name or Path(path).stem, specs, Path(path), skipped=list(m.skipped), on_error=on_error, **point
    )


def model_labels(models: dict[str, MultimodalSSM]) -> list[str]:
    """Every event label (``background`` excluded) some model knows, in first-seen order: what streams
    generated for these models should carry."""
    return list(dict.fromkeys(label for m in models.values() for label in m.labels[1:]))


def _base_world(cfg, labels: list[str] | None) -> tuple[World, object | None]:
    """The world ``data.world`` and its config ``data.worlds.<name>`` adapted to carry ``labels``
    (``World.covering``; None when the labels are not that world's); the config as is without labels."""
    world, world_cfg = selected(cfg.data)
    return world, world_cfg if labels is None else world.covering(world_cfg, labels)


def sweep_datasets(cfg, labels: list[str] | None, log=print) -> list[Dataset]:
    """One dataset per sweep point of ``eval.sweep`` / ``eval.sweeps`` (none when no sweep is asked);
    ``labels``: the models' (:func:`model_labels`)."""
    ec = cfg.eval
    world, base = _base_world(cfg, labels)
    spec = sweep_spec(ec.sweep, list(ec.sweep_values), dict(ec.sweeps), world)
    if not spec:
        return []
    if base is None:
        raise EvalError(
            f"robustness sweeps generate {world.name!r} streams: the models' labels {labels} are not "
            "that world's (data.world)"
        )
    out = []
    for knob, values in spec.items():
        held_out = dict(streams=ec.sweep_streams, seconds=ec.sweep_seconds, seed=ec.sweep_seed)
        for p in sweep_points(world, base, knob, values, **held_out):
            t = time.perf_counter()
            path = ensure_point(world, p, cfg.data.cache_dir)
            dt = time.perf_counter() - t
            if dt > 1.0:
                log(f"generated sweep point {p.name}: {ec.sweep_streams} streams in {dt:.0f} s")
            out.append(load_dataset(path, name=p.name, knob=knob, value=p.value))
    return out


def _multiples(cfg) -> list[float]:
    """``eval.lengths`` other than 1, sorted, without repeats."""
    return sorted({float(m) for m in cfg.eval.lengths} - {1.0})


def from_world(cfg) -> bool:
    """Whether the evaluated streams of ``cfg`` are its world's (no ``data.manifest`` or
    ``data.val_manifest``): the rule train.py and :func:`datasets_from_config` pick data by."""
    return cfg.data.manifest is None and cfg.data.val_manifest is None


def length_datasets(cfg, base: Dataset, labels: list[str] | None, log=print) -> list[Dataset]:
    """The long-stream datasets of ``base`` (one per ``eval.lengths`` multiple other than 1; module
    docstring of :mod:`ssm_mm.evaluation.long`); sets ``base.unit_seconds`` (T) and ``base.length=1``.

    Streams of the world ``data.world`` when ``base`` is that world's held-out streams
    (:func:`from_world`) and the world can render long streams; otherwise ``base``'s streams joined end
    to end (``eval.long_streams`` of them per multiple)."""
    ec = cfg.eval
    multiples = _multiples(cfg)
    world_cfg = None
    world = None
    if from_world(cfg):
        world, world_cfg = _base_world(cfg, labels)
    seconds = world.stream_seconds(world_cfg) if world_cfg is not None else None
    base.unit_seconds = float(seconds) if seconds is not None else median_seconds(base.specs)
    base.length = 1.0
    out = []
    for m in multiples:
        name = f"{base.name}@{m:g}T"
        point = None
        if world_cfg is not None:
            try:
                point = world.long_streams(world_cfg, m, streams=ec.long_streams, seed=ec.sweep_seed)
            except (TypeError, ValueError) as e:
                raise EvalError(f"eval.lengths: {m:g}x the training length: {e}") from None
        if point is not None:
            t = time.perf_counter()
            path = world.ensure(Path(cfg.data.cache_dir) / world.name, point, "val")
            dt = time.perf_counter() - t
            if dt > 1.0:
                secs = m * base.unit_seconds
                log(f"generated {name}: {ec.long_streams} streams of {secs:g} s in {dt:.0f} s")
            ds = load_dataset(path, name=name)
        else:
            durations = [float(s.duration) for s in base.specs]
            plan = piece_plan(len(base.specs), durations, m * base.unit_seconds, ec.long_streams)
            pieces = [[base.specs[i] for i in p] for p in plan]
            specs = [concat_specs(p, f"{m:g}T-{j}") for j, p in enumerate(pieces)]
            ds = Dataset(name, specs, base.manifest, on_error=base.on_error, pieces=pieces)
        ds.unit_seconds, ds.length, ds.base = base.unit_seconds, m, base.name
        out.append(ds)
    return out


def datasets_from_config(cfg, labels: list[str] | None, log=print) -> list[Dataset]:
    """The datasets a config asks for (``cfg``: :class:`ssm_mm.config.Config`).

    * ``data.manifest`` (else ``data.val_manifest``) when given;
    * one dataset per sweep point of ``eval.sweep`` / ``eval.sweeps`` (:mod:`ssm_mm.evaluation.sweeps`);
    * with neither: the validation streams of the world ``data.world`` train.py validates on
      (generated into ``data.cache_dir`` if needed);
    * after that first dataset (when there is one), its long streams at each ``eval.lengths``
      multiple (:func:`length_datasets`).

    ``labels``: the models' event labels (:func:`model_labels`), which generated streams must carry.
    """
    d = cfg.data
    sweeps = sweep_datasets(cfg, labels, log)
    manifest = d.manifest or d.val_manifest
    out: list[Dataset] = []
    if manifest:
        out.append(load_dataset(manifest, on_error=d.on_error, streams=cfg.eval.streams))
    elif not sweeps:
        world, world_cfg = _base_world(cfg, labels)
        if world_cfg is None:
            raise EvalError(
                f"no data.manifest given and the model's labels {labels} are not those of the world "
                f"{world.name!r} (data.world): give data.manifest=PATH"
            )
        path = world.ensure(Path(d.cache_dir) / world.name, world_cfg, "val")
        out.append(load_dataset(path, name=f"{world.name}-val", streams=cfg.eval.streams))
    if out:
        out += length_datasets(cfg, out[0], labels, log)
    return out + sweeps


def _model_info(name: str, model: MultimodalSSM, path: str | None) -> dict:
    return {
        "path": path,
        "parameters": model.num_parameters()["total"],
        "pattern": model.cfg.pattern,
        "d_model": model.cfg.d_model,
        "labels": list(model.labels),
        "fps": model.features.fps,
        "tick_seconds": model.features.tick_seconds,
    }


def _stream_record(sc, labels) -> dict:
    n = int(sc.true.numel())
    return {
        "id": sc.id,
        "n_ticks": n,
        "ticks": sc.ticks,
        "missing_ticks": sc.missing_ticks,
        "tick_accuracy": float((sc.pred == sc.true).float().mean()) if n else float("nan"),
        "rtf": sc.stream_seconds / sc.wall if sc.wall > 0 else float("nan"),
        "true": sc.true.tolist(),
        "pred": sc.pred.tolist(),
        "qa": sc.qa,
        "answers": sc.answers,
        "responses": sc.responses,
        "references": sc.references,
    }


def run_suite(
    models: dict[str, MultimodalSSM],
    datasets: list[Dataset],
    options: EvalOptions | None = None,
    out_dir: str | Path | None = None,
    *,
    plots: bool = True,
    plot_streams: int = 3,
    paths: dict[str, str] | None = None,
    log=print,
) -> dict:
    """Evaluate every model on every dataset; write ``results.json`` and plots into ``out_dir``.

    Returns the results dict (the ``results.json`` schema of :mod:`ssm_mm.evaluation.report`, with
    NaN where ``results.json`` has null). ``paths``: where each model was loaded from (recorded).
    Streams whose media fail to decode raise :class:`EvalError`, or, for a dataset with
    ``on_error="skip"``, are removed from its ``specs`` and added to its ``skipped`` (logged).
    """
    if not models:
        raise EvalError("no model to evaluate")
    if not datasets:
        raise EvalError("no dataset to evaluate on")
    opt = options or EvalOptions()
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    plot_files: list[str] = []
    rates = sorted({float(m.features.fps) for m in models.values()})
    for ds in datasets:
        # every rate decoded before any model runs: a stream skipped at one rate is skipped for all
        media_by_fps = _decode_dataset(ds, rates, log)
        per_model: dict[str, dict] = {}
        for name, model in models.items():
            media, decode_s = media_by_fps[float(model.features.fps)]
            log(f"{name} on {ds.name}: {len(ds.specs)} streams")
            ev = evaluate(model, ds.specs, opt, media=media)
            ev.metrics["speed"]["decode_seconds"] = decode_s
            tau = float(model.features.tick_seconds)
            ev.metrics["by_age"] = age_metrics(ev.scores, tau, _age_bin(opt, ds))
            rec = {
                "model": name,
                "dataset": ds.name,
                "knob": ds.knob,
                "value": ds.value,
                "length": ds.length,
                "metrics": ev.metrics,
                "streams": [_stream_record(sc, ev.labels) for sc in ev.scores],
            }
            results.append(rec)
            per_model[name] = {"eval": ev, "rec": rec, "tick_seconds": float(model.features.tick_seconds)}
        del media_by_fps  # free the decoded media before the next dataset
        if out is not None and plots:
            plot_files += _dataset_plots(out, ds, per_model, plot_streams)

    sweeps: dict[str, dict] = {}
    for r in results:
        if r["knob"] is None:
            continue
        sw = sweeps.setdefault(r["knob"], {"values": [], "datasets": [], "models": {}})
        if r["dataset"] not in sw["datasets"]:
            sw["datasets"].append(r["dataset"])
            sw["values"].append(r["value"])
        series = sw["models"].setdefault(r["model"], {k: [] for k in report.SWEEP_METRICS})
        for k, p in report.SWEEP_METRICS.items():
            series[k].append(report.get(r["metrics"], p))
    if out is not None and plots:
        for knob, sw in sweeps.items():
            f = report.plot_sweep(
                out / f"sweep_{report.safe_name(knob)}.png", knob, sw["values"], sw["models"]
            )
            plot_files.append(f.name)

    groups = {
        ds.name: {
            "seconds": ds.unit_seconds,
            "multiples": [1.0] + [d.length for d in datasets if d.base == ds.name],
            "datasets": [ds.name] + [d.name for d in datasets if d.base == ds.name],
        }
        for ds in datasets
        if ds.length == 1.0
    }
    lengths = lengths_summary(results, groups)
    if out is not None and plots:
        for model in models:
            curves = {
                f"{name} ({g['seconds'] * m:g} s)": r["metrics"]["by_age"]
                for g in groups.values()
                for m, name in zip(g["multiples"], g["datasets"])
                for r in results
                if r["model"] == model and r["dataset"] == name
            }
            if curves:
                f = report.plot_age(out / f"age_{report.safe_name(model)}.png", model, curves)
                plot_files.append(f.name)

    res = {
        "schema": report.SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "options": asdict(opt),  # every EvalOptions field, in order (report.py's schema lists them)
        "models": {n: _model_info(n, m, (paths or {}).get(n)) for n, m in models.items()},
        "datasets": {
            ds.name: {
                "manifest": None if ds.manifest is None else str(ds.manifest),
                "streams": len(ds.specs),
                "knob": ds.knob,
                "value": ds.value,
                "length": ds.length,
                "seconds": ds.unit_seconds,
                "pieces": None if ds.pieces is None else [[p.id for p in ps] for ps in ds.pieces],
                "skipped": [{"line": line, "id": sid, "reason": why} for line, sid, why in ds.skipped],
            }
            for ds in datasets
        },
        "results": results,
        "sweeps": sweeps,
        "lengths": lengths,
        "plots": plot_files,
    }
    if out is not None:
        report.write_json(res, out / "results.json")
    return res


def _age_bin(opt: EvalOptions, ds: Dataset) -> float:
    """Seconds per stream-age bin: ``eval.age_bin``, else the dataset's T, else its median duration."""
    if opt.age_bin > 0:
        return opt.age_bin
    return ds.unit_seconds or median_seconds(ds.specs)


def _decode_joined(ds: Dataset, rates: list[float], log) -> dict[float, tuple[list, float]]:
    """As :func:`_decode_dataset` for streams joined end to end: each distinct piece decoded once per
    rate, then joined (:func:`ssm_mm.streaming.drive.concat_media`). Under ``on_error="skip"`` a long
    stream with a piece that fails to decode is left out (recorded in ``ds.skipped``)."""
    assert ds.pieces is not None
    sources = list({id(p): p for ps in ds.pieces for p in ps}.values())
    decoded = {}
    bad: dict[int, EvalError] = {}
    for fps in rates:
        if ds.on_error != "skip":
            items, secs = decode_streams(sources, fps, source=ds.manifest)
        else:
            items, secs = decode_each(sources, fps, source=ds.manifest)
        by_id = dict(zip(map(id, sources), items))
        for j, ps in enumerate(ds.pieces):
            for p in ps:
                if isinstance(by_id[id(p)], EvalError):
                    bad.setdefault(j, by_id[id(p)])
        decoded[fps] = (by_id, secs)
    keep = [j for j in range(len(ds.specs)) if j not in bad]
    for j in sorted(bad):
        ds.skipped.append((None, ds.specs[j].id, str(bad[j])))
        log(f"skipped (data.on_error=skip): {ds.specs[j].id}: {bad[j]}")
    ds.specs = [ds.specs[j] for j in keep]
    ds.pieces = [ds.pieces[j] for j in keep]
    if not ds.specs:
        raise EvalError(f"{ds.name}: no long stream to evaluate ({len(ds.skipped)} skipped)")
    out = {}
    for fps, (by_id, secs) in decoded.items():
        t = time.perf_counter()
        media = [
            concat_media([(by_id[id(p)], float(p.duration)) for p in ps], t0=spec.t0)
            for spec, ps in zip(ds.specs, ds.pieces)
        ]
        out[fps] = (media, secs + time.perf_counter() - t)
    return out


def _decode_dataset(ds: Dataset, rates: list[float], log) -> dict[float, tuple[list, float]]:
    """``{fps: (media, decode seconds)}`` for the streams of ``ds`` at every video rate in ``rates``.

    With ``ds.on_error == "skip"`` a stream that fails to decode at any rate is dropped from
    ``ds.specs`` (so every model sees the same streams) and recorded in ``ds.skipped``; otherwise the
    first failure raises :class:`EvalError` (naming the manifest line, the stream and the file).
    """
    if ds.pieces is not None:
        return _decode_joined(ds, rates, log)
    if ds.on_error != "skip":
        return {fps: decode_streams(ds.specs, fps, source=ds.manifest) for fps in rates}
    decoded = {fps: decode_each(ds.specs, fps, source=ds.manifest) for fps in rates}
    bad: dict[int, EvalError] = {}
    for items, _ in decoded.values():
        for i, item in enumerate(items):
            if isinstance(item, EvalError):
                bad.setdefault(i, item)
    if not bad:
        return decoded
    for i in sorted(bad):
        ds.skipped.append((ds.specs[i].line, ds.specs[i].id, str(bad[i])))
        log(f"skipped (data.on_error=skip): {bad[i]}")
    ds.skipped.sort(key=lambda x: (x[0] is None, x[0] or 0))  # manifest order
    keep = [i for i in range(len(ds.specs)) if i not in bad]
    ds.specs = [ds.specs[i] for i in keep]
    if not ds.specs:
        raise EvalError(
            f"{ds.manifest or ds.name}: no stream to evaluate ({len(ds.skipped)} bad streams skipped)"
        )
    return {fps: ([items[i] for i in keep], secs) for fps, (items, secs) in decoded.items()}


def _dataset_plots(out: Path, ds: Dataset, per_model: dict[str, dict], plot_streams: int) -> list[str]:
    """Timelines of the first ``plot_streams`` streams (every model in one figure), QA accuracy per
    question type and, with several models, a bar chart comparing them."""
    files = []
    first = next(iter(per_model.values()))
    for s_i, stream in enumerate(first["rec"]["streams"][: max(0, plot_streams)]):
        rows = {}
        for name, pm in per_model.items():
            st = pm["rec"]["streams"][s_i]
            rows[name] = {
                "pred": st["pred"],
                "responses": st["responses"],
                "qa": st["qa"],
                "tick_seconds": pm["tick_seconds"],
            }
        f = report.plot_timeline(
            out / f"timeline_{report.safe_name(ds.name)}_{report.safe_name(stream['id'])}.png",
            f"{ds.name} / {stream['id']}",
            first["eval"].labels,
            first["tick_seconds"],
            stream["true"],
            rows,
            stream["references"],
        )
        files.append(f.name)
    f = report.plot_qa_types(
        out / f"qa_types_{report.safe_name(ds.name)}.png",
        ds.name,
        {name: pm["rec"]["metrics"]["qa"]["per_type"] for name, pm in per_model.items()},
    )
    files.append(f.name)
    if len(per_model) > 1:
        f = report.plot_compare(
            out / f"compare_{report.safe_name(ds.name)}.png",
            ds.name,
            {name: report.headline(pm["rec"]["metrics"]) for name, pm in per_model.items()},
        )
        files.append(f.name)
    return files
