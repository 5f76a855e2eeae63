#!/usr/bin/env python3
"""Synth wall-time benchmark (a benchmark, not a test: it never fails on speed).

Times, on this machine, after setup is current:
  * `python -c "import aws_cdk"`   the floor: starting jsii and loading aws-cdk-lib
  * `make synth`                    all stages through the pinned CDK CLI, with summary
  * `make synth STAGES=dev`         one stage
  * `make test` (with --test)       the whole suite

    make bench                  # or: python bench/synth.py --runs 5 --test
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=os.environ)
        samples.append(time.perf_counter() - start)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="repetitions per command (default 3)")
    parser.add_argument("--test", action="store_true", help="also time `make test` (once)")
    args = parser.parse_args()

    make = ["make", "--no-print-directory"]
    cases = [
        ("python -c 'import aws_cdk'", [sys.executable, "-c", "import aws_cdk"], args.runs),
        ("make synth (all stages)", [*make, "synth"], args.runs),
        ("make synth STAGES=dev", [*make, "synth", "STAGES=dev"], args.runs),
    ]
    if args.test:
        cases.append(("make test", [*make, "test"], 1))

    print(f"{os.cpu_count()} CPUs, {args.runs} runs per command, median (min-max) seconds")
    results = {}
    for label, cmd, runs in cases:
        samples = timed(cmd, runs)
        results[label] = statistics.median(samples)
        print(f"  {label:<28} {results[label]:7.2f}  ({min(samples):.2f}-{max(samples):.2f})")
    floor = results["python -c 'import aws_cdk'"]
    print(f"  ratio all stages / import    {results['make synth (all stages)'] / floor:7.2f}x")
    print(f"  ratio one stage / import     {results['make synth STAGES=dev'] / floor:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
