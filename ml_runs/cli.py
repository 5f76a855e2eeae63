"""``python -m ml_runs --stage STAGE submit|list|show|cancel|logs`` (``make run``).

Uses the default AWS credential chain in the stage's region; the runs
table, log group, fleet and bucket come from the deployed training stack's
outputs. Every expected failure is one line (delivery.cli_errors).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from botocore.exceptions import ClientError

from delivery.cli_errors import UserError, describe
from ml_runs import render
from ml_runs.logs import DEFAULT_FOLLOW_MINUTES, DEFAULT_POLL_SECONDS, FollowOptions, print_logs
from ml_runs.runs import (STATES, StageRuns, active_run_ids, cancel, get_run, list_runs, put_run,
                          raise_capacity)
from ml_runs.spec import Limits, load, validate
from ml_runs.stage import resolve
from ml_stacks.config import GPUS_PER_INSTANCE_TYPE, StageConfig, default_configs


@dataclass
class Context:
    """What a command needs; tests pass their own clients, clock and streams."""

    config: StageConfig
    clients: Callable[[str], Any]
    now: Callable[[], datetime]
    out: TextIO
    err: TextIO
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    _runs: StageRuns | None = None

    @property
    def runs(self) -> StageRuns:
        if self._runs is None:
            self._runs = resolve(self.clients("cloudformation"), self.config)
        return self._runs


def limits(config: StageConfig) -> Limits:
    training = config.training
    return Limits(
        max_gpus=training.max_gpus_per_instance,
        default_max_failures=training.run_default_max_failures,
        default_max_duration_minutes=training.run_default_max_duration_minutes,
        gpu_source=", ".join(f"{t} {GPUS_PER_INSTANCE_TYPE[t]}" for t in training.instance_types),
    )


def cmd_submit(ctx: Context, args: argparse.Namespace) -> int:
    # Validate before any AWS call: a bad spec fails fast, with or without credentials.
    spec = validate(load(Path(args.spec)), limits(ctx.config))
    runs, dynamodb = ctx.runs, ctx.clients("dynamodb")
    item = put_run(dynamodb, runs, spec, now=ctx.now())
    ctx.out.write(f"{item['run_id']}\n")
    try:
        active = len(active_run_ids(dynamodb, runs) | {item["run_id"]})
        capacity = raise_capacity(ctx.clients("autoscaling"), runs, active)
    except (ClientError, UserError) as error:
        # The run exists: say so, or the user submits it twice.
        raise UserError(f"run {item['run_id']} is submitted (PENDING), but the fleet's desired "
                        f"capacity was not raised ({_reason(error)}): the runs capacity function "
                        f"raises it within {ctx.config.training.runs_capacity_rate_minutes} minutes "
                        "once the group is reachable; do not submit it again") from None
    if capacity.max_size == 0:
        ctx.err.write(f"submitted run {item['run_id']} (PENDING); {runs.group} is closed "
                      f"(MaxSize 0{_off_hours(ctx.config)}): the run is queued and starts by "
                      "itself when the fleet reopens\n")
        return 0
    change = (f"{capacity.before} -> {capacity.after}" if capacity.after != capacity.before
              else f"stays {capacity.after}")
    ctx.err.write(f"submitted run {item['run_id']} (PENDING); {runs.group} desired capacity {change} "
                  f"for {active} pending or running run(s)\n")
    if active > capacity.max_size:
        ctx.err.write(f"{active - capacity.max_size} run(s) wait for an instance: the fleet's "
                      f"maximum is {capacity.max_size}\n")
    return 0


def _off_hours(config: StageConfig) -> str:
    idle = config.idle_shutdown
    if not idle.off_hours:
        return ""
    return (f", off hours: it reopens at '{idle.off_hours_scale_out_cron}' "
            f"{idle.off_hours_time_zone}")


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    states = tuple(args.state) if args.state else STATES
    found = list_runs(ctx.clients("dynamodb"), ctx.runs, states=states, limit=args.limit)
    ctx.out.write(render.run_list(found, ctx.now()) + "\n")
    return 0


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    run = get_run(ctx.clients("dynamodb"), ctx.runs, args.run_id)
    ctx.out.write(render.run_detail(run, ctx.now(), ctx.config.name) + "\n")
    return 0


def cmd_cancel(ctx: Context, args: argparse.Namespace) -> int:
    outcome = cancel(ctx.clients("dynamodb"), ctx.runs, args.run_id, now=ctx.now())
    if outcome.state == "RUNNING":
        ctx.out.write(f"cancel requested: {outcome.holder} stops run {outcome.run_id} within "
                      f"{ctx.config.training.lease_renew_seconds} s and marks it CANCELLED\n")
        return 0
    ctx.out.write(f"run {outcome.run_id} CANCELLED\n")
    if outcome.nothing_left:
        # The CLI cannot announce "job finished" (only the stage's instances
        # may): the instances left have no run to claim and are idle GPUs.
        ctx.err.write(f"no run left: {_idle_fate(ctx.config, ctx.runs.group)}\n")
    return 0


def _idle_fate(config: StageConfig, group: str) -> str:
    idle = config.idle_shutdown
    if not idle.enabled or idle.dry_run:
        return (f"idle shutdown {'is off' if not idle.enabled else 'only reports'} in stage "
                f"{config.name}: lower {group}'s desired capacity yourself")
    return (f"the idle-GPU sweep stops {group}'s idle instances (idle for {idle.window_minutes} "
            f"min, launched at least {idle.launch_grace_minutes} min ago)")


def cmd_logs(ctx: Context, args: argparse.Namespace) -> int:
    options = FollowOptions(follow=args.follow, poll_seconds=args.poll_seconds,
                            follow_minutes=args.follow_minutes)
    print_logs(ctx.clients("logs"), ctx.clients("dynamodb"), ctx.runs, args.run_id, options=options,
               out=ctx.out, err=ctx.err, sleep=ctx.sleep, monotonic=ctx.monotonic)
    return 0


def parser(stages: Sequence[str]) -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m ml_runs",
                                  description="Training runs of a deployed stage's GPU fleet")
    top.add_argument("--stage", required=True, choices=list(stages))
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    submit = commands.add_parser("submit", help="validate a run spec, write the run, scale the fleet up")
    submit.add_argument("spec", help="run spec file (JSON; .yaml/.yml is read as YAML)")
    submit.set_defaults(handler=cmd_submit)
    listing = commands.add_parser("list", help="runs, newest first")
    listing.add_argument("--state", action="append", choices=STATES, help="only these states (repeat)")
    listing.add_argument("--limit", type=_positive_int, default=50, help="at most this many (50)")
    listing.set_defaults(handler=cmd_list)
    show = commands.add_parser("show", help="state, attempts and last checkpoint of a run")
    show.add_argument("run_id")
    show.set_defaults(handler=cmd_show)
    stop = commands.add_parser("cancel", help="cancel a PENDING or RUNNING run")
    stop.add_argument("run_id")
    stop.set_defaults(handler=cmd_cancel)
    logs = commands.add_parser("logs", help="the trainer's output, every attempt")
    logs.add_argument("run_id")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the run ends")
    logs.add_argument("--poll-seconds", type=_positive_float, default=DEFAULT_POLL_SECONDS,
                      help=f"between reads when following ({DEFAULT_POLL_SECONDS:g})")
    logs.add_argument("--follow-minutes", type=_positive_float, default=DEFAULT_FOLLOW_MINUTES,
                      help=f"stop following after this long ({DEFAULT_FOLLOW_MINUTES})")
    logs.set_defaults(handler=cmd_logs)
    return top


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not above 0")
    return value


def main(argv: Sequence[str] | None = None, *, clients: Callable[[str], Any] | None = None,
         now: Callable[[], datetime] | None = None, out: TextIO | None = None,
         err: TextIO | None = None, sleep: Callable[[float], None] = time.sleep,
         monotonic: Callable[[], float] = time.monotonic) -> int:
    configs = default_configs()
    args = parser(list(configs)).parse_args(argv)
    config = configs[args.stage]
    ctx = Context(config=config, clients=clients or _boto3_clients(config.region),
                  now=now or (lambda: datetime.now(timezone.utc)), out=out or sys.stdout,
                  err=err or sys.stderr, sleep=sleep, monotonic=monotonic)
    try:
        return args.handler(ctx, args)
    except ClientError as error:
        raise UserError(_reason(error)) from None


def _reason(error: Exception) -> str:
    """One line for an AWS rejection: credentials, throttling and access as
    delivery.cli_errors words them; anything else with its code and message."""
    known = describe(error)
    if known is not None or not isinstance(error, ClientError):
        return known or str(error)
    details = error.response.get("Error", {})
    return (f"AWS rejected {error.operation_name} ({details.get('Code', 'ClientError')}: "
            f"{details.get('Message', '')})")


def _boto3_clients(region: str) -> Callable[[str], Any]:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(region_name=region)
    config = Config(retries={"mode": "standard", "max_attempts": 5})
    made: dict[str, Any] = {}

    def client(name: str) -> Any:
        if name not in made:
            made[name] = session.client(name, config=config)
        return made[name]
    return client
