"""Batching and pagination: no GetMetricData call carries more than 500
queries (moto does not enforce the limit; the synthetic account does, and
the tests assert it), and every NextToken is followed (Stubber and the
synthetic account, where moto would not paginate)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import boto3
from botocore.stub import ANY, Stubber

import pytest
from botocore.exceptions import ClientError

from tests.idle_function import handler_module, module

from .idle_world import REGION, event
from .synthetic_account import SyntheticAccount

handler = handler_module()
fleet = module("idle_fleet")
settings_module = module("idle_settings")
Reporter = module("idle_report").Reporter
TOPIC = "arn:aws:sns:us-east-1:123456789012:ml-dev-alerts"
NOW = datetime(2026, 11, 23, 9, 30, 17, tzinfo=timezone.utc)
METRIC = settings_module.MetricDefinition.load()
END = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)
START = END - timedelta(minutes=15)


def recorded(client) -> list[dict]:
    calls: list[dict] = []
    client.meta.events.register("provide-client-params.*.*",
                                lambda params, model, **_: calls.append({"op": model.name, **params}))
    return calls


def _sweep(account: SyntheticAccount) -> dict:
    settings = settings_module.Settings.from_env({"STAGE": "dev", "TOPIC_ARN": TOPIC})
    clients = {name: account.client(name) for name in ("autoscaling", "ec2", "cloudwatch", "sns")}
    return handler.dispatch(event("scheduled_event"), settings=settings, clients=clients.__getitem__,
                            now=account.now, reporter=Reporter(lambda line: None))


def test_no_get_metric_data_call_carries_more_than_500_queries() -> None:
    account = SyntheticAccount(instances=1201, now=NOW)
    expected = account.expected_stops(grace_seconds=1200)
    result = _sweep(account)

    sizes = account.queries_per_call
    assert sizes and max(sizes) <= 500
    assert sizes[:2] == [500, 500] and len(sizes) == 3  # ceil(candidates / 500), not one per instance
    assert result["evaluated"] == 1201 and len(result["stopped"]) == expected
    assert account.calls["DescribeAutoScalingGroups"] == 1  # 25 groups, 100 a page
    assert account.calls["DescribeInstances"] == 2  # 1,201 instances, 1,000 a page
    assert account.calls["TerminateInstanceInAutoScalingGroup"] == expected


def test_sweep_follows_get_metric_data_pages_and_decides_the_same() -> None:
    unpaged = _sweep(SyntheticAccount(instances=1201, now=NOW))
    account = SyntheticAccount(instances=1201, now=NOW, datapoints_per_page=1000)
    paged = _sweep(account)
    assert max(account.queries_per_call) <= 500
    assert account.calls["GetMetricData"] > 3  # every batch took several pages
    assert sorted(paged["stopped"]) == sorted(unpaged["stopped"]) and paged["stopped"]


def test_the_synthetic_backend_rejects_501_queries_like_aws() -> None:
    account = SyntheticAccount(instances=1, now=NOW)
    query = {"MetricStat": {"Metric": {"Namespace": "n", "MetricName": "m"}, "Period": 60, "Stat": "Maximum"}}
    with pytest.raises(ClientError, match="must not have a size greater than 500"):
        account.client("cloudwatch").get_metric_data(
            MetricDataQueries=[{"Id": f"q{i}", **query} for i in range(501)], StartTime=START, EndTime=END)


def _results(ids, values, stamps):
    return [{"Id": i, "Label": "x", "Values": v, "Timestamps": t, "StatusCode": "Complete"}
            for i, v, t in zip(ids, values, stamps)]


def test_get_metric_data_follows_next_token_and_merges_the_pages(aws_credentials) -> None:
    cloudwatch = boto3.client("cloudwatch", region_name=REGION)
    calls = recorded(cloudwatch)
    minutes = [START + timedelta(minutes=m) for m in range(15)]
    with Stubber(cloudwatch) as stub:
        base = {"MetricDataQueries": ANY, "StartTime": START, "EndTime": END, "ScanBy": "TimestampAscending"}
        stub.add_response("get_metric_data", {
            "MetricDataResults": _results(["m0", "m1"], [[1.0] * 10, [2.0] * 3], [minutes[:10], minutes[:3]]),
            "NextToken": "page-2"}, base)
        stub.add_response("get_metric_data", {
            "MetricDataResults": _results(["m0", "m1"], [[1.0] * 5, [90.0] * 12], [minutes[10:], minutes[3:]]),
            "NextToken": "page-3"}, {**base, "NextToken": "page-2"})
        stub.add_response("get_metric_data", {"MetricDataResults": []}, {**base, "NextToken": "page-3"})
        series = fleet.gpu_utilization(cloudwatch, ["i-0aaa", "i-0bbb"], METRIC, start=START, end=END)
        stub.assert_no_pending_responses()

    assert len(calls) == 3
    assert calls[1]["MetricDataQueries"] == calls[0]["MetricDataQueries"]
    assert len(series["i-0aaa"].values) == 15 and max(series["i-0aaa"].values) == 1.0
    assert len(set(series["i-0bbb"].timestamps)) == 15 and max(series["i-0bbb"].values) == 90.0


def test_each_batch_of_500_is_paginated_on_its_own(aws_credentials) -> None:
    cloudwatch = boto3.client("cloudwatch", region_name=REGION)
    calls = recorded(cloudwatch)
    ids = [f"i-{n:017x}" for n in range(501)]
    with Stubber(cloudwatch) as stub:
        base = {"MetricDataQueries": ANY, "StartTime": START, "EndTime": END, "ScanBy": "TimestampAscending"}
        stub.add_response("get_metric_data", {"MetricDataResults": [], "NextToken": "more"}, base)
        stub.add_response("get_metric_data", {"MetricDataResults": []}, {**base, "NextToken": "more"})
        stub.add_response("get_metric_data", {
            "MetricDataResults": _results(["m500"], [[3.0]], [[START]])}, base)
        series = fleet.gpu_utilization(cloudwatch, ids, METRIC, start=START, end=END)
        stub.assert_no_pending_responses()
    assert [len(c["MetricDataQueries"]) for c in calls] == [500, 500, 1]
    assert "NextToken" not in calls[2]
    assert series == {ids[500]: series[ids[500]]} and list(series[ids[500]].values) == [3.0]


def test_group_pages_are_followed(aws_credentials) -> None:
    autoscaling = boto3.client("autoscaling", region_name=REGION)
    calls = recorded(autoscaling)

    def group(name: str, instance: str) -> dict:
        return {"AutoScalingGroupName": name, "MinSize": 0, "MaxSize": 4, "DesiredCapacity": 1,
                "DefaultCooldown": 300, "AvailabilityZones": [f"{REGION}a"], "HealthCheckType": "EC2",
                "CreatedTime": END, "Tags": [{"Key": "ml:idle-shutdown", "Value": "enabled"}],
                "Instances": [{"InstanceId": instance, "InstanceType": "p4d.24xlarge",
                               "AvailabilityZone": f"{REGION}a", "LifecycleState": "InService",
                               "HealthStatus": "Healthy", "ProtectedFromScaleIn": False}]}

    request = {"Filters": [{"Name": "tag:ml:idle-shutdown", "Values": ["enabled"]}], "MaxRecords": 100}
    with Stubber(autoscaling) as stub:
        stub.add_response("describe_auto_scaling_groups",
                          {"AutoScalingGroups": [group("a", "i-0aaa")], "NextToken": "next"}, request)
        stub.add_response("describe_auto_scaling_groups",
                          {"AutoScalingGroups": [group("b", "i-0bbb")]}, {**request, "NextToken": "next"})
        groups, instances = fleet.opted_in_groups(autoscaling, "ml:idle-shutdown", "enabled")
        stub.assert_no_pending_responses()
    assert [g.name for g in groups] == ["a", "b"]
    assert [(i.instance_id, i.group) for i in instances] == [("i-0aaa", "a"), ("i-0bbb", "b")]
    assert len(calls) == 2


def test_instances_not_in_service_are_not_evaluated(aws_credentials) -> None:
    autoscaling = boto3.client("autoscaling", region_name=REGION)
    members = [{"InstanceId": f"i-0{n}", "InstanceType": "g5.xlarge", "AvailabilityZone": f"{REGION}a",
                "LifecycleState": state, "HealthStatus": "Healthy", "ProtectedFromScaleIn": False}
               for n, state in enumerate(["Pending", "InService", "Terminating:Wait", "Standby"])]
    with Stubber(autoscaling) as stub:
        stub.add_response("describe_auto_scaling_groups", {"AutoScalingGroups": [{
            "AutoScalingGroupName": "a", "MinSize": 0, "MaxSize": 4, "DesiredCapacity": 4,
            "DefaultCooldown": 300, "AvailabilityZones": [f"{REGION}a"], "HealthCheckType": "EC2",
            "CreatedTime": END, "Tags": [{"Key": "ml:idle-shutdown", "Value": "enabled"}],
            "Instances": members}]})
        _, instances = fleet.opted_in_groups(autoscaling, "ml:idle-shutdown", "enabled")
    assert [i.instance_id for i in instances] == ["i-01"]
