"""The stateful-replacement guard on two in-process versions of the app.

The base is the dev stage as configured; each head is the same app with one
deliberate change. Replacement comes from the resource schemas'
createOnlyProperties (cfn-lint's copy), not from a list kept here.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from delivery import guard
from delivery.assembly import templates_by_stack
from delivery.changes import ADDED, MODIFIED, REMOVED, REPLACED, compare_assemblies, compare_templates
from ml_stacks.app_factory import build_app
from ml_stacks.config import default_configs


def synth(tmp_path: Path, name: str, config=None, change=None) -> dict:
    outdir = tmp_path / name
    app = build_app([config or default_configs()["dev"]], outdir=str(outdir))
    if change is not None:
        change(app.node.find_child("dev"))
    app.synth()
    return templates_by_stack(outdir)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    return synth(tmp_path_factory.mktemp("base"), "base")


@pytest.fixture(scope="module")
def renamed_checkpoint_bucket(tmp_path_factory) -> dict:
    """The head with a renamed checkpoint bucket, synthesized once for the tests that read it."""
    return synth(tmp_path_factory.mktemp("renamed"), "head", change=_rename_checkpoint_bucket)


def _logical_id(stage, construct) -> str:
    return stage.storage.resolve(construct.node.default_child.logical_id)


def _rename_checkpoint_bucket(stage) -> None:
    # A fixed bucket name: BucketName is create-only, so the bucket is replaced.
    stage.storage.checkpoint_bucket.node.default_child.add_property_override(
        "BucketName", "ml-dev-checkpoints-renamed")


def test_stateless_change_passes(base, tmp_path) -> None:
    dev = default_configs()["dev"]
    hour = (dev.drift.schedule_hour_utc + 1) % 24  # another hour than the stage's own
    head = synth(tmp_path, "head", config=replace(dev, drift=replace(dev.drift, schedule_hour_utc=hour)))
    changes = compare_assemblies(base, head)
    assert [(c.stack, c.resource_type, c.action) for c in changes] == [
        ("ops", "AWS::Events::Rule", MODIFIED)]
    assert guard.check(changes).passed


def test_bucket_replacement_fails(base, renamed_checkpoint_bucket) -> None:
    changes = compare_assemblies(base, renamed_checkpoint_bucket)
    result = guard.check(changes)
    assert not result.passed
    [violation] = result.violations
    assert (violation.resource_type, violation.action) == ("AWS::S3::Bucket", REPLACED)
    assert violation.address.startswith("dev/storage/Checkpoints")
    assert violation.reason == "create-only BucketName changed"
    # Its policy points at the bucket's name: replaced with it (stateless, allowed).
    policy = [c for c in changes if c.resource_type == "AWS::S3::BucketPolicy"]
    assert [c.action for c in policy] == [REPLACED]
    assert "BLOCKED  replaced AWS::S3::Bucket dev/storage/Checkpoints" in guard.format_result(result)


def test_removal_of_the_kms_key_fails(base, tmp_path) -> None:
    def move_key(stage) -> None:
        # A new logical ID is a new key; CloudFormation deletes the old one.
        stage.storage.data_key.node.default_child.override_logical_id("StageKey")

    head = synth(tmp_path, "head", change=move_key)
    changes = compare_assemblies(base, head)
    result = guard.check(changes)
    kinds = {(c.resource_type, c.action) for c in result.violations}
    # The repository's encryption key and the EKS cluster's secrets key are
    # create-only: a new key replaces both of them too.
    assert kinds == {("AWS::KMS::Key", REMOVED), ("AWS::ECR::Repository", REPLACED),
                     ("AWS::EKS::Cluster", REPLACED)}
    assert any(c.logical_id == "StageKey" and c.action == ADDED for c in changes)


def test_allow_trailer_lets_exactly_the_named_replacement_through(base, tmp_path) -> None:
    def two_buckets(stage) -> None:
        _rename_checkpoint_bucket(stage)
        stage.storage.training_data_bucket.node.default_child.add_property_override(
            "BucketName", "ml-dev-training-renamed")

    changes = compare_assemblies(base, synth(tmp_path, "head", change=two_buckets))
    [checkpoints] = [c for c in guard.destructive(changes) if c.logical_id.startswith("Checkpoints")]
    result = guard.check(changes, [checkpoints.address])
    assert result.allowed == (checkpoints,)
    assert [c.logical_id[:12] for c in result.violations] == ["TrainingData"]
    assert not result.passed
    both = guard.check(changes, [c.address for c in guard.destructive(changes)])
    assert both.passed and not both.unused_allowances


def test_an_allowance_for_another_stage_or_a_typo_allows_nothing(base, renamed_checkpoint_bucket) -> None:
    changes = compare_assemblies(base, renamed_checkpoint_bucket)
    [hit] = guard.destructive(changes)
    wrong = [hit.address.replace("dev/", "prod/", 1), hit.address.lower()]
    result = guard.check(changes, wrong)
    assert not result.passed
    assert set(result.unused_allowances) == set(wrong)


def test_replacement_follows_create_only_references() -> None:
    base = {"Resources": {
        "Table": {"Type": "AWS::DynamoDB::Table", "Properties": {"TableName": "a"}},
        "Vpc": {"Type": "AWS::EC2::VPC", "Properties": {"CidrBlock": "10.0.0.0/16"}},
        "Subnet": {"Type": "AWS::EC2::Subnet", "Properties": {"VpcId": {"Ref": "Vpc"}, "CidrBlock": "10.0.0.0/24"}},
        "Logs": {"Type": "AWS::Logs::LogGroup", "Properties": {"RetentionInDays": 30}},
    }}
    head = json.loads(json.dumps(base))
    head["Resources"]["Vpc"]["Properties"]["CidrBlock"] = "10.1.0.0/16"
    head["Resources"]["Logs"]["Properties"]["RetentionInDays"] = 60
    changes = {c.logical_id: c for c in compare_templates("dev", "network", base, head)}
    assert changes["Vpc"].action == REPLACED
    assert changes["Subnet"].action == REPLACED
    assert changes["Subnet"].reason == "create-only VpcId refers to replaced Vpc"
    assert changes["Logs"].action == MODIFIED
    assert "Table" not in changes
    assert [c.address for c in guard.check(changes.values()).violations] == ["dev/network/Vpc"]


def test_a_deleted_stack_removes_its_stateful_resources() -> None:
    base = {("dev", "eks"): {"Resources": {"Cluster": {"Type": "AWS::EKS::Cluster", "Properties": {}}}}}
    changes = compare_assemblies(base, {})
    assert [(c.address, c.action) for c in guard.check(changes).violations] == [
        ("dev/eks/Cluster", REMOVED)]


def test_allowances_are_read_from_trailers_of_the_changes_commits_only(tmp_path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "--allow-empty",
        "-m", "old\n\nAllow-Replace: dev/storage/OldBucket")
    git("tag", "base")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "--allow-empty",
        "-m", "Rename the checkpoint bucket\n\nAllow-Replace: dev/storage/CheckpointsBucket1\n"
              "allow-replace: prod/storage/CheckpointsBucket1")
    assert guard.allowances_from_git(tmp_path, "base") == [
        "dev/storage/CheckpointsBucket1", "prod/storage/CheckpointsBucket1"]
