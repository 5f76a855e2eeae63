"""InferenceEndpoint helpers that need no synth: images and instance storage."""

from __future__ import annotations

import pytest

from constructs_lib.inference_endpoint import InferenceImage, deployment_timeout_seconds, has_instance_storage


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
