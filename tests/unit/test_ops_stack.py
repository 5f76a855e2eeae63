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
    [statement] = [s for s in key_statements_for(synthesized.stack(stage, "storage").template_json,
                                                 "cloudwatch.amazonaws.com")]
    assert statement["Principal"] == {"Service": ["budgets.amazonaws.com", "cloudwatch.amazonaws.com"]}
    assert statement["Action"] == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert statement["Condition"]["StringEquals"] == same_account["StringEquals"]
    # ... and only for this account's topics in this region (SNS's encryption context).
    assert flat_join(statement["Condition"]["ArnLike"]["kms:EncryptionContext:aws:sns:topicArn"]) == (
        f"arn:aws:sns:{synthesized.configs[stage].region}:<AWS::AccountId>:*")


def flat_join(value) -> str:
    if isinstance(value, str):
        return value
    return "".join(p if isinstance(p, str) else f"<{p['Ref']}>" for p in value["Fn::Join"][1])


def key_statements_for(template_json: dict, service: str) -> list[dict]:
    """Statements of the messaging key (the alerts topic's key) naming ``service``."""
    key = template_json["Resources"]["MessagingKey9A79A2B1"]
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
    # Its statement is bound to this account's topics by the encryption
    # context SNS always sends instead. The queue statement keeps both
    # aws:SourceAccount and aws:SourceArn: encrypted SQS supports them.
    statements = key_statements_for(synthesized.stack(stage, "storage").template_json,
                                    "events.amazonaws.com")
    usable = [s for s in statements
              if s["Effect"] == "Allow" and {"kms:Decrypt", "kms:GenerateDataKey"} <= set(s["Action"])
              and "aws:SourceAccount" not in str(s.get("Condition", {}))]
    assert usable, "EventBridge cannot use the alerts topic's key to publish"
    assert [s.get("Sid") for s in usable] == ["AllowEventBridgeToPublishToStageTopics"]
    assert list(usable[0]["Condition"]) == ["ArnLike"]
    assert list(usable[0]["Condition"]["ArnLike"]) == ["kms:EncryptionContext:aws:sns:topicArn"]
    [queues] = [s for s in statements if s not in usable]
    assert set(queues["Condition"]) == {"StringEquals", "ArnLike"}
    assert flat_join(queues["Condition"]["ArnLike"]["aws:SourceArn"]).endswith(":<AWS::AccountId>:rule/*")


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
