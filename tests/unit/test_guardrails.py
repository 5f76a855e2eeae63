"""Ops stack guardrails: the stage budget and the in-stage drift detection,
and their config sections."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from aws_cdk.assertions import Match, Template

from ml_stacks.app_factory import build_app
from ml_stacks.config import BudgetConfig, ConfigError, DriftConfig, default_configs
from tests.conftest import STAGES, resources_of_type, stack_ids


@pytest.mark.parametrize("stage,limit", [("dev", 1500), ("staging", 5000), ("prod", 60000)])
def test_budget_alerts_the_topic_at_80_and_100_percent_actual_and_100_forecast(synthesized, stage, limit) -> None:
    topic = {"Ref": Match.string_like_regexp("^Alerts")}

    def alert(kind: str, percent: int) -> dict:
        return {"Notification": {"ComparisonOperator": "GREATER_THAN", "NotificationType": kind,
                                 "Threshold": percent, "ThresholdType": "PERCENTAGE"},
                "Subscribers": [{"Address": topic, "SubscriptionType": "SNS"}]}

    synthesized.template(stage, "ops").has_resource_properties("AWS::Budgets::Budget", {
        "Budget": {"BudgetName": f"ml-{stage}-monthly", "BudgetType": "COST", "TimeUnit": "MONTHLY",
                   "BudgetLimit": {"Amount": limit, "Unit": "USD"},
                   "CostFilters": {"TagKeyValue": [f"user:Environment${stage}"]}},
        "NotificationsWithSubscribers": [alert("ACTUAL", 80), alert("ACTUAL", 100), alert("FORECASTED", 100)],
    })


def test_budget_can_cover_the_whole_account(tmp_path) -> None:
    dev = default_configs()["dev"]
    dev = replace(dev, budget=replace(dev.budget, filter_by_environment_tag=False, actual_alert_percents=(50,)))
    template = Template.from_stack(build_app([dev], outdir=str(tmp_path)).node.find_child("dev").ops)
    [budget] = resources_of_type(template.to_json(), "AWS::Budgets::Budget").values()
    assert "CostFilters" not in budget["Properties"]["Budget"]
    assert [n["Notification"]["Threshold"] for n in budget["Properties"]["NotificationsWithSubscribers"]] == [50, 100]


@pytest.mark.parametrize("stage", STAGES)
def test_budgets_may_publish_to_the_topic_and_use_its_key(synthesized, stage) -> None:
    synthesized.template(stage, "ops").has_resource_properties("AWS::SNS::TopicPolicy", {
        "PolicyDocument": {"Statement": Match.array_with([Match.object_like({
            "Action": "sns:Publish", "Principal": {"Service": Match.array_with(["budgets.amazonaws.com"])},
            "Condition": {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}})])}})
    synthesized.template(stage, "storage").has_resource_properties("AWS::KMS::Key", {
        "KeyPolicy": {"Statement": Match.array_with([Match.object_like({
            "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
            "Principal": {"Service": Match.array_with(["budgets.amazonaws.com"])}})])}})


@pytest.mark.parametrize("stage", STAGES)
def test_drift_function_checks_every_stack_of_its_stage_daily(synthesized, stage) -> None:
    template = synthesized.template(stage, "ops")
    template.has_resource_properties("AWS::Lambda::Function", {
        "Handler": "handler.handler", "Runtime": "python3.14", "Timeout": 600,
        "Environment": {"Variables": {"STAGE": stage, "STACK_PREFIX": f"ml-{stage}-",
                                      "TOPIC_ARN": {"Ref": Match.string_like_regexp("^Alerts")}}},
    })
    # No reserved concurrency: an account with the minimum quota of 10 could
    # not reserve any, and an overlapping run only repeats read-only checks.
    assert "ReservedConcurrentExecutions" not in next(iter(
        resources_of_type(template.to_json(), "AWS::Lambda::Function").values()))["Properties"]
    template.has_resource_properties("AWS::Events::Rule", {
        "ScheduleExpression": "cron(0 6 * * ? *)",
        "Targets": [Match.object_like({"Arn": {"Fn::GetAtt": [Match.string_like_regexp("^DriftDetection"), "Arn"]},
                                       "RetryPolicy": {"MaximumEventAgeInSeconds": 7200,
                                                       "MaximumRetryAttempts": 2}})],
    })
    retention = default_configs()[stage].drift.log_retention_days
    template.has_resource_properties("AWS::Logs::LogGroup", {"RetentionInDays": retention})


@pytest.mark.parametrize("stage", STAGES)
def test_drift_function_may_detect_drift_only_on_its_stages_stacks(synthesized, stage) -> None:
    [policy] = resources_of_type(synthesized.template(stage, "ops").to_json(), "AWS::IAM::Policy").values()
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    by_sid = {s["Sid"]: s for s in statements if "Sid" in s}
    detect = by_sid["DetectDriftOfStageStacks"]
    assert detect["Action"] == ["cloudformation:DescribeStackResourceDrifts", "cloudformation:DetectStackDrift",
                                "cloudformation:DetectStackResourceDrift"]
    assert detect["Resource"]["Fn::Join"][1][-1] == f":stack/ml-{stage}-*/*"
    assert by_sid["ListStacksAndDetectionStatus"]["Action"] == [
        "cloudformation:DescribeStackDriftDetectionStatus", "cloudformation:ListStacks"]
    reads = by_sid["ReadConfigurationOfCheckedResources"]["Action"]
    # Configuration only: no object, secret or parameter values, nothing that writes.
    assert not [a for a in reads if a in ("s3:GetObject", "s3:Get*", "secretsmanager:GetSecretValue",
                                          "ssm:GetParameter", "ssm:Get*", "*")]
    assert all(a.split(":")[1].startswith(("Describe", "Get", "List", "View")) for a in reads)
    [publish] = [s for s in statements if s["Action"] == "sns:Publish"]
    assert publish["Resource"]["Ref"].startswith("Alerts")


# Read-handler permissions the drift function deliberately lacks
# (constructs_lib/drift_detection.py says why).
NOT_GRANTED_TO_DRIFT = {"kms:Decrypt", "iam:PassRole", "managed-fleets:Get*",
                        "vpc-lattice:DescribeServiceNetworkVpcEndpointAssociation"}
STAGE_SCOPED_SERVICES = ("lambda:", "iam:", "s3:", "ssm:GetParameter")


def read_handler_permissions() -> dict[str, list[str]]:
    """resource type -> its CloudFormation read handler's permissions, from
    the resource schemas cfn-lint ships (what drift detection calls)."""
    import glob
    import os

    import cfnlint

    permissions = {}
    for path in glob.glob(os.path.join(os.path.dirname(cfnlint.__file__), "data", "schemas", "resources", "*.json")):
        with open(path, encoding="utf-8") as f:
            schema = json.load(f)
        if isinstance(schema, dict) and "typeName" in schema:
            permissions[schema["typeName"]] = schema.get("handlers", {}).get("read", {}).get("permissions", [])
    return permissions


@pytest.mark.parametrize("stage", STAGES)
def test_drift_function_holds_every_read_its_stages_resource_types_need_and_no_wildcard(synthesized, stage) -> None:
    [policy] = resources_of_type(synthesized.template(stage, "ops").to_json(), "AWS::IAM::Policy").values()
    reads = [s for s in policy["Properties"]["PolicyDocument"]["Statement"]
             if s.get("Sid", "").startswith("ReadConfiguration")]
    granted = {a for s in reads for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert not [a for a in granted if "*" in a]
    schemas = read_handler_permissions()
    types = {r["Type"] for name in stack_ids(synthesized.configs[stage])
             for r in synthesized.stack(stage, name).template_json["Resources"].values()}
    missing = {}
    for resource_type in sorted(t for t in types if t.startswith("AWS::")):
        for permission in schemas[resource_type]:
            if permission in NOT_GRANTED_TO_DRIFT:
                continue
            covered = (any(a.startswith(permission[:-1]) for a in granted) if permission.endswith("*")
                       else permission in granted)
            if not covered:
                missing.setdefault(resource_type, []).append(permission)
    assert not missing
    # Functions, roles, buckets and parameter values: the stage's own only.
    prefix = f"ml-{stage}"
    for statement in reads:
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        if any(a.startswith(STAGE_SCOPED_SERVICES) for a in actions):
            resource = json.dumps(statement["Resource"])
            assert f":function:{prefix}-*" in resource or ":event-source-mapping:*" in resource \
                or f"/{prefix}-*" in resource or f":::{prefix}-*" in resource \
                or f":parameter/{prefix}/*" in resource, statement


@pytest.mark.parametrize("stage", STAGES)
def test_a_failing_drift_function_alarms_the_topic(synthesized, stage) -> None:
    synthesized.template(stage, "ops").has_resource_properties("AWS::CloudWatch::Alarm", {
        "MetricName": "Errors", "Namespace": "AWS/Lambda", "Threshold": 1,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold", "TreatMissingData": "notBreaching",
        "AlarmActions": [{"Ref": Match.string_like_regexp("^Alerts")}],
    })


def test_drift_detection_can_be_switched_off(tmp_path) -> None:
    dev = replace(default_configs()["dev"], drift=DriftConfig(enabled=False))
    stage = build_app([dev], outdir=str(tmp_path)).node.find_child("dev")
    assert stage.ops.drift_detection is None
    Template.from_stack(stage.ops).resource_count_is("AWS::Lambda::Function", 0)


@pytest.mark.parametrize("section,field_path,value,allowed", [
    (BudgetConfig(monthly_limit_usd=0), "dev.budget.monthly_limit_usd", 0, "from 1 to 10,000,000"),
    (BudgetConfig(monthly_limit_usd=99.5), "dev.budget.monthly_limit_usd", 99.5, "a whole number"),
    (BudgetConfig(actual_alert_percents=(80, 0)), "dev.budget.actual_alert_percents", 0, "from 1 to 1000"),
    (BudgetConfig(actual_alert_percents=[80]), "dev.budget.actual_alert_percents", [80], "a tuple"),
    (BudgetConfig(forecast_alert_percents=(100, 100)), "dev.budget.forecast_alert_percents", (100, 100),
     "each percentage once"),
    (BudgetConfig(actual_alert_percents=(50, 80, 90, 100), forecast_alert_percents=(90, 100)),
     "dev.budget.actual_alert_percents", 6, "1 to 5 alerts in total"),
    (BudgetConfig(filter_by_environment_tag="yes"), "dev.budget.filter_by_environment_tag", "yes", "True or False"),
    (DriftConfig(schedule_hour_utc=24), "dev.drift.schedule_hour_utc", 24, "0 to 23"),
    (DriftConfig(enabled=1), "dev.drift.enabled", 1, "True or False"),
    (DriftConfig(log_retention_days=10), "dev.drift.log_retention_days", 10, "a CloudWatch Logs retention"),
])
def test_fails_on_a_bad_budget_or_drift_value(section, field_path, value, allowed) -> None:
    dev = default_configs()["dev"]
    name = "budget" if isinstance(section, BudgetConfig) else "drift"
    with pytest.raises(ConfigError) as error:
        replace(dev, **{name: section})
    assert error.value.field_path == field_path
    assert error.value.value == value
    assert allowed in error.value.allowed
    assert str(error.value).startswith(f"{field_path}: {value!r} is not allowed — ")
