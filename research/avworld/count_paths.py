"""Where is a long count lost: on its way out (the RMS norms that divide it by the size of everything
else in its vector) or on its way in (how cleanly each occurrence is written)? Each variant patches
the library in this process only, then runs ``train.py`` or ``count_ages.py`` unchanged, so a run and
its measurement see the same model:

    python research/avworld/count_paths.py VARIANT train [train.py key=value ...]
    python research/avworld/count_paths.py VARIANT ages MODEL MANIFEST [--bin 60]
    python research/avworld/count_paths.py VARIANT state MODEL MANIFEST [--bin 60]

Variants (none of them is a recipe; each removes one suspect):

- ``plain``: no patch (the baseline, through the same entry point);
- ``head_norm``: the SSM output norm takes one RMS per head instead of one over all heads, so a head's
  output scale no longer moves with the others';
- ``no_mixer_norm``: the SSM output is gated but not divided by its RMS (Mamba-1 has no such norm);
- ``no_final_norm``: the heads and the LM read the residual stream scaled by the final norm's weight
  but not divided by its RMS;
- ``narrate``: every event segment's label is said by the user at the segment's start (a text turn
  in the stream, teacher-forced): each occurrence is written from the same discrete tokens instead of
  being detected in audio and video. An oracle: the streaming evaluation does not add these turns,
  so only the offline count head (``ages``) and the read-outs of ``state`` (``count_state.py``: where
  along the model the count is still exact) measure it.

Variants combine with ``+`` (``narrate+no_mixer_norm``). The patches live in this process (data
loader workers inherit them when forked, Linux's default).
"""

from __future__ import annotations

import contextlib
import dataclasses
import runpy
import sys
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

from ssm_mm.data import dataset
from ssm_mm.data.manifest import Turn
from ssm_mm.layers import norm
from ssm_mm.layers.mamba2 import Mamba2Mixer
from ssm_mm.models.backbone import HybridBackbone

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ENTRY = {"train": ROOT / "train.py", "ages": HERE / "count_ages.py", "state": HERE / "count_state.py"}


def _per_head_norm(self, y, z):
    x = (y * F.silu(z)).float().unflatten(-1, (-1, self.group))
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
    return (x.flatten(-2) * self.weight.float()).to(y.dtype)


def _head_norm():
    init = Mamba2Mixer.__init__

    def patched(self, cfg):
        init(self, cfg)
        self.norm.group = cfg.headdim

    return [(Mamba2Mixer, "__init__", patched), (norm.GatedRMSNorm, "forward", _per_head_norm)]


def _gated_only(self, y, z):
    return ((y * F.silu(z)).float() * self.weight.float()).to(y.dtype)


def _no_final_norm():
    init = HybridBackbone.__init__

    def patched(self, cfg):
        init(self, cfg)
        nf = self.norm_f  # its hooks (count_ages reads its input) still fire
        nf.forward = lambda x: (x.float() * nf.weight.float()).to(x.dtype)

    return [(HybridBackbone, "__init__", patched)]


def narration(spec, labels) -> list[Turn]:
    """A user turn saying the label at the start of every event segment of ``spec``."""
    return [Turn(s.start, "user", s.label) for s in spec.segments if s.label in labels[1:]]


def _narrate():
    build = dataset.build_example

    def patched(spec, features, tokenizer, labels, cfg, *args, **kwargs):
        spec = dataclasses.replace(spec, dialogue=list(spec.dialogue) + narration(spec, labels))
        return build(spec, features, tokenizer, labels, cfg, *args, **kwargs)

    return [(dataset, "build_example", patched)]


VARIANTS = {
    "plain": list,
    "head_norm": _head_norm,
    "no_mixer_norm": lambda: [(norm.GatedRMSNorm, "forward", _gated_only)],
    "no_final_norm": _no_final_norm,
    "narrate": _narrate,
}


@contextlib.contextmanager
def patched(variant: str):
    """The library with ``variant``'s patch (or several joined by ``+``), restored on exit."""
    with contextlib.ExitStack() as stack:
        for part in variant.split("+"):
            for obj, name, new in VARIANTS[part]():
                stack.enter_context(mock.patch.object(obj, name, new))
        yield


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not set(argv[0].split("+")) <= set(VARIANTS) or argv[1] not in ENTRY:
        sys.exit(
            f"usage: count_paths.py {{{','.join(VARIANTS)}}} {{{','.join(ENTRY)}}} [args...] "
            f"(got {' '.join(argv[:2]) or 'nothing'})"
        )
    entry = ENTRY[argv[1]]
    sys.argv = [str(entry), *argv[2:]]
    sys.path.insert(0, str(entry.parent))
    with patched(argv[0]):
        runpy.run_path(str(entry), run_name="__main__")


if __name__ == "__main__":
    # run from the module import, not from __main__: the patched functions keep this module as their
    # globals when runpy replaces __main__ (torch.compile resolves their globals by module name)
    sys.path.insert(0, str(HERE))
    import count_paths

    count_paths.main(sys.argv[1:])
