#!/usr/bin/env python3
"""A small training process for the node agent drill.

Cooperates like a real trainer: on ML_TRAINING_SIGNAL (SIGUSR1) it finishes
the current step, removes the done marker, writes a checkpoint directory
(weights, optimizer state, metadata, a nested shard) to ML_CHECKPOINT_DIR and
creates the marker last. It stops by itself after --max-seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path


def write_checkpoint(directory: Path, marker: str, step: int, size_bytes: int, save_seconds: float) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / marker).unlink(missing_ok=True)
    started = time.monotonic()
    chunk = os.urandom(1 << 20)
    with open(directory / "model.bin", "wb") as out:
        written = 0
        while written < size_bytes:
            piece = chunk[: min(len(chunk), size_bytes - written)]
            out.write(piece)
            written += len(piece)
        out.flush()
        os.fsync(out.fileno())
    (directory / "optimizer.pt").write_bytes(os.urandom(4096))
    (directory / "shards").mkdir(exist_ok=True)
    (directory / "shards" / "rank-0.bin").write_bytes(os.urandom(2048))
    (directory / "meta.json").write_text(json.dumps({"step": step, "written_at": time.time()}))
    # Serialization of a real model takes a while; simulate the rest of it.
    remaining = save_seconds - (time.monotonic() - started)
    if remaining > 0:
        time.sleep(remaining)
    (directory / marker).write_text(str(step))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-file", required=True, help="JSON: pid, signals received, checkpoints written")
    parser.add_argument("--checkpoint-mb", type=float, default=1.0)
    parser.add_argument("--save-seconds", type=float, default=0.5)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    args = parser.parse_args()

    directory = Path(os.environ["ML_CHECKPOINT_DIR"])
    marker = os.environ.get("ML_CHECKPOINT_DONE_MARKER", "CHECKPOINT_DONE")
    signum = signal.Signals[os.environ.get("ML_TRAINING_SIGNAL", "SIGUSR1")]
    state_file = Path(args.state_file)
    state = {"pid": os.getpid(), "signals": 0, "checkpoints": 0, "step": 0}

    def save_state() -> None:
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, state_file)

    requested = []

    def on_signal(signo, frame) -> None:
        state["signals"] += 1
        requested.append(time.time())

    signal.signal(signum, on_signal)
    signal.signal(signal.SIGTERM, lambda signo, frame: (_ for _ in ()).throw(SystemExit(0)))
    save_state()
    deadline = time.monotonic() + args.max_seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)  # one "training step"
        state["step"] += 1
        if requested:
            requested.clear()
            save_state()
            write_checkpoint(directory, marker, state["step"], int(args.checkpoint_mb * (1 << 20)),
                             args.save_seconds)
            state["checkpoints"] += 1
            save_state()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
