"""AVWorld's scene: its event classes, colours and shapes, and what happens when (media time).

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
  video-only shapes are distractors (background).

Every random draw comes from a ``numpy`` generator seeded by ``(seed, stream, purpose)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ssm_mm.worlds.avworld.config import AVWorldConfig


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

_MARGIN = 0.3  # s: gap kept around objects that must not coexist (same kind, same colour, ...)


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


def _visible(scene: Scene, t: float) -> list[Shape]:
    return [s for s in scene.shapes if s.visible(t)]


def _stable_visible(scene: Scene, t: float, window: float = 0.75) -> list[Shape] | None:
    """The shapes visible throughout ``[t - window, t]``, or None if the set changes in that window."""
    now = _visible(scene, t)
    for s in scene.shapes:
        if _overlaps(t - window, t + 1e-9, s.start, s.start) or _overlaps(t - window, t + 1e-9, s.end, s.end):
            return None
    return now


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
