#!/usr/bin/env python3
"""Node agent interruption drill benchmark (a benchmark, not a test: it never fails on speed).

Runs the local drill of tests/node_agent/drill.py several times with the agent's
real 5 s IMDS polling and prints, per run and as median/max, the time from the
spot notice appearing in IMDS to:

  detected    the watch loop saw spot/instance-action
  signalled   `systemctl kill --signal=SIGUSR1` reached the trainer
  uploaded    the last checkpoint object and LATEST were in S3
  completed   CompleteLifecycleAction(CONTINUE) arrived (Run Command path)

against the two minutes EC2 gives a spot instance. Loopback only: moto's S3
server, a fake IMDS and an Auto Scaling stub on 127.0.0.1.

    make bench-drill            # or: python bench/drill.py --runs 5 --checkpoint-mb 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.node_agent import drill  # noqa: E402

COLUMNS = (
    ("detected", "notice_to_detected_s"),
    ("signalled", "notice_to_signalled_s"),
    ("uploaded", "notice_to_uploaded_s"),
    ("completed", "notice_to_completed_s"),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="drills to run (default 3)")
    parser.add_argument("--poll-seconds", type=float, default=5.0, help="IMDS polling interval (default 5, as deployed)")
    parser.add_argument("--checkpoint-mb", type=float, default=64.0, help="size of the trainer's model.bin (default 64)")
    parser.add_argument("--save-seconds", type=float, default=5.0,
                        help="time the trainer takes to write its checkpoint (default 5)")
    parser.add_argument("--agent-python", default=sys.executable,
                        help="interpreter that runs the agent, e.g. a Python 3.9 with boto3 (default: this one)")
    args = parser.parse_args()

    print(f"drill: {args.runs} runs, IMDS poll {args.poll_seconds:g} s, checkpoint {args.checkpoint_mb:g} MiB, "
          f"trainer save {args.save_seconds:g} s, agent on {args.agent_python}; seconds after the spot notice "
          f"(EC2 reclaims at {drill.SPOT_NOTICE_SECONDS:g} s)")
    print(f"{'run':>4} " + " ".join(f"{name:>10}" for name, _ in COLUMNS) + f" {'margin':>10}")
    samples = {key: [] for _, key in COLUMNS}
    failures = 0
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="ml-agent-drill-") as workdir:
            result = drill.run_drill(Path(workdir), poll_seconds=args.poll_seconds,
                                     checkpoint_mb=args.checkpoint_mb, save_seconds=args.save_seconds,
                                     notice_after_seconds=run * 1.3 % args.poll_seconds,
                                     agent_python=args.agent_python)
        ok = result.watch_exit == 0 and result.checkpoint_exit == 0 and "notice_to_completed_s" in result.timings
        failures += not ok
        for _, key in COLUMNS:
            if key in result.timings:
                samples[key].append(result.timings[key])
        cells = " ".join(f"{result.timings.get(key, float('nan')):10.2f}" for _, key in COLUMNS)
        margin = drill.SPOT_NOTICE_SECONDS - result.timings.get("notice_to_completed_s", float("nan"))
        print(f"{run:>4} {cells} {margin:10.2f}" + ("" if ok else "  FAILED"))
    for label, pick in (("med", statistics.median), ("max", max)):
        cells = " ".join(f"{pick(samples[key]):10.2f}" if samples[key] else f"{'-':>10}" for _, key in COLUMNS)
        completed = samples["notice_to_completed_s"]
        margin = f"{drill.SPOT_NOTICE_SECONDS - pick(completed):10.2f}" if completed else f"{'-':>10}"
        print(f"{label:>4} {cells} {margin}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
