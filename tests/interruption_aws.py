"""AWS for the interruption handler tests: moto where it implements the API,
botocore's Stubber (which checks parameters against the real API model)
where it does not. Test modules import the `aws` fixture from here (tests/lambda
cannot be imported by name: `lambda` is a keyword)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from tests.interruption_lambda import FIXTURES

# moto's EC2 otherwise loads every public AMI it knows (seconds per test);
# one Deep Learning AMI is all these tests launch. Read when moto's EC2
# models are first imported.
os.environ.setdefault("MOTO_AMIS_PATH", str(FIXTURES / "moto_amis.json"))
AMI_ID = "ami-0b5eea76982371e91"

import boto3  # noqa: E402
import pytest
from botocore.awsrequest import AWSResponse  # noqa: E402
from botocore.stub import Stubber  # noqa: E402
from moto import mock_aws  # noqa: E402

from constructs_lib.interruption_handler import checkpoint_document  # noqa: E402
from tests.interruption_lambda import batch, logic, quarantine, requeue  # noqa: E402

REGION = "us-east-1"
GROUP = "ml-dev-training-gpu"
HOOK = "ml-dev-training-gpu-terminating"
FLEET_TAG = "ml:training-fleet"
TABLE = "interruption-idempotency"
DOCUMENT = "ml-dev-training-Checkpoint"


class RecordingMetrics:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1


class FakeClock:
    """Monotonic time that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.epoch = time.time() - self.now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        """Epoch seconds that move with the fake clock (leases, TTLs)."""
        return self.epoch + self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class LambdaContext:
    function_name = "ml-dev-training-InterruptionHandler"
    aws_request_id = "6f7b3c2e-9d0a-4c55-8a4e-0f2b1d3c4e5f"

    def get_remaining_time_in_millis(self) -> int:
        return 55_000


@dataclass
class Aws:
    ec2: Any
    ssm: Any
    autoscaling: Any
    dynamodb: Any
    sqs: Any
    dead_letter_queue_url: str
    queue_url: str
    autoscaling_stub: Stubber
    fleet_instance: str
    other_instance: str
    ssm_online: set[str] = field(default_factory=set)
    ssm_connection_lost: set[str] = field(default_factory=set)
    sent: list[dict] = field(default_factory=list)
    log: list = field(default_factory=list)
    metrics: RecordingMetrics = field(default_factory=RecordingMetrics)
    rebalance_action: str = "checkpoint"
    clock: FakeClock = field(default_factory=FakeClock)
    quarantined: list[dict] = field(default_factory=list)

    def processor(self, **settings: Any) -> "batch.Processor":
        values = dict(autoscaling_group_name=GROUP, fleet_tag_key=FLEET_TAG, fleet_tag_value=GROUP,
                      document_name=DOCUMENT, rebalance_action=self.rebalance_action)
        values.update(settings)
        return batch.Processor(
            settings=logic.Settings(**values),
            clients=logic.Clients(ec2=self.ec2, ssm=self.ssm, autoscaling=self.autoscaling),
            dynamodb=self.dynamodb, table_name=TABLE, metrics=self.metrics, log=self.log.append,
            quarantine=quarantine.Quarantine(self.sqs, self.dead_letter_queue_url),
            requeue=requeue.Requeue(self.sqs, self.queue_url, 48),
            clock=self.clock, sleep=self.clock.sleep, wall_clock=self.clock.wall)

    def dead_letters(self) -> list[dict]:
        """Messages in the dead-letter queue, with their attributes."""
        found = self.sqs.receive_message(QueueUrl=self.dead_letter_queue_url, MaxNumberOfMessages=10,
                                         MessageAttributeNames=["All"])
        return found.get("Messages", [])

    def commands(self) -> list[dict]:
        """SendCommand requests as the client sent them (moto's own record
        adds every instance of the account when no Targets are given)."""
        return self.sent

    def expect_complete(self, instance_id: str, token: str, *, group: str = GROUP,
                        hook: str = HOOK) -> None:
        self.autoscaling_stub.add_response("complete_lifecycle_action", {}, {
            "LifecycleHookName": hook, "AutoScalingGroupName": group,
            "LifecycleActionToken": token, "LifecycleActionResult": "CONTINUE",
            "InstanceId": instance_id})


def short_circuit(client: Any, operation: str, respond: Callable[[dict], tuple[int, dict]]) -> None:
    """Answer ``operation`` on ``client`` without moto (it does not implement
    it): ``respond(api params) -> (status, parsed response)``."""
    service = client.meta.service_model.service_name
    seen: list[dict] = []

    def capture(params: dict, **_: Any) -> None:
        seen.append(dict(params))

    def before_call(**_: Any):
        status, parsed = respond(seen.pop())
        return AWSResponse(f"https://{service}.us-east-1.amazonaws.com/", status, {}, None), parsed

    client.meta.events.register(f"before-parameter-build.{service}.{operation}", capture)
    client.meta.events.register(f"before-call.{service}.{operation}", before_call)


@pytest.fixture
def aws(monkeypatch) -> Aws:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        ssm = boto3.client("ssm", region_name=REGION)
        dynamodb = boto3.client("dynamodb", region_name=REGION)
        autoscaling = boto3.client("autoscaling", region_name=REGION)
        sqs = boto3.client("sqs", region_name=REGION)
        dead_letter_queue_url = sqs.create_queue(QueueName="interruption-dlq")["QueueUrl"]
        queue_url = sqs.create_queue(QueueName="interruption", Attributes={"VisibilityTimeout": "48"})["QueueUrl"]
        dynamodb.create_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST",
                              AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                              KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
        ssm.create_document(Name=DOCUMENT, DocumentType="Command", DocumentFormat="JSON",
                            Content=json.dumps(checkpoint_document(budget_seconds=90)))

        def launch(tags: list[dict]) -> str:
            spec = [{"ResourceType": "instance", "Tags": tags}] if tags else []
            return ec2.run_instances(ImageId=AMI_ID, MinCount=1, MaxCount=1, InstanceType="g5.xlarge",
                                     TagSpecifications=spec)["Instances"][0]["InstanceId"]

        state = Aws(ec2=ec2, ssm=ssm, autoscaling=autoscaling, dynamodb=dynamodb, sqs=sqs,
                    dead_letter_queue_url=dead_letter_queue_url, queue_url=queue_url,
                    autoscaling_stub=Stubber(autoscaling),
                    fleet_instance=launch([{"Key": FLEET_TAG, "Value": GROUP},
                                           {"Key": "aws:autoscaling:groupName", "Value": GROUP}]),
                    other_instance=launch([{"Key": "Name", "Value": "someone-elses"}]))
        state.ssm_online.add(state.fleet_instance)

        def instance_information(params: dict) -> tuple[int, dict]:
            wanted = params["Filters"][0]["Values"]
            # Unregistered instances are simply absent from the answer.
            return 200, {"InstanceInformationList": [
                {"InstanceId": i, "PingStatus": "Online" if i in state.ssm_online else "ConnectionLost",
                 "PlatformType": "Linux", "AgentVersion": "3.3.4624.0"}
                for i in wanted if i in state.ssm_online | state.ssm_connection_lost]}

        short_circuit(ssm, "DescribeInstanceInformation", instance_information)
        ssm.meta.events.register("before-parameter-build.ssm.SendCommand",
                                 lambda params, **_: state.sent.append(dict(params)))
        state.autoscaling_stub.activate()
        yield state
        state.autoscaling_stub.deactivate()
