"""Insert layers into a trained model that leave it unchanged: each new block's mixer output projection
and MLP output projection start at zero, so the residual stream, every head and every answer are what
they were, and a fine-tune (``train.init_from=OUT model.pattern=... model.attn_windows=...``) starts
from the trained model and learns what the new layers add.

    python research/avworld/grow_layers.py MODEL OUT --insert A@0 --window 64
    python research/avworld/grow_layers.py MODEL OUT --insert M@2,A@0

``--insert L@i``: a new block of letter ``L`` (``M`` or ``A``) before the source's block ``i`` (``i`` =
the source's number of blocks appends it); several are comma-separated. ``--window`` is the attention
window of every new ``A`` block (the source's ``attn_window`` when omitted). The new model's config is
printed as the ``model.pattern`` / ``model.attn_windows`` overrides a fine-tune needs. Exit status 2
with a message naming what is wrong (a missing or unreadable model, a bad insertion).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ssm_mm.cli import exits_2_on
from ssm_mm.models.multimodal import MultimodalSSM


class GrowError(ValueError):
    """A bad ``--insert`` or ``--window``."""


def parse_inserts(text: str, n_blocks: int) -> list[tuple[str, int]]:
    """``"A@0,M@2"`` -> [("A", 0), ("M", 2)], each index in [0, n_blocks]."""
    out = []
    for part in text.split(","):
        letter, sep, where = part.strip().partition("@")
        if not sep or letter not in ("A", "M") or not where.isdigit():
            raise GrowError(f"--insert {part!r}: write L@i with L in A, M and i a block index (e.g. A@0)")
        i = int(where)
        if i > n_blocks:
            raise GrowError(
                f"--insert {part!r}: the model has {n_blocks} blocks; i must be in [0, {n_blocks}]"
            )
        out.append((letter, i))
    return out


def grown_layout(pattern: str, windows: list, inserts: list[tuple[str, int]], window: int | None):
    """(new pattern, new attn_windows, source block of each new block or None for a new one)."""
    slots: list[tuple[str, int | None, int | None]] = []  # (letter, source index, window)
    attn = iter(windows)
    for i, letter in enumerate(pattern):
        for new_letter, at in inserts:
            if at == i:
                slots.append((new_letter, None, window))
        slots.append((letter, i, next(attn) if letter == "A" else None))
    slots += [(new_letter, None, window) for new_letter, at in inserts if at == len(pattern)]
    return (
        "".join(s[0] for s in slots),
        [s[2] for s in slots if s[0] == "A"],
        [s[1] for s in slots],
    )


def grow(model: MultimodalSSM, inserts: list[tuple[str, int]], window: int | None = None, seed: int = 0):
    """A copy of ``model`` with the new blocks inserted, identity at the start (see module doc)."""
    cfg = model.cfg
    if window is not None and window < 1:
        raise GrowError(f"--window {window}: must be >= 1")
    pattern, windows, source = grown_layout(
        cfg.pattern, cfg.layer_windows(), inserts, window if window is not None else cfg.attn_window
    )
    spec = model.config_dict()
    spec["model"] = {**spec["model"], "pattern": pattern, "attn_windows": windows}
    torch.manual_seed(seed)
    grown = MultimodalSSM.from_config_dict(spec)
    old = model.state_dict()
    sd = grown.state_dict()
    for key in sd:
        if not key.startswith("backbone.blocks."):
            sd[key] = old[key]
            continue
        i, rest = key[len("backbone.blocks.") :].split(".", 1)
        src = source[int(i)]
        if src is not None:
            sd[key] = old[f"backbone.blocks.{src}.{rest}"]
        elif rest in ("mixer.out_proj.weight", "mlp.w_out.weight"):
            sd[key] = torch.zeros_like(sd[key])  # the new block adds nothing yet
    grown.load_state_dict(sd)
    return grown


@exits_2_on("grow_layers.py", ValueError, FileNotFoundError)  # GrowError, unreadable model folders
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a save_pretrained folder or a run / checkpoint")
    ap.add_argument("out", help="the folder the grown model is saved to (save_pretrained)")
    ap.add_argument("--insert", required=True, help="new blocks, L@i comma-separated (L: A or M)")
    ap.add_argument("--window", type=int, default=None, help="attention window of each new A block")
    ap.add_argument("--seed", type=int, default=0, help="seed of the new blocks' initialisation")
    args = ap.parse_args(argv)
    if not Path(args.model).exists():
        raise GrowError(f"{args.model}: no such model")
    model = MultimodalSSM.from_pretrained(args.model)
    grown = grow(model, parse_inserts(args.insert, len(model.cfg.pattern)), args.window, args.seed)
    grown.save_pretrained(args.out)
    windows = ",".join("null" if w is None else str(w) for w in grown.cfg.attn_windows)
    print(f"{args.out}: model.pattern={grown.cfg.pattern} 'model.attn_windows=[{windows}]'")


if __name__ == "__main__":
    sys.exit(main())
