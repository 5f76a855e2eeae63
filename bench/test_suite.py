#!/usr/bin/env python3
"""Test-suite wall-time benchmark (a benchmark, not a test: it never fails on speed).

Runs `make test` several times (default 3) and `make synth` once for scale,
on this machine, after setup is current. For each run: wall time, the CPU
time (user + sys) of make and everything it started (pytest, its xdist
workers, the jsii kernels, the CDK CLI...) and the test counts from the
suite summary. Prints the medians. On a shared machine the wall time moves
with everybody else's load; the CPU time is the steadier figure, and the
load average is printed next to each run.

    make bench-tests                          # or: python bench/test_suite.py
    python bench/test_suite.py --runs 5 --make-args TEST_WORKERS=1
    python bench/test_suite.py --fast         # make test-fast for typical changes

``--fast``: instead, `make test-fast` as if one file had changed, for each
file of ``FAST_CASES`` (a Lambda handler, the node agent, two constructs,
a delivery CLI): the inner loop's wall time, median of ``--runs``.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# One typical change each: what `make test-fast` selects and how long it takes.
FAST_CASES = ("lambda/idle_shutdown/handler.py", "lambda/interruption_handler/handler.py",
              "node_agent/ml_node_agent.py", "constructs_lib/idle_shutdown.py",
              "constructs_lib/gpu_nodegroups.py", "delivery/cost.py")
SUMMARY = re.compile(r"^tests: (\d+) passed, (\d+) failed, (\d+) errors, (\d+) skipped", re.MULTILINE)


@dataclass
class Run:
    wall: float
    cpu: float  # user + sys of the command and every descendant it waited for
    status: int
    load: float  # 1-minute load average when the run started
    counts: tuple[int, ...] | None  # passed, failed, errors, skipped (make test only)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(cmd: list[str]) -> Run:
    load = os.getloadavg()[0]
    cpu, start = children_cpu(), time.perf_counter()
    # Not the variables of the make that started this script: `make bench-tests
    # ARGS=...` exports ARGS, which `make test` would hand to pytest.
    env = {k: v for k, v in os.environ.items()
           if k not in ("ARGS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    match = SUMMARY.search(result.stdout)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-3000:] + result.stderr[-3000:])
    return Run(wall=wall, cpu=children_cpu() - cpu, status=result.returncode, load=load,
               counts=tuple(map(int, match.groups())) if match else None)


def line(label: str, sample: Run) -> str:
    counts = ""
    if sample.counts:
        passed, failed, errors, skipped = sample.counts
        counts = f"  {passed} passed, {failed} failed, {errors} errors, {skipped} skipped"
    status = "" if sample.status == 0 else f"  EXIT {sample.status}"
    return (f"  {label:<40} wall {sample.wall:7.1f} s  cpu {sample.cpu:7.1f} s  "
            f"load {sample.load:5.2f}{counts}{status}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of `make test` (default 3)")
    parser.add_argument("--make-args", nargs="*", default=[],
                        help="extra make arguments for `make test`, e.g. TEST_WORKERS=1 or ARGS=-x")
    parser.add_argument("--fast", action="store_true",
                        help="time `make test-fast` for each typical change of FAST_CASES instead")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    make = ["make", "--no-print-directory"]
    if args.fast:
        return fast(make, args.runs)
    print(f"{os.cpu_count()} CPUs; `make test {' '.join(args.make_args)}`".rstrip() + f" x {args.runs}, "
          "then `make synth` once")
    tests = []
    for number in range(1, args.runs + 1):
        tests.append(run([*make, "test", *args.make_args]))
        print(line(f"make test #{number}", tests[-1]), flush=True)
    synth = run([*make, "synth"])
    print(line("make synth", synth))
    print(f"median make test: wall {statistics.median(t.wall for t in tests):.1f} s, "
          f"cpu {statistics.median(t.cpu for t in tests):.1f} s "
          f"({statistics.median(t.wall for t in tests) / synth.wall:.1f}x make synth)")
    return 0 if all(t.status == 0 for t in (*tests, synth)) else 1


def fast(make: list[str], runs: int) -> int:
    """`make test-fast` as if each of FAST_CASES alone had changed (nothing is edited)."""
    print(f"{os.cpu_count()} CPUs; `make test-fast` (SCOPE=direct) per changed file, median of {runs}")
    status = 0
    for path in FAST_CASES:
        samples = [run([*make, "test-fast", "CHANGED=",
                        f"ARGS=--changed-files={path} --changed-scope=direct"]) for _ in range(runs)]
        median = sorted(samples, key=lambda sample: sample.wall)[len(samples) // 2]
        print(line(path, median), flush=True)
        status |= any(sample.status != 0 for sample in samples)
    return status


if __name__ == "__main__":
    sys.exit(main())
