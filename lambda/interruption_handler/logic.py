"""What to do about one interruption. boto3 clients come in; nothing global.

Decisions, per instance and event:

* rebalance recommendation with ``rebalance_action=log-only``: log only;
* lifecycle action of another Auto Scaling group: not ours to complete
  (and this function may not: its IAM is scoped to our group): skip;
* instance not tagged as this fleet, gone, or not online in SSM: complete the
  lifecycle action at once (if there is one) so nothing waits for the
  heartbeat timeout; a bare spot/rebalance notice is skipped (the node
  agent's own IMDS poll is the second path);
* otherwise: send the stack's checkpoint document once; the node agent
  heartbeats and completes the lifecycle action itself.

Instances are looked up for a whole batch at once (``look_up``: one
DescribeInstances and one DescribeInstanceInformation per batch, not per
record). Every call is retried within the record's deadline (``calls.py``);
what still fails raises ``TransientError`` and the record is retried by
SQS. An expired lifecycle token is terminal.

``SendCommand`` has no client token, so a repeat is guarded by looking
first: when an earlier attempt may have sent the command (an ambiguous
error, or an idempotency record left in progress by a crashed or failed
attempt), ``ListCommands`` on the instance is asked whether this event's
command exists before sending again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from calls import CallStats, Deadline, TransientError, call, error_code, error_message, is_ambiguous
from messages import LIFECYCLE_TERMINATE, REBALANCE_RECOMMENDATION, Interruption

HANDLED, SKIPPED, FAILED = "handled", "skipped", "failed"

NO_ACTIVE_LIFECYCLE_ACTION = "No active Lifecycle Action found"
# SendCommand's answer for an instance that is not a running managed node.
UNREACHABLE_CODES = frozenset({"InvalidInstanceId"})
# DescribeInstanceInformation pages hold at most 50; EC2 filters take 200 values.
INFORMATION_PAGE_SIZE = 50
MAX_FILTER_VALUES = 200
# How far back ListCommands looks for an earlier command of the same event.
EARLIER_COMMAND_WINDOW = timedelta(hours=1)
MAX_COMMAND_PAGES = 5


class MetricSink(Protocol):
    def count(self, name: str) -> None: ...


@dataclass(frozen=True)
class Settings:
    autoscaling_group_name: str
    fleet_tag_key: str
    fleet_tag_value: str
    document_name: str
    rebalance_action: str = "checkpoint"
    command_delivery_timeout_seconds: int = 60


@dataclass
class Clients:
    ec2: Any
    ssm: Any
    autoscaling: Any


@dataclass(frozen=True)
class Facts:
    """What one batch lookup found out about an instance."""

    fleet: bool
    online: bool


@dataclass(frozen=True)
class Decision:
    outcome: str
    action: str
    reason: str
    instance_id: str | None = None
    kind: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "action": self.action, "reason": self.reason,
                "instance_id": self.instance_id, "kind": self.kind, **self.details}


def needs_lookup(interruption: Interruption, settings: Settings) -> bool:
    """False when the decision does not depend on the instance."""
    if interruption.kind == REBALANCE_RECOMMENDATION and settings.rebalance_action == "log-only":
        return False
    lifecycle = interruption.lifecycle
    return lifecycle is None or lifecycle.autoscaling_group_name == settings.autoscaling_group_name


def look_up(instance_ids: Iterable[str], settings: Settings, clients: Clients, deadline: Deadline,
            stats: CallStats | None = None) -> dict[str, Facts]:
    """Fleet membership and SSM reachability of many instances in few calls.

    A filter (not ``InstanceIds``) so that one unknown instance does not
    fail the whole lookup with ``InvalidInstanceID.NotFound``.
    """
    ids = sorted(set(instance_ids))
    fleet: set[str] = set()
    for start in range(0, len(ids), MAX_FILTER_VALUES):
        chunk = ids[start:start + MAX_FILTER_VALUES]
        request: dict[str, Any] = {"Filters": [{"Name": "instance-id", "Values": chunk}]}
        while True:
            page = _read("ec2:DescribeInstances",
                         lambda r=dict(request): clients.ec2.describe_instances(**r), deadline, stats)
            for reservation in page.get("Reservations", []):
                for instance in reservation.get("Instances", []):
                    tags = {t.get("Key"): t.get("Value") for t in instance.get("Tags", [])}
                    if tags.get(settings.fleet_tag_key) == settings.fleet_tag_value:
                        fleet.add(instance.get("InstanceId"))
            if not page.get("NextToken"):
                break
            request["NextToken"] = page["NextToken"]
    online = _online(sorted(fleet.intersection(ids)), clients, deadline, stats)
    return {i: Facts(fleet=i in fleet, online=i in online) for i in ids}


def instances_in_reservations(reservation_ids: Iterable[str], settings: Settings, clients: Clients,
                              deadline: Deadline, stats: CallStats | None = None) -> dict[str, list[str]]:
    """The fleet's running (or starting) instances in each capacity reservation.

    One DescribeInstances for the whole batch (200 reservations a call),
    filtered on the fleet tag: a Capacity Block warning names the
    reservation only, and other workloads may share it.
    """
    ids = sorted(set(reservation_ids))
    found: dict[str, list[str]] = {i: [] for i in ids}
    for start in range(0, len(ids), MAX_FILTER_VALUES):
        request: dict[str, Any] = {"Filters": [
            {"Name": "capacity-reservation-id", "Values": ids[start:start + MAX_FILTER_VALUES]},
            {"Name": f"tag:{settings.fleet_tag_key}", "Values": [settings.fleet_tag_value]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]}]}
        while True:
            page = _read("ec2:DescribeInstances",
                         lambda r=dict(request): clients.ec2.describe_instances(**r), deadline, stats)
            for reservation in page.get("Reservations", []):
                for instance in reservation.get("Instances", []):
                    cr, instance_id = instance.get("CapacityReservationId"), instance.get("InstanceId")
                    if cr in found and isinstance(instance_id, str) and instance_id not in found[cr]:
                        found[cr].append(instance_id)
            if not page.get("NextToken"):
                break
            request["NextToken"] = page["NextToken"]
    return found


def _online(ids: list[str], clients: Clients, deadline: Deadline,
            stats: CallStats | None) -> set[str]:
    online: set[str] = set()
    for start in range(0, len(ids), INFORMATION_PAGE_SIZE):
        chunk = ids[start:start + INFORMATION_PAGE_SIZE]
        request: dict[str, Any] = {"Filters": [{"Key": "InstanceIds", "Values": chunk}],
                                   "MaxResults": INFORMATION_PAGE_SIZE}
        while True:
            page = _read("ssm:DescribeInstanceInformation",
                         lambda r=dict(request): clients.ssm.describe_instance_information(**r),
                         deadline, stats)
            online.update(info.get("InstanceId") for info in page.get("InstanceInformationList", [])
                          if info.get("PingStatus") == "Online" and info.get("InstanceId") in chunk)
            if not page.get("NextToken"):
                break
            request["NextToken"] = page["NextToken"]
    return online


def _read(operation: str, function: Any, deadline: Deadline, stats: CallStats | None) -> Any:
    try:
        return call(operation, function, deadline, stats)
    except ClientError as error:
        raise TransientError(operation, error) from error


@dataclass
class Trace:
    """Whether this attempt may have sent the command (it succeeded, or an
    answer was lost): then its idempotency record must not be released."""

    maybe_sent: bool = False


def decide(interruption: Interruption, facts: Facts | None, settings: Settings, clients: Clients,
           metrics: MetricSink, deadline: Deadline, *, stats: CallStats | None = None,
           maybe_sent: bool = False, trace: Trace | None = None) -> Decision:
    """``facts`` is ``None`` exactly when ``needs_lookup`` is false;
    ``maybe_sent``: an earlier attempt of this event may have sent the command."""
    trace = trace if trace is not None else Trace()
    base = {"instance_id": interruption.instance_id, "kind": interruption.kind}
    if interruption.kind == REBALANCE_RECOMMENDATION and settings.rebalance_action == "log-only":
        return Decision(SKIPPED, "none", "rebalance-log-only", **base)
    lifecycle = interruption.lifecycle
    if lifecycle is not None and lifecycle.autoscaling_group_name != settings.autoscaling_group_name:
        return Decision(SKIPPED, "none", "lifecycle-action-of-another-group", **base,
                        details={"autoscaling_group_name": lifecycle.autoscaling_group_name})
    if facts is None or not facts.fleet:
        return _release(interruption, "not-a-fleet-instance", clients, metrics, deadline, stats)
    if not facts.online:
        return _release(interruption, "not-reachable-by-ssm", clients, metrics, deadline, stats)

    earlier = _earlier_command(interruption, settings, clients, deadline, stats) if maybe_sent else None
    if earlier is not None:
        return Decision(HANDLED, "checkpoint-requested", "fleet-instance-online; command sent by "
                        "an earlier attempt", **base, details={"command_id": earlier})
    def attempt() -> str:
        try:
            command_id = _send_checkpoint(interruption, settings, clients)
        except (ClientError, BotoCoreError) as error:
            trace.maybe_sent = trace.maybe_sent or is_ambiguous(error)
            raise
        trace.maybe_sent = True
        return command_id

    try:
        command_id = call("ssm:SendCommand", attempt, deadline, stats, before_retry=lambda _: _earlier_command(
            interruption, settings, clients, deadline, stats))
    except ClientError as error:
        if error_code(error) in UNREACHABLE_CODES:
            return _release(interruption, "not-reachable-by-ssm", clients, metrics, deadline, stats)
        raise TransientError("ssm:SendCommand", error) from error
    metrics.count("CheckpointsRequested")
    return Decision(HANDLED, "checkpoint-requested", "fleet-instance-online", **base,
                    details={"command_id": command_id})


def _parameters(interruption: Interruption) -> dict[str, list[str]]:
    lifecycle = interruption.lifecycle
    with_token = lifecycle is not None and bool(lifecycle.token)
    return {
        "Reason": [interruption.kind],
        "EventId": [interruption.event_id],
        "LifecycleHookName": [lifecycle.hook_name if with_token else ""],
        "LifecycleActionToken": [lifecycle.token if with_token else ""],
        "AutoScalingGroupName": [lifecycle.autoscaling_group_name if with_token else ""],
    }


def _send_checkpoint(interruption: Interruption, settings: Settings, clients: Clients) -> str:
    response = clients.ssm.send_command(
        DocumentName=settings.document_name,
        InstanceIds=[interruption.instance_id],
        Parameters=_parameters(interruption),
        TimeoutSeconds=settings.command_delivery_timeout_seconds,
        Comment=f"checkpoint: {interruption.kind} {interruption.event_id}"[:100],
    )
    return str(response.get("Command", {}).get("CommandId", ""))


def _earlier_command(interruption: Interruption, settings: Settings, clients: Clients,
                     deadline: Deadline, stats: CallStats | None) -> str | None:
    """The id of this event's checkpoint command on the instance, if one was sent."""
    wanted = _parameters(interruption)
    after = (datetime.now(timezone.utc) - EARLIER_COMMAND_WINDOW).strftime("%Y-%m-%dT%H:%M:%SZ")
    request: dict[str, Any] = {"InstanceId": interruption.instance_id, "Filters": [
        {"key": "DocumentName", "value": settings.document_name},
        {"key": "InvokedAfter", "value": after}]}
    for _ in range(MAX_COMMAND_PAGES):
        page = _read("ssm:ListCommands", lambda r=dict(request): clients.ssm.list_commands(**r),
                     deadline, stats)
        for command in page.get("Commands", []):
            parameters = command.get("Parameters") or {}
            if (command.get("DocumentName") == settings.document_name
                    and interruption.instance_id in (command.get("InstanceIds") or [])
                    and all(parameters.get(k) == v for k, v in wanted.items()
                            if k in ("Reason", "EventId", "LifecycleActionToken"))):
                return str(command.get("CommandId", ""))
        if not page.get("NextToken"):
            return None
        request["NextToken"] = page["NextToken"]
    return None


def _release(interruption: Interruption, reason: str, clients: Clients, metrics: MetricSink,
             deadline: Deadline, stats: CallStats | None) -> Decision:
    """Nobody will checkpoint this instance: let its termination go on now."""
    base = {"instance_id": interruption.instance_id, "kind": interruption.kind}
    lifecycle = interruption.lifecycle
    if interruption.kind != LIFECYCLE_TERMINATE or lifecycle is None:
        return Decision(SKIPPED, "none", reason, **base)
    request = {"LifecycleHookName": lifecycle.hook_name,
               "AutoScalingGroupName": lifecycle.autoscaling_group_name,
               "LifecycleActionResult": "CONTINUE", "InstanceId": interruption.instance_id}
    if lifecycle.token:
        request["LifecycleActionToken"] = lifecycle.token
    try:
        call("autoscaling:CompleteLifecycleAction",
             lambda: clients.autoscaling.complete_lifecycle_action(**request), deadline, stats)
    except ClientError as error:
        if error_code(error) == "ValidationError" and NO_ACTIVE_LIFECYCLE_ACTION in error_message(error):
            return Decision(HANDLED, "none", f"{reason}; lifecycle action already ended", **base)
        raise TransientError("autoscaling:CompleteLifecycleAction", error) from error
    metrics.count("LifecycleActionsCompleted")
    return Decision(HANDLED, "lifecycle-action-completed", reason, **base)
