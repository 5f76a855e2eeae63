"""Parsers for the four message shapes that reach the interruption queue.

One parser per shape, dispatched on EventBridge ``(source, detail-type)`` or,
for messages the lifecycle hook sends straight to SQS, on their own fields.
Every field that later becomes a Run Command or Auto Scaling parameter is
checked against the same pattern the SSM document's ``allowedPattern``
enforces, with a *full* match (``re.match`` with ``$`` would accept a
trailing newline), so a message that could not be sent is rejected here,
with its reason.

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
KINDS = (SPOT_INTERRUPTION, REBALANCE_RECOMMENDATION, LIFECYCLE_TERMINATE)

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

    @property
    def idempotency_key(self) -> str:
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


Parsed = Interruption | TestNotification


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


def parse_spot_warning(body: Mapping[str, Any]) -> Interruption:
    detail = _detail(body)
    return Interruption(kind=SPOT_INTERRUPTION, event_id=_event_id(body),
                        instance_id=_field(detail, "instance-id", _INSTANCE_ID, "detail"))


def parse_rebalance_recommendation(body: Mapping[str, Any]) -> Interruption:
    detail = _detail(body)
    return Interruption(kind=REBALANCE_RECOMMENDATION, event_id=_event_id(body),
                        instance_id=_field(detail, "instance-id", _INSTANCE_ID, "detail"))


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


EVENTBRIDGE_PARSERS: Mapping[tuple[str, str], Callable[[Mapping[str, Any]], Interruption]] = {
    ("aws.ec2", "EC2 Spot Instance Interruption Warning"): parse_spot_warning,
    ("aws.ec2", "EC2 Instance Rebalance Recommendation"): parse_rebalance_recommendation,
    ("aws.autoscaling", "EC2 Instance-terminate Lifecycle Action"): parse_eventbridge_lifecycle_action,
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
