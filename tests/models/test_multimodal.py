"""MultimodalSSM on real decoded AVWorld streams: parity, save/load, real-time properties, learning."""

import copy
import hashlib
import json
import math

import pytest
import support
import torch
from support import tiny_model_config

from ssm_mm.config import TemporalConfig, load_config
from ssm_mm.data.interleave import TEXT
from ssm_mm.models.multimodal import MultimodalSSM, upgrade_weight_names
from ssm_mm.worlds.avworld import CLASSES

LABELS = ["background"] + [c.name for c in CLASSES]


tiny_cfg = tiny_model_config


def tiny_model(seed=0, **kw) -> MultimodalSSM:
    return support.tiny_model(seed, LABELS, **kw)


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def test_full_equals_windows_equals_steps(make_dataset):
    model = tiny_model()
    full = make_dataset(None).collate([make_dataset(None)[0]])
    ds = make_dataset(2.0)
    windows = ds.windows(0)
    assert len(windows) == 4
    with torch.no_grad():
        y_full = model.forward_batch(full).hidden[0]
        ys, state = [], None
        for w in windows:
            out = model.forward_batch(ds.collate([w]), state)
            ys.append(out.hidden[0])
            state = out.state
        y_win = torch.cat(ys)
        # token by token, through the same forward
        b = full
        ys, state = [], None
        for i in range(b.kind.shape[1]):
            sl = slice(i, i + 1)
            out = model(b.kind[:, sl], b.t[:, sl], b.src[:, sl], None, b.video, b.audio, state)
            ys.append(out.hidden[0])
            state = out.state
        y_step = torch.cat(ys)
    assert y_full.shape == y_win.shape == y_step.shape
    assert rel(y_win, y_full) <= 1e-5
    assert rel(y_step, y_full) <= 1e-5


@pytest.mark.parametrize("kw", [{}, {"pattern": "MAMA", "attn_windows": [5, None]}])
def test_save_load_bit_identical(tmp_path, make_dataset, kw):
    model = tiny_model(**kw)
    batch = make_dataset(None).collate([make_dataset(None)[1]])
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    again = MultimodalSSM.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        a = model.forward_batch(batch).hidden
        b = again.forward_batch(batch).hidden
    assert torch.equal(a, b)
    assert again.labels == LABELS and again.tokenizer.to_dict() == model.tokenizer.to_dict()
    assert again.cfg == model.cfg  # per-layer attention windows included
    with pytest.raises(FileNotFoundError, match="config.json"):
        MultimodalSSM.from_pretrained(tmp_path / "missing")


def test_from_pretrained_accepts_a_training_checkpoint(tmp_path, make_dataset):
    from ssm_mm.training.checkpoint import save_checkpoint

    model = tiny_model(seed=3)
    payload = {"step": 1, "model": model.state_dict(), "model_config": model.config_dict()}
    f = save_checkpoint(payload, tmp_path / "run" / "checkpoints", 1)
    batch = make_dataset(None).collate([make_dataset(None)[0]])
    with torch.no_grad():
        want = model.forward_batch(batch).hidden
        for path in (f, tmp_path / "run", tmp_path / "run" / "checkpoints"):
            got = MultimodalSSM.from_pretrained(path).forward_batch(batch).hidden
            assert torch.equal(got, want), path


def test_bad_config_json_is_refused(tmp_path):
    model = tiny_model()
    d = model.save_pretrained(tmp_path / "m")
    (d / "config.json").write_text(
        (d / "config.json").read_text().replace('"format_version": 2', '"format_version": 99')
    )
    with pytest.raises(ValueError, match="format_version"):
        MultimodalSSM.from_pretrained(d)


def _flip_middle(path, n: int = 8) -> None:
    """Invert ``n`` bytes in the middle of a file (inside the tensor data of a safetensors file, so the
    header still parses and the damage shows only in the values)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + n] = bytes(b ^ 0xFF for b in data[mid : mid + n])
    path.write_bytes(bytes(data))


def test_from_pretrained_verifies_the_recorded_checksum(tmp_path):
    """Reliability case 5: a byte-flipped model.safetensors is refused, naming the file."""
    d = tiny_model().save_pretrained(tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["weights"]["file"] == "model.safetensors"
    assert cfg["weights"]["sha256"] == hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
    MultimodalSSM.from_pretrained(d)  # intact: loads
    _flip_middle(d / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors.*checksum") as err:
        MultimodalSSM.from_pretrained(d)
    assert str(d / "model.safetensors") in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("with_checksum", [True, False])
def test_truncated_weights_give_one_clear_error(tmp_path, with_checksum):
    """Reliability case 6: a truncated model.safetensors (with or without a recorded checksum) raises
    a ValueError naming the file, not safetensors' bare SafetensorError."""
    d = tiny_model().save_pretrained(tmp_path / "m")
    if not with_checksum:
        cfg = json.loads((d / "config.json").read_text())
        del cfg["weights"]
        (d / "config.json").write_text(json.dumps(cfg))
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:3000])
    with pytest.raises(ValueError, match=r"model\.safetensors") as err:
        MultimodalSSM.from_pretrained(d)
    assert str(f) in str(err.value) and "\n" not in str(err.value)


def test_bad_checksum_record_is_refused(tmp_path):
    d = tiny_model().save_pretrained(tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["weights"]["sha256"] = "not a digest"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="weights.sha256"):
        MultimodalSSM.from_pretrained(d)


def test_folder_without_checksum_still_loads_bit_identically(tmp_path, make_dataset):
    """Folders saved before checksums were recorded load as before (the checksum is optional)."""
    model = tiny_model(seed=2)
    d = model.save_pretrained(tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    del cfg["weights"]
    (d / "config.json").write_text(json.dumps(cfg))
    batch = make_dataset(None).collate([make_dataset(None)[0]])
    with torch.no_grad():
        assert torch.equal(
            MultimodalSSM.from_pretrained(d).forward_batch(batch).hidden, model.forward_batch(batch).hidden
        )


def test_shipped_model_is_verified_and_loads_its_exact_weights():
    """The shipped hour model has a checksum in its config.json that matches its (unchanged) weights,
    and from_pretrained gives exactly the tensors stored in the file."""
    from pathlib import Path

    from safetensors.torch import load_file

    d = Path(__file__).resolve().parents[2] / "results" / "avworld" / "1h_scene_count4_speak3" / "model"
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["weights"]["sha256"] == hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
    model = MultimodalSSM.from_pretrained(d)
    assert cfg["format_version"] == 1  # saved before objectives: upgraded on load (heads.<name>.*)
    stored = upgrade_weight_names(load_file(str(d / "model.safetensors")))
    got = model.state_dict()
    assert stored and all(torch.equal(got[k], v) for k, v in stored.items())
    assert "heads.count.weight" in stored and list(model.heads) == [
        "lm", "event", "speak", "video", "count", "order", "attribute"
    ]  # fmt: skip
    assert model.objectives["count"].cfg.max == 7 and len(model.objectives["attribute"].cfg.names) == 11


def _decay_over_one_second(fps: float, time_aware: bool) -> torch.Tensor:
    """How much of an initial SSM state survives 1 s of identical content sampled at ``fps``."""
    torch.manual_seed(0)
    model = MultimodalSSM(
        tiny_cfg(pattern="M", temporal=TemporalConfig(time_aware_dt=time_aware)), labels=LABELS
    )
    mixer = model.backbone.blocks[0].mixer
    u = torch.randn(1, 1, 32).expand(1, int(fps), 32)  # the same token at every frame
    dt = torch.full((1, int(fps)), 1.0 / fps)
    log_decay, _ = mixer._gates(mixer.in_proj(u)[..., -mixer.gate_bias.numel() :], dt)
    return log_decay.sum(1)  # (1, H): total log-decay over the second


def test_same_content_at_4_and_8_fps_decays_the_same_per_second():
    d4 = _decay_over_one_second(4, True)
    d8 = _decay_over_one_second(8, True)
    torch.testing.assert_close(d4, d8, rtol=1e-5, atol=1e-7)
    # plain Mamba-2 decays per token: twice the tokens, twice the decay
    p4 = _decay_over_one_second(4, False)
    p8 = _decay_over_one_second(8, False)
    torch.testing.assert_close(p8, 2 * p4)


@pytest.mark.parametrize("shift", [3 * 3600.0, 1e6])
def test_clock_shift_changes_only_periodic_features(make_dataset, shift):
    batch = make_dataset(None).collate([make_dataset(None)[0]])
    shifted = copy.copy(batch)
    shifted.t = batch.t + shift
    # without periodic features the output must not change at all (gaps are float64 differences)
    model = tiny_model(temporal=TemporalConfig(n_periodic=0))
    with torch.no_grad():
        a = model.forward_batch(batch).hidden
        b = model.forward_batch(shifted).hidden
    assert rel(b, a) <= 1e-6
    # with them, outputs stay finite and the features stay bounded
    model = tiny_model()
    with torch.no_grad():
        h = model.forward_batch(shifted).hidden
        f = model.time_emb.features(shifted.t, torch.full_like(shifted.t, math.inf), shifted.t * 0)
    assert torch.isfinite(h).all() and f.abs().max() <= 1.0 + 1e-6


def test_same_timestamp_tokens_get_gradient(make_dataset):
    batch = make_dataset(None).collate([make_dataset(None)[0]])
    model = tiny_model()
    model.train()
    video = batch.video.clone().requires_grad_(True)
    out = model(batch.kind, batch.t, batch.src, batch.valid, video, batch.audio)
    out.hidden.square().mean().backward()
    # all 4 patches of a frame share its timestamp: each patch region of the last frame gets gradient
    g = video.grad[-1].abs().sum(0)  # (S, S)
    s = g.shape[0] // 2
    for i in range(2):
        for j in range(2):
            assert g[i * s : (i + 1) * s, j * s : (j + 1) * s].sum() > 0


@pytest.mark.parametrize("name", ["default", "baseline_transformer", "baseline_ssm", "baseline_notime"])
def test_shipped_model_configs_build_and_run(name, make_dataset):
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml")
    ref = load_config(Path(__file__).resolve().parents[2] / "configs" / "default.yaml")
    model = MultimodalSSM(cfg.model, cfg.features, LABELS).eval()
    n = model.num_parameters()["total"]
    n_ref = MultimodalSSM(ref.model, ref.features, LABELS).num_parameters()["total"]
    assert abs(n - n_ref) / n_ref <= 0.10, (name, n, n_ref)
    batch = make_dataset(2.0).collate([make_dataset(2.0)[0]])
    with torch.no_grad():
        h = model.forward_batch(batch).hidden
    assert torch.isfinite(h).all()


def test_generate_carries_state_and_stops():
    model = tiny_model()
    state = model.init_state(2)
    ids, new_state, steps = model.generate(state, 12.5, max_tokens=5)
    assert len(ids) == 2 and all(len(x) <= 5 for x in ids)
    assert (new_state.backbone.n_tokens >= 3).all()  # BOT, ROLE, ..., EOT all entered the state
    assert torch.equal(new_state.last_kind_t[:, TEXT], torch.full((2,), 12.5, dtype=torch.float64))
    assert len(steps) >= 1


def test_tiny_model_overfits_a_few_streams(make_dataset):
    ds = make_dataset(None)
    batch = ds.collate([ds[i] for i in range(len(ds))])
    torch.manual_seed(0)
    model = MultimodalSSM(tiny_cfg(d_model=48, headdim=12), labels=LABELS)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = None
    for step in range(60):
        losses = model.losses(model.forward_batch(batch), batch)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        if step == 0:
            first = {k: v.item() for k, v in losses.items()}
            for name, p in model.named_parameters():
                assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
        opt.step()
    last = {k: v.item() for k, v in losses.items()}
    assert last["lm"] < 0.3 * first["lm"] and last["event"] < 0.5 * first["event"], (first, last)
