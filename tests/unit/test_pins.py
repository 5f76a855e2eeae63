"""AMI pins: the committed pin file, its validation and the lookups stacks use."""

from __future__ import annotations

import json

import pytest

from ml_stacks.config import ConfigError, default_configs
from ml_stacks.pins import (
    AMI_ID_RE,
    PIN_FILE,
    AmiPin,
    eks_release_version,
    load_pins,
    release_version_parameter,
    training_ami,
)

TRAINING_PIN = {
    "ami_id": "ami-0aa6adb5fc746dff3",
    "name": "Deep Learning Base OSS Nvidia Driver GPU AMI (Amazon Linux 2023) 20260925",
    "ssm_parameter": "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id",
    "resolved_at": "2026-09-27",
}


def write(tmp_path, pins: dict):
    path = tmp_path / "pins.json"
    path.write_text(json.dumps(pins))
    return path


@pytest.mark.parametrize("stage", ["dev", "staging", "prod"])
def test_every_stage_region_has_a_training_pin(stage) -> None:
    config = default_configs()[stage]
    pin = training_ami(config.region)
    assert isinstance(pin, AmiPin)
    assert AMI_ID_RE.match(pin.ami_id)
    assert pin.ssm_parameter.startswith("/aws/service/deeplearning/ami/x86_64/")


@pytest.mark.parametrize("stage", ["dev", "staging", "prod"])
def test_every_node_group_ami_type_of_every_stage_has_a_release_pin(stage) -> None:
    config = default_configs()[stage]
    groups = {"system": config.eks.system, **config.eks.nodegroups}
    for role, group in groups.items():
        version = eks_release_version(config.region, config.eks.kubernetes_version, group.ami_type)
        assert version is not None, (stage, role, group.ami_type)


def test_the_committed_pin_file_is_valid_and_ends_with_a_newline() -> None:
    text = PIN_FILE.read_text()
    assert text.endswith("\n")
    load_pins()  # validates


def test_a_region_without_a_pin_fails_with_the_command_that_adds_it(tmp_path) -> None:
    path = write(tmp_path, {"training": {"us-east-1": TRAINING_PIN}, "eks_release_versions": {}})
    with pytest.raises(ConfigError) as caught:
        training_ami("eu-west-1", pin_file=path)
    assert caught.value.value == "eu-west-1"
    assert "make refresh-amis" in caught.value.allowed


def test_a_pin_the_file_does_not_have_is_none(tmp_path) -> None:
    path = write(tmp_path, {"training": {}, "eks_release_versions": {}})
    assert eks_release_version("us-east-1", "1.34", "BOTTLEROCKET_x86_64", pin_file=path) is None


@pytest.mark.parametrize(("mutate", "field", "allowed"), [
    (lambda p: p["training"]["us-east-1"].update(ami_id="ami-xyz"), "training.us-east-1.ami_id", "AMI ID"),
    (lambda p: p["training"]["us-east-1"].update(resolved_at="yesterday"), "resolved_at", "YYYY-MM-DD"),
    (lambda p: p["training"]["us-east-1"].pop("name"), "training.us-east-1", "name"),
    (lambda p: p["eks_release_versions"]["us-east-1"]["1.34"]["BOTTLEROCKET_x86_64"].update(
        release_version="latest"), "BOTTLEROCKET_x86_64.release_version", "1.52.0-b7ac6e1a"),
    (lambda p: p["eks_release_versions"]["us-east-1"]["1.34"]["BOTTLEROCKET_x86_64"].update(
        ssm_parameter="/aws/service/bottlerocket/aws-k8s-1.33/x86_64/latest/image_version"),
     "BOTTLEROCKET_x86_64.ssm_parameter", "aws-k8s-1.34/x86_64"),
])
def test_fails_when_a_pin_is_malformed(tmp_path, mutate, field, allowed) -> None:
    pins = {"training": {"us-east-1": dict(TRAINING_PIN)}, "eks_release_versions": {"us-east-1": {"1.34": {
        "BOTTLEROCKET_x86_64": {
            "release_version": "1.52.0-b7ac6e1a",
            "ssm_parameter": release_version_parameter("1.34", "BOTTLEROCKET_x86_64"),
            "resolved_at": "2026-11-29"}}}}}
    mutate(pins)
    with pytest.raises(ConfigError) as caught:
        load_pins(write(tmp_path, pins))
    assert field in caught.value.field_path
    assert allowed in caught.value.allowed


@pytest.mark.parametrize(("ami_type", "parameter"), [
    ("BOTTLEROCKET_x86_64", "/aws/service/bottlerocket/aws-k8s-1.34/x86_64/latest/image_version"),
    ("BOTTLEROCKET_x86_64_NVIDIA", "/aws/service/bottlerocket/aws-k8s-1.34-nvidia/x86_64/latest/image_version"),
    ("BOTTLEROCKET_ARM_64_NVIDIA", "/aws/service/bottlerocket/aws-k8s-1.34-nvidia/arm64/latest/image_version"),
    ("AL2023_x86_64_NVIDIA",
     "/aws/service/eks/optimized-ami/1.34/amazon-linux-2023/x86_64/nvidia/recommended/release_version"),
    ("AL2023_ARM_64_STANDARD",
     "/aws/service/eks/optimized-ami/1.34/amazon-linux-2023/arm64/standard/recommended/release_version"),
])
def test_release_versions_come_from_the_public_parameter_of_the_ami_type(ami_type, parameter) -> None:
    assert release_version_parameter("1.34", ami_type) == parameter


def test_an_unknown_ami_type_has_no_parameter() -> None:
    with pytest.raises(ConfigError):
        release_version_parameter("1.34", "AL2_x86_64")
