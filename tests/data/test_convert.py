"""AVE and MUSIC-AVQA converters on fixtures written in those formats (with the quirks of the releases)."""

import json
from pathlib import Path

import numpy as np
import pytest

from ssm_mm.data.convert import ConvertError, convert_ave, convert_music_avqa, main
from ssm_mm.data.manifest import Segment, Turn, read_manifest, write_manifest
from ssm_mm.media import write_media

FIX = Path(__file__).resolve().parents[1] / "fixtures"
AVE = FIX / "ave" / "Annotations.txt"
AVE_BAD = FIX / "ave" / "bad_lines.txt"
AVQA = FIX / "music_avqa" / "avqa-mini.json"
AVQA_BAD = FIX / "music_avqa" / "avqa-bad.json"


def test_ave_fixture_converts_and_reads_back(tmp_path):
    raw = AVE.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw  # BOM + CRLF, as some copies have
    streams, report = convert_ave(AVE, media_dir=tmp_path / "AVE")
    assert report.skipped == [] and report.streams == 5
    out = write_manifest(streams, tmp_path / "ave.jsonl")
    m = read_manifest(out, check_media=False)
    by_id = {s.id: s for s in m}
    assert list(by_id) == ["RUhOCu3LNXM", "MH3m4AwEcRY", "0giAfYq9oVM", "-oxIb4pGuh4", "-9_5_2i4igQ"]
    assert by_id["MH3m4AwEcRY"].segments == [Segment(6.0, 8.0, "Church bell")]  # trailing spaces gone
    assert by_id["0giAfYq9oVM"].segments == [Segment(3.0, 9.0, "Male speech, man speaking")]
    assert by_id["-oxIb4pGuh4"].segments == [Segment(2.0, 6.0, "Frying (food)")]  # trailing tab gone
    s = by_id["RUhOCu3LNXM"]
    assert s.duration == 10.0 and s.audio_from_video and s.video == (tmp_path / "AVE" / "RUhOCu3LNXM.mp4")
    assert m.labels == ["Church bell", "Frying (food)", "Male speech, man speaking", "Violin, fiddle"]
    assert json.loads(out.read_text().splitlines()[0])["video"] == "AVE/RUhOCu3LNXM.mp4"  # relative


def test_ave_defective_lines_error_or_counted_skip(tmp_path):
    with pytest.raises(ConvertError) as e:
        convert_ave(AVE_BAD)
    assert str(e.value).startswith(f"{AVE_BAD}:2: empty event")
    streams, report = convert_ave(AVE_BAD, skip_bad=True)
    assert [s.id for s in streams] == ["RUhOCu3LNXM", "NZMDi4ZRjjQ"]
    reasons = dict(report.skipped)
    assert sorted(reasons) == [2, 3, 4, 5, 6]
    assert "empty event" in reasons[2]
    assert "already annotated on line 1" in reasons[3]  # same video, another category
    assert "5 '&'-separated fields" in reasons[4]
    assert "not a number" in reasons[5]
    assert "outside the 10 s clip" in reasons[6]
    assert "skipped 5 defective lines" in report.summary()


def test_ave_with_real_media_passes_the_validator(tmp_path):
    media = tmp_path / "videos"
    frames = np.zeros((4, 32, 32, 3), np.uint8)
    streams, _ = convert_ave(AVE, media_dir=media, duration=10.0)
    for s in streams[:2]:
        write_media(
            s.video, frames, [0, 0.25, 0.5, 0.75], audio=np.zeros(16000, np.float32), sample_rate=16000
        )
    out = write_manifest(streams, tmp_path / "m.jsonl")
    m = read_manifest(out, on_error="skip")  # the other three videos are absent
    assert [s.id for s in m] == [s.id for s in streams[:2]]
    assert len(m.skipped) == 3 and all("file not found" in msg for _, _, msg in m.skipped)


def test_music_avqa_fixture_converts_and_reads_back(tmp_path):
    streams, report = convert_music_avqa(AVQA, media_dir=tmp_path, ext="mp4")
    assert report.deleted == 1 and report.questions == 5 and report.skipped == []
    m = read_manifest(write_manifest(streams, tmp_path / "avqa.jsonl"), check_media=False)
    by_id = {s.id: s for s in m}
    assert list(by_id) == ["00000272", "sa00007434", "00000311"]  # grouped per video, file order
    assert "00000777" not in by_id  # its only question is deleted
    d = by_id["00000272"].dialogue
    assert d == [
        Turn(60.0, "user", "Where is the first sounding instrument?", "Audio-Visual/Temporal"),
        Turn(60.0, "assistant", "left"),
        Turn(60.0, "user", "How many instruments are sounding in the video?", "Audio-Visual/Counting"),
        Turn(60.0, "assistant", "two"),
    ]
    # Two <Object> placeholders filled in order; Python-literal lists; plain lists; a numeric answer.
    assert by_id["sa00007434"].dialogue[0].text == "Are there piano and ukulele instruments in the video?"
    d311 = by_id["00000311"].dialogue
    assert d311[0] == Turn(
        60.0, "user", "Is the cello in the video always playing?", "Audio-Visual/Existential"
    )
    assert d311[2].text == "How many sounding violin in the video?" and d311[2].type == "Audio/Counting"
    assert d311[3].text == "2"
    assert by_id["00000311"].video == tmp_path / "00000311.mp4" and by_id["00000311"].duration == 60.0


def test_music_avqa_per_question_streams(tmp_path):
    streams, report = convert_music_avqa(AVQA, media_dir=tmp_path, per_question=True, duration=30.0)
    assert [s.id for s in streams] == [
        "00000272-q50",
        "00000272-q51",
        "sa00007434-q28884",
        "00000311-q7",
        "00000311-q8",
    ]
    assert all(len(s.dialogue) == 2 and s.dialogue[0].t == 30.0 for s in streams)
    assert streams[0].video == streams[1].video == tmp_path / "00000272.mp4"


def test_music_avqa_defective_records(tmp_path):
    with pytest.raises(ConvertError) as e:
        convert_music_avqa(AVQA_BAD)
    assert str(e.value).startswith(f"{AVQA_BAD}:2: 2 placeholders")
    streams, report = convert_music_avqa(AVQA_BAD, skip_bad=True)
    assert [s.id for s in streams] == ["00000002"]
    reasons = dict(report.skipped)
    assert sorted(reasons) == [2, 8, 11, 14, 17]  # the line each record starts on
    assert "missing or empty answer" in reasons[8]
    assert "'type' is not a list" in reasons[11]
    assert "question_id 2 already used on line 5" in reasons[14]
    assert "not a plain file name" in reasons[17]
    p = tmp_path / "numbers.json"
    p.write_text("[\n  1,\n  2\n]")
    with pytest.raises(ConvertError, match=r"numbers.json:2: a record must be a JSON object"):
        convert_music_avqa(p)


@pytest.mark.parametrize(
    "text,words",
    [
        ('{"video_id": "1"}', "JSON array"),
        ('[{"video_id": "1",}]', "malformed JSON"),
        ('[{"a": 1}] trailing', "extra data"),
    ],
)
def test_music_avqa_malformed_files(tmp_path, text, words):
    p = tmp_path / "x.json"
    p.write_text(text)
    with pytest.raises(ConvertError, match=words):
        convert_music_avqa(p, skip_bad=True)  # a broken file (not a record) cannot be skipped


def test_cli(tmp_path, capsys):
    out = tmp_path / "m.jsonl"
    assert main(["ave", str(AVE_BAD), "--out", str(out)]) == 2
    assert "bad_lines.txt:2: empty event" in capsys.readouterr().err and not out.exists()
    assert main(["ave", str(AVE_BAD), "--out", str(out), "--skip-bad", "--media-dir", str(tmp_path)]) == 0
    assert "2 streams; skipped 5 defective lines" in capsys.readouterr().err
    assert len(read_manifest(out, check_media=False)) == 2
    assert main(["ave", str(AVE), "--out", str(out), "--check-media", "--media-dir", str(tmp_path)]) == 2
    assert "file not found" in capsys.readouterr().err and not out.exists()  # no manifest naming bad media
    assert main(["music_avqa", str(AVQA), "--out", str(out), "--per-question", "--ext", "mkv"]) == 0
    m = read_manifest(out, check_media=False)
    assert len(m) == 5 and m.streams[0].video.suffix == ".mkv"
