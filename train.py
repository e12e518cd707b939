"""Train ssm_mm (SPEC §8).

    python train.py                                   # default model on AVWorld (generated on first use)
    python train.py --config configs/NAME.yaml key=value ...
    python train.py --config configs/avworld_1h.yaml --config configs/baseline_ssm.yaml  # merged in order
    python train.py train.resume=true                 # continue the run in train.run_dir
    python train.py train.init_from=runs/old train.run_dir=runs/new   # weights only, a new run
    torchrun --nproc_per_node=2 train.py train.batch_size=8 ...

Every config key can be overridden as ``section.key=value``; an unknown key or a value out of range
fails at once with the list of valid keys / the allowed range. The resolved config is written to
``<train.run_dir>/config.yaml``.

Runs and resumes (``ssm_mm.training.runs``): a fresh run (``train.resume=false``) in a folder that
holds a previous run moves that run into ``<run_dir>/previous/<run id>-<time>/`` first.
``train.resume=true`` continues the folder's own run from its newest checkpoint that verifies, and
refuses a config that differs in a key other than run length, checkpointing, logging and evaluation
settings (the message names each key).

Exit status:
    0   training finished (final model saved)
    2   bad input: config, data, checkpoints that cannot be resumed, init weights that do not fit
    75  interrupted by SIGTERM/SIGINT after saving a checkpoint: rerun with ``train.resume=true``
        (EX_TEMPFAIL; under torchrun the launcher reports a worker failure instead)
    1   an unexpected error (with a traceback)
"""

from __future__ import annotations

import argparse
import sys

from ssm_mm.config import ConfigError, load_config

EXIT_DONE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 2, 75


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--config",
        action="append",
        help="YAML config (default: configs/default.yaml); repeat to merge several in order, later "
        "keys winning (--config configs/avworld_1h.yaml --config configs/baseline_ssm.yaml)",
    )
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.d_model=256")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config or ["configs/default.yaml"], args.overrides)
    except ConfigError as e:
        print(f"train.py: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from ssm_mm.data.manifest import ManifestError
    from ssm_mm.media.errors import MediaError
    from ssm_mm.models.multimodal import WeightsError
    from ssm_mm.training.runs import ResumeError
    from ssm_mm.training.trainer import DataError, Trainer

    try:
        result = Trainer(cfg).run()
    except (ConfigError, ResumeError, DataError, ManifestError, MediaError, WeightsError) as e:
        print(f"train.py: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_INTERRUPTED if result["interrupted"] else EXIT_DONE


if __name__ == "__main__":
    raise SystemExit(main())
