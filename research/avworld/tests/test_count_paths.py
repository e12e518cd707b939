"""count_paths.py: each variant patches only what it names, only inside ``patched``; bad arguments."""

from __future__ import annotations

import pytest
import support
import torch
from probe_support import load_script

from ssm_mm.data.dataset import StreamDataset
from ssm_mm.data.interleave import TEXT, tick_index
from ssm_mm.data.manifest import read_manifest
from ssm_mm.data.tokenizer import ROLES
from ssm_mm.evaluation import harness
from ssm_mm.layers.mamba2 import Mamba2Mixer
from ssm_mm.layers.norm import GatedRMSNorm
from ssm_mm.streaming import drive

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


def _backbone_inputs(model, n=9):
    torch.manual_seed(1)
    x = torch.randn(2, n, model.cfg.d_model)
    dt = torch.rand(2, n) * 0.3
    return x, dt


def _added_read(variant: str, proj: str, check) -> None:
    """Under ``variant``: the tiny backbone's output on fixed inputs with each SSM mixer's zero-
    initialised projection ``proj`` still zero (must be the plain model's) and then drawn at random;
    ``check(backbone, mixers, plain output, output with the drawn projection)`` asserts what is added;
    then token by token, carrying the state, must give the whole window's output, and the patch must
    be gone on exit."""
    plain = support.tiny_model(0).backbone
    x, dt = _backbone_inputs(plain)
    want, _ = plain(x, dt)
    with cp.patched(variant):
        bb = support.tiny_model(0).backbone
        mixers = [blk.mixer for blk in bb.blocks if blk.letter == "M"]
        assert mixers and all(not getattr(m, proj).weight.any() for m in mixers)
        torch.testing.assert_close(bb(x, dt)[0], want)  # a zero projection: the plain model
        with torch.no_grad():
            for m in mixers:
                getattr(m, proj).weight.normal_()
        got, _ = bb(x, dt)
        assert not torch.allclose(got, want, atol=1e-2)
        check(bb, mixers, want, got)
        # token by token, carrying the state, as a streaming session runs it
        state, steps = None, []
        for i in range(x.shape[1]):
            y, state = bb(x[:, i : i + 1], dt[:, i : i + 1], state)
            steps.append(y)
        torch.testing.assert_close(torch.cat(steps, 1), got, atol=1e-5, rtol=1e-4)
    assert not hasattr(support.tiny_model(0).backbone.blocks[0].mixer, proj)  # restored


def test_ssm_readout_adds_a_read_of_each_ssm_output_before_its_norm():
    def check(_, mixers, want, got):
        # what is added is exactly each layer's read-out of y * silu(z), undivided
        read = sum(m.readout(m.norm.gated) for m in mixers)
        torch.testing.assert_close(got, want + read)

    _added_read("ssm_readout", "readout", check)


def test_static_read_adds_a_fixed_read_of_each_ssm_state():
    def check(bb, mixers, *_):
        # one mixer alone: what it adds is C0 . state per head, the state after each token prefix
        m = mixers[0]
        u = torch.randn(2, 7, bb.cfg.d_model)
        t = torch.rand(2, 7) * 0.3
        out, _ = m(u, t)
        drawn = m.static_proj.weight
        with torch.no_grad():
            m.static_proj.weight = torch.nn.Parameter(torch.zeros_like(drawn))
            base, _ = m(u, t)
            m.static_proj.weight = drawn
        reads = []
        for i in range(1, 8):
            _, st = m(u[:, :i], t[:, :i])
            reads.append(torch.einsum("bhpn,hn->bhp", st.ssm, m.c_static).flatten(1))
        torch.testing.assert_close(out - base, m.static_proj(torch.stack(reads, 1)), atol=1e-5, rtol=1e-4)

    _added_read("static_read", "static_proj", check)


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
        assert harness.drive_many is drive.drive_many  # sessions get the turns only under `eval`
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
        SystemExit,
        match=r"usage: count_paths.py \{plain,.*,ssm_readout,static_read\} "
        r"\{train,ages,state,eval\}.*got what train",
    ):
        cp.main(["what", "train"])
    with pytest.raises(SystemExit, match=r"got narrate\+what train"):
        cp.main(["narrate+what", "train"])
    with pytest.raises(SystemExit, match="got nothing"):
        cp.main([])


def _narrated(world, variant):
    specs = read_manifest(world).streams
    model = support.tiny_model(0, ["background", "bell", "buzz", "chirp", "drum"])
    cp.TURNS.clear()
    with cp.patched(variant, streamed=True):
        told = harness.evaluate(model, specs)
    assert harness.drive_many is drive.drive_many  # restored on exit
    return specs, model, told


def test_narrate_streams_a_turn_after_each_tick_where_an_event_begins(world):
    specs, model, told = _narrated(world, "narrate")
    plain = harness.evaluate(model, specs)
    tau = model.features.tick_seconds
    expected = [
        (s.id, tick_index(seg.start - s.t0, tau), seg.label)
        for s in specs
        for seg in s.segments
        if seg.label != "background"
    ]
    assert expected and sorted(cp.TURNS) == sorted(expected)
    for a, b in zip(plain.scores, told.scores):  # input only: the same questions, no answer to a turn
        assert [x["question"] for x in a.answers] == [x["question"] for x in b.answers]
    assert any(
        not torch.equal(a.pred, b.pred) or a.answers != b.answers for a, b in zip(plain.scores, told.scores)
    )


def test_narrate_own_says_the_sessions_own_label_where_it_changes_to_an_event(world):
    specs, model, told = _narrated(world, "narrate_own")
    expected = []
    for s, sc in zip(specs, told.scores):
        last = 0
        for k, i in enumerate(sc.pred.tolist()):
            if i not in (last, 0):
                expected.append((s.id, k, model.labels[i]))
            last = i
    assert expected and sorted(cp.TURNS) == sorted(expected)
