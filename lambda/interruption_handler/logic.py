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

Throttling and other AWS errors raise ``TransientError`` (the record is
retried); an expired lifecycle token is terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from messages import LIFECYCLE_TERMINATE, REBALANCE_RECOMMENDATION, Interruption

HANDLED, SKIPPED, FAILED = "handled", "skipped", "failed"

NO_ACTIVE_LIFECYCLE_ACTION = "No active Lifecycle Action found"
# SendCommand's answer for an instance that is not a running managed node.
UNREACHABLE_CODES = frozenset({"InvalidInstanceId"})


class TransientError(Exception):
    """An AWS call failed in a way a later attempt can fix: retry the record."""

    def __init__(self, operation: str, error: Exception) -> None:
        self.operation = operation
        self.code = _error_code(error)
        super().__init__(f"{operation} failed: {self.code}: {str(error)[:300]}")


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


def _error_code(error: Exception) -> str:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", "Unknown"))
    return type(error).__name__


def _error_message(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message", ""))


def decide(interruption: Interruption, settings: Settings, clients: Clients,
           metrics: MetricSink) -> Decision:
    base = {"instance_id": interruption.instance_id, "kind": interruption.kind}
    if interruption.kind == REBALANCE_RECOMMENDATION and settings.rebalance_action == "log-only":
        return Decision(SKIPPED, "none", "rebalance-log-only", **base)
    lifecycle = interruption.lifecycle
    if lifecycle is not None and lifecycle.autoscaling_group_name != settings.autoscaling_group_name:
        return Decision(SKIPPED, "none", "lifecycle-action-of-another-group", **base,
                        details={"autoscaling_group_name": lifecycle.autoscaling_group_name})

    if not _is_fleet_instance(interruption.instance_id, settings, clients):
        return _release(interruption, "not-a-fleet-instance", clients, metrics)
    if not _is_online_in_ssm(interruption.instance_id, clients):
        return _release(interruption, "not-reachable-by-ssm", clients, metrics)

    try:
        command_id = _send_checkpoint(interruption, settings, clients)
    except ClientError as error:
        if _error_code(error) in UNREACHABLE_CODES:
            return _release(interruption, "not-reachable-by-ssm", clients, metrics)
        raise TransientError("ssm:SendCommand", error) from error
    except BotoCoreError as error:
        raise TransientError("ssm:SendCommand", error) from error
    metrics.count("CheckpointsRequested")
    return Decision(HANDLED, "checkpoint-requested", "fleet-instance-online", **base,
                    details={"command_id": command_id})


def _is_fleet_instance(instance_id: str, settings: Settings, clients: Clients) -> bool:
    try:
        response = clients.ec2.describe_instances(InstanceIds=[instance_id])
    except ClientError as error:
        if _error_code(error) in ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"):
            return False
        raise TransientError("ec2:DescribeInstances", error) from error
    except BotoCoreError as error:
        raise TransientError("ec2:DescribeInstances", error) from error
    for reservation in response.get("Reservations", []):
        for instance in reservation.get("Instances", []):
            if instance.get("InstanceId") != instance_id:
                continue
            tags = {t.get("Key"): t.get("Value") for t in instance.get("Tags", [])}
            return tags.get(settings.fleet_tag_key) == settings.fleet_tag_value
    return False


def _is_online_in_ssm(instance_id: str, clients: Clients) -> bool:
    try:
        response = clients.ssm.describe_instance_information(
            Filters=[{"Key": "InstanceIds", "Values": [instance_id]}])
    except (ClientError, BotoCoreError) as error:
        raise TransientError("ssm:DescribeInstanceInformation", error) from error
    return any(info.get("InstanceId") == instance_id and info.get("PingStatus") == "Online"
               for info in response.get("InstanceInformationList", []))


def _send_checkpoint(interruption: Interruption, settings: Settings, clients: Clients) -> str:
    lifecycle = interruption.lifecycle
    parameters = {
        "Reason": [interruption.kind],
        "EventId": [interruption.event_id],
        "LifecycleHookName": [lifecycle.hook_name if lifecycle else ""],
        "LifecycleActionToken": [lifecycle.token if lifecycle else ""],
        "AutoScalingGroupName": [lifecycle.autoscaling_group_name if lifecycle else ""],
    }
    response = clients.ssm.send_command(
        DocumentName=settings.document_name,
        InstanceIds=[interruption.instance_id],
        Parameters=parameters,
        TimeoutSeconds=settings.command_delivery_timeout_seconds,
        Comment=f"checkpoint: {interruption.kind} {interruption.event_id}"[:100],
    )
    return str(response.get("Command", {}).get("CommandId", ""))


def _release(interruption: Interruption, reason: str, clients: Clients,
             metrics: MetricSink) -> Decision:
    """Nobody will checkpoint this instance: let its termination go on now."""
    base = {"instance_id": interruption.instance_id, "kind": interruption.kind}
    lifecycle = interruption.lifecycle
    if interruption.kind != LIFECYCLE_TERMINATE or lifecycle is None:
        return Decision(SKIPPED, "none", reason, **base)
    try:
        clients.autoscaling.complete_lifecycle_action(
            LifecycleHookName=lifecycle.hook_name,
            AutoScalingGroupName=lifecycle.autoscaling_group_name,
            LifecycleActionToken=lifecycle.token,
            LifecycleActionResult="CONTINUE",
            InstanceId=interruption.instance_id,
        )
    except ClientError as error:
        if _error_code(error) == "ValidationError" and NO_ACTIVE_LIFECYCLE_ACTION in _error_message(error):
            return Decision(HANDLED, "none", f"{reason}; lifecycle action already ended", **base)
        raise TransientError("autoscaling:CompleteLifecycleAction", error) from error
    except BotoCoreError as error:
        raise TransientError("autoscaling:CompleteLifecycleAction", error) from error
    metrics.count("LifecycleActionsCompleted")
    return Decision(HANDLED, "lifecycle-action-completed", reason, **base)
