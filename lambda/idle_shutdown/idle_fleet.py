"""Every AWS call of the idle-shutdown function, batched.

With N instances in G opted-in groups a sweep makes
``ceil(G/100)`` DescribeAutoScalingGroups pages, ``ceil(N/1000)``
DescribeInstances pages (per 200 groups), ``ceil(candidates/500)``
GetMetricData calls plus their NextToken pages, at most one
DescribeInstanceTypes per 100 instance types stopped, and one
TerminateInstanceInAutoScalingGroup per stopped instance.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Iterator, Sequence

from idle_decide import Group, Instance, Series
from idle_settings import MetricDefinition

MAX_QUERIES_PER_CALL = 500  # GetMetricData hard limit
MAX_FILTER_VALUES = 200  # EC2 filter values per filter
DESCRIBE_PAGE_SIZE = 1000  # DescribeInstances MaxResults
GROUP_PAGE_SIZE = 100  # DescribeAutoScalingGroups MaxRecords
INSTANCE_TYPES_PER_CALL = 100


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def opted_in_groups(autoscaling: Any, tag_key: str, tag_value: str
                    ) -> tuple[list[Group], list[Instance]]:
    """Groups carrying ``tag_key=tag_value`` and their in-service instances."""
    groups: list[Group] = []
    instances: list[Instance] = []
    pages = autoscaling.get_paginator("describe_auto_scaling_groups").paginate(
        Filters=[{"Name": f"tag:{tag_key}", "Values": [tag_value]}],
        PaginationConfig={"PageSize": GROUP_PAGE_SIZE},
    )
    for page in pages:
        for raw in page.get("AutoScalingGroups", []):
            group = _group(raw)
            # The filter already did this; a group whose tag changed between
            # pages, or a filter a fake ignores, must still not slip through.
            if group.tags.get(tag_key) != tag_value:
                continue
            groups.append(group)
            for member in raw.get("Instances", []):
                if member.get("LifecycleState") != "InService":
                    continue
                instances.append(Instance(
                    instance_id=member["InstanceId"],
                    group=group.name,
                    instance_type=member.get("InstanceType", ""),
                    protected=bool(member.get("ProtectedFromScaleIn", False)),
                ))
    return groups, instances


def describe_group(autoscaling: Any, name: str) -> Group | None:
    found = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])
    groups = found.get("AutoScalingGroups", [])
    return _group(groups[0]) if groups else None


def _group(raw: dict) -> Group:
    return Group(
        name=raw["AutoScalingGroupName"],
        min_size=int(raw.get("MinSize", 0)),
        desired_capacity=int(raw.get("DesiredCapacity", 0)),
        tags={t["Key"]: t.get("Value", "") for t in raw.get("Tags", []) if "Key" in t},
    )


def launch_details(ec2: Any, group_names: Sequence[str]
                   ) -> dict[str, tuple[datetime, dict[str, str]]]:
    """``instance id -> (launch time, tags)`` of the running instances of the groups."""
    details: dict[str, tuple[datetime, dict[str, str]]] = {}
    paginator = ec2.get_paginator("describe_instances")
    for names in chunks(sorted(group_names), MAX_FILTER_VALUES):
        pages = paginator.paginate(
            Filters=[
                {"Name": "tag:aws:autoscaling:groupName", "Values": list(names)},
                {"Name": "instance-state-name", "Values": ["running"]},
            ],
            PaginationConfig={"PageSize": DESCRIBE_PAGE_SIZE},
        )
        for page in pages:
            for reservation in page.get("Reservations", []):
                for raw in reservation.get("Instances", []):
                    tags = {t["Key"]: t.get("Value", "") for t in raw.get("Tags", []) if "Key" in t}
                    details[raw["InstanceId"]] = (raw["LaunchTime"], tags)
    return details


def query_id(index: int) -> str:
    # GetMetricData ids must start with a lower-case letter.
    return f"m{index}"


def gpu_utilization(cloudwatch: Any, instance_ids: Sequence[str], metric: MetricDefinition,
                    *, start: datetime, end: datetime) -> dict[str, Series]:
    """Per-instance datapoints of the idle metric over ``[start, end)``.

    One query per instance, at most 500 per call, NextToken followed: a
    large window can spread one query's datapoints over several pages.
    """
    found: dict[str, tuple[list[float], list[datetime]]] = {}
    for offset, batch in zip(range(0, len(instance_ids), MAX_QUERIES_PER_CALL),
                             chunks(instance_ids, MAX_QUERIES_PER_CALL)):
        ids = {query_id(offset + i): instance_id for i, instance_id in enumerate(batch)}
        queries = [{
            "Id": qid,
            "MetricStat": {
                "Metric": {
                    "Namespace": metric.namespace,
                    "MetricName": metric.idle_metric,
                    "Dimensions": [{"Name": metric.instance_dimension, "Value": instance_id}],
                },
                "Period": metric.period_seconds,
                "Stat": metric.idle_statistic,
            },
            "ReturnData": True,
        } for qid, instance_id in ids.items()]
        request: dict[str, Any] = {"MetricDataQueries": queries, "StartTime": start,
                                   "EndTime": end, "ScanBy": "TimestampAscending"}
        while True:
            response = cloudwatch.get_metric_data(**request)
            for result in response.get("MetricDataResults", []):
                instance_id = ids.get(result.get("Id"))
                if instance_id is None:
                    continue
                values, stamps = found.setdefault(instance_id, ([], []))
                values.extend(result.get("Values", []))
                stamps.extend(result.get("Timestamps", []))
            token = response.get("NextToken")
            if not token:
                break
            request["NextToken"] = token
    return {iid: Series(values=v, timestamps=t) for iid, (v, t) in found.items()}


def gpus_per_type(ec2: Any, instance_types: Iterable[str]) -> dict[str, int]:
    """GPU count of each instance type (0 when EC2 reports none)."""
    counts: dict[str, int] = {}
    for batch in chunks(sorted({t for t in instance_types if t}), INSTANCE_TYPES_PER_CALL):
        response = ec2.describe_instance_types(InstanceTypes=list(batch))
        for info in response.get("InstanceTypes", []):
            gpus = info.get("GpuInfo", {}).get("Gpus", [])
            counts[info["InstanceType"]] = sum(int(g.get("Count", 0)) for g in gpus)
    return counts


def stop(autoscaling: Any, instance_id: str) -> None:
    """Terminate through the group, shrinking it: the group does not replace it."""
    autoscaling.terminate_instance_in_auto_scaling_group(
        InstanceId=instance_id, ShouldDecrementDesiredCapacity=True)


def scale_to(autoscaling: Any, group_name: str, desired: int) -> None:
    autoscaling.set_desired_capacity(AutoScalingGroupName=group_name, DesiredCapacity=desired,
                                     HonorCooldown=False)
