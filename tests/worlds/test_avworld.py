"""AVWorld: determinism, ground truth measured back from the decoded media, dialogue consistency, CLI."""

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ssm_mm.data.manifest import read_manifest
from ssm_mm.data.tokenizer import JsonTokenizer, word_tokenizer_json
from ssm_mm.media import decode_audio, decode_video
from ssm_mm.worlds.avworld import (
    CLASSES,
    COLORS,
    QUESTION_TYPES,
    AVWorldConfig,
    cache_key,
    ensure_avworld,
    frame_times,
    generate,
    make_dialogue,
    make_scene,
    nominal,
    shape_mask,
    stream_config,
    vocabulary,
)
from ssm_mm.worlds.avworld.__main__ import main as avworld_main

FFPROBE = shutil.which("ffprobe")
# Jitter, drops, a late audio track, noise and a shifted clock: every knob away from its default.
KNOBS = dict(
    streams=3, seconds=20.0, fps=4.0, jitter=0.04, drop=0.15, offset=0.4, noise=0.03, clock=1000.0, seed=7
)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("avw") / "a", **KNOBS)


@pytest.fixture(scope="module")
def decoded(world):
    m = read_manifest(world)  # check_media: real files with both streams
    return m, [(spec, decode_video(spec.video), decode_audio(spec.video)) for spec in m]


# ---------------------------------------------------------------------------------------------
# Measuring the media back
# ---------------------------------------------------------------------------------------------

KINDS = [c.shape for c in CLASSES]
PALETTE = {name: np.array(rgb, np.float32) for name, rgb in COLORS.items()}


def classify_blob(mask: np.ndarray) -> str:
    """Kind of one shape's pixel mask, for the four kinds of the default classes, from two features
    that survive h264 coding: how much of its bounding box it fills (square ~1, disc ~0.79, triangle
    and cross ~0.5) and its top/bottom balance (the triangle points up)."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    fill = mask.sum() / ((y1 - y0) * (x1 - x0))
    if fill > 0.93:  # decoded AVWorld frames: squares 1.0, discs 0.72-0.85, the others <= 0.58
        return "square"
    if fill > 0.65:
        return "circle"
    mid = (y0 + y1) // 2
    top, bottom = mask[y0:mid].sum(), mask[mid:y1].sum()
    return "triangle" if top < 0.55 * bottom else "cross"  # triangles <= 0.43, crosses >= 0.69


def test_blob_classifier_on_rendered_shapes():
    # The measuring tool itself, on clean renders of every default kind at several sizes and positions.
    for kind in KINDS[:4]:
        for r in (8.0, 9.5, 11.0):
            for cx, cy in ((16.0, 16.0), (47.3, 18.6)):
                assert classify_blob(shape_mask(kind, cx, cy, r, 64)) == kind


def measure_shapes(frame: np.ndarray) -> dict[str, str]:
    """{kind: colour} of the shapes in one decoded frame: the pixels near each palette colour (visible
    shapes have distinct colours), classified by :func:`classify_blob`."""
    f = frame.astype(np.float32)
    found = {}
    for color, rgb in PALETTE.items():
        mask = ((f - rgb) ** 2).sum(-1) < 60.0**2
        if mask.sum() < 25:
            continue
        found[classify_blob(mask)] = color
    return found


def band_energy(clip, t: float, band: tuple[float, float], width: float = 0.25) -> float:
    """Energy of the decoded audio in ``band`` (Hz) over ``[t - width/2, t + width/2]`` (nan off the track).

    A rectangular 0.25 s window spans exactly one period of the drum's bursts, so its energy does not
    depend on where the window falls between two hits."""
    sr = clip.sample_rate
    i0 = round((t - width / 2 - clip.t0) * sr)
    i1 = i0 + round(width * sr)
    x = clip.samples.numpy().astype(np.float64)
    if i0 < 0 or i1 > x.shape[0]:
        return float("nan")
    seg = x[i0:i1]
    spec = np.abs(np.fft.rfft(seg)) ** 2
    f = np.fft.rfftfreq(i1 - i0, 1 / sr)
    return float(spec[(f >= band[0]) & (f <= band[1])].sum())


def sound_on(clip, times: np.ndarray, cls) -> np.ndarray:
    """(T,) bool: is class ``cls``'s sound audible around each time (3x the band's noise floor; tones
    are ~1000x above it, the drum's noise bursts ~20x at this noise level)."""
    e = np.array([band_energy(clip, t, cls.band) for t in times])
    floor = np.nanmedian(
        np.array([band_energy(clip, t, cls.band) for t in np.arange(0.5, clip.end - 0.2, 0.1)])
    )
    return np.nan_to_num(e, nan=0.0) > 3 * floor


# ---------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_files_and_decoded_content(world, tmp_path):
    again = generate(tmp_path / "b", **KNOBS)
    assert again.read_bytes() == world.read_bytes()  # byte-identical manifest
    assert (again.parent / "scenes.jsonl").read_bytes() == (world.parent / "scenes.jsonl").read_bytes()
    spec = read_manifest(world).streams[0]
    other = read_manifest(again).streams[0]
    v1, v2 = decode_video(spec.video), decode_video(other.video)
    assert v1.frames.equal(v2.frames) and v1.timestamps.equal(v2.timestamps)
    a1, a2 = decode_audio(spec.video), decode_audio(other.video)
    assert a1.samples.equal(a2.samples) and a1.t0 == a2.t0
    different = generate(tmp_path / "c", **{**KNOBS, "seed": 8, "streams": 1})
    assert (
        json.loads(different.read_text().splitlines()[0])["segments"]
        != json.loads(world.read_text().splitlines()[0])["segments"]
    )


def test_manifest_fields_and_knobs(decoded):
    m, items = decoded
    assert len(m) == KNOBS["streams"] and m.skipped == []
    assert set(m.labels) <= {c.name for c in CLASSES[:4]}
    for spec, video, audio in items:
        assert spec.t0 == KNOBS["clock"] and spec.duration == KNOBS["seconds"] and spec.audio_from_video
        assert spec.segments, "every stream has AV events"
        ts = video.timestamps.numpy()
        assert video.frames.shape[1:] == (64, 64, 3) and audio.sample_rate == 16000
        # Jitter: real times off the 0.25 s grid, but within +-jitter of it; drops: gaps of >= 2 frames.
        grid = np.round(ts * 4) / 4
        assert np.abs(ts - grid).max() <= KNOBS["jitter"] + 1e-9 and np.abs(ts - grid).max() > 0.005
        assert np.diff(ts).max() > 0.4 and len(ts) < 80
        # The audio track starts 0.4 s after the video (aac priming may put one silent frame before it).
        assert ts[0] == 0.0 and 0.4 - 0.07 <= audio.t0 <= 0.4 + 1e-6
        assert 0.25 < float(np.abs(audio.samples.numpy()).max()) < 1.0


def test_segments_match_measured_audio_and_video(decoded):
    """An AV event of class c = c's sound measured in its band AND a shape of c's kind measured in the
    frame. At every frame away from segment boundaries this must equal "inside a segment labelled c"."""
    _, items = decoded
    audio_only = video_only = checked = 0
    for spec, video, audio in items:
        ts = video.timestamps.numpy()
        shapes = [measure_shapes(f) for f in video.frames.numpy()]
        bounds = np.array([b for s in spec.segments for b in (s.start, s.end)])
        for cls in CLASSES[:4]:
            heard = sound_on(audio, ts, cls)
            seen = np.array([cls.shape in s for s in shapes])
            truth = np.array(
                [any(s.label == cls.name and s.start <= t < s.end for s in spec.segments) for t in ts]
            )
            away = np.array([np.abs(bounds - t).min() > 0.15 for t in ts])
            measured = heard & seen
            bad = np.nonzero(away & (measured != truth))[0]
            assert bad.size == 0, f"{spec.id} {cls.name}: frames at {ts[bad]} disagree with the segments"
            checked += int(away.sum())
            audio_only += int((heard & ~seen).sum())
            video_only += int((seen & ~heard).sum())
    assert checked > 150
    assert audio_only > 0 and video_only > 0  # distractors exist and are background
    # each segment's attributes are its shape's look, measured in the frame nearest its middle
    looks = others = 0
    for spec, video, _ in items:
        ts = video.timestamps.numpy()
        for s in spec.segments:
            cls = next(c for c in CLASSES if c.name == s.label)
            assert s.attributes["shape"] == cls.shape, (spec.id, s)
            seen = measure_shapes(video.frames.numpy()[int(np.argmin(np.abs(ts - (s.start + s.end) / 2)))])
            assert seen.get(cls.shape) == s.attributes["color"], (spec.id, s, seen)
            # every shape on screen then, by kind and by colour (it is on screen throughout the event)
            of_kind = {
                k.removeprefix("color_of_"): v for k, v in s.attributes.items() if k.startswith("color_of_")
            }
            of_color = {
                k.removeprefix("shape_of_"): v for k, v in s.attributes.items() if k.startswith("shape_of_")
            }
            assert of_kind[cls.shape] == s.attributes["color"] and of_color == {
                c: k for k, c in of_kind.items()
            }
            assert all(seen.get(k) == c for k, c in of_kind.items()), (spec.id, s, seen)
            looks += 1
            others += len(of_kind) - 1
    assert looks >= 10 and others >= 1


def test_dialogue_is_consistent_with_segments_and_frames(decoded):
    _, items = decoded
    names = {c.name for c in CLASSES}
    counts = {k: 0 for k in QUESTION_TYPES}
    for spec, video, _ in items:
        ts = video.timestamps.numpy()
        frames = video.frames.numpy()
        turns = spec.dialogue
        assert all(a.t <= b.t for a, b in zip(turns, turns[1:]))
        accounted = set()  # indices of assistant turns explained by a question or a proactive request
        for i, q in enumerate(turns):
            if q.role == "assistant":
                continue
            assert q.type in QUESTION_TYPES, q
            counts[q.type] += 1
            t = q.t
            assert t * 2 == round(t * 2)  # on the 0.5 s grid
            assert all(abs(s.start - t) > 1.0 for s in spec.segments)
            if q.type == "proactive":
                cls = q.text.split("the ")[1].split()[0]
                expect = [s.start for s in spec.segments if s.label == cls and s.start > t]
                asked_at = {x.t for x in turns if x.role == "user"}  # assistant turns there are answers
                got = [
                    j
                    for j, x in enumerate(turns)
                    if x.role == "assistant" and x.text == cls and x.t > t and x.t not in asked_at
                ]
                assert [turns[j].t for j in got] == expect  # one response at the start of each later AV event
                accounted.update(got)
                ack = turns[i + 1]  # acknowledged at once, as an answer
                assert ack.role == "assistant" and ack.t == t and ack.text == "ok", ack
                accounted.add(i + 1)
                continue
            a = turns[i + 1]
            accounted.add(i + 1)
            assert a.role == "assistant" and a.t == t, (q, a)
            before = [s for s in spec.segments if s.start < t]
            if q.type == "count":
                cls = q.text.split("did the ")[1].split()[0]
                assert a.text == str(sum(s.label == cls for s in before))
            elif q.type == "order":
                x, y = q.text.removeprefix("which came first, the ").rstrip("?").split(" or the ")
                first = {lab: min(s.start for s in before if s.label == lab) for lab in (x, y)}
                assert a.text == min(first, key=first.get)
            elif q.type in ("color", "kind"):
                cls = q.text.split("when the ")[1].split()[0]
                seg = [s for s in before if s.label == cls][-1]  # the last one: "when the X last ..."
                inside = [k for k, tt in enumerate(ts) if seg.start + 0.05 < tt < seg.end - 0.05]
                if q.type == "color":  # the segment's attributes hold the answer (recall_attributes)
                    kind = q.text.split("was the ")[1].split()[0]
                    assert seg.attributes[f"color_of_{kind}"] == a.text, (q.text, seg.attributes)
                else:
                    color = q.text.split("which shape was ")[1].split()[0]
                    assert seg.attributes[f"shape_of_{color}"] == a.text, (q.text, seg.attributes)
                for k in inside:
                    seen = measure_shapes(frames[k])
                    if q.type == "color":
                        assert seen.get(kind) == a.text, (q.text, a.text, seen)
                    else:
                        assert {c: k_ for k_, c in seen.items()}.get(color) == a.text, (q.text, seen)
            elif q.type == "now":
                seen = measure_shapes(frames[np.nonzero(ts <= t + 1e-9)[0][-1]])  # the frame shown at t
                if q.text.startswith("how many shapes"):
                    assert a.text == str(len(seen))
                elif q.text.startswith("what shape"):
                    assert [a.text] == list(seen)
                else:
                    kind = q.text.split("is the ")[1].split()[0]
                    assert seen.get(kind) == a.text
            assert a.text in names | set(COLORS) | set(KINDS) or a.text.isdigit()
        assert accounted == {j for j, x in enumerate(turns) if x.role == "assistant"}
    assert counts["proactive"] > 0 and sum(counts.values()) >= 6


def test_scene_depends_only_on_seed_length_density_and_classes():
    base = AVWorldConfig(seed=3, seconds=30.0)
    ref = make_scene(base, 0)
    for knob in (dict(fps=10.0), dict(jitter=0.05), dict(drop=0.3), dict(noise=0.1), dict(clock=5.0)):
        assert make_scene(dataclasses.replace(base, **knob), 0) == ref, knob
    assert make_scene(dataclasses.replace(base, seed=4), 0) != ref
    # The world rules: at any time the visible shapes differ in kind, colour and quadrant.
    for t in np.arange(0, 30, 0.05):
        vis = [s for s in ref.shapes if s.visible(t)]
        for attr in ("kind", "color", "quadrant"):
            assert len({getattr(s, attr) for s in vis}) == len(vis)


def test_frame_times_knobs():
    cfg = AVWorldConfig(seconds=60.0, fps=8.0, jitter=0.05, drop=0.25, seed=1)
    t = frame_times(cfg, 0, 0.0)
    assert t[0] == 0.0 and np.all(np.diff(t) > 0) and t[-1] < 60.0
    assert 0.65 < len(t) / (60 * 8) < 0.85  # ~25% dropped
    assert np.allclose(t * 1000, np.round(t * 1000))  # 1 ms resolution: exact in the file
    assert np.abs(t - np.round(t * 8) / 8).max() <= 0.05 + 1e-9


@pytest.mark.parametrize(
    "knob,value",
    [
        ("jitter", 0.2),
        ("drop", 1.0),
        ("seconds", 2.0),
        ("classes", 9),
        ("offset", 9.0),
        ("fps", 0.0),
        ("jitter_spread", 0.2),
        ("drop_spread", -0.1),
        ("offset_spread", 8.0),
    ],
)
def test_bad_knobs_name_the_knob(knob, value):
    with pytest.raises(ValueError, match=knob):
        AVWorldConfig(**{knob: value})


def test_ensure_avworld_generates_once_atomically(tmp_path):
    cache = tmp_path / "cache"
    m1 = ensure_avworld(cache, streams=1, seconds=6.0)
    assert m1.parent.name == cache_key(AVWorldConfig(streams=1, seconds=6.0))
    stamp = m1.stat().st_mtime_ns
    assert ensure_avworld(cache, streams=1, seconds=6.0) == m1 and m1.stat().st_mtime_ns == stamp
    m2 = ensure_avworld(cache, streams=1, seconds=6.0, seed=1)
    assert m2 != m1 and m2.is_file()
    assert sorted(p.name for p in cache.iterdir()) == sorted([m1.parent.name, m2.parent.name])  # no temp dirs
    with pytest.raises(ValueError, match="unknown AVWorld knob.*valid"):
        ensure_avworld(cache, stream=3)


def test_cache_key_is_canonical_and_sensitive():
    # a float knob spelled as an int names the same data (config files and code differ in spelling)
    assert cache_key(AVWorldConfig(seconds=30, question_every=2)) == cache_key(
        AVWorldConfig(seconds=30.0, question_every=2.0)
    )
    assert isinstance(AVWorldConfig.from_knobs(seconds=30).seconds, float)
    assert cache_key(AVWorldConfig(seconds=30.0)) != cache_key(AVWorldConfig(seconds=30.5))
    assert cache_key(AVWorldConfig(question_every=2.0)) != cache_key(AVWorldConfig(question_every=4.0))


def test_cli_writes_playable_files(tmp_path):
    out = tmp_path / "w"
    cmd = [
        sys.executable,
        "-m",
        "ssm_mm.worlds.avworld",
        "--out",
        str(out),
        "--streams",
        "4",
        "--seconds",
        "20",
    ]
    subprocess.run(cmd, check=True, timeout=120, capture_output=True)
    m = read_manifest(out / "manifest.jsonl")
    assert len(m) == 4
    if FFPROBE is None:
        pytest.skip("ffprobe not installed (the files were still read back by the validator)")
    for spec in m:
        r = subprocess.run(
            [
                FFPROBE,
                "-v",
                "error",
                "-show_entries",
                "stream=codec_type,codec_name,duration",
                "-of",
                "json",
                str(spec.video),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
        streams = {s["codec_type"]: s for s in json.loads(r.stdout)["streams"]}
        assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac"
        assert abs(float(streams["video"]["duration"]) - 20.0) < 0.5


def test_word_tokenizer_covers_every_dialogue_turn():
    """Every turn of many worlds (all classes, long streams, dense questions) encodes without [UNK],
    one token per word, and every answer decodes back exactly (exact-match scoring relies on it)."""
    tok = JsonTokenizer(word_tokenizer_json(vocabulary()))
    cfg = AVWorldConfig(seconds=120.0, classes=len(CLASSES), question_every=1.0, density=4.0)
    types = set()
    for stream in range(40):
        for turn in make_dialogue(cfg, stream, make_scene(cfg, stream), 0.0):
            ids = tok.encode(turn.text)
            assert 0 not in ids, f"unknown word in {turn.text!r}"
            assert len(ids) == len(turn.text.replace("?", " ?").replace(",", " ,").split())
            if turn.role == "assistant":
                assert tok.decode(tok.encode_turn("assistant", turn.text)) == turn.text
            types.add(turn.type)
    assert types >= set(QUESTION_TYPES)
    assert tok.encode("What COLOR is the Cross now?") == tok.encode("what color is the cross now?")
    assert tok.encode("hello bell") == [0, tok.encode("bell")[0]]  # out of vocabulary -> [UNK]


def test_shipped_word_tokenizer_is_the_generated_one(tmp_path):
    shipped = Path(__file__).resolve().parents[2] / "configs" / "tokenizers" / "avworld_words.json"
    assert avworld_main(["--write-tokenizer", str(tmp_path / "t.json")]) == 0
    assert (tmp_path / "t.json").read_text() == shipped.read_text(), (
        "configs/tokenizers/avworld_words.json is stale: regenerate it with "
        "python -m ssm_mm.worlds.avworld --write-tokenizer configs/tokenizers/avworld_words.json"
    )
    with pytest.raises(ValueError, match="lower-case word"):
        word_tokenizer_json(["Bell"])


def test_timing_spreads_vary_streams_within_bounds_and_keep_the_world(tmp_path):
    base = AVWorldConfig(seconds=20.0, jitter=0.01, drop=0.05, offset=0.1, seed=2)
    assert stream_config(base, 0) is base  # no spreads: every stream alike
    cfg = dataclasses.replace(base, jitter_spread=0.05, drop_spread=0.2, offset_spread=0.4)
    drawn = [stream_config(cfg, i) for i in range(40)]
    assert drawn == [stream_config(cfg, i) for i in range(40)]  # seeded
    for d in drawn:
        assert (d.jitter_spread, d.drop_spread, d.offset_spread) == (0.0, 0.0, 0.0)
        assert 0.01 <= d.jitter < 0.06 and 0.05 <= d.drop < 0.25 and -0.3 <= d.offset <= 0.5
        assert make_scene(d, 0) == make_scene(base, 0)  # the same world, rendered with other timing
    assert len({(d.jitter, d.drop, d.offset) for d in drawn}) == 40
    # the keys are pinned: the spreads at 0 leave them as they were before they existed, and the
    # split knobs (val_streams, val_seed) are not part of them; only GENERATOR_VERSION moves them (5:
    # faster encoder settings). A spread is another dataset
    assert cache_key(AVWorldConfig(streams=4, seconds=20.0)) == "avworld-2ecf43f269b691b3"
    assert cache_key(AVWorldConfig()) == "avworld-1209400499458d17"  # the default run's training streams
    assert cache_key(AVWorldConfig(val_streams=64, val_seed=7)) == cache_key(AVWorldConfig())
    assert cache_key(cfg) != cache_key(base)
    held_out = nominal(dataclasses.replace(cfg, question_mix={"color": 3.0}))
    assert (held_out.jitter_spread, held_out.drop_spread, held_out.offset_spread) == (0.0, 0.0, 0.0)
    assert held_out.question_weights == () and held_out.jitter == cfg.jitter

    out = tmp_path / "w"
    generate(out, dataclasses.replace(cfg, streams=3, seconds=8.0))
    records = [json.loads(line) for line in (out / "scenes.jsonl").read_text().splitlines()]
    for i, r in enumerate(records):
        d = stream_config(dataclasses.replace(cfg, streams=3, seconds=8.0), i)
        assert r["timing"] == {"jitter": d.jitter, "drop": d.drop, "offset": d.offset}
        assert r["audio_start"] == max(0.0, d.offset) and r["video_start"] == max(0.0, -d.offset)


def test_question_mix_weights_the_types_and_validates():
    def counts(cfg):
        c = {}
        for stream in range(30):
            for turn in make_dialogue(cfg, stream, make_scene(cfg, stream), 0.5):
                if turn.role == "user":
                    c[turn.type] = c.get(turn.type, 0) + 1
        return c

    base = AVWorldConfig(seconds=60.0, question_every=2.0)
    assert AVWorldConfig(question_mix={"count": 1.0}).question_weights == ()  # all 1: the uniform mix
    assert cache_key(AVWorldConfig(question_mix={"count": 1.0})) == cache_key(AVWorldConfig())
    assert AVWorldConfig(question_mix=(1, 2, 1, 1, 1)).question_mix == {  # 5 weights: stored as a mapping
        "count": 1.0, "color": 2.0, "kind": 1.0, "order": 1.0, "now": 1.0
    }  # fmt: skip
    assert counts(dataclasses.replace(base, question_mix={})) == counts(base)
    uni = counts(base)
    mixed = counts(dataclasses.replace(base, question_mix={"color": 4.0, "now": 4.0, "count": 0.25}))
    assert mixed["color"] > 1.5 * uni["color"] and mixed["now"] > 1.5 * uni["now"]
    assert mixed["count"] < uni["count"] / 2
    assert "count" not in counts(dataclasses.replace(base, question_mix={"count": 0.0}))
    assert cache_key(dataclasses.replace(base, question_mix={"color": 2.0})) != cache_key(base)
    with pytest.raises(ValueError, match="question_mix: unknown type.*colour"):
        AVWorldConfig(question_mix={"colour": 2.0})
    with pytest.raises(ValueError, match="question_mix: need 5"):
        AVWorldConfig(question_mix={"color": -1.0})
