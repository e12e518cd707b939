"""Streaming demo: play a media file through a trained model, printing what it says as it happens.

    python -m ssm_mm.streaming MODEL_DIR media.mp4 [--realtime] \
        [--ask "12.5:how many times did the dog bark?"]

MODEL_DIR is a folder written by ``MultimodalSSM.save_pretrained`` (or a training checkpoint folder
holding one in ``model/``). The file may have video and audio, video only, or audio only (wav, flac,
ogg, mp3, ...); ``--audio`` takes the sound from a separate file. Video is decoded at the model's fps
(as in training) and audio at the file's own rate, which the session resamples as it streams.

The media is pushed one tick at a time: before the end of tick ``k`` is declared with
``advance_to(end + margin)``, every frame and audio sample before that time is pushed (``margin`` covers
the resampler's look-ahead), so each tick completes as soon as its media is in, and a question at
media time ``T`` is asked when the stream time reaches the end of the tick holding ``T`` (where
training places it). ``--realtime`` waits for the wall clock (``--speed`` times faster) before each
tick; otherwise the file is streamed as fast as the model runs. Printed: answers, proactive events,
event labels (changes, or every tick with ``--labels all``), and the speed and per-tick latency.
The driving loop is :func:`ssm_mm.streaming.drive.drive` (shared with the evaluation harness).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch


def _parse_ask(text: str) -> tuple[float, str]:
    t, sep, question = text.partition(":")
    try:
        at = float(t)
    except ValueError:
        at = math.nan
    if not sep or not math.isfinite(at) or at < 0 or not question.strip():
        raise argparse.ArgumentTypeError(f"--ask wants 'SECONDS:question', got {text!r}")
    return at, question.strip()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ssm_mm.streaming",
        description="Stream a media file through a trained ssm_mm model and print answers, proactive "
        "events and event labels as they happen.",
    )
    p.add_argument("model", help="model folder (save_pretrained output or a training checkpoint folder)")
    p.add_argument("media", help="media file: video with or without audio, or audio only")
    p.add_argument("--audio", help="take the audio from this file instead of MEDIA's own track")
    p.add_argument("--no-audio", action="store_true", help="ignore MEDIA's audio track")
    p.add_argument("--no-video", action="store_true", help="ignore MEDIA's video track")
    p.add_argument(
        "--ask",
        action="append",
        type=_parse_ask,
        default=[],
        metavar="T:TEXT",
        help="ask TEXT at media time T seconds (repeatable)",
    )
    p.add_argument("--realtime", action="store_true", help="pace the stream by the wall clock")
    p.add_argument("--speed", type=float, default=1.0, help="playback speed with --realtime (default 1)")
    p.add_argument("--threshold", type=float, default=0.5, help="speak-now threshold (default 0.5)")
    p.add_argument("--max-tokens", type=int, default=32, help="answer length cap in tokens (default 32)")
    p.add_argument("--t0", type=float, default=0.0, help="stream-clock time of media time 0 (default 0)")
    p.add_argument(
        "--labels",
        choices=("changes", "all", "none"),
        default="changes",
        help="print event labels when they change (default), at every tick, or not at all",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: a tick is a few dozen tokens; on a busy machine more threads "
        "only spin; 0 keeps torch's own choice)",
    )
    return p


class _Printer:
    """Prints labels / events / answers with their stream times (relative to the media start)."""

    def __init__(self, t0: float, labels: str, out=None):
        self.t0, self.mode, self.out = t0, labels, out or sys.stdout
        self.last: str | None = None

    def line(self, t: float, tag: str, text: str) -> None:
        print(f"[{t - self.t0:8.2f}s] {tag:<8} {text}", file=self.out, flush=True)

    def __call__(self, _round: int, labels, events, answers) -> None:
        """Print one round's output in stream order (a tick's label, then its event), then answers."""
        items = [(lab.end, 0, lab) for lab in labels] + [(ev.t, 1, ev) for ev in events]
        for _, is_event, x in sorted(items, key=lambda it: it[:2]):
            if is_event:
                self.line(x.t, "event", f"{x.text!r}  (proactive, speak={x.score:.2f})")
                continue
            if self.mode == "all" or (self.mode == "changes" and x.label != self.last):
                extra = "" if x.has_media else ", no media"
                self.line(x.start, "label", f"{x.label}  (p={x.score:.2f}, speak={x.speak:.2f}{extra})")
            self.last = x.label
        for a in answers:
            if a.asked_at is None:
                self.line(a.placed, "user", f"{a.text}  (at {a.t:g}s): not asked, the stream had no media")
                continue
            note = f" (asked at {a.asked_at - self.t0:.2f}s: the stream ended)" if a.late else ""
            self.line(a.asked_at, "user", f"{a.text}  (at {a.t:g}s){note}")
            self.line(a.asked_at, "answer", repr(a.answer))


def run(args: argparse.Namespace, out=None) -> int:
    from ssm_mm.media import probe_media
    from ssm_mm.models.multimodal import MultimodalSSM
    from ssm_mm.streaming.drive import Question, decode_stream_media, drive

    out = out or sys.stdout
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.realtime and not args.speed > 0:
        raise ValueError(f"--speed must be > 0, got {args.speed}")
    model = MultimodalSSM.from_pretrained(args.model)
    cfg = model.features
    info = probe_media(args.media)
    use_video = info.has_video and not args.no_video
    audio_src = args.audio or (args.media if info.has_audio and not args.no_audio else None)
    if not use_video and audio_src is None:
        raise ValueError(f"{args.media}: nothing to stream (no video track used and no audio)")

    t0 = float(args.t0)
    # video at the model's fps (the frames training sees); audio at the file's own rate (the session
    # resamples it while streaming)
    media = decode_stream_media(args.media if use_video else None, audio_src, fps=cfg.fps, t0=t0)
    s = model.stream(
        modalities=media.modalities, t0=t0, speak_threshold=args.threshold, max_answer_tokens=args.max_tokens
    )
    n = model.num_parameters()["total"]
    print(f"model: {args.model} ({n / 1e6:.2f} M parameters; labels {', '.join(model.labels)})", file=out)
    parts = []
    if media.has_video:
        parts.append(f"video {len(media.frame_times)} frames at {cfg.fps:g} fps")
    if media.has_audio:
        sr = media.sample_rate
        parts.append(
            f"audio {media.samples.shape[0] / sr:.2f} s at {sr} Hz from t={media.audio_t0 - t0:.3f} s"
        )
    print(f"media: {args.media}: {', '.join(parts)}; {media.seconds:.2f} s", file=out)

    printer = _Printer(t0, args.labels, out)
    questions = [Question(at, q) for at, q in args.ask]
    res = drive(s, media, questions, on_round=printer, realtime=args.realtime, speed=args.speed, keep=False)
    lat = np.array(res.tick_latency) * 1e3 if res.tick_latency else np.zeros(1)
    print(
        f"done: {res.ticks} ticks ({res.stream_seconds:.1f} s of stream) in {res.wall:.2f} s wall "
        f"({res.stream_seconds / max(res.wall, 1e-9):.1f}x real time); per-tick latency "
        f"p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms; "
        f"session memory {s.memory_bytes() / 1024:.0f} KiB",
        file=out,
    )
    return 0


def main(argv: list[str] | None = None, out=None, err=None) -> int:
    """Run the demo; returns the exit status: 0 done, 2 bad input (arguments, media, model files: one
    line on ``err``, stderr by default, no traceback). argparse's own usage errors exit 2 as well."""
    args = build_parser().parse_args(argv)
    try:
        if not Path(args.model).exists():
            raise FileNotFoundError(f"model folder not found: {args.model}")
        return run(args, out)
    except (ValueError, FileNotFoundError) as e:  # MediaError, StreamingError, WeightsError, bad folder
        msg = " ".join(str(e).split())  # one line, whatever the exception's text holds
        print(f"python -m ssm_mm.streaming: error: {msg}", file=sys.stderr if err is None else err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
