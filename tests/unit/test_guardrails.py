"""Ops stack guardrails: the stage budget and the in-stage drift detection,
and their config sections."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from aws_cdk.assertions import Match, Template

from ml_stacks.app_factory import build_app
from ml_stacks.config import BudgetConfig, ConfigError, DriftConfig, default_configs
from ml_stacks.fixed_names import gpu_agent_parameter
from tests.conftest import STAGES, replicated_dev, resources_of_type, stacks_of


@pytest.mark.parametrize("stage", STAGES)
def test_budget_alerts_the_topic_at_the_configured_actual_and_forecast_percents(synthesized, stage) -> None:
    budget = synthesized.configs[stage].budget
    topic = {"Ref": Match.string_like_regexp("^Alerts")}

    def alert(kind: str, percent: int) -> dict:
        return {"Notification": {"ComparisonOperator": "GREATER_THAN", "NotificationType": kind,
                                 "Threshold": percent, "ThresholdType": "PERCENTAGE"},
                "Subscribers": [{"Address": topic, "SubscriptionType": "SNS"}]}

    synthesized.template(stage, "ops").has_resource_properties("AWS::Budgets::Budget", {
        "Budget": {"BudgetName": f"ml-{stage}-monthly", "BudgetType": "COST", "TimeUnit": "MONTHLY",
                   "BudgetLimit": {"Amount": budget.monthly_limit_usd, "Unit": "USD"},
                   "CostFilters": ({"TagKeyValue": [f"user:Environment${stage}"]}
                                   if budget.filter_by_environment_tag else Match.absent())},
        "NotificationsWithSubscribers": [*(alert("ACTUAL", p) for p in budget.actual_alert_percents),
                                         *(alert("FORECASTED", p) for p in budget.forecast_alert_percents)],
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
    key = synthesized.stack(stage, "storage").template_json["Resources"]["MessagingKey9A79A2B1"]
    assert any(s["Action"] == ["kms:Decrypt", "kms:GenerateDataKey"]
               and "budgets.amazonaws.com" in s["Principal"].get("Service", [])
               for s in key["Properties"]["KeyPolicy"]["Statement"])


def _stack_regions(synthesized, stage, *, holding: str | None = None) -> list[str]:
    """The regions the stage's stacks deploy to (those ``holding`` a resource
    of that type, if given), the ops stack's first."""
    def region(name: str) -> str:
        return synthesized.stack(stage, name).environment.rsplit("/", 1)[1]

    regions = {region(name) for name in stacks_of(synthesized.configs[stage])
               if holding is None or resources_of_type(synthesized.stack(stage, name).template_json, holding)}
    home = region("ops")
    return [home, *sorted(regions - {home})]


@pytest.mark.parametrize("stage", STAGES)
def test_drift_function_checks_every_stack_of_its_stage_daily(synthesized, stage) -> None:
    template = synthesized.template(stage, "ops")
    # Stacks in another region (prod's replica) are checked there too.
    others = _stack_regions(synthesized, stage)[1:]
    template.has_resource_properties("AWS::Lambda::Function", {
        "Handler": "handler.handler", "Runtime": "python3.14", "Timeout": 600,
        "Environment": {"Variables": {"STAGE": stage, "STACK_PREFIX": f"ml-{stage}-",
                                      "TOPIC_ARN": {"Ref": Match.string_like_regexp("^Alerts")},
                                      "OTHER_REGIONS": ",".join(others) if others else Match.absent()}},
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
    resources = detect["Resource"] if isinstance(detect["Resource"], list) else [detect["Resource"]]
    assert [r["Fn::Join"][1][0] for r in resources] == [
        f"arn:aws:cloudformation:{region}:" for region in _stack_regions(synthesized, stage)]
    assert {r["Fn::Join"][1][-1] for r in resources} == {f":stack/ml-{stage}-*/*"}
    # Functions are read in each region where the stage has some; IAM is global.
    functions = by_sid["ReadConfigurationOfStageResources0"]["Resource"]
    functions = functions if isinstance(functions, list) else [functions]
    assert [f["Fn::Join"][1][0] for f in functions] == [
        f"arn:aws:lambda:{region}:"
        for region in _stack_regions(synthesized, stage, holding="AWS::Lambda::Function")]
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
# Lambda reads allowed on *: event source mappings are named by a generated
# UUID, and tags are neither code nor environment.
LAMBDA_READS_ON_STAR = {"lambda:GetEventSourceMapping", "lambda:ListTags"}


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
    types = {r["Type"] for name in stacks_of(synthesized.configs[stage])
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
        if statement["Resource"] == "*":
            assert not {a for a in actions if a.startswith(STAGE_SCOPED_SERVICES)} - LAMBDA_READS_ON_STAR
            continue
        if any(a.startswith(STAGE_SCOPED_SERVICES) for a in actions):
            resource = json.dumps(statement["Resource"])
            assert f":function:{prefix}-*" in resource or ":event-source-mapping:*" in resource \
                or f"/{prefix}-*" in resource \
                or statement["Sid"] == "ReadConfigurationOfStageBuckets" \
                or f":parameter{gpu_agent_parameter(synthesized.configs[stage])}" in resource, statement
    # Buckets: each of the storage stack's buckets by reference, each of the
    # replica's (another region) by its name; no pattern.
    [buckets] = [s for s in reads if s["Sid"] == "ReadConfigurationOfStageBuckets"]
    storage = synthesized.stack(stage, "storage").template_json["Resources"]
    bucket_ids = sorted(lid for lid, r in storage.items() if r["Type"] == "AWS::S3::Bucket")
    references = [r["Fn::GetStackOutput"] for r in buckets["Resource"] if "Fn::GetStackOutput" in r]
    assert all(r["StackName"] == f"ml-{stage}-storage" for r in references)
    assert sorted(next(lid for lid in bucket_ids if lid in r["OutputName"]) for r in references) == bucket_ids
    named = [r["Fn::Join"][1] for r in buckets["Resource"] if "Fn::GetStackOutput" not in r]
    replica = (synthesized.stack(stage, "replica").template_json["Resources"]
               if "replica" in stacks_of(synthesized.configs[stage]) else {})
    replica_names = [r["Properties"]["BucketName"]["Fn::Join"][1] for r in replica.values()
                     if r["Type"] == "AWS::S3::Bucket"]
    assert sorted(json.dumps(["arn:aws:s3:::" + n[0], *n[1:]]) for n in replica_names) == \
        sorted(json.dumps(n) for n in named)
    # Parameter values: the stage's parameters by their full names, no pattern.
    [parameters] = [s for s in reads if s["Sid"] == "ReadConfigurationOfStageParameters"]
    assert parameters["Action"] == "ssm:GetParameters"
    assert "*" not in json.dumps(parameters["Resource"])
    assert f":parameter{gpu_agent_parameter(synthesized.configs[stage])}" in json.dumps(parameters["Resource"])


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


def test_a_replica_holding_functions_has_them_read_in_its_region(tmp_path) -> None:
    # A stage that destroys its data replicates into buckets CDK's provider
    # function empties on destroy: that function lives in the replica's region.
    dev, replica_region = replicated_dev()
    stage = build_app([dev], outdir=str(tmp_path)).node.find_child("dev")
    assert stage.replica.has_functions
    [policy] = resources_of_type(Template.from_stack(stage.ops).to_json(), "AWS::IAM::Policy").values()
    by_sid = {s["Sid"]: s for s in policy["Properties"]["PolicyDocument"]["Statement"] if "Sid" in s}
    assert [f["Fn::Join"][1][0] for f in by_sid["ReadConfigurationOfStageResources0"]["Resource"]] == [
        f"arn:aws:lambda:{dev.region}:", f"arn:aws:lambda:{replica_region}:"]
    assert [s["Fn::Join"][1][0] for s in by_sid["DetectDriftOfStageStacks"]["Resource"]] == [
        f"arn:aws:cloudformation:{dev.region}:", f"arn:aws:cloudformation:{replica_region}:"]
