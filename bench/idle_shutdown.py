#!/usr/bin/env python3
"""Idle-shutdown benchmark (a benchmark, not a test: it never fails on speed).

1. The sweep over N = 100, 1,000 and 5,000 synthetic instances (50 per
   group; ~30 % idle, ~55 % busy, ~10 % without data, ~5 % partial windows,
   2 % scale-in protected, 5 % younger than the grace period): AWS calls by
   type, the largest GetMetricData batch, instances stopped, and the
   handler's wall time (best of --runs), and once more with a simulated
   network round trip per call (--latency-ms, default 25). The account is synthetic
   (tests/lambda/synthetic_account.py: real boto3 clients, answered at
   botocore's before-call hook) because moto's DescribeInstances is
   quadratic in instances; with --moto, N = 100 also runs on moto to show
   the same call pattern.
2. Cold-start import time: ``import handler`` (the function's module, which
   imports boto3) against ``import boto3`` alone, in fresh interpreters,
   median of --imports runs. The goal is a ratio within 1.5.

    make bench-idle        # or: python bench/idle_shutdown.py [--runs 3] [--imports 15] [--latency-ms 25] [--moto]
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.idle_function import FUNCTION_DIR, handler_module, module  # noqa: E402

# "lambda" is a keyword: the test helpers are imported by name.
SyntheticAccount = importlib.import_module("tests.lambda.synthetic_account").SyntheticAccount
_world = importlib.import_module("tests.lambda.idle_world")

OPERATIONS = ("DescribeAutoScalingGroups", "DescribeInstances", "GetMetricData",
              "TerminateInstanceInAutoScalingGroup", "DescribeInstanceTypes", "Publish")
SHORT = {"DescribeAutoScalingGroups": "DescribeASG", "DescribeInstances": "DescribeInst",
         "GetMetricData": "GetMetricData", "TerminateInstanceInAutoScalingGroup": "Terminate",
         "DescribeInstanceTypes": "DescribeTypes", "Publish": "Publish"}
NOW = datetime(2026, 11, 23, 9, 30, 17, tzinfo=timezone.utc)


def sweep_once(n: int, latency_seconds: float = 0.0) -> tuple[float, SyntheticAccount, dict]:
    handler = handler_module()
    settings = module("idle_settings").Settings.from_env(
        {"STAGE": "bench", "TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:ml-bench-alerts"})
    account = SyntheticAccount(instances=n, now=NOW, latency_seconds=latency_seconds)
    clients = {name: account.client(name) for name in ("autoscaling", "ec2", "cloudwatch", "sns")}
    reporter = module("idle_report").Reporter(lambda line: None)
    start = time.perf_counter()
    result = handler.dispatch(_world.event("scheduled_event"), settings=settings, clients=clients.__getitem__,
                              now=NOW, reporter=reporter)
    return time.perf_counter() - start, account, result


def moto_once(n: int) -> tuple[float, dict]:
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    from moto import mock_aws

    World, later = _world.World, _world.later
    with mock_aws():
        world = World.create()
        ids = [i for g in range(math.ceil(n / 50)) for i in world.group(f"ml-train-{g:04d}", size=min(50, n - g * 50))]
        now = later()
        world.utilization(ids[: n // 3], [1.0] * 15, now=now, settings=world.settings())
        world.utilization(ids[n // 3:], [60.0] * 15, now=now, settings=world.settings())
        start = time.perf_counter()
        world.run(_world.event("scheduled_event"), now=now)
        return time.perf_counter() - start, dict(world.operations())


def import_seconds(statement: str, runs: int) -> float:
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); t = time.perf_counter(); "
            f"{statement}; print(time.perf_counter() - t)")
    samples = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code, str(FUNCTION_DIR)], check=True,
                             capture_output=True, text=True, cwd=FUNCTION_DIR,
                             env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        samples.append(float(out.stdout.strip()))
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="sweeps per N, best reported (default 3)")
    parser.add_argument("--imports", type=int, default=15, help="fresh interpreters per import (default 15)")
    parser.add_argument("--latency-ms", type=float, default=25,
                        help="simulated round trip per AWS call for the last column (default 25)")
    parser.add_argument("--moto", action="store_true", help="also run N=100 on moto")
    parser.add_argument("--fleets", type=int, nargs="+", default=[100, 1_000, 5_000], metavar="N",
                        help="fleet sizes (instances) to sweep (default 100 1000 5000)")
    args = parser.parse_args()

    header = f"{'N':>6} | " + " | ".join(f"{SHORT[o]:>13}" for o in OPERATIONS) + \
        f" | {'max queries':>11} | {'stopped':>7} | {'handler s':>9} | {f'@{args.latency_ms:g} ms/call':>14}"
    print(header)
    print("-" * len(header))
    for n in args.fleets:
        best = None
        for _ in range(args.runs):
            seconds, account, result = sweep_once(n)
            if best is None or seconds < best[0]:
                best = (seconds, account, result)
        seconds, account, result = best
        slow, _, _ = sweep_once(n, args.latency_ms / 1000)
        counts = " | ".join(f"{account.calls[o]:>13}" for o in OPERATIONS)
        print(f"{n:>6} | {counts} | {max(account.queries_per_call):>11} | "
              f"{len(result['stopped']):>7} | {seconds:>9.3f} | {slow:>14.3f}")
    if args.moto:
        seconds, ops = moto_once(100)
        counts = " | ".join(f"{ops.get(o, 0):>13}" for o in OPERATIONS)
        print(f"{'100*':>6} | {counts} | {'':>11} | {'':>7} | {seconds:>9.3f} | {'':>14}   (* moto)")

    boto3_s = import_seconds("import boto3", args.imports)
    handler_s = import_seconds("import handler", args.imports)
    print()
    print(f"import boto3    {boto3_s * 1000:7.1f} ms  (median of {args.imports} fresh interpreters)")
    print(f"import handler  {handler_s * 1000:7.1f} ms  -> {handler_s / boto3_s:.2f}x boto3 (goal <= 1.5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
