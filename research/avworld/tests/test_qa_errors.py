"""qa_errors.py: colour answers read against the generator's scenes, and clear errors on bad files."""

from __future__ import annotations

import json

import pytest
from probe_support import load_script

SCENE = {
    "id": "s0",
    "shapes": [
        {"kind": "circle", "color": "red", "start": 0.0, "end": 10.0},
        {"kind": "cross", "color": "blue", "start": 2.0, "end": 4.0},
        {"kind": "cross", "color": "green", "start": 5.0, "end": 20.0},
    ],
    "events": [  # only used with --ages: how long before each past question its event ended
        {"cls": "bell", "start": 0.5, "end": 3.0},
        {"cls": "drum", "start": 2.0, "end": 4.0},
        {"cls": "bell", "start": 12.5, "end": 14.0},  # after the question at t=12: not the asked one
    ],
}


def _q(t: float, question: str, reference: str, answer: str) -> dict:
    return {
        "t": t,
        "question": question,
        "reference": reference,
        "answer": answer,
        "correct": answer == reference,
    }


QA = [
    # now, one shape on screen (t=1: the circle): right
    _q(1.0, "what color is the circle now?", "red", "red"),
    # now, two on screen (t=3): wrong with the other visible colour (binding) ...
    _q(3.0, "what color is the cross now?", "blue", "red"),
    # ... and wrong with a colour not on screen (perception)
    _q(3.5, "what color is the cross now?", "blue", "cyan"),
    # past, own shape of the event (drum -> cross); the last cross before t=4.5 was blue: oracle right
    _q(4.5, "what color was the cross when the drum last played?", "blue", "blue"),
    # past, another shape (bell -> circle, asked about the cross); the last cross before t=12 is green
    _q(12.0, "what color was the cross when the bell last rang?", "blue", "green"),
    _q(13.0, "how many times did the bell ring?", "1", "1"),  # not a colour question
    # shape, the event's own (drum -> cross): right; another (the circle was red at the drum): the
    # answer names the drum's own shape, the prior
    _q(14.0, "which shape was blue when the drum last played?", "cross", "cross"),
    _q(15.0, "which shape was red when the drum last played?", "circle", "cross"),
]


def _files(tmp_path, scenes=(SCENE,), stream_id="s0"):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "scenes.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scenes))
    res = {
        "datasets": {"val": {"manifest": str(data / "manifest.jsonl")}},
        "results": [{"model": "m", "dataset": "val", "streams": [{"id": stream_id, "qa": QA}]}],
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(res))
    return str(path)


def test_counts_by_screen_and_by_shape(tmp_path, capsys):
    qe = load_script("qa_errors")
    assert qe.main([_files(tmp_path), "--confusion"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| m · val"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == [
        "100.0% (1/1)",  # now, 1 on screen
        "0.0% (0/2)",  # now, 2 on screen
        "–",  # now, 3+
        "50.0% (1/2)",  # of the 2 wrong now answers, 1 names a colour not on screen
        "100.0% (1/1)",  # past, own shape
        "0.0% (0/1)",  # past, another shape
        "50.0% (1/2)",  # the last-colour-of-the-kind oracle answers the first past question only
        "100.0% (2/2)",  # both shape answers name the drum's cross, the right one and the wrong one
    ]
    assert "m · val, past colour:" in out and "| blue | 0 | 1 | 1 |" in out  # blue asked twice: blue, green


def test_past_colour_by_event_age(tmp_path, capsys):
    assert load_script("qa_errors").main([_files(tmp_path), "--ages", "3,6"]) == 0
    out = capsys.readouterr().out
    assert "| run | 0–3 s | 3–6 s | ≥ 6 s |" in out
    # drum ended 0.5 s before t=4.5 (right); the bell asked at t=12 ended at 3.0, 9 s before (wrong)
    assert "| m · val | 100.0% (1/1) | – | 0.0% (0/1) |" in out


def test_explicit_scenes_path(tmp_path, capsys):
    path = _files(tmp_path)
    other = tmp_path / "elsewhere.jsonl"
    other.write_text(json.dumps(SCENE) + "\n")
    assert load_script("qa_errors").main([path, "--scenes", str(other)]) == 0
    assert "| m · val |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("no_scenes", "no such scenes file"),
        ("bad_line", "scenes.jsonl:1: not a scene line"),
        ("unknown_stream", "stream 'zz' of model 'm' has no scene"),
        ("not_results", "not an evaluation results file"),
        ("missing", "results.json: cannot read"),
        ("no_manifest", "dataset 'val' names no manifest; pass --scenes"),
        ("ages_not_numbers", "--ages '3,x': not a comma-separated list of seconds"),
        ("ages_not_increasing", "--ages '6,3': bin edges must be positive and increasing"),
        ("no_events", "stream 's0': scene has no readable events"),
    ],
)
def test_bad_input_is_named(tmp_path, capsys, breakage, message):
    scene = {k: v for k, v in SCENE.items() if k != "events"} if breakage == "no_events" else SCENE
    path = _files(tmp_path, scenes=(scene,), stream_id="zz" if breakage == "unknown_stream" else "s0")
    args = {"ages_not_numbers": ["--ages", "3,x"], "ages_not_increasing": ["--ages", "6,3"]}
    args = args.get(breakage, ["--ages", "3"] if breakage == "no_events" else [])
    if breakage == "no_scenes":
        (tmp_path / "data" / "scenes.jsonl").unlink()
    elif breakage == "bad_line":
        (tmp_path / "data" / "scenes.jsonl").write_text("{not json\n")
    elif breakage == "not_results":
        (tmp_path / "results.json").write_text(json.dumps({"schema": 1}))  # no results list
    elif breakage == "no_manifest":
        res = json.loads((tmp_path / "results.json").read_text())
        res["datasets"] = {}
        (tmp_path / "results.json").write_text(json.dumps(res))
    elif breakage == "missing":
        (tmp_path / "results.json").unlink()
    assert load_script("qa_errors").main([path, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qa_errors: ") and message in err
