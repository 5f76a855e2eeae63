"""A fake AWS account (moto) with GPU Auto Scaling groups and their metrics,
for the idle-shutdown tests and ``bench/idle_shutdown.py``.

Every boto3 call the function makes is recorded (operation + parameters)
through botocore's event hooks, so tests assert exactly what was called.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

import boto3

from tests.idle_function import handler_module, module

ROOT = Path(__file__).resolve().parents[2]
EVENTS_DIR = Path(__file__).resolve().parent / "events"
REGION = "us-east-1"
OPT_IN = {"Key": "ml:idle-shutdown", "Value": "enabled"}
ENROLLED_BY = {"Key": "ml:idle-shutdown-stage", "Value": "dev"}  # the world's STAGE
TOPIC_NAME = "ml-dev-alerts"


handler = handler_module()
idle_settings = module("idle_settings")
idle_report = module("idle_report")


def event(name: str) -> dict:
    return json.loads((EVENTS_DIR / f"{name}.json").read_text())


@dataclass
class Call:
    service: str
    operation: str
    params: dict


@dataclass
class World:
    clients: dict[str, Any]
    topic_arn: str
    subnet_id: str
    calls: list[Call] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    recording: bool = True

    @classmethod
    def create(cls) -> "World":
        clients = {name: boto3.client(name, region_name=REGION)
                   for name in ("autoscaling", "ec2", "cloudwatch", "sns")}
        ec2 = clients["ec2"]
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/20",
                                   AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]
        topic = clients["sns"].create_topic(Name=TOPIC_NAME)["TopicArn"]
        world = cls(clients=clients, topic_arn=topic, subnet_id=subnet)
        for name, client in clients.items():
            client.meta.events.register("provide-client-params.*.*", world._recorder(name))
        world.recording = False
        return world

    def _recorder(self, service: str):
        # provide-client-params carries the API-level parameters, as called.
        def record(params: dict, model: Any, **_: Any) -> None:
            if self.recording:
                self.calls.append(Call(service, model.name, dict(params)))
        return record

    def group(self, name: str, *, size: int, instance_type: str = "g5.xlarge", min_size: int = 0,
              opt_in: bool = True, extra_tags: Iterable[tuple[str, str]] = (),
              protected: bool = False) -> list[str]:
        """Create a group of ``size`` in-service instances; their ids."""
        ec2, autoscaling = self.clients["ec2"], self.clients["autoscaling"]
        template = f"{name}-lt"
        ec2.create_launch_template(LaunchTemplateName=template, LaunchTemplateData={
            "ImageId": "ami-12c6146b", "InstanceType": instance_type})
        extra = dict(extra_tags)
        tags = ([OPT_IN] if opt_in else []) + ([ENROLLED_BY] if ENROLLED_BY["Key"] not in extra else []) \
            + [{"Key": k, "Value": v} for k, v in extra.items()]
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=name, LaunchTemplate={"LaunchTemplateName": template},
            MinSize=min_size, MaxSize=max(size, min_size, 1), DesiredCapacity=size,
            VPCZoneIdentifier=self.subnet_id, NewInstancesProtectedFromScaleIn=protected,
            Tags=[{**t, "PropagateAtLaunch": False, "ResourceId": name,
                   "ResourceType": "auto-scaling-group"} for t in tags])
        found = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])
        return [i["InstanceId"] for i in found["AutoScalingGroups"][0]["Instances"]]

    def tag_instance(self, instance_id: str, key: str, value: str) -> None:
        self.clients["ec2"].create_tags(Resources=[instance_id], Tags=[{"Key": key, "Value": value}])

    def utilization(self, instance_ids: Iterable[str], values: list[float], *, now: datetime,
                    settings: Any) -> None:
        """One datapoint per period, oldest first, ending in the window's last bucket."""
        start, end = handler.window(now, settings)
        period = settings.metric.period_seconds
        first = end - timedelta(seconds=period * len(values))
        data = []
        for instance_id in instance_ids:
            for i, value in enumerate(values):
                data.append({
                    "MetricName": settings.metric.idle_metric,
                    "Dimensions": [{"Name": settings.metric.instance_dimension, "Value": instance_id}],
                    "Timestamp": first + timedelta(seconds=period * i + 5),
                    "Value": value,
                })
        for batch in range(0, len(data), 1000):
            self.clients["cloudwatch"].put_metric_data(Namespace=settings.metric.namespace,
                                                       MetricData=data[batch:batch + 1000])

    def settings(self, **overrides: Any):
        base = idle_settings.Settings.from_env({
            "STAGE": "dev", "THRESHOLD_PERCENT": "5", "WINDOW_SECONDS": "900",
            "GRACE_SECONDS": "1200", "DRY_RUN": "false", "TOPIC_ARN": self.topic_arn,
        })
        return replace(base, **overrides)

    def run(self, payload: dict, *, now: datetime, **overrides: Any) -> dict:
        self.calls.clear()
        self.lines.clear()
        self.recording = True
        try:
            return handler.dispatch(payload, settings=self.settings(**overrides),
                                    clients=self.clients.__getitem__, now=now,
                                    reporter=idle_report.Reporter(self.lines.append))
        finally:
            self.recording = False

    # -- reading what happened -------------------------------------------------
    def operations(self) -> Counter:
        return Counter(c.operation for c in self.calls)

    def calls_to(self, operation: str) -> list[Call]:
        return [c for c in self.calls if c.operation == operation]

    def decisions(self) -> dict[str, dict]:
        parsed = [json.loads(line) for line in self.lines]
        return {d["instance_id"]: d for d in parsed if d.get("event") == "instance_decision"}

    def records(self, event_name: str) -> list[dict]:
        return [d for d in map(json.loads, self.lines) if d.get("event") == event_name]

    def emf(self) -> dict:
        [metrics] = [d for d in map(json.loads, self.lines) if "_aws" in d]
        return metrics

    def group_state(self, name: str) -> dict:
        found = self.clients["autoscaling"].describe_auto_scaling_groups(AutoScalingGroupNames=[name])
        return found["AutoScalingGroups"][0]


def later(minutes: float = 120) -> datetime:
    """A "now" after the instances moto just launched have aged ``minutes``."""
    return datetime.now(timezone.utc) + timedelta(minutes=minutes)
