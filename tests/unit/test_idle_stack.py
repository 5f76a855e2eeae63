"""Idle stack: the schedule, the tag-conditioned IAM, the agent config in SSM,
and the seams a GPU fleet plugs into (install_on, enroll, off-hours)."""

from __future__ import annotations

import json
from dataclasses import replace

import aws_cdk as cdk
import pytest
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sns as sns
from aws_cdk.assertions import Match, Template

from constructs_lib.gpu_metrics import AGENT_CTL, GpuMetricsAgent
from constructs_lib.idle_shutdown import IdleShutdown
from constructs_lib.off_hours import add_off_hours_schedule
from ml_stacks.app_factory import build_app
from ml_stacks.config import IdleShutdownConfig, default_configs
from tests.conftest import STAGES, resources_of_type
from tests.idle_function import module

OPT_IN_CONDITION = {"StringEquals": {"autoscaling:ResourceTag/ml:idle-shutdown": "enabled"}}
WRITE_ACTIONS = {"autoscaling:TerminateInstanceInAutoScalingGroup", "autoscaling:SetDesiredCapacity"}


def _statements(template: dict) -> list[dict]:
    return [s for p in resources_of_type(template, "AWS::IAM::Policy").values()
            for s in p["Properties"]["PolicyDocument"]["Statement"]]


def _agent_config(template: dict) -> dict:
    [parameter] = resources_of_type(template, "AWS::SSM::Parameter").values()
    return json.loads(parameter["Properties"]["Value"])


@pytest.mark.parametrize("stage", STAGES)
def test_sweep_runs_on_the_configured_rate_and_completion_events_reach_the_function(
        synthesized, stage) -> None:
    template = synthesized.template(stage, "idle")
    rate = synthesized.configs[stage].idle_shutdown.schedule_rate_minutes
    function_arn = {"Fn::GetAtt": [Match.string_like_regexp("IdleShutdown"), "Arn"]}
    function = Match.object_like({"Arn": function_arn})
    template.has_resource_properties("AWS::Events::Rule", {
        "ScheduleExpression": f"rate({rate} minutes)", "State": "ENABLED",
        "Targets": [Match.object_like({"Arn": function_arn,
                                       "RetryPolicy": {"MaximumRetryAttempts": 0}})]})
    template.has_resource_properties("AWS::Events::Rule", {
        "EventPattern": {"source": ["ml.training"], "detail-type": ["Training Job Finished"]},
        "State": "ENABLED", "Targets": [function]})
    template.resource_count_is("AWS::Lambda::Function", 1)
    template.has_resource_properties("AWS::Lambda::Function", {
        "Handler": "handler.handler", "Runtime": "python3.14", "Timeout": 300,
        "ReservedConcurrentExecutions": Match.absent()})


@pytest.mark.parametrize("stage", STAGES)
def test_function_settings_come_from_the_stage_config(synthesized, stage) -> None:
    idle = synthesized.configs[stage].idle_shutdown
    synthesized.template(stage, "idle").has_resource_properties("AWS::Lambda::Function", {
        "Environment": {"Variables": Match.object_like({
            "STAGE": stage, "DRY_RUN": "false", "THRESHOLD_PERCENT": "5",
            "WINDOW_SECONDS": str(idle.window_minutes * 60),
            "GRACE_SECONDS": str(idle.launch_grace_minutes * 60),
            "OPT_IN_TAG_KEY": "ml:idle-shutdown", "OPT_IN_TAG_VALUE": "enabled"})}})


@pytest.mark.parametrize("stage", STAGES)
def test_terminate_and_set_capacity_only_on_groups_carrying_the_opt_in_tag(synthesized, stage) -> None:
    statements = _statements(synthesized.stack(stage, "idle").template_json)
    writes = [s for s in statements
              if WRITE_ACTIONS & set([s["Action"]] if isinstance(s["Action"], str) else s["Action"])]
    assert len(writes) == 1
    [write] = writes
    assert set(write["Action"]) == WRITE_ACTIONS
    assert write["Condition"] == OPT_IN_CONDITION
    assert write["Resource"]["Fn::Join"][1][-1] == ":autoScalingGroup:*:autoScalingGroupName/*"
    # Nothing else in the stack may act on a group, conditioned or not.
    assert not any(a.startswith("autoscaling:") and not a.startswith("autoscaling:Describe")
                   for s in statements if s is not write
                   for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"]))


def test_function_publishes_to_the_alerts_topic_with_its_key_and_alarms_there(synthesized) -> None:
    template = synthesized.template("dev", "idle")
    template.has_resource_properties("AWS::IAM::Policy", {"PolicyDocument": {"Statement": Match.array_with([
        Match.object_like({"Action": "sns:Publish", "Resource": {"Fn::GetStackOutput": Match.object_like(
            {"StackName": "ml-dev-ops"})}}),
        Match.object_like({"Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                           "Resource": {"Fn::GetStackOutput": Match.object_like(
                               {"StackName": "ml-dev-storage"})}}),
    ])}})
    template.has_resource_properties("AWS::CloudWatch::Alarm", {
        "MetricName": "Errors", "Namespace": "AWS/Lambda", "Threshold": 1,
        "AlarmActions": [{"Fn::GetStackOutput": Match.object_like({"StackName": "ml-dev-ops"})}]})


@pytest.mark.parametrize("stage", STAGES)
def test_ssm_parameter_holds_the_gpu_agent_config(synthesized, stage) -> None:
    template = synthesized.stack(stage, "idle").template_json
    [parameter] = resources_of_type(template, "AWS::SSM::Parameter").values()
    assert parameter["Properties"]["Name"] == f"/ml-{stage}/cloudwatch-agent/gpu"
    config = _agent_config(template)
    assert config["metrics"]["namespace"] == "MlPlatform/GPU"
    assert config["metrics"]["append_dimensions"] == {"InstanceId": "${aws:InstanceId}"}
    assert config["metrics"]["aggregation_dimensions"] == [["InstanceId"]]
    assert config["metrics"]["metrics_collected"]["nvidia_gpu"]["measurement"] == [
        "utilization_gpu", "utilization_memory", "memory_used"]


def test_agent_publishes_exactly_what_the_idle_query_reads(synthesized) -> None:
    """The metric the function queries is one the agent config really publishes:
    same namespace, metric name, period, and the aggregated InstanceId-only
    dimension set (append_dimensions replaces host; aggregation drops the
    per-GPU index/name/arch)."""
    metrics = _agent_config(synthesized.stack("dev", "idle").template_json)["metrics"]
    published = {
        (metrics["namespace"], f"nvidia_smi_{m}", tuple(sorted(dims)))
        for m in metrics["metrics_collected"]["nvidia_gpu"]["measurement"]
        for dims in metrics["aggregation_dimensions"]
    }
    assert set(metrics["append_dimensions"]) == set(metrics["aggregation_dimensions"][0])

    class RecordingCloudWatch:
        def __init__(self) -> None:
            self.requests: list[dict] = []

        def get_metric_data(self, **request):
            self.requests.append(request)
            return {"MetricDataResults": []}

    from datetime import datetime, timedelta, timezone
    cloudwatch = RecordingCloudWatch()
    definition = module("idle_settings").MetricDefinition.load()
    end = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)
    module("idle_fleet").gpu_utilization(cloudwatch, ["i-0abc"], definition, start=end - timedelta(minutes=15),
                                   end=end)
    [query] = cloudwatch.requests[0]["MetricDataQueries"]
    stat = query["MetricStat"]
    queried = (stat["Metric"]["Namespace"], stat["Metric"]["MetricName"],
               tuple(sorted(d["Name"] for d in stat["Metric"]["Dimensions"])))
    assert queried in published
    assert stat["Period"] == metrics["metrics_collected"]["nvidia_gpu"]["metrics_collection_interval"]
    assert stat["Stat"] == "Maximum"


def test_dry_run_and_disabled_are_per_stage(tmp_path) -> None:
    dev = default_configs()["dev"]
    dev = replace(dev, idle_shutdown=replace(dev.idle_shutdown, dry_run=True, enabled=False))
    app = build_app([dev], outdir=str(tmp_path))
    template = Template.from_stack(app.node.find_child("dev").idle)
    template.has_resource_properties("AWS::Lambda::Function", {
        "Environment": {"Variables": Match.object_like({"DRY_RUN": "true"})}})
    rules = template.find_resources("AWS::Events::Rule")
    assert len(rules) == 2 and all(r["Properties"]["State"] == "DISABLED" for r in rules.values())


def test_idle_stack_has_no_scheduled_actions_of_its_own(synthesized) -> None:
    for stage in STAGES:
        synthesized.template(stage, "idle").resource_count_is("AWS::AutoScaling::ScheduledAction", 0)


# -- the seams, on a small standalone fleet ------------------------------------

def _fleet_app(idle: IdleShutdownConfig) -> tuple[cdk.Stack, cdk.Stack, GpuMetricsAgent,
                                                   ec2.LaunchTemplate]:
    """An idle stack and a separate fleet stack wired the way the training
    fleet will be: install_on, enroll, add_off_hours_schedule."""
    app = cdk.App()
    env = cdk.Environment(region="us-east-1")
    idle_stack = cdk.Stack(app, "idle", env=env)
    topic = sns.Topic(idle_stack, "Alerts")
    agent = GpuMetricsAgent(idle_stack, "GpuMetrics", parameter_name="/ml-test/cloudwatch-agent/gpu")
    shutdown = IdleShutdown(idle_stack, "IdleShutdown", alerts_topic=topic, stage="test")

    fleet_stack = cdk.Stack(app, "fleet", env=env)
    vpc = ec2.Vpc(fleet_stack, "Vpc", availability_zones=["us-east-1a", "us-east-1b"], nat_gateways=1)
    role = iam.Role(fleet_stack, "NodeRole", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"))
    template = ec2.LaunchTemplate(
        fleet_stack, "Nodes", instance_type=ec2.InstanceType("g5.xlarge"),
        machine_image=ec2.MachineImage.latest_amazon_linux2023(), role=role,
        user_data=ec2.UserData.for_linux(), require_imdsv2=True)
    group = autoscaling.AutoScalingGroup(fleet_stack, "Fleet", vpc=vpc, launch_template=template,
                                         min_capacity=0, max_capacity=4)
    agent.install_on(user_data=template.user_data, role=role)
    shutdown.enroll(group)
    add_off_hours_schedule(group, scale_in_cron=idle.off_hours_scale_in_cron,
                           scale_out_cron=idle.off_hours_scale_out_cron,
                           restore_max_capacity=4, time_zone=idle.off_hours_time_zone)
    return idle_stack, fleet_stack, agent, template


def _user_data(fleet: Template) -> str:
    [lt] = fleet.find_resources("AWS::EC2::LaunchTemplate").values()
    parts = lt["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]
    return parts if isinstance(parts, str) else "".join(
        p if isinstance(p, str) else json.dumps(p) for p in parts["Fn::Join"][1])


def test_install_on_starts_the_agent_from_the_parameter_at_boot() -> None:
    _, fleet_stack, _, _ = _fleet_app(default_configs()["dev"].idle_shutdown)
    user_data = _user_data(Template.from_stack(fleet_stack))
    assert "amazon-cloudwatch-agent" in user_data
    assert f"{AGENT_CTL} -a fetch-config -m ec2 -s -c ssm:/ml-test/cloudwatch-agent/gpu" in user_data


def test_install_on_lets_the_node_role_read_the_parameter_and_publish_gpu_metrics_only() -> None:
    _, fleet_stack, _, _ = _fleet_app(default_configs()["dev"].idle_shutdown)
    fleet = Template.from_stack(fleet_stack)
    fleet.has_resource_properties("AWS::IAM::Policy", {
        "Roles": [{"Ref": Match.string_like_regexp("NodeRole")}],
        "PolicyDocument": {"Statement": [
            Match.object_like({"Action": "ssm:GetParameter", "Resource": Match.any_value()}),
        ]}})
    # PutMetricData (no resource type) is in the role's one policy on *.
    fleet.has_resource_properties("AWS::IAM::Policy", {
        "Roles": [{"Ref": Match.string_like_regexp("NodeRole")}],
        "PolicyDocument": {"Statement": [
            {"Sid": "PutMetricDataInOwnNamespaces", "Effect": "Allow", "Action": "cloudwatch:PutMetricData",
             "Resource": "*", "Condition": {"StringEquals": {"cloudwatch:namespace": "MlPlatform/GPU"}}},
        ]}})
    [policy] = [p for p in fleet.find_resources("AWS::IAM::Policy").values()
                if p["Properties"]["PolicyDocument"]["Statement"][0].get("Sid") == "ReadGpuAgentConfig"]
    arn = json.dumps(policy["Properties"]["PolicyDocument"]["Statement"][0]["Resource"])
    # The idle stack's parameter, by reference: nothing else is readable.
    assert "Fn::ImportValue" in arn and "GpuMetrics" in arn


def test_the_fleet_depends_on_the_idle_stack_and_never_the_reverse() -> None:
    idle_stack, fleet_stack, _, _ = _fleet_app(default_configs()["dev"].idle_shutdown)
    cdk.App.of(idle_stack).synth()
    assert idle_stack in fleet_stack.dependencies
    assert fleet_stack not in idle_stack.dependencies


def test_enroll_tags_the_group_for_the_function_and_not_its_instances() -> None:
    _, fleet_stack, _, _ = _fleet_app(default_configs()["prod"].idle_shutdown)
    Template.from_stack(fleet_stack).has_resource_properties("AWS::AutoScaling::AutoScalingGroup", {
        "Tags": Match.array_with([{"Key": "ml:idle-shutdown", "Value": "enabled",
                                   "PropagateAtLaunch": False},
                                  {"Key": "ml:idle-shutdown-stage", "Value": "test",
                                   "PropagateAtLaunch": False}])})


def test_off_hours_scheduled_actions_exist_where_configured() -> None:
    idle = IdleShutdownConfig(off_hours_scale_in_cron="0 19 * * MON-THU",
                              off_hours_scale_out_cron="30 6 * * TUE-FRI", off_hours_time_zone="Europe/Berlin")
    _, fleet_stack, _, _ = _fleet_app(idle)
    fleet = Template.from_stack(fleet_stack)
    fleet.resource_count_is("AWS::AutoScaling::ScheduledAction", 2)
    fleet.has_resource_properties("AWS::AutoScaling::ScheduledAction", {
        "Recurrence": "0 19 * * MON-THU", "TimeZone": "Europe/Berlin", "MinSize": 0, "DesiredCapacity": 0,
        "MaxSize": 0})
    # Back to the group's own maximum (4 in _fleet_app).
    fleet.has_resource_properties("AWS::AutoScaling::ScheduledAction", {
        "Recurrence": "30 6 * * TUE-FRI", "TimeZone": "Europe/Berlin", "MinSize": 0, "MaxSize": 4,
        "DesiredCapacity": Match.absent()})


def test_no_off_hours_scheduled_actions_where_not_configured() -> None:
    _, fleet_stack, _, _ = _fleet_app(IdleShutdownConfig())
    Template.from_stack(fleet_stack).resource_count_is("AWS::AutoScaling::ScheduledAction", 0)


def test_off_hours_restores_the_given_capacity_in_the_morning() -> None:
    stack = cdk.Stack(cdk.App(), "s", env=cdk.Environment(region="us-east-1"))
    vpc = ec2.Vpc(stack, "Vpc", availability_zones=["us-east-1a"], nat_gateways=1)
    group = autoscaling.AutoScalingGroup(stack, "G", vpc=vpc, instance_type=ec2.InstanceType("g5.xlarge"),
                                         machine_image=ec2.MachineImage.latest_amazon_linux2023())
    add_off_hours_schedule(group, scale_in_cron="0 19 * * *", scale_out_cron="30 6 * * MON-FRI",
                           restore_max_capacity=3, time_zone="Europe/Berlin", restore_min_capacity=1,
                           restore_desired_capacity=2)
    Template.from_stack(stack).has_resource_properties("AWS::AutoScaling::ScheduledAction", {
        "Recurrence": "30 6 * * MON-FRI", "TimeZone": "Europe/Berlin", "MinSize": 1, "DesiredCapacity": 2,
        "MaxSize": 3})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"scale_in_cron": "0 20 * * *", "scale_out_cron": None, "restore_max_capacity": 4}, "go together"),
    ({"scale_in_cron": "0 20 * * *", "scale_out_cron": "0 7 * * *", "restore_min_capacity": 2,
      "restore_desired_capacity": 1, "restore_max_capacity": 4}, "at least restore_min_capacity"),
    ({"scale_in_cron": "0 20 * * *", "scale_out_cron": "0 7 * * *", "restore_max_capacity": 0},
     "restore_max_capacity must be at least 1"),
    ({"scale_in_cron": "0 20 * * *", "scale_out_cron": "0 7 * * *", "restore_min_capacity": 1,
      "restore_desired_capacity": 3, "restore_max_capacity": 2}, r"restore_desired_capacity \(3\), got 2"),
])
def test_off_hours_fails_on_inconsistent_arguments(kwargs, message) -> None:
    stack = cdk.Stack(cdk.App(), "s", env=cdk.Environment(region="us-east-1"))
    vpc = ec2.Vpc(stack, "Vpc", availability_zones=["us-east-1a"], nat_gateways=1)
    group = autoscaling.AutoScalingGroup(stack, "G", vpc=vpc, instance_type=ec2.InstanceType("g5.xlarge"),
                                         machine_image=ec2.MachineImage.latest_amazon_linux2023())
    with pytest.raises(ValueError, match=message):
        add_off_hours_schedule(group, **kwargs)
