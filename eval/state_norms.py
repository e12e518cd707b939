"""How a model's recurrent state evolves with stream age: stream one held-out stream through
``model.stream()`` and record, every ``--every`` seconds of stream time, the Frobenius norm of each SSM
layer's state (whole layer, and the max / median over its heads) and each attention cache's size.

    python eval/state_norms.py results/avworld/1h/model --seconds 300 --every 30
    python eval/state_norms.py runs/default/final --manifest test.jsonl --seconds 600 --every 60

MODEL: a save_pretrained folder, a training checkpoint or a run folder. The stream: with
``--manifest``, its stream ``--stream`` followed by the next ones (cycling), joined end to end on one
clock until ``--seconds`` (``ssm_mm.streaming.drive.concat_media``); without, one held-out stream of
the built-in world (``--world``, default the default world) ``--seconds`` long, generated into
``--cache-dir`` (the world's long-stream point, else its validation streams joined). The stream's
questions are asked at their times (as the evaluation does) unless ``--no-questions``.

Writes ``state_norms.json`` and ``state_norms.png`` into ``--out`` (default ``runs/state_norms/<time>``)::

    {"model": PATH, "stream": {"ids": [...], "seconds": S, "questions": bool}, "every": N,
     "samples": [{"t": seconds of stream, "ssm": {LAYER: {"norm", "head_max", "head_median",
                                                         "heads": [norm per head]}},
                  "attn": {LAYER: {"tokens": cached tokens, "bytes": cache bytes}}}]}

LAYER is the layer's index in the model's pattern. Exit status 2 with a message naming the problem on
bad input (missing model, unreadable manifest, bad numbers).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from ssm_mm.cli import exits_2_on


class StateNormsError(ValueError):
    pass


def layer_summary(model_state: dict) -> tuple[dict, dict]:
    """(ssm, attn) summaries of a session's ``state_dict()["model_state"]`` (batch of one):
    ``ssm[i] = {"norm", "head_max", "head_median", "heads"}`` from ``backbone.layers.i.ssm.ssm`` (1, H, P, N)
    (a head's norm is over its (P, N) block); ``attn[i] = {"tokens", "bytes"}`` from the cache's valid
    slots and its k / v tensors."""
    import torch

    ssm, attn = {}, {}
    for key, t in model_state.items():
        parts = key.split(".")
        if len(parts) != 5 or parts[:2] != ["backbone", "layers"]:
            continue
        i, kind, name = int(parts[2]), parts[3], parts[4]
        if kind == "ssm" and name == "ssm":
            heads = t[0].float().flatten(1).norm(dim=1)
            ssm[i] = {
                "norm": float(t[0].float().norm()),
                "head_max": float(heads.max()),
                "head_median": float(heads.median()),
                "heads": [float(x) for x in heads],
            }
        elif kind == "attn" and name == "valid":
            k, v = model_state[f"backbone.layers.{i}.attn.k"], model_state[f"backbone.layers.{i}.attn.v"]
            nbytes = sum(x.numel() * x.element_size() for x in (k, v, t))
            attn[i] = {"tokens": int(torch.as_tensor(t[0]).sum()), "bytes": int(nbytes)}
    return dict(sorted(ssm.items())), dict(sorted(attn.items()))


def _stream_specs(args, model) -> tuple[list, Path | None]:
    """(pieces, manifest) of the stream to run: manifest streams from ``--stream`` on, or a world's."""
    from ssm_mm.data.manifest import read_manifest

    if args.manifest:
        m = read_manifest(args.manifest)  # ManifestError names the file, line and field
        if not m.streams:
            raise StateNormsError(f"{args.manifest}: no stream")
        if not 0 <= args.stream < len(m.streams):
            raise StateNormsError(f"--stream {args.stream}: the manifest has {len(m.streams)} streams")
        return m.streams[args.stream :] + m.streams[: args.stream], Path(args.manifest)
    from ssm_mm import worlds
    from ssm_mm.config import load_config

    cfg = load_config(None, [f"data.world={args.world}"] if args.world else [])
    try:
        world, world_cfg = worlds.selected(cfg.data)
    except KeyError as e:
        raise StateNormsError(str(e.args[0])) from None
    covered = world.covering(world_cfg, model.labels[1:])
    if covered is None:
        raise StateNormsError(
            f"the model's labels {model.labels[1:]} are not the world {world.name!r}'s: give --manifest"
        )
    cache = Path(args.cache_dir) / world.name
    seconds = world.stream_seconds(covered)
    point = None
    if seconds is not None:
        point = world.long_streams(covered, args.seconds / seconds, streams=1, seed=args.seed)
    path = world.ensure(cache, point if point is not None else covered, "val")
    return read_manifest(path).streams, path


def run(argv: list[str] | None = None, out=None) -> dict:
    """The whole measurement; returns what ``state_norms.json`` holds. StateNormsError (a ValueError)
    on bad input."""
    import torch

    from ssm_mm.evaluation.long import concat_specs
    from ssm_mm.evaluation.report import write_json
    from ssm_mm.evaluation.tasks import stream_tasks
    from ssm_mm.models.multimodal import MultimodalSSM
    from ssm_mm.streaming.drive import concat_media, decode_stream_media, drive

    out = out or sys.stdout
    ap = argparse.ArgumentParser(
        prog="eval/state_norms.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("model", help="save_pretrained folder, checkpoint or run folder")
    ap.add_argument("--seconds", type=float, default=300.0, help="stream seconds to run (default 300)")
    ap.add_argument("--every", type=float, default=30.0, help="record every N stream seconds (default 30)")
    ap.add_argument("--manifest", help="a §4 manifest to take the stream from (default: a world's)")
    ap.add_argument("--stream", type=int, default=0, help="index of the manifest's first stream (default 0)")
    ap.add_argument("--world", help="registered world to generate the stream (default: the default world)")
    ap.add_argument("--seed", type=int, default=2000, help="seed of the generated stream (default 2000)")
    ap.add_argument("--cache-dir", default="cache", help="where generated streams are cached (default cache)")
    ap.add_argument("--no-questions", action="store_true", help="do not ask the stream's questions")
    ap.add_argument("--out", help="output folder (default runs/state_norms/<time>)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args(argv)
    for name in ("seconds", "every"):
        v = getattr(args, name)
        if not (math.isfinite(v) and v > 0):
            raise StateNormsError(f"--{name} must be a positive number of seconds, got {v:g}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if not Path(args.model).exists():
        raise StateNormsError(f"{args.model}: model folder or file not found")
    try:
        model = MultimodalSSM.from_pretrained(args.model).eval()
    except (ValueError, FileNotFoundError) as e:
        raise StateNormsError(f"{args.model}: cannot load it: {e}") from None

    sources, where = _stream_specs(args, model)
    pieces, total, i = [], 0.0, 0
    while total < args.seconds - 1e-9:  # cycle through the streams until the stream is long enough
        spec = sources[i % len(sources)]
        take = min(float(spec.duration), args.seconds - total)
        pieces.append((spec, take))
        total += take
        i += 1
    fps = model.features.fps
    decoded: dict[int, object] = {}
    try:
        for spec, _ in pieces:
            if id(spec) not in decoded:
                decoded[id(spec)] = decode_stream_media(spec.video, spec.audio_path, fps=fps, t0=spec.t0)
    except ValueError as e:
        raise StateNormsError(f"{where}: stream {spec.id!r}: {e}") from None
    t0 = float(pieces[0][0].t0)
    media = concat_media([(decoded[id(s)], take) for s, take in pieces], t0=t0)
    questions = []
    if not args.no_questions:
        joined = concat_specs([s for s, _ in pieces], "joined")
        tau = float(model.features.tick_seconds)
        questions = [q for q in stream_tasks(joined, model.labels, tau).questions if q.t < total]

    session = model.stream(modalities=media.modalities, t0=t0, auto_step=False)
    samples: list[dict] = []
    nxt = [args.every]

    def record(*_):
        while nxt[0] <= session.time - t0 + 1e-9 and nxt[0] <= total + 1e-9:
            ssm, attn = layer_summary(session.state_dict()["model_state"])
            samples.append({"t": nxt[0], "ssm": ssm, "attn": attn})
            top = max((v["norm"] for v in ssm.values()), default=float("nan"))
            print(f"t={nxt[0]:g} s: largest SSM state norm {top:.3g}", file=out, flush=True)
            nxt[0] += args.every

    start = time.perf_counter()
    with torch.no_grad():
        drive(session, media, questions, on_round=record, keep=False)
    res = {
        "model": str(args.model),
        "stream": {
            "ids": [s.id for s, _ in pieces],
            "source": None if where is None else str(where),
            "seconds": total,
            "questions": not args.no_questions,
        },
        "every": args.every,
        "pattern": model.cfg.pattern,
        "samples": samples,
    }
    out_dir = Path(args.out or f"runs/state_norms/{time.strftime('%Y%m%d-%H%M%S')}")
    write_json(res, out_dir / "state_norms.json")
    plot(res, out_dir / "state_norms.png")
    print(
        f"wrote {out_dir / 'state_norms.json'} and state_norms.png ({time.perf_counter() - start:.1f} s)",
        file=out,
    )
    return res


def plot(res: dict, path: Path) -> Path:
    """SSM state norm vs stream time per layer (solid: the layer, dashed: its largest head) and the
    attention caches' token counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ssm_mm.evaluation.report import save_figure

    s = res["samples"]
    t = [x["t"] for x in s]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    layers = sorted({int(k) for x in s for k in x["ssm"]})
    for i in layers:
        line = a.plot(
            t,
            [x["ssm"].get(i, x["ssm"].get(str(i), {})).get("norm") for x in s],
            marker="o",
            ms=3,
            label=f"layer {i}",
        )
        a.plot(
            t,
            [x["ssm"].get(i, x["ssm"].get(str(i), {})).get("head_max") for x in s],
            ls="--",
            color=line[0].get_color(),
        )
    a.set_xlabel("stream time (s)")
    a.set_title("SSM state Frobenius norm (dashed: largest head)", fontsize=9)
    if layers:
        a.legend(fontsize=7)
    a.grid(alpha=0.3)
    for i in sorted({int(k) for x in s for k in x["attn"]}):
        b.plot(
            t,
            [x["attn"].get(i, x["attn"].get(str(i), {})).get("tokens") for x in s],
            marker="o",
            ms=3,
            label=f"layer {i}",
        )
    b.set_xlabel("stream time (s)")
    b.set_title("attention cache (tokens held)", fontsize=9)
    b.grid(alpha=0.3)
    fig.suptitle(f"{res['model']}", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path)


# main(argv): exit status 0 done, or 2 with one line on stderr on bad input
# (StateNormsError, ConfigError, ManifestError, MediaError are ValueErrors)
main = exits_2_on("eval/state_norms.py: error", ValueError, FileNotFoundError)(run)


if __name__ == "__main__":
    raise SystemExit(main())
