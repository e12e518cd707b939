"""Command line: generate AVWorld streams (mp4 with audio) and their manifest, or write its tokenizer.

    python -m ssm_mm.worlds.avworld --out DIR --streams 4 --seconds 20 --fps 4 --jitter 0.02 --drop 0.1 \\
        --offset 0.3 --noise 0.02 --seed 0 --clock 1000
    python -m ssm_mm.worlds.avworld --write-tokenizer configs/tokenizers/avworld_words.json

Every option defaults to :class:`~ssm_mm.worlds.avworld.config.AVWorldConfig` (the default training
run's world). Bad values exit with status 2 and one line naming the option.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from ssm_mm.worlds.avworld.config import ASKED_TYPES, AVWorldConfig
from ssm_mm.worlds.avworld.generate import generate
from ssm_mm.worlds.avworld.scene import CLASSES


def main(argv: list[str] | None = None) -> int:
    defaults = AVWorldConfig()
    p = argparse.ArgumentParser(
        prog="python -m ssm_mm.worlds.avworld",
        description="Generate AVWorld streams (mp4 with audio) and their manifest.",
    )
    p.add_argument("--out", type=Path, help="output folder (manifest.jsonl, media/)")
    p.add_argument(
        "--write-tokenizer",
        type=Path,
        metavar="JSON",
        help="instead of generating streams, write the word-level tokenizer of AVWorld's vocabulary "
        "(configs/tokenizers/avworld_words.json is this file)",
    )
    p.add_argument("--streams", type=int, default=defaults.streams)
    p.add_argument("--seconds", type=float, default=defaults.seconds, help="stream duration")
    p.add_argument("--fps", type=float, default=defaults.fps)
    p.add_argument("--size", type=int, default=defaults.size, help="frame height = width (pixels)")
    p.add_argument("--sample-rate", type=int, default=defaults.sample_rate)
    p.add_argument("--jitter", type=float, default=defaults.jitter, help="max per-frame pts noise (s)")
    p.add_argument("--drop", type=float, default=defaults.drop, help="probability of dropping a frame")
    p.add_argument("--offset", type=float, default=defaults.offset, help="audio start minus video start (s)")
    p.add_argument("--noise", type=float, default=defaults.noise, help="background noise level")
    p.add_argument("--clock", type=float, default=defaults.clock, help="clock time of media time 0 (t0)")
    p.add_argument("--density", type=float, default=defaults.density, help="AV events per 10 s")
    p.add_argument(
        "--classes", type=int, default=defaults.classes, help=f"event classes used (2-{len(CLASSES)})"
    )
    p.add_argument(
        "--question-every", type=float, default=defaults.question_every, help="mean s between questions"
    )
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument(
        "--question-mix",
        default="",
        metavar="TYPE=W,...",
        help=f"relative frequency of question types {list(ASKED_TYPES)} (missing: 1), e.g. color=3,now=3",
    )
    for name, what in (("jitter", "jitter"), ("drop", "drop rate"), ("offset", "offset")):
        p.add_argument(
            f"--{name}-spread",
            type=float,
            default=getattr(defaults, f"{name}_spread"),
            help=f"per-stream {what} varies by up to this much (training augmentation)",
        )
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    a = p.parse_args(argv)
    if a.write_tokenizer is not None:
        from ssm_mm.data.tokenizer import word_tokenizer_json
        from ssm_mm.worlds.avworld.dialogue import vocabulary

        a.write_tokenizer.parent.mkdir(parents=True, exist_ok=True)
        a.write_tokenizer.write_text(word_tokenizer_json(vocabulary()) + "\n", encoding="utf-8")
        print(
            f"wrote the AVWorld word tokenizer ({len(vocabulary())} words) to {a.write_tokenizer}",
            file=sys.stderr,
        )
        return 0
    if a.out is None:
        p.error("--out is required (or --write-tokenizer JSON)")
    knobs = {f.name: getattr(a, f.name) for f in dataclasses.fields(AVWorldConfig) if hasattr(a, f.name)}
    try:
        knobs["question_mix"] = {
            k.strip(): float(v)
            for k, v in (item.split("=", 1) for item in a.question_mix.split(",") if item.strip())
        }
    except ValueError:
        p.error(f"--question-mix: expected TYPE=WEIGHT,... (got {a.question_mix!r})")
    try:
        cfg = AVWorldConfig(**knobs)
    except ValueError as e:
        p.error(str(e))
    t = time.perf_counter()
    manifest = generate(a.out, cfg, workers=a.workers)
    print(
        f"wrote {cfg.streams} streams x {cfg.seconds:g} s to {manifest} in {time.perf_counter() - t:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
