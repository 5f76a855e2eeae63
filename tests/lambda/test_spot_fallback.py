"""Spot fallback of the runs capacity function (lambda/runs_capacity/spot_fallback.py)
on real-shaped DescribeScalingActivities output, with the exact Auto Scaling and
SNS calls checked by botocore's Stubber against the real API models."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from unittest.mock import ANY

import boto3
import pytest
from botocore.stub import Stubber

from .test_runs_capacity import capacity

fallback = capacity.spot_fallback

GROUP = "ml-dev-training-gpu"
TOPIC = "arn:aws:sns:us-east-1:123456789012:ml-dev-ops-Alerts"
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
SETTINGS = fallback.FallbackSettings(after_seconds=15 * 60, base_percentage=0, fallback_percentage=100,
                                     topic_arn=TOPIC)
# As Auto Scaling reports a spot launch without capacity (StatusMessage seen
# in the group's activity history, e.g. cortexlabs/cortex#1258).
SPOT_DRY = ("Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot capacity "
            "available that matches your request. Launching EC2 instance failed.")
UNFULFILLABLE = ("Could not launch Spot Instances. UnfulfillableCapacity - Unable to fulfill capacity due "
                 "to your request configuration. Please adjust your request and try again. Launching EC2 "
                 "instance failed.")


def activity(minutes_ago: float, status: str, message: str | None = None, *,
             description: str = "Launching a new EC2 instance.  Status Reason: " + SPOT_DRY) -> dict:
    start = NOW - timedelta(minutes=minutes_ago)
    found = {"ActivityId": f"a1b2c3d4-{int(minutes_ago * 10):04d}-4000-8000-000000000000",
             "AutoScalingGroupName": GROUP, "Description": description,
             "Cause": f"At {start:%Y-%m-%dT%H:%M:%SZ} an instance was started in response to a difference "
                      "between desired and actual capacity, increasing the capacity from 0 to 1.",
             "StartTime": start, "StatusCode": status, "Progress": 100, "Details": "{}"}
    if message is not None:
        found["StatusMessage"] = message
        found["EndTime"] = start
    return found


def failed(minutes_ago: float, message: str = SPOT_DRY) -> dict:
    return activity(minutes_ago, "Failed", message)


def launched(minutes_ago: float) -> dict:
    return activity(minutes_ago, "Successful", description="Launching a new EC2 instance: i-0aaaaaaaaaaaaaaa1")


def group(percentage: int = 0, since: str | None = None) -> dict:
    tags = [{"ResourceId": GROUP, "ResourceType": "auto-scaling-group", "Key": "ml:training-fleet",
             "Value": GROUP, "PropagateAtLaunch": True}]
    if since is not None:
        tags.append({"ResourceId": GROUP, "ResourceType": "auto-scaling-group", "Key": fallback.FALLBACK_TAG,
                     "Value": since, "PropagateAtLaunch": False})
    return {"AutoScalingGroupName": GROUP, "MinSize": 0, "MaxSize": 4, "DesiredCapacity": 1,
            "MixedInstancesPolicy": {"InstancesDistribution": {
                "OnDemandBaseCapacity": 0, "OnDemandPercentageAboveBaseCapacity": percentage,
                "SpotAllocationStrategy": "price-capacity-optimized"}}, "Tags": tags}


def decide(g: dict, activities: list[dict], pending: int = 1, active: int = 1, settings=SETTINGS):
    return fallback.decide(group=g, activities=activities, pending=pending, active=active,
                           settings=settings, now=NOW)


# --- the decision -------------------------------------------------------------------

def test_spot_dry_longer_than_the_threshold_for_a_pending_run_switches_on() -> None:
    switch = decide(group(), [failed(1), failed(6), failed(16)])
    assert (switch.action, switch.percentage) == ("fallback-on", 100)


def test_unfulfillable_capacity_counts_as_dry_too() -> None:
    assert decide(group(), [failed(2, UNFULFILLABLE), failed(20, UNFULFILLABLE)]).action == "fallback-on"


@pytest.mark.parametrize("activities, pending, reason", [
    ([failed(1), failed(10)], 1, "spot_dry_for_less_than_the_threshold"),
    ([failed(1), launched(5), failed(30)], 1, "spot_dry_for_less_than_the_threshold"),
    ([launched(1), failed(30)], 1, "spot_launches_not_failing"),
    ([failed(1, "Access denied when attempting to assume role"), failed(30)], 1, "spot_launches_not_failing"),
    ([failed(1), failed(30)], 0, "no_pending_runs"),
    ([], 1, "spot_launches_not_failing"),
])
def test_no_switch_without_a_pending_run_dry_for_the_whole_threshold(activities, pending, reason) -> None:
    switch = decide(group(), activities, pending=pending)
    assert (switch.action, switch.reason) == ("none", reason)


def test_a_share_someone_else_changed_is_left_alone() -> None:
    assert decide(group(percentage=50), [failed(1), failed(30)]).reason == \
        "on_demand_share_changed_by_someone_else"


def test_switches_back_when_the_runs_ended() -> None:
    switch = decide(group(100, since="2026-11-29T11:30:00Z"), [failed(40)], pending=0, active=0)
    assert (switch.action, switch.percentage) == ("fallback-off", 0)


def test_stays_on_while_the_run_it_launched_for_is_running() -> None:
    switch = decide(group(100, since="2026-11-29T11:30:00Z"), [launched(20), failed(40)], pending=0, active=1)
    assert switch.action == "none"


def test_with_a_partial_fallback_a_spot_success_switches_back() -> None:
    partial = fallback.FallbackSettings(after_seconds=900, base_percentage=0, fallback_percentage=50,
                                        topic_arn=TOPIC)
    since = "2026-11-29T11:30:00Z"
    assert decide(group(50, since), [launched(5), failed(40)], settings=partial).action == "fallback-off"
    # A spot capacity failure after the switch: spot is still dry.
    assert decide(group(50, since), [launched(5), failed(10), failed(40)], settings=partial).action == "none"


def test_a_deploy_that_reset_the_share_clears_the_tag() -> None:
    switch = decide(group(0, since="2026-11-29T11:30:00Z"), [failed(1), failed(40)])
    assert switch.action == "tag-cleared"


# --- the calls ----------------------------------------------------------------------------

def clients():
    kwargs = dict(region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    autoscaling, sns = boto3.client("autoscaling", **kwargs), boto3.client("sns", **kwargs)
    return autoscaling, Stubber(autoscaling), sns, Stubber(sns)


def test_switching_on_updates_only_the_share_tags_the_group_and_alerts() -> None:
    autoscaling, a_stub, sns, s_stub = clients()
    a_stub.add_response("update_auto_scaling_group", {}, {
        "AutoScalingGroupName": GROUP,
        "MixedInstancesPolicy": {"InstancesDistribution": {"OnDemandPercentageAboveBaseCapacity": 100}}})
    a_stub.add_response("create_or_update_tags", {}, {"Tags": [{
        "ResourceId": GROUP, "ResourceType": "auto-scaling-group", "Key": "ml:spot-fallback-since",
        "Value": "2026-11-29T12:00:00Z", "PropagateAtLaunch": False}]})
    s_stub.add_response("publish", {"MessageId": "1"}, {
        "TopicArn": TOPIC, "Subject": f"{GROUP}: spot capacity dry, on-demand share raised to 100 %",
        "Message": ANY})
    with a_stub, s_stub:
        fallback.apply(fallback.Switch("fallback-on", "dry", 100), autoscaling=autoscaling, sns=sns,
                       group_name=GROUP, settings=SETTINGS, now=NOW)
    a_stub.assert_no_pending_responses()
    s_stub.assert_no_pending_responses()


def test_switching_back_restores_the_configured_share_and_drops_the_tag() -> None:
    autoscaling, a_stub, sns, s_stub = clients()
    a_stub.add_response("update_auto_scaling_group", {}, {
        "AutoScalingGroupName": GROUP,
        "MixedInstancesPolicy": {"InstancesDistribution": {"OnDemandPercentageAboveBaseCapacity": 0}}})
    a_stub.add_response("delete_tags", {}, {"Tags": [{
        "ResourceId": GROUP, "ResourceType": "auto-scaling-group", "Key": "ml:spot-fallback-since"}]})
    s_stub.add_response("publish", {"MessageId": "2"}, {
        "TopicArn": TOPIC, "Subject": f"{GROUP}: on-demand share back to 0 %",
        "Message": ANY})
    with a_stub, s_stub:
        fallback.apply(fallback.Switch("fallback-off", "runs ended", 0), autoscaling=autoscaling, sns=sns,
                       group_name=GROUP, settings=SETTINGS, now=NOW)
    a_stub.assert_no_pending_responses()


def test_the_reconciler_switches_on_from_the_activity_history_and_logs_it() -> None:
    autoscaling, a_stub, sns, s_stub = clients()
    a_stub.add_response("describe_auto_scaling_groups", {"AutoScalingGroups": [{
        **group(), "DefaultCooldown": 300, "AvailabilityZones": ["us-east-1a"], "HealthCheckType": "EC2",
        "CreatedTime": NOW - timedelta(days=3)}]}, {"AutoScalingGroupNames": [GROUP]})
    a_stub.add_response("describe_scaling_activities", {"Activities": [failed(2), failed(9), failed(17)]},
                        {"AutoScalingGroupName": GROUP, "MaxRecords": 100})
    a_stub.add_response("update_auto_scaling_group", {}, {
        "AutoScalingGroupName": GROUP,
        "MixedInstancesPolicy": {"InstancesDistribution": {"OnDemandPercentageAboveBaseCapacity": 100}}})
    a_stub.add_response("create_or_update_tags", {}, {"Tags": [{
        "ResourceId": GROUP, "ResourceType": "auto-scaling-group", "Key": "ml:spot-fallback-since",
        "Value": "2026-11-29T12:00:00Z", "PropagateAtLaunch": False}]})
    s_stub.add_response("publish", {"MessageId": "3"})

    class Dynamo:
        def query(self, **request):
            state = request["ExpressionAttributeValues"][":state"]["S"]
            items = [{"run_id": {"S": "bert-0123abcd"}, "state": {"S": state},
                      "spec": {"M": {"gpus": {"N": "1"}}}}] if state == "PENDING" else []
            return {"Items": items}

    settings = capacity.Settings.from_env({
        "RUNS_TABLE": "runs", "STATE_INDEX": "by-state", "GROUP_NAME": GROUP, "MAX_GPUS_PER_INSTANCE": "1",
        "SPOT_FALLBACK_AFTER_SECONDS": "900", "ON_DEMAND_PERCENTAGE": "0",
        "SPOT_FALLBACK_ON_DEMAND_PERCENTAGE": "100", "ALERTS_TOPIC_ARN": TOPIC})
    lines: list[str] = []
    with a_stub, s_stub:
        result = capacity.reconcile(settings, clients={"dynamodb": Dynamo(), "autoscaling": autoscaling,
                                                       "sns": sns}.__getitem__,
                                    write=lines.append, now=lambda: NOW)
    assert result["spot_fallback"] == "fallback-on"
    [line] = [json.loads(x) for x in lines if json.loads(x)["event"] == "spot_fallback"]
    assert (line["action"], line["on_demand_percentage"]) == ("fallback-on", 100)
    a_stub.assert_no_pending_responses()
    s_stub.assert_no_pending_responses()


def test_without_fallback_settings_the_reconciler_reads_no_activities() -> None:
    settings = capacity.Settings.from_env({"RUNS_TABLE": "runs", "STATE_INDEX": "by-state",
                                           "GROUP_NAME": GROUP, "MAX_GPUS_PER_INSTANCE": "1"})
    assert settings.fallback is None
