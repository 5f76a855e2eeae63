"""Parsers for the message shapes that reach the interruption queue.

One parser per shape, dispatched on EventBridge ``(source, detail-type)`` or,
for messages the lifecycle hook sends straight to SQS, on their own fields.
Every field that later becomes a Run Command or Auto Scaling parameter is
checked against the same pattern the SSM document's ``allowedPattern``
enforces, with a *full* match (``re.match`` with ``$`` would accept a
trailing newline), so a message that could not be sent is rejected here,
with its reason.

Most events name one instance. An AWS Health scheduled change names several
(``affectedEntities``): it parses to one ``Interruption`` per instance
(``Fanout``). A Capacity Block expiration warning names a capacity
reservation, not instances: it parses to a ``ReservationNotice`` that the
batch turns into interruptions of the fleet's instances in that reservation
(one DescribeInstances for all the batch's reservations, ``batch.py``).

A termination lifecycle message whose token is unusable but whose instance,
hook and group are valid is still an interruption: it is parsed without the
token (``salvaged`` says why), so the instance is checkpointed and the
message is also quarantined for a human (``batch.py``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

SPOT_INTERRUPTION = "spot-interruption"
REBALANCE_RECOMMENDATION = "rebalance-recommendation"
LIFECYCLE_TERMINATE = "lifecycle-terminate"
HEALTH_SCHEDULED_CHANGE = "health-scheduled-change"
CAPACITY_BLOCK_EXPIRING = "capacity-block-expiring"
RESERVATION_INTERRUPTION = "capacity-reservation-interruption"
KINDS = (SPOT_INTERRUPTION, REBALANCE_RECOMMENDATION, LIFECYCLE_TERMINATE, HEALTH_SCHEDULED_CHANGE,
         CAPACITY_BLOCK_EXPIRING, RESERVATION_INTERRUPTION)

# AWS Health scheduled changes after which an EC2 instance is stopped,
# terminated or rebooted (AWS Health event type codes, service EC2). The
# EventBridge rule (constructs_lib/interruption_handler.py) matches exactly
# these; network and power maintenance keep the instance running and are
# left out.
HEALTH_EVENT_TYPE_CODES = (
    "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED",
    "AWS_EC2_INSTANCE_RETIREMENT_EXPEDITED",
    "AWS_EC2_PERSISTENT_INSTANCE_RETIREMENT_SCHEDULED",
    "AWS_EC2_PERSISTENT_INSTANCE_RETIREMENT_EXPEDITED",
    "AWS_EC2_INSTANCE_STOP_SCHEDULED",
    "AWS_EC2_INSTANCE_TERMINATION_SCHEDULED",
    "AWS_EC2_INSTANCE_REBOOT_MAINTENANCE_SCHEDULED",
    "AWS_EC2_INSTANCE_REBOOT_FLEXIBLE_MAINTENANCE_SCHEDULED",
    "AWS_EC2_SYSTEM_REBOOT_MAINTENANCE_SCHEDULED",
)
# An update of a change that is over ("closed") is nothing to act on.
HEALTH_STATUS_CODES = ("upcoming", "open")
# EC2 spells the Capacity Block warning both ways (DESIGN.md, AWS facts).
CAPACITY_BLOCK_WARNINGS = ("Capacity Block Expiration Warning",
                           "Capacity Block Reservation Expiration Warning")
RESERVATION_INTERRUPTION_WARNING = "EC2 Capacity Reservation Instance Interruption Warning"
# One Health event lists at most this many instances we act on in one record.
MAX_AFFECTED_ENTITIES = 100

# Same patterns as the SSM document's allowedPattern (constructs_lib/
# interruption_handler.py); tests/lambda asserts they stay identical.
INSTANCE_ID_PATTERN = r"^i-[0-9a-f]{8,17}$"
EVENT_ID_PATTERN = r"^[A-Za-z0-9-]{1,128}$"
LIFECYCLE_HOOK_NAME_PATTERN = r"^[A-Za-z0-9_/-]{0,255}$"
LIFECYCLE_ACTION_TOKEN_PATTERN = r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})?$"
AUTOSCALING_GROUP_NAME_PATTERN = r"^[A-Za-z0-9_./-]{0,255}$"

_INSTANCE_ID = re.compile(INSTANCE_ID_PATTERN)
_EVENT_ID = re.compile(EVENT_ID_PATTERN)
_HOOK_NAME = re.compile(LIFECYCLE_HOOK_NAME_PATTERN)
_TOKEN = re.compile(LIFECYCLE_ACTION_TOKEN_PATTERN)
_ASG_NAME = re.compile(AUTOSCALING_GROUP_NAME_PATTERN)
CAPACITY_RESERVATION_ID_PATTERN = r"^cr-[0-9a-f]{8,17}$"
_RESERVATION_ID = re.compile(CAPACITY_RESERVATION_ID_PATTERN)
# Only an idempotency key: unique per Health event, so an update of the
# same event (a new EventBridge id) does not checkpoint again.
_HEALTH_EVENT_ARN = re.compile(r"^arn:aws[a-z-]*:health:[a-z0-9-]*::event/EC2/[A-Za-z0-9_./-]{1,400}$")

TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"
TEST_NOTIFICATION = "autoscaling:TEST_NOTIFICATION"


class MalformedMessage(ValueError):
    """No retry can make this message processable: quarantine it (DLQ) and alarm."""


@dataclass(frozen=True)
class LifecycleAction:
    hook_name: str
    token: str
    autoscaling_group_name: str


@dataclass(frozen=True)
class Interruption:
    """Something that should make an instance checkpoint."""

    kind: str
    instance_id: str
    event_id: str
    lifecycle: LifecycleAction | None = None
    # Why part of the message was unusable (the token): acted on, and quarantined.
    salvaged: str | None = None
    # Events naming several instances: one key per (event, instance).
    key: str | None = None

    @property
    def idempotency_key(self) -> str:
        if self.key is not None:
            return self.key
        # The same lifecycle action can arrive in two shapes (hook message,
        # EventBridge event) with different ids but one token.
        if self.lifecycle is not None and self.lifecycle.token:
            return f"lifecycle:{self.lifecycle.token}"
        if self.lifecycle is not None:
            # No usable token: an instance terminates once per hook.
            return f"lifecycle-instance:{self.lifecycle.hook_name}:{self.instance_id}"
        return f"event:{self.event_id}"


@dataclass(frozen=True)
class TestNotification:
    """Sent once when a lifecycle hook is created: acknowledged, nothing to do."""

    autoscaling_group_name: str
    event_id: str


@dataclass(frozen=True)
class Fanout:
    """One event for several instances: each is its own interruption."""

    interruptions: tuple[Interruption, ...]


@dataclass(frozen=True)
class ReservationNotice:
    """The instances of a capacity reservation are about to go (Capacity Block end)."""

    kind: str
    event_id: str
    capacity_reservation_id: str

    def interruption(self, instance_id: str) -> Interruption:
        return Interruption(kind=self.kind, instance_id=instance_id, event_id=self.event_id,
                            key=f"event:{self.event_id}:{instance_id}")


Parsed = Interruption | TestNotification | Fanout | ReservationNotice


def _field(data: Mapping[str, Any], name: str, pattern: re.Pattern[str], what: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise MalformedMessage(f"{what} {name!r} is missing or not valid: {str(value)[:80]!r}")
    return value


def _detail(body: Mapping[str, Any]) -> Mapping[str, Any]:
    detail = body.get("detail")
    if not isinstance(detail, dict):
        raise MalformedMessage("EventBridge event without a 'detail' object")
    return detail


def _event_id(body: Mapping[str, Any]) -> str:
    return _field(body, "id", _EVENT_ID, "EventBridge event")


def _instance_notice(kind: str, body: Mapping[str, Any]) -> Interruption:
    """An EC2 event about one instance (``detail.instance-id``)."""
    return Interruption(kind=kind, event_id=_event_id(body),
                        instance_id=_field(_detail(body), "instance-id", _INSTANCE_ID, "detail"))


def parse_spot_warning(body: Mapping[str, Any]) -> Interruption:
    return _instance_notice(SPOT_INTERRUPTION, body)


def parse_rebalance_recommendation(body: Mapping[str, Any]) -> Interruption:
    return _instance_notice(REBALANCE_RECOMMENDATION, body)


def parse_reservation_interruption(body: Mapping[str, Any]) -> Interruption:
    return _instance_notice(RESERVATION_INTERRUPTION, body)


def parse_capacity_block_warning(body: Mapping[str, Any]) -> ReservationNotice:
    detail = _detail(body)
    return ReservationNotice(kind=CAPACITY_BLOCK_EXPIRING, event_id=_event_id(body),
                             capacity_reservation_id=_field(detail, "capacity-reservation-id",
                                                            _RESERVATION_ID, "detail"))


def parse_health_event(body: Mapping[str, Any]) -> Fanout:
    """An EC2 scheduled change: every affected instance, or nothing at all.

    The rule already narrows to these; the checks repeat it so that a
    message that did not come through the rule is not acted on.
    """
    event_id = _event_id(body)
    detail = _detail(body)
    expected = {"service": ("EC2",), "eventTypeCategory": ("scheduledChange",),
                "eventTypeCode": HEALTH_EVENT_TYPE_CODES, "statusCode": HEALTH_STATUS_CODES}
    for name, allowed in expected.items():
        if detail.get(name) not in allowed:
            raise MalformedMessage(f"AWS Health event {name} {str(detail.get(name))[:80]!r} is not "
                                   f"one of ours ({', '.join(allowed)[:120]})")
    event_arn = _field(detail, "eventArn", _HEALTH_EVENT_ARN, "AWS Health detail")
    entities = detail.get("affectedEntities")
    if not isinstance(entities, list) or not 1 <= len(entities) <= MAX_AFFECTED_ENTITIES:
        raise MalformedMessage(f"AWS Health event without 1 to {MAX_AFFECTED_ENTITIES} affectedEntities")
    instances: list[str] = []
    for entity in entities:
        if not isinstance(entity, dict):
            raise MalformedMessage("AWS Health affected entity is not an object")
        instance_id = _field(entity, "entityValue", _INSTANCE_ID, "AWS Health affected entity")
        if instance_id not in instances:
            instances.append(instance_id)
    return Fanout(tuple(
        Interruption(kind=HEALTH_SCHEDULED_CHANGE, instance_id=i, event_id=event_id,
                     key=f"health:{event_arn}:{i}") for i in instances))


def _lifecycle(data: Mapping[str, Any], *, event_id: str, what: str) -> Interruption:
    transition = data.get("LifecycleTransition")
    if transition != TERMINATING:
        raise MalformedMessage(f"{what} for transition {str(transition)[:80]!r}, not {TERMINATING}")
    hook_name = _field(data, "LifecycleHookName", _HOOK_NAME, what)
    group_name = _field(data, "AutoScalingGroupName", _ASG_NAME, what)
    if not hook_name or not group_name:
        raise MalformedMessage(f"{what} without a hook or group name")
    instance_id = _field(data, "EC2InstanceId", _INSTANCE_ID, what)
    try:
        token = _field(data, "LifecycleActionToken", _TOKEN, what)
        if not token:
            raise MalformedMessage(f"{what} with an empty 'LifecycleActionToken'")
        salvaged = None
    except MalformedMessage as error:
        # Still an interruption of a known instance: checkpoint it without
        # the token (Auto Scaling accepts the instance id instead).
        token, salvaged = "", str(error)
    return Interruption(
        kind=LIFECYCLE_TERMINATE,
        instance_id=instance_id,
        event_id=event_id,
        lifecycle=LifecycleAction(hook_name=hook_name, token=token,
                                  autoscaling_group_name=group_name),
        salvaged=salvaged,
    )


def parse_eventbridge_lifecycle_action(body: Mapping[str, Any]) -> Interruption:
    return _lifecycle(_detail(body), event_id=_event_id(body), what="lifecycle event detail")


def parse_hook_message(body: Mapping[str, Any]) -> Interruption:
    return _lifecycle(body, event_id=_field(body, "RequestId", _EVENT_ID, "lifecycle hook message"),
                      what="lifecycle hook message")


def parse_test_notification(body: Mapping[str, Any]) -> TestNotification:
    group = body.get("AutoScalingGroupName")
    request_id = body.get("RequestId")
    return TestNotification(autoscaling_group_name=str(group)[:255] if group is not None else "",
                            event_id=str(request_id)[:128] if request_id is not None else "")


EVENTBRIDGE_PARSERS: Mapping[tuple[str, str], Callable[[Mapping[str, Any]], Parsed]] = {
    ("aws.ec2", "EC2 Spot Instance Interruption Warning"): parse_spot_warning,
    ("aws.ec2", "EC2 Instance Rebalance Recommendation"): parse_rebalance_recommendation,
    ("aws.autoscaling", "EC2 Instance-terminate Lifecycle Action"): parse_eventbridge_lifecycle_action,
    ("aws.ec2", RESERVATION_INTERRUPTION_WARNING): parse_reservation_interruption,
    **{("aws.ec2", detail_type): parse_capacity_block_warning for detail_type in CAPACITY_BLOCK_WARNINGS},
    ("aws.health", "AWS Health Event"): parse_health_event,
}


def parse_body(body: object) -> Parsed:
    """Parse one SQS message body; raise ``MalformedMessage`` if it is none of ours."""
    if not isinstance(body, str):
        raise MalformedMessage("message body is not a string")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise MalformedMessage(f"message body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise MalformedMessage(f"message body is JSON {type(data).__name__}, not an object")

    if "detail-type" in data or "source" in data:
        key = (data.get("source"), data.get("detail-type"))
        parser = EVENTBRIDGE_PARSERS.get(key) if all(isinstance(k, str) for k in key) else None
        if parser is None:
            raise MalformedMessage(f"unknown EventBridge event {str(key)[:120]}")
        return parser(data)
    if data.get("Event") == TEST_NOTIFICATION:
        return parse_test_notification(data)
    if "LifecycleActionToken" in data or "LifecycleTransition" in data:
        return parse_hook_message(data)
    raise MalformedMessage("neither an EventBridge event nor a lifecycle hook message")
