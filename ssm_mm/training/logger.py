"""Run logging: wandb (offline unless an API key is configured) and a progress bar or plain lines."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


def resolve_wandb_mode(mode: str) -> str:
    """'auto' -> 'online' when WANDB_API_KEY is set, else 'offline' (no network, no key needed)."""
    if mode == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return mode


class RunLogger:
    """wandb + terminal output for rank 0 (other ranks get a silent logger)."""

    def __init__(
        self, cfg, run_dir: Path, config_dict: dict, total_steps: int, start_step: int, enabled: bool = True
    ):
        self.enabled = enabled
        self.run = None
        self.every = max(1, cfg.logging.log_every)
        self.run_dir = run_dir
        self.bar = None
        self._last_line = 0.0
        if not enabled:
            return
        mode = resolve_wandb_mode(cfg.logging.wandb.mode)
        if mode != "disabled":
            import wandb

            w = cfg.logging.wandb
            self.run = wandb.init(
                project=w.project,
                entity=w.entity,
                name=w.name or run_dir.name,
                tags=list(w.tags),
                dir=str(run_dir),
                mode=mode,
                config=config_dict,
                resume="allow",
                id=_run_id(run_dir),
                settings=wandb.Settings(silent=True, console="off"),
            )
        if cfg.logging.progress and sys.stderr.isatty():
            self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, desc="train")

    @property
    def wandb_dir(self) -> str | None:
        return None if self.run is None else str(Path(self.run.dir).parent)

    def step(self, step: int, metrics: dict[str, float], total: int) -> None:
        if not self.enabled:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:  # every step, for curves and resume checks
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(
                loss=f"{metrics.get('loss', float('nan')):.3f}", tok_s=f"{metrics.get('tokens_per_s', 0):.0f}"
            )
        if step % self.every == 0 or step == total:
            if self.run is not None:
                self.run.log({f"train/{k}": v for k, v in metrics.items()}, step=step)
            if self.bar is None:
                eta = metrics.get("eta_s", float("nan"))
                print(
                    f"step {step}/{total} loss {metrics.get('loss', float('nan')):.4f} "
                    # every objective's loss (loss_<name>), in objective order
                    + "".join(f"{k[5:]} {v:.3f} " for k, v in metrics.items() if k.startswith("loss_"))
                    + f"lr {metrics.get('lr', 0):.2e} "
                    f"tok/s {metrics.get('tokens_per_s', 0):.0f} eta {eta:.0f}s",
                    flush=True,
                )

    def log(self, data: dict[str, Any], step: int) -> None:
        if self.enabled and self.run is not None:
            self.run.log(data, step=step)

    def image(self, key: str, path: str | Path, step: int) -> None:
        if self.enabled and self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path))}, step=step)

    def print(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.run is not None:
            self.run.finish()


def _run_id(run_dir: Path) -> str:
    """A stable wandb id per run folder, so a resumed run continues the same wandb run."""
    f = run_dir / "wandb_id.txt"
    if f.exists():
        return f.read_text().strip()
    import secrets

    rid = f"{run_dir.name[:40]}-{secrets.token_hex(4)}"
    f.write_text(rid + "\n")
    return rid


class Throughput:
    """Tokens/s and ETA over a sliding window of recent steps."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.hist: list[tuple[float, int]] = []

    def update(self, tokens: int) -> float:
        now = time.perf_counter()
        self.hist.append((now, tokens))
        self.hist = self.hist[-20:]
        if len(self.hist) < 2:
            return tokens / max(1e-9, now - self.t0)
        dt = self.hist[-1][0] - self.hist[0][0]
        return sum(n for _, n in self.hist[1:]) / max(dt, 1e-9)

    def step_time(self) -> float:
        if len(self.hist) < 2:
            return float("nan")
        return (self.hist[-1][0] - self.hist[0][0]) / (len(self.hist) - 1)
