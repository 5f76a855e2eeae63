"""InferenceEndpoint helpers that need no synth: images and instance storage."""

from __future__ import annotations

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Template

from constructs_lib.inference_endpoint import (
    InferenceEndpoint,
    InferenceImage,
    deployment_timeout_seconds,
    has_instance_storage,
)


def test_image_uri_is_pulled_from_its_own_repository_only() -> None:
    image = InferenceImage.from_uri(
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6.0-cpu-py312-ubuntu22.04-sagemaker")
    assert image.repository_arn == "arn:aws:ecr:us-east-1:763104351884:repository/pytorch-inference"


def test_image_uri_by_digest_and_nested_repository_names_resolve_to_the_repository() -> None:
    image = InferenceImage.from_uri("123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/ranker@sha256:" + "a" * 64)
    assert image.repository_arn == "arn:aws:ecr:eu-west-1:123456789012:repository/team/ranker"


def test_china_image_uri_uses_the_china_partition() -> None:
    image = InferenceImage.from_uri("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/ranker:1")
    assert image.repository_arn.startswith("arn:aws-cn:ecr:cn-north-1:")


def test_fails_when_the_image_is_not_in_ecr() -> None:
    with pytest.raises(ValueError, match=r"image_uri: 'pytorch/pytorch:latest' is not an ECR image URI"):
        InferenceImage.from_uri("pytorch/pytorch:latest")


@pytest.mark.parametrize(("instance_type", "local"), [
    ("ml.m5.large", False), ("ml.c5.xlarge", False), ("ml.p3.2xlarge", False), ("ml.inf2.xlarge", False),
    ("ml.g5.xlarge", True), ("ml.g4dn.xlarge", True), ("ml.g6e.2xlarge", True), ("ml.p4d.24xlarge", True),
    ("ml.m5d.large", True), ("ml.c6gd.large", True), ("ml.r5d.xlarge", True), ("ml.p6-b200.48xlarge", True),
])
def test_instance_types_with_local_nvme_get_no_volume_key(instance_type, local) -> None:
    assert has_instance_storage(instance_type) is local


@pytest.mark.parametrize(("deployment", "step", "wait", "termination", "timeout"), [
    ("canary", 10, 600, 600, 4800),
    ("linear", 20, 300, 0, 5 * 300 + 3600),
    ("all_at_once", 10, 0, 0, 3600),
    ("linear", 1, 3600, 3600, 28_800),  # capped at SageMaker's maximum
])
def test_deployment_timeout_covers_every_bake_step(deployment, step, wait, termination, timeout) -> None:
    assert deployment_timeout_seconds(deployment, step, wait, termination) == timeout


def test_grant_invoke_allows_invoking_this_endpoint_only() -> None:
    stack = cdk.Stack(cdk.App(), "Test", env=cdk.Environment(account="111122223333", region="us-east-1"))
    vpc = ec2.Vpc(stack, "Vpc", availability_zones=["us-east-1a", "us-east-1b"])
    endpoint = InferenceEndpoint(
        stack, "Ranker",
        endpoint_name="ranker",
        image=InferenceImage.from_uri("763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6.0"
                                      "-cpu-py312-ubuntu22.04-sagemaker"),
        model_data_bucket=s3.Bucket(stack, "Models"),
        model_data_key="ranker/model.tar.gz",
        capture_bucket=s3.Bucket(stack, "Captures"),
        key=kms.Key(stack, "Key"),
        vpc=vpc,
        instance_type="ml.c5.xlarge",
    )
    caller = iam.Role(stack, "Caller", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    endpoint.grant_invoke(caller)
    template = Template.from_stack(stack).to_json()
    [policy] = [r for lid, r in template["Resources"].items() if lid.startswith("CallerDefaultPolicy")]
    assert policy["Properties"]["PolicyDocument"]["Statement"] == [{
        "Action": "sagemaker:InvokeEndpoint", "Effect": "Allow",
        # Ref of AWS::SageMaker::Endpoint is its ARN.
        "Resource": {"Ref": stack.get_logical_id(endpoint.endpoint)}}]
    # Defaults: capture under the endpoint's name, canary deployments.
    [config] = [r for r in template["Resources"].values() if r["Type"] == "AWS::SageMaker::EndpointConfig"]
    assert config["Properties"]["DataCaptureConfig"]["DestinationS3Uri"]["Fn::Join"][1][-1] == "/ranker/"
    [sm_endpoint] = [r for r in template["Resources"].values() if r["Type"] == "AWS::SageMaker::Endpoint"]
    routing = sm_endpoint["Properties"]["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert routing["Type"] == "CANARY"


def test_fails_when_the_deployment_strategy_is_unknown() -> None:
    stack = cdk.Stack(cdk.App(), "Test", env=cdk.Environment(account="111122223333", region="us-east-1"))
    with pytest.raises(ValueError, match=r"deployment: 'rolling' is not allowed — one of canary, linear, all_at_once"):
        InferenceEndpoint(
            stack, "Ranker", endpoint_name="ranker",
            image=InferenceImage.from_uri("111122223333.dkr.ecr.us-east-1.amazonaws.com/ranker:1"),
            model_data_bucket=s3.Bucket(stack, "Models"), model_data_key="ranker/model.tar.gz",
            capture_bucket=s3.Bucket(stack, "Captures"), key=kms.Key(stack, "Key"),
            vpc=ec2.Vpc(stack, "Vpc", availability_zones=["us-east-1a"]), instance_type="ml.c5.xlarge",
            deployment="rolling")
