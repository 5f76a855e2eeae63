#!/usr/bin/env python3
"""Runs drill benchmark: one run, three instances, two spot reclaims (a benchmark, not a test).

Runs tests/node_agent/drill.py's three-instance drill with the agent's
deployed IMDS polling (1 s) and prints, per checkpoint size:

  goodput     useful steps / executed steps over the whole run
  lost        steps executed on a reclaimed instance that the next one ran again
  and, per reclaim, seconds after the spot notice appeared in IMDS:
  detected    the watch saw spot/instance-action
  uploaded    the trainer's answer to the signal and runs/<id>/LATEST were in S3
  released    the run was PENDING again (lease released)
  completed   CompleteLifecycleAction(CONTINUE) (the hook's Run Command path)
  claimed     the next instance held the run
  restored    the next instance had downloaded runs/<id>/LATEST's checkpoint
  resumed     the next instance's trainer finished its first step after restoring

The next instance is already up and polling (every --claim-poll-seconds)
when the notice comes: instance boot and image pull are excluded. Loopback
only: moto's server, fake IMDS, an Auto Scaling stub on 127.0.0.1.

    make bench-drill                              # tiny and 1 GiB checkpoints
    python bench/drill.py --checkpoint-mib 0 256  # other sizes
    make bench-drill ARGS=--xid                   # a fatal Xid (79) on the running instance
    make bench-drill ARGS="--hung --hung-after-seconds 30"   # a trainer that stops reporting progress

--xid prints, in seconds after the Xid line was written to the instance's
kernel log: detected (the agent's watch parsed it), unhealthy
(SetInstanceHealth reached the Auto Scaling stub), released (the run was
PENDING again, after the checkpoint), claimed (the spare instance, already up,
held it) and resumed (its trainer finished its first step). --hung prints
the time from the trainer's last progress report to the hung-run alert.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from delivery.cli_errors import UserError, run  # noqa: E402
from tests.node_agent import drill  # noqa: E402

COLUMNS = ("detected", "uploaded", "released", "completed", "claimed", "restored", "resumed")


def measure(args: argparse.Namespace, mib: float) -> bool:
    settings = drill.AgentSettings(lease_seconds=90, lease_renew_seconds=30, claim_poll_seconds=args.claim_poll_seconds,
                                   imds_poll_seconds=1.0, budget_seconds=90, heartbeat_seconds=30,
                                   agent_python=args.agent_python)
    with tempfile.TemporaryDirectory(prefix="ml-runs-drill-") as workdir:
        try:
            result = drill.run_drill(Path(workdir), steps=args.steps,
                                     checkpoint_every=args.checkpoint_every if mib < 64 else 0,
                                     step_seconds=args.step_seconds, checkpoint_bytes=int(mib * (1 << 20)),
                                     max_failures=1, settings=settings)
        except (TimeoutError, RuntimeError) as error:  # the drill names what it waited for
            raise UserError(f"drill with a {mib:g} MiB checkpoint did not finish: {error}") from error
    identical = result.final_state == result.reference_state
    ok = result.run["state"] == "SUCCEEDED" and identical
    lost = [old.last_step - new.resumed_from_step for old, new in zip(result.attempts, result.attempts[1:])]
    print(f"\ncheckpoint {mib:g} MiB + state: run {result.run['state']}, final model "
          f"{'byte-identical to' if identical else 'DIFFERENT from'} the uninterrupted run")
    print(f"  goodput {result.steps}/{result.executed_steps} = {result.goodput:.3f}; steps lost per reclaim "
          f"{lost} ({f'periodic checkpoint every {args.checkpoint_every} steps' if mib < 64 else 'checkpoints on the signal and at the end only'})")
    print("  reclaim " + " ".join(f"{name:>10}" for name in COLUMNS), flush=True)
    for index, reclaim in enumerate(result.reclaims, 1):
        timings = reclaim["timings"]
        cells = " ".join(f"{timings.get(f'notice_to_{name}_s', float('nan')):10.2f}" for name in COLUMNS)
        print(f"  {index:>7} {cells}", flush=True)
    return ok


def measure_xid(args: argparse.Namespace) -> bool:
    settings = drill.AgentSettings(lease_seconds=90, lease_renew_seconds=30, claim_poll_seconds=args.claim_poll_seconds,
                                   imds_poll_seconds=1.0, budget_seconds=90, heartbeat_seconds=30,
                                   agent_python=args.agent_python)
    with tempfile.TemporaryDirectory(prefix="ml-xid-drill-") as workdir:
        try:
            result = drill.run_xid_drill(Path(workdir), xid=args.xid_code, steps=args.steps,
                                         checkpoint_every=args.checkpoint_every, step_seconds=args.step_seconds,
                                         settings=settings)
        except (TimeoutError, RuntimeError) as error:
            raise UserError(f"Xid drill did not finish: {error}") from error
    identical = result.final_state == result.reference_state
    print(f"\nXid {args.xid_code} on {result.attempts[0].instance_id} at step {result.attempts[0].last_step}: run "
          f"{result.run['state']}, final model {'byte-identical to' if identical else 'DIFFERENT from'} the "
          f"uninterrupted run; resumed from step {result.attempts[-1].resumed_from_step}")
    names = ("detected", "unhealthy", "released", "claimed", "resumed")
    print("  " + " ".join(f"{name:>10}" for name in names))
    print("  " + " ".join(f"{result.timings.get(f'xid_to_{name}_s', float('nan')):10.2f}" for name in names))
    return result.run["state"] == "SUCCEEDED" and identical


def measure_hung(args: argparse.Namespace) -> bool:
    settings = drill.AgentSettings(lease_seconds=90, lease_renew_seconds=30, claim_poll_seconds=args.claim_poll_seconds,
                                   agent_python=args.agent_python)
    with tempfile.TemporaryDirectory(prefix="ml-hung-drill-") as workdir:
        try:
            result = drill.run_hung_drill(Path(workdir), hung_after_seconds=args.hung_after_seconds, settings=settings)
        except (TimeoutError, RuntimeError) as error:
            raise UserError(f"hung drill did not finish: {error}") from error
    delays = ", ".join(f"{d:.2f}" for d in result.last_progress_to_alert_s)
    print(f"\nhung trainer, ML_HUNG_AFTER_SECONDS={args.hung_after_seconds:g}, ML_HUNG_ACTION=restart: run "
          f"{result.run['state']} ({[a.get('detail') for a in result.run['attempts']]}); last progress report to "
          f"hung alert: {delays} s")
    return result.run["state"] == "FAILED" and bool(result.last_progress_to_alert_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint-mib", type=float, nargs="+", default=[0, 1024],
                        help="extra checkpoint sizes to measure, MiB (default 0 and 1024); at 64 MiB and "
                             "above the trainer checkpoints only on the signal and at the end")
    parser.add_argument("--steps", type=int, default=2000, help="steps of the run (default 2000)")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="periodic checkpoint interval (default 100)")
    parser.add_argument("--step-seconds", type=float, default=0.05,
                        help="simulated step time (default 0.05: the run outlasts a local 1 GiB upload)")
    parser.add_argument("--claim-poll-seconds", type=float, default=1.0,
                        help="how often an idle instance looks for a run (deployed default 15; default 1 here)")
    parser.add_argument("--agent-python", default=sys.executable,
                        help="interpreter that runs the agent, e.g. a Python 3.9 with boto3 (default: this one)")
    parser.add_argument("--xid", action="store_true", help="measure the reaction to a fatal Xid instead")
    parser.add_argument("--xid-code", type=int, default=79, help="the Xid injected with --xid (default 79)")
    parser.add_argument("--hung", action="store_true", help="measure the hung-run alert instead")
    parser.add_argument("--hung-after-seconds", type=float, default=30.0,
                        help="ML_HUNG_AFTER_SECONDS for --hung (default 30)")
    args = parser.parse_args()
    if args.xid or args.hung:
        print(f"GPU fault drills: claim poll {args.claim_poll_seconds:g} s, lease 90 s, budget 90 s; the kernel log is "
              "a file the agent follows every 0.2 s (journalctl -k -f on an instance)")
        results = ([measure_xid(args)] if args.xid else []) + ([measure_hung(args)] if args.hung else [])
        return 0 if all(results) else 1
    print(f"runs drill: {args.steps} steps of {args.step_seconds:g} s, 3 instances, reclaims at 30% and 65%, "
          f"IMDS poll 1 s, claim poll {args.claim_poll_seconds:g} s; seconds after each spot notice "
          f"(EC2 reclaims at {drill.SPOT_NOTICE_SECONDS:g} s)")
    results = [measure(args, mib) for mib in args.checkpoint_mib]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(run(main))
