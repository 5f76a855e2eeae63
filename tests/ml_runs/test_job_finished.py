"""A forged job-finished event changes nothing; the producers' event still
scales the fleet down.

The stage's event routing comes from the synthesized idle stack: its rule's
pattern on its own bus, named as the template names it. moto routes events
by bus and pattern but does not evaluate bus policies: that the bus refuses
every principal but the instance role is proven on the policy document in
tests/unit/test_trusted_events.py.
"""

from __future__ import annotations

import json

import boto3

from constructs_lib.idle_shutdown import COMPLETION_DETAIL_TYPE, COMPLETION_SOURCE
from tests.conftest import resources_of_type
from tests.idle_function import handler_module, module


def idle_routing(synthesized, stage: str) -> tuple[str, dict, dict]:
    """The bus name, the job-finished rule and the function's environment of the idle stack."""
    template = synthesized.stack(stage, "idle").template_json
    [(bus_id, bus)] = resources_of_type(template, "AWS::Events::EventBus").items()
    [rule] = [r["Properties"] for r in resources_of_type(template, "AWS::Events::Rule").values()
              if "EventPattern" in r["Properties"]]
    assert rule["EventBusName"] == {"Ref": bus_id}
    [function] = resources_of_type(template, "AWS::Lambda::Function").values()
    return bus["Properties"]["Name"], rule, function["Properties"]["Environment"]["Variables"]


def job_finished(world, run_id: str, bus: str) -> dict:
    """The entry the node agent puts (node_agent/RUNS_CONTRACT.md, job finished)."""
    return {"Source": COMPLETION_SOURCE, "DetailType": COMPLETION_DETAIL_TYPE, "EventBusName": bus,
            "Detail": json.dumps({"autoScalingGroupName": world.outputs["AutoScalingGroupName"],
                                  "runId": run_id, "state": "SUCCEEDED"})}


def idle_function(world, environment: dict):
    topic = boto3.client("sns", region_name=world.config.region).create_topic(Name="alerts")["TopicArn"]
    settings = module("idle_settings").Settings.from_env({
        **{k: v for k, v in environment.items() if isinstance(v, str)}, "TOPIC_ARN": topic})

    def invoke(event: dict) -> dict:
        return handler_module().dispatch(event, settings=settings, clients=world.clients_for_lambda(),
                                         now=world.now, reporter=module("idle_report").Reporter(lambda _: None))
    return invoke


def running_fleet(world, tmp_path) -> str:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "resnet", "image": "trainer:1"}))
    run_id = world.cli("submit", str(spec)).out.strip()
    assert world.desired_capacity() == 1
    return run_id


def test_a_forged_event_on_the_default_bus_reaches_nothing_and_changes_nothing(synthesized, world, tmp_path) -> None:
    bus, rule, environment = idle_routing(synthesized, world.config.name)
    assert bus != "default"
    to_idle_function = world.capture_events(rule["EventPattern"], bus=bus)
    run_id = running_fleet(world, tmp_path)

    # Anyone allowed events:PutEvents on the default bus sends exactly what a producer sends.
    forged = world.clients["events"].put_events(Entries=[job_finished(world, run_id, "default")])
    assert forged["FailedEntryCount"] == 0  # accepted by the default bus ...
    assert world.received(to_idle_function) == []  # ... and routed to nothing of the stage
    assert world.desired_capacity() == 1
    assert world.item(run_id)["state"] == "PENDING"


def test_the_producers_event_on_the_stage_bus_scales_the_fleet_down(synthesized, world, tmp_path) -> None:
    """The control for the test above: the same entry on the stage bus is the real path."""
    bus, rule, environment = idle_routing(synthesized, world.config.name)
    to_idle_function = world.capture_events(rule["EventPattern"], bus=bus)
    run_id = running_fleet(world, tmp_path)

    sent = world.clients["events"].put_events(Entries=[job_finished(world, run_id, bus)])
    assert sent["FailedEntryCount"] == 0
    [event] = world.received(to_idle_function)
    result = idle_function(world, environment)(event)
    assert result == {"status": "ok", "action": "scaled_down", "desired_capacity": 0}
    assert world.desired_capacity() == 0
