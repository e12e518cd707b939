"""Mixed training sources (data.mix) and the length curriculum (data.curriculum) in training runs:
one training set from several manifests / world configs, batches that mix them, the labels' union,
bad entries refused before any work, exact resume, and the resume check covering both keys."""

import json
import os
import signal

import pytest

import train as train_cli
from ssm_mm.config import Config, load_config, mix_sources, to_dict
from ssm_mm.data.manifest import read_manifest
from ssm_mm.training.runs import config_diff, resume_view, upgrade_view
from ssm_mm.training.trainer import Trainer, prepare_data
from ssm_mm.worlds.avworld import CLASSES, generate, make_scene

CURRICULUM = ("data.curriculum.steps=[3]", "data.curriculum.max_seconds=[2,0]")  # 1 window, then all


@pytest.fixture(scope="module")
def extra(tmp_path_factory):
    """2 streams of 12 s (6 windows of 2 s; the tiny world's have 3) with all 6 event classes."""
    return generate(tmp_path_factory.mktemp("extra"), streams=2, seconds=12.0, seed=7, classes=6)


def _labels(manifest) -> set[str]:
    return {s.label for st in read_manifest(manifest, check_media=False).streams for s in st.segments}


def _losses(run_dir):
    return {
        r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    }


def test_mixed_manifests_are_one_training_set_whose_batches_mix_them(
    tmp_path, tiny_world, tiny_overrides, extra
):
    cfg = load_config(None, tiny_overrides(tmp_path, *tiny_world, f"data.mix=[{extra}]", "eval.at_end=false"))
    t = Trainer(cfg)
    t.setup()
    data = t.data
    assert [(n, p, k) for n, p, k in data.sources] == [
        ("data", data.train_manifest, 4),
        ("data.mix[0]", extra, 2),
    ]
    ids = [s.id for s in data.train.streams]
    assert ids[:4] == [f"avw5-{i:05d}" for i in range(4)] and ids[4:] == ["avw7-00000", "avw7-00001"]
    assert data.train.windows_per_stream == [3, 3, 3, 3, 6, 6]
    assert [s.id for s in data.val.streams] == ["avw6-00000", "avw6-00001"]  # the main source's
    # one vocabulary, the union: the extra streams carry classes the main ones do not
    union = _labels(tiny_world[0]) | _labels(tiny_world[1]) | _labels(extra)
    assert _labels(extra) - _labels(tiny_world[0]) and data.labels == ["background", *sorted(union)]
    # the schedule shuffles all streams together: a batch holds windows of both sources
    both = [
        b.stream_ids
        for _, b in zip(range(12), t.batches)
        if {i[:4] for i in b.stream_ids} == {"avw5", "avw7"}
    ]
    assert both, "no batch of the first 12 mixed the two sources"
    # with the curriculum (1 window per occurrence until optimizer step 3 = micro-step 6 with
    # grad_accum=2) every slot starts a stream at every micro-step of the first stage, not after
    cfg = load_config(
        None,
        tiny_overrides(tmp_path, *tiny_world, f"data.mix=[{extra}]", "train.grad_accum=2", *CURRICULUM),
    )
    t = Trainer(cfg)
    t.setup()
    first = [bool(b.is_first.all()) for _, b in zip(range(14), t.batches)]
    assert all(first[:6]) and not all(first[6:])


def test_world_knob_entries_are_generated_once_and_pin_their_labels(tmp_path, tiny_world):
    world = [
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.worlds.avworld.streams=2",
        "data.worlds.avworld.seconds=6",
        "data.worlds.avworld.val_streams=1",
        "data.window_seconds=2.0",
    ]
    cfg = load_config(None, [*world, "data.mix=[{seconds:8,streams:1,seed:9}]"])
    data = prepare_data(cfg, log=lambda *_: None)
    (_, main, n0), (name, mixed, n1) = data.sources
    assert (n0, name, n1) == (2, "data.mix[0]", 1)
    assert mixed.parent.parent == tmp_path / "cache" / "avworld" and mixed != main
    knobs = json.loads((mixed.parent / "config.json").read_text())
    assert (knobs["seconds"], knobs["streams"], knobs["seed"], knobs["fps"]) == (8.0, 1, 9, 4.0)
    assert data.train.windows_per_stream == [3, 3, 4]
    assert data.labels == ["background", *[c.name for c in CLASSES[:4]]]  # the world's pinned table
    stamp = mixed.stat().st_mtime_ns
    assert prepare_data(cfg, log=lambda *_: None).sources == data.sources  # cached, not regenerated
    assert mixed.stat().st_mtime_ns == stamp
    # a world named explicitly mixes into a manifest's streams; its pinned classes come first
    train, val = tiny_world
    cfg = load_config(
        None,
        [
            *world,
            f"data.manifest={train}",
            f"data.val_manifest={val}",
            "data.mix=[{world:avworld,classes:6}]",
        ],
    )
    data = prepare_data(cfg, log=lambda *_: None)
    assert [n for _, _, n in data.sources] == [4, 2]
    assert data.labels == ["background", *[c.name for c in CLASSES[:6]]]


def test_world_knob_entries_without_a_seed_draw_streams_of_their_own():
    """AVWorld draws stream k of a seed alike at any length: 120-s streams of the main seed would begin
    as the 30-s ones do (the same worlds twice), so an entry without a seed takes seed + i + 1."""
    cfg = load_config(
        None,
        ["data.worlds.avworld.seed=5", "data.mix=[{seconds:120}, {seconds:60,seed:5}, {streams:3}]"],
    )
    seeds = [src.world_config.seed for src in mix_sources(cfg.data)]
    assert seeds == [6, 5, 8]  # entry 1 asked for the main seed, and gets it
    main = load_config(None, ["data.worlds.avworld.seed=5"]).data.worlds["avworld"]
    first = [s.start for s in make_scene(main, 0).events][:3]
    assert first == [s.start for s in make_scene(mix_sources(cfg.data)[1].world_config, 0).events][:3]
    assert first != [s.start for s in make_scene(mix_sources(cfg.data)[0].world_config, 0).events][:3]


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "data.mix=[{seconds:60,seed:1000}]",
            "data.mix[0]: seed 1000 is the held-out streams' (data.worlds.avworld.val_seed)",
        ),
        ("data.mix=[{secnds:120}]", "data.mix[0]: unknown avworld knob 'secnds' (did you mean 'seconds'?)"),
        ("data.mix=[{seconds:2}]", "data.mix[0]: AVWorldConfig.seconds: must be >= 4"),
        ("data.mix=[{streams:4}, {seconds:abc}]", "data.mix[1]: avworld knob seconds:"),
        ("data.mix=[NOPE.jsonl]", "data.mix[0]: manifest file not found: NOPE.jsonl"),
        ("data.mix=[3]", "data.mix[0]=3: expected a manifest path or a mapping of world knobs"),
        ("data.mix=[[a.jsonl]]", "data.mix[0]=['a.jsonl']: expected a manifest path"),
        ("data.mix=[{world:pond}]", "data.mix[0].world: unknown world 'pond'"),
        ("data.curriculum.steps=[5]", "data.curriculum.max_seconds=[0.0] has 1 entry"),
        (
            "data.curriculum.steps=[5,5]",
            "data.curriculum.steps=[5, 5]: stage ends must be strictly ascending",
        ),
        ("data.curriculum.max_seconds=[-1]", "data.curriculum.max_seconds=[-1.0]: must be >= 0"),
        ("data.curriculum.steps=[0]", "data.curriculum.steps=[0]: must be >= 1"),
    ],
)
def test_bad_entries_exit_2_naming_the_entry_before_any_work(tmp_path, capsys, override, message):
    """The main source is the world, so 'any work' would generate it into the cache folder."""
    args = [f"train.run_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}", override]
    assert train_cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_world_knobs_without_a_world_do_not_apply_to_a_manifest(tmp_path, tiny_world, tiny_overrides, capsys):
    """A config's recipe for its world (configs/default.yaml mixes longer world streams) run on a user's
    manifest: the entry is not used, said in one line, and the manifest alone trains; a misspelt knob
    is still an error."""
    mix = "data.mix=[{seconds:120,streams:32}]"
    args = tiny_overrides(tmp_path / "run", *tiny_world, "eval.at_end=false", "train.max_steps=2", mix)
    assert train_cli.main(args) == 0
    out = capsys.readouterr().out
    assert "data.mix[0]={'seconds': 120, 'streams': 32}: not used: knobs of the world avworld" in out
    assert "{world: avworld, seconds: 120, streams: 32}" in out and "training streams:" not in out
    bad = tiny_overrides(tmp_path / "bad", *tiny_world, "data.mix=[{secnds:120}]")
    assert train_cli.main(bad) == 2
    assert "data.mix[0]" in capsys.readouterr().err


def test_train_py_with_mix_and_curriculum_resumes_exactly_and_checks_both_keys(
    tmp_path, tiny_world, tiny_overrides, extra, capsys
):
    """grad_accum=2: the curriculum's stages are in optimizer steps, the data position in micro-steps."""
    base = (
        "eval.at_end=false",
        "train.grad_accum=2",
        "train.max_steps=6",
        f"data.mix=[{extra}]",
        *CURRICULUM,
    )
    full = tmp_path / "full"
    assert train_cli.main(tiny_overrides(full, *tiny_world, *base)) == 0
    out = capsys.readouterr().out
    assert "training streams: 6 = 4 of data" in out and "2 of data.mix[0]" in out
    assert "curriculum, windows walked per stream: steps 0-2: 1 (2 s); from step 3: all" in out
    # stopped by a real SIGTERM after step 2 (in the first stage), then resumed: the same losses
    part = tmp_path / "part"
    cfg = load_config(None, tiny_overrides(part, *tiny_world, *base))
    stop = [lambda s, _m: s == 2 and os.kill(os.getpid(), signal.SIGTERM)]
    assert Trainer(cfg, stop).run()["interrupted"] == "SIGTERM"
    for changed, key in [
        ("data.mix=[]", "data.mix"),
        ("data.curriculum.max_seconds=[4,0]", "data.curriculum.max_seconds"),
    ]:
        args = tiny_overrides(part, *tiny_world, *base, "train.resume=true", changed)
        assert train_cli.main(args) == 2
        assert f"{key} (" in capsys.readouterr().err
    assert train_cli.main(tiny_overrides(part, *tiny_world, *base, "train.resume=true")) == 0
    a, b = _losses(full / "run"), _losses(part / "run")
    assert sorted(a) == list(range(1, 7)) and sorted(b) == list(range(1, 7))
    assert all(a[s] == b[s] for s in a), (a, b)


def test_a_resume_view_from_before_mix_and_curriculum_reads_them_at_their_defaults():
    today = resume_view(to_dict(Config()))
    older = {k: v for k, v in today.items() if not k.startswith(("data.mix", "data.curriculum."))}
    assert len(older) == len(today) - 3
    assert upgrade_view(older) == today
    assert upgrade_view(today) is today
    mixed = resume_view(to_dict(load_config(None, ["data.mix=[{seconds:120}]"])))
    assert mixed["data.mix"] == [{"seconds": 120}] and upgrade_view(mixed) is mixed


def test_a_resume_view_from_before_the_mixer_options_reads_them_at_their_defaults():
    """Runs started before ``model.rotate_pairs`` and ``model.gain`` existed resume as plain mixers; a
    run that set one is compared on it."""
    today = resume_view(to_dict(Config()))
    older = {k: v for k, v in today.items() if k not in ("model.rotate_pairs", "model.gain")}
    assert len(older) == len(today) - 2
    assert upgrade_view(older) == today
    relu = resume_view(to_dict(load_config(None, ["model.gain=relu"])))
    assert relu["model.gain"] == "relu" and upgrade_view(relu) is relu
    assert config_diff(upgrade_view(older), relu) == ["model.gain ('softplus' -> 'relu')"]


def test_a_resume_view_from_before_weight_schedules_reads_none():
    """Runs started before ``objectives.<name>.weight_from`` existed resume with no schedule; a run
    that set one is compared on it."""
    on = ["objectives.count.max=3"]
    today = resume_view(to_dict(load_config(None, on)))
    older = {k: v for k, v in today.items() if not k.endswith(".weight_from")}
    assert len(older) == len(today) - 4  # lm, event, speak, count
    assert upgrade_view(older) == today
    scheduled = resume_view(to_dict(load_config(None, [*on, "objectives.count.weight_from={100: 0.5}"])))
    assert scheduled["objectives.count.weight_from"] == {"100": 0.5}
    assert upgrade_view(scheduled) is scheduled
