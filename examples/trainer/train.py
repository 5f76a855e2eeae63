#!/usr/bin/env python3
"""A complete trainer that cooperates with the node agent and resumes exactly (README: "How a trainer cooperates").

It fits a linear model with SGD on a synthetic, seeded data set: every step's
batch is derived from (seed, step) alone, and the checkpoint holds everything
the next step depends on, so a run that is interrupted and resumed any number
of times ends with byte-for-byte the same model as an uninterrupted one.
Pure Python, no dependencies: replace ``train_step`` and the state with your
framework's model, optimizer and RNG state and keep the rest.

The contract (node_agent/RUNS_CONTRACT.md):

* ``ML_CHECKPOINT_DIR``: where checkpoints live (restored there by the agent).
* ``ML_RESUME_FROM``: non-empty when a checkpoint was restored: resume from it.
* ``ML_CHECKPOINT_DONE_MARKER``: touched after every complete checkpoint.
* ``ML_TRAINING_SIGNAL`` (default SIGUSR1): finish the step, checkpoint, go on.
* ``ML_PROGRESS_FILE``: rewritten after every step (the step number); the agent
  treats a run whose file stops changing for ``ML_HUNG_AFTER_SECONDS`` as hung.
* Exit 0 when the run is complete, non-zero on a real failure.

One JSON line per event on stdout (``resume``, ``step``, ``checkpoint``,
``done``): in CloudWatch under the run's log stream.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

STATE_FILE = "state.json"
WEIGHTS_FILE = "weights.bin"
LEARNING_RATE = 0.05


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


def initial_state(seed: int, dim: int) -> Dict[str, Any]:
    rng = random.Random(seed)
    return {"step": 0, "seed": seed, "dim": dim, "weights": [rng.uniform(-1, 1) for _ in range(dim)],
            "loss_ema": None}


def true_weights(seed: int, dim: int) -> List[float]:
    rng = random.Random(seed ^ 0x5EED)
    return [rng.uniform(-3, 3) for _ in range(dim)]


def train_step(state: Dict[str, Any], batch_size: int = 8) -> float:
    """One SGD step on the batch of (seed, step): the same inputs whatever happened before."""
    step, dim = state["step"] + 1, state["dim"]
    rng = random.Random(state["seed"] * 1_000_003 + step)
    target = true_weights(state["seed"], dim)
    weights = state["weights"]
    grad = [0.0] * dim
    loss = 0.0
    for _ in range(batch_size):
        x = [rng.gauss(0, 1) for _ in range(dim)]
        y = sum(t * v for t, v in zip(target, x)) + rng.gauss(0, 0.1)
        error = sum(w * v for w, v in zip(weights, x)) - y
        loss += error * error / batch_size
        for i in range(dim):
            grad[i] += 2 * error * x[i] / batch_size
    state["weights"] = [w - LEARNING_RATE * g for w, g in zip(weights, grad)]
    state["loss_ema"] = loss if state["loss_ema"] is None else 0.9 * state["loss_ema"] + 0.1 * loss
    state["step"] = step
    return loss


def _write_atomically(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as out:
        write(out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)  # readers (the agent) see the old file or the new one, never half of one


def save_checkpoint(directory: Path, marker: str, state: Dict[str, Any], extra_bytes: int) -> None:
    """Every file atomically, then the marker last: the agent uploads a checkpoint once its marker is newer."""
    directory.mkdir(parents=True, exist_ok=True)
    if extra_bytes:
        # Stands in for a large model: deterministic bytes derived from the state.
        block = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).digest() * (1 << 15)  # 1 MiB

        def write_blob(out) -> None:
            left = extra_bytes
            while left:
                piece = block[:min(len(block), left)]
                out.write(piece)
                left -= len(piece)

        _write_atomically(directory / WEIGHTS_FILE, write_blob)
    _write_atomically(directory / STATE_FILE, lambda out: out.write(json.dumps(state, sort_keys=True).encode()))
    _write_atomically(directory / marker, lambda out: out.write(str(state["step"]).encode()))


def report_progress(path: Path, step: int) -> None:
    """The step number, atomically: the agent watches this file's content and mtime to tell a hung run."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{step} {time.time():.3f}\n")
    os.replace(tmp, path)


def load_checkpoint(directory: Path) -> Dict[str, Any]:
    return json.loads((directory / STATE_FILE).read_text())


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="total steps of the run (default 1000)")
    parser.add_argument("--checkpoint-every", type=int, default=100,
                        help="steps between periodic checkpoints; 0 = only on the signal and at the end")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--dim", type=int, default=16, help="model size (weights)")
    parser.add_argument("--step-seconds", type=float, default=0.0, help="extra time per step (simulates a GPU step)")
    parser.add_argument("--checkpoint-bytes", type=int, default=0,
                        help="add a weights file of this many bytes to every checkpoint (e.g. 1073741824)")
    parser.add_argument("--hang-at-step", type=int, default=0,
                        help="drills only: stop making progress after this step, as a collective that never "
                             "returns does (0 = never)")
    return parser.parse_args(argv)


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    directory = Path(os.environ.get("ML_CHECKPOINT_DIR", ""))
    if not directory.is_absolute():
        print("ML_CHECKPOINT_DIR must be an absolute directory", file=sys.stderr)
        return 2
    marker = os.environ.get("ML_CHECKPOINT_DONE_MARKER", "CHECKPOINT_DONE")
    signum = signal.Signals[os.environ.get("ML_TRAINING_SIGNAL", "SIGUSR1")]
    requested: List[int] = []
    signal.signal(signum, lambda signo, frame: requested.append(signo))

    progress_env = os.environ.get("ML_PROGRESS_FILE", "")
    progress = Path(progress_env) if progress_env else None
    resume_from = os.environ.get("ML_RESUME_FROM", "")
    if resume_from:
        state = load_checkpoint(directory)
        if (state["seed"], state["dim"]) != (args.seed, args.dim):
            print(f"checkpoint {resume_from} is of another run (seed/dim differ)", file=sys.stderr)
            return 2
        emit("resume", step=state["step"], source=resume_from)
    else:
        state = initial_state(args.seed, args.dim)
        emit("start", step=0)

    while state["step"] < args.steps:
        loss = train_step(state)
        if args.step_seconds:
            time.sleep(args.step_seconds)
        emit("step", step=state["step"], loss=round(loss, 6))
        if progress is not None:
            report_progress(progress, state["step"])
        periodic = args.checkpoint_every and state["step"] % args.checkpoint_every == 0
        if requested or periodic:
            reason = "signal" if requested else "periodic"
            requested.clear()
            save_checkpoint(directory, marker, state, args.checkpoint_bytes)
            emit("checkpoint", step=state["step"], reason=reason)
        if state["step"] == args.hang_at_step:
            emit("hang", step=state["step"])
            while True:
                time.sleep(3600)
    if not (args.checkpoint_every and state["step"] % args.checkpoint_every == 0):
        save_checkpoint(directory, marker, state, args.checkpoint_bytes)
        emit("checkpoint", step=state["step"], reason="final")
    emit("done", step=state["step"], loss_ema=state["loss_ema"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
