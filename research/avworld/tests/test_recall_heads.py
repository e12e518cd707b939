"""recall_heads.py: the recall heads scored by the age of the memory they are asked for; bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from probe_support import load_script
from support import tiny_model

from ssm_mm.data.dataset import StreamDataset
from ssm_mm.data.manifest import read_manifest
from ssm_mm.models.multimodal import MultimodalSSM
from ssm_mm.worlds.avworld import CLASSES, COLORS

rh = load_script("recall_heads")
LABELS = ["background"] + [c.name for c in CLASSES[:4]]
VALUES = sorted(COLORS)


@pytest.fixture(scope="module")
def both_heads(tmp_path_factory):
    out = tmp_path_factory.mktemp("recall_model") / "m"
    objectives = {"attribute": {"names": ["color"], "values": VALUES}, "recall": {"size": 2}}
    tiny_model(labels=LABELS, objectives=objectives).save_pretrained(out)
    return out


def test_every_item_is_scored_once_by_age(world, both_heads, tmp_path, capsys):
    out = tmp_path / "r.json"
    args = [str(both_heads), "--manifest", str(world), "--ages", "1,3", "--out", str(out), "--by-attribute"]
    assert rh.main(args) == 0
    res = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "attribute head (color)" in printed and "recall head" in printed and "≥ 3 s" in printed
    # "color" is always the event's own shape: every known item in its row, none about another shape
    (by_name,) = res["attribute"]["by_name"]
    assert by_name["name"] == "color" and by_name["other"] == 0 and "| color |" in printed
    # the items: every (tick with media, label that has happened) of every stream, counted independently
    man = read_manifest(world)
    model = MultimodalSSM.from_pretrained(both_heads)
    ds = StreamDataset(man, model.features, model.tokenizer, LABELS, objectives=model.objectives)
    n_known = n_seen = 0
    for s in range(len(man.streams)):
        b = ds.collate([ds[s]])
        n_known += int((b.targets["attribute"] >= 0).sum())
        n_seen += int(((b.targets["recall"] >= 0) & b.tick_valid[..., None]).sum())
    att, rec = res["attribute"]["rows"], res["recall"]["rows"]
    assert [r["age"] for r in att] == ["0–1 s", "1–3 s", "≥ 3 s"] and res["attribute"]["values"] == VALUES
    assert sum(r["n"] for r in att) == n_known > 0 and sum(r["n"] for r in rec) == n_seen == n_known
    assert by_name["own"] == n_known and by_name["own_right"] == sum(r["right"] for r in att)
    for r in att:
        assert 0 <= r["right"] <= r["n"] and (r["n"] == 0 or r["majority"] >= r["n"] / len(VALUES))
    for r in rec:  # the label-mean floor is never above the overall-mean floor
        assert r["n"] == 0 or r["label_mean"] <= r["overall_mean"] + 1e-9


def test_scores_on_planted_items():
    age = np.array([0.5, 0.5, 2.0, 2.0, 2.0, 7.0, -1.0 + 1.5])
    items = {
        "value_age": age,  # one (tick, label, attribute) item each
        "label": np.array([0, 1, 0, 1, 1, 0, 1]),
        "value": np.array([2, 2, 1, 1, -1, 3, 0]),  # -1: unknown, left out
        "pred": np.array([2, 0, 1, 1, 1, 0, 0]),
    }
    rows = rh.attribute_rows(items, rh.parse_ages("1,3"))
    assert [(r["n"], r["right"], r["majority"]) for r in rows] == [(3, 2, 2), (2, 2, 2), (1, 0, 1)]
    frame = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # label 0 always [1, 0], label 1 [0, 1]
    items = {
        "age": np.array([0.5, 0.5, 5.0]),
        "label": np.array([0, 1, 0]),
        "frame": frame,
        "frame_pred": frame,
    }
    rows = rh.recall_rows(items, rh.parse_ages("1"))
    assert rows[0]["head"] == 0.0 and rows[0]["label_mean"] == 0.0 and rows[0]["overall_mean"] > 0
    assert rows[1]["n"] == 1 and rows[1]["overall_mean"] == pytest.approx(
        ((1 - 2 / 3) ** 2 + (1 / 3) ** 2) / 2
    )


def test_attributes_split_by_own_shape():
    names = ["color", "color_of_circle", "color_of_square", "shape_of_red"]
    values = ["blue", "circle", "red", "square"]
    labels = ["background", "bell", "buzz"]  # the bell's shape is the circle, the buzz's the square
    items = {  # (label, attribute name, value, prediction) per item; value -1: unknown, left out
        "value_label": np.array([0, 0, 0, 0, 1, 1, 0, 1]),  # event classes: 0 the bell, 1 the buzz
        "value_name": np.array([0, 1, 2, 3, 1, 3, 2, 2]),
        "value": np.array([2, 2, 0, 1, 0, 3, -1, 0]),
        "pred": np.array([2, 0, 0, 1, 0, 1, 0, 0]),
    }
    own = rh.own_shape_items(items, names, values, labels)
    rows = {r["name"]: r for r in rh.attribute_name_rows(items, own, names)}
    assert rows["color"] == {"name": "color", "own": 1, "own_right": 1, "other": 0, "other_right": 0}
    # the bell's circle is its own shape (wrong), the buzz asked about the circle is another (right)
    assert (rows["color_of_circle"]["own"], rows["color_of_circle"]["own_right"]) == (1, 0)
    assert (rows["color_of_circle"]["other"], rows["color_of_circle"]["other_right"]) == (1, 1)
    # the square at a bell: another shape (right); at a buzz: its own (right); one unknown, left out
    sq = rows["color_of_square"]
    assert (sq["own"], sq["own_right"], sq["other"], sq["other_right"]) == (1, 1, 1, 1)
    # shape_of_red is the circle at a bell (its own, right) and the square at a buzz (its own, wrong)
    red = rows["shape_of_red"]
    assert (red["own"], red["own_right"], red["other"]) == (2, 1, 0)
    # by age: "color" is left out of the sums; ages 0.5 for the first four items, 5 for the rest
    items["value_age"] = np.array([0.5, 0.5, 0.5, 0.5, 5.0, 5.0, 5.0, 5.0])
    young, old = rh.scene_age_rows(items, own, names, rh.parse_ages("1"))
    assert (young["own"], young["own_right"], young["other"], young["other_right"]) == (2, 1, 1, 1)
    assert (old["own"], old["own_right"], old["other"], old["other_right"]) == (2, 1, 1, 1)


@pytest.mark.parametrize(
    "case, words",
    [
        ("no_heads", "neither a recall head"),
        ("missing", "no such file"),
        ("ages_order", "positive and increasing"),
        ("ages_text", "comma-separated"),
        ("no_attribute", "no segment has the attribute(s) ['color']"),
    ],
)
def test_bad_input_names_what_is_wrong(world, both_heads, model_dir, tmp_path, capsys, case, words):
    model, manifest, extra = str(both_heads), str(world), []
    if case == "no_heads":
        model = str(model_dir)
    elif case == "missing":
        manifest = str(tmp_path / "nope.jsonl")
    elif case == "ages_order":
        extra = ["--ages", "3,1"]
    elif case == "ages_text":
        extra = ["--ages", "one,two"]
    elif case == "no_attribute":
        lines = [json.loads(x) for x in world.read_text().splitlines()]
        for obj in lines:
            obj["video"] = str(world.parent / obj["video"])
            for g in obj["segments"]:
                g.pop("attributes", None)
        manifest = str(tmp_path / "plain.jsonl")
        (tmp_path / "plain.jsonl").write_text("".join(json.dumps(o) + "\n" for o in lines))
    assert rh.main([model, "--manifest", manifest, *extra]) == 2
    err = capsys.readouterr().err
    assert words in err and err.startswith("recall_heads.py:")
