"""The runs capacity reconciler in the training stack: its schedule, its
environment (what the handler reads), IAM that reaches the index and the one
group only, no reserved concurrency, its errors alarm, and the off-hours
actions that close and reopen the fleet."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from aws_cdk.assertions import Template

from ml_stacks.app_factory import build_app
from ml_stacks.config import default_configs
from tests.conftest import STAGES, resources_of_type
from tests.runs_capacity_function import handler_module



def one(template: dict, resource_type: str, prefix: str) -> tuple[str, dict]:
    [(lid, resource)] = [(k, r) for k, r in resources_of_type(template, resource_type).items()
                         if k.startswith(prefix)]
    return lid, resource


def role_statements(template: dict, role_id: str) -> list[dict]:
    return [s for p in resources_of_type(template, "AWS::IAM::Policy").values()
            if {"Ref": role_id} in p["Properties"]["Roles"]
            for s in p["Properties"]["PolicyDocument"]["Statement"]]


def listed(value) -> list:
    return value if isinstance(value, list) else [value]


@pytest.fixture(scope="module")
def custom(tmp_path_factory):
    """dev with a 7-minute rate and a maximum of 6: the template follows the config."""
    dev = default_configs()["dev"]
    config = replace(dev, training=replace(dev.training, runs_capacity_rate_minutes=7, max_capacity=6))
    app = build_app([config], outdir=str(tmp_path_factory.mktemp("runs-capacity")))
    app.synth()
    return config, Template.from_stack(app.node.find_child("dev").training).to_json()


@pytest.mark.parametrize("stage", STAGES)
def test_the_schedule_invokes_the_function_every_configured_minutes_without_retries(synthesized, stage) -> None:
    template = synthesized.stack(stage, "training").template_json
    rate = synthesized.configs[stage].training.runs_capacity_rate_minutes
    function_id, _ = one(template, "AWS::Lambda::Function", "RunsCapacity")
    _, rule = one(template, "AWS::Events::Rule", "RunsCapacitySchedule")
    assert rule["Properties"]["ScheduleExpression"] == f"rate({rate} minutes)"
    assert rule["Properties"]["State"] == "ENABLED"
    [target] = rule["Properties"]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [function_id, "Arn"]}
    assert target["RetryPolicy"] == {"MaximumRetryAttempts": 0}


def test_a_configured_rate_and_maximum_reach_the_template(custom) -> None:
    config, template = custom
    _, rule = one(template, "AWS::Events::Rule", "RunsCapacitySchedule")
    assert rule["Properties"]["ScheduleExpression"] == "rate(7 minutes)"
    scale_out = [r["Properties"] for r in resources_of_type(template, "AWS::AutoScaling::ScheduledAction").values()
                 if r["Properties"]["Recurrence"] == config.idle_shutdown.off_hours_scale_out_cron]
    assert [a["MaxSize"] for a in scale_out] == [6]


@pytest.mark.parametrize("stage", STAGES)
def test_the_function_environment_is_what_the_handler_reads(synthesized, stage) -> None:
    config = synthesized.configs[stage]
    template = synthesized.stack(stage, "training").template_json
    _, function = one(template, "AWS::Lambda::Function", "RunsCapacity")
    table_id, _ = one(template, "AWS::DynamoDB::Table", "RunsTable")
    env = function["Properties"]["Environment"]["Variables"]
    training = config.training
    topic = env.pop("ALERTS_TOPIC_ARN")
    assert topic["Fn::GetStackOutput"]["StackName"] == f"ml-{stage}-ops"
    assert env == {"RUNS_TABLE": {"Ref": table_id}, "STATE_INDEX": "by-state",
                   "GROUP_NAME": f"{config.stack_prefix}-training-gpu",
                   "MAX_GPUS_PER_INSTANCE": str(training.max_gpus_per_instance),
                   "SPOT_FALLBACK_AFTER_SECONDS": str(training.spot_fallback_after_minutes * 60),
                   "ON_DEMAND_PERCENTAGE": str(training.on_demand_percentage),
                   "SPOT_FALLBACK_ON_DEMAND_PERCENTAGE": str(training.spot_fallback_on_demand_percentage)}
    resolved = {k: v if isinstance(v, str) else "ml-table" for k, v in env.items()}
    settings = handler_module().Settings.from_env({**resolved, "ALERTS_TOPIC_ARN": "arn:topic"})
    assert (settings.table, settings.index, settings.group, settings.max_gpus) == (
        "ml-table", "by-state", env["GROUP_NAME"], training.max_gpus_per_instance)
    assert (settings.fallback.after_seconds, settings.fallback.base_percentage,
            settings.fallback.fallback_percentage) == (training.spot_fallback_after_minutes * 60,
                                                       training.on_demand_percentage,
                                                       training.spot_fallback_on_demand_percentage)
    props = function["Properties"]
    assert "ReservedConcurrentExecutions" not in props  # DESIGN.md: never reserve concurrency
    assert props["Handler"] == "handler.handler" and props["Runtime"].startswith("python3")
    _, invoke = one(template, "AWS::Lambda::EventInvokeConfig", "RunsCapacity")
    assert invoke["Properties"]["MaximumRetryAttempts"] == 0


@pytest.mark.parametrize("stage", STAGES)
def test_iam_reaches_the_index_and_the_one_group_and_nothing_more(synthesized, stage) -> None:
    config = synthesized.configs[stage]
    template = synthesized.stack(stage, "training").template_json
    role_id, _ = one(template, "AWS::IAM::Role", "RunsCapacityRole")
    table_id, _ = one(template, "AWS::DynamoDB::Table", "RunsTable")
    logs_id, _ = one(template, "AWS::Logs::LogGroup", "RunsCapacityLogs")
    group_id, group = one(template, "AWS::AutoScaling::AutoScalingGroup", "Fleet")
    assert group["Properties"]["AutoScalingGroupName"] == f"{config.stack_prefix}-training-gpu"
    granted = {}
    region = config.region
    for statement in role_statements(template, role_id):
        kms = any(a.startswith("kms:") for a in listed(statement["Action"]))
        # Every key action only through the service that uses it: DynamoDB
        # for the runs table's key, SNS for the alerts topic's.
        assert statement["Effect"] == "Allow"
        if kms:
            assert statement["Condition"]["StringEquals"]["kms:ViaService"] in (
                f"dynamodb.{region}.amazonaws.com", f"sns.{region}.amazonaws.com")
        else:
            assert "Condition" not in statement
        for action in listed(statement["Action"]):
            granted.setdefault(action, []).extend(listed(statement["Resource"]))
    assert set(granted) == {"logs:CreateLogStream", "logs:PutLogEvents", "dynamodb:Query",
                            "kms:Decrypt", "kms:DescribeKey", "autoscaling:DescribeAutoScalingGroups",
                            "autoscaling:DescribeScalingActivities", "autoscaling:SetDesiredCapacity",
                            # the spot fallback: its switch, its state tag, its alert
                            "autoscaling:UpdateAutoScalingGroup", "autoscaling:CreateOrUpdateTags",
                            "autoscaling:DeleteTags", "sns:Publish", "kms:GenerateDataKey"}
    for action in ("autoscaling:UpdateAutoScalingGroup", "autoscaling:CreateOrUpdateTags",
                   "autoscaling:DeleteTags"):
        [arn] = granted[action]
        assert arn == {"Fn::GetAtt": [group_id, "AutoScalingGroupARN"]}
    [topic] = granted["sns:Publish"]
    assert topic["Fn::GetStackOutput"]["StackName"] == f"ml-{stage}-ops"
    assert granted["autoscaling:DescribeScalingActivities"] == ["*"]
    assert granted["dynamodb:Query"] == [
        {"Fn::Join": ["", [{"Fn::GetAtt": [table_id, "Arn"]}, "/index/by-state"]]}]
    [group_arn] = granted["autoscaling:SetDesiredCapacity"]
    assert group_arn == {"Fn::GetAtt": [group_id, "AutoScalingGroupARN"]}
    assert granted["autoscaling:DescribeAutoScalingGroups"] == ["*"]
    assert granted["logs:PutLogEvents"] == [{"Fn::GetAtt": [logs_id, "Arn"]}]
    keys = set(json.dumps(k, sort_keys=True) for k in granted["kms:Decrypt"] + granted["kms:DescribeKey"]
               + granted["kms:GenerateDataKey"])
    # The data key (runs table) and the messaging key (alerts topic), by reference.
    assert len(keys) == 2 and all("ml-" + stage + "-storage" in key for key in keys)
    [table_key] = set(json.dumps(k, sort_keys=True) for k in granted["kms:DescribeKey"])
    assert "Key961B73FDArn" in table_key


@pytest.mark.parametrize("stage", STAGES)
def test_logs_are_kept_and_errors_alarm_the_alerts_topic(synthesized, stage) -> None:
    config = synthesized.configs[stage]
    template = synthesized.stack(stage, "training").template_json
    logs_id, logs = one(template, "AWS::Logs::LogGroup", "RunsCapacityLogs")
    assert logs["Properties"]["RetentionInDays"] == config.training.log_retention_days
    _, function = one(template, "AWS::Lambda::Function", "RunsCapacity")
    assert function["Properties"]["LoggingConfig"]["LogGroup"] == {"Ref": logs_id}
    function_id, _ = one(template, "AWS::Lambda::Function", "RunsCapacity")
    _, alarm = one(template, "AWS::CloudWatch::Alarm", "RunsCapacityErrors")
    props = alarm["Properties"]
    assert (props["MetricName"], props["Namespace"], props["Threshold"]) == ("Errors", "AWS/Lambda", 1)
    assert props["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": function_id}}]
    [action] = props["AlarmActions"]
    assert action["Fn::GetStackOutput"]["StackName"] == f"ml-{stage}-ops"


def test_no_fallback_leaves_the_group_and_the_topic_alone(tmp_path) -> None:
    dev = default_configs()["dev"]
    config = replace(dev, training=replace(dev.training, spot_fallback_after_minutes=None))
    app = build_app([config], outdir=str(tmp_path))
    app.synth()
    template = Template.from_stack(app.node.find_child("dev").training).to_json()
    role_id, _ = one(template, "AWS::IAM::Role", "RunsCapacityRole")
    actions = {a for s in role_statements(template, role_id) for a in listed(s["Action"])}
    assert not actions & {"autoscaling:UpdateAutoScalingGroup", "autoscaling:CreateOrUpdateTags", "sns:Publish"}
    _, function = one(template, "AWS::Lambda::Function", "RunsCapacity")
    assert "SPOT_FALLBACK_AFTER_SECONDS" not in function["Properties"]["Environment"]["Variables"]
