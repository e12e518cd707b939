"""AVWorld's dialogue: question templates, their vocabulary, and the questions of one stream.

Every user turn has a ``type``: ``count`` ("how many times did the bell ring?"), ``color`` ("what
color was the square when the drum last played?"), ``kind`` ("which shape was red when the chirp
last sounded?"), ``order`` ("which came first, the bell or the drum?"), ``now`` ("what shape is on
screen now?", "what color is the circle now?", "how many shapes are on screen now?"), each answered
by an assistant turn at the same time; and ``proactive`` requests ("tell me when the drum plays")
acknowledged at once and answered by an assistant turn with the class name at the start of every
later AV event of that class (the reference response times). "The bell rang" means an AV event of
that class. Answers are a class name, a shape kind, a colour or a number. Questions sit on a 0.5 s
grid, at least 1 s from any AV event start.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import numpy as np

from ssm_mm.data.manifest import Turn
from ssm_mm.worlds.avworld.config import ASKED_TYPES
from ssm_mm.worlds.avworld.scene import (
    CLASSES,
    COLORS,
    AVEvent,
    EventClass,
    Scene,
    _stable_visible,
    visible_throughout,
)

if TYPE_CHECKING:
    from ssm_mm.worlds.avworld.config import AVWorldConfig


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
        qa = _question(rng, scene, events, classes, t, cfg.question_weights)
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
