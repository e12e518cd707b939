"""Evaluate one model on a list of streams, in streaming mode, exactly as a user would run it.

For every stream: decode its media (:func:`ssm_mm.streaming.drive.decode_stream_media`: video at the
model's fps, audio at the file's rate), open a session ``model.stream(modalities=..., t0=spec.t0,
auto_step=False, ...)``, and drive it tick by tick with :func:`ssm_mm.streaming.drive.drive_many`,
which pushes each tick's media into every session of a batch, steps them together with
:func:`~ssm_mm.streaming.session.step_sessions`, asks the dialogue's questions when the stream time
reaches them and collects ``segment_labels()``, ``poll()`` events and answers. Then each stream is
scored against its references (:mod:`ssm_mm.evaluation.tasks`) and the scores are pooled:

* events: tick labels of all streams pooled (micro): tick accuracy, macro-F1 over event classes,
  per-class precision / recall / F1, the majority-class rate; the same on per-span labels
  (``span_seconds``, 1 s = AVE's per-second segments);
* QA: exact match over all scored questions, per question type;
* proactive: true / false positives and misses summed over streams, then precision / recall / F1;
  mean and p90 delay of the matches;
* speed: per-tick latency percentiles (see :mod:`ssm_mm.streaming.drive` for how a batched tick is
  timed), real-time factor per stream (``stream seconds / wall seconds`` of its batch; with ``B``
  streams per batch each advanced that fast while ``B`` were served) and the throughput real-time
  factor (all stream seconds / all wall seconds). Decoding is timed apart and not included.

Label vocabulary: the model's labels, then any label of the manifest the model does not know
(sorted), so their ticks count as misses instead of failing; they are listed in ``unknown_labels``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ssm_mm.data.manifest import StreamSpec
from ssm_mm.evaluation.tasks import StreamScore, response_text_accuracy, score_stream, stream_tasks
from ssm_mm.metrics import event_metrics, latency_summary, proactive_metrics, qa_metrics
from ssm_mm.models.multimodal import MultimodalSSM
from ssm_mm.streaming.drive import StreamMedia, decode_stream_media, drive_many

__all__ = [
    "EvalError",
    "EvalOptions",
    "ModelEval",
    "eval_labels",
    "decode_each",
    "decode_streams",
    "evaluate",
]


class EvalError(ValueError):
    """Bad evaluation input (model, data, options); the message names what is wrong."""


@dataclass(frozen=True)
class EvalOptions:
    """How streams are run and scored (the ``eval`` section of the config, :class:`ssm_mm.config.EvalConfig`).

    tolerance:         seconds: a proactive response matches a reference within ± this.
    max_answer_tokens: cap on generated tokens per answer / proactive response.
    speak_threshold:   the session speaks when sigmoid(speak head) > this.
    span_seconds:      span of the coarse (AVE-style per-second) labels.
    batch_streams:     streams stepped together in one batch (0 = all streams of a dataset).
    threads:           torch CPU threads while evaluating (0 = leave torch's setting): a tick is a
                       few dozen tokens, and a second thread only spins on small CPUs.
    age_bin:           seconds of stream time per bin of the scores by stream age (0 = the
                       training length T; :mod:`ssm_mm.evaluation.long`).
    """

    tolerance: float = 1.0
    max_answer_tokens: int = 16
    speak_threshold: float = 0.5
    span_seconds: float = 1.0
    batch_streams: int = 0
    threads: int = 1
    age_bin: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "tolerance": self.tolerance >= 0,
            "max_answer_tokens": self.max_answer_tokens >= 1,
            "speak_threshold": 0.0 <= self.speak_threshold <= 1.0,
            "span_seconds": self.span_seconds > 0,
            "batch_streams": self.batch_streams >= 0,
            "threads": self.threads >= 0,
            "age_bin": self.age_bin >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise EvalError(f"eval.{name}={getattr(self, name)!r} is out of range")

    @classmethod
    def from_config(cls, ec) -> EvalOptions:
        """From an :class:`ssm_mm.config.EvalConfig` (fields of the same names)."""
        return cls(**{f.name: getattr(ec, f.name) for f in dataclasses.fields(cls)})


@dataclass
class ModelEval:
    """One model on one list of streams: per-stream scores and pooled metrics (see module doc)."""

    labels: list[str]
    unknown_labels: list[str]
    scores: list[StreamScore]
    metrics: dict
    decode_seconds: float = 0.0
    batch_walls: list[float] = field(default_factory=list)


def eval_labels(model_labels: list[str], specs: list[StreamSpec]) -> tuple[list[str], list[str]]:
    """(vocabulary, unknown): the model's labels, then the manifest's labels it lacks (sorted)."""
    known = set(model_labels)
    unknown = sorted({s.label for spec in specs for s in spec.segments} - known - {"background"})
    return list(model_labels) + unknown, unknown


def _decode(spec: StreamSpec, fps: float, source) -> StreamMedia:
    """One stream's media at video rate ``fps``; EvalError naming the manifest line, stream and file."""
    try:
        return decode_stream_media(spec.video, spec.audio_path, fps=fps, t0=spec.t0)
    except ValueError as e:  # MediaError names the file and what is wrong with it; add the stream
        where = f"{source}:{spec.line}" if source is not None else f"line {spec.line}"
        raise EvalError(f"{where}: stream {spec.id!r}: {e}") from e


def decode_streams(specs: list[StreamSpec], fps: float, source=None) -> tuple[list[StreamMedia], float]:
    """Decode every stream's media at video rate ``fps``; returns (media, seconds it took).

    Raises :class:`EvalError` at the first stream that cannot be decoded, naming ``source`` (the
    manifest) and the stream's line, its id and the media file.
    """
    start = time.perf_counter()
    out = [_decode(spec, fps, source) for spec in specs]
    return out, time.perf_counter() - start


def decode_each(
    specs: list[StreamSpec], fps: float, source=None
) -> tuple[list[StreamMedia | EvalError], float]:
    """As :func:`decode_streams`, but a stream that cannot be decoded is given as its
    :class:`EvalError` instead of stopping (for ``data.on_error=skip``); returns (items, seconds)."""
    start = time.perf_counter()
    out: list[StreamMedia | EvalError] = []
    for spec in specs:
        try:
            out.append(_decode(spec, fps, source))
        except EvalError as e:
            out.append(e)
    return out, time.perf_counter() - start


@contextlib.contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _eval_mode(model: MultimodalSSM):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def evaluate(
    model: MultimodalSSM,
    specs: list[StreamSpec],
    options: EvalOptions | None = None,
    media: list[StreamMedia] | None = None,
    log=None,
) -> ModelEval:
    """Run ``model`` in streaming mode over ``specs`` and score it (see the module docstring).

    Args:
        specs: manifest streams (``read_manifest(...).streams``).
        media: their decoded media when already decoded at ``model.features.fps`` (shared between
            models by :func:`ssm_mm.evaluation.suite.run_suite`); decoded here otherwise.
        log: optional ``print``-like callable for progress lines.
    """
    opt = options or EvalOptions()
    tau = float(model.features.tick_seconds)
    labels, unknown = eval_labels(model.labels, specs)
    tasks = [stream_tasks(spec, labels, tau) for spec in specs]
    decode_s = 0.0
    if media is None:
        media, decode_s = decode_streams(specs, model.features.fps)
    if len(media) != len(specs):
        raise EvalError(f"{len(specs)} streams but {len(media)} decoded media")
    scores: list[StreamScore] = []
    walls: list[float] = []
    step = opt.batch_streams or max(1, len(specs))
    with _threads(opt.threads), _eval_mode(model), torch.no_grad():
        for lo in range(0, len(specs), step):
            batch = range(lo, min(len(specs), lo + step))
            sessions = [
                model.stream(
                    modalities=media[i].modalities,
                    t0=specs[i].t0,
                    speak_threshold=opt.speak_threshold,
                    max_answer_tokens=opt.max_answer_tokens,
                    auto_step=False,
                )
                for i in batch
            ]
            results = drive_many(sessions, [media[i] for i in batch], [tasks[i].questions for i in batch])
            walls.append(results[0].wall if results else 0.0)
            for i, res in zip(batch, results):
                sc = score_stream(tasks[i], res, labels, tau, opt.tolerance, opt.span_seconds)
                sc.wall = res.wall
                scores.append(sc)
            if log is not None:
                log(f"  streams {lo + 1}-{batch[-1] + 1}/{len(specs)} in {walls[-1]:.1f} s")
    metrics = pool_metrics(scores, labels, opt, walls)
    metrics["speed"]["decode_seconds"] = decode_s
    metrics["unknown_labels"] = unknown
    return ModelEval(labels, unknown, scores, metrics, decode_s, walls)


def pool_metrics(scores: list[StreamScore], labels: list[str], opt: EvalOptions, walls: list[float]) -> dict:
    """Pool per-stream scores into the metrics of the module docstring (NaN where undefined)."""

    def cat(xs):
        return torch.cat(xs) if xs else torch.zeros(0, dtype=torch.int64)

    ev = event_metrics(cat([s.pred for s in scores]), cat([s.true for s in scores]), labels)
    span = event_metrics(cat([s.pred_spans for s in scores]), cat([s.true_spans for s in scores]), labels)
    ev["span_seconds"] = opt.span_seconds
    ev["span_accuracy"] = span["tick_accuracy"]
    ev["span_macro_f1"] = span["macro_f1"]
    ev["span_majority_rate"] = span["majority_rate"]
    ev["n_spans"] = span["n_ticks"]
    ev["missing_ticks"] = sum(s.missing_ticks for s in scores)

    qa = qa_metrics([(q["type"], q["correct"]) for s in scores for q in s.qa])
    qa["late"] = sum(q["late"] for s in scores for q in s.qa)  # asked after the media ended

    tp, fp, fn = (sum(getattr(s, k) for s in scores) for k in ("tp", "fp", "fn"))
    pro = proactive_metrics(tp, fp, fn, [d for s in scores for d in s.delays])
    pro["tolerance"] = opt.tolerance
    pro["n_references"] = tp + fn
    pro["n_responses"] = tp + fp
    pro["text_accuracy"] = response_text_accuracy(scores)

    stream_s = [s.stream_seconds for s in scores]
    per_stream_rtf = [s.stream_seconds / s.wall for s in scores if s.wall > 0]
    speed = {
        "rtf": float(np.mean(per_stream_rtf)) if per_stream_rtf else float("nan"),
        "throughput_rtf": sum(stream_s) / sum(walls) if sum(walls) > 0 else float("nan"),
        "tick_latency": latency_summary([x for s in scores for x in s.tick_latency]),
        "ask_latency": latency_summary([x for s in scores for x in s.ask_seconds]),
        "stream_seconds": sum(stream_s),
        "wall_seconds": sum(walls),
        "batch_streams": opt.batch_streams or len(scores),
        "threads": opt.threads or torch.get_num_threads(),
    }
    return {"n_streams": len(scores), "events": ev, "qa": qa, "proactive": pro, "speed": speed}
