"""count_paths.py: each variant patches only what it names, only inside ``patched``; bad arguments."""

from __future__ import annotations

import pytest
import support
import torch
from probe_support import load_script

from ssm_mm.data.dataset import StreamDataset
from ssm_mm.data.interleave import TEXT
from ssm_mm.data.manifest import read_manifest
from ssm_mm.data.tokenizer import ROLES
from ssm_mm.layers.mamba2 import Mamba2Mixer
from ssm_mm.layers.norm import GatedRMSNorm

cp = load_script("count_paths")


def _norm_out(y, z):
    m = support.tiny_model(0).backbone.blocks[0].mixer
    assert isinstance(m, Mamba2Mixer)
    return m.norm(y, z), m.headdim


def test_head_norm_keeps_each_heads_scale_apart():
    y, z = torch.randn(2, 3, 64), torch.randn(2, 3, 64)
    louder = y.clone()
    louder[..., 32:] *= 10  # every head but the first, ten times louder
    plain, p = _norm_out(y, z)
    assert not torch.allclose(_norm_out(louder, z)[0][..., :p], plain[..., :p], atol=1e-3)
    with cp.patched("head_norm"):
        out, p = _norm_out(y, z)
        assert torch.allclose(_norm_out(louder, z)[0][..., :p], out[..., :p], atol=1e-6)
    torch.testing.assert_close(_norm_out(y, z)[0], plain)  # restored on exit


def test_no_mixer_norm_gates_without_dividing():
    y, z = torch.randn(2, 3, 64), torch.randn(2, 3, 64)
    with cp.patched("no_mixer_norm"):
        out, _ = _norm_out(y, z)
    torch.testing.assert_close(out, y * torch.nn.functional.silu(z))  # weight 1 at init
    assert GatedRMSNorm.forward is not cp._gated_only


def test_no_final_norm_reads_the_residual_undivided():
    with cp.patched("no_final_norm"):
        nf = support.tiny_model(0).backbone.norm_f
        x = torch.randn(2, 5, nf.weight.numel()) * 7
        torch.testing.assert_close(nf(x), x)
    assert not torch.allclose(support.tiny_model(0).backbone.norm_f(x), x)


def test_narrate_says_each_segments_label_at_its_start(world):
    man = read_manifest(world)
    model = support.tiny_model(0, ["background", "bell", "buzz", "chirp", "drum"])
    spec = next(s for s in man.streams if s.segments)
    user = ROLES.index("user")

    def user_text(ds):
        tok = ds.example(0).tokens
        return tok.t[(tok.kind == TEXT) & (tok.role == user)]

    ds = StreamDataset([spec], model.features, model.tokenizer, model.labels)
    before = user_text(ds)
    with cp.patched("narrate"):
        turns = cp.narration(spec, model.labels)
        after = user_text(StreamDataset([spec], model.features, model.tokenizer, model.labels))
    assert [t.text for t in turns] == [s.label for s in spec.segments if s.label != "background"]
    per_turn = [len(model.tokenizer.encode_turn("user", t.text)) for t in turns]
    assert after.numel() == before.numel() + sum(per_turn)
    assert (
        user_text(StreamDataset([spec], model.features, model.tokenizer, model.labels)).numel()
        == before.numel()
    )


def test_bad_arguments_name_the_choices():
    with pytest.raises(
        SystemExit, match=r"usage: count_paths.py \{plain,.*narrate\} \{train,ages,state\}.*got what train"
    ):
        cp.main(["what", "train"])
    with pytest.raises(SystemExit, match=r"got narrate\+what train"):
        cp.main(["narrate+what", "train"])
    with pytest.raises(SystemExit, match="got nothing"):
        cp.main([])
