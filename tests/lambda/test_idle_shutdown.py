"""Idle-shutdown decisions against a fake account (moto), each asserting the
exact AWS calls made and not made."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from botocore.exceptions import ClientError

from .idle_world import World, event, later

IDLE = [1.0] * 15
BUSY = [60.0] * 15
READS = {"DescribeAutoScalingGroups": 1, "DescribeInstances": 1, "GetMetricData": 1}
ACTIONS = ("TerminateInstanceInAutoScalingGroup", "SetDesiredCapacity", "Publish")


def sweep(world: World, now=None, **overrides) -> dict:
    return world.run(event("scheduled_event"), now=now or later(), **overrides)


def assert_no_actions(world: World) -> None:
    made = world.operations()
    assert not any(made[a] for a in ACTIONS), made


def test_busy_instance_is_kept(world) -> None:
    [busy] = world.group("fleet", size=1)
    now = later()
    world.utilization([busy], BUSY, now=now, settings=world.settings())
    sweep(world, now)
    assert world.operations() == READS
    decision = world.decisions()[busy]
    assert (decision["action"], decision["reason"]) == ("keep", "busy")
    assert decision["max_utilization_percent"] == 60.0 and decision["datapoints"] == 15


def test_one_datapoint_at_the_threshold_keeps_the_instance(world) -> None:
    [instance] = world.group("fleet", size=1)
    now = later()
    world.utilization([instance], [1.0] * 14 + [5.0], now=now, settings=world.settings())
    sweep(world, now)
    assert world.decisions()[instance]["reason"] == "busy"
    assert_no_actions(world)


def test_idle_instance_is_stopped_and_its_group_shrinks(world) -> None:
    [idle] = world.group("fleet", size=1)
    now = later()
    world.utilization([idle], IDLE, now=now, settings=world.settings())
    result = sweep(world, now)

    assert result["stopped"] == [idle]
    assert world.operations() == {**READS, "TerminateInstanceInAutoScalingGroup": 1,
                                  "DescribeInstanceTypes": 1, "Publish": 1}
    [terminate] = world.calls_to("TerminateInstanceInAutoScalingGroup")
    assert terminate.params == {"InstanceId": idle, "ShouldDecrementDesiredCapacity": True}
    assert world.group_state("fleet")["DesiredCapacity"] == 0
    [publish] = world.calls_to("Publish")
    assert publish.params["TopicArn"] == world.topic_arn
    assert idle in publish.params["Message"] and "stopped 1" in publish.params["Subject"]
    decision = world.decisions()[idle]
    assert (decision["action"], decision["reason"], decision["datapoints"]) == ("stopped", "idle", 15)
    metrics = world.emf()
    assert (metrics["InstancesEvaluated"], metrics["InstancesStopped"], metrics["GpuHoursSaved"]) == (1, 1, 1.0)


def test_query_reads_the_aggregated_gpu_metric_of_each_instance(world) -> None:
    [instance] = world.group("fleet", size=1)
    now = later()
    sweep(world, now)
    [call] = world.calls_to("GetMetricData")
    [query] = call.params["MetricDataQueries"]
    assert query["MetricStat"] == {
        "Metric": {"Namespace": "MlPlatform/GPU", "MetricName": "nvidia_smi_utilization_gpu",
                   "Dimensions": [{"Name": "InstanceId", "Value": instance}]},
        "Period": 60, "Stat": "Maximum"}
    assert call.params["EndTime"] - call.params["StartTime"] == timedelta(minutes=15)
    assert call.params["EndTime"].second == 0 and call.params["EndTime"] < now


def test_partially_covered_window_is_not_idle(world) -> None:
    [instance] = world.group("fleet", size=1)
    now = later()
    world.utilization([instance], [1.0] * 10, now=now, settings=world.settings())
    sweep(world, now)
    decision = world.decisions()[instance]
    assert (decision["reason"], decision["datapoints"], decision["expected_datapoints"]) == (
        "window_not_covered", 10, 15)
    assert world.operations() == READS


def test_no_data_is_not_idle(world) -> None:
    [instance] = world.group("fleet", size=1)
    sweep(world)
    assert world.decisions()[instance]["reason"] == "no_data"
    assert world.operations() == READS


def test_young_instance_is_not_queried_or_stopped(world) -> None:
    [young] = world.group("fleet", size=1)
    now = later(minutes=10)  # grace is 20 minutes
    world.utilization([young], IDLE, now=now, settings=world.settings())
    sweep(world, now)
    decision = world.decisions()[young]
    assert decision["reason"] == "within_launch_grace" and 590 <= decision["age_seconds"] <= 610
    assert world.operations() == {"DescribeAutoScalingGroups": 1, "DescribeInstances": 1}


def test_scale_in_protected_instance_is_not_queried_or_stopped(world) -> None:
    [protected] = world.group("fleet", size=1, protected=True)
    now = later()
    world.utilization([protected], IDLE, now=now, settings=world.settings())
    sweep(world, now)
    assert world.decisions()[protected]["reason"] == "protected_from_scale_in"
    assert world.operations() == {"DescribeAutoScalingGroups": 1, "DescribeInstances": 1}


def test_keep_alive_tag_in_the_future_keeps_an_idle_instance(world) -> None:
    [kept] = world.group("fleet", size=1)
    now = later()
    world.tag_instance(kept, "ml:keep-alive-until", (now + timedelta(hours=1)).isoformat())
    world.utilization([kept], IDLE, now=now, settings=world.settings())
    sweep(world, now)
    assert world.decisions()[kept]["reason"] == "keep_alive_until_future"
    assert world.operations() == {"DescribeAutoScalingGroups": 1, "DescribeInstances": 1}


def test_keep_alive_tag_on_the_group_keeps_its_idle_instances(world) -> None:
    now = later()
    [kept] = world.group("fleet", size=1, extra_tags=[
        ("ml:keep-alive-until", (now + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"))])
    world.utilization([kept], IDLE, now=now, settings=world.settings())
    sweep(world, now)
    assert world.decisions()[kept]["reason"] == "keep_alive_until_future"
    assert_no_actions(world)


def test_keep_alive_tag_in_the_past_does_not_keep_an_idle_instance(world) -> None:
    [instance] = world.group("fleet", size=1)
    now = later()
    world.tag_instance(instance, "ml:keep-alive-until", (now - timedelta(minutes=1)).isoformat())
    world.utilization([instance], IDLE, now=now, settings=world.settings())
    sweep(world, now)
    assert world.decisions()[instance]["action"] == "stopped"
    assert [c.params["InstanceId"] for c in world.calls_to("TerminateInstanceInAutoScalingGroup")] == [instance]


def test_malformed_keep_alive_tag_is_logged_and_keeps_the_instance(world) -> None:
    [instance] = world.group("fleet", size=1)
    now = later()
    world.tag_instance(instance, "ml:keep-alive-until", "until friday")
    world.utilization([instance], IDLE, now=now, settings=world.settings())
    sweep(world, now)
    decision = world.decisions()[instance]
    assert (decision["reason"], decision["keep_alive_until"]) == ("keep_alive_tag_malformed", "until friday")
    assert_no_actions(world)


def test_group_never_goes_below_its_minimum(world) -> None:
    ids = world.group("fleet", size=3, min_size=2)
    now = later()
    world.utilization(ids, IDLE, now=now, settings=world.settings())
    sweep(world, now)
    [terminate] = world.calls_to("TerminateInstanceInAutoScalingGroup")
    reasons = sorted(d["reason"] for d in world.decisions().values())
    assert reasons == ["idle", "idle_but_group_at_minimum", "idle_but_group_at_minimum"]
    assert world.decisions()[terminate.params["InstanceId"]]["action"] == "stopped"
    state = world.group_state("fleet")
    assert state["DesiredCapacity"] == 2 and state["MinSize"] == 2
    assert world.emf()["InstancesIdle"] == 3 and world.emf()["InstancesStopped"] == 1


def test_group_at_its_minimum_loses_nothing(world) -> None:
    [instance] = world.group("fleet", size=1, min_size=1)
    now = later()
    world.utilization([instance], IDLE, now=now, settings=world.settings())
    sweep(world, now)
    assert world.decisions()[instance]["reason"] == "idle_but_group_at_minimum"
    assert world.operations() == READS


def test_dry_run_decides_and_reports_but_stops_nothing(world) -> None:
    [idle] = world.group("fleet", size=1)
    now = later()
    world.utilization([idle], IDLE, now=now, settings=world.settings())
    result = sweep(world, now, dry_run=True)
    assert result["dry_run"] and result["stopped"] == [idle]
    assert world.operations() == {**READS, "Publish": 1}
    assert "would stop 1" in world.calls_to("Publish")[0].params["Subject"]
    assert world.decisions()[idle]["action"] == "would_stop"
    assert world.emf()["InstancesStopped"] == 0 and world.emf()["InstancesIdle"] == 1
    assert world.group_state("fleet")["DesiredCapacity"] == 1


def test_groups_without_the_opt_in_tag_are_never_looked_at(world) -> None:
    ids = world.group("other", size=1, opt_in=False)
    world.group("wrong-value", size=1, opt_in=False, extra_tags=[("ml:idle-shutdown", "yes")])
    now = later()
    world.utilization(ids, IDLE, now=now, settings=world.settings())
    result = sweep(world, now)
    assert result["evaluated"] == 0 and result["groups"] == 0
    assert world.operations() == {"DescribeAutoScalingGroups": 1}
    [describe] = world.calls_to("DescribeAutoScalingGroups")
    assert describe.params["Filters"] == [{"Name": "tag:ml:idle-shutdown", "Values": ["enabled"]}]


def test_one_failed_stop_is_logged_and_the_others_proceed(world, monkeypatch) -> None:
    ids = world.group("fleet", size=2)
    now = later()
    world.utilization(ids, IDLE, now=now, settings=world.settings())
    autoscaling = world.clients["autoscaling"]
    real = autoscaling.terminate_instance_in_auto_scaling_group
    failing = sorted(ids)[0]

    def terminate(**params):
        if params["InstanceId"] == failing:
            raise ClientError({"Error": {"Code": "ScalingActivityInProgress", "Message": "busy"}},
                              "TerminateInstanceInAutoScalingGroup")
        return real(**params)

    monkeypatch.setattr(autoscaling, "terminate_instance_in_auto_scaling_group", terminate)
    result = sweep(world, now)
    assert result["stopped"] == [i for i in ids if i != failing]
    assert world.decisions()[failing]["action"] == "stop_failed"
    assert world.records("stop_failed") == [{"event": "stop_failed", "instance_id": failing,
                                             "error": "ScalingActivityInProgress"}]
    assert world.emf()["StopFailures"] == 1


def test_every_instance_decision_is_one_structured_line(world) -> None:
    ids = world.group("fleet", size=3)
    now = later()
    world.utilization(ids[:1], IDLE, now=now, settings=world.settings())
    world.utilization(ids[1:2], BUSY, now=now, settings=world.settings())
    sweep(world, now)
    decisions = [json.loads(line) for line in world.lines if '"instance_decision"' in line]
    assert sorted(d["instance_id"] for d in decisions) == sorted(ids)
    for decision in decisions:
        assert {"instance_id", "group", "action", "reason", "max_utilization_percent",
                "threshold_percent", "datapoints", "expected_datapoints", "age_seconds",
                "dry_run"} <= set(decision)


def test_emf_record_declares_its_metrics(world) -> None:
    world.group("fleet", size=1)
    sweep(world)
    metrics = world.emf()
    [directive] = metrics["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "MlPlatform/IdleShutdown"
    assert directive["Dimensions"] == [["Stage"]]
    names = {m["Name"] for m in directive["Metrics"]}
    assert {"InstancesEvaluated", "InstancesStopped", "GpuHoursSaved"} <= names
    assert all(name in metrics for name in names) and metrics["Stage"] == "dev"


# -- job completion ------------------------------------------------------------

def finished(group: str | None = "fleet", **detail) -> dict:
    payload = event("training_job_finished")
    payload["detail"] = {**payload["detail"], "autoScalingGroupName": group, **detail}
    return payload


def test_job_completion_scales_the_group_to_zero(world) -> None:
    world.group("fleet", size=3)
    result = world.run(finished(), now=later())
    assert result["desired_capacity"] == 0
    assert world.operations() == {"DescribeAutoScalingGroups": 1, "DescribeInstances": 1,
                                  "SetDesiredCapacity": 1, "Publish": 1}
    [scale] = world.calls_to("SetDesiredCapacity")
    assert scale.params == {"AutoScalingGroupName": "fleet", "DesiredCapacity": 0, "HonorCooldown": False}
    assert world.group_state("fleet")["DesiredCapacity"] == 0
    [record] = world.records("completion_scale_down")
    assert (record["action"], record["desired_capacity"], record["new_desired_capacity"]) == ("scaled_down", 3, 0)


def test_job_completion_stops_at_the_group_minimum(world) -> None:
    world.group("fleet", size=3, min_size=1)
    world.run(finished(), now=later())
    assert world.calls_to("SetDesiredCapacity")[0].params["DesiredCapacity"] == 1


def test_job_completion_twice_changes_nothing_the_second_time(world) -> None:
    world.group("fleet", size=2)
    world.run(finished(), now=later())
    world.run(finished(), now=later())
    assert world.operations() == {"DescribeAutoScalingGroups": 1}
    assert world.records("completion_scale_down")[0]["reason"] == "already_at_minimum"


def test_job_completion_in_dry_run_changes_nothing(world) -> None:
    world.group("fleet", size=2)
    world.run(finished(), now=later(), dry_run=True)
    assert world.operations() == {"DescribeAutoScalingGroups": 1, "DescribeInstances": 1, "Publish": 1}
    assert world.group_state("fleet")["DesiredCapacity"] == 2


def test_job_completion_for_a_group_without_the_opt_in_tag_is_ignored(world) -> None:
    world.group("fleet", size=2, opt_in=False)
    result = world.run(finished(), now=later())
    assert result == {"status": "ignored", "reason": "not_opted_in"}
    assert world.operations() == {"DescribeAutoScalingGroups": 1}
    assert world.group_state("fleet")["DesiredCapacity"] == 2


@pytest.mark.parametrize("stage_tag", [("ml:idle-shutdown-stage", "prod"), ("ml:idle-shutdown-stage", "")])
def test_job_completion_for_a_group_another_stage_enrolled_is_ignored(world, stage_tag) -> None:
    """Stages may share an account and the opt-in tag: a stage's producers
    cannot scale another stage's fleet through their own stage's function."""
    world.group("fleet", size=2, extra_tags=[stage_tag])
    result = world.run(finished(), now=later())
    assert result == {"status": "ignored", "reason": "other_stage"}
    assert world.operations() == {"DescribeAutoScalingGroups": 1}
    assert world.group_state("fleet")["DesiredCapacity"] == 2
    [record] = world.records("completion_ignored")
    assert (record["group_stage"], record["stage"]) == (stage_tag[1], "dev")


def test_job_completion_for_an_unknown_group_is_logged_and_ignored(world) -> None:
    result = world.run(finished("no-such-group"), now=later())
    assert result == {"status": "ignored", "reason": "unknown_group"}
    assert world.operations() == {"DescribeAutoScalingGroups": 1}
    assert world.records("completion_ignored")[0]["group"] == "no-such-group"


def test_job_completion_respects_a_group_keep_alive(world) -> None:
    now = later()
    world.group("fleet", size=2, extra_tags=[("ml:keep-alive-until", (now + timedelta(hours=2)).isoformat())])
    assert world.run(finished(), now=now)["reason"] == "keep_alive_until_future"
    assert world.operations() == {"DescribeAutoScalingGroups": 1}


@pytest.mark.parametrize("detail", [
    None, "fleet", [], {}, {"autoScalingGroupName": None}, {"autoScalingGroupName": 42},
    {"autoScalingGroupName": ""}, {"autoScalingGroupName": "x" * 256},
    {"autoScalingGroupName": "fleet\nrm -rf"}, {"asgName": "fleet"}, {"autoScalingGroupName": "fleet\n"},
])
def test_malformed_completion_events_are_logged_and_ignored_without_aws_calls(world, detail) -> None:
    payload = event("training_job_finished")
    payload["detail"] = detail
    result = world.run(payload, now=later())
    assert result == {"status": "ignored", "reason": "malformed_event"}
    assert world.calls == []
    assert world.records("completion_ignored")[0]["reason"] == "malformed_event"


@pytest.mark.parametrize("payload", [
    None, [], "Scheduled Event", {}, {"source": "aws.ec2", "detail-type": "EC2 Spot Instance Interruption Warning"},
    {"source": "ml.training", "detail-type": "Training Job Started", "detail": {"autoScalingGroupName": "fleet"}},
])
def test_unrecognized_events_are_logged_and_ignored(world, payload) -> None:
    assert world.run(payload, now=later()) == {"status": "ignored"}
    assert world.calls == []
    assert world.records("event_ignored")


def test_notification_lists_at_most_200_instances_and_says_how_many_more() -> None:
    from tests.idle_function import module
    decide, report = module("idle_decide"), module("idle_report")
    verdicts = [decide.Verdict(decide.Instance(f"i-{n:017x}", "fleet", "p4d.24xlarge", False), True,
                               "idle", max_utilization=0.5, datapoints=15) for n in range(5000)]
    subject, message = report.stop_summary("dev", verdicts, dry_run=False, window_minutes=15,
                                           threshold_percent=5)
    assert subject == "[ml-dev] idle shutdown stopped 5000 GPU instance(s)"
    assert message.count("\n- i-") == 200 and "... and 4800 more" in message
    assert len(message.encode()) < 256 * 1024


# -- issue 12: faults after the first stop, keep-alive on job completion ----------

@pytest.mark.parametrize("failure", [
    lambda: __import__("botocore.exceptions", fromlist=["x"]).ReadTimeoutError(
        endpoint_url="https://autoscaling.us-east-1.amazonaws.com"),
    lambda: __import__("botocore.exceptions", fromlist=["x"]).EndpointConnectionError(
        endpoint_url="https://autoscaling.us-east-1.amazonaws.com"),
    lambda: __import__("botocore.exceptions", fromlist=["x"]).ConnectionClosedError(
        endpoint_url="https://autoscaling.us-east-1.amazonaws.com"),
    lambda: ClientError({"Error": {"Code": "Throttling", "Message": "Rate exceeded"}},
                        "TerminateInstanceInAutoScalingGroup"),
], ids=["read-timeout", "connection", "connection-closed", "throttling"])
def test_a_network_failure_on_some_stops_still_logs_counts_and_reports_the_others(
        world, monkeypatch, failure) -> None:
    ids = world.group("fleet", size=5)
    now = later()
    world.utilization(ids, IDLE, now=now, settings=world.settings())
    autoscaling = world.clients["autoscaling"]
    real = autoscaling.terminate_instance_in_auto_scaling_group
    failing = set(sorted(ids)[:2])

    def terminate(**params):
        if params["InstanceId"] in failing:
            raise failure()
        return real(**params)

    monkeypatch.setattr(autoscaling, "terminate_instance_in_auto_scaling_group", terminate)
    result = sweep(world, now)
    stopped = sorted(i for i in ids if i not in failing)
    assert sorted(result["stopped"]) == stopped
    decisions = world.decisions()
    assert {i: decisions[i]["action"] for i in ids} == {
        i: "stop_failed" if i in failing else "stopped" for i in ids}
    assert sorted(r["instance_id"] for r in world.records("stop_failed")) == sorted(failing)
    metrics = world.emf()
    assert (metrics["InstancesStopped"], metrics["StopFailures"]) == (3, 2)
    [publish] = world.calls_to("Publish")
    assert all(i in publish.params["Message"] for i in stopped)


@pytest.mark.parametrize("failure", [
    lambda: ClientError({"Error": {"Code": "UnauthorizedOperation", "Message": "no"}},
                        "DescribeInstanceTypes"),
    lambda: __import__("botocore.exceptions", fromlist=["x"]).ReadTimeoutError(
        endpoint_url="https://ec2.us-east-1.amazonaws.com"),
], ids=["access-denied", "read-timeout"])
def test_a_failed_gpu_count_after_the_stops_does_not_lose_the_report(world, monkeypatch, failure) -> None:
    ids = world.group("fleet", size=2)
    now = later()
    world.utilization(ids, IDLE, now=now, settings=world.settings())

    def describe_instance_types(**_):
        raise failure()

    monkeypatch.setattr(world.clients["ec2"], "describe_instance_types", describe_instance_types)
    result = sweep(world, now)
    assert sorted(result["stopped"]) == sorted(ids)
    assert world.emf()["InstancesStopped"] == 2 and world.emf()["GpuHoursSaved"] == 0
    [unavailable] = world.records("gpu_count_unavailable")
    assert unavailable["instance_types"] == ["g5.xlarge"]
    assert len(world.calls_to("Publish")) == 1


@pytest.mark.parametrize("tag", ["future", "malformed"])
def test_job_completion_honours_an_instance_keep_alive_tag(world, tag) -> None:
    now = later()
    ids = world.group("fleet", size=3)
    kept = sorted(ids)[1]
    value = (now + timedelta(hours=2)).isoformat() if tag == "future" else "next tuesday"
    world.tag_instance(kept, "ml:keep-alive-until", value)
    result = world.run(finished(), now=now)
    expected = "keep_alive_until_future" if tag == "future" else "keep_alive_tag_malformed"
    assert result == {"status": "ignored", "reason": expected, "instance_id": kept}
    assert world.operations() == {"DescribeAutoScalingGroups": 1, "DescribeInstances": 1}
    assert world.group_state("fleet")["DesiredCapacity"] == 3
    [record] = world.records("completion_ignored")
    assert (record["instance_id"], record["keep_alive_until"]) == (kept, value)


def test_job_completion_ignores_an_instance_keep_alive_in_the_past(world) -> None:
    now = later()
    ids = world.group("fleet", size=2)
    world.tag_instance(ids[0], "ml:keep-alive-until", (now - timedelta(hours=1)).isoformat())
    assert world.run(finished(), now=now)["action"] == "scaled_down"
