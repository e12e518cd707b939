"""count_state.py: every stage read at the tick summary tokens as the whole forward reads them; ridge
read-outs scored on streams they were not fitted on; bad input."""

from __future__ import annotations

import pytest
import support
import torch
from probe_support import load_script

from ssm_mm.data.dataset import StreamDataset
from ssm_mm.data.manifest import read_manifest
from ssm_mm.worlds.avworld import CLASSES, generate

LABELS = ["background"] + [c.name for c in CLASSES]
cs = load_script("count_state")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("state"), streams=3, seconds=12.0, seed=11)


@pytest.fixture(scope="module")
def huber(tmp_path_factory):
    out = tmp_path_factory.mktemp("state_model") / "m"
    support.tiny_model(0, LABELS, objectives={"count": {"max": 100, "loss": "huber"}}).save_pretrained(out)
    return out


def test_stages_piece_by_piece_equal_the_whole_forward(world, huber):
    from ssm_mm.models.multimodal import MultimodalSSM

    model = MultimodalSSM.from_pretrained(huber).eval()
    ds = StreamDataset(list(read_manifest(world).streams), model.features, model.tokenizer, model.labels)
    f = cs.stages(model, ds, 0)
    b = ds.collate([ds[0]])
    with torch.no_grad():
        out = model.forward_batch(b)
        whole = model.tick_hidden(out.hidden, b.summary_pos)[0]
    n = whole.shape[0]
    m_layers = [j for j, c in enumerate(model.cfg.pattern) if c == "M"]
    assert set(f) == {"final norm"} | {f"residual L{j}" for j in range(len(model.cfg.pattern))} | {
        f"{k} L{j}" for j in m_layers for k in ("state", "mixer")
    }
    assert all(v.shape[0] == n for v in f.values())
    torch.testing.assert_close(f["final norm"], whole, atol=1e-5, rtol=1e-4)
    # the state after the last tick's summary token is the state of a forward that stops there
    last = int(b.summary_pos[0, -1])
    with torch.no_grad():
        upto = model(b.kind[:, : last + 1], b.t[:, : last + 1], b.src[:, : last + 1], None, b.video, b.audio)
    j = m_layers[0]
    torch.testing.assert_close(f[f"state L{j}"][-1], upto.state.backbone.layers[j].ssm[0].flatten(1))


def test_ridge_scores_each_stream_by_a_read_out_fitted_without_it():
    g = torch.Generator().manual_seed(0)
    # four streams whose count is feature 0 exactly (plus noise features); the last one's count is
    # feature 0 doubled, so only a read-out that never saw it is wrong on it
    xs = [torch.randn(200, 6, generator=g, dtype=torch.float64) for _ in range(4)]
    ys = [x[:, :1].clone() for x in xs]
    ys[3] = 2 * ys[3]
    pred = cs.ridge_folds(xs, ys, lams=(1e-6,), folds=4)[1e-6]
    # a clean stream is read by a slope of ~4/3 (two clean streams and the doubled one); the doubled
    # stream by the clean slope 1, its own never fitted
    err = [float((p - y).abs().mean()) for p, y in zip(pred, ys)]
    assert max(err[:3]) < 0.4 and err[3] > 0.6
    clean = cs.ridge_folds(xs[:3], ys[:3], lams=(1e-6,), folds=3)[1e-6]
    assert all(torch.allclose(p, y, atol=1e-4) for p, y in zip(clean, ys[:3]))
    # more features than fitted samples (the dual form) gives the primal ridge solution
    wide = [torch.randn(20, 50, generator=g, dtype=torch.float64) for _ in range(2)]
    wy = [x[:, :2] @ torch.tensor([[1.0], [-2.0]], dtype=torch.float64) for x in wide]
    got = cs.ridge_folds(wide, wy, lams=(0.1,), folds=2)[0.1][1]
    x, y = wide[0], wy[0]
    mu, sd = x.mean(0), x.std(0)
    xz = (x - mu) / sd
    w = torch.linalg.solve(xz.T @ xz + 0.1 * len(x) * torch.eye(50, dtype=x.dtype), xz.T @ (y - y.mean(0)))
    torch.testing.assert_close(got, ((wide[1] - mu) / sd) @ w + y.mean(0))
    pred, lam, mae = cs.best_readout(xs[:3], ys[:3])
    assert lam == min(cs.RIDGE) and mae < 0.05


def test_cli_prints_every_stage_and_names_bad_input(world, huber, tmp_path, capsys):
    assert cs.main([str(huber), str(world), "--bin", "6"]) == 0
    out = capsys.readouterr().out
    assert "on 3 streams" in out and "| 0-6 s | 6-12 s |" in out
    for row in ("| count head |", "| state L0 |", "| best head L0 (head ", "| mixer L0 |", "| final norm |"):
        assert row in out
    assert (
        "SSM heads that keep a write for at least 60 s" in out and "| median γ video / audio / text |" in out
    )

    def fails(*args, match):
        assert cs.main([str(a) for a in args]) == 2
        assert match in capsys.readouterr().err

    fails(tmp_path / "nope", world, match="nope: no such model")
    fails(huber, tmp_path / "x.jsonl", match="x.jsonl: no such manifest")
    support.tiny_model(0, LABELS).save_pretrained(tmp_path / "plain")
    fails(tmp_path / "plain", world, match="no count head")
    fails(huber, world, "--streams", "1", match="--streams 1: must be >= 2")
    one = world.parent / "one_stream.jsonl"
    one.write_text(world.read_text().splitlines()[0] + "\n")
    fails(huber, one, match="1 stream(s); a read-out fitted on other streams needs >= 2")
    fails(huber, world, "--bin", "0", match="--bin 0.0: must be > 0")


def test_head_writes_sum_each_heads_forgetting_and_gain_by_token_kind(world, huber):
    from ssm_mm.data.interleave import AUDIO, TEXT, VIDEO
    from ssm_mm.models.multimodal import MultimodalSSM

    model = MultimodalSSM.from_pretrained(huber).eval()
    ds = StreamDataset(list(read_manifest(world).streams), model.features, model.tokenizer, model.labels)
    w = cs.head_writes(model, ds, 0)
    b = ds.collate([ds[0]])
    j = next(iter(w))
    mixer = model.backbone.blocks[j].mixer
    h = mixer.nheads
    assert set(w) == {k for k, c in enumerate(model.cfg.pattern) if c == "M"}
    assert w[j]["forget"].shape == (h,) and w[j]["gain"].shape == (h, 3) and w[j]["median"].shape == (h, 3)
    assert 11.0 < float(w[j]["seconds"]) <= 12.0
    n = [int((b.kind[0] == k).sum()) for k in (VIDEO, AUDIO, TEXT)]
    assert all(k > 0 for k in n) and bool((w[j]["gain"] > 0).all())  # softplus gains: every token writes
    # medians of positive gains lie between the smallest and the largest mean gain of any kind
    mean = w[j]["gain"] / torch.tensor(n, dtype=torch.float64)
    assert bool((w[j]["median"] > 0).all()) and bool((w[j]["median"] < 10 * mean.max()).all())
    # rows: a head forgetting 1 (summed −A·λ) over 120 s keeps writes for 120 s; 30 over 120 s is left out
    d = {
        "forget": torch.tensor([1.0, 30.0]),
        "gain": torch.tensor([[1.0, 1.0, 2.0], [5.0, 0.0, 0.0]]),
        "median": torch.tensor([[1e-3, 2e-3, 3e-2], [1.0, 0.0, 0.0]]),
        "seconds": torch.tensor(120.0),
    }
    assert cs.head_rows([{2: d}, {2: d}], 60.0) == [
        ["L2 head 0", "120", "25%", "25%", "50%", "1.0e-03 / 2.0e-03 / 3.0e-02"]
    ]
