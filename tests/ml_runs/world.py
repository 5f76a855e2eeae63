"""A deployed stage as moto sees it: the training stack's outputs, the runs
table (the schema of constructs_lib/training_runs.py), the fleet's group and
the runs log group; plus the CLI run against it in-process."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import boto3

from delivery.cli_errors import run
from ml_runs import cli
from ml_runs.runs import STATE_INDEX
from ml_stacks.config import StageConfig, default_configs

STAGE = "dev"
NOW = datetime(2026, 11, 29, 14, 0, 0, tzinfo=timezone.utc)


@dataclass
class Result:
    status: int
    out: str
    err: str


@dataclass
class World:
    config: StageConfig
    clients: dict[str, Any]
    outputs: dict[str, str]
    now: datetime = NOW
    slept: list[float] = field(default_factory=list)

    @classmethod
    def create(cls, stage: str = STAGE) -> "World":
        config = default_configs()[stage]
        clients = {name: boto3.client(name, region_name=config.region)
                   for name in ("cloudformation", "dynamodb", "autoscaling", "ec2", "logs",
                                "events", "sqs")}
        outputs = {"RunsTableName": f"{config.stack_prefix}-training-RunsTable-1A2B3C",
                   "RunsLogGroupName": f"{config.stack_prefix}-training-RunsLogs-4D5E6F",
                   "AutoScalingGroupName": f"{config.stack_prefix}-training-gpu",
                   "CheckpointBucketName": f"{config.stack_prefix}-storage-checkpoints-7a8b9c"}
        world = cls(config=config, clients=clients, outputs=outputs)
        world._deploy()
        return world

    def _deploy(self) -> None:
        c, o = self.clients, self.outputs
        c["dynamodb"].create_table(
            TableName=o["RunsTableName"], BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"}
                                  for n in ("run_id", "state", "created_at")],
            KeySchema=[{"AttributeName": "run_id", "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[{
                "IndexName": STATE_INDEX,
                "KeySchema": [{"AttributeName": "state", "KeyType": "HASH"},
                              {"AttributeName": "created_at", "KeyType": "RANGE"}],
                "Projection": {"ProjectionType": "ALL"}}])
        vpc = c["ec2"].create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = c["ec2"].create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/20",
                                        AvailabilityZone=self.config.network.availability_zones[0])
        c["ec2"].create_launch_template(LaunchTemplateName="fleet", LaunchTemplateData={
            "ImageId": "ami-12c6146b", "InstanceType": self.config.training.instance_types[0]})
        c["autoscaling"].create_auto_scaling_group(
            AutoScalingGroupName=o["AutoScalingGroupName"], LaunchTemplate={"LaunchTemplateName": "fleet"},
            MinSize=0, MaxSize=self.config.training.max_capacity, DesiredCapacity=0,
            VPCZoneIdentifier=subnet["Subnet"]["SubnetId"],
            Tags=[{"Key": key, "Value": value, "PropagateAtLaunch": False,
                   "ResourceId": o["AutoScalingGroupName"], "ResourceType": "auto-scaling-group"}
                  for key, value in ((self.config.idle_shutdown.opt_in_tag_key,
                                      self.config.idle_shutdown.opt_in_tag_value),
                                     ("ml:idle-shutdown-stage", self.config.name))])
        c["logs"].create_log_group(logGroupName=o["RunsLogGroupName"])
        # The outputs are what the CLI reads; a template needs one resource.
        c["cloudformation"].create_stack(
            StackName=f"{self.config.stack_prefix}-training",
            TemplateBody=json.dumps({
                "Resources": {"Anchor": {"Type": "AWS::SNS::Topic"}},
                "Outputs": {k: {"Value": v} for k, v in o.items()}}))

    # -- running the CLI ---------------------------------------------------------
    def cli(self, *argv: str, sleep: Callable[[float], None] | None = None) -> Result:
        """``python -m ml_runs --stage <stage> ARGV`` in-process, expected failures
        reported as the command reports them. Time passes only by sleeping."""
        out, err = io.StringIO(), io.StringIO()
        status = run(lambda: cli.main(["--stage", self.config.name, *argv],
                                      clients=self.clients.__getitem__, now=lambda: self.now,
                                      out=out, err=err, sleep=sleep or self.slept.append,
                                      monotonic=lambda: float(sum(self.slept))),
                     stderr=err)
        return Result(status, out.getvalue(), err.getvalue())

    def later(self, **delta: float) -> None:
        self.now += timedelta(**delta)

    # -- reading and shaping the stage -------------------------------------------
    @property
    def table(self) -> str:
        return self.outputs["RunsTableName"]

    def item(self, run_id: str) -> dict[str, Any]:
        from ml_runs.runs import _load

        return _load(self.clients["dynamodb"].get_item(TableName=self.table,
                                                       Key={"run_id": {"S": run_id}})["Item"])

    def update(self, run_id: str, **attributes: Any) -> None:
        """Set attributes the way a node agent would (claims, leases, attempts)."""
        from ml_runs.runs import _dump

        values = _dump({f":{k}": v for k, v in attributes.items()})
        self.clients["dynamodb"].update_item(
            TableName=self.table, Key={"run_id": {"S": run_id}},
            UpdateExpression="SET " + ", ".join(f"#{k} = :{k}" for k in attributes),
            ExpressionAttributeNames={f"#{k}": k for k in attributes},
            ExpressionAttributeValues=values)

    def desired_capacity(self) -> int:
        group = self.clients["autoscaling"].describe_auto_scaling_groups(
            AutoScalingGroupNames=[self.outputs["AutoScalingGroupName"]])["AutoScalingGroups"][0]
        return group["DesiredCapacity"]

    def set_desired_capacity(self, value: int) -> None:
        self.clients["autoscaling"].set_desired_capacity(
            AutoScalingGroupName=self.outputs["AutoScalingGroupName"], DesiredCapacity=value)

    def log(self, stream: str, *messages: str, at: datetime | None = None) -> None:
        group = self.outputs["RunsLogGroupName"]
        logs = self.clients["logs"]
        if not logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=stream)["logStreams"]:
            logs.create_log_stream(logGroupName=group, logStreamName=stream)
        stamp = int((at or self.now).timestamp() * 1000)
        logs.put_log_events(logGroupName=group, logStreamName=stream,
                            logEvents=[{"timestamp": stamp + i, "message": m} for i, m in enumerate(messages)])

    def capture_events(self, pattern: dict[str, Any], bus: str = "default") -> str:
        """A queue receiving what a rule with ``pattern`` on ``bus`` matches
        (the bus is created unless it is the default one)."""
        sqs, events = self.clients["sqs"], self.clients["events"]
        if bus != "default":
            events.create_event_bus(Name=bus)
        url = sqs.create_queue(QueueName=f"captured-{bus}")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events.put_rule(Name="job-finished", EventPattern=json.dumps(pattern), EventBusName=bus)
        events.put_targets(Rule="job-finished", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
        return url

    def clients_for_lambda(self) -> Callable[[str], Any]:
        """Clients as the idle function gets them (its own region)."""
        def client(name: str) -> Any:
            if name not in self.clients:
                self.clients[name] = boto3.client(name, region_name=self.config.region)
            return self.clients[name]
        return client

    def received(self, url: str) -> list[dict[str, Any]]:
        messages = self.clients["sqs"].receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        return [json.loads(m["Body"]) for m in messages]
