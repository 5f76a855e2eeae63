"""Runs in the training stack (node_agent/RUNS_CONTRACT.md): the table, the
log group, the stack outputs the CLI reads, the agent's environment in user
data, and instance IAM that follows the run and nothing wider."""

from __future__ import annotations

import json

import pytest
from aws_cdk.assertions import Match, Template

from constructs_lib import node_agent, training_runs
from constructs_lib.gpu_training_fleet import SSM_AGENT_ACTIONS
from ml_runs import runs as cli_runs
from ml_runs.stage import OUTPUTS
from tests.conftest import STAGES, resources_of_type


def flat(value) -> str:
    return json.dumps(value, sort_keys=True)


def storage_output(stage: str, name: str):
    return Match.object_like({"Fn::GetStackOutput": Match.object_like({
        "StackName": f"ml-{stage}-storage", "OutputName": Match.string_like_regexp(name)})})


def removal(config) -> str:
    return "Retain" if config.storage.retain else "Delete"


def fleet_statements(template: dict) -> list[dict]:
    """Every statement of every policy attached to the instance role."""
    [role_id] = [k for k, r in resources_of_type(template, "AWS::IAM::Role").items() if k.startswith("FleetRole")]
    return [s for p in resources_of_type(template, "AWS::IAM::Policy").values()
            if {"Ref": role_id} in p["Properties"]["Roles"]
            for s in p["Properties"]["PolicyDocument"]["Statement"]]


def actions(statement: dict) -> set[str]:
    value = statement["Action"]
    return {value} if isinstance(value, str) else set(value)


def gpu_metrics_namespace(stage: str) -> str:
    from constructs_lib.gpu_metrics import metric_definition
    return metric_definition()["namespace"]


def logical_id(template: dict, resource_type: str, prefix: str) -> str:
    [found] = [k for k in resources_of_type(template, resource_type) if k.startswith(prefix)]
    return found


# --- table and log group ------------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_runs_table_is_the_contract_schema_encrypted_with_the_stage_key_and_recoverable(synthesized, stage) -> None:
    config = synthesized.configs[stage]
    template = synthesized.template(stage, "training")
    assert cli_runs.STATE_INDEX == training_runs.STATE_INDEX == "by-state"
    template.has_resource("AWS::DynamoDB::Table", {
        "Properties": {
            "KeySchema": [{"AttributeName": "run_id", "KeyType": "HASH"}],
            "AttributeDefinitions": Match.array_with([{"AttributeName": "run_id", "AttributeType": "S"},
                                                      {"AttributeName": "state", "AttributeType": "S"},
                                                      {"AttributeName": "created_at", "AttributeType": "S"}]),
            "GlobalSecondaryIndexes": [{
                "IndexName": cli_runs.STATE_INDEX,
                "KeySchema": [{"AttributeName": "state", "KeyType": "HASH"},
                              {"AttributeName": "created_at", "KeyType": "RANGE"}],
                "Projection": {"ProjectionType": "ALL"}}],
            "BillingMode": "PAY_PER_REQUEST",
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            "SSESpecification": {"SSEEnabled": True, "SSEType": "KMS",
                                 "KMSMasterKeyId": storage_output(stage, "FnGetAttKey961B73FD")},
            "DeletionProtectionEnabled": config.storage.retain,
        },
        "DeletionPolicy": removal(config),
        "UpdateReplacePolicy": removal(config),
    })
    table = template.to_json()["Resources"][logical_id(template.to_json(), "AWS::DynamoDB::Table", "RunsTable")]
    assert "TableName" not in table["Properties"]  # a retained table never blocks re-creating the stage


@pytest.mark.parametrize("stage", STAGES)
def test_runs_log_group_is_encrypted_with_the_logs_key_and_keeps_the_configured_retention(synthesized, stage) -> None:
    config = synthesized.configs[stage]
    template = synthesized.template(stage, "training")
    template.has_resource("AWS::Logs::LogGroup", {
        "Properties": {"KmsKeyId": storage_output(stage, "FnGetAttLogsKey"),
                       "RetentionInDays": config.training.runs_log_retention_days},
        "DeletionPolicy": removal(config),
    })
    group = template.to_json()["Resources"][logical_id(template.to_json(), "AWS::Logs::LogGroup", "RunsLogs")]
    # Named under the stage's prefix (what the logs key admits), unique per
    # creation of the stack: a retained group never blocks re-creating the stage.
    prefix, stack_uuid = group["Properties"]["LogGroupName"]["Fn::Join"][1]
    assert prefix == f"/ml-{stage}/training/runs/"
    assert stack_uuid == {"Fn::Select": [2, {"Fn::Split": ["/", {"Ref": "AWS::StackId"}]}]}


@pytest.mark.parametrize("stage", STAGES)
def test_training_stack_outputs_what_the_cli_reads(synthesized, stage) -> None:
    template = synthesized.template(stage, "training")
    outputs = template.to_json()["Outputs"]
    assert set(OUTPUTS.values()) <= set(outputs)
    assert outputs["RunsTableName"]["Value"] == {"Ref": logical_id(template.to_json(), "AWS::DynamoDB::Table", "RunsTable")}
    assert outputs["RunsLogGroupName"]["Value"] == {"Ref": logical_id(template.to_json(), "AWS::Logs::LogGroup", "RunsLogs")}
    assert outputs["AutoScalingGroupName"]["Value"] == f"ml-{stage}-training-gpu"
    template.has_output("CheckpointBucketName", {"Value": storage_output(stage, "Checkpoints")})


# --- user data ----------------------------------------------------------------------------

def install_environment(template: dict) -> dict[str, object]:
    """The variables user data passes to install.sh: literals, or the token's
    CloudFormation value."""
    [data] = [r["Properties"]["LaunchTemplateData"] for r in resources_of_type(
        template, "AWS::EC2::LaunchTemplate").values()]
    parts = data["UserData"]["Fn::Base64"]["Fn::Join"][1]
    start = next(i for i, p in enumerate(parts) if isinstance(p, str) and "ML_CHECKPOINT_BUCKET=" in p)
    environment: dict[str, object] = {}
    pending = None
    for part in parts[start:]:
        if not isinstance(part, str):
            environment[pending] = part
            continue
        line = part.split("\n")[-1] if pending is None else part.split("\n")[0]
        for word in line.split(" "):
            if "=" in word:
                name, _, value = word.partition("=")
                environment[name] = value if value else None
                pending = name
        if "install.sh" in part:
            break
    return environment


@pytest.mark.parametrize("stage", STAGES)
def test_user_data_passes_every_variable_of_both_contracts(synthesized, stage) -> None:
    config = synthesized.configs[stage]
    training = config.training
    template = synthesized.stack(stage, "training").template_json
    environment = install_environment(template)
    assert {k: v for k, v in environment.items() if isinstance(v, str)} == {
        "ML_STAGE": stage,
        "ML_CHECKPOINT_DIR": training.checkpoint_dir,
        "ML_CHECKPOINT_DONE_MARKER": training.checkpoint_done_marker,
        "ML_TRAINING_SIGNAL": training.training_signal,
        "ML_CHECKPOINT_BUDGET_SECONDS": str(training.checkpoint_budget_seconds),
        "ML_HEARTBEAT_SECONDS": str(training.heartbeat_interval_seconds),
        "ML_TRAINER_LAUNCHER": "docker",
        "ML_LEASE_SECONDS": str(training.lease_seconds),
        "ML_LEASE_RENEW_SECONDS": str(training.lease_renew_seconds),
        "ML_CLAIM_POLL_SECONDS": str(training.claim_poll_seconds),
        "ML_HUNG_AFTER_SECONDS": str(training.hung_after_minutes * 60),
        "ML_HUNG_ACTION": training.hung_action,
        "ML_METRICS_NAMESPACE": "MlInfra/NodeAgent",
        "ML_AUTOSCALING_GROUP_NAME": f"ml-{stage}-training-gpu",
        "ML_LIFECYCLE_HOOK_NAME": f"ml-{stage}-training-gpu-terminating",
        "AWS_REGION": config.region,
    }
    table = logical_id(template, "AWS::DynamoDB::Table", "RunsTable")
    group = logical_id(template, "AWS::Logs::LogGroup", "RunsLogs")
    assert environment["ML_RUNS_TABLE"] == {"Ref": table}
    assert environment["ML_RUNS_LOG_GROUP"] == {"Ref": group}
    assert environment["ML_ALERTS_TOPIC_ARN"]["Fn::GetStackOutput"]["StackName"] == f"ml-{stage}-ops"
    assert "Alerts" in environment["ML_ALERTS_TOPIC_ARN"]["Fn::GetStackOutput"]["OutputName"]
    assert "Checkpoints" in environment["ML_CHECKPOINT_BUCKET"]["Fn::GetStackOutput"]["OutputName"]
    assert environment["ML_EVENT_BUS_NAME"]["Fn::GetStackOutput"]["StackName"] == f"ml-{stage}-idle"
    assert "ML_TRAINING_UNIT" not in environment


# --- instance IAM --------------------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_instances_reach_only_the_runs_items_they_need(synthesized, stage) -> None:
    template = synthesized.stack(stage, "training").template_json
    table = logical_id(template, "AWS::DynamoDB::Table", "RunsTable")
    statements = fleet_statements(template)
    dynamo = [s for s in statements if any(a.startswith("dynamodb:") for a in actions(s))]
    assert len(dynamo) == 1
    assert actions(dynamo[0]) == {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:Query"}
    assert dynamo[0]["Resource"] == [{"Fn::GetAtt": [table, "Arn"]},
                                     {"Fn::Join": ["", [{"Fn::GetAtt": [table, "Arn"]}, "/index/by-state"]]}]


@pytest.mark.parametrize("stage", STAGES)
def test_instances_read_and_write_only_runs_of_the_checkpoint_bucket(synthesized, stage) -> None:
    template = synthesized.template(stage, "training")
    checkpoints = storage_output(stage, "Checkpoints")
    template.has_resource_properties("AWS::IAM::Policy", {"PolicyDocument": {"Statement": Match.array_with([
        {"Sid": "ReadWriteRunCheckpoints", "Effect": "Allow",
         "Action": ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"],
         "Resource": {"Fn::Join": ["", [checkpoints, "/runs/*"]]}},
        {"Sid": "ListRunCheckpoints", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": checkpoints,
         "Condition": {"StringLike": {"s3:prefix": ["runs/*"]}}},
    ])}})
    statements = fleet_statements(template.to_json())
    on_checkpoints = [s for s in statements if "Checkpoints" in flat(s["Resource"])]
    assert {s.get("Sid") for s in on_checkpoints} == {"ReadWriteRunCheckpoints", "ListRunCheckpoints"}


@pytest.mark.parametrize("stage", STAGES)
def test_instances_publish_events_alerts_and_logs_and_pull_stage_images(synthesized, stage) -> None:
    template = synthesized.stack(stage, "training").template_json
    statements = fleet_statements(template)
    by_action = {a: s for s in statements for a in actions(s)}
    # Only the idle stack's job-finished bus (tests/unit/test_trusted_events.py).
    bus = by_action["events:PutEvents"]["Resource"]["Fn::GetStackOutput"]
    assert bus["StackName"] == f"ml-{stage}-idle" and "JobFinishedBus" in bus["OutputName"]
    publish = by_action["sns:Publish"]["Resource"]["Fn::GetStackOutput"]
    assert publish["StackName"] == f"ml-{stage}-ops" and "Alerts" in publish["OutputName"]
    group = logical_id(template, "AWS::Logs::LogGroup", "RunsLogs")
    logs = [s for s in statements if any(a.startswith("logs:") for a in actions(s))]
    assert [(actions(s), s["Resource"]) for s in logs] == [
        ({"logs:CreateLogStream", "logs:PutLogEvents"}, {"Fn::GetAtt": [group, "Arn"]})]
    images = by_action["ecr:BatchGetImage"]
    assert actions(images) == {"ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"}
    assert images["Resource"]["Fn::GetStackOutput"]["StackName"] == f"ml-{stage}-storage"
    assert "Images" in images["Resource"]["Fn::GetStackOutput"]["OutputName"]
    assert by_action["ecr:GetAuthorizationToken"]["Resource"] == "*"


@pytest.mark.parametrize("stage", STAGES)
def test_instance_key_use_is_the_stage_key_for_exactly_what_the_services_need(synthesized, stage) -> None:
    """S3 (SSE-KMS), DynamoDB (customer managed key) and SNS (encrypted topic)
    all use the stage key on the caller's behalf."""
    statements = fleet_statements(synthesized.stack(stage, "training").template_json)
    kms = [s for s in statements if any(a.startswith("kms:") for a in actions(s))]
    assert set().union(*map(actions, kms)) == {"kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey",
                                               "kms:DescribeKey"}
    for statement in kms:
        reference = statement["Resource"]["Fn::GetStackOutput"]
        assert reference["StackName"] == f"ml-{stage}-storage" and "Key" in reference["OutputName"]


@pytest.mark.parametrize("stage", STAGES)
def test_no_wider_grant_remains_on_the_instance_role(synthesized, stage) -> None:
    statements = fleet_statements(synthesized.stack(stage, "training").template_json)
    granted = set().union(*map(actions, statements))
    assert not granted & {"dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:Scan", "dynamodb:BatchWriteItem",
                          "dynamodb:*", "s3:DeleteObject", "s3:*", "s3:PutObject*", "kms:*", "sns:*",
                          "events:*", "logs:*", "ecr:*", "kms:ReEncrypt*", "kms:GenerateDataKey*"}
    unscoped = sorted(a for s in statements if s["Resource"] == "*" for a in actions(s))
    # None supports resource-level permissions; PutMetricData is conditioned on its namespace;
    # the SSM agent's own calls (no parameter read among them).
    # (one PutMetricData statement for both namespaces: the role's one policy on *)
    assert unscoped == sorted(["cloudwatch:PutMetricData",
                               "ecr:GetAuthorizationToken", *SSM_AGENT_ACTIONS])
    assert not {a for a in SSM_AGENT_ACTIONS if a.startswith("ssm:GetParameter")}
    [namespaces] = [sorted(s["Condition"]["StringEquals"]["cloudwatch:namespace"]) for s in statements
                    if "cloudwatch:PutMetricData" in actions(s)]
    # The CloudWatch agent's GPU metrics (gpu_metrics) and the node agent's own.
    assert namespaces == sorted([node_agent.METRICS_NAMESPACE, gpu_metrics_namespace(stage)])
    assert "/i-*" not in flat(statements)


def test_lease_poll_and_log_retention_follow_the_config(tmp_path) -> None:
    from dataclasses import replace

    from ml_stacks.app_factory import build_app
    from ml_stacks.config import default_configs

    dev = default_configs()["dev"]
    config = replace(dev, training=replace(dev.training, lease_seconds=120, lease_renew_seconds=40,
                                           claim_poll_seconds=5, runs_log_retention_days=7,
                                           hung_after_minutes=7, hung_action="alert"))
    app = build_app([config], outdir=str(tmp_path))
    app.synth()
    template = Template.from_stack(app.node.find_child("dev").training)
    template.has_resource_properties("AWS::Logs::LogGroup", {"RetentionInDays": 7, "KmsKeyId": Match.any_value()})
    environment = install_environment(template.to_json())
    assert (environment["ML_LEASE_SECONDS"], environment["ML_LEASE_RENEW_SECONDS"],
            environment["ML_CLAIM_POLL_SECONDS"]) == ("120", "40", "5")
    assert (environment["ML_HUNG_AFTER_SECONDS"], environment["ML_HUNG_ACTION"]) == ("420", "alert")


@pytest.mark.parametrize("stage", STAGES)
def test_stage_key_delegates_to_iam_so_the_instance_grants_take_effect(synthesized, stage) -> None:
    """The role's KMS statements (S3, DynamoDB, the encrypted alerts topic for
    the FAILED alert) work only because the key policy lets the account's IAM
    policies grant the key."""
    synthesized.template(stage, "storage").has_resource_properties("AWS::KMS::Key", {
        "KeyPolicy": {"Statement": Match.array_with([{
            "Action": "kms:*", "Effect": "Allow", "Resource": "*",
            "Principal": {"AWS": {"Fn::Join": ["", ["arn:aws:iam::", {"Ref": "AWS::AccountId"}, ":root"]]}},
        }])},
    })
    ops = synthesized.template(stage, "ops").to_json()
    [topic] = resources_of_type(ops, "AWS::SNS::Topic").values()
    assert "Key" in topic["Properties"]["KmsMasterKeyId"]["Fn::GetStackOutput"]["OutputName"]
