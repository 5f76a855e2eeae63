"""Property tests: whatever arrives and whatever AWS answers, nothing escapes
and every record ends handled, skipped or failed (failed ones, and only
those, are handed back to SQS)."""

from __future__ import annotations

import json
import os

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st
from moto import mock_aws

from tests.interruption_aws import GROUP, HOOK, TABLE, LambdaContext
from tests.interruption_lambda import batch, fixture, logic

EXAMPLES = 250
INSTANCES = ["i-0b662ef9931388ba0", "i-0a1b2c3d4e5f60718", "i-12345678"]
AWS_FAILURES = [
    ("Throttling", "Rate exceeded"),
    ("RequestLimitExceeded", "Request limit exceeded."),
    ("InvalidInstanceId", "Instances not in a valid state"),
    ("ValidationError", "No active Lifecycle Action found with token"),
    ("AccessDeniedException", "not authorized"),
    ("InternalError", "We encountered an internal error"),
]


class ScriptedAws:
    """EC2, SSM and Auto Scaling that answer from a hypothesis-drawn script."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data
        self.calls: list[str] = []

    def _maybe_fail(self, operation: str) -> None:
        self.calls.append(operation)
        outcome = self.data.draw(st.sampled_from(["ok", "ok", "ok", "client-error", "network"]),
                                 label=f"{operation} outcome")
        if outcome == "client-error":
            code, message = self.data.draw(st.sampled_from(AWS_FAILURES), label=f"{operation} error")
            raise ClientError({"Error": {"Code": code, "Message": message}}, operation)
        if outcome == "network":
            raise EndpointConnectionError(endpoint_url="https://ssm.us-east-1.amazonaws.com")

    def describe_instances(self, InstanceIds):  # noqa: N803 - boto3 names
        self._maybe_fail("DescribeInstances")
        tagged = self.data.draw(st.booleans(), label="fleet tag")
        tags = [{"Key": "ml:training-fleet", "Value": GROUP}] if tagged else []
        return {"Reservations": [{"Instances": [{"InstanceId": InstanceIds[0], "Tags": tags}]}]}

    def describe_instance_information(self, Filters):  # noqa: N803
        self._maybe_fail("DescribeInstanceInformation")
        status = self.data.draw(st.sampled_from(["Online", "ConnectionLost", None]), label="ping")
        return {"InstanceInformationList": [] if status is None else [
            {"InstanceId": Filters[0]["Values"][0], "PingStatus": status}]}

    def send_command(self, **params):
        self._maybe_fail("SendCommand")
        return {"Command": {"CommandId": "0b9a1f2e-3c4d-5e6f-7a8b-9c0d1e2f3a4b"}}

    def complete_lifecycle_action(self, **params):
        self._maybe_fail("CompleteLifecycleAction")
        return {}


def _json_values():
    leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
    return st.recursive(leaves, lambda children: st.lists(children, max_size=4)
                        | st.dictionaries(st.text(max_size=12), children, max_size=4), max_leaves=12)


def _mutated(base: dict) -> st.SearchStrategy:
    """A real-shaped message with some fields replaced, removed or nested wrong."""
    def mutate(draw_data):
        message, changes = draw_data
        message = json.loads(json.dumps(message))
        for path, value in changes:
            target = message
            for key in path[:-1]:
                target = target.get(key) if isinstance(target, dict) else None
            if isinstance(target, dict):
                if value == "<delete>":
                    target.pop(path[-1], None)
                else:
                    target[path[-1]] = value
        return message

    paths = [(k,) for k in base] + [("detail", k) for k in base.get("detail", {})]
    change = st.tuples(st.sampled_from(paths),
                       st.just("<delete>") | _json_values() | st.sampled_from(INSTANCES)
                       | st.sampled_from(["", "x' ; reboot", GROUP, HOOK, "71514b9d-6a40-4b26-8523-05e7ee35fa4c"]))
    return st.tuples(st.just(base), st.lists(change, max_size=3)).map(mutate)


_BASES = [fixture(name) for name in ("spot_interruption_warning", "rebalance_recommendation",
                                     "lifecycle_hook_terminating", "lifecycle_action_eventbridge",
                                     "test_notification")]
bodies = (
    st.sampled_from(_BASES).flatmap(_mutated).map(json.dumps)
    | st.sampled_from(_BASES).map(json.dumps)
    | _json_values().map(json.dumps)
    | st.text(max_size=60)
)
records = st.fixed_dictionaries(
    {"messageId": st.uuids().map(str), "body": bodies},
    optional={"attributes": st.just({"ApproximateReceiveCount": "1"})},
) | _json_values()
events = st.lists(records, max_size=6).map(lambda rs: {"Records": rs}) | _json_values()


@pytest.fixture(scope="module")
def dynamodb():
    previous = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                               "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST",
                            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
        yield client
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class _Metrics:
    def count(self, name: str) -> None:
        pass


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
@given(event=events, data=st.data(), rebalance=st.sampled_from(["checkpoint", "log-only"]))
def test_every_record_is_handled_skipped_or_failed_and_nothing_escapes(dynamodb, event, data, rebalance) -> None:
    # Each example starts from an empty idempotency table: hypothesis replays
    # examples, and a remembered decision would change what gets drawn.
    for item in dynamodb.scan(TableName=TABLE, ProjectionExpression="id")["Items"]:
        dynamodb.delete_item(TableName=TABLE, Key={"id": item["id"]})
    scripted = ScriptedAws(data)
    log: list = []
    processor = batch.Processor(
        settings=logic.Settings(autoscaling_group_name=GROUP, fleet_tag_key="ml:training-fleet",
                                fleet_tag_value=GROUP, document_name="doc", rebalance_action=rebalance),
        clients=logic.Clients(ec2=scripted, ssm=scripted, autoscaling=scripted),
        dynamodb=dynamodb, table_name=TABLE, metrics=_Metrics(), log=log.append)

    result = processor.process_batch(event, LambdaContext())  # must not raise

    raw = event.get("Records") if isinstance(event, dict) else None
    expected = len(raw) if isinstance(raw, list) else 1
    assert len(result.outcomes) == expected
    assert log == result.outcomes  # one log line per decision
    assert {o.outcome for o in result.outcomes} <= {"handled", "skipped", "failed"}
    failed_ids = [o.message_id for o in result.outcomes if o.outcome == "failed"]
    assert result.response() == {"batchItemFailures": [{"itemIdentifier": i} for i in failed_ids]}
    for outcome in result.outcomes:
        note_event(f"record {outcome.outcome}")  # shown by --hypothesis-show-statistics
        if outcome.outcome == "failed":
            # Only parsed interruptions are retried; nonsense never is.
            assert outcome.kind in ("spot-interruption", "rebalance-recommendation", "lifecycle-terminate")
        if outcome.message_id is None:
            assert outcome.outcome == "skipped"


@settings(max_examples=EXAMPLES, deadline=None)
@given(body=bodies)
def test_parser_either_parses_or_rejects_with_a_reason(body) -> None:
    from tests.interruption_lambda import messages
    try:
        parsed = messages.parse_body(body)
    except messages.MalformedMessage as error:
        assert str(error)
        return
    if isinstance(parsed, messages.Interruption):
        request = parsed.as_request()
        assert messages.Interruption.from_request(request) == parsed
        # Everything that reaches the SSM document matches its allowed patterns.
        import re
        assert re.match(messages.INSTANCE_ID_PATTERN, parsed.instance_id)
        assert re.match(messages.EVENT_ID_PATTERN, parsed.event_id)
