"""eval/run.py on manifests with bad streams (issue 29, cases 11 and 12): a line that is not UTF-8 and
an mp4 whose header is intact but whose data is cut off. ``data.on_error=raise`` (the default) stops
with exit status 2 naming the file, line and stream; ``data.on_error=skip`` leaves them out, evaluates
the rest and reports how many were skipped, as train.py does."""

import io
import json
from pathlib import Path

import pytest
from eval_helpers import check_results, truncated_mp4

from ssm_mm.media import probe_media


@pytest.fixture(scope="module")
def lines(world, tmp_path_factory):
    """(good line, non-UTF-8 line, line whose mp4 is truncated mid-data) as manifest bytes, media
    paths absolute; from the first two AVWorld training streams."""
    train, _ = world
    objs = [json.loads(x) for x in Path(train).read_text().splitlines()[:2]]
    for o in objs:
        o["video"] = str(Path(train).parent / o["video"])
    good, cut = objs
    cut["id"] = "cut-stream"
    cut["video"] = str(truncated_mp4(cut["video"], tmp_path_factory.mktemp("cut") / "cut.mp4"))
    assert probe_media(cut["video"]).has_video  # the header is intact: validation lets it through
    bad = json.dumps({**good, "id": "latin-\u00e9"}, ensure_ascii=False).encode("latin-1")
    return json.dumps(good).encode(), bad, json.dumps(cut).encode()


def _manifest(folder: Path, *lines: bytes) -> Path:
    path = folder / "m.jsonl"
    path.write_bytes(b"".join(x + b"\n" for x in lines))
    return path


def _fails(run_py, argv, capsys, *words) -> str:
    assert run_py.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("eval/run.py: error: ") and err.count("\n") == 1  # one line, no traceback
    for w in words:
        assert w in err, (w, err)
    return err


def test_non_utf8_line_names_file_and_line(run_py, model_dir, lines, tmp_path, capsys):
    good, bad, _ = lines
    m = _manifest(tmp_path, good, bad)
    _fails(run_py, [f"model={model_dir}", f"data.manifest={m}"], capsys, f"{m}:2:", "not valid UTF-8", "0xe9")


def test_truncated_mp4_names_stream_and_file(run_py, model_dir, lines, tmp_path, capsys):
    good, _, cut = lines
    m = _manifest(tmp_path, good, cut)
    argv = [f"model={model_dir}", f"data.manifest={m}", f"eval.out_dir={tmp_path / 'out'}"]
    err = _fails(run_py, argv, capsys, f"{m}:2:", "'cut-stream'", "cut.mp4", "corrupt", "cut off")
    assert "video_reader.cc" not in err  # decord's log prefix is not part of the message
    assert not (tmp_path / "out" / "results.json").exists()


def test_skip_mode_evaluates_the_rest_and_counts(run_py, model_dir, lines, tmp_path):
    good, bad, cut = lines
    m = _manifest(tmp_path, good, bad, cut)
    out = io.StringIO()
    argv = [
        f"model={model_dir}",
        f"data.manifest={m}",
        "data.on_error=skip",
        f"eval.out_dir={tmp_path / 'out'}",
        "eval.lengths=[1]",
    ]
    run_py.run([*argv, "eval.plots=false"], out=out)
    text = out.getvalue()
    assert "skipped streams: 2" in text, text
    assert "'cut-stream'" in text and "cut.mp4" in text  # each skipped stream is named as it is dropped
    res = check_results(tmp_path / "out" / "results.json", n_models=1, datasets=["m"])
    assert res["results"][0]["metrics"]["n_streams"] == 1
    assert [s["id"] for s in res["results"][0]["streams"]] == [json.loads(good)["id"]]
    skipped = res["datasets"]["m"]["skipped"]
    assert [(s["line"], s["id"]) for s in skipped] == [(2, "latin-\ufffd"), (3, "cut-stream")]
    assert "UTF-8" in skipped[0]["reason"] and "cut.mp4" in skipped[1]["reason"]
