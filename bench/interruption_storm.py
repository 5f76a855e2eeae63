#!/usr/bin/env python3
"""Interruption storm: N notices enqueued at once (a benchmark, not a test).

An AZ's spot capacity is reclaimed: ``--notices`` spot interruption warnings
(and, with ``--hooks``, the termination lifecycle message of each instance
too) land in the queue together. The real ``batch.Processor`` handles them
the way the event source mapping delivers them: ``MAX_CONCURRENCY`` batches
of ``BATCH_SIZE`` at once (constructs_lib/interruption_handler.py), each
invocation with the function timeout as its budget. A record handed back
through ``batchItemFailures`` is redelivered when the handler made it
visible again (``requeue.py``: 2 s, doubling per receive) or, if that call
failed, after the visibility timeout (scaled by ``--time-scale``; 1 is real
time). ``--no-requeue`` shows the visibility timeout alone.

AWS is stubbed in-process: every call sleeps a per-call latency (with
jitter) and draws from a token bucket per API; an empty bucket answers with
the API's real throttling error. Buckets:

* EC2 ``DescribeInstances``: 100 tokens, refill 20/s: the documented bucket
  of non-mutating EC2 actions ("Request throttling for the Amazon EC2 API",
  docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html).
* SSM ``SendCommand``, ``DescribeInstanceInformation``, ``ListCommands``,
  Auto Scaling ``CompleteLifecycleAction``: AWS publishes no per-API rate
  for these (the Systems Manager and Auto Scaling quota pages list none;
  over the limit they answer ``ThrottlingException`` / ``Throttling``). The
  bench assumes a small bucket (``--ssm-burst``/``--ssm-rate``, default
  10 tokens, 5/s) so that a storm does meet throttling, as it would in an
  account where other tools share the quota.
* DynamoDB on demand: no per-request throttle at this volume (its documented
  per-partition limits are 1,000 writes/s and 3,000 reads/s).

Prints: time until the last checkpoint command was sent (and until every
instance had its first), AWS calls per operation, throttles met, records
that needed a redelivery.

    .venv/bin/python bench/interruption_storm.py [--notices 100] [--hooks] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from botocore.exceptions import ClientError  # noqa: E402

from constructs_lib import interruption_handler as construct  # noqa: E402
from tests.interruption_lambda import batch, fixture, logic, requeue, sqs_record  # noqa: E402

GROUP, HOOK, DOCUMENT, FLEET_TAG = "ml-dev-training-gpu", "ml-dev-training-gpu-terminating", "doc", "ml:training-fleet"


class TokenBucket:
    def __init__(self, burst: float, rate: float) -> None:
        self.capacity, self.rate = burst, rate
        self.tokens, self.at = burst, time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
            self.at = now
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            return False


@dataclass
class StubbedAws:
    """EC2, SSM, Auto Scaling and DynamoDB with latency and throttling."""

    fleet: set[str]
    latency_ms: dict[str, float]
    buckets: dict[str, TokenBucket]
    throttle_codes: dict[str, str]
    rng: random.Random
    calls: Counter = field(default_factory=Counter)
    throttles: Counter = field(default_factory=Counter)
    sent: dict[str, float] = field(default_factory=dict)  # instance -> time of its command
    commands: list[dict] = field(default_factory=list)
    items: dict[str, dict] = field(default_factory=dict)
    visibility: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _call(self, operation: str) -> None:
        with self.lock:
            self.calls[operation] += 1
            jitter = self.rng.uniform(0.7, 1.3)
        time.sleep(self.latency_ms.get(operation, 10) * jitter / 1000)
        bucket = self.buckets.get(operation)
        if bucket is not None and not bucket.take():
            with self.lock:
                self.throttles[operation] += 1
            raise ClientError({"Error": {"Code": self.throttle_codes[operation], "Message": "Rate exceeded"},
                               "ResponseMetadata": {"HTTPStatusCode": 400}}, operation)

    # EC2
    def describe_instances(self, Filters, **_):  # noqa: N803 - boto3 names
        self._call("DescribeInstances")
        ids = Filters[0]["Values"]
        return {"Reservations": [{"Instances": [
            {"InstanceId": i, "Tags": [{"Key": FLEET_TAG, "Value": GROUP}]} for i in ids if i in self.fleet]}]}

    # SSM
    def describe_instance_information(self, Filters, MaxResults, **_):  # noqa: N803
        self._call("DescribeInstanceInformation")
        return {"InstanceInformationList": [{"InstanceId": i, "PingStatus": "Online"}
                                            for i in Filters[0]["Values"]]}

    def send_command(self, **params):
        self._call("SendCommand")
        command = {"CommandId": str(uuid.UUID(int=self.rng.getrandbits(128))), **params}
        with self.lock:
            self.commands.append({**command, "at": time.monotonic()})
            self.sent.setdefault(params["InstanceIds"][0], time.monotonic())
        return {"Command": command}

    def list_commands(self, InstanceId, **_):  # noqa: N803
        self._call("ListCommands")
        with self.lock:
            return {"Commands": [c for c in self.commands if InstanceId in c["InstanceIds"]]}

    # Auto Scaling
    def complete_lifecycle_action(self, **_):
        self._call("CompleteLifecycleAction")
        return {}

    # SQS: the handler's visibility change of failed records
    def change_message_visibility_batch(self, QueueUrl, Entries):  # noqa: N803
        self._call("ChangeMessageVisibilityBatch")
        with self.lock:
            for entry in Entries:
                self.visibility[entry["ReceiptHandle"]] = entry["VisibilityTimeout"]
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    # DynamoDB (the ledger's conditional write, evaluated here)
    def put_item(self, TableName, Item, ConditionExpression=None, ExpressionAttributeValues=None, **_):  # noqa: N803
        self._call("PutItem")
        key = Item["id"]["S"]
        with self.lock:
            old = self.items.get(key)
            if ConditionExpression and old is not None:
                now = int(ExpressionAttributeValues[":now"]["N"])
                stale = old["status"]["S"] == "IN_PROGRESS" and int(old["lease_until"]["N"]) < now
                if not (int(old["expiration"]["N"]) < now or stale):
                    raise ClientError({"Error": {"Code": "ConditionalCheckFailedException",
                                                 "Message": "The conditional request failed"}}, "PutItem")
            self.items[key] = Item
            return {"Attributes": old} if old else {}

    def delete_item(self, TableName, Key, ExpressionAttributeValues, **_):  # noqa: N803
        self._call("DeleteItem")
        with self.lock:
            old = self.items.get(Key["id"]["S"])
            if old is None or old["first_message_id"]["S"] != ExpressionAttributeValues[":me"]["S"] \
                    or old["status"]["S"] != "IN_PROGRESS":
                raise ClientError({"Error": {"Code": "ConditionalCheckFailedException", "Message": "no"}},
                                  "DeleteItem")
            del self.items[Key["id"]["S"]]
        return {}

    def get_item(self, TableName, Key, **_):  # noqa: N803
        self._call("GetItem")
        with self.lock:
            item = self.items.get(Key["id"]["S"])
        return {"Item": item} if item else {}


class Context:
    def __init__(self, timeout_seconds: float) -> None:
        self.ends = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return int((self.ends - time.monotonic()) * 1000)


def notices(count: int, hooks: bool, rng: random.Random) -> tuple[list[dict], set[str]]:
    instances = [f"i-{rng.getrandbits(68):017x}" for _ in range(count)]
    bodies = []
    for instance_id in instances:
        warning = fixture("spot_interruption_warning")
        warning["id"] = str(uuid.UUID(int=rng.getrandbits(128)))
        warning["detail"]["instance-id"] = instance_id
        bodies.append(warning)
        if hooks:
            hook = fixture("lifecycle_hook_terminating")
            hook.update(EC2InstanceId=instance_id, AutoScalingGroupName=GROUP, LifecycleHookName=HOOK,
                        LifecycleActionToken=str(uuid.UUID(int=rng.getrandbits(128))),
                        RequestId=str(uuid.UUID(int=rng.getrandbits(128))))
            bodies.append(hook)
    records = [{**sqs_record(b, message_id=str(uuid.UUID(int=rng.getrandbits(128)))),
                "receiptHandle": f"AQEB{n}"} for n, b in enumerate(bodies)]
    return records, set(instances)


def storm(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    records, fleet = notices(args.notices, args.hooks, rng)
    aws = StubbedAws(
        fleet=fleet, rng=rng,
        latency_ms={"DescribeInstances": 150, "DescribeInstanceInformation": 80, "SendCommand": 120,
                    "ListCommands": 90, "CompleteLifecycleAction": 60, "PutItem": 8, "GetItem": 6,
                    "DeleteItem": 8},
        buckets={"DescribeInstances": TokenBucket(100, 20),
                 "SendCommand": TokenBucket(args.ssm_burst, args.ssm_rate),
                 "DescribeInstanceInformation": TokenBucket(args.ssm_burst, args.ssm_rate),
                 "ListCommands": TokenBucket(args.ssm_burst, args.ssm_rate),
                 "CompleteLifecycleAction": TokenBucket(args.ssm_burst, args.ssm_rate)},
        throttle_codes={"DescribeInstances": "RequestLimitExceeded", "SendCommand": "ThrottlingException",
                        "DescribeInstanceInformation": "ThrottlingException",
                        "ListCommands": "ThrottlingException", "CompleteLifecycleAction": "Throttling"})
    settings = logic.Settings(autoscaling_group_name=GROUP, fleet_tag_key=FLEET_TAG, fleet_tag_value=GROUP,
                              document_name=DOCUMENT)
    clients = logic.Clients(ec2=aws, ssm=aws, autoscaling=aws)
    timeout = construct.DEFAULT_LAMBDA_TIMEOUT_SECONDS
    visibility = construct.visibility_timeout_seconds(timeout)
    sooner = None if args.no_requeue else requeue.Requeue(aws, "queue", visibility)
    queue: list[tuple[float, dict]] = [(0.0, r) for r in records]
    queue_lock = threading.Lock()
    redelivered: Counter = Counter()
    dead_lettered: list[str] = []
    invocations: list[int] = []
    start = time.monotonic()

    def poller() -> None:
        while True:
            with queue_lock:
                now = time.monotonic() - start
                ready = [item for item in queue if item[0] <= now][:construct.BATCH_SIZE]
                for item in ready:
                    queue.remove(item)
                pending = len(queue)
            if not ready:
                if pending == 0:
                    return
                time.sleep(0.01)
                continue
            processor = batch.Processor(settings=settings, clients=clients, dynamodb=aws,
                                        table_name="ledger", metrics=_NoMetrics(), log=lambda _: None,
                                        requeue=sooner)
            result = processor.process_batch({"Records": [r for _, r in ready]}, Context(timeout))
            invocations.append(len(ready))
            failed = {f["itemIdentifier"] for f in result.response()["batchItemFailures"]}
            with queue_lock:
                for _, record in ready:
                    if record["messageId"] in failed:
                        redelivered[record["messageId"]] += 1
                        count = int(record["attributes"]["ApproximateReceiveCount"])
                        if count >= construct.MAX_RECEIVE_COUNT:
                            dead_lettered.append(record["messageId"])  # SQS's redrive would take it
                            continue
                        wait = aws.visibility.pop(record["receiptHandle"], visibility) * args.time_scale
                        record = {**record, "attributes": {**record["attributes"],
                                                           "ApproximateReceiveCount": str(count + 1)}}
                        queue.append((time.monotonic() - start + wait, record))

    threads = [threading.Thread(target=poller) for _ in range(construct.MAX_CONCURRENCY)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first_per_instance = max(aws.sent.values()) - start if aws.sent else float("nan")
    last = max(c["at"] for c in aws.commands) - start if aws.commands else float("nan")
    return {
        "notices": len(records), "instances": len(fleet),
        "instances_with_command": len(aws.sent), "commands_sent": len(aws.commands),
        "last_command_after_s": round(last, 3),
        "every_instance_commanded_after_s": round(first_per_instance, 3),
        "invocations": len(invocations), "records_redelivered": sum(redelivered.values()),
        "most_receives": max(redelivered.values(), default=0) + 1, "dead_lettered": len(dead_lettered),
        "aws_calls": dict(sorted(aws.calls.items())), "aws_calls_total": sum(aws.calls.values()),
        "throttles": dict(sorted(aws.throttles.items())), "throttles_total": sum(aws.throttles.values()),
        "settings": {"batch_size": construct.BATCH_SIZE, "max_concurrency": construct.MAX_CONCURRENCY,
                     "function_timeout_s": timeout, "ssm_bucket": [args.ssm_burst, args.ssm_rate],
                     "requeue_sooner": not args.no_requeue,
                     "ec2_describe_bucket": [100, 20], "seed": args.seed},
    }


class _NoMetrics:
    def count(self, name: str) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notices", type=int, default=100)
    parser.add_argument("--hooks", action="store_true", help="also each instance's lifecycle hook message")
    parser.add_argument("--ssm-burst", type=float, default=10.0)
    parser.add_argument("--ssm-rate", type=float, default=5.0)
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="multiplier of redelivery delays (1 = real time)")
    parser.add_argument("--no-requeue", action="store_true",
                        help="failed records wait for the visibility timeout")
    parser.add_argument("--seed", type=int, default=7)
    print(json.dumps(storm(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
