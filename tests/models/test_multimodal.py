"""MultimodalSSM on real decoded AVWorld streams: parity, save/load, real-time properties, learning."""

import copy
import hashlib
import json
import math

import pytest
import support
import torch
import torch.nn.functional as F
from support import tiny_model_config

from ssm_mm.config import TemporalConfig, load_config
from ssm_mm.worlds.avworld import CLASSES
from ssm_mm.data.dataset import StreamDataset
from ssm_mm.data.featurize import FeaturizerConfig
from ssm_mm.data.interleave import IGNORE_INDEX, TEXT, VIDEO
from ssm_mm.data.manifest import read_manifest
from ssm_mm.data.tokenizer import ByteTokenizer
from ssm_mm.models.multimodal import MultimodalSSM

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
        (d / "config.json").read_text().replace('"format_version": 1', '"format_version": 99')
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
    stored = load_file(str(d / "model.safetensors"))
    got = model.state_dict()
    assert stored and all(torch.equal(got[k], v) for k, v in stored.items())


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


def test_video_targets_follow_the_frontend_patch_order():
    model = tiny_model(video_target=2)
    s = model.features.frame_size
    h = s // 2  # 2x2 patches
    video = torch.zeros(2, 3, s, s)
    video[1, 0, :h, h:] = 1.0  # frame 1: the top-right patch red, ...
    video[1, 2, h + h // 2 :, : h // 2] = 4.0  # ... the bottom-left patch blue in its lower-left quarter
    tgt = model.video_targets(video)
    assert tgt.shape == (2 * 4, 3 * 2 * 2)
    assert tgt[:4].abs().sum() == 0  # frame 0 is empty
    # frame 1: patch 1 (row 0, col 1) = all red; patch 2 (row 1, col 0) = blue in its (1, 0) cell
    assert torch.equal(tgt[5], torch.tensor([1.0] * 4 + [0.0] * 8))
    assert torch.equal(tgt[6], torch.tensor([0.0] * 8 + [0.0, 0.0, 4.0, 0.0]))
    assert tgt[4].abs().sum() == 0 and tgt[7].abs().sum() == 0
    # the token whose embedding a change of one region moves is the token whose target row it moves
    with torch.no_grad():
        for p, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            moved = video.clone()
            moved[0, 1, r * h : (r + 1) * h, c * h : (c + 1) * h] += 0.5
            d_emb = (model.video_in(moved) - model.video_in(video)).flatten(0, 1).abs().sum(-1)
            d_tgt = (model.video_targets(moved) - tgt).abs().sum(-1)
            assert d_emb.nonzero().flatten().tolist() == d_tgt.nonzero().flatten().tolist() == [p]


def test_video_head_trains_and_round_trips(tmp_path, make_dataset):
    ds = make_dataset(None)
    batch = ds.collate([ds[0], ds[1]])
    model = tiny_model(video_target=2).train()
    out = model.forward_batch(batch)
    sums, counts = model.loss_sums(out, batch)
    n_video = int(((batch.kind == VIDEO) & batch.valid).sum())
    assert counts["video"] == n_video > 0 and sums["video"] > 0
    sums["video"].backward()
    assert model.video_head.weight.grad.abs().sum() > 0
    assert model.video_in.stem[0].weight.grad.abs().sum() > 0  # through the backbone to the frontend
    # saved and loaded with its head; a model without one has no video loss (an exact zero)
    model.save_pretrained(tmp_path / "m")
    again = MultimodalSSM.from_pretrained(tmp_path / "m")
    assert again.cfg.video_target == 2 and torch.equal(again.video_head.weight, model.video_head.weight)
    plain = tiny_model()
    s2, c2 = plain.loss_sums(plain.forward_batch(batch), batch)
    assert plain.video_head is None and c2["video"] == 0 and float(s2["video"]) == 0.0
    with pytest.raises(ValueError, match="video_target"):
        tiny_model(video_target=-1)


def test_lm_loss_is_the_weighted_mean_over_answer_weights(make_dataset):
    """``train.loss_answer``: with every weight 1 the LM loss is the plain mean over supervised
    tokens; with weights it is their weighted mean, and a weight of 0 removes those answers."""
    ds = make_dataset(None)
    batch = ds.collate([ds[0], ds[1]])
    model = tiny_model().eval()
    with torch.no_grad():
        out = model.forward_batch(batch)
        sup = batch.lm_target != IGNORE_INDEX
        ce = F.cross_entropy(model.lm_head(out.hidden[sup]).float(), batch.lm_target[sup], reduction="none")
        assert torch.allclose(model.losses(out, batch)["lm"], ce.mean(), atol=1e-6)
        w = torch.rand(sup.shape) * 3
        w[0] = 0.0  # the first window's answers do not count
        batch.lm_weight = w
        sums, counts = model.loss_sums(out, batch)
        assert counts["lm"] == pytest.approx(float(w[sup].sum()), rel=1e-6)
        assert float(sums["lm"]) == pytest.approx(float((ce * w[sup]).sum()), rel=1e-5)
        ce1 = ce[int(sup[0].sum()) :]  # window 1's supervised tokens (boolean indexing is row-major)
        assert len(ce1) > 0
        assert float(model.losses(out, batch)["lm"]) == pytest.approx(
            float((ce1 * w[1][sup[1]]).sum() / w[1][sup[1]].sum()), rel=1e-5
        )


def check_head_trains_and_round_trips(tmp_path, model, batch, name: str, loss, frontend) -> None:
    """The shared half of the auxiliary-head tests: ``loss`` (the head's loss sum, computed by
    ``model.loss_sums``) backpropagates into the head and through the backbone to ``frontend``; a
    save/load round trip keeps the head; a model without the head trains no such loss."""
    loss.backward()
    head = model.loss_heads()[name]
    assert head.weight.grad.abs().sum() > 0
    assert frontend.weight.grad.abs().sum() > 0  # through the backbone to the frontends
    model.save_pretrained(tmp_path / "m")
    again = MultimodalSSM.from_pretrained(tmp_path / "m")
    assert again.cfg == model.cfg and torch.equal(again.loss_heads()[name].weight, head.weight)
    assert again.active_heads() == ["lm", "event", "speak", name]
    plain = tiny_model()
    s2, c2 = plain.loss_sums(plain.forward_batch(batch), batch)
    assert plain.loss_heads()[name] is None and c2[name] == 0 and float(s2[name]) == 0.0
    assert plain.active_heads() == ["lm", "event", "speak"]


def test_count_head_reads_running_counts_and_round_trips(tmp_path, make_dataset):
    ds = make_dataset(None)
    batch = ds.collate([ds[0], ds[1]])
    tv = batch.tick_valid
    assert bool((batch.event_count[~tv] == IGNORE_INDEX).all())
    # the batch's counts are each stream's running counts of its manifest segments
    counts_seen = batch.event_count[tv]
    assert counts_seen.shape[1] == len(LABELS) - 1 and int(counts_seen.max()) >= 1
    assert bool((batch.event_count[:, 1:] >= batch.event_count[:, :-1]).where(tv[:, 1:, None], True).all())
    model = tiny_model(count_head=2).train()
    out = model.forward_batch(batch)
    sums, counts = model.loss_sums(out, batch)
    assert counts["count"] == int(tv.sum()) * (len(LABELS) - 1) and sums["count"] > 0
    # the loss is the cross-entropy of the counts clipped to N = 2
    logits = model.count_logits(model.tick_hidden(out.hidden, batch.summary_pos)[tv])
    target = counts_seen.clamp_max(2)
    manual = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum")
    torch.testing.assert_close(sums["count"], manual)
    check_head_trains_and_round_trips(tmp_path, model, batch, "count", sums["count"], model.audio_in.proj[0])
    with pytest.raises(ValueError, match="count_head"):
        tiny_model(count_head=-1)


def test_order_head_reads_first_occurrence_ranks_and_round_trips(tmp_path, make_dataset):
    ds = make_dataset(2.0)  # 2-s windows: later windows keep the ranks of labels begun before them
    batch = ds.collate([ds[1], ds[3], ds[6]])
    tv = batch.tick_valid
    C = len(LABELS) - 1
    assert bool((batch.first_rank[~tv] == IGNORE_INDEX).all())
    ranks = batch.first_rank[tv]
    assert int(ranks.min()) == 0 and int(ranks.max()) <= C
    # a label has a rank exactly when it has begun (the count head's running count is > 0)
    assert torch.equal(ranks < C, batch.event_count[tv] > 0)
    model = tiny_model(order_head=True).train()
    out = model.forward_batch(batch)
    sums, counts = model.loss_sums(out, batch)
    assert counts["order"] == int(tv.sum()) * C and sums["order"] > 0
    logits = model.order_logits(model.tick_hidden(out.hidden, batch.summary_pos)[tv])
    assert logits.shape == (int(tv.sum()), C, C + 1)
    manual = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ranks.flatten(), reduction="sum")
    torch.testing.assert_close(sums["order"], manual)
    check_head_trains_and_round_trips(tmp_path, model, batch, "order", sums["order"], model.audio_in.proj[0])


def test_recall_head_reads_past_frames_and_round_trips(tmp_path, make_dataset):
    ds = make_dataset(2.0)  # 2-s windows: later windows recall frames from before them
    batch = ds.collate([ds[1], ds[3], ds[6]])
    tv = batch.tick_valid
    index = batch.recall_index
    assert bool((index[~tv] == -1).all()) and int((index >= 0).sum()) > 0
    model = tiny_model(recall_head=2).train()
    out = model.forward_batch(batch)
    sums, counts = model.loss_sums(out, batch)
    seen = index[tv] >= 0
    assert counts["recall"] == int(seen.sum()) and sums["recall"] > 0
    # the loss: squared error against each recalled frame pooled to 2 x 2 x 3, averaged per item
    th = model.tick_hidden(out.hidden, batch.summary_pos)[tv]
    pred = model.recall_logits(th)[seen]
    frames = batch.recall_video[index[tv][seen]]  # (n, 3, 64, 64)
    quadrants = frames.unflatten(-1, (2, 32)).unflatten(-3, (2, 32))  # (n, 3, 2, 32, 2, 32)
    target = quadrants.mean((-1, -3)).flatten(1)  # (n, 3 * 2 * 2): channel, row, column
    torch.testing.assert_close(sums["recall"], (pred - target).pow(2).mean(-1).sum(), rtol=1e-5, atol=0)
    frontend = model.video_in.stem[0]
    check_head_trains_and_round_trips(tmp_path, model, batch, "recall", sums["recall"], frontend)
    for bad in (-1, 65):
        with pytest.raises(ValueError, match="recall_head"):
            tiny_model(recall_head=bad)


def test_attribute_head_reads_each_events_colour_and_round_trips(tmp_path, avworld_manifest):
    values = ["blue", "cyan", "green", "purple", "red", "yellow"]
    manifest = read_manifest(avworld_manifest)
    ds = StreamDataset(
        manifest, FeaturizerConfig(), ByteTokenizer(), LABELS, window_seconds=2.0,
        recall_attributes=["color"], recall_values=values,
    )  # fmt: skip
    batch = ds.collate([ds[1], ds[3], ds[6]])
    tv = batch.tick_valid
    target = batch.recall_value
    assert bool((target[~tv] == IGNORE_INDEX).all()) and int((target >= 0).sum()) > 0
    # (each target against the manifest: test_attribute_head_reads_several_attributes, "color" among them)
    model = tiny_model(recall_attribute="color", recall_values=values).train()
    assert model.attribute_head.out_features == (len(LABELS) - 1) * len(values)  # the one-attribute layout
    out = model.forward_batch(batch)
    sums, counts = model.loss_sums(out, batch)
    known = target[tv] >= 0
    assert counts["attribute"] == int(known.sum()) and sums["attribute"] > 0
    logits = model.attribute_logits(model.tick_hidden(out.hidden, batch.summary_pos)[tv])  # (T, C, 1, V)
    assert logits.shape[1:] == (len(LABELS) - 1, 1, len(values))
    manual = torch.nn.functional.cross_entropy(logits[known], target[tv][known], reduction="sum")
    torch.testing.assert_close(sums["attribute"], manual)
    check_head_trains_and_round_trips(
        tmp_path, model, batch, "attribute", sums["attribute"], model.video_in.stem[0]
    )
    assert MultimodalSSM.from_pretrained(tmp_path / "m").cfg.recall_values == values
    with pytest.raises(ValueError, match="recall_values"):
        tiny_model(recall_attribute="color")
    with pytest.raises(ValueError, match="recall_values"):
        StreamDataset(manifest, FeaturizerConfig(), ByteTokenizer(), LABELS, recall_attributes=["color"])
    with pytest.raises(TypeError, match="recall_attributes"):
        StreamDataset(manifest, FeaturizerConfig(), ByteTokenizer(), LABELS, recall_attributes="color")
    with pytest.raises(ValueError, match="distinct"):
        tiny_model(recall_attribute="color", recall_attributes=["color"], recall_values=values)


def test_attribute_head_reads_several_attributes(tmp_path, avworld_manifest):
    """recall_attributes: one head, (C, A, V) logits over the shared values, each (tick, label,
    attribute) with a known value one cross-entropy item; AVWorld segments carry the look of every
    shape on screen throughout them (color_of_<kind>, shape_of_<colour>)."""
    manifest = read_manifest(avworld_manifest)
    names = ["color", "color_of_triangle", "shape_of_blue"]
    values = ["blue", "circle", "cross", "cyan", "green", "purple", "red", "square", "triangle", "yellow"]
    ds = StreamDataset(
        manifest, FeaturizerConfig(), ByteTokenizer(), LABELS, window_seconds=2.0,
        recall_attributes=names, recall_values=values,
    )  # fmt: skip
    items = [ds[i] for i in range(len(ds))]
    batch = ds.collate(items)
    tv, target = batch.tick_valid, batch.recall_value  # (B, K, C, A)
    assert target.shape[-1] == len(names) and bool((target[~tv] == IGNORE_INDEX).all())
    for r, w in enumerate(items):  # each attribute of each label's last finished segment, or unknown
        spec = manifest.streams[w.stream_index]
        for j in range(w.tick_end - w.tick_start):
            if not tv[r, j]:
                continue
            end = (w.tick_start + j + 1) * ds.cfg.tick_seconds
            for c, name in enumerate(LABELS[1:]):
                over = [g for g in spec.segments if g.label == name and g.end <= end + 1e-9]
                last = max(over, key=lambda g: (g.end, g.start)) if over else None
                for a, attr in enumerate(names):
                    v = last.attributes.get(attr) if last else None
                    assert target[r, j, c, a].item() == (values.index(v) if v else IGNORE_INDEX)
    known = target[tv] >= 0  # (T, C, A)
    assert all(int(known[..., a].sum()) > 0 for a in range(len(names)))  # every attribute is supervised
    model = tiny_model(recall_attributes=names, recall_values=values).train()
    out = model.forward_batch(batch)
    sums, counts = model.loss_sums(out, batch)
    logits = model.attribute_logits(model.tick_hidden(out.hidden, batch.summary_pos)[tv])
    assert logits.shape[1:] == (len(LABELS) - 1, len(names), len(values))
    assert counts["attribute"] == int(known.sum())
    manual = torch.nn.functional.cross_entropy(logits[known], target[tv][known], reduction="sum")
    torch.testing.assert_close(sums["attribute"], manual)
    model.save_pretrained(tmp_path / "m")
    again = MultimodalSSM.from_pretrained(tmp_path / "m")
    assert again.attribute_names == names and again.cfg.recall_values == values
