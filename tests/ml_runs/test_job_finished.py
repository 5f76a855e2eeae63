"""The CLI's job-finished event reaches the idle stack's rule and its function
scales the fleet down: the same path the node agent uses, not a second one."""

from __future__ import annotations

import json

import boto3

from ml_runs.runs import JOB_FINISHED_DETAIL_TYPE, JOB_FINISHED_SOURCE
from tests.conftest import resources_of_type
from tests.idle_function import handler_module, module


def idle_rule_and_environment(synthesized, stage: str) -> tuple[dict, dict]:
    template = synthesized.stack(stage, "idle").template_json
    [rule] = [r for r in resources_of_type(template, "AWS::Events::Rule").values()
              if "EventPattern" in r["Properties"]]
    [function] = resources_of_type(template, "AWS::Lambda::Function").values()
    return rule["Properties"], function["Properties"]["Environment"]["Variables"]


def test_the_cli_event_is_what_the_idle_rule_and_function_expect(synthesized, world, tmp_path) -> None:
    rule, environment = idle_rule_and_environment(synthesized, world.config.name)
    # The rule listens on the default bus, where the CLI and the agent put the event.
    assert "EventBusName" not in rule
    assert rule["EventPattern"] == {"source": [JOB_FINISHED_SOURCE], "detail-type": [JOB_FINISHED_DETAIL_TYPE]}
    queue = world.capture_events(rule["EventPattern"])

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "resnet", "image": "trainer:1"}))
    run_id = world.cli("submit", str(spec)).out.strip()
    assert world.desired_capacity() == 1
    assert world.cli("cancel", run_id).status == 0
    [event] = world.received(queue)
    assert (event["source"], event["detail-type"]) == (JOB_FINISHED_SOURCE, JOB_FINISHED_DETAIL_TYPE)

    # The idle function, configured as the idle stack configures it, scales the group to its minimum.
    topic = boto3.client("sns", region_name=world.config.region).create_topic(Name="alerts")["TopicArn"]
    settings = module("idle_settings").Settings.from_env({
        **{k: v for k, v in environment.items() if isinstance(v, str)}, "TOPIC_ARN": topic})
    lines: list[str] = []
    result = handler_module().dispatch(event, settings=settings, clients=world.clients_for_lambda(),
                                       now=world.now, reporter=module("idle_report").Reporter(lines.append))
    assert result == {"status": "ok", "action": "scaled_down", "desired_capacity": 0}
    assert world.desired_capacity() == 0
