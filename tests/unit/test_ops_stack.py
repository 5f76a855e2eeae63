"""Ops stack: the stage's encrypted alerts topic."""

from __future__ import annotations

from dataclasses import replace

import pytest
from aws_cdk.assertions import Match, Template

from ml_stacks.app_factory import build_app
from ml_stacks.config import AlertsConfig, default_configs
from tests.conftest import STAGES


@pytest.mark.parametrize("stage", STAGES)
def test_alerts_topic_is_encrypted_with_the_stage_key_and_tls_only(synthesized, stage) -> None:
    template = synthesized.template(stage, "ops")
    template.has_resource_properties("AWS::SNS::Topic", {
        "KmsMasterKeyId": {"Fn::GetStackOutput": Match.object_like({"StackName": f"ml-{stage}-storage"})},
    })
    template.has_resource_properties("AWS::SNS::TopicPolicy", {"PolicyDocument": {"Statement": Match.array_with([
        Match.object_like({"Effect": "Deny", "Action": "sns:Publish",
                           "Condition": {"Bool": {"aws:SecureTransport": "false"}}}),
    ])}})


@pytest.mark.parametrize("stage", STAGES)
def test_only_this_accounts_alarms_and_rules_may_publish_and_alarms_use_the_key(synthesized, stage) -> None:
    same_account = {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    services = ["budgets.amazonaws.com", "cloudwatch.amazonaws.com", "events.amazonaws.com"]
    synthesized.template(stage, "ops").has_resource_properties("AWS::SNS::TopicPolicy", {
        "PolicyDocument": {"Statement": Match.array_with([Match.object_like({
            "Effect": "Allow", "Action": "sns:Publish", "Principal": {"Service": services},
            "Condition": same_account})])}})
    synthesized.template(stage, "storage").has_resource_properties("AWS::KMS::Key", {
        "KeyPolicy": {"Statement": Match.array_with([Match.object_like({
            "Effect": "Allow", "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
            "Principal": {"Service": ["budgets.amazonaws.com", "cloudwatch.amazonaws.com"]},
            "Condition": same_account})])}})


def key_statements_for(template_json: dict, service: str) -> list[dict]:
    [key] = [r for r in template_json["Resources"].values() if r["Type"] == "AWS::KMS::Key"]
    statements = []
    for statement in key["Properties"]["KeyPolicy"]["Statement"]:
        principals = statement.get("Principal", {}).get("Service", [])
        if service in ([principals] if isinstance(principals, str) else principals):
            statements.append(statement)
    return statements


@pytest.mark.parametrize("stage", STAGES)
def test_eventbridge_may_use_the_alerts_key_without_a_source_account_condition(synthesized, stage) -> None:
    # EventBridge publishing to a KMS-encrypted SNS topic does not support
    # aws:SourceAccount in the key policy: with it, its messages are dropped.
    # (aws-cdk-lib's own grant for the encrypted SQS interruption queue keeps its
    # condition: encrypted SQS supports it.) KMS allows what any statement allows.
    statements = key_statements_for(synthesized.stack(stage, "storage").template_json,
                                    "events.amazonaws.com")
    usable = [s for s in statements
              if s["Effect"] == "Allow" and {"kms:Decrypt", "kms:GenerateDataKey*"} <= set(s["Action"])
              and "aws:SourceAccount" not in str(s.get("Condition", {}))]
    assert usable, "EventBridge cannot use the alerts topic's key to publish"
    assert [s.get("Sid") for s in usable] == ["AllowEventBridgeToUseAlertsTopicKey"]
    assert "Condition" not in usable[0]


@pytest.mark.parametrize("stage", STAGES)
def test_no_subscriptions_unless_configured(synthesized, stage) -> None:
    subscribers = synthesized.configs[stage].alerts.email_subscribers
    synthesized.template(stage, "ops").resource_count_is("AWS::SNS::Subscription", len(subscribers))


def test_configured_email_subscribers_are_subscribed(tmp_path) -> None:
    dev = replace(default_configs()["dev"], alerts=AlertsConfig(email_subscribers=("oncall@example.com",)))
    app = build_app([dev], outdir=str(tmp_path))
    template = Template.from_stack(app.node.find_child("dev").ops)
    template.has_resource_properties("AWS::SNS::Subscription",
                                     {"Protocol": "email", "Endpoint": "oncall@example.com"})


def test_ops_stack_exposes_the_topic(synthesized) -> None:
    assert callable(synthesized.app.node.find_child("dev").ops.alerts_topic.grant_publish)
