"""Robustness of the interruption handler: mutated real events, every AWS call
failing the ways the SDK fails (issue 12).

Each example is delivered through ``handler.handler`` with faults injected
into one AWS operation, then the records it handed back are redelivered
after the visibility timeout with AWS healthy again. The expected effects
come from an oracle written from the specification (the event shapes and
the SSM document's allowed patterns, full match), not from the parser:

* nothing ever escapes the handler, and the redelivery fails nothing;
* each checkpoint the oracle expects is sent exactly once, with exactly its
  parameters, and no other command is sent;
* each lifecycle action the oracle expects is completed exactly once, and
  no other;
* each malformed record is copied to the dead-letter queue; no valid one is.

1,000 single-record payloads and 200 batches per run, derandomized.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import event as note
from hypothesis import strategies as st

from constructs_lib import interruption_handler as spec
from tests.interruption_aws import FakeClock
from tests.property_budget import examples
from tests.interruption_lambda import batch, fixture, handler, logic, quarantine, requeue

from .interruption_fake import DLQ_URL, DOCUMENT, FAULTS, GROUP, FakeAws, operations

HOOK = "ml-dev-training-gpu-terminating"
TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"
INSTANCES = {"fleet-online": "i-0aaaaaaaaaaaaaaa1", "fleet-offline": "i-0aaaaaaaaaaaaaaa2",
             "not-fleet": "i-0bbbbbbbbbbbbbbb3", "no-such-instance": "i-1ccccccccccccccc4"}
FLEET = {INSTANCES["fleet-online"], INSTANCES["fleet-offline"]}
ONLINE = {INSTANCES["fleet-online"]}
# Capacity reservations and the instances launched into them (any owner).
RESERVATIONS = {"cr-0a1b2c3d4e5f67890": {INSTANCES["fleet-online"], INSTANCES["fleet-offline"],
                                         INSTANCES["not-fleet"]},
                "cr-0ffffffffffffff01": {INSTANCES["not-fleet"]}}
FUNCTION_TIMEOUT_MS = spec.DEFAULT_LAMBDA_TIMEOUT_SECONDS * 1000
SETTINGS = dict(max_examples=examples(1000), deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- the specification ---------------------------------------------------------

INSTANCE_ID = re.compile(r"i-[0-9a-f]{8,17}")  # EC2 instance id format
EVENT_ID, HOOK_NAME, GROUP_NAME, TOKEN = (re.compile(p) for p in (
    spec.EVENT_ID_PATTERN, spec.LIFECYCLE_HOOK_NAME_PATTERN, spec.AUTOSCALING_GROUP_NAME_PATTERN,
    spec.LIFECYCLE_ACTION_TOKEN_PATTERN))
DETAIL_TYPES = {("aws.ec2", "EC2 Spot Instance Interruption Warning"): "spot-interruption",
                ("aws.ec2", "EC2 Instance Rebalance Recommendation"): "rebalance-recommendation",
                ("aws.autoscaling", "EC2 Instance-terminate Lifecycle Action"): "lifecycle-terminate",
                ("aws.ec2", spec.RESERVATION_INTERRUPTION): "capacity-reservation-interruption",
                **{("aws.ec2", d): "capacity-block-expiring" for d in spec.CAPACITY_BLOCK_WARNINGS},
                ("aws.health", spec.HEALTH_EVENT): "health-scheduled-change"}
RESERVATION_ID = re.compile(r"cr-[0-9a-f]{8,17}")  # EC2 capacity reservation id format
HEALTH_ARN = re.compile(r"arn:aws[a-z-]*:health:[a-z0-9-]*::event/EC2/[A-Za-z0-9_./-]{1,400}")
# What the Health rule matches (the handler checks it again).
HEALTH_DETAIL = {"service": ("EC2",), "eventTypeCategory": ("scheduledChange",),
                 "eventTypeCode": spec.HEALTH_EVENT_TYPE_CODES, "statusCode": spec.HEALTH_STATUS_CODES}


def _ok(value, pattern, nonempty=True) -> bool:
    return isinstance(value, str) and bool(pattern.fullmatch(value)) and (bool(value) or not nonempty)


@dataclass(frozen=True)
class Expected:
    """What one record must cause."""

    action: str  # "checkpoint", "complete", "none", "quarantine", "skip"
    key: str | None = None
    instance: str | None = None
    parameters: tuple | None = None
    token: str | None = None
    quarantine: bool = False


def _lifecycle(data: dict, event_id: str, rebalance: str) -> Expected:
    if data.get("LifecycleTransition") != TERMINATING:
        return Expected("quarantine", quarantine=True)
    hook, group, instance = (data.get(k) for k in ("LifecycleHookName", "AutoScalingGroupName",
                                                    "EC2InstanceId"))
    if not (_ok(hook, HOOK_NAME) and _ok(group, GROUP_NAME) and _ok(instance, INSTANCE_ID)):
        return Expected("quarantine", quarantine=True)
    token = data.get("LifecycleActionToken")
    token = token if _ok(token, TOKEN) else None  # unusable: acted on without it, quarantined
    key = f"lifecycle:{token}" if token else f"lifecycle-instance:{hook}:{instance}"
    if group != GROUP:
        return Expected("none", key, instance, quarantine=token is None)
    return _act("lifecycle-terminate", instance, event_id, key, rebalance,
                (hook, token, group) if token else None, quarantine=token is None)


def _act(kind: str, instance: str, event_id: str, key: str, rebalance: str, lifecycle: tuple | None,
         quarantine: bool = False) -> Expected:
    if kind == "rebalance-recommendation" and rebalance == "log-only":
        return Expected("none", key, instance, quarantine=quarantine)
    if instance in FLEET and instance in ONLINE:
        hook, token, group = lifecycle or ("", "", "")
        parameters = (kind, event_id, hook, token, group)
        return Expected("checkpoint", key, instance, parameters, quarantine=quarantine)
    if kind == "lifecycle-terminate":
        return Expected("complete", key, instance, token=lifecycle[1] if lifecycle else None,
                        quarantine=quarantine)
    return Expected("none", key, instance, quarantine=quarantine)


def _health(detail: dict, event_id: str, rebalance: str) -> list[Expected]:
    entities = detail.get("affectedEntities")
    if any(detail.get(k) not in allowed for k, allowed in HEALTH_DETAIL.items()) \
            or not _ok(detail.get("eventArn"), HEALTH_ARN) \
            or not isinstance(entities, list) or not 1 <= len(entities) <= 100 \
            or not all(isinstance(e, dict) and _ok(e.get("entityValue"), INSTANCE_ID) for e in entities):
        return [Expected("quarantine", quarantine=True)]
    instances = list(dict.fromkeys(e["entityValue"] for e in entities))
    return [_act("health-scheduled-change", i, event_id, f"health:{detail['eventArn']}:{i}", rebalance, None)
            for i in instances]


def _capacity_block(detail: dict, event_id: str, rebalance: str) -> list[Expected]:
    reservation = detail.get("capacity-reservation-id")
    if not _ok(reservation, RESERVATION_ID):
        return [Expected("quarantine", quarantine=True)]
    ours = sorted(RESERVATIONS.get(reservation, set()) & FLEET)
    return [_act("capacity-block-expiring", i, event_id, f"event:{event_id}:{i}", rebalance, None)
            for i in ours] or [Expected("none")]


def oracle(record, rebalance: str) -> list[Expected]:
    """One expectation per instance the record stands for."""
    if not isinstance(record, dict) or not isinstance(record.get("messageId"), str) \
            or not record["messageId"]:
        return [Expected("skip")]
    body = record.get("body")
    try:
        data = json.loads(body) if isinstance(body, str) else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return [Expected("quarantine", quarantine=True)]
    if "detail-type" in data or "source" in data:
        kind = DETAIL_TYPES.get((data.get("source"), data.get("detail-type"))) \
            if all(isinstance(data.get(k), str) for k in ("source", "detail-type")) else None
        detail, event_id = data.get("detail"), data.get("id")
        if kind is None or not isinstance(detail, dict) or not _ok(event_id, EVENT_ID):
            return [Expected("quarantine", quarantine=True)]
        if kind == "lifecycle-terminate":
            return [_lifecycle(detail, event_id, rebalance)]
        if kind == "health-scheduled-change":
            return _health(detail, event_id, rebalance)
        if kind == "capacity-block-expiring":
            return _capacity_block(detail, event_id, rebalance)
        instance = detail.get("instance-id")
        if not _ok(instance, INSTANCE_ID):
            return [Expected("quarantine", quarantine=True)]
        return [_act(kind, instance, event_id, f"event:{event_id}", rebalance, None)]
    if data.get("Event") == "autoscaling:TEST_NOTIFICATION":
        return [Expected("none")]
    if "LifecycleActionToken" in data or "LifecycleTransition" in data:
        if not _ok(data.get("RequestId"), EVENT_ID):
            return [Expected("quarantine", quarantine=True)]
        return [_lifecycle(data, data["RequestId"], rebalance)]
    return [Expected("quarantine", quarantine=True)]


# --- payloads: real events, mutated ----------------------------------------------

BASES = ("spot_interruption_warning", "rebalance_recommendation", "lifecycle_hook_terminating",
         "lifecycle_action_eventbridge", "capacity_reservation_interruption_warning",
         "health_instance_retirement", "capacity_block_expiration_warning", "test_notification")
HUGE = ["x" * 100_000, "é" * 70_000, "i-0aaaaaaaaaaaaaaa1" * 5000]


def _variants(value: str) -> list[str]:
    return [value, value + "\n", value + " ", " " + value, value + "\r\n", value + "\x00", value.upper(),
            value + "\u2028"]


CRITICAL = {"id", "RequestId", "instance-id", "EC2InstanceId", "LifecycleActionToken", "LifecycleHookName",
            "AutoScalingGroupName", "LifecycleTransition", "source", "detail-type", "detail", "Event",
            "capacity-reservation-id", "eventArn", "eventTypeCode", "statusCode", "service",
            "eventTypeCategory", "affectedEntities", "entityValue"}


@dataclass(frozen=True)
class NearMiss:
    """The field's own (valid) value, slightly wrong: what a lax check lets through."""

    how: str

    def apply(self, value: object) -> object:
        text = value if isinstance(value, str) else json.dumps(value)
        return {"newline": text + "\n", "crlf": text + "\r\n", "space": text + " ",
                "leading-space": " " + text, "tab": text + "\t", "upper": text.upper(),
                "nul": text + "\x00", "as-number": 12345 if text else 0,
                "as-list": [value], "doubled": text + text, "truncated": text[:-1],
                "unicode": text + "\u00e9"}[self.how]


NEAR_MISSES = [NearMiss(h) for h in ("newline", "crlf", "space", "leading-space", "tab", "upper", "nul",
                                     "as-number", "as-list", "doubled", "truncated", "unicode")]

NON_STRINGS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**15), st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
nasty = st.one_of(
    NON_STRINGS,
    st.just(""), st.text(max_size=24), st.sampled_from(HUGE),
    st.sampled_from(list(INSTANCES.values()) + [GROUP, HOOK, str(uuid.UUID(int=7))]).flatmap(
        lambda v: st.sampled_from(_variants(v))),
    st.sampled_from(["12345", "1e5", "0", "-1", "true", "null", "ïñstånce-𝔘", "i-0aaaaaaaaaaaaaaa1; reboot",
                     "x' && curl evil", TERMINATING, "autoscaling:EC2_INSTANCE_LAUNCHING", "aws.ec2",
                     "EC2 Spot Instance Interruption Warning", "other-group"]),
)


@st.composite
def bodies(draw) -> object:
    shape = draw(st.sampled_from(["real"] * 8 + ["json-non-object", "not-json", "not-a-string"]))
    if shape == "json-non-object":
        return json.dumps(draw(st.lists(st.integers(), max_size=3) | st.integers() | st.none()))
    if shape == "not-json":
        return draw(st.text(max_size=40) | st.sampled_from(["{", "NaN", "{\"a\": }", "\ud800"]))
    if shape == "not-a-string":
        return draw(NON_STRINGS)
    message = fixture(draw(st.sampled_from(BASES)))
    instance = INSTANCES[draw(st.sampled_from(["fleet-online"] * 4 + sorted(INSTANCES)))]
    fresh = str(draw(st.uuids()))
    _retarget(message, draw)
    for target in (message, message.get("detail", {})):
        if isinstance(target, dict):
            for name, value in (("instance-id", instance), ("EC2InstanceId", instance),
                                ("LifecycleActionToken", str(draw(st.uuids()))), ("id", fresh),
                                ("RequestId", fresh)):
                if name in target:
                    target[name] = value
    paths = [(k,) for k in message] + [("detail", k) for k in message.get("detail", {})] + [("extra",)]
    entities = message.get("detail", {}).get("affectedEntities", [])
    paths += [("detail", "affectedEntities", n, k) for n, e in enumerate(entities) for k in e]
    critical = [p for p in paths if p[-1] in CRITICAL]
    # Near misses of the critical fields most: the defects a lax check lets through.
    changes = st.tuples(st.sampled_from(critical) | st.sampled_from(paths),
                        st.sampled_from(["near-miss"] * 3 + ["delete", "nasty"]).flatmap(
                            lambda how: st.sampled_from(NEAR_MISSES) if how == "near-miss"
                            else st.just("<delete>") if how == "delete" else nasty))
    for path, change in [draw(changes) for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3])))]:
        target = message
        for key in path[:-1]:
            target = target.get(key) if isinstance(target, dict) \
                else target[key] if isinstance(target, list) and isinstance(key, int) and key < len(target) \
                else None
        if not isinstance(target, dict):
            continue
        if change == "<delete>":
            target.pop(path[-1], None)
        elif isinstance(change, NearMiss):
            target[path[-1]] = change.apply(target.get(path[-1]))
        else:
            target[path[-1]] = change
    return json.dumps(message, ensure_ascii=draw(st.booleans()))


def _retarget(message: dict, draw) -> None:
    """Point a Health event at 1-3 of the test's instances and a Capacity
    Block at one of its reservations (or none we know)."""
    detail = message.get("detail", {})
    if "affectedEntities" in detail:
        names = draw(st.lists(st.sampled_from(["fleet-online"] * 3 + sorted(INSTANCES)), min_size=1, max_size=3))
        detail["affectedEntities"] = [{"entityValue": INSTANCES[n], "status": "PENDING"} for n in names]
        detail["eventArn"] = detail["eventArn"].rsplit("_", 1)[0] + f"_{draw(st.integers(0, 10**6))}"
    if "capacity-reservation-id" in detail:
        detail["capacity-reservation-id"] = draw(st.sampled_from(sorted(RESERVATIONS) + ["cr-0123456789abcdef0"]))
        message["detail-type"] = draw(st.sampled_from(spec.CAPACITY_BLOCK_WARNINGS))


@st.composite
def records(draw) -> object:
    if draw(st.integers(0, 19)) == 0:
        return draw(nasty)  # not a record at all
    message_id = draw(st.sampled_from([None, "", 7, 7.0])) if draw(st.integers(0, 19)) == 0 \
        else str(draw(st.uuids()))
    record = {"messageId": message_id, "body": draw(bodies()), "receiptHandle": f"AQEB{draw(st.uuids())}",
              "attributes": {"ApproximateReceiveCount": draw(st.sampled_from(["1", "2", "5", "x"]))},
              "eventSource": "aws:sqs"}
    if draw(st.integers(0, 19)) == 0:
        record.pop("body")
    return record


faults = st.one_of(st.just({}), st.tuples(st.sampled_from(operations()), st.sampled_from(FAULTS)).map(
    lambda pair: {pair[0]: pair[1]}))
faults = st.sampled_from([True, False]).flatmap(lambda healthy: st.just({}) if healthy else faults)


# --- running and checking -------------------------------------------------------

class Context:
    def get_remaining_time_in_millis(self) -> int:
        return FUNCTION_TIMEOUT_MS


class _Metrics:
    def count(self, name: str) -> None:
        pass


def deliver(event: object, fault: dict, rebalance: str) -> tuple[FakeAws, list[dict]]:
    """Run 1 with the fault, run 2 (the redelivery of what failed) healthy."""
    aws = FakeAws(fleet=set(FLEET), online=set(ONLINE), faults=dict(fault),
                  reservations={k: set(v) for k, v in RESERVATIONS.items()})
    clock = FakeClock()
    processor = batch.Processor(
        settings=logic.Settings(autoscaling_group_name=GROUP, fleet_tag_key="ml:training-fleet",
                                fleet_tag_value=GROUP, document_name=DOCUMENT, rebalance_action=rebalance),
        clients=logic.Clients(ec2=aws, ssm=aws, autoscaling=aws), dynamodb=aws, table_name="ledger",
        metrics=_Metrics(), log=lambda _: None, quarantine=quarantine.Quarantine(aws, DLQ_URL),
        requeue=requeue.Requeue(aws, "https://sqs.us-east-1.amazonaws.com/123456789012/q", 48),
        clock=clock, sleep=clock.sleep, wall_clock=clock.wall)
    saved, handler._processor = handler._processor, processor
    try:
        first = handler.handler(event, Context())
        failed = {f["itemIdentifier"] for f in first["batchItemFailures"]}
        raw = event.get("Records") if isinstance(event, dict) else None
        sent = [r for r in raw if isinstance(r, dict) and r.get("messageId") in failed] \
            if isinstance(raw, list) else []
        assert len(failed) == len(first["batchItemFailures"]) and all(isinstance(i, str) for i in failed)
        aws.heal()
        clock.now += spec.visibility_timeout_seconds(spec.DEFAULT_LAMBDA_TIMEOUT_SECONDS)
        second = handler.handler({"Records": sent}, Context()) if sent else {"batchItemFailures": []}
        assert second == {"batchItemFailures": []}, (fault, second)
        # Every failed record with a receipt handle was made visible again sooner.
        if fault.get("ChangeMessageVisibilityBatch") is None:
            assert {r["receiptHandle"] for r in sent if isinstance(r.get("receiptHandle"), str)
                    and r["receiptHandle"]} <= set(aws.visibility)
    finally:
        handler._processor = saved
    return aws, raw if isinstance(raw, list) else []


def check(aws: FakeAws, raw: list, rebalance: str) -> None:
    expected = [(r, e) for r in raw for e in oracle(r, rebalance)]
    first_of: dict[str, Expected] = {}
    for _, e in expected:
        if e.key is not None:
            first_of.setdefault(e.key, e)  # one action per event: the first delivery's
    want_commands = sorted((e.instance, e.parameters) for e in first_of.values() if e.action == "checkpoint")
    got_commands = sorted((c["InstanceIds"][0], tuple(c["Parameters"][k][0] for k in (
        "Reason", "EventId", "LifecycleHookName", "LifecycleActionToken", "AutoScalingGroupName")))
        for c in aws.commands)
    assert got_commands == want_commands
    for command in aws.commands:
        assert command["DocumentName"] == DOCUMENT and len(command["InstanceIds"]) == 1
    want_completed = sorted((e.instance, e.token or "") for e in first_of.values() if e.action == "complete")
    got_completed = sorted((c["InstanceId"], c.get("LifecycleActionToken", "")) for c in aws.completed)
    assert got_completed == want_completed
    # Unparseable records each; a salvaged event once (its first delivery).
    want_dead = {r["messageId"] for r, e in expected
                 if e.quarantine and (e.key is None or first_of[e.key] is e)}
    got_dead = [d["Attributes"]["source_message_id"]["StringValue"] for d in aws.dead_letters]
    assert set(got_dead) == {ascii(m)[1:-1] for m in want_dead}
    assert all(d["QueueUrl"] == DLQ_URL for d in aws.dead_letters)


@settings(**SETTINGS)
@given(record=records(), fault=faults, rebalance=st.sampled_from(["checkpoint", "log-only"]))
def test_one_record_causes_exactly_its_action_whatever_fails(record, fault, rebalance) -> None:
    event = {"Records": [record]}
    aws, raw = deliver(event, fault, rebalance)
    for expected in oracle(record, rebalance):
        note(f"expected {expected.action}{' + quarantine' if expected.quarantine and expected.action != 'quarantine' else ''}")
    note(f"fault {'none' if not fault else next(iter(fault.values()))}")
    check(aws, raw, rebalance)


@settings(**{**SETTINGS, "max_examples": examples(200)})
@given(batch_records=st.lists(records(), min_size=2, max_size=6), copies=st.lists(st.integers(0, 5), max_size=3),
       fault=faults, rebalance=st.sampled_from(["checkpoint", "log-only"]))
def test_a_batch_with_duplicates_causes_each_action_once_whatever_fails(batch_records, copies, fault,
                                                                        rebalance) -> None:
    for index in copies:  # redeliveries of a record in the same batch, as SQS may do
        original = batch_records[index % len(batch_records)]
        if isinstance(original, dict):
            batch_records.append({**original, "messageId": str(uuid.UUID(int=len(batch_records)))})
    aws, raw = deliver({"Records": batch_records}, fault, rebalance)
    check(aws, raw, rebalance)


@settings(**{**SETTINGS, "max_examples": examples(200)})
@given(event=nasty | st.fixed_dictionaries({"Records": nasty}) | st.lists(records(), max_size=2))
def test_events_that_are_not_sqs_batches_change_nothing(event) -> None:
    aws, _ = deliver(event, {}, "checkpoint")
    assert not aws.commands and not aws.completed and not aws.dead_letters


@st.composite
def valid_records(draw) -> dict:
    """An unmutated real event for a reachable fleet instance: it must cause one command."""
    message = fixture(draw(st.sampled_from(BASES[:6])))
    fresh, token = str(draw(st.uuids())), str(draw(st.uuids()))
    for entity in message.get("detail", {}).get("affectedEntities", []):
        entity["entityValue"] = INSTANCES["fleet-online"]
    for target in (message, message.get("detail", {})):
        for name, value in (("instance-id", INSTANCES["fleet-online"]), ("id", fresh), ("RequestId", fresh),
                            ("EC2InstanceId", INSTANCES["fleet-online"]), ("LifecycleActionToken", token)):
            if name in target:
                target[name] = value
    return {"messageId": str(draw(st.uuids())), "body": json.dumps(message),
            "attributes": {"ApproximateReceiveCount": "1"}, "eventSource": "aws:sqs"}


@settings(**{**SETTINGS, "max_examples": examples(300)})
@given(batch_records=st.lists(valid_records(), min_size=1, max_size=4),
       fault=st.tuples(st.sampled_from(["PutItem", "SendCommand", "ListCommands", "GetItem"]),
                       st.sampled_from(FAULTS)).map(lambda pair: {pair[0]: pair[1]}))
def test_a_fault_around_send_command_never_sends_a_second_command(batch_records, fault) -> None:
    aws, raw = deliver({"Records": batch_records}, fault, "checkpoint")
    check(aws, raw, "checkpoint")
    assert len(aws.commands) == len({e.key for r in raw for e in oracle(r, "checkpoint")})
