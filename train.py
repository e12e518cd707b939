"""Train ssm_mm (SPEC §8).

    python train.py                                   # default model on AVWorld (generated on first use)
    python train.py --config configs/NAME.yaml key=value ...
    python train.py --config configs/avworld_1h.yaml --config configs/baseline_ssm.yaml  # merged in order
    torchrun --nproc_per_node=2 train.py train.batch_size=8 ...

Every config key can be overridden as ``section.key=value``; an unknown key fails at once with the
list of valid ones. The resolved config is written to ``<train.run_dir>/config.yaml``.
"""

from __future__ import annotations

import argparse
import sys

from ssm_mm.config import ConfigError, load_config


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
        return 2
    from ssm_mm.training.trainer import Trainer

    result = Trainer(cfg).run()
    del result
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
