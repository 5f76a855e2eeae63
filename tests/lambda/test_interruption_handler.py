"""Interruption handler decisions on real-shaped messages, with the exact AWS calls."""

from __future__ import annotations

import json

import pytest
from botocore.stub import Stubber

from tests.interruption_lambda import batch, fixture, handler, messages, sqs_event, sqs_record, telemetry
from tests.interruption_aws import (DOCUMENT, GROUP, HOOK, LambdaContext, short_circuit)
from tests.interruption_lambda import batch  # noqa: F811
from tests.interruption_aws import aws  # noqa: F401  (the fixture)

TOKEN = "71514b9d-6a40-4b26-8523-05e7ee35fa4c"


def spot(instance_id: str, event_id: str = "1e5527d7-bb36-4607-3370-4164db56a40e") -> dict:
    event = fixture("spot_interruption_warning")
    event["id"] = event_id
    event["detail"]["instance-id"] = instance_id
    event["resources"] = [f"arn:aws:ec2:us-east-1a:instance/{instance_id}"]
    return event


def rebalance(instance_id: str) -> dict:
    event = fixture("rebalance_recommendation")
    event["detail"]["instance-id"] = instance_id
    return event


def hook_message(instance_id: str, token: str = TOKEN, group: str = GROUP) -> dict:
    message = fixture("lifecycle_hook_terminating")
    message.update(EC2InstanceId=instance_id, LifecycleActionToken=token, AutoScalingGroupName=group)
    return message


def lifecycle_event(instance_id: str, token: str = TOKEN) -> dict:
    event = fixture("lifecycle_action_eventbridge")
    event["detail"].update(EC2InstanceId=instance_id, LifecycleActionToken=token)
    return event


def run(aws, *bodies, processor=None, message_ids=None):
    ids = message_ids or [f"msg-{n}" for n in range(len(bodies))]
    event = sqs_event(*(sqs_record(body, message_id=i) for body, i in zip(bodies, ids)))
    return (processor or aws.processor()).process_batch(event, LambdaContext())


def checkpoint_parameters(reason: str, event_id: str, *, token: str = "", hook: str = "",
                          group: str = "") -> dict:
    return {"Reason": [reason], "EventId": [event_id], "LifecycleHookName": [hook],
            "LifecycleActionToken": [token], "AutoScalingGroupName": [group]}


# --- spot interruption warning -------------------------------------------------

def test_spot_warning_for_a_fleet_instance_sends_one_checkpoint_command(aws) -> None:
    result = run(aws, spot(aws.fleet_instance))
    [command] = aws.commands()
    assert command["DocumentName"] == DOCUMENT
    assert command["InstanceIds"] == [aws.fleet_instance]
    assert command["Parameters"] == checkpoint_parameters(
        "spot-interruption", "1e5527d7-bb36-4607-3370-4164db56a40e")
    assert command["TimeoutSeconds"] == 60
    assert command["Comment"] == "checkpoint: spot-interruption 1e5527d7-bb36-4607-3370-4164db56a40e"
    [outcome] = result.outcomes
    assert (outcome.outcome, outcome.action, outcome.instance_id, outcome.kind) == (
        "handled", "checkpoint-requested", aws.fleet_instance, "spot-interruption")
    assert result.response() == {"batchItemFailures": []}
    assert aws.metrics.counts == {"CheckpointsRequested": 1}
    aws.autoscaling_stub.assert_no_pending_responses()


def test_spot_warning_for_an_instance_outside_the_fleet_is_skipped_without_calls(aws) -> None:
    result = run(aws, spot(aws.other_instance))
    assert aws.commands() == []
    [outcome] = result.outcomes
    assert (outcome.outcome, outcome.reason) == ("skipped", "not-a-fleet-instance")


def test_spot_warning_for_an_instance_that_no_longer_exists_is_skipped(aws) -> None:
    result = run(aws, spot("i-0123456789abcdef0"))
    assert aws.commands() == []
    assert result.outcomes[0].reason == "not-a-fleet-instance"


def test_spot_warning_for_a_fleet_instance_ssm_cannot_reach_is_skipped(aws) -> None:
    aws.ssm_online.clear()
    aws.ssm_connection_lost.add(aws.fleet_instance)
    result = run(aws, spot(aws.fleet_instance))
    assert aws.commands() == []
    assert (result.outcomes[0].outcome, result.outcomes[0].reason) == ("skipped", "not-reachable-by-ssm")


# --- rebalance recommendation --------------------------------------------------

def test_rebalance_recommendation_checkpoints_proactively_by_default(aws) -> None:
    run(aws, rebalance(aws.fleet_instance))
    [command] = aws.commands()
    assert command["Parameters"] == checkpoint_parameters(
        "rebalance-recommendation", "5e2fd1b4-5e1c-4c1b-9bd3-0ef1a5b8f2c9")


def test_rebalance_recommendation_is_only_logged_when_configured_log_only(aws) -> None:
    result = run(aws, rebalance(aws.fleet_instance),
                 processor=aws.processor(rebalance_action="log-only"))
    assert aws.commands() == []
    [outcome] = result.outcomes
    assert (outcome.outcome, outcome.reason) == ("skipped", "rebalance-log-only")
    assert aws.log == [outcome]


# --- termination lifecycle action ----------------------------------------------

@pytest.mark.parametrize("shape", [hook_message, lifecycle_event], ids=["sqs-hook", "eventbridge"])
def test_lifecycle_action_of_a_reachable_fleet_instance_hands_the_token_to_the_agent(aws, shape) -> None:
    message = shape(aws.fleet_instance)
    result = run(aws, message)

    event_id = message.get("RequestId") or message["id"]
    [command] = aws.commands()
    assert command["InstanceIds"] == [aws.fleet_instance]
    assert command["Parameters"] == checkpoint_parameters(
        "lifecycle-terminate", event_id, token=TOKEN, hook=HOOK, group=GROUP)
    # The node agent completes the action after its upload; not the Lambda.
    aws.autoscaling_stub.assert_no_pending_responses()
    assert result.outcomes[0].action == "checkpoint-requested"


def test_lifecycle_action_of_an_instance_outside_the_fleet_is_completed_at_once(aws) -> None:
    aws.expect_complete(aws.other_instance, TOKEN)
    result = run(aws, hook_message(aws.other_instance))
    aws.autoscaling_stub.assert_no_pending_responses()
    assert aws.commands() == []
    [outcome] = result.outcomes
    assert (outcome.outcome, outcome.action, outcome.reason) == (
        "handled", "lifecycle-action-completed", "not-a-fleet-instance")
    assert aws.metrics.counts == {"LifecycleActionsCompleted": 1}


@pytest.mark.parametrize("registered", [False, True], ids=["unregistered", "connection-lost"])
def test_lifecycle_action_of_a_fleet_instance_ssm_cannot_reach_is_completed_at_once(aws, registered) -> None:
    aws.ssm_online.clear()
    if registered:
        aws.ssm_connection_lost.add(aws.fleet_instance)
    aws.expect_complete(aws.fleet_instance, TOKEN)
    result = run(aws, hook_message(aws.fleet_instance))
    aws.autoscaling_stub.assert_no_pending_responses()
    assert aws.commands() == []
    assert result.outcomes[0].reason == "not-reachable-by-ssm"


def test_lifecycle_action_is_completed_when_send_command_says_the_instance_is_invalid(aws) -> None:
    ssm_stub = Stubber(aws.ssm)
    ssm_stub.add_response("describe_instance_information", {"InstanceInformationList": [
        {"InstanceId": aws.fleet_instance, "PingStatus": "Online"}]},
        {"Filters": [{"Key": "InstanceIds", "Values": [aws.fleet_instance]}], "MaxResults": 50})
    ssm_stub.add_client_error("send_command", "InvalidInstanceId",
                              "Instances [[i-0b662ef9931388ba0]] not in a valid state for account")
    aws.expect_complete(aws.fleet_instance, TOKEN)
    with ssm_stub:
        result = run(aws, hook_message(aws.fleet_instance))
    ssm_stub.assert_no_pending_responses()
    aws.autoscaling_stub.assert_no_pending_responses()
    assert (result.outcomes[0].action, result.outcomes[0].reason) == (
        "lifecycle-action-completed", "not-reachable-by-ssm")


def test_expired_lifecycle_token_is_terminal_not_retried(aws) -> None:
    aws.autoscaling_stub.add_client_error(
        "complete_lifecycle_action", "ValidationError",
        f"No active Lifecycle Action found with token {TOKEN}", http_status_code=400)
    result = run(aws, hook_message(aws.other_instance))
    aws.autoscaling_stub.assert_no_pending_responses()
    assert result.response() == {"batchItemFailures": []}
    assert result.outcomes[0].outcome == "handled"
    assert "already ended" in result.outcomes[0].reason


def test_lifecycle_action_of_another_group_is_left_alone(aws) -> None:
    result = run(aws, hook_message(aws.fleet_instance, group="someone-elses-group"))
    assert aws.commands() == []
    aws.autoscaling_stub.assert_no_pending_responses()
    assert result.outcomes[0].reason == "lifecycle-action-of-another-group"


def test_test_notification_is_acknowledged_and_skipped(aws) -> None:
    result = run(aws, fixture("test_notification"))
    assert aws.commands() == []
    [outcome] = result.outcomes
    assert (outcome.outcome, outcome.reason) == ("skipped", "test-notification")
    assert result.response() == {"batchItemFailures": []}


# --- errors ----------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    "not json",
    "[1, 2]",
    json.dumps({"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification",
                "id": "a", "detail": {"instance-id": "i-0b662ef9931388ba0", "state": "stopping"}}),
    json.dumps({"source": "aws.ec2", "detail-type": "EC2 Spot Instance Interruption Warning",
                "id": "b", "detail": {"instance-id": "i-0b662ef9931388ba0; reboot"}}),
    json.dumps({**fixture("lifecycle_hook_terminating"),
                "LifecycleTransition": "autoscaling:EC2_INSTANCE_LAUNCHING"}),
    json.dumps({**fixture("lifecycle_hook_terminating"), "LifecycleHookName": "x' && curl evil"}),
], ids=["not-json", "array", "other-detail-type", "injected-instance-id", "launching", "injected-hook"])
def test_malformed_or_unknown_messages_are_quarantined_in_the_dead_letter_queue(aws, body) -> None:
    result = run(aws, body, message_ids=["bad-1"])
    assert aws.commands() == []
    [outcome] = result.outcomes
    assert (outcome.message_id, outcome.outcome, outcome.action) == ("bad-1", "skipped", "quarantined")
    assert outcome.reason.startswith("malformed: ")
    assert result.response() == {"batchItemFailures": []}
    assert aws.metrics.counts == {"MalformedMessages": 1}
    [dead] = aws.dead_letters()
    assert dead["Body"] == body
    assert dead["MessageAttributes"]["source_message_id"]["StringValue"] == "bad-1"
    assert dead["MessageAttributes"]["reason"]["StringValue"].startswith("malformed: ")


def test_a_malformed_message_the_dead_letter_queue_refuses_is_failed_back_to_sqs(aws) -> None:
    """Never nowhere: if the copy fails, SQS's redrive policy moves it later."""
    sqs_stub = Stubber(aws.sqs)
    sqs_stub.add_client_error("send_message", "AccessDenied", "not authorized", http_status_code=403)
    with sqs_stub:
        result = run(aws, "not json", message_ids=["bad-1"])
    assert result.response() == {"batchItemFailures": [{"itemIdentifier": "bad-1"}]}
    assert "sqs:SendMessage" in result.outcomes[0].reason


def test_a_single_throttle_is_retried_within_the_invocation(aws) -> None:
    ec2_stub = Stubber(aws.ec2)
    ec2_stub.add_client_error("describe_instances", "RequestLimitExceeded", "Request limit exceeded.",
                              http_status_code=503)
    real = aws.ec2.describe_instances
    ec2_stub.activate()
    calls: list[dict] = []

    def first_throttled_then_real(**params):
        calls.append(params)
        if len(calls) == 1:
            return real(**params)  # the stub answers the first call with the throttle
        ec2_stub.deactivate()
        return real(**params)

    aws.ec2.describe_instances = first_throttled_then_real
    result = run(aws, spot(aws.fleet_instance), fixture("test_notification"),
                 message_ids=["throttled", "fine"])
    assert result.response() == {"batchItemFailures": []}
    assert [o.action for o in result.outcomes] == ["checkpoint-requested", "none"]
    assert len(aws.commands()) == 1
    assert len(aws.clock.slept) == 1 and 0 <= aws.clock.slept[0] <= 0.1
    assert result.stats.throttles == 1


def test_persistent_throttling_fails_only_that_record_before_the_deadline(aws) -> None:
    aws.autoscaling_stub.deactivate()
    autoscaling_stub = Stubber(aws.autoscaling)
    for _ in range(200):
        autoscaling_stub.add_client_error("complete_lifecycle_action", "Throttling", "Rate exceeded",
                                          http_status_code=400)
    with autoscaling_stub:
        result = run(aws, hook_message(aws.other_instance), spot(aws.fleet_instance),
                     message_ids=["throttled", "fine"])
    assert result.response() == {"batchItemFailures": [{"itemIdentifier": "throttled"}]}
    assert "Throttling" in result.outcomes[0].reason
    assert result.outcomes[1].action == "checkpoint-requested"
    # Retried until the deadline (the context's remaining time less the margin), not beyond.
    budget = LambdaContext().get_remaining_time_in_millis() / 1000 - batch.SAFETY_MARGIN_SECONDS
    assert budget - 2.0 <= sum(aws.clock.slept) <= budget
    aws.autoscaling_stub.activate()


def test_throttled_lifecycle_completion_is_retried_then_completed_once(aws) -> None:
    aws.autoscaling_stub.add_client_error("complete_lifecycle_action", "Throttling", "Rate exceeded",
                                          http_status_code=400)
    aws.expect_complete(aws.other_instance, TOKEN)
    first = run(aws, hook_message(aws.other_instance), message_ids=["m"])
    assert first.response() == {"batchItemFailures": []}
    assert first.outcomes[0].action == "lifecycle-action-completed"
    aws.autoscaling_stub.assert_no_pending_responses()


def test_a_record_failed_at_its_deadline_is_acted_on_by_the_redelivery(aws) -> None:
    aws.autoscaling_stub.add_client_error("complete_lifecycle_action", "Throttling", "Rate exceeded",
                                          http_status_code=400)
    first = run(aws, hook_message(aws.other_instance), message_ids=["m"])  # stub runs dry: fails
    assert first.response() == {"batchItemFailures": [{"itemIdentifier": "m"}]}
    aws.clock.now += 60  # the queue's visibility timeout: the first attempt's lease is over
    aws.expect_complete(aws.other_instance, TOKEN)
    second = run(aws, hook_message(aws.other_instance), message_ids=["m"])
    assert second.response() == {"batchItemFailures": []}
    aws.autoscaling_stub.assert_no_pending_responses()


def test_a_delivery_racing_an_in_progress_one_is_retried_not_doubled(aws) -> None:
    """Two invocations with the same event at once: the second sees the
    idempotency record in progress and hands its record back to SQS."""
    processor = aws.processor()
    raced: list = []

    def send_while_racing(params: dict):
        raced.append(run(aws, spot(aws.fleet_instance), processor=processor, message_ids=["dup"]))
        return 200, {"Command": {"CommandId": "e5d2c1b0-1111-2222-3333-444455556666",
                                 "DocumentName": params["DocumentName"]}}

    short_circuit(aws.ssm, "SendCommand", send_while_racing)
    first = run(aws, spot(aws.fleet_instance), processor=processor, message_ids=["orig"])

    assert first.response() == {"batchItemFailures": []}
    [racing] = raced
    assert racing.response() == {"batchItemFailures": [{"itemIdentifier": "dup"}]}
    assert "being handled right now" in racing.outcomes[0].reason


# --- duplicates ------------------------------------------------------------------

@pytest.mark.parametrize("copies", [2, 10])
def test_duplicate_spot_warnings_give_exactly_one_checkpoint_command(aws, copies) -> None:
    processor = aws.processor()
    in_one_batch = run(aws, *[spot(aws.fleet_instance)] * copies, processor=processor)
    later = run(aws, spot(aws.fleet_instance), processor=processor, message_ids=["redelivered"])

    assert len(aws.commands()) == 1
    outcomes = in_one_batch.outcomes + later.outcomes
    assert [o.action for o in outcomes].count("checkpoint-requested") == 1
    assert all(o.outcome in ("handled", "skipped") for o in outcomes)
    assert sum(o.reason.startswith("duplicate of message msg-0") for o in outcomes) == copies
    assert aws.metrics.counts == {"CheckpointsRequested": 1, "DuplicateDeliveries": copies}


@pytest.mark.parametrize("copies", [2, 10])
def test_duplicate_lifecycle_actions_give_exactly_one_completion(aws, copies) -> None:
    aws.expect_complete(aws.other_instance, TOKEN)  # exactly one: a second call would fail the stub
    processor = aws.processor()
    bodies = [hook_message(aws.other_instance), lifecycle_event(aws.other_instance)] * (copies // 2)
    result = run(aws, *bodies, processor=processor)

    aws.autoscaling_stub.assert_no_pending_responses()
    assert result.response() == {"batchItemFailures": []}
    assert [o.action for o in result.outcomes].count("lifecycle-action-completed") == 1
    assert aws.metrics.counts["LifecycleActionsCompleted"] == 1


@pytest.mark.parametrize("copies", [2, 10])
def test_duplicate_lifecycle_actions_of_a_fleet_instance_give_exactly_one_command(aws, copies) -> None:
    result = run(aws, *[hook_message(aws.fleet_instance)] * copies)
    assert len(aws.commands()) == 1
    aws.autoscaling_stub.assert_no_pending_responses()
    assert result.response() == {"batchItemFailures": []}


def test_distinct_events_for_one_instance_each_get_their_command(aws) -> None:
    """A spot warning and then the hook of the same instance: the agent gets
    both (it does not re-signal the trainer, CONTRACT.md), and only the
    second carries the token it must complete."""
    run(aws, spot(aws.fleet_instance), hook_message(aws.fleet_instance))
    reasons = sorted(c["Parameters"]["Reason"][0] for c in aws.commands())
    assert reasons == ["lifecycle-terminate", "spot-interruption"]


# --- the Lambda entry point ------------------------------------------------------

@pytest.mark.parametrize("event", [None, [], "x", {}, {"Records": "x"}, {"Records": [None, 3]}])
def test_handler_never_raises_on_a_nonsense_event(aws, monkeypatch, event) -> None:
    monkeypatch.setattr(handler, "_processor", aws.processor())
    assert handler.handler(event, LambdaContext()) == {"batchItemFailures": []}


def test_handler_hands_every_record_back_when_it_cannot_even_start(monkeypatch) -> None:
    monkeypatch.setattr(handler, "_processor", None)
    for name in ("AUTOSCALING_GROUP_NAME", "IDEMPOTENCY_TABLE_NAME"):
        monkeypatch.delenv(name, raising=False)
    event = sqs_event(sqs_record("{}", message_id="a"), sqs_record("{}", message_id="b"))
    assert handler.handler(event, LambdaContext()) == {
        "batchItemFailures": [{"itemIdentifier": "a"}, {"itemIdentifier": "b"}]}


def test_handler_logs_one_structured_line_per_decision_and_emits_metrics(aws, monkeypatch, capsys) -> None:
    monkeypatch.setattr(handler, "_processor", None)
    monkeypatch.setattr(handler, "build_processor", lambda: batch.Processor(
        settings=aws.processor().settings, clients=aws.processor().clients, dynamodb=aws.dynamodb,
        table_name="interruption-idempotency", metrics=handler.metrics,
        log=handler.log_outcome, quarantine=aws.processor().quarantine, requeue=aws.processor().requeue))
    event = sqs_event(sqs_record(spot(aws.fleet_instance), message_id="one"),
                      sqs_record("garbage", message_id="two"))
    capsys.readouterr()
    assert handler.handler(event, LambdaContext()) == {"batchItemFailures": []}

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    decisions = [line for line in lines if line.get("message") == "interruption decision"]
    assert [(d["message_id"], d["outcome"], d["action"], d["level"]) for d in decisions] == [
        ("one", "handled", "checkpoint-requested", "INFO"), ("two", "skipped", "quarantined", "INFO")]
    assert decisions[0]["instance_id"] == aws.fleet_instance
    assert decisions[0]["event_kind"] == "spot-interruption"
    assert all(d["service"] == telemetry.SERVICE_NAME for d in decisions)
    assert "instance_id" not in decisions[1]  # None fields are left out, as Powertools did
    [emf] = [line for line in lines if "_aws" in line]
    [directive] = emf["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == telemetry.METRICS_NAMESPACE
    assert directive["Dimensions"] == [["service"]] and emf["service"] == telemetry.SERVICE_NAME
    assert {m["Name"]: m["Unit"] for m in directive["Metrics"]} == {
        "CheckpointsRequested": "Count", "MalformedMessages": "Count"}
    assert emf["CheckpointsRequested"] == 1 and emf["MalformedMessages"] == 1
    assert isinstance(emf["_aws"]["Timestamp"], int)


def test_a_failed_decision_is_a_warning_line(capsys) -> None:
    capsys.readouterr()
    handler.log_outcome(batch.RecordOutcome("m-1", "failed", "retry", "retry: throttled",
                                            "i-0123456789abcdef0", "spot-interruption"))
    [line] = [json.loads(out) for out in capsys.readouterr().out.splitlines()]
    assert line["level"] == "WARNING" and line["message"] == "interruption decision"
    assert (line["message_id"], line["outcome"], line["reason"]) == ("m-1", "failed", "retry: throttled")
    assert line["location"].startswith("log_outcome:")


def test_a_batch_that_cannot_start_logs_the_traceback_and_still_flushes_its_counts(monkeypatch, capsys) -> None:
    def broken() -> None:
        raise RuntimeError("no settings")

    monkeypatch.setattr(handler, "_processor", None)
    monkeypatch.setattr(handler, "build_processor", broken)
    handler.metrics.count("RecordsFailed", 2)  # counted before the failure
    capsys.readouterr()
    event = sqs_event(sqs_record("{}", message_id="a"))
    assert handler.handler(event, LambdaContext()) == {"batchItemFailures": [{"itemIdentifier": "a"}]}

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    [error] = [line for line in lines if line.get("level") == "ERROR"]
    assert error["exception_name"] == "RuntimeError"
    assert error["exception"].startswith("Traceback (most recent call last):")
    assert error["exception"].endswith("RuntimeError: no settings")
    [emf] = [line for line in lines if "_aws" in line]
    assert emf["RecordsFailed"] == 2
    handler.handler(event, LambdaContext())
    assert not [line for line in capsys.readouterr().out.splitlines() if "_aws" in line]


def test_emf_lines_stay_within_cloudwatchs_100_metrics_per_directive() -> None:
    lines: list[str] = []
    counts = telemetry.CountMetrics(lines.append, clock=lambda: 1_700_000_000.5)
    names = [f"Metric{i:03d}" for i in range(telemetry.MAX_METRICS_PER_LINE + 1)]
    for name in names:
        counts.count(name)
    counts.flush()
    emfs = [json.loads(line) for line in lines]
    assert [len(e["_aws"]["CloudWatchMetrics"][0]["Metrics"]) for e in emfs] == [
        telemetry.MAX_METRICS_PER_LINE, 1]
    assert sorted(n for e in emfs for n in e if n.startswith("Metric")) == names
    assert {e["_aws"]["Timestamp"] for e in emfs} == {1_700_000_000_500}


def test_build_processor_reads_its_settings_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    processor = handler.build_processor({
        "AUTOSCALING_GROUP_NAME": GROUP, "FLEET_TAG_KEY": "ml:training-fleet", "FLEET_TAG_VALUE": GROUP,
        "CHECKPOINT_DOCUMENT_NAME": DOCUMENT, "IDEMPOTENCY_TABLE_NAME": "t",
        "REBALANCE_ACTION": "log-only", "COMMAND_DELIVERY_TIMEOUT_SECONDS": "45",
        "DEAD_LETTER_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/dlq",
        "QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/q",
        "QUEUE_VISIBILITY_TIMEOUT_SECONDS": "48"})
    assert processor.settings.rebalance_action == "log-only"
    assert processor.settings.command_delivery_timeout_seconds == 45


# --- the seam with the SSM document ----------------------------------------------

def test_parsers_use_the_documents_allowed_patterns() -> None:
    from constructs_lib import interruption_handler as construct
    assert messages.EVENT_ID_PATTERN == construct.EVENT_ID_PATTERN
    assert messages.LIFECYCLE_HOOK_NAME_PATTERN == construct.LIFECYCLE_HOOK_NAME_PATTERN
    assert messages.LIFECYCLE_ACTION_TOKEN_PATTERN == construct.LIFECYCLE_ACTION_TOKEN_PATTERN
    assert messages.AUTOSCALING_GROUP_NAME_PATTERN == construct.AUTOSCALING_GROUP_NAME_PATTERN
    import re
    assert all(re.match(construct.REASON_PATTERN, kind) for kind in messages.KINDS)


def test_idempotency_key_is_the_token_for_lifecycle_actions_and_the_event_id_otherwise() -> None:
    hook = messages.parse_body(json.dumps(hook_message("i-0b662ef9931388ba0")))
    bridged = messages.parse_body(json.dumps(lifecycle_event("i-0b662ef9931388ba0")))
    warning = messages.parse_body(json.dumps(spot("i-0b662ef9931388ba0")))
    assert hook.idempotency_key == bridged.idempotency_key == f"lifecycle:{TOKEN}"
    assert warning.idempotency_key == "event:1e5527d7-bb36-4607-3370-4164db56a40e"


# --- defects of issue 12 ----------------------------------------------------------

@pytest.mark.parametrize("token", ["not-a-uuid", "71514B9D6A404B26852305E7EE35FA4C", "",
                                   TOKEN + "\n", 12345], ids=["word", "no-dashes", "empty", "newline", "number"])
def test_lifecycle_message_with_an_unusable_token_is_acted_on_and_quarantined(aws, token) -> None:
    message = hook_message(aws.fleet_instance)
    message["LifecycleActionToken"] = token
    result = run(aws, message, message_ids=["odd-token"])

    [command] = aws.commands()
    assert command["InstanceIds"] == [aws.fleet_instance]
    # Checkpointed like a spot notice: the agent cannot complete without a token.
    assert command["Parameters"] == checkpoint_parameters("lifecycle-terminate", message["RequestId"])
    assert result.response() == {"batchItemFailures": []}
    assert result.outcomes[0].action == "checkpoint-requested"
    [dead] = aws.dead_letters()
    assert json.loads(dead["Body"]) == message
    assert "without its token" in dead["MessageAttributes"]["reason"]["StringValue"]
    assert aws.metrics.counts["MalformedMessages"] == 1


def test_unreachable_instance_with_an_unusable_token_is_completed_by_instance_id(aws) -> None:
    message = hook_message(aws.other_instance)
    message["LifecycleActionToken"] = "not-a-uuid"
    aws.autoscaling_stub.add_response("complete_lifecycle_action", {}, {
        "LifecycleHookName": HOOK, "AutoScalingGroupName": GROUP,
        "LifecycleActionResult": "CONTINUE", "InstanceId": aws.other_instance})
    result = run(aws, message)
    aws.autoscaling_stub.assert_no_pending_responses()
    assert result.outcomes[0].action == "lifecycle-action-completed"
    assert len(aws.dead_letters()) == 1


@pytest.mark.parametrize("field,value", [
    ("EC2InstanceId", "{instance}\n"), ("RequestId", "a1b2c3d4-0000-1111-2222-333344445555\n"),
    ("LifecycleHookName", HOOK + "\n"), ("AutoScalingGroupName", GROUP + "\n"),
    ("EC2InstanceId", " {instance}"), ("EC2InstanceId", "{instance}\r\n"),
])
def test_no_string_with_a_trailing_newline_or_space_reaches_aws(aws, field, value) -> None:
    message = hook_message(aws.fleet_instance)
    message[field] = value.format(instance=aws.fleet_instance)
    result = run(aws, message)
    for command in aws.commands():
        values = [command["DocumentName"], *command["InstanceIds"], command["Comment"],
                  *(v for vs in command["Parameters"].values() for v in vs)]
        assert not any(v != v.strip() for v in values), command
    aws.autoscaling_stub.assert_no_pending_responses()  # no CompleteLifecycleAction either
    assert result.response() == {"batchItemFailures": []}


def test_spot_warning_with_a_trailing_newline_in_the_instance_id_is_quarantined(aws) -> None:
    result = run(aws, spot(aws.fleet_instance + "\n"))
    assert aws.commands() == []
    assert result.outcomes[0].action == "quarantined"


def test_a_failed_save_after_send_command_does_not_send_a_second_command(aws) -> None:
    """SendCommand has no client token: the redelivery finds the first command in
    ListCommands (the ledger says the first attempt never finished) and sends none."""
    from botocore.exceptions import ClientError
    real_put = aws.dynamodb.put_item

    def put_item(**params):
        if params["Item"]["status"]["S"] == "COMPLETED":
            raise ClientError({"Error": {"Code": "InternalServerError", "Message": "boom"},
                               "ResponseMetadata": {"HTTPStatusCode": 500}}, "PutItem")
        return real_put(**params)

    first = run(aws, spot(aws.fleet_instance), message_ids=["m"],
                processor=_with_put(aws, put_item))
    assert first.response() == {"batchItemFailures": [{"itemIdentifier": "m"}]}
    assert "dynamodb:PutItem" in first.outcomes[0].reason
    assert len(aws.commands()) == 1

    aws.clock.now += 60  # redelivered after the visibility timeout
    second = run(aws, spot(aws.fleet_instance), message_ids=["m"])
    assert second.response() == {"batchItemFailures": []}
    assert len(aws.commands()) == 1
    assert second.outcomes[0].action == "checkpoint-requested"
    assert "earlier attempt" in second.outcomes[0].reason


def test_a_read_timeout_on_send_command_looks_before_sending_again(aws) -> None:
    from botocore.exceptions import ReadTimeoutError
    real_send = aws.ssm.send_command
    attempts: list[int] = []

    def send_then_lose_the_answer(**params):
        attempts.append(1)
        real_send(**params)
        if len(attempts) == 1:
            raise ReadTimeoutError(endpoint_url="https://ssm.us-east-1.amazonaws.com")
        return {"Command": {"CommandId": "never"}}

    aws.ssm.send_command = send_then_lose_the_answer
    result = run(aws, spot(aws.fleet_instance))
    assert len(aws.commands()) == 1 and len(attempts) == 1
    assert result.outcomes[0].action == "checkpoint-requested"


def _with_put(aws, put_item):
    class Dynamo:
        def __getattr__(self, name):
            return put_item if name == "put_item" else getattr(aws.dynamodb, name)

    processor = aws.processor()
    processor.dynamodb = Dynamo()
    return processor


@pytest.mark.parametrize("records", [5, "x", None, {"a": 1}, 3.5, True])
def test_a_cold_start_failure_meeting_records_that_are_not_a_list_does_not_raise(monkeypatch, records) -> None:
    monkeypatch.setattr(handler, "_processor", None)
    monkeypatch.delenv("AUTOSCALING_GROUP_NAME", raising=False)
    assert handler.handler({"Records": records}, LambdaContext()) == {"batchItemFailures": []}


def test_a_failed_record_comes_back_in_seconds_not_after_the_visibility_timeout(aws) -> None:
    """Its visibility is cut to 2 s (4 s after a second receive, ...); a record
    that succeeded is left to the event source mapping to delete."""
    for body in ("throttled", "fine"):
        aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=body)
    received = aws.sqs.receive_message(QueueUrl=aws.queue_url, MaxNumberOfMessages=10,
                                       AttributeNames=["All"])["Messages"]
    records = []
    for message in received:
        body = hook_message(aws.other_instance) if message["Body"] == "throttled" else fixture("test_notification")
        record = sqs_record(body, message_id=message["Body"], receive_count=2)
        records.append({**record, "receiptHandle": message["ReceiptHandle"]})
    seen: list[dict] = []
    aws.sqs.meta.events.register("before-parameter-build.sqs.ChangeMessageVisibilityBatch",
                                 lambda params, **_: seen.append(dict(params)))
    aws.autoscaling_stub.add_client_error("complete_lifecycle_action", "AccessDenied", "no", http_status_code=403)
    result = aws.processor().process_batch(sqs_event(*records), LambdaContext())

    assert result.response() == {"batchItemFailures": [{"itemIdentifier": "throttled"}]}
    [throttled] = [r for r in records if r["messageId"] == "throttled"]
    assert seen == [{"QueueUrl": aws.queue_url, "Entries": [
        {"Id": "0", "ReceiptHandle": throttled["receiptHandle"], "VisibilityTimeout": 4}]}]
    assert aws.metrics.counts["RecordsRequeuedSooner"] == 1


@pytest.mark.parametrize("count,expected", [("1", 2), ("2", 4), ("3", 8), ("5", 32), ("9", 48), (None, 2),
                                            ("x", 2)])
def test_the_retry_visibility_doubles_per_receive_up_to_the_queues_timeout(count, expected) -> None:
    from tests.interruption_lambda import requeue
    assert requeue.retry_after_seconds(count, 48) == expected


def test_a_failed_visibility_change_leaves_the_record_to_the_visibility_timeout(aws) -> None:
    sqs_stub = Stubber(aws.sqs)
    sqs_stub.add_client_error("change_message_visibility_batch", "AccessDenied", "no", http_status_code=403)
    aws.autoscaling_stub.add_client_error("complete_lifecycle_action", "AccessDenied", "no", http_status_code=403)
    record = {**sqs_record(hook_message(aws.other_instance), message_id="m"), "receiptHandle": "AQEB..."}
    with sqs_stub:
        result = aws.processor().process_batch(sqs_event(record), LambdaContext())
    assert result.response() == {"batchItemFailures": [{"itemIdentifier": "m"}]}
    assert "RecordsRequeuedSooner" not in aws.metrics.counts


def test_a_record_failed_before_anything_was_sent_releases_its_claim(aws) -> None:
    """Throttled SendCommand (nothing sent): the retry claims afresh and needs
    no ListCommands; after a lost answer the claim is kept and the retry looks."""
    from botocore.exceptions import ClientError, ReadTimeoutError
    real_send = aws.ssm.send_command
    listed: list[dict] = []
    aws.ssm.meta.events.register("before-parameter-build.ssm.ListCommands",
                                 lambda params, **_: listed.append(dict(params)))

    def throttled(**_):
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"},
                           "ResponseMetadata": {"HTTPStatusCode": 400}}, "SendCommand")

    aws.ssm.send_command = throttled
    first = run(aws, spot(aws.fleet_instance), message_ids=["m"])
    assert first.response() == {"batchItemFailures": [{"itemIdentifier": "m"}]}
    assert aws.dynamodb.scan(TableName="interruption-idempotency")["Items"] == []

    def lost(**params):
        real_send(**params)
        raise ReadTimeoutError(endpoint_url="https://ssm.us-east-1.amazonaws.com")

    aws.ssm.send_command = lost
    aws.clock.now += 2
    run(aws, spot(aws.fleet_instance), message_ids=["m"])
    [item] = aws.dynamodb.scan(TableName="interruption-idempotency")["Items"]
    assert item["status"]["S"] in ("IN_PROGRESS", "COMPLETED")
    assert len(aws.commands()) == 1 and len(listed) >= 1
