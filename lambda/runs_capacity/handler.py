"""Runs capacity reconciler: a PENDING run never waits without an instance.

On an EventBridge schedule it counts the PENDING and RUNNING runs of the
runs table (index ``by-state``, node_agent/RUNS_CONTRACT.md) and raises the
training fleet's desired capacity to ``min(MaxSize, active runs)`` when it
is lower. It never lowers it: scale-down belongs to idle shutdown and the
job-finished event. A group with ``MaxSize`` 0 is closed (off hours) and
left alone: its runs wait for the morning.

It closes the gaps ``ml_runs submit`` alone leaves: a run released to
PENDING by the off-hours scale-in (the morning action restores only the
minimum and the maximum), a job-finished scale-down landing just after a
submit raised the capacity, a failed ``SetDesiredCapacity`` after the run
was written, a manual change.

With a spot fallback configured it also raises the group's on-demand share
while spot capacity is dry for a PENDING run, and puts it back
(``spot_fallback.py``).

Every decision is one JSON line on stdout. An AWS error is logged and
raised, so the invocation counts as failed (the errors alarm goes to the
alerts topic) and the next schedule tries again; nothing is half done,
since the only write is the last call.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

import spot_fallback

ACTIVE_STATES = ("PENDING", "RUNNING")
# node_agent/RUNS_CONTRACT.md: run_id is <name>-<8 hex>.
RUN_ID_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?-[0-9a-f]{8}$")
# Throttling is retried with backoff inside the call; what is left is raised.
_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5})
_clients: dict[str, Any] = {}


@dataclass(frozen=True)
class Settings:
    table: str
    index: str
    group: str
    max_gpus: int
    fallback: spot_fallback.FallbackSettings | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        fallback = None
        if env.get("SPOT_FALLBACK_AFTER_SECONDS"):
            fallback = spot_fallback.FallbackSettings(
                after_seconds=int(env["SPOT_FALLBACK_AFTER_SECONDS"]),
                base_percentage=int(env["ON_DEMAND_PERCENTAGE"]),
                fallback_percentage=int(env["SPOT_FALLBACK_ON_DEMAND_PERCENTAGE"]),
                topic_arn=env["ALERTS_TOPIC_ARN"])
        return cls(table=env["RUNS_TABLE"], index=env["STATE_INDEX"], group=env["GROUP_NAME"],
                   max_gpus=int(env["MAX_GPUS_PER_INSTANCE"]), fallback=fallback)


@dataclass(frozen=True)
class Census:
    """The active runs an instance can carry, and what was left out."""

    pending: frozenset[str]
    running: frozenset[str]
    ignored: tuple[dict[str, Any], ...]

    @property
    def active(self) -> int:
        # A run that moved between the two queries shows in both: count it once.
        return len(self.pending | self.running)


@dataclass(frozen=True)
class Decision:
    target: int
    action: str  # "raise" or "none"
    reason: str


def _client(name: str) -> Any:
    if name not in _clients:
        _clients[name] = boto3.client(name, config=_CONFIG)
    return _clients[name]


def handler(event: Any, context: Any) -> dict:
    return reconcile(Settings.from_env(), clients=_client)


def reconcile(settings: Settings, *, clients: Callable[[str], Any],
              write: Callable[[str], None] = print,
              now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> dict:
    """Count, read the group, raise it if needed; one log line with the decision."""
    try:
        # Runs first, the group second: a concurrent raise (another
        # invocation, a submit) that lands between the two is seen here and
        # never undone by a count read before it.
        census = count_active(clients("dynamodb"), settings)
        group = describe_group(clients("autoscaling"), settings.group)
        decision = decide(census.active, group["DesiredCapacity"], group["MaxSize"])
        if decision.action == "raise":
            clients("autoscaling").set_desired_capacity(
                AutoScalingGroupName=settings.group, DesiredCapacity=decision.target,
                HonorCooldown=False)
        if settings.fallback is not None:
            switch = _spot_fallback(settings, census, group, clients, now())
    except (ClientError, BotoCoreError, LookupError) as error:
        _log(write, "capacity_failed", group=settings.group, table=settings.table,
             error_code=_code(error), error=str(error))
        raise
    _log(write, "capacity_decision", group=settings.group, action=decision.action,
         reason=decision.reason, pending=len(census.pending), running=len(census.running),
         active=census.active, desired_capacity=group["DesiredCapacity"],
         new_desired_capacity=decision.target, min_size=group["MinSize"],
         max_size=group["MaxSize"], ignored=len(census.ignored),
         ignored_items=list(census.ignored[:10]))
    result = {"action": decision.action, "reason": decision.reason, "active": census.active,
              "desired_capacity": decision.target}
    if settings.fallback is not None:
        _log(write, "spot_fallback", group=settings.group, action=switch.action, reason=switch.reason,
             on_demand_percentage=switch.percentage)
        result["spot_fallback"] = switch.action
    return result


def _spot_fallback(settings: Settings, census: Census, group: dict[str, Any],
                   clients: Callable[[str], Any], now: datetime) -> spot_fallback.Switch:
    autoscaling = clients("autoscaling")
    activities = spot_fallback.recent_activities(autoscaling, settings.group)
    switch = spot_fallback.decide(group=group, activities=activities, pending=len(census.pending),
                                  active=census.active, settings=settings.fallback, now=now)
    spot_fallback.apply(switch, autoscaling=autoscaling, sns=clients("sns"), group_name=settings.group,
                        settings=settings.fallback, now=now)
    return switch


def decide(active: int, desired: int, max_size: int) -> Decision:
    """``min(MaxSize, active)`` when the desired capacity is below it; never lower."""
    if max_size <= 0:
        return Decision(desired, "none", "fleet_closed")
    wanted = min(max_size, active)
    if desired >= wanted:
        return Decision(desired, "none", "no_active_runs" if active == 0 else "enough_capacity")
    return Decision(wanted, "raise", "capped_by_max_size" if active > max_size else "below_active_runs")


def count_active(dynamodb: Any, settings: Settings) -> Census:
    found: dict[str, set[str]] = {state: set() for state in ACTIVE_STATES}
    ignored: list[dict[str, Any]] = []
    for state in ACTIVE_STATES:
        for item in _query(dynamodb, settings, state):
            reason = _unusable(item, settings.max_gpus)
            if reason is None:
                found[state].add(item["run_id"]["S"])
            else:
                ignored.append({"run_id": _text(item.get("run_id")), "state": state, "reason": reason})
    return Census(pending=frozenset(found["PENDING"]), running=frozenset(found["RUNNING"]),
                  ignored=tuple(ignored))


def _query(dynamodb: Any, settings: Settings, state: str) -> Iterator[dict[str, Any]]:
    """Every item of ``by-state`` in ``state``, page by page (eventually consistent)."""
    request = {"TableName": settings.table, "IndexName": settings.index,
               "KeyConditionExpression": "#s = :state",
               "ProjectionExpression": "run_id, #s, #spec.#gpus",
               "ExpressionAttributeNames": {"#s": "state", "#spec": "spec", "#gpus": "gpus"},
               "ExpressionAttributeValues": {":state": {"S": state}}}
    while True:
        page = dynamodb.query(**request)
        yield from page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _unusable(item: dict[str, Any], max_gpus: int) -> str | None:
    """Why an item cannot be counted as a run an instance will carry, or None."""
    run_id = item.get("run_id", {}).get("S")
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        return "malformed_run_id"
    gpus = item.get("spec", {}).get("M", {}).get("gpus", {}).get("N")
    try:
        count = int(gpus)
    except (TypeError, ValueError):
        return "malformed_spec_gpus"
    if count < 1:
        return "malformed_spec_gpus"
    # No instance type of the fleet has that many GPUs: an instance brought
    # for it would sit idle until idle shutdown stops it, again and again.
    if count > max_gpus:
        return "needs_more_gpus_than_any_instance"
    return None


def describe_group(autoscaling: Any, name: str) -> dict[str, Any]:
    groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    if not groups:
        raise LookupError(f"Auto Scaling group {name} not found")
    return groups[0]


def _text(value: Any) -> str:
    if isinstance(value, dict) and len(value) == 1:
        return str(next(iter(value.values())))[:100]
    return repr(value)[:100]


def _code(error: Exception) -> str:
    if isinstance(error, ClientError):
        return error.response.get("Error", {}).get("Code", "ClientError")
    return type(error).__name__


def _log(write: Callable[[str], None], event: str, **fields: Any) -> None:
    write(json.dumps({"event": event, **fields}, default=str, sort_keys=True))
