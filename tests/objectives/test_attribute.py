"""The attribute objective: named segment attributes of each event label's last segment, as classes
over one shared vocabulary (filled from the training streams)."""

import pytest
import torch
from objective_helpers import LABELS, check_head_trains_and_round_trips, tiny_model

from ssm_mm.config import ConfigError, load_config
from ssm_mm.data.interleave import IGNORE_INDEX
from ssm_mm.data.manifest import read_manifest
from ssm_mm.models.multimodal import MultimodalSSM
from ssm_mm.objectives import Attribute, AttributeConfig

VALUES = ["blue", "circle", "cross", "cyan", "green", "purple", "red", "square", "triangle", "yellow"]


def test_attribute_head_reads_each_events_colour_and_round_trips(tmp_path, make_dataset):
    colours = ["blue", "cyan", "green", "purple", "red", "yellow"]
    cfg = AttributeConfig(names=["color"], values=colours)
    ds = make_dataset(2.0, {"attribute": cfg})
    batch = ds.collate([ds[1], ds[3], ds[6]])
    tv, target = batch.tick_valid, batch.targets["attribute"]
    assert bool((target[~tv] == IGNORE_INDEX).all()) and int((target >= 0).sum()) > 0
    model = tiny_model(objectives={"attribute": cfg}).train()
    assert model.heads["attribute"].out_features == (len(LABELS) - 1) * len(colours)  # one attribute
    out = model.forward_batch(batch)
    sums, counts = model.loss_sums(out, batch)
    known = target[tv] >= 0
    assert counts["attribute"] == int(known.sum()) and sums["attribute"] > 0
    r = model.readout(out, batch)
    logits = model.objectives["attribute"].logits(model.heads["attribute"], r.ticks)  # (T, C, 1, V)
    assert logits.shape[1:] == (len(LABELS) - 1, 1, len(colours))
    manual = torch.nn.functional.cross_entropy(logits[known], target[tv][known], reduction="sum")
    torch.testing.assert_close(sums["attribute"], manual)
    part = model.objectives["attribute"].metric(model.heads["attribute"], r, batch)
    m = model.objectives["attribute"].summarize([part])
    assert m["attribute_accuracy"] == pytest.approx(
        float((logits.argmax(-1)[known] == target[tv][known]).float().mean())
    )
    assert 0 < m["attribute_majority"] <= 1
    check_head_trains_and_round_trips(
        tmp_path, model, batch, "attribute", sums["attribute"], model.video_in.stem[0]
    )
    assert MultimodalSSM.from_pretrained(tmp_path / "m").objectives["attribute"].cfg.values == colours
    with pytest.raises(ValueError, match="needs objectives.attribute.values"):
        tiny_model(objectives={"attribute": AttributeConfig(names=["color"])})


def test_attribute_head_reads_several_attributes(make_dataset, avworld_manifest):
    """One head, (C, A, V) logits over the shared values, each (tick, label, attribute) with a known
    value one cross-entropy item; AVWorld segments carry the look of every shape on screen throughout
    them (color_of_<kind>, shape_of_<colour>)."""
    manifest = read_manifest(avworld_manifest)
    names = ["color", "color_of_triangle", "shape_of_blue"]
    cfg = AttributeConfig(names=names, values=VALUES)
    ds = make_dataset(2.0, {"attribute": cfg})
    items = [ds[i] for i in range(len(ds))]
    batch = ds.collate(items)
    tv, target = batch.tick_valid, batch.targets["attribute"]  # (B, K, C, A)
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
                    assert target[r, j, c, a].item() == (VALUES.index(v) if v else IGNORE_INDEX)
    known = target[tv] >= 0  # (T, C, A)
    assert all(int(known[..., a].sum()) > 0 for a in range(len(names)))  # every attribute is supervised
    model = tiny_model(objectives={"attribute": cfg}).train()
    sums, counts = model.loss_sums(model.forward_batch(batch), batch)
    assert counts["attribute"] == int(known.sum()) and sums["attribute"] > 0


def test_focal_attribute_loss_weighs_each_item_by_how_wrong_the_head_is(make_dataset):
    """focal=γ: each known item's cross-entropy times (1 − p)^γ, gradients included; 0 is plain."""
    colours = ["blue", "cyan", "green", "purple", "red", "yellow"]
    ds = make_dataset(2.0, {"attribute": AttributeConfig(names=["color"], values=colours)})
    batch = ds.collate([ds[1], ds[3], ds[6]])
    tv, target = batch.tick_valid, batch.targets["attribute"]
    known = target[tv] >= 0
    sums = {}
    for gamma in (0.0, 2.0):
        torch.manual_seed(0)
        cfg = AttributeConfig(names=["color"], values=colours, focal=gamma)
        model = tiny_model(objectives={"attribute": cfg}).train()
        out = model.forward_batch(batch)
        sums[gamma] = model.loss_sums(out, batch)[0]["attribute"]
        logits = model.objectives["attribute"].logits(
            model.heads["attribute"], model.readout(out, batch).ticks
        )
        logp = logits[known].float().log_softmax(-1).gather(-1, target[tv][known][:, None])[:, 0]
        manual = -(((1 - logp.exp()) ** gamma) * logp).sum()
        torch.testing.assert_close(sums[gamma], manual)
        head = model.heads["attribute"].weight
        (g_fast,) = torch.autograd.grad(sums[gamma], head, retain_graph=True)
        (g_manual,) = torch.autograd.grad(manual, head)
        torch.testing.assert_close(g_fast, g_manual)
    assert 0 < sums[2.0] < sums[0.0]  # the same weights (seed 0): every item weighs less than 1
    with pytest.raises(ConfigError, match="objectives.attribute.focal"):
        load_config(None, ["objectives.attribute.names=[color]", "objectives.attribute.focal=-1"])


def test_attribute_config_prepare_and_checks(avworld_manifest):
    streams = read_manifest(avworld_manifest).streams
    cfg = AttributeConfig(names=["color", "shape"])
    Attribute.prepare(cfg, streams, "m.jsonl")  # the values of the training streams, sorted
    have = {
        v for s in streams for g in s.segments for k, v in g.attributes.items() if k in ("color", "shape")
    }
    assert cfg.values == sorted(have)
    with pytest.raises(ValueError, match=r"\['nope'\]: no segment of the training streams \(m.jsonl\)"):
        Attribute.prepare(AttributeConfig(names=["color", "nope"]), streams, "m.jsonl")
    with pytest.raises(ConfigError, match="distinct"):
        load_config(None, ["objectives.attribute.names=[color, color]"])
    with pytest.raises(ConfigError, match="non-empty list"):
        load_config(None, ["objectives.attribute.weight=2"])  # turned on without names
