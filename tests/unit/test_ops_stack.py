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
def test_only_this_accounts_alarms_and_rules_may_publish(synthesized, stage) -> None:
    same_account = {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    services = ["budgets.amazonaws.com", "cloudwatch.amazonaws.com", "events.amazonaws.com"]
    synthesized.template(stage, "ops").has_resource_properties("AWS::SNS::TopicPolicy", {
        "PolicyDocument": {"Statement": Match.array_with([Match.object_like({
            "Effect": "Allow", "Action": "sns:Publish", "Principal": {"Service": services},
            "Condition": same_account})])}})
    synthesized.template(stage, "storage").has_resource_properties("AWS::KMS::Key", {
        "KeyPolicy": {"Statement": Match.array_with([Match.object_like({
            "Effect": "Allow", "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
            "Principal": {"Service": services}, "Condition": same_account})])}})


def test_no_subscriptions_unless_configured(synthesized) -> None:
    synthesized.template("prod", "ops").resource_count_is("AWS::SNS::Subscription", 0)


def test_configured_email_subscribers_are_subscribed(tmp_path) -> None:
    dev = replace(default_configs()["dev"], alerts=AlertsConfig(email_subscribers=("oncall@example.com",)))
    app = build_app([dev], outdir=str(tmp_path))
    template = Template.from_stack(app.node.find_child("dev").ops)
    template.has_resource_properties("AWS::SNS::Subscription",
                                     {"Protocol": "email", "Endpoint": "oncall@example.com"})


def test_ops_stack_exposes_the_topic(synthesized) -> None:
    assert callable(synthesized.app.node.find_child("dev").ops.alerts_topic.grant_publish)
