"""Streams -> examples -> windows -> batches: windows tile the stream exactly, collate pads and
masks, the feature cache, and the dataset plumbing (synthetic features; AVWorld end to end)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import ssm_mm.data.dataset as ds_mod
from ssm_mm.data.dataset import (
    Batch,
    StreamDataset,
    StreamFeatures,
    build_example,
    collate,
    cut_window,
    window_bounds,
)
from ssm_mm.data.featurize import FeaturizerConfig
from ssm_mm.data.interleave import AUDIO, IGNORE_INDEX, TEXT, VIDEO, TimedTokens, tick_summary_positions
from ssm_mm.data.manifest import Segment, StreamSpec, Turn
from ssm_mm.data.tokenizer import ByteTokenizer
from ssm_mm.media import MediaError
from ssm_mm.objectives import LMConfig, Recall

CFG = FeaturizerConfig(frame_size=16)  # small frames keep the synthetic tensors tiny
TOK = ByteTokenizer()
LABELS = ["background", "bell", "drum"]


def _features(seconds: float, *, video=True, audio=True, drop=(), jitter=0.0, seed=0) -> StreamFeatures:
    """Synthetic features whose values encode their row (frame f is filled with f, audio row a with a)."""
    rng = np.random.default_rng(seed)
    ts = np.arange(int(seconds * 4)) * 0.25 + rng.uniform(0, jitter, int(seconds * 4))
    ts = np.delete(ts, list(drop))
    v = np.broadcast_to(
        np.arange(ts.size, dtype=np.float32)[:, None, None, None], (ts.size, 3, 16, 16)
    ).copy()
    n_a = int(round(seconds * 10))
    a = np.broadcast_to(np.arange(n_a, dtype=np.float32)[:, None], (n_a, CFG.audio_token_dim)).copy()
    return StreamFeatures(
        video=v if video else None,
        video_times=ts if video else np.zeros(0),
        audio=a if audio else None,
        audio_t0=0.0,
    )


def _spec(sid="s0", duration=6.0, t0=0.0, video=True, audio=True) -> StreamSpec:
    return StreamSpec(
        id=sid,
        video=Path(f"/nonexistent/{sid}.mp4") if video else None,
        audio=None if (video or not audio) else Path(f"/nonexistent/{sid}.wav"),
        audio_from_video=video and audio,
        duration=duration,
        t0=t0,
        dialogue=[
            Turn(1.0, "user", "tell me when the drum plays", "proactive"),
            Turn(1.0, "assistant", "ok"),
            Turn(2.3, "assistant", "drum"),
            Turn(4.1, "user", "how many?", "count"),
            Turn(4.1, "assistant", "2"),
        ],
        segments=[Segment(2.0, 2.6, "drum"), Segment(3.0, 3.2, "bell"), Segment(5.0, 6.0, "bell")],
    )


def _globalise(w) -> TimedTokens:
    """A window's tokens with stream-global feature rows."""
    src = w.tokens.src.clone()
    src[w.tokens.kind == VIDEO] += w.video_offset * w.patches_per_frame
    src[w.tokens.kind == AUDIO] += w.audio_offset
    return TimedTokens(**{**w.tokens.columns(), "src": src})


# ----------------------------------------------------------------------------------------- windows


@pytest.mark.parametrize(
    "t0, drop, ticks_per_window", [(0.0, (), 4), (1e6 + 0.37, (3, 4, 5, 6, 7), 3), (12.0, (10,), 100)]
)
def test_windows_concatenated_equal_the_whole_stream(t0, drop, ticks_per_window):
    feats = _features(6.0, drop=drop, jitter=0.05)
    ex = build_example(_spec(t0=t0), feats, TOK, LABELS, CFG)
    assert ex.n_ticks == 12 and len(ex.tokens) > 0
    bounds = window_bounds(ex.n_ticks, ticks_per_window)
    wins = [cut_window(ex, k0, k1, CFG, i, len(bounds)) for i, (k0, k1) in enumerate(bounds)]
    assert TimedTokens.cat([_globalise(w) for w in wins]).equal(ex.tokens)
    assert torch.equal(torch.cat([w.targets["lm"] for w in wins]), ex.targets["lm"])
    assert torch.equal(torch.cat([w.targets["event"] for w in wins]), ex.targets["event"])
    assert torch.equal(torch.cat([w.targets["speak"] for w in wins]), ex.targets["speak"])
    # per-tick summary positions, shifted back to stream positions, are the whole stream's
    offsets = np.cumsum([0] + [len(w.tokens) for w in wins[:-1]])
    summ = torch.cat(
        [torch.where(w.summary_pos >= 0, w.summary_pos + int(o), -1) for w, o in zip(wins, offsets)]
    )
    ticks, pos = tick_summary_positions(ex.tokens)
    expect = torch.full((ex.n_ticks,), -1, dtype=torch.int64)
    expect[ticks] = pos
    assert torch.equal(summ, expect)
    if drop == (3, 4, 5, 6, 7):  # 1.0 s without video still has audio, so every tick has a summary
        assert torch.all(summ >= 0)
    # each window's feature rows are the stream's rows it refers to
    for w in wins:
        assert torch.equal(
            w.video, torch.from_numpy(feats.video[w.video_offset : w.video_offset + w.video.shape[0]])
        )
        assert torch.equal(
            w.audio, torch.from_numpy(feats.audio[w.audio_offset : w.audio_offset + w.audio.shape[0]])
        )
        assert torch.all((w.tokens.tick >= w.tick_start) & (w.tokens.tick < w.tick_end))
        local = w.tokens.src[w.tokens.kind == VIDEO] // CFG.patches_per_frame
        assert local.numel() == 0 or (local.min() == 0 and local.max() == w.video.shape[0] - 1)


def test_example_targets_and_times():
    ex = build_example(_spec(t0=100.0), _features(6.0), TOK, LABELS, CFG)
    # ticks: drum [2.0, 2.6) -> ticks 4 (0.5 s) and 5 (0.1 s: background); bell [3.0, 3.2) -> tick 6
    # background (0.2 < 0.3); bell [5.0, 6.0) -> ticks 10, 11
    assert ex.targets["event"].tolist() == [0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1, 1]
    assert torch.nonzero(ex.targets["speak"]).squeeze(1).tolist() == [
        4
    ]  # proactive "drum" at 2.3 -> end of tick 4
    assert ex.tokens.t[0].item() == 100.0  # first frame at media time 0, on the clock
    audio_t = ex.tokens.t[ex.tokens.kind == AUDIO]
    assert torch.equal(audio_t, 100.0 + torch.arange(1, 61, dtype=torch.float64) * 0.1)
    text_t = ex.tokens.t[ex.tokens.kind == TEXT].unique().tolist()
    assert text_t == [101.0, 102.5, 104.5]
    assert (ex.targets["lm"] != IGNORE_INDEX).sum().item() == len("ok") + len("drum") + len("2") + 3


def test_media_past_the_duration_is_dropped_and_single_modalities_work():
    ex = build_example(_spec(duration=4.0), _features(6.0), TOK, LABELS, CFG)
    assert ex.n_ticks == 8 and int(ex.tokens.tick.max()) == 7
    assert float(ex.tokens.t[ex.tokens.kind == AUDIO].max()) == 4.0
    a = build_example(_spec(video=False), _features(6.0, video=False), TOK, LABELS, CFG)
    assert not torch.any(a.tokens.kind == VIDEO)
    w = cut_window(a, 0, 4, CFG)
    assert w.video.shape == (0, 3, 16, 16) and w.audio.shape == (20, CFG.audio_token_dim)
    v = build_example(_spec(audio=False), _features(6.0, audio=False), TOK, LABELS, CFG)
    assert not torch.any(v.tokens.kind == AUDIO)


# ------------------------------------------------------------------------------------------ collate


def test_collate_pads_masks_and_gathers():
    ex_a = build_example(_spec("a"), _features(6.0, seed=1), TOK, LABELS, CFG)
    ex_b = build_example(_spec("b", video=False), _features(6.0, video=False), TOK, LABELS, CFG)
    wins = [
        cut_window(ex_a, 0, 4, CFG, 0, 3),
        cut_window(ex_a, 8, 12, CFG, 2, 3),
        cut_window(ex_b, 10, 12, CFG, 5, 6),
    ]
    b = collate(wins, TOK.pad_id)
    n = [len(w.tokens) for w in wins]
    B, L, K = 3, max(n), 4
    assert b.kind.shape == b.t.shape == b.src.shape == b.valid.shape == b.targets["lm"].shape == (B, L)
    assert (
        b.tick_index.shape
        == b.tick_valid.shape
        == b.targets["event"].shape
        == b.targets["speak"].shape
        == (B, K)
    )
    assert (
        b.lengths.tolist() == n and b.t.dtype == torch.float64 and b.targets["speak"].dtype == torch.float32
    )
    for r, w in enumerate(wins):
        m = n[r]
        assert torch.equal(b.kind[r, :m], w.tokens.kind) and torch.equal(b.t[r, :m], w.tokens.t)
        # padding: PAD text tokens, repeated last time, no targets, no ticks
        assert torch.all(b.kind[r, m:] == TEXT) and torch.all(b.src[r, m:] == TOK.pad_id)
        assert torch.all(b.t[r, m:] == w.tokens.t[-1]) and torch.all(b.targets["lm"][r, m:] == IGNORE_INDEX)
        assert torch.all(b.tick[r, m:] == -1) and not b.valid[r, m:].any()
        # gather indices reach the same feature rows as the window's own
        vid = b.kind[r, :m] == VIDEO
        ppf = CFG.patches_per_frame
        assert torch.equal(b.video[b.src[r, :m][vid] // ppf], w.video[w.tokens.src[vid] // ppf])
        assert torch.all(b.video_batch[b.src[r, :m][vid] // ppf] == r)
        aud = b.kind[r, :m] == AUDIO
        assert torch.equal(b.audio[b.src[r, :m][aud]], w.audio[w.tokens.src[aud]])
        assert torch.all(b.audio_batch[b.src[r, :m][aud]] == r)
        k = w.tick_end - w.tick_start
        assert b.tick_index[r, :k].tolist() == list(range(w.tick_start, w.tick_end))
        assert torch.all(b.tick_index[r, k:] == -1) and not b.tick_valid[r, k:].any()
        has = w.summary_pos >= 0
        assert torch.equal(b.tick_valid[r, :k], has)
        assert torch.equal(b.targets["event"][r, :k][has], w.targets["event"][has])
        assert torch.all(b.targets["event"][r][~b.tick_valid[r]] == IGNORE_INDEX)
        assert torch.all(b.kind[r][b.summary_pos[r][b.tick_valid[r]]] != TEXT)
    assert b.video.shape == (wins[0].video.shape[0] + wins[1].video.shape[0], 3, 16, 16)
    assert b.is_first.tolist() == [True, False, False] and b.is_last.tolist() == [False, True, True]
    assert b.stream_ids == ["a", "a", "b"] and b.tick_start.tolist() == [0, 8, 10]
    moved = b.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.src, b.src) and moved.stream_ids == b.stream_ids


def test_recall_frames_reach_back_across_windows():
    """Each tick's recall frame is the stream frame nearest the middle of each label's last finished
    segment, carried by every window that needs it (also when it lies before the window) and re-based
    by collate; a stream without video has none."""
    # segments (_spec): drum [2.0, 2.6) -> mid 2.3, over in tick 5; bell [3.0, 3.2) -> mid 3.1, tick 6;
    # bell [5.0, 6.0) -> mid 5.5, tick 11. Frames every 0.25 s, frame 3 dropped: frame rows shift.
    feats = _features(6.0, drop=(3,))
    recall = [Recall(labels=LABELS)]
    ex = build_example(_spec(), feats, TOK, LABELS, CFG, objectives=recall)
    ts = feats.video_times
    row = lambda t: int(np.argmin(np.abs(ts - t)))  # noqa: E731
    none = [-1, -1]
    expect = [none] * 5 + [[-1, row(2.3)]] + [[row(3.1), row(2.3)]] * 5 + [[row(5.5), row(2.3)]]
    assert ex.targets["recall"].tolist() == expect and row(2.3) == 8  # 2.25 is row 8 after the drop
    wins = [cut_window(ex, k0, k1, CFG, i, 3) for i, (k0, k1) in enumerate(window_bounds(12, 4))]
    for w in wins:
        k = slice(w.tick_start, w.tick_end)
        seen = w.targets["recall"] >= 0
        assert torch.equal(seen, ex.targets["recall"][k] >= 0)
        # synthetic frame f is filled with the value f: the carried rows are the stream's frames
        values = w.targets["recall_frames"][w.targets["recall"][seen], 0, 0, 0]
        assert torch.equal(values, ex.targets["recall"][k][seen].float())
        assert w.targets["recall_frames"].shape[0] == len(
            ex.targets["recall"][k][seen].unique()
        )  # each frame once
    assert wins[0].targets["recall_frames"].shape == (0, 3, 16, 16)
    assert wins[2].video_offset > row(2.3)  # the drum's frame lies before the last window: carried anyway
    b = collate(wins[1:], TOK.pad_id)
    assert b.targets["recall_frames"].shape[0] == sum(w.targets["recall_frames"].shape[0] for w in wins[1:])
    for r, w in enumerate(wins[1:]):
        seen = b.targets["recall"][r] >= 0
        assert torch.equal(seen, (w.targets["recall"] >= 0) & (w.summary_pos >= 0)[:, None])
        values = b.targets["recall_frames"][b.targets["recall"][r][seen], 0, 0, 0]
        assert torch.equal(values, ex.targets["recall"][w.tick_start : w.tick_end][seen].float())
    no_video = build_example(
        _spec(video=False), _features(6.0, video=False), TOK, LABELS, CFG, objectives=recall
    )
    assert bool((no_video.targets["recall"] == -1).all())
    w = cut_window(no_video, 4, 12, CFG)
    assert w.targets["recall_frames"].shape == (0, 3, 16, 16) and bool((w.targets["recall"] == -1).all())


def test_collate_rejects_mismatched_windows():
    ex = build_example(_spec(), _features(6.0), TOK, LABELS, CFG)
    w = cut_window(ex, 0, 2, CFG)
    other = cut_window(
        build_example(
            _spec(), _features(6.0), TOK, LABELS, FeaturizerConfig(frame_size=16, patches_per_frame=16)
        ),
        0,
        2,
        FeaturizerConfig(frame_size=16, patches_per_frame=16),
    )
    with pytest.raises(ValueError, match="patches_per_frame"):
        collate([w, other], TOK.pad_id)
    with pytest.raises(ValueError, match="empty"):
        collate([], TOK.pad_id)


# ----------------------------------------------------------------------------------------- dataset


def test_dataset_indexing_memory_cache_and_pickling(monkeypatch):
    calls = []

    def fake_load(spec, cfg, cache_dir=None):
        calls.append(spec.id)
        return _features(spec.duration, video=spec.video is not None)

    monkeypatch.setattr(ds_mod, "load_features", fake_load)
    specs = [_spec("a", duration=6.0), _spec("b", duration=2.2, video=False), _spec("c", duration=4.0)]
    ds = StreamDataset(specs, CFG, TOK, window_seconds=2.0)
    assert ds.labels == LABELS  # background + the sorted segment labels
    assert ds.n_ticks == [12, 5, 8] and ds.windows_per_stream == [3, 2, 2] and len(ds) == 7
    assert [ds.locate(i) for i in range(7)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert all(ds.index(*ds.locate(i)) == i for i in range(7))
    w = ds[4]
    assert (w.stream_id, w.window_index, w.n_windows, w.tick_start, w.tick_end) == ("b", 1, 2, 4, 5)
    # consecutive windows of one stream decode it once
    calls.clear()
    for i in range(7):
        ds[i]
    assert calls == ["a", "b", "c"]
    # whole-stream windows
    whole = StreamDataset(specs, CFG, TOK, window_seconds=None)
    assert len(whole) == 3 and whole[0].tick_end == 12
    # the decoded streams stay in their process
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone._examples) == 0 and len(clone) == 7
    assert clone[1].tokens.equal(ds[1].tokens)
    b = ds.collate([ds[0], ds[3]])
    assert b.batch_size == 2 and b.lengths.tolist() == [len(ds[0].tokens), len(ds[3].tokens)]
    with pytest.raises(ValueError, match="multiple of tick_seconds"):
        StreamDataset(specs, CFG, TOK, window_seconds=1.25)
    with pytest.raises(IndexError):
        ds[7]
    # answer weights reach the windows and the batch: the count answer "2" (its token and EOT) weighs 4
    weighted = StreamDataset(
        specs, CFG, TOK, window_seconds=None, objectives={"lm": LMConfig(answer_weights={"count": 4.0})}
    )
    wb = weighted.collate([weighted[0], weighted[2]])
    assert wb.targets["lm_weight"].shape == wb.targets["lm"].shape
    assert torch.equal(
        b.targets["lm_weight"], torch.ones_like(b.targets["lm_weight"])
    )  # none given: every weight is 1
    for r, n_answer in enumerate([2, 0]):  # stream "c" ends (4.0 s) before the question (4.1 s)
        sup = wb.targets["lm"][r] != IGNORE_INDEX
        answer = sup & (wb.turn[r] == 4)
        assert int(answer.sum()) == n_answer and torch.all(wb.targets["lm_weight"][r][answer] == 4.0)
        assert torch.all(wb.targets["lm_weight"][r][sup & ~answer] == 1.0)
    with pytest.raises(ValueError, match="answer_weights=.*must be finite and >= 0"):
        StreamDataset(specs, CFG, TOK, objectives={"lm": LMConfig(answer_weights={"count": -2.0})})


def test_memory_budget_keeps_more_built_streams_least_recently_used_out(monkeypatch):
    calls = []

    def fake_load(spec, cfg, cache_dir=None):
        calls.append(spec.id)
        return _features(spec.duration)

    monkeypatch.setattr(ds_mod, "load_features", fake_load)
    specs = [_spec("a"), _spec("b"), _spec("c")]
    ds = StreamDataset(specs, CFG, TOK, window_seconds=None, memory_cache=1)
    ex = ds.example(0)
    size = ds_mod.example_nbytes(ex)  # in-memory features count, with tokens and targets
    assert size > ex.features.video.nbytes + ex.features.audio.nbytes + ex.tokens.t.nbytes
    draws = [0, 1, 2, 0, 1]
    for budget, built in [
        (0, ["a", "b", "c", "a", "b"]),  # memory_cache alone: the last stream only
        (10 * size, ["a", "b", "c"]),  # every stream fits: none is built twice
        (2 * size, ["a", "b", "c", "a", "b"]),  # two fit: a and b were least recently used when drawn
    ]:
        ds = StreamDataset(specs, CFG, TOK, window_seconds=None, memory_cache=1, memory_budget=budget)
        calls.clear()
        for s in draws:
            ds[s]
        assert calls == built, budget
        assert ds.kept[1] <= max(budget, size) and set(ds._example_bytes) == set(ds._examples)
    calls.clear()
    ds[1], ds[0]  # a and b, the two most recent, are kept (in the order of their last use)
    assert calls == [] and list(ds._examples) == [1, 0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.kept == (0, 0) and ds.kept == (2, 2 * size)
    ds.forget()
    ds[1]
    assert calls == ["b"] and ds.kept == (1, size)
    with pytest.raises(ValueError, match="memory_budget=-1"):
        StreamDataset(specs, CFG, TOK, memory_budget=-1)


# ------------------------------------------------------------------------------ real media, end to end


@pytest.fixture(scope="module")
def real_manifest(tmp_path_factory):
    """A 3 s mp4 (h264 + aac) through the real writer and decoder: a white square and a 1 kHz tone
    during [1, 2) s, silence and black otherwise; and a video-only stream."""
    from ssm_mm.data.manifest import read_manifest, write_manifest
    from ssm_mm.media import write_media

    root = tmp_path_factory.mktemp("real")
    ts = np.arange(12) / 4
    frames = np.zeros((12, 64, 64, 3), dtype=np.uint8)
    frames[(ts >= 1) & (ts < 2), 16:48, 16:48] = 255
    t = np.arange(3 * 16000) / 16000
    audio = np.where((t >= 1) & (t < 2), 0.5 * np.sin(2 * np.pi * 1000 * t), 0.0).astype(np.float32)
    write_media(root / "av.mp4", frames, ts, audio, 16000)
    write_media(root / "v.mp4", frames, ts)
    dialogue = [Turn(0.5, "user", "tell me when the bell rings"), Turn(1.2, "assistant", "bell")]
    specs = [
        StreamSpec("av", root / "av.mp4", None, True, 3.0, 5.0, dialogue, [Segment(1.0, 2.0, "bell")]),
        StreamSpec("v", root / "v.mp4", None, False, 3.0),
    ]
    return read_manifest(write_manifest(specs, root / "m.jsonl"))


def test_real_media_end_to_end(real_manifest, tmp_path):
    from ssm_mm.data.featurize import AudioFeaturizer
    from ssm_mm.media import decode_audio

    cfg = FeaturizerConfig()
    ds = StreamDataset(real_manifest, cfg, TOK, window_seconds=1.0, cache_dir=tmp_path / "cache")
    assert ds.labels == ["background", "bell"] and ds.windows_per_stream == [3, 3]
    ex = ds.example(0)
    assert ex.targets["event"].tolist() == [0, 0, 1, 1, 0, 0]
    assert ex.targets["speak"].tolist() == [0, 0, 1, 0, 0, 0]  # proactive "bell" at 1.2 s -> end of tick 2
    kinds = ex.tokens.kind
    assert int((kinds == VIDEO).sum()) == 12 * 4 and 28 <= int((kinds == AUDIO).sum()) <= 30
    vt = ex.tokens.t[kinds == VIDEO][::4] - 5.0  # frame times on the media clock (t0 = 5)
    np.testing.assert_allclose(vt.numpy(), np.arange(12) / 4, atol=1e-3)
    # the content sits at its time: the square in frames [1, 2) s, the tone in audio tokens [1, 2) s
    feats = ex.features
    bright = torch.from_numpy(np.asarray(feats.video)).mean(dim=(1, 2, 3))  # (F,)
    on = (vt >= 1) & (vt < 2)
    assert bright[on].min() > bright[~on].max() + 0.4  # the square is a quarter of the frame
    a_times = ex.tokens.t[kinds == AUDIO] - 5.0
    mel = torch.from_numpy(np.asarray(feats.audio)).view(feats.n_audio, 10, 64).mean(1)  # (A, n_mels)
    tone_bin = int(mel[(a_times > 1.2) & (a_times <= 1.9)].mean(0).argmax())
    assert 20 <= tone_bin <= 26  # 1 kHz on the 64-band HTK mel scale (centre ≈ bin 22)
    loud = mel[:, tone_bin]
    assert loud[(a_times > 1.2) & (a_times <= 1.9)].min() > loud[(a_times <= 0.8) | (a_times > 2.3)].max() + 5
    # the streaming path (the same featurizer, samples pushed in pieces) gives the dataset's tokens
    clip = decode_audio(real_manifest[0].video, 16000)
    fz = AudioFeaturizer(cfg)
    state, pieces, i = fz.init_state(5.0 + clip.t0), [], 0
    for n in [1, 999, 1600, 3201, 17] * 100:
        a, _, state = fz(clip.samples[i : i + n], state)
        pieces.append(a)
        i += n
        if i >= clip.samples.shape[0]:
            break
    assert torch.equal(torch.cat(pieces), torch.from_numpy(np.asarray(feats.audio)))
    # windows tile the stream; the video-only stream has no audio tokens
    wins = ds.windows(0)
    assert TimedTokens.cat([_globalise(w) for w in wins]).equal(ex.tokens)
    assert not torch.any(ds.example(1).tokens.kind == AUDIO)


def test_real_media_dataloader_workers(real_manifest, tmp_path):
    ds = StreamDataset(real_manifest, FeaturizerConfig(), TOK, window_seconds=1.5, cache_dir=tmp_path / "c")
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=ds.collate)
    batches = list(loader)
    assert [b.stream_ids for b in batches] == [["av", "av"], ["v", "v"]]
    local = ds.collate([ds[0], ds[1]])
    assert torch.equal(batches[0].src, local.src) and torch.equal(batches[0].audio, local.audio)
    assert torch.equal(batches[0].video, local.video)


def test_real_media_error_names_stream(real_manifest, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    spec = StreamSpec("broken", bad, None, True, 3.0)
    ds = StreamDataset([spec], FeaturizerConfig(), TOK)
    with pytest.raises(MediaError, match="stream 'broken', field video"):
        ds[0]


def test_avworld_stream_end_to_end(tmp_path):
    """A generated AVWorld stream (jitter, dropped frames, audio offset, clock offset) through decoding,
    featurizing, interleaving, windowing and batching."""
    from ssm_mm.data.manifest import read_manifest
    from ssm_mm.worlds.avworld import AVWorldConfig, frame_times, generate

    knobs = dict(streams=2, seconds=8.0, jitter=0.03, drop=0.15, offset=0.3, clock=1000.0, seed=3)
    manifest = read_manifest(generate(tmp_path / "w", **knobs))
    cfg = FeaturizerConfig()
    ds = StreamDataset(manifest, cfg, TOK, window_seconds=2.0, cache_dir=tmp_path / "cache")
    assert ds.windows_per_stream == [4, 4] and ds.labels[0] == "background"
    for s, spec in enumerate(manifest):
        ex = ds.example(s)
        tk = ex.tokens
        assert ex.n_ticks == 16 and torch.all(tk.t[1:] >= tk.t[:-1])
        # video tokens carry the real (jittered, gapped) frame times on the stream clock
        written = frame_times(AVWorldConfig.from_knobs(**knobs), s, 0.0)
        vt = tk.t[tk.kind == VIDEO][:: cfg.patches_per_frame] - spec.t0
        # (decoding at 4 fps takes the latest frame at or before each k/4 s, so some late frames are
        # skipped: every token time must still be a written frame time, never a grid time)
        nearest = np.abs(vt.numpy()[:, None] - written[None, :]).min(axis=1)
        assert nearest.max() < 2e-3 and torch.all(vt[1:] > vt[:-1]) and vt.numel() >= 0.6 * written.size
        # audio starts 0.3 s late: its first token ends 0.1 s after the track starts
        at = tk.t[tk.kind == AUDIO] - spec.t0
        assert (
            abs(float(at[0]) - (ex.features.audio_t0 + 0.1)) < 1e-9
            and abs(ex.features.audio_t0 - 0.3) < 0.1  # AAC priming
        )
        # targets follow the manifest
        for seg in spec.segments:
            mid = int((seg.start + seg.end) / 2 / cfg.tick_seconds)
            if seg.end - seg.start >= 1.0:
                assert ds.labels[int(ex.targets["event"][mid])] == seg.label
        proactive = [d for d in spec.dialogue if d.role == "assistant" and d.type is None]
        assert int(ex.targets["speak"].sum()) <= len(proactive)
        wins = ds.windows(s)
        assert TimedTokens.cat([_globalise(w) for w in wins]).equal(tk)
    batch = ds.collate([ds[0], ds[5]])
    assert batch.valid.sum().item() == len(ds[0].tokens) + len(ds[5].tokens)
    assert batch.video.shape[1:] == (3, 64, 64) and batch.audio.shape[1] == cfg.audio_token_dim
