"""``python -m ssm_mm.serve MODEL_DIR [...]``: serve a model over WebSockets (see :mod:`ssm_mm.serve`).

Exit status: 0 stopped with no open session, 75 stopped by SIGINT/SIGTERM after snapshotting the open
sessions (resumable), 2 bad input (arguments, model folder, port in use), 1 an unexpected crash.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EX_TEMPFAIL = 75


def build_parser() -> argparse.ArgumentParser:
    from ssm_mm.serve.server import ServeConfig

    d = ServeConfig()
    p = argparse.ArgumentParser(
        prog="python -m ssm_mm.serve",
        description="Serve live audio-video streams through a trained ssm_mm model over WebSockets, "
        "with a browser page at / (protocol: the ssm_mm.serve docstring, docs/serving.md).",
    )
    p.add_argument("model", help="model folder (save_pretrained output or a training checkpoint folder)")
    p.add_argument("--host", default=d.host, help=f"address to bind (default {d.host}: this machine only)")
    p.add_argument("--port", type=int, default=d.port, help=f"port (default {d.port}; 0 = any free port)")
    p.add_argument(
        "--snapshot-dir", default=None, help="folder for session snapshots (default: none, not durable)"
    )
    p.add_argument(
        "--snapshot-every",
        type=float,
        default=d.snapshot_every,
        help=f"seconds of stream between snapshots (default {d.snapshot_every:g})",
    )
    p.add_argument(
        "--max-sessions",
        type=int,
        default=d.max_sessions,
        help=f"sessions held at once (default {d.max_sessions})",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("SSM_MM_SERVE_TOKEN"),
        help="bearer token required on /ws and /metrics (default: $SSM_MM_SERVE_TOKEN, else none)",
    )
    p.add_argument(
        "--idle-seconds",
        type=float,
        default=d.idle_seconds,
        help="keep a disconnected session in memory this long",
    )
    p.add_argument(
        "--max-message-bytes", type=int, default=d.max_message_bytes, help="largest message accepted"
    )
    p.add_argument(
        "--max-queue-bytes", type=int, default=d.max_queue_bytes, help="media waiting per session, at most"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads of the worker (default 1; 0 = torch's choice)",
    )
    p.add_argument(
        "--round-interval",
        type=float,
        default=d.round_interval,
        help=f"seconds between worker rounds, at least (default {d.round_interval:g}: larger batches)",
    )
    p.add_argument("--quiet", action="store_true", help="print only the URL")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from ssm_mm.serve.server import ServeConfig, Server
    except ImportError as e:
        print(
            f"python -m ssm_mm.serve: error: {e}; install the extra: pip install -e '.[serve]'",
            file=sys.stderr,
        )
        return 2
    try:
        import torch

        import ssm_mm

        if not Path(args.model).exists():
            raise FileNotFoundError(f"model folder not found: {args.model}")
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        cfg = ServeConfig(
            host=args.host,
            port=args.port,
            token=args.token or None,
            max_sessions=args.max_sessions,
            snapshot_dir=args.snapshot_dir,
            snapshot_every=args.snapshot_every,
            idle_seconds=args.idle_seconds,
            max_message_bytes=args.max_message_bytes,
            max_queue_bytes=args.max_queue_bytes,
            round_interval=args.round_interval,
        )
        model = ssm_mm.MultimodalSSM.from_pretrained(args.model).eval()
        server = Server(model, cfg)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"python -m ssm_mm.serve: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="[serve] %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # not a line per HTTP request / connection

    def ready(s: Server) -> None:
        url = s.url + (f"#token={cfg.token}" if cfg.token else "")
        durable = (
            f"snapshots in {cfg.snapshot_dir} every {cfg.snapshot_every:g} s of stream"
            if cfg.snapshot_dir
            else "no snapshots"
        )
        if not args.quiet:
            n = model.num_parameters()["total"]
            print(f"model: {args.model} ({n / 1e6:.2f} M parameters; labels {', '.join(model.labels)})")
            print(f"serving on {s.ws_url} (max {cfg.max_sessions} sessions, {durable}); Ctrl-C stops")
        print(f"open {url}", flush=True)

    try:
        saved = server.run(on_ready=ready)
    except OSError as e:
        print(f"python -m ssm_mm.serve: error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"stopped; {saved} open session(s) snapshotted" if cfg.snapshot_dir else "stopped")
    return EX_TEMPFAIL if saved else 0


if __name__ == "__main__":
    sys.exit(main())
