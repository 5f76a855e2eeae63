"""Two idle sweeps running at once are harmless.

The idle function has no reserved concurrency (a new account's Lambda limit
cannot spare any), so a sweep can overlap the next one or a job-completion
scale-down. What keeps that safe is Auto Scaling itself:
TerminateInstanceInAutoScalingGroup with ShouldDecrementDesiredCapacity is
refused server-side when the desired capacity already equals the minimum
("Currently, desiredSize equals minSize (N). Terminating instance without
replacement will violate group's min size constraint."), and an instance
already gone is refused with "Instance Id not found - No managed instance
found for instance ID: ...". moto does not model either refusal, so
``aws_rules`` adds exactly those two to the fake account.

The worst interleaving is forced: the second sweep runs to its end between
the first sweep's decisions and its first stop.
"""

from __future__ import annotations

import json
import threading

import pytest
from botocore.exceptions import ClientError

from .idle_world import World, event, handler, idle_report, later

IDLE = [1.0] * 15


def aws_rules(world: World, monkeypatch, *, before_first_stop) -> None:
    """TerminateInstanceInAutoScalingGroup as AWS answers it; ``before_first_stop``
    runs once, before the first call is carried out."""
    autoscaling = world.clients["autoscaling"]
    real = autoscaling.terminate_instance_in_auto_scaling_group
    lock, pending = threading.Lock(), [before_first_stop]
    # One stop at a time in each sweep, so "the first stop" is well defined
    # (the interleaving, not the parallelism, is under test).
    monkeypatch.setattr(handler, "STOP_WORKERS", 1)

    def terminate(**params):
        if pending:
            pending.pop()()
        with lock:
            instance_id = params["InstanceId"]
            found = autoscaling.describe_auto_scaling_instances(InstanceIds=[instance_id])
            members = [i for i in found["AutoScalingInstances"]
                       if i["LifecycleState"] not in ("Terminating", "Terminated")]
            if not members:
                raise ClientError({"Error": {"Code": "ValidationError", "Message": (
                    "Instance Id not found - No managed instance found for instance ID: "
                    f"{instance_id}")}}, "TerminateInstanceInAutoScalingGroup")
            group = world.group_state(members[0]["AutoScalingGroupName"])
            if params["ShouldDecrementDesiredCapacity"] and group["DesiredCapacity"] <= group["MinSize"]:
                raise ClientError({"Error": {"Code": "ValidationError", "Message": (
                    f"Currently, desiredSize equals minSize ({group['MinSize']}). Terminating "
                    "instance without replacement will violate group's min size constraint. Either "
                    "set shouldDecrementDesiredCapacity flag to false or lower group's min size.")}},
                    "TerminateInstanceInAutoScalingGroup")
            return real(**params)

    monkeypatch.setattr(autoscaling, "terminate_instance_in_auto_scaling_group", terminate)


def run_sweep(world: World, now, lines: list[str]) -> dict:
    return handler.dispatch(event("scheduled_event"), settings=world.settings(),
                            clients=world.clients.__getitem__, now=now,
                            reporter=idle_report.Reporter(lines.append))


def in_service(world: World, name: str) -> set[str]:
    return {i["InstanceId"] for i in world.group_state(name)["Instances"]
            if i["LifecycleState"] == "InService"}


@pytest.mark.parametrize(("size", "min_size"), [(3, 1), (4, 2), (2, 0), (1, 1)])
def test_overlapping_sweeps_never_drop_a_group_below_its_minimum(world, monkeypatch, size, min_size) -> None:
    ids = world.group("fleet", size=size, min_size=min_size)
    now = later()
    world.utilization(ids, IDLE, now=now, settings=world.settings())
    second: list[str] = []
    results = {}
    aws_rules(world, monkeypatch,
              before_first_stop=lambda: results.setdefault("second", run_sweep(world, now, second)))
    first: list[str] = []
    results["first"] = run_sweep(world, now, first)

    state = world.group_state("fleet")
    assert state["DesiredCapacity"] == min_size
    assert len(in_service(world, "fleet")) == min_size
    stopped = set(results["first"]["stopped"]) | set(results.get("second", {}).get("stopped", []))
    # Never more stops than the group had above its minimum, each one once.
    assert len(stopped) == size - min_size
    assert len(results["first"]["stopped"]) + len(results.get("second", {}).get("stopped", [])) == len(stopped)


def test_a_stop_the_other_sweep_already_made_is_reported_as_such_not_as_a_failure(world, monkeypatch) -> None:
    ids = world.group("fleet", size=3, min_size=1)
    now = later()
    world.utilization(ids, IDLE, now=now, settings=world.settings())
    second: list[str] = []
    aws_rules(world, monkeypatch, before_first_stop=lambda: run_sweep(world, now, second))
    first: list[str] = []
    result = run_sweep(world, now, first)

    decisions = [json.loads(line) for line in first]
    actions = sorted(d["action"] for d in decisions if d.get("event") == "instance_decision")
    # The second sweep stopped the same two least-used instances first.
    assert actions == ["already_stopped", "already_stopped", "keep"]
    [emf] = [d for d in decisions if "_aws" in d]
    assert emf["StopFailures"] == 0 and emf["InstancesStopped"] == 0
    assert result["stopped"] == []


def test_a_stop_refused_at_the_minimum_is_held_not_failed(world, monkeypatch) -> None:
    ids = world.group("fleet", size=2, min_size=1)
    now = later()
    world.utilization(ids, IDLE, now=now, settings=world.settings())
    autoscaling = world.clients["autoscaling"]

    def minimum_raised_meanwhile() -> None:
        # Someone (a run submission, an operator) raises the floor between
        # this sweep's decision and its stop.
        autoscaling.update_auto_scaling_group(AutoScalingGroupName="fleet", MinSize=2)

    aws_rules(world, monkeypatch, before_first_stop=minimum_raised_meanwhile)
    lines: list[str] = []
    result = run_sweep(world, now, lines)

    decisions = {d["instance_id"]: d for d in map(json.loads, lines) if d.get("event") == "instance_decision"}
    assert result["stopped"] == []
    assert {d["reason"] for d in decisions.values()} == {"idle_but_group_at_minimum"}
    assert {d["action"] for d in decisions.values()} == {"keep"}
    [emf] = [d for d in map(json.loads, lines) if "_aws" in d]
    assert emf["StopFailures"] == 0
    assert world.group_state("fleet")["DesiredCapacity"] == 2
    assert in_service(world, "fleet") == set(ids)
