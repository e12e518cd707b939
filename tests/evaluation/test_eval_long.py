"""Long streams (issue 31): streams joined end to end on one clock, the long-stream datasets of a
manifest, scores by stream age, the lengths summary and eval/state_norms.py."""

import json
import math

import numpy as np
import pytest
import torch
from eval_helpers import load_eval_script, tiny_model

from ssm_mm.config import ConfigError, load_config
from ssm_mm.data.manifest import Segment, StreamSpec, Turn, read_manifest
from ssm_mm.evaluation.long import age_metrics, concat_specs, lengths_summary, piece_plan, type_matched_qa
from ssm_mm.evaluation.report import format_lengths
from ssm_mm.evaluation.suite import length_datasets, load_dataset
from ssm_mm.evaluation.tasks import StreamScore, stream_tasks
from ssm_mm.streaming.drive import Question, StreamMedia, concat_media, drive

SR = 16000


def media(seconds: float, fps: float = 4.0, first: float = 0.0, size: int = 64, seed: int = 0, audio=True):
    """Synthetic media on a clock starting at 0: frames at ``first + k/fps`` before ``seconds``, and
    ``seconds`` of noise at 16 kHz."""
    g = torch.Generator().manual_seed(seed)
    times = np.arange(first, seconds - 1e-9, 1 / fps)
    frames = torch.randint(0, 256, (len(times), size, size, 3), generator=g, dtype=torch.uint8)
    samples = 0.1 * torch.randn(round(seconds * SR), generator=g) if audio else torch.zeros(0)
    return StreamMedia(0.0, frames, times.astype(np.float64), samples, SR, 0.0, True, audio)


def test_concat_media_places_pieces_on_one_clock():
    a = media(4.0, seed=1)
    b = media(3.0, seed=2, size=32)  # another frame size: resized to the first piece's
    b.samples = b.samples[: 2 * SR]  # audio shorter than the piece: padded with silence
    c = media(2.0, seed=3)
    c.samples = torch.randn(3 * 22050)  # another rate, and longer than the piece: resampled and cut
    c.sample_rate = 22050
    m = concat_media([(a, 4.0), (b, 3.0), (c, 2.0)], t0=100.0)
    assert m.t0 == m.audio_t0 == 100.0 and m.modalities == ("video", "audio")
    assert np.all(np.diff(m.frame_times) > 0)  # strictly ordered across the joins
    assert np.allclose(
        m.frame_times, 100.0 + np.concatenate([a.frame_times, 4 + b.frame_times, 7 + c.frame_times])
    )
    assert m.frames.shape == (16 + 12 + 8, 64, 64, 3)
    assert torch.equal(m.frames[:16], a.frames)
    assert m.samples.shape[0] == 9 * SR and m.sample_rate == SR
    assert torch.equal(m.samples[: 4 * SR], a.samples)
    assert torch.equal(m.samples[4 * SR : 6 * SR], b.samples) and not m.samples[6 * SR : 7 * SR].any()
    assert m.samples[7 * SR :].abs().sum() > 0
    # a piece is cut at its length; a piece without audio gives silence
    m = concat_media([(a, 2.5), (media(1.0, audio=False), 1.0)])
    assert m.frame_times.max() < 3.5 and np.sum(m.frame_times < 2.5) == 10
    assert m.samples.shape[0] == 3.5 * SR and not m.samples[int(2.5 * SR) :].any()
    with pytest.raises(ValueError, match="positive"):
        concat_media([(a, 0.0)])
    with pytest.raises(ValueError, match="no pieces"):
        concat_media([])


def test_concat_specs_shift_dialogue_and_segments():
    def spec(sid, d, t):
        return StreamSpec(
            sid,
            None,
            None,
            False,
            d,
            t0=5.0 if sid == "a" else 9.0,
            dialogue=[Turn(t, "user", "what?", "now"), Turn(t, "assistant", "red")],
            segments=[Segment(t, t + 1.0, "bell")],
        )

    a, b = spec("a", 4.0, 1.2), spec("b", 3.0, 0.7)
    s = concat_specs([a, b, a], "long")
    assert s.duration == 11.0 and s.t0 == 5.0 and s.extra["pieces"] == ["a", "b", "a"]
    assert [t.t for t in s.dialogue] == [1.2, 1.2, 4.7, 4.7, 8.2, 8.2]
    assert [(g.start, g.end) for g in s.segments] == [(1.2, 2.2), (4.7, 5.7), (8.2, 9.2)]
    labels = ["background", "bell"]
    parts = [stream_tasks(x, labels, 0.5).tick_labels for x in (a, b, a)]
    assert torch.equal(stream_tasks(s, labels, 0.5).tick_labels, torch.cat(parts))
    assert piece_plan(3, [4.0, 3.0, 5.0], 10.0, 2) == [[0, 1, 2], [0, 1, 2]]
    assert piece_plan(2, [6.0, 6.0], 12.0, 3) == [[0, 1], [0, 1], [0, 1]]


def test_a_joined_stream_is_its_pieces_with_the_state_carried():
    """One session through the join == the first piece alone, then a session resumed from the state at
    the join fed the second piece (labels, answers)."""
    model = tiny_model(3)
    p1 = media(4.0, seed=1, audio=False)
    p2 = media(3.0, first=0.05, seed=2, audio=False)  # no frame exactly on the join (it would be tick 7's)
    joined = concat_media([(p1, 4.0), (p2, 3.0)])
    qs = [Question(1.2, "what is on screen now?"), Question(4.7, "what colour is it?")]
    snap = {}

    def at_join(*_):
        if "state" not in snap and s.time >= 4.0:
            snap["state"] = s.state_dict()

    s = model.stream(modalities=("video",), auto_step=False)
    whole = drive(s, joined, qs, on_round=at_join)
    first = drive(model.stream(modalities=("video",), auto_step=False), p1, qs[:1])
    rest_media = concat_media([(p2, 3.0)], t0=4.0)
    rest = drive(model.stream(state=snap["state"], auto_step=False), rest_media, [Question(4.7, qs[1].text)])

    def lab(r):
        return [(x.tick, x.index, round(x.score, 5)) for x in r.labels]

    assert len(whole.labels) == 14
    assert lab(whole)[:8] == lab(first) and lab(whole)[8:] == lab(rest)
    assert [a.answer for a in whole.answers] == [first.answers[0].answer, rest.answers[0].answer]
    assert whole.answers[1].asked_at == rest.answers[0].asked_at == 5.0


def test_length_datasets_of_a_manifest_join_its_streams(world, tmp_path):
    base = load_dataset(world[1], name="val")
    cfg = load_config(None, [f"data.manifest={world[1]}", "eval.lengths=[1,3,2]", "eval.long_streams=3"])
    long = length_datasets(cfg, base, None)
    assert [d.name for d in long] == ["val@2T", "val@3T"] and base.unit_seconds == 6.0 and base.length == 1
    two, three = long
    assert [s.duration for s in three.specs] == [18.0] * 3 and two.base == "val" and three.length == 3
    ids = [s.id for s in base.specs]
    assert [[p.id for p in ps] for ps in two.pieces] == [ids, ids, ids]
    assert [s.t0 for s in three.specs] == [base.specs[0].t0, base.specs[1].t0, base.specs[0].t0]
    with pytest.raises(ConfigError, match="eval.lengths"):
        load_config(None, ["eval.lengths=[0.5,1]"])
    with pytest.raises(ConfigError, match="eval.long_streams"):
        load_config(None, ["eval.long_streams=0"])


def _score(pred, true, qa=(), refs=()):
    return StreamScore(
        "s",
        torch.tensor(pred),
        torch.tensor(true),
        torch.zeros(0),
        torch.zeros(0),
        0,
        qa=[{"t": t, "correct": c, "type": ty} for t, c, ty in qa],
        references=[{"t": t, "matched": m} for t, m in refs],
    )


def test_age_metrics_bin_by_media_time():
    a = _score([1, 1, 0, 0, 2, 2], [1, 1, 1, 0, 0, 2], qa=[(0.4, True, "now"), (2.9, False, "count")])
    b = _score([0, 0], [0, 1], qa=[(1.0, False, "now")], refs=[(0.2, True), (2.5, False), (2.7, True)])
    age = age_metrics([a, b], 0.5, 1.0)  # 6 ticks of 0.5 s -> 3 bins of 1 s
    assert age["start"] == [0.0, 1.0, 2.0] and age["n_ticks"] == [4, 2, 2]
    assert age["tick_accuracy"] == [0.75, 0.5, 0.5]
    assert age["n_qa"] == [1, 1, 1] and age["qa_accuracy"] == [1.0, 0.0, 0.0]
    assert age["qa_per_type"]["now"][:2] == [1.0, 0.0] and math.isnan(age["qa_per_type"]["now"][2])
    assert age["n_references"] == [1, 0, 2] and age["proactive_recall"][0] == 1.0
    assert math.isnan(age["proactive_recall"][1]) and age["proactive_recall"][2] == 0.5


def test_age_plot_splits_the_longest_datasets_qa_by_type(tmp_path, monkeypatch):
    from ssm_mm.evaluation import report

    saved, real_save = {}, report.save_figure

    def keep(fig, path):
        saved["fig"] = fig
        return real_save(fig, path)

    monkeypatch.setattr(report, "save_figure", keep)
    a = _score([1, 1, 0, 0, 2, 2], [1, 1, 1, 0, 0, 2], qa=[(0.4, True, "now"), (2.9, False, "count")])
    short, long = age_metrics([a], 0.5, 3.0), age_metrics([a], 0.5, 1.0)
    assert report.plot_age(tmp_path / "a.png", "m", {"val": short, "val@10T": long}).is_file()
    axes = saved.pop("fig").axes
    assert len(axes) == 4 and "val@10T" in axes[3].get_title()
    assert sorted(line.get_label() for line in axes[3].get_lines()) == ["count", "now"]
    assert [len(line.get_xdata()) for line in axes[3].get_lines()] == [3, 3]  # the longest set's 3 bins
    no_qa = {k: v for k, v in long.items() if k != "qa_per_type"}
    report.plot_age(tmp_path / "b.png", "m", {"val": no_qa})
    assert len(saved.pop("fig").axes) == 3


def test_lengths_summary_and_table():
    def metrics(tick, qa):
        return {"events": {"tick_accuracy": tick, "macro_f1": tick}, "qa": {"accuracy": qa}, "proactive": {}}

    results = [
        {"model": "m", "dataset": "val", "metrics": metrics(0.8, 0.5)},
        {"model": "m", "dataset": "val@10T", "metrics": metrics(0.6, 0.1)},
    ]
    groups = {"val": {"seconds": 30.0, "multiples": [1.0, 10.0], "datasets": ["val", "val@10T"]}}
    out = lengths_summary(results, groups)["val"]["models"]["m"]
    assert out["tick_accuracy"] == [0.8, 0.6] and out["fraction"]["tick_accuracy"] == pytest.approx(
        [1.0, 0.75]
    )
    assert out["fraction"]["qa_accuracy"] == pytest.approx([1.0, 0.2])
    assert math.isnan(out["proactive_f1"][0]) and math.isnan(out["fraction"]["proactive_f1"][1])
    table = format_lengths(lengths_summary(results, groups))
    row = next(line for line in table.splitlines() if "val@10T" in line)
    assert "10T = 300 s" in row and row.split()[-6:] == ["0.75", "0.75", "0.20", "-", "-", "-"]
    assert format_lengths(lengths_summary(results[:1], {"val": {**groups["val"], "multiples": [1.0]}})) == ""


def test_type_matched_qa_weighs_by_the_reference_mix():
    def qa(**types):
        n = sum(c for _, c in types.values())
        acc = sum(a * c for a, c in types.values()) / n
        return {
            "qa": {"accuracy": acc, "per_type": {t: {"accuracy": a, "n": c} for t, (a, c) in types.items()}}
        }

    short = qa(request=(1.0, 10), count=(0.5, 10))  # 75%
    long = qa(request=(1.0, 10), count=(0.5, 90), color=(0.0, 50))  # 37%: more counts, a new type
    # the long stream with the short one's mix: half requests, half counts, colour left out
    assert type_matched_qa(long, short) == pytest.approx(0.75)
    assert type_matched_qa(short, short) == pytest.approx(short["qa"]["accuracy"])
    assert math.isnan(type_matched_qa(qa(color=(1.0, 3)), short)) and math.isnan(type_matched_qa({}, short))
    results = [
        {"model": "m", "dataset": "val", "metrics": short},
        {"model": "m", "dataset": "val@10T", "metrics": long},
    ]
    groups = {"val": {"seconds": 30.0, "multiples": [1.0, 10.0], "datasets": ["val", "val@10T"]}}
    out = lengths_summary(results, groups)["val"]["models"]["m"]
    assert out["fraction"]["qa_accuracy"][1] == pytest.approx((55 / 150) / 0.75)
    assert (
        out["qa_type_matched"] == pytest.approx([0.75, 0.75]) and out["fraction"]["qa_type_matched"][1] == 1.0
    )


def test_state_norms_of_a_tiny_model(world, tmp_path, capsys):
    model = tiny_model(1)
    model.save_pretrained(tmp_path / "model")
    sn = load_eval_script("state_norms")
    argv = [str(tmp_path / "model"), "--manifest", str(world[1]), "--seconds", "9", "--every", "3"]
    res = sn.run([*argv, "--out", str(tmp_path / "out")])
    assert [x["t"] for x in res["samples"]] == [3.0, 6.0, 9.0]
    assert (
        res["stream"]["ids"] == [s.id for s in read_manifest(world[1]).streams]
        and res["stream"]["seconds"] == 9
    )
    for x in res["samples"]:  # pattern MMA: SSM layers 0 and 1, an attention cache at layer 2
        assert list(x["ssm"]) == [0, 1] and list(x["attn"]) == [2]
        for v in x["ssm"].values():
            assert len(v["heads"]) == 64 // 8 and max(v["heads"]) == v["head_max"] > 0
            assert v["head_median"] <= v["head_max"] <= v["norm"] + 1e-6
            assert v["norm"] == pytest.approx(math.sqrt(sum(h * h for h in v["heads"])), rel=1e-5)
        assert 0 < x["attn"][2]["tokens"] <= 15 and x["attn"][2]["bytes"] > 0  # window 16: 15 cached
    saved = json.loads((tmp_path / "out" / "state_norms.json").read_text())
    assert saved["samples"][-1]["ssm"]["0"]["norm"] == res["samples"][-1]["ssm"][0]["norm"]
    assert (tmp_path / "out" / "state_norms.png").read_bytes()[:4] == b"\x89PNG"
    assert sn.main([*argv[:-1], "0", "--out", str(tmp_path / "x")]) == 2
    assert "--every must be a positive" in capsys.readouterr().err
    assert sn.main([str(tmp_path / "nope")]) == 2
