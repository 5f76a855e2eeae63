"""A synthetic account for thousands of GPU instances, answering real boto3
clients at botocore's ``before-call`` hook (the way moto does, minus the
HTTP round trip (optionally simulated with ``latency_seconds``) and moto's per-instance tag scans, which make moto's
DescribeInstances quadratic: ~26 s for 600 instances).

Real clients still validate every request against the service model. The
backend enforces what moto does not: at most 500 GetMetricData queries per
call (rejected like AWS does), unique query ids, and a datapoint budget per
response with ``NextToken`` paging (100,800 as in AWS, lower to force pages).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import boto3

GPUS = {"g5.xlarge": 1, "g5.12xlarge": 4, "p4d.24xlarge": 8, "p5.48xlarge": 8}
MAX_QUERIES = 500


class Rejected(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Node:
    instance_id: str
    group: str
    instance_type: str
    launch_time: datetime
    profile: str  # idle | busy | none | partial
    protected: bool = False


@dataclass
class Fleet:
    name: str
    min_size: int
    desired: int
    nodes: list[Node] = field(default_factory=list)


class SyntheticAccount:
    def __init__(self, *, instances: int, per_group: int = 50, now: datetime, period: int = 60,
                 window_seconds: int = 900, datapoints_per_page: int = 100_800, seed: int = 7,
                 opt_in: tuple[str, str] = ("ml:idle-shutdown", "enabled"),
                 latency_seconds: float = 0.0) -> None:
        rng = random.Random(seed)
        self.now, self.period, self.window = now, period, window_seconds
        self.datapoints_per_page = datapoints_per_page
        self.latency_seconds = latency_seconds
        self._lock = threading.Lock()
        self.opt_in = opt_in
        self.calls: Counter = Counter()
        self.queries_per_call: list[int] = []
        self.fleets: dict[str, Fleet] = {}
        types = list(GPUS)
        for n in range(instances):
            name = f"ml-train-{n // per_group:04d}"
            fleet = self.fleets.setdefault(name, Fleet(name, min_size=0, desired=0))
            roll = rng.random()
            profile = "idle" if roll < 0.3 else "busy" if roll < 0.85 else "none" if roll < 0.95 else "partial"
            fleet.nodes.append(Node(
                instance_id=f"i-{n:017x}", group=name, instance_type=types[n // per_group % len(types)],
                launch_time=now - timedelta(hours=2) if rng.random() > 0.05 else now - timedelta(minutes=5),
                profile=profile, protected=rng.random() < 0.02))
            fleet.desired += 1
        self._nodes = {node.instance_id: node for f in self.fleets.values() for node in f.nodes}

    # -- wiring ---------------------------------------------------------------
    def client(self, service: str) -> Any:
        client = boto3.client(service, region_name="us-east-1", aws_access_key_id="synthetic",
                              aws_secret_access_key="synthetic")
        client.meta.events.register("provide-client-params.*.*", self._stash)
        client.meta.events.register("before-call.*.*", self._answer)
        return client

    @staticmethod
    def _stash(params: dict, context: dict, **_: Any) -> None:
        context["api_params"] = dict(params)

    def _answer(self, model: Any, context: dict, **_: Any) -> tuple[Any, dict]:
        if self.latency_seconds:
            time.sleep(self.latency_seconds)  # one network round trip
        with self._lock:
            self.calls[model.name] += 1
            return self._respond(model.name, context["api_params"])

    def _respond(self, operation: str, params: dict) -> tuple[Any, dict]:
        try:
            body = getattr(self, f"_{operation}")(params)
            return SimpleNamespace(status_code=200, headers={}), body
        except Rejected as error:
            return (SimpleNamespace(status_code=400, headers={}),
                    {"Error": {"Code": error.code, "Message": str(error)},
                     "ResponseMetadata": {"HTTPStatusCode": 400}})

    # -- Auto Scaling -------------------------------------------------------------
    def _in_service(self, fleet: Fleet) -> list[dict]:
        return [{"InstanceId": n.instance_id, "InstanceType": n.instance_type,
                 "AvailabilityZone": "us-east-1a", "LifecycleState": "InService",
                 "HealthStatus": "Healthy", "ProtectedFromScaleIn": n.protected} for n in fleet.nodes]

    def _DescribeAutoScalingGroups(self, params: dict) -> dict:
        names = sorted(self.fleets)
        if params.get("AutoScalingGroupNames"):
            names = [n for n in params["AutoScalingGroupNames"] if n in self.fleets]
        for flt in params.get("Filters", []):
            if flt["Name"] != f"tag:{self.opt_in[0]}" or self.opt_in[1] not in flt["Values"]:
                names = []
        start = int(params.get("NextToken", "0"))
        size = params.get("MaxRecords", 50)
        page = names[start:start + size]
        body: dict = {"AutoScalingGroups": [{
            "AutoScalingGroupName": n, "MinSize": self.fleets[n].min_size,
            "MaxSize": 1000, "DesiredCapacity": self.fleets[n].desired,
            "Tags": [{"Key": self.opt_in[0], "Value": self.opt_in[1]}],
            "Instances": self._in_service(self.fleets[n])} for n in page]}
        if start + size < len(names):
            body["NextToken"] = str(start + size)
        return body

    def _TerminateInstanceInAutoScalingGroup(self, params: dict) -> dict:
        node = self._nodes.pop(params["InstanceId"], None)
        if node is None:
            raise Rejected("ValidationError", f"Instance Id not found - {params['InstanceId']}")
        fleet = self.fleets[node.group]
        if params["ShouldDecrementDesiredCapacity"]:
            if fleet.desired - 1 < fleet.min_size:
                raise Rejected("ValidationError", "desired capacity would fall below the minimum")
            fleet.desired -= 1
        fleet.nodes.remove(node)
        return {"Activity": {"ActivityId": f"a-{node.instance_id}", "AutoScalingGroupName": fleet.name,
                             "Cause": "idle", "StartTime": self.now, "StatusCode": "InProgress"}}

    def _SetDesiredCapacity(self, params: dict) -> dict:
        self.fleets[params["AutoScalingGroupName"]].desired = params["DesiredCapacity"]
        return {}

    # -- EC2 ----------------------------------------------------------------------
    def _DescribeInstances(self, params: dict) -> dict:
        groups: set[str] = set()
        for flt in params.get("Filters", []):
            if flt["Name"] == "tag:aws:autoscaling:groupName":
                if len(flt["Values"]) > 200:
                    raise Rejected("InvalidParameterValue", "too many filter values")
                groups = set(flt["Values"])
        nodes = [n for g in sorted(groups) if g in self.fleets for n in self.fleets[g].nodes]
        start = int(params.get("NextToken", "0"))
        size = params.get("MaxResults", 1000)
        page = nodes[start:start + size]
        body: dict = {"Reservations": [{"ReservationId": f"r-{n.instance_id[2:]}", "Instances": [{
            "InstanceId": n.instance_id, "InstanceType": n.instance_type, "LaunchTime": n.launch_time,
            "Tags": [{"Key": "aws:autoscaling:groupName", "Value": n.group}]}]} for n in page]}
        if start + size < len(nodes):
            body["NextToken"] = str(start + size)
        return body

    def _DescribeInstanceTypes(self, params: dict) -> dict:
        return {"InstanceTypes": [{"InstanceType": t, "GpuInfo": {"Gpus": [
            {"Name": "gpu", "Manufacturer": "NVIDIA", "Count": GPUS[t]}]}}
            for t in params["InstanceTypes"] if t in GPUS]}

    # -- CloudWatch ---------------------------------------------------------------
    def _GetMetricData(self, params: dict) -> dict:
        queries = params["MetricDataQueries"]
        if len(queries) > MAX_QUERIES:
            raise Rejected("InvalidParameterValue",
                           f"The collection MetricDataQueries must not have a size greater than {MAX_QUERIES}.")
        ids = [q["Id"] for q in queries]
        if len(set(ids)) != len(ids):
            raise Rejected("InvalidParameterValue", "The values for parameter id in MetricDataQueries are not unique.")
        self.queries_per_call.append(len(queries))
        start, end = params["StartTime"], params["EndTime"]
        stamps = []
        t = start
        while t < end:
            stamps.append(t)
            t += timedelta(seconds=self.period)
        # The response is the flattened (query, datapoint) list, cut into
        # pages of datapoints_per_page; NextToken is the offset.
        flat: list[tuple[str, datetime, float]] = []
        for query in queries:
            node = self._nodes.get(query["MetricStat"]["Metric"]["Dimensions"][0]["Value"])
            if node is None or node.profile == "none":
                continue
            points = stamps[len(stamps) // 2:] if node.profile == "partial" else stamps
            value = 1.0 if node.profile in ("idle", "partial") else 60.0
            flat.extend((query["Id"], s, value) for s in points)
        offset = int(params.get("NextToken", "0"))
        page = flat[offset:offset + self.datapoints_per_page]
        results: dict[str, dict] = {}
        for qid, stamp, value in page:
            entry = results.setdefault(qid, {"Id": qid, "Label": "x", "Timestamps": [], "Values": [],
                                             "StatusCode": "Complete"})
            entry["Timestamps"].append(stamp)
            entry["Values"].append(value)
        body: dict = {"MetricDataResults": list(results.values())}
        if offset + self.datapoints_per_page < len(flat):
            body["NextToken"] = str(offset + self.datapoints_per_page)
        return body

    # -- SNS ----------------------------------------------------------------------
    def _Publish(self, params: dict) -> dict:
        if len(params["Message"].encode()) > 256 * 1024:
            raise Rejected("InvalidParameter", "Message too long")
        return {"MessageId": "synthetic"}

    # -- expectations -------------------------------------------------------------
    def expected_stops(self, grace_seconds: int) -> int:
        """How many instances the function should stop (min size is 0 everywhere)."""
        return sum(1 for n in self._nodes.values() if n.profile == "idle" and not n.protected
                   and (self.now - n.launch_time).total_seconds() >= grace_seconds)
