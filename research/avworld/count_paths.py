"""Where is a long count lost: on its way out (the RMS norms that divide it by the size of everything
else in its vector) or on its way in (how cleanly each occurrence is written)? Each variant patches
the library in this process only, then runs ``train.py`` or ``count_ages.py`` unchanged, so a run and
its measurement see the same model:

    python research/avworld/count_paths.py VARIANT train [train.py key=value ...]
    python research/avworld/count_paths.py VARIANT ages MODEL MANIFEST [--bin 60]
    python research/avworld/count_paths.py VARIANT state MODEL MANIFEST [--bin 60]
    python research/avworld/count_paths.py VARIANT eval [eval/run.py key=value ...]

Variants (none of them is a recipe; each removes one suspect):

- ``plain``: no patch (the baseline, through the same entry point);
- ``head_norm``: the SSM output norm takes one RMS per head instead of one over all heads, so a head's
  output scale no longer moves with the others';
- ``no_mixer_norm``: the SSM output is gated but not divided by its RMS (Mamba-1 has no such norm);
- ``no_final_norm``: the heads and the LM read the residual stream scaled by the final norm's weight
  but not divided by its RMS;
- ``narrate``: every event segment's label is said by the user at the segment's start (a text turn
  in the stream, teacher-forced): each occurrence is written from the same discrete tokens instead of
  being detected in audio and video. An oracle: ``eval`` puts the same turns into each streaming
  session at the end of the tick where a segment begins, as input only (no answer is generated for
  them); train.py's final evaluation streams without them;
- ``narrate_own``: trained as ``narrate``; streamed, the turns come from the session's own tick labels
  (a turn whenever its label changes to an event class), so nothing the truth says reaches the model:
  a model that hears its own event labels;
- ``ssm_readout``: the heads and the LM read, beside the final norm's output, a linear read-out
  (zero at the start) of every SSM layer's gated output before its RMS norm divides it: what a
  layer's state gives is read without the rest of the stack (out-projection, later blocks, their
  norms, the final norm) in between. The residual stream is unchanged. Token by token, so a
  streaming session gets exactly what the whole window gets.
- ``static_read``: beside each SSM layer's own read of its state (through the token's C, gated by
  silu(z)), a read by a fixed, learned d_state vector per head, the same for every token, added to
  the layer's output through a zero-initialised projection (the scan run a second time with it): a
  count the state holds reaches the residual stream with no factor that changes token by token.

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
from torch import nn

from ssm_mm.data import dataset
from ssm_mm.data.interleave import tick_index
from ssm_mm.data.manifest import Turn
from ssm_mm.evaluation import harness
from ssm_mm.layers import mamba2, norm
from ssm_mm.layers.mamba2 import Mamba2Mixer
from ssm_mm.models.backbone import HybridBackbone
from ssm_mm.streaming import session as session_module

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ENTRY = {
    "train": ROOT / "train.py",
    "ages": HERE / "count_ages.py",
    "state": HERE / "count_state.py",
    "eval": ROOT / "eval" / "run.py",
}
# (stream id, tick, label) of every narration turn a streaming session was given, in order
TURNS: list[tuple[str, int, str]] = []


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


def _gated_kept(self, y, z):
    """The gated RMS norm, keeping its input (the gated output, undivided) for the read-out."""
    self.gated = y * F.silu(z)
    return norm.RMSNorm.forward(self, self.gated)


def _ssm_readout():
    init, forward = Mamba2Mixer.__init__, HybridBackbone.forward

    def patched_init(self, cfg):
        init(self, cfg)
        with torch.random.fork_rng(devices=[]):  # draws nothing: a seed inits the rest as before
            self.readout = nn.Linear(self.d_inner, cfg.d_model, bias=False)
        nn.init.zeros_(self.readout.weight)  # starts as the plain model

    def patched_forward(self, *args, **kwargs):
        out, state = forward(self, *args, **kwargs)
        mixers = [blk.mixer for blk in self.blocks if blk.letter == "M"]
        read = sum(m.readout(m.norm.gated.to(m.readout.weight.dtype)) for m in mixers)
        return out + read.to(out.dtype), state

    return [
        (Mamba2Mixer, "__init__", patched_init),
        (norm.GatedRMSNorm, "forward", _gated_kept),
        (HybridBackbone, "forward", patched_forward),
    ]


def _static_read():
    """Beside each SSM layer's own read of its state (the token's C, gated by silu(z)), a read by a
    fixed projection: y_s = C0 · state per head (C0 learned, one d_state vector per head, the same
    for every token), added to the layer's output through a zero-initialised projection, so the
    state reaches the residual stream with no factor that changes with the token. The chunked path
    runs the scan a second time with C0; a one-token step reads the updated state."""
    init, forward = Mamba2Mixer.__init__, Mamba2Mixer.forward
    scan, step = mamba2.ssd_scan, mamba2.ssd_step

    def patched_init(self, cfg):
        init(self, cfg)
        with torch.random.fork_rng(devices=[]):  # draws nothing: a seed inits the rest as before
            self.c_static = nn.Parameter(torch.randn(self.nheads, self.d_state) / self.d_state**0.5)
            self.static_proj = nn.Linear(self.d_inner, cfg.d_model, bias=False)
        nn.init.zeros_(self.static_proj.weight)  # starts as the plain model

    def patched_forward(self, u, *args, **kwargs):
        _CURRENT.append(self)
        try:
            out, state = forward(self, u, *args, **kwargs)
        finally:
            _CURRENT.pop()
        y_s = self.__dict__.pop("_y_static")
        return out + self.static_proj(y_s.flatten(-2).to(out.dtype)), state

    def patched_scan(x, log_decay, B, C, *args, **kwargs):
        y, final = scan(x, log_decay, B, C, *args, **kwargs)
        m = _CURRENT[-1]
        b, l, h, _ = x.shape
        c0 = m.c_static.to(C.dtype).expand(b, l, h, m.d_state)
        y_s, _ = scan(x, log_decay, B.repeat_interleave(h // B.shape[2], dim=2), c0, *args, **kwargs)
        m._y_static = y_s  # (b, l, h, p)
        return y, final

    def patched_step(x, log_decay, B, C, state):
        y, new = step(x, log_decay, B, C, state)
        m = _CURRENT[-1]
        m._y_static = torch.einsum("bhpn,hn->bhp", new, m.c_static.to(new.dtype)).unsqueeze(1).to(x.dtype)
        return y, new

    return [
        (Mamba2Mixer, "__init__", patched_init),
        (Mamba2Mixer, "forward", patched_forward),
        (mamba2, "ssd_scan", patched_scan),
        (mamba2, "ssd_step", patched_step),
    ]


_CURRENT: list = []  # the mixer whose forward is running (static_read)


def narration(spec, labels) -> list[Turn]:
    """A user turn saying the label at the start of every event segment of ``spec``."""
    return [Turn(s.start, "user", s.label) for s in spec.segments if s.label in labels[1:]]


def say(session, text: str) -> None:
    """A user turn ``text`` into ``session`` at its current time, as input only (no answer), the way
    ``StreamingSession.ask`` puts a question in before it generates."""
    with session._transaction():
        _, state = session._read_turn(session.model.tokenizer.encode_turn("user", text))
        session._st.model = session_module._compact_model_state(state)
        session._st.n_turns += 1


def narrator(session, spec, own: bool):
    """A ``drive_many`` round callback that says each event's label after the tick where it begins:
    the segments' starts (``own`` False) or where the session's own label changes to an event class."""
    onsets: dict[int, list[str]] = {}
    for s in spec.segments if not own else ():
        if s.label in session.model.labels[1:]:  # as ``narration`` says them in training
            onsets.setdefault(tick_index(s.start - spec.t0, session.tau), []).append(s.label)
    last = "background"

    def on_round(rnd, labels, events, answers) -> None:
        nonlocal last
        for lab in labels:
            if own:
                said = [lab.label] if lab.label not in (last, "background") else []
            else:
                said = onsets.get(lab.tick, [])
            last = lab.label
            for text in said:
                say(session, text)
                TURNS.append((spec.id, lab.tick, text))

    return on_round


def _streamed_narration(own: bool):
    """Patches of the streaming evaluation: every session gets its stream's narration turns."""
    tasks, drive_many = harness.stream_tasks, harness.drive_many
    pending: list = []  # specs in the order evaluate() drives them (all its tasks come first)

    def stream_tasks(spec, *args, **kwargs):
        pending.append(spec)
        return tasks(spec, *args, **kwargs)

    def drive(sessions, media, questions=None, **kwargs):
        specs = [pending.pop(0) for _ in sessions]
        calls = [narrator(s, spec, own) for s, spec in zip(sessions, specs)]
        return drive_many(sessions, media, questions, on_round=calls, **kwargs)

    return [(harness, "stream_tasks", stream_tasks), (harness, "drive_many", drive)]


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
    "narrate_own": _narrate,  # trained alike; streamed (``eval``), the turns come from its own labels
    "ssm_readout": _ssm_readout,
    "static_read": _static_read,
}
# what ``eval`` adds: the streaming sessions get the narration turns (own: from their own labels)
STREAMED = {"narrate": False, "narrate_own": True}


@contextlib.contextmanager
def patched(variant: str, streamed: bool = False):
    """The library with ``variant``'s patch (or several joined by ``+``), restored on exit; with
    ``streamed`` also the streaming evaluation's narration turns of a narrating variant."""
    with contextlib.ExitStack() as stack:
        for part in variant.split("+"):
            patches = VARIANTS[part]()
            if streamed and part in STREAMED:
                patches += _streamed_narration(STREAMED[part])
            for obj, name, new in patches:
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
    with patched(argv[0], streamed=argv[1] == "eval"):
        runpy.run_path(str(entry), run_name="__main__")


if __name__ == "__main__":
    # run from the module import, not from __main__: the patched functions keep this module as their
    # globals when runpy replaces __main__ (torch.compile resolves their globals by module name)
    sys.path.insert(0, str(HERE))
    import count_paths

    count_paths.main(sys.argv[1:])
