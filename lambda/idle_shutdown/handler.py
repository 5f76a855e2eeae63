"""Idle-GPU shutdown and job-completion scale-down.

Two events, one function (dispatched on ``(source, detail-type)``):

* ``aws.events`` / ``Scheduled Event`` (the EventBridge schedule): stop the
  in-service instances of opted-in Auto Scaling groups whose GPUs were idle
  for the whole window, shrinking their groups, never below the minimum.
* ``ml.training`` / ``Training Job Finished`` with
  ``detail.autoScalingGroupName``: scale that group (if opted in and
  enrolled by this stage) to its minimum, normally 0. The event comes only
  from the stage's own bus, which only the stage's instances may put on.

Malformed input is logged and ignored; an AWS error on the read path,
before anything was changed, is raised so the invocation counts as failed
(and the next schedule retries). Once a stop has been attempted, nothing
raises: every stop's result, failed ones included (any ``ClientError`` or
``BotoCoreError`` such as a read timeout), is logged, counted and in the
SNS summary, and a failed GPU-count lookup only leaves ``GpuHoursSaved``
at 0 with a log line saying why.

Invocations may overlap (no reserved concurrency: a new account's Lambda
limit cannot spare it, and nothing here needs it). Auto Scaling keeps that
safe: a decrementing terminate is refused once the desired capacity equals
the minimum, and a stop another invocation already made is refused as
"not found". Both refusals are reported for what they are, not as failures.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

import idle_decide as decide
import idle_fleet as fleet
from idle_report import Reporter, notify, stop_summary
from idle_settings import (COMPLETION_DETAIL_TYPE, COMPLETION_SOURCE, KEEP_ALIVE_TAG,
                           SCHEDULE_DETAIL_TYPE, SCHEDULE_SOURCE, STAGE_TAG, Settings)

# Auto Scaling group names: 1-255 characters, no control characters
# (full match: ``match`` with ``$`` would let a trailing newline through).
_GROUP_NAME_RE = re.compile(r"[^\x00-\x1f\x7f]{1,255}")

# Stops run in parallel: each TerminateInstanceInAutoScalingGroup is a
# round trip, and a burst of idle instances must fit well within the timeout.
STOP_WORKERS = 10
# Auto Scaling's refusals when another invocation (an overlapping sweep, a
# job-completion scale-down) got there first: ValidationError messages.
_AT_MINIMUM_MESSAGE = "desiredSize equals minSize"
_GONE_MESSAGE = "No managed instance found for instance ID"
AT_MINIMUM, ALREADY_STOPPED = "at_minimum", "already_stopped"
# Throttling on a burst of stops is retried with backoff, not surfaced.
_CONFIG = Config(retries={"mode": "standard", "max_attempts": 6},
                 max_pool_connections=STOP_WORKERS + 2)
_clients: dict[str, Any] = {}


def _client(name: str) -> Any:
    if name not in _clients:
        _clients[name] = boto3.client(name, config=_CONFIG)
    return _clients[name]


def handler(event: Any, context: Any) -> dict:
    return dispatch(event, settings=Settings.from_env(), clients=_client,
                    now=datetime.now(timezone.utc), reporter=Reporter())


def dispatch(event: Any, *, settings: Settings, clients: Any, now: datetime,
             reporter: Reporter) -> dict:
    if not isinstance(event, dict):
        reporter.log("event_ignored", reason="not_an_object", event_type=type(event).__name__)
        return {"status": "ignored"}
    kind = (event.get("source"), event.get("detail-type"))
    if kind == (SCHEDULE_SOURCE, SCHEDULE_DETAIL_TYPE):
        return sweep(settings=settings, clients=clients, now=now, reporter=reporter)
    if kind == (COMPLETION_SOURCE, COMPLETION_DETAIL_TYPE):
        return complete(event.get("detail"), settings=settings, clients=clients, reporter=reporter,
                        now=now, event_id=event.get("id"))
    reporter.log("event_ignored", reason="unrecognized_event", source=kind[0], detail_type=kind[1])
    return {"status": "ignored"}


def window(now: datetime, settings: Settings) -> tuple[datetime, datetime]:
    """``[start, end)`` on period boundaries, ending one period ago: the
    agent's latest minute may not have reached CloudWatch yet."""
    period = settings.metric.period_seconds
    end_epoch = int(now.timestamp()) // period * period - period
    end = datetime.fromtimestamp(end_epoch, tz=timezone.utc)
    return end - timedelta(seconds=settings.window_seconds), end


def sweep(*, settings: Settings, clients: Any, now: datetime, reporter: Reporter) -> dict:
    autoscaling, ec2 = clients("autoscaling"), clients("ec2")
    groups, members = fleet.opted_in_groups(autoscaling, settings.opt_in_tag_key,
                                            settings.opt_in_tag_value)
    by_name = {g.name: g for g in groups}
    details = fleet.launch_details(ec2, list(by_name)) if members else {}

    verdicts: list[decide.Verdict] = []
    candidates: list[decide.Instance] = []
    for member in members:
        launch_time, tags = details.get(member.instance_id, (None, {}))
        instance = replace(member, launch_time=launch_time, tags=tags)
        early = decide.precheck(instance, by_name[instance.group], now=now,
                                grace_seconds=settings.grace_seconds, keep_alive_tag=KEEP_ALIVE_TAG)
        if early is not None:
            verdicts.append(early)
        else:
            candidates.append(instance)

    series: dict[str, decide.Series] = {}
    if candidates:
        start, end = window(now, settings)
        series = fleet.gpu_utilization(clients("cloudwatch"), [c.instance_id for c in candidates],
                                       settings.metric, start=start, end=end)
    verdicts.extend(decide.judge(c, series.get(c.instance_id), now=now,
                                 threshold_percent=settings.threshold_percent,
                                 expected_datapoints=settings.expected_datapoints)
                    for c in candidates)

    to_stop, held = decide.select_stops(verdicts, by_name)
    stop_ids = {v.instance.instance_id for v in to_stop}
    held_ids = {v.instance.instance_id for v in held}
    errors: dict[str, str | None] = {}
    if to_stop and not settings.dry_run:
        ids = [v.instance.instance_id for v in to_stop]
        with ThreadPoolExecutor(max_workers=STOP_WORKERS) as pool:
            errors = dict(zip(ids, pool.map(lambda i: _stop(autoscaling, i), ids)))
    stopped: list[decide.Verdict] = []
    failures = 0
    for verdict in verdicts:
        instance_id = verdict.instance.instance_id
        action, error = "keep", None
        if instance_id in held_ids or errors.get(instance_id) == AT_MINIMUM:
            verdict = replace(verdict, reason=decide.AT_MINIMUM)
        elif instance_id in stop_ids and errors.get(instance_id) == ALREADY_STOPPED:
            action = ALREADY_STOPPED
        elif instance_id in stop_ids and settings.dry_run:
            action = "would_stop"
            stopped.append(verdict)
        elif instance_id in stop_ids and errors.get(instance_id) is None:
            action = "stopped"
            stopped.append(verdict)
        elif instance_id in stop_ids:
            action, error = "stop_failed", errors[instance_id]
            failures += 1
        reporter.decision(verdict, action=action, threshold_percent=settings.threshold_percent,
                          expected_datapoints=settings.expected_datapoints, dry_run=settings.dry_run)
        if error:
            reporter.log("stop_failed", instance_id=instance_id, error=error)

    gpu_hours = _gpu_hours(ec2, stopped, settings, reporter) if stopped and not settings.dry_run else 0.0
    reporter.metrics(stage=settings.stage, evaluated=len(verdicts), idle=len(to_stop) + len(held),
                     stopped=0 if settings.dry_run else len(stopped), gpu_hours_saved=gpu_hours,
                     failed=failures)
    if stopped:
        subject, message = stop_summary(settings.stage, stopped, dry_run=settings.dry_run,
                                        window_minutes=settings.window_seconds // 60,
                                        threshold_percent=settings.threshold_percent)
        notify(clients("sns"), settings.topic_arn, subject, message, reporter)
    return {"status": "ok", "evaluated": len(verdicts), "groups": len(groups),
            "stopped": [v.instance.instance_id for v in stopped], "dry_run": settings.dry_run}


def _gpu_hours(ec2: Any, stopped: list[decide.Verdict], settings: Settings,
               reporter: Reporter) -> float:
    """GPU hours saved, for the metric only: its failure must not lose the report."""
    try:
        gpus = fleet.gpus_per_type(ec2, {v.instance.instance_type for v in stopped})
    except (ClientError, BotoCoreError) as failure:
        reporter.log("gpu_count_unavailable", error=_error_code(failure),
                     instance_types=sorted({v.instance.instance_type for v in stopped}))
        return 0.0
    return sum(gpus.get(v.instance.instance_type, 0) for v in stopped) * settings.savings_horizon_hours


def _error_code(failure: Exception) -> str:
    if isinstance(failure, ClientError):
        return str(failure.response.get("Error", {}).get("Code", "ClientError"))
    return type(failure).__name__


def _stop(autoscaling: Any, instance_id: str) -> str | None:
    """Stop one instance; AT_MINIMUM or ALREADY_STOPPED when another invocation
    got there first, the error code if it may not have happened."""
    try:
        fleet.stop(autoscaling, instance_id)
    except ClientError as failure:
        error = failure.response.get("Error", {})
        message = error.get("Message", "")
        if error.get("Code") == "ValidationError" and _AT_MINIMUM_MESSAGE in message:
            return AT_MINIMUM
        if error.get("Code") == "ValidationError" and _GONE_MESSAGE in message:
            return ALREADY_STOPPED
        # A scaling activity in progress or throttling after retries: the
        # next run decides again.
        return _error_code(failure)
    except BotoCoreError as failure:
        # The network failed (a read timeout may even have stopped it): the
        # next run decides again.
        return _error_code(failure)
    except Exception as failure:  # noqa: BLE001 - the other stops must still be reported
        return type(failure).__name__
    return None


def _kept_instance(ec2: Any, group_name: str, now: datetime) -> tuple[str, str, str] | None:
    """The first running instance of the group a keep-alive tag protects, if any."""
    for instance_id, (_, tags) in sorted(fleet.launch_details(ec2, [group_name]).items()):
        until, malformed = decide.parse_keep_alive(tags.get(KEEP_ALIVE_TAG))
        if malformed:
            return instance_id, decide.KEEP_ALIVE_MALFORMED, tags.get(KEEP_ALIVE_TAG, "")
        if until is not None and until > now:
            return instance_id, decide.KEEP_ALIVE, tags[KEEP_ALIVE_TAG]
    return None


def complete(detail: Any, *, settings: Settings, clients: Any, reporter: Reporter, now: datetime,
             event_id: Any = None) -> dict:
    """Scale a finished job's group to its minimum, if it is opted in."""
    name = detail.get("autoScalingGroupName") if isinstance(detail, dict) else None
    if not isinstance(name, str) or not _GROUP_NAME_RE.fullmatch(name):
        reporter.log("completion_ignored", reason="malformed_event", event_id=event_id,
                     auto_scaling_group_name=name if isinstance(name, str) else repr(name))
        return {"status": "ignored", "reason": "malformed_event"}
    autoscaling = clients("autoscaling")
    try:
        group = fleet.describe_group(autoscaling, name)
    except ClientError as failure:
        if failure.response.get("Error", {}).get("Code") != "ValidationError":
            raise
        group = None
    if group is None:
        reporter.log("completion_ignored", reason="unknown_group", group=name, event_id=event_id)
        return {"status": "ignored", "reason": "unknown_group"}
    if group.tags.get(settings.opt_in_tag_key) != settings.opt_in_tag_value:
        reporter.log("completion_ignored", reason="not_opted_in", group=name, event_id=event_id,
                     tag_key=settings.opt_in_tag_key)
        return {"status": "ignored", "reason": "not_opted_in"}
    if group.tags.get(STAGE_TAG) != settings.stage:
        reporter.log("completion_ignored", reason="other_stage", group=name, event_id=event_id,
                     group_stage=group.tags.get(STAGE_TAG), stage=settings.stage)
        return {"status": "ignored", "reason": "other_stage"}
    until, malformed = decide.parse_keep_alive(group.tags.get(KEEP_ALIVE_TAG))
    if malformed or (until is not None and until > now):
        reason = decide.KEEP_ALIVE_MALFORMED if malformed else decide.KEEP_ALIVE
        reporter.log("completion_ignored", reason=reason, group=name, event_id=event_id,
                     keep_alive_until=group.tags.get(KEEP_ALIVE_TAG))
        return {"status": "ignored", "reason": reason}
    target = group.min_size
    if group.desired_capacity <= target:
        reporter.log("completion_scale_down", group=name, action="none",
                     reason="already_at_minimum", desired_capacity=group.desired_capacity,
                     min_size=group.min_size, event_id=event_id, dry_run=settings.dry_run)
        return {"status": "ok", "action": "none"}
    kept = _kept_instance(clients("ec2"), name, now)
    if kept is not None:
        # Scaling in picks instances by the group's termination policy: it
        # could pick the kept one. The schedule's sweep stops the others.
        instance_id, reason, value = kept
        reporter.log("completion_ignored", reason=reason, group=name, event_id=event_id,
                     instance_id=instance_id, keep_alive_until=value)
        return {"status": "ignored", "reason": reason, "instance_id": instance_id}
    action = "would_scale_down" if settings.dry_run else "scaled_down"
    if not settings.dry_run:
        fleet.scale_to(autoscaling, name, target)
    reporter.log("completion_scale_down", group=name, action=action, reason="job_finished",
                 desired_capacity=group.desired_capacity, new_desired_capacity=target,
                 min_size=group.min_size, event_id=event_id, dry_run=settings.dry_run)
    verb = "would scale" if settings.dry_run else "scaled"
    notify(clients("sns"), settings.topic_arn,
           f"[ml-{settings.stage}] job finished: {verb} {name} to {target}"[:100],
           f"A '{COMPLETION_DETAIL_TYPE}' event for Auto Scaling group {name} {verb} its desired "
           f"capacity from {group.desired_capacity} to {target} (its minimum)"
           + (" (dry run: nothing changed)." if settings.dry_run else "."),
           reporter)
    return {"status": "ok", "action": action, "desired_capacity": target}
