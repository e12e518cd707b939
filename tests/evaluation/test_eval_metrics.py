"""Evaluation metrics and per-stream scoring on hand-built cases with known answers."""

import math
import random

import pytest
import torch

from ssm_mm.data.manifest import Segment, StreamSpec, Turn
from ssm_mm.evaluation.harness import EvalOptions, pool_metrics
from ssm_mm.evaluation.tasks import score_stream, stream_tasks
from ssm_mm.metrics import (
    coarsen_labels,
    event_metrics,
    exact_match,
    latency_summary,
    macro_f1,
    match_responses,
    proactive_metrics,
    qa_metrics,
)
from ssm_mm.streaming.drive import AskRecord, DriveResult
from ssm_mm.streaming.session import StreamEvent, TickLabel

LABELS = ["background", "bell", "drum"]


# ------------------------------------------------------------------------------------ proactive


def _score(responses, references, requests=None, tol=1.0):
    pairs = match_responses(responses, references, requests, tol)
    tp = len(pairs)
    delays = [responses[i] - references[j] for i, j in pairs]
    return proactive_metrics(tp, len(responses) - tp, len(references) - tp, delays), pairs


def test_proactive_known_case():
    # refs at 5 and 10; responses: 5.5 (hit, +0.5), 9.0 (hit, -1.0: on the tolerance edge),
    # 20.0 (false positive); precision 2/3, recall 1, F1 = 4/5
    m, pairs = _score([5.5, 9.0, 20.0], [5.0, 10.0])
    assert pairs == [(0, 0), (1, 1)]
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == 1.0 and m["f1"] == pytest.approx(0.8)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 1, 0)
    assert m["mean_delay"] == pytest.approx(-0.25)
    assert m["p90_delay"] == pytest.approx(0.35)  # numpy linear interpolation between -1.0 and 0.5


def test_duplicate_responses_count_as_false_positives():
    m, pairs = _score([5.0, 5.5, 6.0], [5.0])
    assert pairs == [(0, 0)]
    assert (m["tp"], m["fp"], m["fn"]) == (1, 2, 0) and m["precision"] == pytest.approx(1 / 3)


def test_response_before_its_request_cannot_match():
    # the reference at 6.0 was requested at 5.5 (placed time): a response at 5.5 (the request's own
    # tick end, emitted before the question went in) or earlier never matches, even within tolerance
    m, pairs = _score([5.0, 5.5], [6.0], requests=[5.5])
    assert pairs == [] and (m["tp"], m["fp"], m["fn"]) == (0, 2, 1) and m["f1"] == 0.0
    m, pairs = _score([5.0, 6.0], [6.0], requests=[5.5])
    assert pairs == [(1, 0)] and m["mean_delay"] == 0.0


def test_no_references_and_no_responses():
    m, _ = _score([], [])
    assert all(math.isnan(m[k]) for k in ("precision", "recall", "f1", "mean_delay", "p90_delay"))
    m, _ = _score([3.0, 4.0], [])  # responses but nothing to respond to
    assert m["precision"] == 0.0 and math.isnan(m["recall"]) and m["f1"] == 0.0 and m["fp"] == 2
    m, _ = _score([], [3.0])  # silence when a response was due
    assert math.isnan(m["precision"]) and m["recall"] == 0.0 and m["f1"] == 0.0 and m["fn"] == 1


def test_each_reference_matched_once_and_greedy_is_maximum():
    # a naive "nearest reference" rule would give 1.9 to ref 2.0 and leave 1.0 unmatched; the
    # earliest-deadline greedy pairs 1.9 -> 1.0 and 2.6 -> 2.0
    _, pairs = _score([1.9, 2.6], [1.0, 2.0], tol=1.0)
    assert sorted(pairs) == [(0, 0), (1, 1)]
    rng = random.Random(0)
    for _ in range(300):
        refs = [round(rng.uniform(0, 10), 1) for _ in range(rng.randint(0, 6))]
        reqs = [r - rng.choice([0.5, 1.0, 3.0]) for r in refs]
        resp = [round(rng.uniform(0, 11), 1) for _ in range(rng.randint(0, 7))]
        tol = rng.choice([0.3, 1.0, 2.0])
        pairs = match_responses(resp, refs, reqs, tol)
        assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs)
        for i, j in pairs:
            assert abs(resp[i] - refs[j]) <= tol + 1e-6 and resp[i] > reqs[j]
        assert len(pairs) == _max_matching(resp, refs, reqs, tol)


def _max_matching(resp, refs, reqs, tol) -> int:
    """Maximum bipartite matching by augmenting paths (the slow, obviously correct twin)."""
    ok = [[abs(r - f) <= tol + 1e-6 and r > q + 1e-6 for f, q in zip(refs, reqs)] for r in resp]
    owner = [-1] * len(refs)

    def augment(i, seen):
        for j in range(len(refs)):
            if ok[i][j] and not seen[j]:
                seen[j] = True
                if owner[j] < 0 or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return sum(augment(i, [False] * len(refs)) for i in range(len(resp)))


def test_bad_tolerance():
    with pytest.raises(ValueError, match="tolerance"):
        match_responses([1.0], [1.0], tolerance=-1)
    with pytest.raises(ValueError, match="request times"):
        match_responses([1.0], [1.0, 2.0], [0.0])


# ------------------------------------------------------------------------------- QA and events


def test_qa_exact_match_normalised_and_per_type():
    assert exact_match("  Red ", "red") and not exact_match("red.", "red") and not exact_match(None, "3")
    m = qa_metrics([("count", True), ("count", False), ("color", True)])
    assert m["accuracy"] == pytest.approx(2 / 3) and m["n"] == 3
    assert m["per_type"] == {"color": {"accuracy": 1.0, "n": 1}, "count": {"accuracy": 0.5, "n": 2}}
    empty = qa_metrics([])
    assert math.isnan(empty["accuracy"]) and empty["n"] == 0 and empty["per_type"] == {}


def test_event_metrics_and_missing_predictions():
    true = torch.tensor([0, 1, 1, 2, 0, 0])
    pred = torch.tensor([0, 1, -1, 2, 1, 0])  # one tick without prediction, one false bell
    m = event_metrics(pred, true, LABELS)
    assert m["tick_accuracy"] == pytest.approx(4 / 6) and m["majority_rate"] == pytest.approx(3 / 6)
    # bell: tp 1, fp 1, fn 1 -> F1 0.5; drum: F1 1; -1 is not a class
    assert m["per_class"]["bell"]["f1"] == pytest.approx(0.5) and m["per_class"]["drum"]["f1"] == 1.0
    assert macro_f1(pred, true) == pytest.approx(0.75)
    empty = event_metrics(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), LABELS)
    assert math.isnan(empty["tick_accuracy"]) and math.isnan(empty["macro_f1"]) and empty["n_ticks"] == 0


def test_coarsen_labels_by_the_truth_rule():
    ticks = torch.tensor([0, 1, 1, 0, 2, 2, -1, 0])  # 0.5 s ticks -> 1 s spans
    # span 0: bg+bell tie -> event; span 1: bell; span 2: drum; span 3: missing counts as background
    assert coarsen_labels(ticks, 0.5, 1.0, 4, LABELS).tolist() == [1, 1, 2, 0]
    assert coarsen_labels(torch.tensor([1, 2]), 0.5, 1.0, 1, LABELS).tolist() == [1]  # tie: lower index


def test_latency_summary():
    s = latency_summary([0.001, 0.002, 0.003])
    assert s["p50_ms"] == pytest.approx(2.0) and s["max_ms"] == pytest.approx(3.0) and s["n"] == 3
    assert math.isnan(latency_summary([])["p99_ms"])


# ------------------------------------------------------------------------------- stream scoring


def _spec():
    return StreamSpec(
        id="s1",
        video=None,
        audio=None,
        audio_from_video=False,
        duration=4.0,
        t0=100.0,
        dialogue=[
            Turn(1.0, "user", "how many times did the bell ring?", "count"),
            Turn(1.0, "assistant", "1"),
            Turn(1.2, "user", "tell me when the drum plays", "proactive"),
            Turn(2.0, "assistant", "drum"),
            Turn(3.3, "assistant", "drum"),
            Turn(3.5, "user", "what shape is on screen now?"),
            Turn(3.5, "assistant", "circle"),
        ],
        segments=[Segment(0.5, 1.0, "bell"), Segment(2.0, 3.0, "drum")],
    )


def test_stream_tasks_from_a_manifest_line():
    t = stream_tasks(_spec(), LABELS, 0.5)
    assert t.n_ticks == 8 and t.tick_labels.tolist() == [0, 1, 0, 0, 2, 2, 0, 0]
    assert [q.text for q in t.questions][1] == "tell me when the drum plays" and len(t.questions) == 3
    assert [(q.question, q.reference, q.type) for q in t.qa] == [(0, "1", "count"), (2, "circle", "untyped")]
    assert [(r.t, r.request_t) for r in t.proactive] == [(2.0, 1.5), (3.3, 1.5)]  # request placed at 1.5


def test_score_stream_known_case():
    spec = _spec()
    tasks = stream_tasks(spec, LABELS, 0.5)
    t0 = spec.t0

    def lab(k, i):
        return TickLabel(k, t0 + 0.5 * k, t0 + 0.5 * (k + 1), LABELS[i], i, 0.9, 0.1)

    # ticks 0..5 predicted (6, 7 missing: the media ended early), plus a tick past the duration
    labels = [lab(k, i) for k, i in enumerate([0, 1, 0, 0, 2, 0])] + [lab(9, 1)]
    events = [
        StreamEvent(t0 + 1.5, "drum", (), 0.9),  # at the request's own tick end: before it, unmatched
        StreamEvent(t0 + 2.5, "drum", (), 0.9),  # +0.5 s after the 2.0 reference
        StreamEvent(t0 + 3.0, "drum", (), 0.9),  # 3.3 - 0.3: the second reference
        StreamEvent(t0 + 3.5, "drum", (), 0.9),  # duplicate
    ]
    answers = [
        AskRecord(0, 1.0, "how many times did the bell ring?", t0 + 1.5, t0 + 1.5, " 1 ", 0.01),
        AskRecord(1, 1.2, "tell me when the drum plays", t0 + 1.5, t0 + 1.5, "ok", 0.01),
        AskRecord(2, 3.5, "what shape is on screen now?", t0 + 4.0, t0 + 4.5, "square", 0.01),  # late
    ]
    res = DriveResult(labels, events, answers, [0.01] * 7, ticks=10, stream_seconds=5.0, wall=1.0)
    sc = score_stream(tasks, res, LABELS, 0.5, tolerance=1.0)
    assert sc.pred.tolist() == [0, 1, 0, 0, 2, 0, -1, -1] and sc.missing_ticks == 2
    assert [q["correct"] for q in sc.qa] == [True, False] and [q["late"] for q in sc.qa] == [False, True]
    assert [r["matched"] for r in sc.responses] == [False, True, True, False]
    assert [r["delay"] for r in sc.references] == [pytest.approx(0.5), pytest.approx(-0.3)]
    assert (sc.tp, sc.fp, sc.fn) == (2, 2, 0)
    assert len(sc.answers) == 3 and sc.answers[1]["answer"] == "ok"  # the request's reply is kept

    sc.wall = 1.0
    m = pool_metrics([sc], LABELS, EvalOptions(), [1.0])
    assert m["events"]["tick_accuracy"] == pytest.approx(5 / 8) and m["events"]["missing_ticks"] == 2
    # per second: truth [bell, bg, drum, bg]; prediction [bell, bg, drum (tie drum/bg), bg (missing)]
    assert m["events"]["span_accuracy"] == 1.0 and m["events"]["n_spans"] == 4
    assert m["qa"]["accuracy"] == 0.5 and m["qa"]["per_type"]["count"]["accuracy"] == 1.0
    assert m["qa"]["late"] == 1
    assert m["proactive"]["precision"] == 0.5 and m["proactive"]["recall"] == 1.0
    assert m["proactive"]["text_accuracy"] == 1.0
    assert m["speed"]["rtf"] == pytest.approx(5.0) and m["speed"]["tick_latency"]["p50_ms"] == pytest.approx(
        10
    )


def test_pool_metrics_of_no_stream():
    m = pool_metrics([], LABELS, EvalOptions(), [])
    assert m["n_streams"] == 0 and math.isnan(m["events"]["tick_accuracy"])
    assert math.isnan(m["qa"]["accuracy"]) and math.isnan(m["proactive"]["f1"])
    assert math.isnan(m["speed"]["rtf"]) and math.isnan(m["speed"]["throughput_rtf"])
