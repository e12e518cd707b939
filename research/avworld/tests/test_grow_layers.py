"""grow_layers.py: the grown model computes what the source did, keeps its weights, and trains its new
blocks; bad insertions are named."""

from __future__ import annotations

import pytest
import support
import torch
from probe_support import load_script

from ssm_mm.models.multimodal import MultimodalSSM

gl = load_script("grow_layers")


@pytest.mark.parametrize(
    ("insert", "pattern", "windows"),
    [
        ("A@0", "AMMAM", [8, 24]),
        ("M@4,A@0", "AMMAMM", [8, 24]),
        ("A@2,M@2", "MMAMAM", [8, 24]),
        ("A@4", "MMAMA", [24, 8]),
    ],
)
def test_grown_model_is_the_source_until_trained(insert, pattern, windows):
    src = support.tiny_model(0)  # pattern MMAM, attention window 24
    grown = gl.grow(src, gl.parse_inserts(insert, 4), window=8).eval()
    assert (grown.cfg.pattern, grown.cfg.layer_windows()) == (pattern, windows)
    x = torch.randn(2, 40, src.cfg.d_model)
    dt = torch.rand(2, 40) * 0.1
    with torch.no_grad():
        want, _ = src.backbone(x, dt)
        got, _ = grown.backbone(x, dt)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    old = src.state_dict()
    for key, value in grown.state_dict().items():
        if not key.startswith("backbone.blocks."):
            assert torch.equal(value, old[key]), key


def test_new_blocks_get_gradients():
    grown = gl.grow(support.tiny_model(0), [("A", 0)], window=8).train()
    y, _ = grown.backbone(torch.randn(1, 16, grown.cfg.d_model), torch.full((1, 16), 0.05))
    y.pow(2).sum().backward()
    new = grown.backbone.blocks[0]
    assert new.mixer.out_proj.weight.grad.abs().sum() > 0  # zero weights, nonzero gradient
    assert new.mlp.w_out.weight.grad.abs().sum() > 0


def test_round_trip_and_cli(tmp_path, capsys):
    src_dir = tmp_path / "src"
    support.tiny_model(0).save_pretrained(src_dir)
    assert gl.main([str(src_dir), str(tmp_path / "out"), "--insert", "A@0", "--window", "16"]) == 0
    assert "model.pattern=AMMAM 'model.attn_windows=[16,24]'" in capsys.readouterr().out
    loaded = MultimodalSSM.from_pretrained(tmp_path / "out")
    assert (loaded.cfg.pattern, loaded.cfg.layer_windows()) == ("AMMAM", [16, 24])


@pytest.mark.parametrize(
    ("insert", "window", "says"),
    [
        ("X@0", None, "L@i"),
        ("A0", None, "L@i"),
        ("A@9", None, "must be in [0, 4]"),
        ("A@0", 0, "must be >= 1"),
    ],
)
def test_bad_insertions_are_named(tmp_path, capsys, insert, window, says):
    src_dir = tmp_path / "src"
    support.tiny_model(0).save_pretrained(src_dir)
    argv = [str(src_dir), str(tmp_path / "out"), "--insert", insert] + (
        ["--window", str(window)] if window is not None else []
    )
    assert gl.main(argv) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_or_unreadable_model(tmp_path, capsys):
    assert gl.main([str(tmp_path / "nope"), str(tmp_path / "out"), "--insert", "A@0"]) == 2
    assert "no such model" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    (bad / "model.safetensors").write_bytes(b"")
    assert gl.main([str(bad), str(tmp_path / "out"), "--insert", "A@0"]) == 2
    assert "config.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
