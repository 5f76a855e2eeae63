"""The acknowledgement helpers on a small app: tokens in a finding id, and
one policy per role for the actions that need ``Resource: *``."""

from __future__ import annotations

import json

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam
from cdk_nag import AwsSolutionsChecks

from constructs_lib.acknowledge import UNSCOPED_POLICY_ID, UnscopedApis, acknowledge


def small_app(tmp_path) -> tuple[cdk.App, cdk.Stack, iam.Role]:
    app = cdk.App(outdir=str(tmp_path),
                  post_cli_context={"@aws-cdk/core:failSynthOnValidationErrors": True})
    stack = cdk.Stack(app, "Stack", env=cdk.Environment(region="us-east-1"))
    role = iam.Role(stack, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app, stack, role


def suppressed(tmp_path) -> list[dict]:
    report = json.loads((tmp_path / "validation-report.json").read_text())
    [nag] = [p for p in report["pluginReports"] if p["pluginName"] == "AwsSolutions"]
    return nag["suppressedViolations"]


@pytest.mark.parametrize("acknowledged", [True, False])
def test_a_finding_id_with_a_token_is_acknowledged_once_resolved(tmp_path, acknowledged) -> None:
    app, stack, role = small_app(tmp_path)
    bucket_arn = cdk.CfnParameter(stack, "BucketArn").value_as_string
    objects = f"{bucket_arn}/runs/*"
    role.add_to_policy(iam.PolicyStatement(actions=["s3:GetObject"], resources=[objects]))
    if not acknowledged:
        with pytest.raises(RuntimeError, match="ValidationFailed"):
            app.synth()
        return
    acknowledge(role, f"AwsSolutions::AwsSolutions-IAM5[Resource::{objects}]",
                "runs/* of the bucket named by the parameter, read only")
    app.synth()
    [violation] = suppressed(tmp_path)
    assert violation["ruleName"] == "AwsSolutions-IAM5[Resource::<BucketArn>/runs/*]"
    assert violation["reason"] == "runs/* of the bucket named by the parameter, read only"


def test_unscoped_actions_of_a_role_share_one_policy_and_one_acknowledgement(tmp_path) -> None:
    app, stack, role = small_app(tmp_path)
    UnscopedApis.of(role).allow("Metrics", {"cloudwatch:PutMetricData": "no resource type"},
                                conditions={"StringEquals": {"cloudwatch:namespace": "A"}})
    UnscopedApis.of(role).allow("Login", {"ecr:GetAuthorizationToken": "returns a registry login"})
    UnscopedApis.of(role).allow("Metrics", {"cloudwatch:PutMetricData": "no resource type"},
                                conditions={"StringEquals": {"cloudwatch:namespace": "B"}})
    app.synth()
    policies = {lid: r for lid, r in json.loads(
        (tmp_path / "Stack.template.json").read_text())["Resources"].items() if r["Type"] == "AWS::IAM::Policy"}
    [(logical_id, policy)] = policies.items()
    assert logical_id.startswith(f"Role{UNSCOPED_POLICY_ID}")
    statements = {s["Sid"]: s for s in policy["Properties"]["PolicyDocument"]["Statement"]}
    assert statements["Metrics"] == {
        "Sid": "Metrics", "Effect": "Allow", "Action": "cloudwatch:PutMetricData", "Resource": "*",
        "Condition": {"StringEquals": {"cloudwatch:namespace": ["A", "B"]}}}
    assert statements["Login"]["Action"] == "ecr:GetAuthorizationToken"
    [violation] = suppressed(tmp_path)
    assert violation["ruleName"] == "AwsSolutions-IAM5[Resource::*]"
    assert "cloudwatch:PutMetricData: no resource type" in violation["reason"]
    assert "ecr:GetAuthorizationToken: returns a registry login" in violation["reason"]


def test_unscoped_apis_take_named_actions_only(tmp_path) -> None:
    _, _, role = small_app(tmp_path)
    with pytest.raises(ValueError, match="name each action"):
        UnscopedApis.of(role).allow("Reads", {"ec2:Describe*": "no resource type"})
