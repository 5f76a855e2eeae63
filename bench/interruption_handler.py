#!/usr/bin/env python3
"""Interruption handler time per record, AWS stubbed (a benchmark, not a test).

EC2, SSM and Auto Scaling answer from botocore Stubbers (no network, parameter
validation on), the idempotency table is moto's in-process DynamoDB. So the
numbers are the handler's own cost per record (parsing, decisions, boto3
request building and validation, the idempotency ledger, threads and
logging), not AWS latency, which adds ~10-30 ms per call in a region (see
``bench/interruption_storm.py`` for latency and throttling).

    .venv/bin/python bench/interruption_handler.py [--records 400]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                  MOTO_AMIS_PATH=str(ROOT / "tests" / "lambda" / "fixtures" / "interruption_handler"
                                             / "moto_amis.json"))

import boto3  # noqa: E402
from botocore.stub import Stubber  # noqa: E402
from moto import mock_aws  # noqa: E402

from tests.interruption_lambda import (batch, fixture, handler, logic, quarantine, sqs_record,  # noqa: E402
                                      telemetry)

GROUP, TABLE, INSTANCE = "ml-dev-training-gpu", "bench-idempotency", "i-0b662ef9931388ba0"
BATCH = 10


class Context:
    def get_remaining_time_in_millis(self) -> int:
        return 55_000


def uuid(n: int) -> str:
    return f"{n:08x}-0000-4000-8000-{n:012x}"


def per_batch(kind: str, ec2: Stubber, ssm: Stubber, autoscaling: Stubber, sqs: Stubber) -> None:
    """The batch's one lookup of its instances (all records name INSTANCE)."""
    fleet = kind != "lifecycle, not ours -> CompleteLifecycleAction"
    if kind == "malformed message (quarantined)":
        return
    tags = [{"Key": "ml:training-fleet", "Value": GROUP}] if fleet else []
    ec2.add_response("describe_instances", {"Reservations": [{"Instances": [
        {"InstanceId": INSTANCE, "Tags": tags}]}]})
    if fleet:
        ssm.add_response("describe_instance_information", {"InstanceInformationList": [
            {"InstanceId": INSTANCE, "PingStatus": "Online"}]})


def scenario(kind: str, n: int, ec2: Stubber, ssm: Stubber, autoscaling: Stubber, sqs: Stubber) -> dict:
    if kind == "spot warning, fleet instance -> SendCommand":
        body = fixture("spot_interruption_warning")
        body["id"] = uuid(n)
        ssm.add_response("send_command", {"Command": {"CommandId": uuid(n)}})
        return body
    if kind == "lifecycle, not ours -> CompleteLifecycleAction":
        body = fixture("lifecycle_hook_terminating")
        body["LifecycleActionToken"] = uuid(n)
        autoscaling.add_response("complete_lifecycle_action", {})
        return body
    if kind == "duplicate delivery (idempotency hit)":
        body = fixture("spot_interruption_warning")
        body["id"] = uuid(0)  # recorded by the warm-up below
        return body
    if kind == "malformed message (quarantined)":
        sqs.add_response("send_message", {"MessageId": uuid(n), "MD5OfMessageBody": "0" * 32})
        return {"source": "aws.ec2", "detail-type": "EC2 Spot Instance Interruption Warning", "id": uuid(n),
                "detail": {"instance-id": "not-an-instance"}}
    raise ValueError(kind)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=400, help="records per scenario (default 400)")
    args = parser.parse_args()
    # One JSON log line per decision and the EMF line are still written, to a buffer.
    sink = io.StringIO()
    handler.logger = telemetry.Logger(sink.write)
    metrics = telemetry.CountMetrics(sink.write)
    logging.getLogger("botocore").setLevel(logging.WARNING)

    kinds = ["spot warning, fleet instance -> SendCommand", "lifecycle, not ours -> CompleteLifecycleAction",
             "duplicate delivery (idempotency hit)", "malformed message (quarantined)"]
    print(f"{os.cpu_count()} CPUs, {args.records} records per scenario in batches of {BATCH}, "
          "microseconds per record: median (p95) of per-batch means")
    with mock_aws():
        dynamodb = boto3.client("dynamodb")
        dynamodb.create_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST",
                              AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                              KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
        clients = logic.Clients(ec2=boto3.client("ec2"), ssm=boto3.client("ssm"),
                                autoscaling=boto3.client("autoscaling"))
        sqs = boto3.client("sqs")
        stubs = [Stubber(clients.ec2), Stubber(clients.ssm), Stubber(clients.autoscaling), Stubber(sqs)]
        for stub in stubs:
            stub.activate()
        processor = batch.Processor(
            settings=logic.Settings(autoscaling_group_name=GROUP, fleet_tag_key="ml:training-fleet",
                                    fleet_tag_value=GROUP, document_name="ml-dev-training-Checkpoint"),
            clients=clients, dynamodb=dynamodb, table_name=TABLE,
            metrics=metrics, log=handler.log_outcome,
            quarantine=quarantine.Quarantine(sqs, "https://sqs.us-east-1.amazonaws.com/123456789012/dlq"))
        per_batch(kinds[0], *stubs)
        warm = scenario(kinds[0], 0, *stubs)
        processor.process_batch({"Records": [sqs_record(warm, message_id="warm")]}, Context())

        serial = 1
        for kind in kinds:
            per_record = []
            for start in range(0, args.records, BATCH):
                records = []
                per_batch(kind, *stubs)
                for _ in range(BATCH):
                    records.append(sqs_record(json.dumps(scenario(kind, serial, *stubs)), message_id=str(serial)))
                    serial += 1
                began = time.perf_counter()
                result = processor.process_batch({"Records": records}, Context())
                per_record.append((time.perf_counter() - began) / BATCH * 1e6)
                assert result.response() == {"batchItemFailures": []}, result.outcomes
                metrics.flush()
            for stub in stubs:
                stub.assert_no_pending_responses()
            p95 = statistics.quantiles(per_record, n=20)[-1]
            print(f"  {kind:<48} {statistics.median(per_record):8.0f}  ({p95:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
