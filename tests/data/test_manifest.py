"""Manifest reader / validator / writer (SPEC §4): every bad input names file, line, stream and field."""

import json
from pathlib import Path

import numpy as np
import pytest

from ssm_mm.data.manifest import (
    ManifestError,
    ManifestWarning,
    Segment,
    StreamSpec,
    Turn,
    read_manifest,
    write_manifest,
)
from ssm_mm.media import write_media

SR = 16000


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """A folder with small real files: video+audio, video only, audio only, zero-byte, corrupt."""
    d = tmp_path_factory.mktemp("media")
    frames = np.zeros((4, 32, 32, 3), np.uint8)
    times = [0.0, 0.25, 0.5, 0.75]
    write_media(d / "av.mp4", frames, times, audio=np.zeros(SR, np.float32), sample_rate=SR, fps=4)
    write_media(d / "silent.mp4", frames, times, fps=4)
    write_media(d / "speech.wav", audio=np.zeros(SR, np.float32), sample_rate=SR)
    (d / "zero.mp4").write_bytes(b"")
    (d / "corrupt.mp4").write_bytes(b"definitely not an mp4 file" * 40)
    return d


def _line(**kw) -> dict:
    base = {
        "id": "s1",
        "video": "av.mp4",
        "audio": None,
        "duration": 10.0,
        "dialogue": [
            {"t": 2.5, "role": "user", "text": "how many times did the bell ring?", "type": "count"},
            {"t": 2.5, "role": "assistant", "text": "3"},
            {"t": 3.0, "role": "user", "text": "tell me when the drum plays", "type": "proactive"},
            {"t": 7.25, "role": "assistant", "text": "drum"},
        ],
        "segments": [
            {"start": 1.0, "end": 2.0, "label": "bell"},
            {"start": 7.25, "end": 9.0, "label": "drum"},
        ],
    }
    base.update(kw)
    return base


def _write(folder: Path, lines, name="m.jsonl") -> Path:
    path = folder / name
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_reads_a_good_manifest_with_real_media(media):
    path = _write(
        media,
        [
            _line(t0=1000.0),
            "",  # blank lines are ignored
            _line(id="s2", video=None, audio="speech.wav", dialogue=[], segments=[]),
            _line(id="s3", video="silent.mp4", audio="speech.wav", extra_field={"kept": True}),
            _line(
                id="s4",
                video="silent.mp4",
                audio=False,
                segments=[{"start": 0, "end": 1, "label": "applause"}],
            ),
        ],
    )
    with pytest.warns(ManifestWarning, match="'extra_field' \\(line 4\\)"):  # kept, but said once
        m = read_manifest(path)
    assert [s.id for s in m] == ["s1", "s2", "s3", "s4"] and m.skipped == []
    s1, s2, s3, s4 = m.streams
    assert s1.video == media / "av.mp4" and s1.audio_from_video and s1.audio_path == s1.video
    assert s1.t0 == 1000.0 and s1.line == 1 and s1.duration == 10.0
    assert s1.dialogue[0] == Turn(2.5, "user", "how many times did the bell ring?", "count")
    assert s1.dialogue[1].type is None
    assert s1.segments[1] == Segment(7.25, 9.0, "drum")
    assert s2.video is None and s2.audio_path == media / "speech.wav" and not s2.audio_from_video
    assert s3.audio == media / "speech.wav" and s3.extra == {"extra_field": {"kept": True}}
    assert not s4.has_audio and s4.has_video  # "audio": false declares a video-only stream
    assert m.labels == ["applause", "bell", "drum"]


def test_write_then_read_round_trips(tmp_path, media):
    specs = [
        StreamSpec(
            id="a",
            video=media / "av.mp4",
            audio=None,
            audio_from_video=True,
            duration=12.0,
            t0=5.5,
            dialogue=[
                Turn(1.0, "user", "what color is the circle now?", "now"),
                Turn(1.0, "assistant", "red"),
            ],
            segments=[Segment(0.5, 1.5, "bell", {"color": "red"}), Segment(2.0, 3.0, "drum")],
            extra={"source": "test"},
        ),
        StreamSpec(id="b", video=None, audio=media / "speech.wav", audio_from_video=False, duration=1.0),
        StreamSpec(id="c", video=media / "silent.mp4", audio=None, audio_from_video=False, duration=1.0),
    ]
    path = write_manifest(specs, tmp_path / "sub" / "m.jsonl")
    first = json.loads(path.read_text().splitlines()[0])
    assert not Path(first["video"]).is_absolute()  # written relative to the manifest's folder
    assert first["segments"][0]["attributes"] == {"color": "red"} and "attributes" not in first["segments"][1]
    with pytest.warns(ManifestWarning, match="'source'"):  # user metadata: kept and written back
        back = read_manifest(path)
    for a, b in zip(specs, back.streams):
        assert (a.id, a.video, a.audio, a.audio_from_video, a.duration, a.t0) == (
            b.id,
            b.video.resolve() if b.video else None,
            b.audio.resolve() if b.audio else None,
            b.audio_from_video,
            b.duration,
            b.t0,
        )
        assert a.dialogue == b.dialogue and a.segments == b.segments and a.extra == b.extra
    with pytest.raises(ValueError, match="duplicate"):
        write_manifest([specs[0], specs[0]], tmp_path / "dup.jsonl")


# (line to write, field named in the error, words in the reason)
BAD = {
    "malformed_json": ('{"id": "s1", "duration": 10.0,', None, "malformed JSON"),
    "not_an_object": ("[1, 2, 3]", None, "JSON object"),
    "missing_id": (_line(id=None), "id", "missing"),
    "empty_id": (_line(id="  "), "id", "non-empty string"),
    "missing_duration": ({k: v for k, v in _line().items() if k != "duration"}, "duration", "missing"),
    "zero_duration": (_line(duration=0), "duration", "> 0"),
    "string_duration": (_line(duration="10"), "duration", "number"),
    "nan_t0": ('{"id": "s1", "video": "av.mp4", "duration": 10, "t0": NaN}', "t0", "finite"),
    "no_media": (_line(video=None, audio=None), "video/audio", "neither"),
    "missing_video": (_line(video="nope.mp4"), "video", "file not found"),
    "zero_byte_video": (_line(video="zero.mp4"), "video", "zero-byte"),
    "corrupt_video": (_line(video="corrupt.mp4"), "video", "corrupt"),
    "video_is_audio_only": (_line(video="speech.wav"), "video", "no video stream"),
    "no_audio_track": (_line(video="silent.mp4", audio=None), "audio", "no audio stream"),
    "audio_file_without_audio": (_line(video="av.mp4", audio="silent.mp4"), "audio", "no audio stream"),
    "missing_audio": (_line(audio="gone.wav"), "audio", "file not found"),
    "negative_t": (_line(dialogue=[{"t": -1.0, "role": "user", "text": "hi"}]), "dialogue[0].t", "negative"),
    "t_past_duration": (
        _line(dialogue=[{"t": 10.5, "role": "user", "text": "hi"}]),
        "dialogue[0].t",
        "past the stream's duration",
    ),
    "unsorted_dialogue": (
        _line(dialogue=[{"t": 5, "role": "user", "text": "a"}, {"t": 4, "role": "assistant", "text": "b"}]),
        "dialogue[1].t",
        "not sorted",
    ),
    "unknown_role": (
        _line(dialogue=[{"t": 1, "role": "system", "text": "hi"}]),
        "dialogue[0].role",
        "unknown role",
    ),
    "empty_text": (
        _line(dialogue=[{"t": 1, "role": "user", "text": "   "}]),
        "dialogue[0].text",
        "empty text",
    ),
    "missing_text": (_line(dialogue=[{"t": 1, "role": "user"}]), "dialogue[0].text", "missing"),
    "bad_type": (
        _line(dialogue=[{"t": 1, "role": "user", "text": "a", "type": 3}]),
        "dialogue[0].type",
        "string",
    ),
    "segment_start_after_end": (
        _line(segments=[{"start": 3, "end": 2, "label": "x"}]),
        "segments[0].end",
        "not after",
    ),
    "segment_empty": (_line(segments=[{"start": 2, "end": 2, "label": "x"}]), "segments[0].end", "not after"),
    "segment_past_duration": (
        _line(segments=[{"start": 2, "end": 11, "label": "x"}]),
        "segments[0].end",
        "past the stream's duration",
    ),
    "segment_negative": (
        _line(segments=[{"start": -1, "end": 2, "label": "x"}]),
        "segments[0].start",
        "negative",
    ),
    "segment_no_label": (_line(segments=[{"start": 1, "end": 2, "label": ""}]), "segments[0].label", "empty"),
    "segment_attributes_not_object": (
        _line(segments=[{"start": 1, "end": 2, "label": "x", "attributes": ["red"]}]),
        "segments[0].attributes",
        "object",
    ),
    "segment_attribute_not_text": (
        _line(segments=[{"start": 1, "end": 2, "label": "x", "attributes": {"color": 3}}]),
        "segments[0].attributes.color",
        "string",
    ),
    "dialogue_not_list": (_line(dialogue={"t": 1}), "dialogue", "list"),
    "segments_not_list": (_line(segments="bell"), "segments", "list"),
    "turn_not_object": (_line(dialogue=[{"t": 1, "role": "user", "text": "a"}, 7]), "dialogue[1]", "object"),
    "segment_not_object": (_line(segments=[[1, 2, "x"]]), "segments[0]", "object"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_bad_input_names_file_line_stream_and_field(media, case):
    line, fld, words = BAD[case]
    path = _write(media, [_line(id="ok0"), "", line], name=f"bad_{case}.jsonl")
    with pytest.raises(ManifestError) as e:
        read_manifest(path)
    err = e.value
    msg = str(err)
    assert isinstance(err, ValueError)
    assert err.line == 3 and f"{path}:3" in msg
    assert words in msg
    assert err.field == fld
    if fld is not None:
        assert repr(fld) in msg
    if case not in ("malformed_json", "not_an_object", "missing_id", "empty_id"):
        assert err.stream_id == "s1" and "'s1'" in msg


def test_duplicate_ids_name_both_lines(media):
    path = _write(media, [_line(id="a"), _line(id="b"), _line(id="a")], name="dup.jsonl")
    with pytest.raises(ManifestError, match="duplicate id") as e:
        read_manifest(path)
    assert e.value.line == 3 and "line 1" in str(e.value) and e.value.field == "id"


def test_skip_mode_counts_and_reports(media):
    lines = [_line(id="good1"), BAD["missing_video"][0], '{"broken', _line(id="good2"), _line(id="good1")]
    m = read_manifest(_write(media, lines, name="mixed.jsonl"), on_error="skip")
    assert [s.id for s in m] == ["good1", "good2"]
    assert [(line, sid) for line, sid, _ in m.skipped] == [(2, "s1"), (3, None), (5, "good1")]
    assert "file not found" in m.skipped[0][2] and "malformed JSON" in m.skipped[1][2]
    with pytest.raises(ValueError, match="on_error"):
        read_manifest(media / "mixed.jsonl", on_error="ignore")


def test_check_media_false_does_not_touch_files(tmp_path):
    path = _write(tmp_path, [_line(video="not/there.mp4")])
    m = read_manifest(path, check_media=False)
    assert m.streams[0].video == tmp_path / "not" / "there.mp4"
    with pytest.raises(ManifestError, match="file not found"):
        read_manifest(path)


def test_missing_manifest_and_bom(tmp_path, media):
    with pytest.raises(ManifestError, match="manifest file not found"):
        read_manifest(tmp_path / "none.jsonl")
    path = media / "bom.jsonl"
    path.write_bytes(("\ufeff" + json.dumps(_line()) + "\r\n").encode())
    assert read_manifest(path).streams[0].id == "s1"


# ----------------------------------------------------------------------------------------------
# Undecodable bytes and unknown keys (issue 29, cases 11 and 13)
# ----------------------------------------------------------------------------------------------


def _write_bytes(folder: Path, lines: list[bytes], name: str) -> Path:
    path = folder / name
    path.write_bytes(b"".join(x + b"\n" for x in lines))
    return path


def test_non_utf8_byte_names_file_line_and_byte(media):
    good = json.dumps(_line(id="good")).encode()
    bad = b'{"id": "x\xff", "video": "av.mp4", "duration": 10.0}'
    path = _write_bytes(media, [good, bad, json.dumps(_line(id="after")).encode()], "latin.jsonl")
    with pytest.raises(ManifestError) as e:
        read_manifest(path)
    msg = str(e.value)
    assert e.value.line == 2 and msg.startswith(f"{path}:2: ")
    assert "not valid UTF-8" in msg and "0xff" in msg and "byte 10" in msg  # 1-based offset in the line
    assert e.value.stream_id == "x\ufffd"  # named as well as it can be (the id holds the bad byte)
    m = read_manifest(path, on_error="skip")  # skipped and counted like any other bad line
    assert [s.id for s in m] == ["good", "after"]
    assert [(line, sid) for line, sid, _ in m.skipped] == [(2, "x\ufffd")] and "UTF-8" in m.skipped[0][2]


def test_non_utf8_byte_before_the_id_is_still_located(media):
    path = _write_bytes(media, [b"\xc3\x28 garbage"], "lead.jsonl")
    with pytest.raises(
        ManifestError, match=r"lead\.jsonl:1: stream <unknown id>: not valid UTF-8 \(byte 0xc3 at byte 1"
    ):
        read_manifest(path)


def _renamed(key: str, typo: str) -> dict:
    """The default line with ``key`` written as ``typo``."""
    line = _line()
    line[typo] = line.pop(key)
    return line


# (line, field named in the error, suggested key)
MISSPELT = {
    "segmnets": (_renamed("segments", "segmnets"), "segmnets", "segments"),  # would train on background
    "dialog": (_renamed("dialogue", "dialog"), "dialog", "dialogue"),
    "Duration": (_renamed("duration", "Duration"), "Duration", "duration"),  # said before "missing"
    "turn_tpye": (
        _line(dialogue=[{"t": 1.0, "role": "user", "text": "a", "tpye": "count"}]),
        "dialogue[0].tpye",
        "type",
    ),
    "segment_attributs": (
        _line(segments=[{"start": 1.0, "end": 2.0, "label": "x", "attributs": {"color": "red"}}]),
        "segments[0].attributs",
        "attributes",
    ),
}


@pytest.mark.parametrize("case", sorted(MISSPELT))
def test_misspelt_key_is_an_error_naming_line_key_and_suggestion(media, case):
    line, fld, suggestion = MISSPELT[case]
    path = _write(media, [_line(id="ok0"), line], name=f"typo_{case}.jsonl")
    with pytest.raises(ManifestError) as e:
        read_manifest(path)
    assert e.value.line == 2 and e.value.field == fld and e.value.stream_id == "s1"
    assert f"{path}:2:" in str(e.value) and f"did you mean {suggestion!r}" in str(e.value)
    m = read_manifest(path, on_error="skip")
    assert [s.id for s in m] == ["ok0"] and m.skipped[0][:2] == (2, "s1")


def test_other_unknown_keys_are_kept_and_warned_once_per_manifest(media):
    lines = [
        _line(id="a", source="youtube", uid=17),  # "uid" is near "id", but "id" is there: metadata
        _line(id="b", source="youtube", dialogue=[{"t": 1.0, "role": "user", "text": "a", "speaker": "ann"}]),
        _line(id="c", segments=[{"start": 1.0, "end": 2.0, "label": "x", "confidence": 0.9}]),
    ]
    path = _write(media, lines, name="meta.jsonl")
    with pytest.warns(UserWarning) as rec:
        m = read_manifest(path)
    msgs = [str(w.message) for w in rec if issubclass(w.category, ManifestWarning)]
    assert len(msgs) == 1, msgs  # one warning for the whole manifest, not one per line
    msg = msgs[0]
    assert str(path) in msg
    for key, line in (("source", 1), ("uid", 1), ("dialogue[].speaker", 2), ("segments[].confidence", 3)):
        assert f"{key!r} (line {line})" in msg, (key, msg)
    assert m.streams[0].extra == {"source": "youtube", "uid": 17} and m.streams[2].extra == {}
    assert m.unknown_keys == {"source": 1, "uid": 1, "dialogue[].speaker": 2, "segments[].confidence": 3}


def test_manifests_we_write_read_without_warnings(tmp_path):
    """AVWorld and the AVE / MUSIC-AVQA converters write nothing a reader would warn about."""
    import warnings

    from ssm_mm.data.convert import convert_ave, convert_music_avqa
    from ssm_mm.worlds.avworld import generate

    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    paths = [generate(tmp_path / "w", streams=1, seconds=4.0, seed=3)]
    ave, _ = convert_ave(fixtures / "ave" / "Annotations.txt", media_dir=tmp_path / "ave")
    paths.append(write_manifest(ave, tmp_path / "ave.jsonl"))
    avqa, _ = convert_music_avqa(fixtures / "music_avqa" / "avqa-mini.json", media_dir=tmp_path / "avqa")
    paths.append(write_manifest(avqa, tmp_path / "avqa.jsonl"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for p in paths:
            m = read_manifest(p, check_media=p == paths[0])
            assert len(m) > 0 and m.unknown_keys == {}


def test_write_through_a_symlinked_folder_keeps_paths_relative(tmp_path, media):
    """A manifest written into a symlinked folder (a cache on another disk) names its media relative
    to its own folder, so the folder still reads after it is renamed or reached another way."""
    real = tmp_path / "disk" / "world"
    (real / "media").mkdir(parents=True)
    (real / "media" / "v.mp4").write_bytes((media / "av.mp4").read_bytes())
    link = tmp_path / "cache"
    link.symlink_to(tmp_path / "disk")
    spec = StreamSpec(
        id="a", video=link / "world" / "media" / "v.mp4", audio=None, audio_from_video=True, duration=10.0
    )
    path = write_manifest([spec], link / "world" / "m.jsonl")
    assert json.loads(path.read_text())["video"] == "media/v.mp4"
    (tmp_path / "disk" / "world").rename(tmp_path / "disk" / "moved")  # the folder moves as a whole
    assert read_manifest(link / "moved" / "m.jsonl").streams[0].video.name == "v.mp4"
