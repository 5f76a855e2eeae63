"""Issue 13's interruption sources on the existing queue: AWS Health scheduled
changes, Capacity Block expiration warnings (both spellings) and capacity
reservation instance interruption warnings, from the sample events in
fixtures/interruption_handler (SOURCES.md says where each comes from)."""

from __future__ import annotations

import copy
import json

import boto3
import pytest
from botocore.stub import Stubber

from constructs_lib import interruption_handler as construct
from tests.interruption_aws import DOCUMENT, GROUP, LambdaContext
from tests.interruption_aws import aws  # noqa: F401  (the fixture)
from tests.interruption_lambda import batch, fixture, logic, messages, sqs_event, sqs_record, telemetry

from .interruption_fake import FakeAws

RESERVATION = "cr-0a1b2c3d4e5f67890"


def run(processor, *bodies, prefix: str = "msg"):
    event = sqs_event(*(sqs_record(body, message_id=f"{prefix}-{n}") for n, body in enumerate(bodies)))
    return processor.process_batch(event, LambdaContext())


def health(*instances: str, code: str = "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED", status: str = "upcoming",
           event_id: str = "7fb65329-1628-4cf3-a740-95fa457b1402") -> dict:
    event = fixture("health_instance_retirement")
    event["id"] = event_id
    event["resources"] = list(instances)
    event["detail"].update(eventTypeCode=code, statusCode=status, affectedEntities=[
        {"entityValue": i, "lastUpdatedTime": "Mon, 23 Nov 2026 09:39:12 GMT", "status": "PENDING"}
        for i in instances])
    return event


def capacity_block(detail_type: str, reservation: str = RESERVATION,
                   event_id: str = "4c1d9a2e-7b3f-4e8a-9d6c-2f1e0b7a5c93") -> dict:
    event = fixture("capacity_block_expiration_warning")
    event.update({"detail-type": detail_type, "id": event_id})
    event["detail"]["capacity-reservation-id"] = reservation
    return event


def reservation_interruption(instance_id: str) -> dict:
    event = fixture("capacity_reservation_interruption_warning")
    event["detail"]["instance-id"] = instance_id
    return event


def fake_processor(fake: FakeAws, **settings) -> "batch.Processor":
    from tests.interruption_aws import FakeClock
    clock = FakeClock()
    values = dict(autoscaling_group_name=GROUP, fleet_tag_key="ml:training-fleet", fleet_tag_value=GROUP,
                  document_name=DOCUMENT)
    values.update(settings)
    return batch.Processor(settings=logic.Settings(**values),
                           clients=logic.Clients(ec2=fake, ssm=fake, autoscaling=fake), dynamodb=fake,
                           table_name="ledger", metrics=_Counts(), log=lambda _: None,
                           clock=clock, sleep=clock.sleep, wall_clock=clock.wall)


class _Counts:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1


# --- the seam with the rules and the SSM document ----------------------------------------

def test_handler_accepts_exactly_what_the_rules_match() -> None:
    assert messages.HEALTH_EVENT_TYPE_CODES == construct.HEALTH_EVENT_TYPE_CODES
    assert messages.HEALTH_STATUS_CODES == construct.HEALTH_STATUS_CODES
    assert messages.CAPACITY_BLOCK_WARNINGS == construct.CAPACITY_BLOCK_WARNINGS
    assert ("aws.ec2", construct.RESERVATION_INTERRUPTION) in messages.EVENTBRIDGE_PARSERS
    assert ("aws.health", construct.HEALTH_EVENT) in messages.EVENTBRIDGE_PARSERS


def test_the_alarms_read_the_namespace_and_dimension_the_handler_writes() -> None:
    assert telemetry.METRICS_NAMESPACE == construct.METRICS_NAMESPACE
    assert telemetry.SERVICE_NAME == construct.SERVICE_NAME
    import re
    for kind in (messages.HEALTH_SCHEDULED_CHANGE, messages.CAPACITY_BLOCK_EXPIRING,
                 messages.RESERVATION_INTERRUPTION):
        assert re.fullmatch(construct.REASON_PATTERN, kind)


# --- AWS Health -------------------------------------------------------------------------

def test_health_retirement_checkpoints_the_fleet_instance_and_skips_the_other(aws) -> None:
    result = run(aws.processor(), health(aws.fleet_instance, aws.other_instance))
    [command] = aws.commands()
    assert command["DocumentName"] == DOCUMENT and command["InstanceIds"] == [aws.fleet_instance]
    assert command["Parameters"]["Reason"] == ["health-scheduled-change"]
    assert command["Parameters"]["EventId"] == ["7fb65329-1628-4cf3-a740-95fa457b1402"]
    assert command["Parameters"]["LifecycleActionToken"] == [""]
    by_instance = {o.instance_id: (o.outcome, o.reason) for o in result.outcomes}
    assert by_instance == {aws.fleet_instance: ("handled", "fleet-instance-online"),
                           aws.other_instance: ("skipped", "not-a-fleet-instance")}
    assert result.response() == {"batchItemFailures": []}


def test_an_update_of_the_same_health_event_does_not_checkpoint_again(aws) -> None:
    processor = aws.processor()
    run(processor, health(aws.fleet_instance))
    # Health sends updates of one event (same eventArn) as new EventBridge events.
    result = run(processor, health(aws.fleet_instance, status="open",
                                   event_id="0a1b2c3d-0000-4000-8000-000000000001"), prefix="update")
    assert len(aws.commands()) == 1
    [outcome] = result.outcomes
    assert outcome.outcome == "skipped" and "duplicate" in outcome.reason


@pytest.mark.parametrize("change, why", [
    ({"eventTypeCode": "AWS_EC2_INSTANCE_NETWORK_MAINTENANCE_SCHEDULED"}, "eventTypeCode"),
    ({"statusCode": "closed"}, "statusCode"),
    ({"service": "RDS"}, "service"),
    ({"eventTypeCategory": "issue"}, "eventTypeCategory"),
    ({"affectedEntities": []}, "affectedEntities"),
    ({"affectedEntities": [{"entityValue": "i-0b662ef9931388ba0\n"}]}, "entityValue"),
    ({"affectedEntities": [{"entityValue": "arn:aws:ec2:us-east-1:123456789012:instance/i-0b662ef9931388ba0"}]},
     "entityValue"),
    ({"eventArn": "not-an-arn"}, "eventArn"),
])
def test_health_events_that_are_not_ec2_scheduled_stops_are_rejected_whole(change, why) -> None:
    event = health("i-0b662ef9931388ba0", "i-0c3e5f7a9b1d2e4f6")
    event["detail"].update(change)
    with pytest.raises(messages.MalformedMessage, match=why):
        messages.parse_body(json.dumps(event))


def test_health_fixture_parses_to_one_interruption_per_affected_instance() -> None:
    parsed = messages.parse_body(json.dumps(fixture("health_instance_retirement")))
    assert [(i.kind, i.instance_id) for i in parsed.interruptions] == [
        ("health-scheduled-change", "i-0b662ef9931388ba0"), ("health-scheduled-change", "i-0c3e5f7a9b1d2e4f6")]
    assert len({i.idempotency_key for i in parsed.interruptions}) == 2


# --- capacity reservation instance interruption -----------------------------------------

def test_reservation_interruption_warning_checkpoints_like_a_spot_notice(aws) -> None:
    result = run(aws.processor(), reservation_interruption(aws.fleet_instance))
    [command] = aws.commands()
    assert command["InstanceIds"] == [aws.fleet_instance]
    assert command["Parameters"]["Reason"] == ["capacity-reservation-interruption"]
    assert command["Parameters"]["EventId"] == ["12345678-1234-1234-1234-123456789012"]
    [outcome] = result.outcomes
    assert (outcome.outcome, outcome.kind) == ("handled", "capacity-reservation-interruption")


def test_reservation_interruption_with_a_near_miss_instance_id_is_quarantined(aws) -> None:
    result = run(aws.processor(), reservation_interruption(aws.fleet_instance + " "))
    assert aws.commands() == []
    [outcome] = result.outcomes
    assert outcome.action == "quarantined"
    assert len(aws.dead_letters()) == 1


# --- Capacity Block expiration ---------------------------------------------------------------

@pytest.mark.parametrize("detail_type", construct.CAPACITY_BLOCK_WARNINGS)
def test_capacity_block_warning_checkpoints_every_fleet_instance_in_the_reservation(detail_type) -> None:
    fake = FakeAws(fleet={"i-0aaaaaaaaaaaaaaa1", "i-0aaaaaaaaaaaaaaa2", "i-0aaaaaaaaaaaaaaa5"},
                   online={"i-0aaaaaaaaaaaaaaa1", "i-0aaaaaaaaaaaaaaa2"},
                   reservations={RESERVATION: {"i-0aaaaaaaaaaaaaaa1", "i-0aaaaaaaaaaaaaaa2",
                                               "i-0bbbbbbbbbbbbbbb3"},
                                 "cr-0fffffffffffffff0": {"i-0aaaaaaaaaaaaaaa5"}})
    result = run(fake_processor(fake), capacity_block(detail_type))
    sent = sorted((c["InstanceIds"][0], c["Parameters"]["Reason"][0]) for c in fake.commands)
    # i-...3 shares the reservation but is not ours; i-...5 is ours in another one.
    assert sent == [("i-0aaaaaaaaaaaaaaa1", "capacity-block-expiring"),
                    ("i-0aaaaaaaaaaaaaaa2", "capacity-block-expiring")]
    assert fake.calls.count("DescribeInstances") == 2  # the reservation, then the batch lookup
    assert result.response() == {"batchItemFailures": []}


def test_capacity_blocks_of_one_batch_are_resolved_in_one_call() -> None:
    fake = FakeAws(fleet={"i-0aaaaaaaaaaaaaaa1", "i-0aaaaaaaaaaaaaaa2"}, online={"i-0aaaaaaaaaaaaaaa1",
                                                                                 "i-0aaaaaaaaaaaaaaa2"},
                   reservations={RESERVATION: {"i-0aaaaaaaaaaaaaaa1"},
                                 "cr-0fffffffffffffff0": {"i-0aaaaaaaaaaaaaaa2"}})
    run(fake_processor(fake), capacity_block(construct.CAPACITY_BLOCK_WARNINGS[0]),
        capacity_block(construct.CAPACITY_BLOCK_WARNINGS[1], reservation="cr-0fffffffffffffff0",
                       event_id="5d2e0b3f-8c4a-4f9b-8e7d-3a2f1c0b6d04"))
    assert len(fake.commands) == 2
    assert fake.calls.count("DescribeInstances") == 2


def test_capacity_block_without_fleet_instances_is_skipped_with_its_reason() -> None:
    fake = FakeAws(fleet=set(), online=set(), reservations={})
    result = run(fake_processor(fake), capacity_block(construct.CAPACITY_BLOCK_WARNINGS[0]))
    [outcome] = result.outcomes
    assert (outcome.outcome, outcome.kind) == ("skipped", "capacity-block-expiring")
    assert RESERVATION in outcome.reason and fake.commands == []


def test_a_failed_reservation_lookup_hands_the_record_back_once_and_the_retry_acts() -> None:
    fake = FakeAws(fleet={"i-0aaaaaaaaaaaaaaa1"}, online={"i-0aaaaaaaaaaaaaaa1"},
                   reservations={RESERVATION: {"i-0aaaaaaaaaaaaaaa1"}},
                   faults={"DescribeInstances": "access-denied"})
    processor = fake_processor(fake)
    first = run(processor, capacity_block(construct.CAPACITY_BLOCK_WARNINGS[0]))
    assert first.response() == {"batchItemFailures": [{"itemIdentifier": "msg-0"}]}
    fake.heal()
    processor.clock.now += construct.visibility_timeout_seconds(construct.DEFAULT_LAMBDA_TIMEOUT_SECONDS)
    second = run(processor, capacity_block(construct.CAPACITY_BLOCK_WARNINGS[0]))
    assert second.response() == {"batchItemFailures": []}
    assert [c["InstanceIds"] for c in fake.commands] == [["i-0aaaaaaaaaaaaaaa1"]]


def test_a_record_of_several_instances_fails_once_and_its_retry_sends_only_what_is_missing() -> None:
    fake = FakeAws(fleet={"i-0aaaaaaaaaaaaaaa1", "i-0aaaaaaaaaaaaaaa2"},
                   online={"i-0aaaaaaaaaaaaaaa1", "i-0aaaaaaaaaaaaaaa2"},
                   faults={"SendCommand": "server-error-after-first"})
    processor = fake_processor(fake)
    event = health("i-0aaaaaaaaaaaaaaa1", "i-0aaaaaaaaaaaaaaa2")
    first = run(processor, event)
    assert first.response() == {"batchItemFailures": [{"itemIdentifier": "msg-0"}]}
    fake.heal()
    processor.clock.now += construct.visibility_timeout_seconds(construct.DEFAULT_LAMBDA_TIMEOUT_SECONDS)
    second = run(processor, copy.deepcopy(event))
    assert second.response() == {"batchItemFailures": []}
    assert sorted(c["InstanceIds"][0] for c in fake.commands) == ["i-0aaaaaaaaaaaaaaa1", "i-0aaaaaaaaaaaaaaa2"]


def test_reservation_lookup_request_is_valid_for_the_ec2_api() -> None:
    """The filter names and shapes, checked by botocore against the real model."""
    ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(ec2)
    stub.add_response("describe_instances", {"Reservations": [{"Instances": [
        {"InstanceId": "i-0aaaaaaaaaaaaaaa1", "CapacityReservationId": RESERVATION},
        {"InstanceId": "i-0aaaaaaaaaaaaaaa9", "CapacityReservationId": "cr-0eeeeeeeeeeeeeee0"}]}]}, {
        "Filters": [{"Name": "capacity-reservation-id", "Values": [RESERVATION]},
                    {"Name": "tag:ml:training-fleet", "Values": [GROUP]},
                    {"Name": "instance-state-name", "Values": ["pending", "running"]}]})
    from tests.interruption_lambda import calls
    with stub:
        found = logic.instances_in_reservations(
            [RESERVATION], logic.Settings(autoscaling_group_name=GROUP, fleet_tag_key="ml:training-fleet",
                                          fleet_tag_value=GROUP, document_name=DOCUMENT),
            logic.Clients(ec2=ec2, ssm=None, autoscaling=None), calls.Deadline.after(5.0))
    assert found == {RESERVATION: ["i-0aaaaaaaaaaaaaaa1"]}
