"""AVWorld: a seeded generator of synthetic audio-visual streams written as real media (SPEC §5).

Each stream is an mp4 file (h264 video, 64x64 at ``fps``, 4:4:4 so colours stay exact at shape edges;
aac audio, 16 kHz mono) plus one line of a §4 manifest (``manifest.jsonl``); ``scenes.jsonl`` lists
every shape, sound and AV event (for inspection and plots). The world:

* **Event classes.** Class ``c`` has a sound and a shape kind (table :data:`CLASSES`):
  bell = 1 kHz sine / circle, buzz = 110 Hz band-limited square wave / square,
  chirp = rising 1.5-2.5 kHz sweeps / triangle, drum = decaying 4-6 kHz noise bursts / cross,
  whistle = 3 kHz sine with vibrato / diamond, horn = 700 Hz tremolo tone / bar.
  Each sound lives in its own frequency band, so it can be measured back from the decoded audio.
* **Shapes** in six colours (:data:`COLORS`) appear, drift inside one quadrant of the frame and
  vanish. At any time the visible shapes have distinct kinds and distinct colours (so "the circle"
  and "the red shape" are unambiguous) and sit in distinct quadrants (no occlusion).
* **An audio-visual (AV) event** of class ``c`` is a time when the sound of ``c`` is audible *and* a
  shape of kind ``c`` is visible; its segment (label ``c``) is the intersection of the two. Either
  modality may start or end first, so localizing an event needs both. Audio-only sounds and
  video-only shapes are distractors (background). In the dialogue, "the bell rang" / "the drum
  plays" means an AV event of that class.
* **Dialogue** (every user turn has a ``type``): ``count`` ("how many times did the bell ring?"),
  ``color`` ("what color was the square when the drum last played?"), ``kind`` ("which shape was red
  when the chirp last sounded?"), ``order`` ("which came first, the bell or the drum?"), ``now``
  ("what shape is on screen now?", "what color is the circle now?", "how many shapes are on screen
  now?"), each answered by an assistant turn at the same time; and ``proactive`` requests ("tell me
  when the drum plays") answered by an assistant turn with the class name at the start of every
  later AV event of that class (the reference response times). Answers are a class name, a shape
  kind, a colour or a number. Questions sit on a 0.5 s grid, at least 1 s from any AV event start.

Knobs (:class:`AVWorldConfig`): duration, fps, timestamp jitter (per-frame pts noise, monotonic),
dropped frames, audio/video offset (one track starts later; ground truth stays on the video clock,
i.e. media time), noise level, clock start ``t0`` (manifest field), event density, number of classes.
The scene depends only on ``(seed, seconds, density, classes)``: sweeping fps, jitter, drops, noise,
offset or clock renders the same world differently (an offset only removes objects that would start
before both tracks are running).

Determinism: same config -> byte-identical manifest and identical decoded media (single-threaded
encoders; every random draw comes from a ``numpy`` generator seeded by ``(seed, stream, purpose)``).

Command line::

    python -m ssm_mm.data.avworld --out DIR --streams 4 --seconds 20 --fps 4 --jitter 0.02 --drop 0.1 \\
        --offset 0.3 --noise 0.02 --seed 0 --clock 1000
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssm_mm.data.manifest import Segment, StreamSpec, Turn, write_manifest

GENERATOR_VERSION = 4  # bump when the output for a given config changes (invalidates caches)


@dataclass(frozen=True)
class EventClass:
    """An event class: its sound, its shape kind, the verbs used in questions, its frequency band."""

    name: str
    shape: str
    verb: str  # "how many times did the bell ring?"
    verb_s: str  # "tell me when the bell rings"
    verb_past: str  # "when the bell last rang"
    band: tuple[float, float]  # Hz: where its sound's energy is (for measuring it back)


CLASSES: tuple[EventClass, ...] = (
    EventClass("bell", "circle", "ring", "rings", "rang", (950.0, 1050.0)),
    EventClass("buzz", "square", "sound", "sounds", "sounded", (90.0, 600.0)),
    EventClass("chirp", "triangle", "sound", "sounds", "sounded", (1450.0, 2550.0)),
    EventClass("drum", "cross", "play", "plays", "played", (4000.0, 6000.0)),
    EventClass("whistle", "diamond", "blow", "blows", "blew", (2900.0, 3100.0)),
    EventClass("horn", "bar", "honk", "honks", "honked", (650.0, 750.0)),
)
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 90, 240),
    "yellow": (240, 220, 40),
    "purple": (170, 60, 220),
    "cyan": (40, 220, 230),
}
BACKGROUND = (30, 30, 30)
SPREAD_KNOBS = ("jitter_spread", "drop_spread", "offset_spread")  # per-stream timing variation
ASKED_TYPES = ("count", "color", "kind", "order", "now")  # question types with an immediate answer
QUESTION_TYPES = ("count", "color", "kind", "order", "now", "proactive")
SOUND_AMPLITUDE = 0.25
_FADE = 0.01  # s: raised-cosine fade of every sound (no clicks, no broadband energy at its edges)
_MARGIN = 0.3  # s: gap kept around objects that must not coexist (same kind, same colour, ...)


@dataclass(frozen=True)
class AVWorldConfig:
    """The generator's knobs. Times in seconds."""

    streams: int = 4
    seconds: float = 20.0
    fps: float = 4.0
    size: int = 64  # frame height = width (pixels, even)
    sample_rate: int = 16000
    jitter: float = 0.0  # per-frame timestamp noise, uniform in [-jitter, jitter] (< 0.45 / fps)
    drop: float = 0.0  # probability that a frame (not the first) is dropped
    offset: float = 0.0  # audio track start minus video track start (> 0: audio starts later)
    noise: float = 0.02  # background noise: audio RMS; video pixel noise std is noise * 128 levels
    clock: float = 0.0  # clock time of media time 0 (the manifest's "t0")
    density: float = 2.0  # AV events per 10 s
    classes: int = 4  # how many of CLASSES are used
    question_every: float = 4.0  # mean seconds between dialogue questions
    seed: int = 0
    # Per-stream timing variation (training augmentation): stream i draws its own jitter in
    # [jitter, jitter + jitter_spread], drop in [drop, drop + drop_spread] and offset in
    # [offset - offset_spread, offset + offset_spread] (see stream_config()); 0 = every stream alike.
    jitter_spread: float = 0.0
    drop_spread: float = 0.0
    offset_spread: float = 0.0
    # Relative frequency of the question types (ASKED_TYPES order) when several are answerable: a
    # {type: weight} mapping (missing types weigh 1) or 5 weights; canonical form a tuple, () = uniform.
    # Within "now", the count / shape / colour question is picked by the count / kind / color weight.
    question_mix: tuple = ()

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"AVWorldConfig.{name}: {why} (got {getattr(self, name)!r})")

        # canonical values: a float knob given as an int (seconds=30) is the same world as 30.0, so
        # equal configs compare, print and hash (cache_key) alike
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type == "float" and isinstance(v, int) and not isinstance(v, bool):
                object.__setattr__(self, f.name, float(v))

        object.__setattr__(self, "question_mix", _canonical_mix(self.question_mix))

        if not isinstance(self.streams, int) or self.streams < 1:
            bad("streams", "must be an integer >= 1")
        if not self.seconds >= 4.0 or not math.isfinite(self.seconds):
            bad("seconds", "must be >= 4")
        if not 0 < self.fps <= 60:
            bad("fps", "must be in (0, 60]")
        if not isinstance(self.size, int) or self.size < 32 or self.size % 2:
            bad("size", "must be an even integer >= 32")
        if self.sample_rate not in (16000, 22050, 24000, 32000, 44100, 48000):
            bad(
                "sample_rate",
                "must be one of 16000, 22050, 24000, 32000, 44100, 48000 (>= 16 kHz for the drum band)",
            )
        for name in SPREAD_KNOBS:
            if not getattr(self, name) >= 0:
                bad(name, "must be >= 0")
        if not 0 <= self.jitter < 0.45 / self.fps:
            bad("jitter", f"must be in [0, 0.45/fps = {0.45 / self.fps:.4f}) so frames stay in order")
        if not self.jitter + self.jitter_spread < 0.45 / self.fps:
            bad("jitter_spread", f"jitter + jitter_spread must stay below 0.45/fps = {0.45 / self.fps:.4f}")
        if not 0 <= self.drop < 1:
            bad("drop", "must be in [0, 1)")
        if not self.drop + self.drop_spread < 1:
            bad("drop_spread", "drop + drop_spread must stay below 1")
        if not abs(self.offset) <= min(5.0, self.seconds / 4):
            bad("offset", "must satisfy |offset| <= min(5, seconds / 4)")
        if not abs(self.offset) + self.offset_spread <= min(5.0, self.seconds / 4):
            bad("offset_spread", "|offset| + offset_spread must stay <= min(5, seconds / 4)")
        if not 0 <= self.noise <= 0.5:
            bad("noise", "must be in [0, 0.5]")
        if not math.isfinite(self.clock):
            bad("clock", "must be finite")
        if not 0 < self.density <= 5:
            bad("density", "must be in (0, 5] AV events per 10 s")
        if not isinstance(self.classes, int) or not 2 <= self.classes <= len(CLASSES):
            bad("classes", f"must be an integer in [2, {len(CLASSES)}]")
        if not self.question_every >= 1.0:
            bad("question_every", "must be >= 1 s")
        if not isinstance(self.seed, int) or self.seed < 0:
            bad("seed", "must be an integer >= 0")

    @classmethod
    def from_knobs(cls, config: AVWorldConfig | None = None, **knobs) -> AVWorldConfig:
        """``config`` (or the defaults) with ``knobs`` replaced; unknown names raise with the valid list."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(knobs) - set(valid))
        if unknown:
            raise ValueError(f"unknown AVWorld knob(s) {unknown}; valid: {valid}")
        return dataclasses.replace(config or cls(), **knobs)


# ----------------------------------------------------------------------------------------------
# The scene: what happens when (continuous media time)
# ----------------------------------------------------------------------------------------------


def _canonical_mix(mix) -> tuple:
    """``question_mix`` as a tuple of len(ASKED_TYPES) weights, or () for the uniform mix."""
    if hasattr(mix, "items"):  # a mapping (dict, OmegaConf DictConfig)
        unknown = sorted(set(mix) - set(ASKED_TYPES))
        if unknown:
            raise ValueError(
                f"AVWorldConfig.question_mix: unknown type(s) {unknown}; valid: {list(ASKED_TYPES)}"
            )
        mix = [mix.get(t, 1.0) for t in ASKED_TYPES]
    try:
        w = tuple(float(x) for x in mix)
    except (TypeError, ValueError):
        raise ValueError(f"AVWorldConfig.question_mix: expected {{type: weight}} (got {mix!r})") from None
    if w and (len(w) != len(ASKED_TYPES) or not all(math.isfinite(x) and x >= 0 for x in w) or not any(w)):
        raise ValueError(
            f"AVWorldConfig.question_mix: need {len(ASKED_TYPES)} finite weights >= 0, not all 0, for "
            f"{list(ASKED_TYPES)} (got {mix!r})"
        )
    return () if all(x == 1.0 for x in w) else w


@dataclass
class Shape:
    """A shape visible on ``[start, end)``, drifting inside one quadrant."""

    kind: str
    color: str
    start: float
    end: float
    quadrant: int  # 0..3: top-left, top-right, bottom-left, bottom-right
    radius: float  # pixels at size 64 (scaled with the frame)
    motion: tuple[float, float, float, float, float, float]  # amp_x, amp_y, freq_x, freq_y, phase_x, phase_y

    def visible(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass
class Sound:
    """A sound of class ``cls`` audible on ``[start, end)``."""

    cls: str
    start: float
    end: float
    seed: int  # for the drum's noise bursts


@dataclass
class AVEvent:
    """The AV event of class ``cls`` on ``[start, end)`` = its sound ∩ its shape."""

    cls: str
    start: float
    end: float
    shape: int  # index into Scene.shapes
    sound: int  # index into Scene.sounds


@dataclass
class Scene:
    shapes: list[Shape] = field(default_factory=list)
    sounds: list[Sound] = field(default_factory=list)
    events: list[AVEvent] = field(default_factory=list)


def _ms(t: float) -> float:
    """Round to the millisecond: every time in the world is exact in the manifest and the video pts."""
    return round(float(t), 3)


def _overlaps(a0: float, a1: float, b0: float, b1: float, margin: float = 0.0) -> bool:
    return a0 < b1 + margin and b0 < a1 + margin


def _new_shape(
    rng: np.random.Generator, kind: str, color: str, start: float, end: float, quadrant: int
) -> Shape:
    radius = float(rng.uniform(8.0, 11.0))
    amp = 16.0 - radius - 1.0  # stays inside its 32x32 quadrant: no occlusion, ever
    motion = (
        float(rng.uniform(0.5, 1.0) * amp),
        float(rng.uniform(0.5, 1.0) * amp),
        float(rng.uniform(0.1, 0.4)),
        float(rng.uniform(0.1, 0.4)),
        float(rng.uniform(0, 2 * math.pi)),
        float(rng.uniform(0, 2 * math.pi)),
    )
    return Shape(kind, color, _ms(start), _ms(end), quadrant, radius, motion)


def _free(scene: Scene, start: float, end: float, kind: str | None, color: str | None) -> list[int]:
    """Quadrants free on [start, end) for a shape of ``kind``/``color``; [] if the kind or colour is taken."""
    used = set()
    for s in scene.shapes:
        if _overlaps(start, end, s.start, s.end, _MARGIN):
            if s.kind == kind or s.color == color:
                return []
            used.add(s.quadrant)
    return [q for q in range(4) if q not in used]


def make_scene(cfg: AVWorldConfig, stream: int) -> Scene:
    """The world of stream ``stream``: AV events first, then audio-only and video-only distractors.

    Depends only on ``(seed, stream, seconds, density, classes)``; objects that would start before both
    tracks run (``|offset|``) are removed afterwards by :func:`_trim_scene`.
    """
    rng = np.random.default_rng([cfg.seed, stream, 0])
    classes = CLASSES[: cfg.classes]
    by_name = {c.name: c for c in classes}
    scene = Scene()
    lead, end_of_world = 0.5, cfg.seconds - 0.25

    # 1. AV events: sequential, non-overlapping, with gaps of >= 1.5 s.
    mean_gap = max(1.5, 10.0 / cfg.density - 1.75)
    segs: list[tuple[str, float, float]] = []
    t = lead + float(rng.uniform(0.5, 1.5))
    while True:
        d = float(rng.uniform(1.0, 2.5))
        if t + d > end_of_world - 0.25:
            break
        c = classes[int(rng.integers(len(classes)))].name
        segs.append((c, _ms(t), _ms(t + d)))
        t = t + d + float(rng.uniform(1.5, 2 * mean_gap - 1.5))
    for i, (c, s0, s1) in enumerate(segs):
        # Either modality may begin (and end) first; the event is the overlap. Extensions stay below
        # 40% of the neighbouring gaps, so neighbouring events' objects never meet.
        before = s0 - (segs[i - 1][2] if i else lead)
        after = (segs[i + 1][1] if i + 1 < len(segs) else end_of_world) - s1
        ext = []
        for gap in (before, after):
            room = min(1.0, 0.4 * gap)
            mode = int(rng.integers(3))  # 0: together, 1: shape extends, 2: sound extends
            amount = float(rng.uniform(0.25, room)) if room > 0.25 else 0.0
            ext.append((mode, amount))
        shape_start = s0 - (ext[0][1] if ext[0][0] == 1 else 0.0)
        sound_start = s0 - (ext[0][1] if ext[0][0] == 2 else 0.0)
        shape_end = s1 + (ext[1][1] if ext[1][0] == 1 else 0.0)
        sound_end = s1 + (ext[1][1] if ext[1][0] == 2 else 0.0)
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        quads = _free(scene, shape_start, shape_end, by_name[c].shape, color) or [0, 1, 2, 3]
        scene.shapes.append(
            _new_shape(rng, by_name[c].shape, color, shape_start, shape_end, int(rng.choice(quads)))
        )
        scene.sounds.append(Sound(c, _ms(sound_start), _ms(sound_end), int(rng.integers(2**31))))
        scene.events.append(AVEvent(c, s0, s1, len(scene.shapes) - 1, len(scene.sounds) - 1))

    # 2. Distractors, placed by rejection so they never form an AV event.
    rate = cfg.seconds * cfg.density / 10.0
    for _ in range(int(rng.poisson(rate * 0.6))):  # audio-only sounds
        for _attempt in range(20):
            c = classes[int(rng.integers(len(classes)))]
            d = float(rng.uniform(0.8, 2.0))
            s0 = float(rng.uniform(lead, end_of_world - d))
            s1 = s0 + d
            if any(s.kind == c.shape and _overlaps(s0, s1, s.start, s.end, _MARGIN) for s in scene.shapes):
                continue
            concurrent = [x for x in scene.sounds if _overlaps(s0, s1, x.start, x.end, _MARGIN)]
            if any(x.cls == c.name for x in concurrent) or len(concurrent) > 1:
                continue
            scene.sounds.append(Sound(c.name, _ms(s0), _ms(s1), int(rng.integers(2**31))))
            break
    for _ in range(int(rng.poisson(rate * 1.0))):  # video-only shapes
        for _attempt in range(20):
            c = classes[int(rng.integers(len(classes)))]
            color = list(COLORS)[int(rng.integers(len(COLORS)))]
            d = float(rng.uniform(1.5, 5.0))
            s0 = float(rng.uniform(lead, end_of_world - d))
            s1 = s0 + d
            if any(x.cls == c.name and _overlaps(s0, s1, x.start, x.end, _MARGIN) for x in scene.sounds):
                continue
            quads = _free(scene, s0, s1, c.shape, color)
            if not quads:
                continue
            scene.shapes.append(_new_shape(rng, c.shape, color, s0, s1, int(rng.choice(quads))))
            break
    return scene


def _trim_scene(scene: Scene, first: float) -> Scene:
    """Drop every object (and AV event) starting before ``first`` — before both tracks are running."""
    keep_shape = [s.start >= first for s in scene.shapes]
    keep_sound = [s.start >= first for s in scene.sounds]
    for e in scene.events:  # an event goes with both of its objects
        ok = keep_shape[e.shape] and keep_sound[e.sound]
        keep_shape[e.shape] = keep_sound[e.sound] = ok
    shape_map = {i: n for n, i in enumerate(i for i, k in enumerate(keep_shape) if k)}
    sound_map = {i: n for n, i in enumerate(i for i, k in enumerate(keep_sound) if k)}
    return Scene(
        shapes=[s for s, k in zip(scene.shapes, keep_shape) if k],
        sounds=[s for s, k in zip(scene.sounds, keep_sound) if k],
        events=[
            AVEvent(e.cls, e.start, e.end, shape_map[e.shape], sound_map[e.sound])
            for e in scene.events
            if keep_shape[e.shape]
        ],
    )


# ----------------------------------------------------------------------------------------------
# Dialogue
# ----------------------------------------------------------------------------------------------


def _visible(scene: Scene, t: float) -> list[Shape]:
    return [s for s in scene.shapes if s.visible(t)]


def _stable_visible(scene: Scene, t: float, window: float = 0.75) -> list[Shape] | None:
    """The shapes visible throughout ``[t - window, t]``, or None if the set changes in that window."""
    now = _visible(scene, t)
    for s in scene.shapes:
        if _overlaps(t - window, t + 1e-9, s.start, s.start) or _overlaps(t - window, t + 1e-9, s.end, s.end):
            return None
    return now


ACK = "ok"  # the immediate reply to a proactive request
# Every user turn is one of these templates (fields from CLASSES and COLORS): vocabulary() reads them.
Q_COUNT = "how many times did the {cls} {verb}?"
Q_COLOR = "what color was the {kind} when the {cls} last {verb_past}?"
Q_KIND = "which shape was {color} when the {cls} last {verb_past}?"
Q_ORDER = "which came first, the {a} or the {b}?"
Q_NOW_COUNT = "how many shapes are on screen now?"
Q_NOW_SHAPE = "what shape is on screen now?"
Q_NOW_COLOR = "what color is the {kind} now?"
Q_PROACTIVE = "tell me when the {cls} {verb_s}"
_TEMPLATES = (Q_COUNT, Q_COLOR, Q_KIND, Q_ORDER, Q_NOW_COUNT, Q_NOW_SHAPE, Q_NOW_COLOR, Q_PROACTIVE)
MAX_COUNT_WORD = 999  # numbers 0..999 are words of the vocabulary (counts, "how many")
_WORD_RE = re.compile(r"\w+|[^\w\s]+")


def vocabulary() -> list[str]:
    """Every word AVWorld dialogue can contain, in a fixed order: template words, names, numbers.

    Words split like a whitespace/punctuation pre-tokenizer (``\\w+`` runs and punctuation runs), so a
    word-level tokenizer over this list (:func:`ssm_mm.data.tokenizer.word_tokenizer_json`) encodes any
    AVWorld turn without an unknown token.
    """
    words: list[str] = []
    for tpl in _TEMPLATES:
        words += _WORD_RE.findall(re.sub(r"\{\w+\}", " ", tpl))
    for c in CLASSES:
        words += [c.name, c.shape, c.verb, c.verb_s, c.verb_past]
    words += list(COLORS) + [ACK] + [str(n) for n in range(MAX_COUNT_WORD + 1)]
    return list(dict.fromkeys(words))  # first occurrence order, no duplicates


def make_dialogue(cfg: AVWorldConfig, stream: int, scene: Scene, first: float) -> list[Turn]:
    """Questions (answered at the same time) and proactive requests (answered at later AV event starts)."""
    rng = np.random.default_rng([cfg.seed, stream, 2])
    classes = CLASSES[: cfg.classes]
    events = sorted(scene.events, key=lambda e: e.start)
    starts = np.array([e.start for e in events])

    def ok_time(t: float) -> bool:  # no AV event starts within 1 s: answers and responses stay apart
        return not np.any(np.abs(starts - t) <= 1.0)

    # Question times on the 0.5 s grid.
    times: list[float] = []
    t = first + 2.0
    while True:
        t = math.ceil((t + 1e-9) / 0.5) * 0.5
        while t <= cfg.seconds - 0.5 and not ok_time(t):
            t += 0.5
        if t > cfg.seconds - 0.5:
            break
        times.append(t)
        t += max(2.0, float(rng.exponential(cfg.question_every)))

    turns: list[Turn] = []
    requested: set[str] = set()
    forced = int(rng.integers(max(1, (len(times) + 1) // 2))) if times else -1  # one proactive request
    for qi, t in enumerate(times):
        later = {e.cls for e in events if e.start > t}
        open_classes = [c.name for c in classes if c.name in later and c.name not in requested]
        if open_classes and (qi == forced or rng.random() < 0.15):
            c = open_classes[int(rng.integers(len(open_classes)))]
            requested.add(c)
            turns.append(Turn(t, "user", Q_PROACTIVE.format(cls=c, verb_s=_cls(c).verb_s), "proactive"))
            # acknowledged at once (so ask() has a trained reply), then answered at each later AV event
            turns.append(Turn(t, "assistant", ACK))
            turns += [Turn(e.start, "assistant", c) for e in events if e.cls == c and e.start > t]
            continue
        qa = _question(rng, scene, events, classes, t, cfg.question_mix)
        if qa is not None:
            q, a, qtype = qa
            turns += [Turn(t, "user", q, qtype), Turn(t, "assistant", a)]
    # Stable sort: at equal times the user question stays before its answer.
    return sorted(turns, key=lambda x: x.t)


def _cls(name: str) -> EventClass:
    return next(c for c in CLASSES if c.name == name)


def _pick(rng, weights: list[float] | int) -> int | None:
    """An index drawn with probability proportional to ``weights`` (None if all are 0), or uniformly
    from ``range(weights)`` given a count — the draw datasets made before ``question_mix`` used."""
    if isinstance(weights, int):
        return int(rng.integers(weights))
    p = np.asarray(weights, dtype=np.float64)
    return int(rng.choice(len(p), p=p / p.sum())) if p.any() else None


def visible_throughout(scene: Scene, e: AVEvent) -> list[Shape]:
    """The shapes on screen for the whole of AV event ``e`` (its own shape among them): those a
    ``color``/``kind`` question about ``e`` may ask for."""
    return [s for s in scene.shapes if s.start <= e.start and s.end >= e.end]


def event_attributes(scene: Scene, e: AVEvent) -> dict[str, str]:
    """The segment attributes of AV event ``e``: ``color``/``shape``, the look of its own shape, and
    for every shape on screen throughout it, ``color_of_<kind>`` (its colour) and
    ``shape_of_<colour>`` (its kind) — the answers to every ``color``/``kind`` question about ``e``
    (visible shapes have distinct kinds and colours, so each key has one value)."""
    own = scene.shapes[e.shape]
    out = {"color": own.color, "shape": own.kind}
    for s in visible_throughout(scene, e):
        out[f"color_of_{s.kind}"] = s.color
        out[f"shape_of_{s.color}"] = s.kind
    return out


def _question(
    rng, scene: Scene, events: list[AVEvent], classes, t: float, mix: tuple = ()
) -> tuple[str, str, str] | None:
    """One question answerable at ``t`` (a random type among those that are), or None."""
    started = [e for e in events if e.start < t]
    options = {}

    c = classes[int(rng.integers(len(classes)))]
    n = sum(1 for e in started if e.cls == c.name)
    options["count"] = (Q_COUNT.format(cls=c.name, verb=c.verb), str(n))

    # The last AV event of each class, if it is over (by 0.25 s) before t.
    done = {}
    for e in started:
        done[e.cls] = e
    done = {k: e for k, e in done.items() if e.end <= t - 0.25}
    if done:
        cname = sorted(done)[int(rng.integers(len(done)))]
        e = done[cname]
        during = visible_throughout(scene, e)
        if during:
            s = during[int(rng.integers(len(during)))]
            cl = _cls(cname)
            options["color"] = (Q_COLOR.format(kind=s.kind, cls=cname, verb_past=cl.verb_past), s.color)
            s = during[int(rng.integers(len(during)))]
            options["kind"] = (Q_KIND.format(color=s.color, cls=cname, verb_past=cl.verb_past), s.kind)

    firsts = {}
    for e in started:
        firsts.setdefault(e.cls, e.start)
    if len(firsts) >= 2:
        a, b = rng.choice(sorted(firsts), size=2, replace=False)
        first = a if firsts[a] < firsts[b] else b
        options["order"] = (Q_ORDER.format(a=a, b=b), str(first))

    vis = _stable_visible(scene, t)
    if vis is not None:
        # a now question's answer is a count, a kind or a colour (its tag, for the mix)
        nows = [("count", Q_NOW_COUNT, str(len(vis)))]
        if len(vis) == 1:
            nows.append(("kind", Q_NOW_SHAPE, vis[0].kind))
        if vis:
            s = vis[int(rng.integers(len(vis)))]
            nows.append(("color", Q_NOW_COLOR.format(kind=s.kind), s.color))
        # which now question: weighted like the type of its answer
        pick = _pick(rng, [mix[ASKED_TYPES.index(tag)] for tag, _, _ in nows] if mix else len(nows))
        if pick is not None:
            options["now"] = nows[pick][1:]

    kinds = [k for k in ASKED_TYPES if k in options]
    pick = _pick(rng, [mix[ASKED_TYPES.index(k)] for k in kinds] if mix else len(kinds))
    if pick is None:
        return None
    k = kinds[pick]
    q, a = options[k]
    return q, a, k


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def shape_mask(kind: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """(size, size) bool mask of a shape of ``kind`` centred at pixel (cx, cy) with radius ``r``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5  # pixel centres
    dx, dy = xx - cx, yy - cy
    if kind == "circle":
        return dx * dx + dy * dy <= r * r
    if kind == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.8 * r
    if kind == "triangle":  # apex up
        return (dy <= 0.7 * r) & (np.abs(dx) <= 0.95 * r * (dy + r) / (1.7 * r))
    if kind == "cross":
        return ((np.abs(dx) <= 0.3 * r) & (np.abs(dy) <= r)) | ((np.abs(dy) <= 0.3 * r) & (np.abs(dx) <= r))
    if kind == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if kind == "bar":
        return (np.abs(dx) <= r) & (np.abs(dy) <= 0.4 * r)
    raise ValueError(f"unknown shape kind {kind!r}")


def shape_center(s: Shape, t: float, size: int) -> tuple[float, float, float]:
    """(cx, cy, radius) in pixels of shape ``s`` at time ``t`` in a ``size`` x ``size`` frame."""
    k = size / 64.0
    ax, ay, fx, fy, px, py = s.motion
    qx, qy = s.quadrant % 2, s.quadrant // 2
    cx = (16 + 32 * qx + ax * math.sin(2 * math.pi * fx * t + px)) * k
    cy = (16 + 32 * qy + ay * math.sin(2 * math.pi * fy * t + py)) * k
    return cx, cy, s.radius * k


def render_frame(scene: Scene, t: float, size: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """The frame at media time ``t``: (size, size, 3) uint8."""
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = BACKGROUND
    if noise > 0:
        img += rng.normal(0.0, noise * 128.0, size=img.shape).astype(np.float32)
    for s in _visible(scene, t):
        cx, cy, r = shape_center(s, t, size)
        img[shape_mask(s.kind, cx, cy, r, size)] = COLORS[s.color]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def sound_wave(sound: Sound, sample_rate: int) -> np.ndarray:
    """The waveform of one sound from its start: (round(duration·sr),) float32."""
    n = max(1, round((sound.end - sound.start) * sample_rate))
    t = np.arange(n, dtype=np.float64) / sample_rate
    c = sound.cls
    if c == "bell":
        x = np.sin(2 * np.pi * 1000.0 * t)
    elif c == "buzz":  # square wave's first three odd harmonics
        x = sum(np.sin(2 * np.pi * 110.0 * k * t) / k for k in (1, 3, 5)) * (4 / np.pi) * 0.8
    elif c == "chirp":  # 1.5 -> 2.5 kHz sweep every 0.5 s, each with its own 20 ms fades
        tau = np.mod(t, 0.5)
        x = np.sin(2 * np.pi * (1500.0 * tau + 1000.0 * tau * tau))
        x *= np.clip(np.minimum(tau, 0.5 - tau) / 0.02, 0.0, 1.0)
    elif c == "drum":  # a decaying 4-6 kHz noise burst every 0.25 s
        rng = np.random.default_rng(sound.seed)
        spec = np.fft.rfft(rng.normal(size=n))
        freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
        spec[(freqs < 4000.0) | (freqs > 6000.0)] = 0.0
        x = np.fft.irfft(spec, n)
        x /= max(1e-9, float(np.sqrt(np.mean(x * x))))
        x = np.clip(x, -2.0, 2.0) / 2.0  # peak 1 like the tones (mixes stay below clipping), RMS ~1/2
        x *= np.exp(-np.mod(t, 0.25) / 0.15)
    elif c == "whistle":  # 3 kHz, 40 Hz vibrato at 6 Hz
        x = np.sin(2 * np.pi * 3000.0 * t - (40.0 / 6.0) * np.cos(2 * np.pi * 6.0 * t))
    elif c == "horn":  # 700 Hz with 8 Hz tremolo
        x = np.sin(2 * np.pi * 700.0 * t) * (0.75 + 0.25 * np.sin(2 * np.pi * 8.0 * t))
    else:
        raise ValueError(f"unknown sound class {c!r}")
    fade = np.clip(np.minimum(t, t[-1] - t) / _FADE, 0.0, 1.0)
    fade = 0.5 - 0.5 * np.cos(np.pi * fade)  # raised cosine
    return (SOUND_AMPLITUDE * x * fade).astype(np.float32)


def frame_times(cfg: AVWorldConfig, stream: int, video_start: float) -> np.ndarray:
    """Presentation times of the frames that are kept: nominal ``video_start + k/fps``, plus jitter
    (rounded to 1 ms, strictly increasing; the first frame exactly at ``video_start``), minus drops."""
    rng = np.random.default_rng([cfg.seed, stream, 1])
    n = int(math.ceil((cfg.seconds - video_start) * cfg.fps - 1e-9))
    nominal = video_start + np.arange(n, dtype=np.float64) / cfg.fps
    jit = rng.uniform(-cfg.jitter, cfg.jitter, size=n) if cfg.jitter > 0 else np.zeros(n)
    keep = rng.random(n) >= cfg.drop  # drawn for every frame: the same frames survive at any jitter
    keep[0] = True
    t = np.round(nominal + jit, 3)
    t[0] = _ms(video_start)
    t = np.minimum(t, cfg.seconds - 0.001)
    for i in range(1, n):  # jitter < 0.45/fps keeps order; this only guards the 1 ms rounding
        t[i] = max(t[i], t[i - 1] + 0.001)
    return t[keep]


# ----------------------------------------------------------------------------------------------
# Writing one stream
# ----------------------------------------------------------------------------------------------


def stream_config(cfg: AVWorldConfig, i: int) -> AVWorldConfig:
    """The config stream ``i`` is rendered with: its own jitter / drop / offset drawn within the
    spreads (seeded by ``(seed, stream)``), spreads zeroed; ``cfg`` itself when there are none."""
    if not any(getattr(cfg, k) for k in SPREAD_KNOBS):
        return cfg
    u = np.random.default_rng([cfg.seed, i, 5]).random(3)
    return dataclasses.replace(
        cfg,
        # whole milliseconds, rounded towards the nominal value (so each stays within its bound)
        jitter=math.floor((cfg.jitter + u[0] * cfg.jitter_spread) * 1000) / 1000,
        drop=math.floor((cfg.drop + u[1] * cfg.drop_spread) * 1000) / 1000,
        offset=math.trunc((cfg.offset + (2 * u[2] - 1) * cfg.offset_spread) * 1000) / 1000,
        **{k: 0.0 for k in SPREAD_KNOBS},
    )


def nominal_knobs(knobs: dict) -> dict:
    """The training-only knobs of ``knobs`` reset: timing spreads 0, the uniform question mix.

    Held-out streams (validation, sweep points) are rendered at the nominal jitter / drop / offset
    and ask every question type alike, whatever the training streams do.
    """
    out = {k: 0.0 for k in SPREAD_KNOBS if k in knobs}
    if "question_mix" in knobs:
        out["question_mix"] = type(knobs["question_mix"])()
    return out


def _stream_id(cfg: AVWorldConfig, i: int) -> str:
    return f"avw{cfg.seed}-{i:05d}"


def generate_stream(cfg: AVWorldConfig, i: int, out_dir: Path) -> tuple[StreamSpec, dict]:
    """Render stream ``i`` into ``out_dir/media/<id>.mp4``; return its manifest entry and scene record."""
    from ssm_mm.media.write import MediaWriter

    sid = _stream_id(cfg, i)
    cfg = stream_config(cfg, i)
    video_start = -cfg.offset if cfg.offset < 0 else 0.0  # (not max(): that can return -0.0)
    audio_start = cfg.offset if cfg.offset > 0 else 0.0
    first = abs(cfg.offset) + 0.5  # objects start once both tracks run
    scene = make_scene(cfg, i)
    if cfg.offset != 0.0:
        scene = _trim_scene(scene, first)
    dialogue = make_dialogue(cfg, i, scene, first)
    times = frame_times(cfg, i, video_start)

    sr = cfg.sample_rate
    n_total = round(cfg.seconds * sr)
    n_audio0 = round(audio_start * sr)
    waves = [(round(s.start * sr), sound_wave(s, sr)) for s in scene.sounds]
    path = out_dir / "media" / f"{sid}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    pix_rng = np.random.default_rng([cfg.seed, i, 3])
    # yuv444p: at 64x64, 4:2:0 chroma (32x32) smears a shape's colour into 2-pixel blocks at its edges.
    with MediaWriter(
        path,
        width=cfg.size,
        height=cfg.size,
        fps=cfg.fps,
        sample_rate=sr,
        audio_t0=n_audio0 / sr,
        pix_fmt="yuv444p",
    ) as w:
        fi = 0
        n_chunks = math.ceil(n_total / sr)
        for k in range(n_chunks):  # one second at a time, audio and video interleaved by time
            a, b = max(k * sr, n_audio0), min((k + 1) * sr, n_total)
            if b > a:
                noise_rng = np.random.default_rng([cfg.seed, i, 4, k])  # seeded per second of audio
                x = np.zeros(b - a, dtype=np.float32)
                if cfg.noise > 0:
                    x += noise_rng.normal(0.0, cfg.noise, size=b - a).astype(np.float32)
                for s0, wave in waves:
                    lo, hi = max(a, s0), min(b, s0 + wave.shape[0])
                    if lo < hi:
                        x[lo - a : hi - a] += wave[lo - s0 : hi - s0]
                w.write_audio(x)
            while fi < len(times) and times[fi] < (k + 1):
                w.write_frame(
                    render_frame(scene, float(times[fi]), cfg.size, cfg.noise, pix_rng), float(times[fi])
                )
                fi += 1

    # each AV event with the look of the screen during it: the targets of model.recall_attributes
    segments = [
        Segment(e.start, e.end, e.cls, event_attributes(scene, e))
        for e in sorted(scene.events, key=lambda e: e.start)
    ]
    spec = StreamSpec(
        id=sid,
        video=path,
        audio=None,
        audio_from_video=True,
        duration=float(cfg.seconds),
        t0=float(cfg.clock),
        dialogue=dialogue,
        segments=segments,
    )
    record = {
        "id": sid,
        "video_start": _ms(video_start),
        "audio_start": _ms(audio_start),
        "frames": len(times),
        "timing": {"jitter": cfg.jitter, "drop": cfg.drop, "offset": cfg.offset},
        "shapes": [dataclasses.asdict(s) for s in scene.shapes],
        "sounds": [dataclasses.asdict(s) for s in scene.sounds],
        "events": [dataclasses.asdict(e) for e in scene.events],
    }
    return spec, record


def _generate_one(args):  # top-level for process pools
    cfg, i, out_dir = args
    return generate_stream(cfg, i, Path(out_dir))


def generate(out_dir: str | Path, config: AVWorldConfig | None = None, *, workers: int = 1, **knobs) -> Path:
    """Generate an AVWorld dataset into ``out_dir`` and return its manifest path.

    ``out_dir/manifest.jsonl`` (SPEC §4), ``out_dir/media/<id>.mp4``, ``out_dir/scenes.jsonl`` (every
    shape, sound and AV event, for inspection and plots) and ``out_dir/config.json``.

    Args:
        config: an :class:`AVWorldConfig`; ``knobs`` override its fields (``streams=``, ``seconds=``,
            ``fps=``, ``jitter=``, ``drop=``, ``offset=``, ``noise=``, ``clock=``, ``density=``,
            ``classes=``, ``seed=``, ...).
        workers: processes rendering streams in parallel (the output does not depend on it).
    """
    cfg = AVWorldConfig.from_knobs(config, **knobs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(cfg, i, str(out_dir)) for i in range(cfg.streams)]
    if workers > 1 and cfg.streams > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
            results = list(ex.map(_generate_one, jobs))
    else:
        results = [_generate_one(j) for j in jobs]
    with open(out_dir / "scenes.jsonl", "w", encoding="utf-8") as f:
        for _, record in results:
            f.write(json.dumps(record) + "\n")
    (out_dir / "config.json").write_text(
        json.dumps({"generator_version": GENERATOR_VERSION, **dataclasses.asdict(cfg)}, indent=1) + "\n"
    )
    return write_manifest([spec for spec, _ in results], out_dir / "manifest.jsonl")


def read_scenes(path: str | Path) -> dict[str, dict]:
    """``scenes.jsonl`` (written by :func:`generate` beside the manifest) as {stream id: scene record};
    ValueError naming the file (and line) when it is missing or a line is not a scene record."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such scenes file (AVWorld writes scenes.jsonl beside manifest.jsonl)")
    out = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                out[d["id"]] = d
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{i}: not a scene line ({e})") from None
    return out


def cache_key(cfg: AVWorldConfig) -> str:
    """Folder name of a config in the cache: changes with any knob and with :data:`GENERATOR_VERSION`.

    The timing spreads and question mix enter the key only when not at their defaults, so caches made
    before they existed stay valid.
    """
    knobs = dataclasses.asdict(cfg)
    for name in SPREAD_KNOBS:
        if knobs[name] == 0:
            del knobs[name]
    if not knobs["question_mix"]:
        del knobs["question_mix"]
    blob = json.dumps({"v": GENERATOR_VERSION, **knobs}, sort_keys=True)
    return "avworld-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def ensure_avworld(
    cache_dir: str | Path, config: AVWorldConfig | None = None, *, workers: int = 1, **knobs
) -> Path:
    """The manifest of the AVWorld dataset for these knobs under ``cache_dir``, generated on first use.

    Generation goes to a temporary folder that is renamed into place, so an interrupted run leaves no
    half dataset and concurrent callers (e.g. several ranks) end up sharing one complete copy.
    """
    cfg = AVWorldConfig.from_knobs(config, **knobs)
    cache_dir = Path(cache_dir)
    final = cache_dir / cache_key(cfg)
    manifest = final / "manifest.jsonl"
    if manifest.is_file():
        return manifest
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=cache_dir))
    try:
        generate(tmp, cfg, workers=workers)
        try:
            os.rename(tmp, final)
        except OSError:
            if not manifest.is_file():  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    defaults = AVWorldConfig()
    p = argparse.ArgumentParser(
        prog="python -m ssm_mm.data.avworld",
        description="Generate AVWorld streams (mp4 with audio) and their manifest.",
    )
    p.add_argument("--out", type=Path, help="output folder (manifest.jsonl, media/)")
    p.add_argument(
        "--write-tokenizer",
        type=Path,
        metavar="JSON",
        help="instead of generating streams, write the word-level tokenizer of AVWorld's vocabulary "
        "(configs/tokenizers/avworld_words.json is this file)",
    )
    p.add_argument("--streams", type=int, default=defaults.streams)
    p.add_argument("--seconds", type=float, default=defaults.seconds, help="stream duration")
    p.add_argument("--fps", type=float, default=defaults.fps)
    p.add_argument("--size", type=int, default=defaults.size, help="frame height = width (pixels)")
    p.add_argument("--sample-rate", type=int, default=defaults.sample_rate)
    p.add_argument("--jitter", type=float, default=defaults.jitter, help="max per-frame pts noise (s)")
    p.add_argument("--drop", type=float, default=defaults.drop, help="probability of dropping a frame")
    p.add_argument("--offset", type=float, default=defaults.offset, help="audio start minus video start (s)")
    p.add_argument("--noise", type=float, default=defaults.noise, help="background noise level")
    p.add_argument("--clock", type=float, default=defaults.clock, help="clock time of media time 0 (t0)")
    p.add_argument("--density", type=float, default=defaults.density, help="AV events per 10 s")
    p.add_argument(
        "--classes", type=int, default=defaults.classes, help=f"event classes used (2-{len(CLASSES)})"
    )
    p.add_argument(
        "--question-every", type=float, default=defaults.question_every, help="mean s between questions"
    )
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument(
        "--question-mix",
        default="",
        metavar="TYPE=W,...",
        help=f"relative frequency of question types {list(ASKED_TYPES)} (missing: 1), e.g. color=3,now=3",
    )
    for name, what in (("jitter", "jitter"), ("drop", "drop rate"), ("offset", "offset")):
        p.add_argument(
            f"--{name}-spread",
            type=float,
            default=0.0,
            help=f"per-stream {what} varies by up to this much (training augmentation)",
        )
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    a = p.parse_args(argv)
    if a.write_tokenizer is not None:
        from ssm_mm.data.tokenizer import word_tokenizer_json

        a.write_tokenizer.parent.mkdir(parents=True, exist_ok=True)
        a.write_tokenizer.write_text(word_tokenizer_json(vocabulary()) + "\n", encoding="utf-8")
        print(
            f"wrote the AVWorld word tokenizer ({len(vocabulary())} words) to {a.write_tokenizer}",
            file=sys.stderr,
        )
        return 0
    if a.out is None:
        p.error("--out is required (or --write-tokenizer JSON)")
    knobs = {f.name: getattr(a, f.name) for f in dataclasses.fields(AVWorldConfig)}
    try:
        knobs["question_mix"] = {
            k.strip(): float(v)
            for k, v in (item.split("=", 1) for item in a.question_mix.split(",") if item.strip())
        }
    except ValueError:
        p.error(f"--question-mix: expected TYPE=WEIGHT,... (got {a.question_mix!r})")
    try:
        cfg = AVWorldConfig(**knobs)
    except ValueError as e:
        p.error(str(e))
    t = time.perf_counter()
    manifest = generate(a.out, cfg, workers=a.workers)
    print(
        f"wrote {cfg.streams} streams x {cfg.seconds:g} s to {manifest} in {time.perf_counter() - t:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
