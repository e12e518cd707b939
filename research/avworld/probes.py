"""Linear probes on a model's residual stream (used by ``probe_patches.py``, ``probe_binding.py`` and
``recall_heads.py`` beside it): read the output of every backbone block during an offline forward, and
score a softmax-regression probe trained on some streams on the others; the scripts' shared command
line, inputs (an AVWorld manifest with ``scenes.jsonl`` beside it) and stream split."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor


class ProbeError(ValueError):
    """Bad input to a probe script (the scripts exit 2 with its message)."""


def probe_parser(description: str, streams: int, steps: int) -> argparse.ArgumentParser:
    """The arguments every probe script takes: model, ``--manifest``, ``--streams``,
    ``--train-share``, ``--steps``, ``--out`` (defaults for streams and steps per script)."""
    ap = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("model", help="a save_pretrained folder, checkpoint or run folder")
    ap.add_argument("--manifest", required=True, help="an AVWorld manifest (scenes.jsonl beside it)")
    ap.add_argument("--streams", type=int, default=streams)
    ap.add_argument("--train-share", type=float, default=0.75)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--out", help="write the results here (JSON)")
    return ap


def run_probe_script(main: Callable[[], object], name: str) -> None:
    """Run a probe script's ``main()`` from the command line: one torch thread (tiny per-stream
    forwards run fastest on one), and exit 2 with ``"{name}: message"`` on bad input."""
    torch.set_num_threads(1)
    try:
        main()
    except (ProbeError, FileNotFoundError, ValueError) as e:
        print(f"{name}: {e}", file=sys.stderr)
        sys.exit(2)


def load_probe_inputs(a: argparse.Namespace):
    """(model in eval mode, manifest path) from parsed :func:`probe_parser` arguments, after checking
    the train share and that the manifest exists (:class:`ProbeError` naming the argument)."""
    from ssm_mm.models.multimodal import MultimodalSSM

    if not 0.0 < a.train_share < 1.0:
        raise ProbeError(f"--train-share must be in (0, 1), got {a.train_share}")
    manifest = Path(a.manifest)
    if not manifest.is_file():
        raise ProbeError(f"--manifest {manifest}: no such file")
    return MultimodalSSM.from_pretrained(a.model).eval(), manifest


def avworld_streams(manifest: Path, n_streams: int) -> tuple[list, dict[str, dict], Path]:
    """The first ``n_streams`` stream specs of an AVWorld manifest, its scenes ({stream id: scene})
    and the scenes file's path; :class:`ProbeError` when no ``scenes.jsonl`` lies beside it."""
    from ssm_mm.data.manifest import read_manifest
    from ssm_mm.worlds.avworld import read_scenes

    scenes_path = manifest.parent / "scenes.jsonl"
    if not scenes_path.is_file():
        raise ProbeError(f"{manifest}: no scenes.jsonl beside it (probes need an AVWorld dataset)")
    return read_manifest(manifest).streams[:n_streams], read_scenes(scenes_path), scenes_path


def train_cut(n_streams: int, share: float) -> int:
    """Streams ``< cut`` train the probes, the others test; :class:`ProbeError` when a side is empty."""
    cut = int(round(share * n_streams))
    if cut < 1 or cut >= n_streams:
        raise ProbeError(
            f"need streams on both sides of the train/test split: {n_streams} streams, share {share}"
        )
    return cut


@contextmanager
def block_outputs(model, frontend: bool = False) -> Iterator[dict[str, Tensor]]:
    """A dict filled by every forward inside the ``with``: ``"block{j}:{kind}"`` -> (B, L, d) residual
    stream after block j (1-based; kind M or A from the pattern), in depth order, and with
    ``frontend=True`` first ``"frontend"`` -> the video frontend's (F, P, d) patch embeddings."""
    depth: dict[str, Tensor] = {}
    hooks = []
    if frontend:
        hooks.append(model.video_in.register_forward_hook(lambda m, i, o: depth.__setitem__("frontend", o)))
    for j, blk in enumerate(model.backbone.blocks):
        name = f"block{j + 1}:{model.cfg.pattern[j]}"
        hooks.append(blk.register_forward_hook(lambda m, i, o, name=name: depth.__setitem__(name, o[0])))
    try:
        yield depth
    finally:
        for h in hooks:
            h.remove()


def linear_probe(
    x: Tensor,
    y: Tensor,
    train: Tensor,
    n_classes: int,
    steps: int = 400,
    seed: int = 0,
    weight_decay: float = 0.0,
) -> Tensor:
    """Predicted classes of the rows ``~train`` by a softmax-regression probe trained on the rows
    ``train`` (bool mask): features standardised with the training rows' statistics, full-batch
    Adam (lr 1e-2, L2 ``weight_decay`` on the weights), ``steps`` steps, seeded initialisation."""
    g = torch.Generator().manual_seed(seed)
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mu) / sd
    w = (torch.randn(x.shape[1], n_classes, generator=g) * 0.01).requires_grad_()
    bias = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.Adam([w, bias], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[train] @ w + bias, y[train])
        (loss + weight_decay * w.square().sum()).backward()
        opt.step()
    with torch.no_grad():
        return (x[~train] @ w + bias).argmax(-1)
