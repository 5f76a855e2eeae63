"""An in-memory account for the idle-shutdown property tests.

Auto Scaling, EC2, CloudWatch and SNS as the function calls them (paginators
included), with faults raised the way the SDK raises them; every effect
(instance stopped, desired capacity set, notification published) recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable

from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

READS = ("DescribeAutoScalingGroups", "DescribeInstances", "GetMetricData", "DescribeInstanceTypes")
MUTATING = ("TerminateInstanceInAutoScalingGroup", "SetDesiredCapacity", "Publish")
FAULTS = ("throttle", "access-denied", "connection-error", "read-timeout-before", "read-timeout-after",
          "throttle-after-first")
_THROTTLE = {"DescribeInstances": "RequestLimitExceeded", "DescribeInstanceTypes": "RequestLimitExceeded",
             "GetMetricData": "Throttling", "Publish": "Throttling"}
_DENIED = {"DescribeInstances": "UnauthorizedOperation", "DescribeInstanceTypes": "UnauthorizedOperation",
           "Publish": "AuthorizationError"}


@dataclass
class FakeInstance:
    instance_id: str
    group: str
    launch_time: datetime
    utilization: list[float]  # one value per period, ending at the window's end
    protected: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    instance_type: str = "g5.xlarge"


@dataclass
class FakeGroup:
    name: str
    min_size: int
    desired: int
    tags: dict[str, str]
    instances: list[FakeInstance]


@dataclass
class IdleAccount:
    groups: dict[str, FakeGroup]
    metric: Any  # idle_settings.MetricDefinition
    faults: dict[str, str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    desired_set: list[tuple[str, int]] = field(default_factory=list)
    published: list[dict] = field(default_factory=list)
    _seen: dict[str, int] = field(default_factory=dict)

    def client(self, name: str) -> Any:
        return self

    def _call(self, operation: str, effect: Callable[[], Any] = lambda: None) -> Any:
        self.calls.append(operation)
        count = self._seen[operation] = self._seen.get(operation, 0) + 1
        fault = self.faults.get(operation)
        if fault == "throttle-after-first":
            fault = "throttle" if count > 1 else None
        if fault == "throttle":
            raise ClientError({"Error": {"Code": _THROTTLE.get(operation, "Throttling"), "Message": "Rate exceeded"},
                               "ResponseMetadata": {"HTTPStatusCode": 400}}, operation)
        if fault == "access-denied":
            raise ClientError({"Error": {"Code": _DENIED.get(operation, "AccessDenied"), "Message": "no"},
                               "ResponseMetadata": {"HTTPStatusCode": 403}}, operation)
        if fault == "connection-error":
            raise EndpointConnectionError(endpoint_url="https://example.amazonaws.com")
        if fault == "read-timeout-before":
            raise ReadTimeoutError(endpoint_url="https://example.amazonaws.com")
        result = effect()
        if fault == "read-timeout-after":
            raise ReadTimeoutError(endpoint_url="https://example.amazonaws.com")
        return result

    # paginators -----------------------------------------------------------------
    def get_paginator(self, name: str) -> Any:
        fake = self

        class Paginator:
            def paginate(self, **params):
                method = {"describe_auto_scaling_groups": fake._groups_page,
                          "describe_instances": fake._instances_page}[name]
                yield method(**params)

        return Paginator()

    def _raw_group(self, group: FakeGroup) -> dict:
        return {"AutoScalingGroupName": group.name, "MinSize": group.min_size,
                "DesiredCapacity": group.desired,
                "Tags": [{"Key": k, "Value": v} for k, v in group.tags.items()],
                "Instances": [{"InstanceId": i.instance_id, "LifecycleState": "InService",
                               "InstanceType": i.instance_type, "ProtectedFromScaleIn": i.protected}
                              for i in group.instances]}

    def _groups_page(self, Filters, **_):  # noqa: N803 - boto3 names
        key = Filters[0]["Name"].removeprefix("tag:")
        return self._call("DescribeAutoScalingGroups", lambda: {"AutoScalingGroups": [
            self._raw_group(g) for g in self.groups.values() if g.tags.get(key) in Filters[0]["Values"]]})

    def _instances_page(self, Filters, **_):  # noqa: N803
        names = Filters[0]["Values"]
        return self._call("DescribeInstances", lambda: {"Reservations": [{"Instances": [
            {"InstanceId": i.instance_id, "LaunchTime": i.launch_time,
             "Tags": [{"Key": k, "Value": v} for k, v in {**i.tags, "aws:autoscaling:groupName": g.name}.items()]}
            for g in self.groups.values() if g.name in names for i in g.instances]}]})

    # Auto Scaling ------------------------------------------------------------------
    def describe_auto_scaling_groups(self, AutoScalingGroupNames, **_):  # noqa: N803
        return self._call("DescribeAutoScalingGroups", lambda: {"AutoScalingGroups": [
            self._raw_group(g) for g in self.groups.values() if g.name in AutoScalingGroupNames]})

    def terminate_instance_in_auto_scaling_group(self, InstanceId, ShouldDecrementDesiredCapacity):  # noqa: N803
        def stop() -> dict:
            for group in self.groups.values():
                for instance in list(group.instances):
                    if instance.instance_id == InstanceId:
                        assert ShouldDecrementDesiredCapacity and group.desired - 1 >= group.min_size
                        group.instances.remove(instance)
                        group.desired -= 1
                        self.stopped.append(InstanceId)
                        return {"Activity": {"ActivityId": "a", "StatusCode": "InProgress"}}
            raise ClientError({"Error": {"Code": "ValidationError", "Message": "not found"}},
                              "TerminateInstanceInAutoScalingGroup")
        return self._call("TerminateInstanceInAutoScalingGroup", stop)

    def set_desired_capacity(self, AutoScalingGroupName, DesiredCapacity, HonorCooldown):  # noqa: N803
        def scale() -> dict:
            self.groups[AutoScalingGroupName].desired = DesiredCapacity
            self.desired_set.append((AutoScalingGroupName, DesiredCapacity))
            return {}
        return self._call("SetDesiredCapacity", scale)

    # EC2, CloudWatch, SNS ---------------------------------------------------------------
    def describe_instance_types(self, InstanceTypes):  # noqa: N803
        return self._call("DescribeInstanceTypes", lambda: {"InstanceTypes": [
            {"InstanceType": t, "GpuInfo": {"Gpus": [{"Count": 1}]}} for t in InstanceTypes]})

    def get_metric_data(self, MetricDataQueries, StartTime, EndTime, **_):  # noqa: N803
        period = self.metric.period_seconds
        by_id = {i.instance_id: i for g in self.groups.values() for i in g.instances}

        def data() -> dict:
            results = []
            for query in MetricDataQueries:
                instance = by_id.get(query["MetricStat"]["Metric"]["Dimensions"][0]["Value"])
                values = instance.utilization if instance else []
                first = EndTime - timedelta(seconds=period * len(values))
                results.append({"Id": query["Id"], "Values": list(values), "Timestamps": [
                    first + timedelta(seconds=period * n) for n in range(len(values))]})
            return {"MetricDataResults": results}
        return self._call("GetMetricData", data)

    def publish(self, TopicArn, Subject, Message):  # noqa: N803
        return self._call("Publish", lambda: self.published.append(
            {"TopicArn": TopicArn, "Subject": Subject, "Message": Message}) or {"MessageId": "m"})
