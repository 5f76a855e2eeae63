"""Storage stack: key, buckets, repository, retention and pinned logical IDs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from aws_cdk.assertions import Match

from ml_stacks.config import ConfigError
from tests.conftest import STAGES, resources_of_type

# The logical IDs of every stateful resource. A change here replaces a bucket,
# a key or a repository in every deployed stage: never edit this table to make
# a test pass.
STATEFUL_LOGICAL_IDS = {
    "Key961B73FD": "AWS::KMS::Key",  # the data key: the stage's original key
    "CaptureKey0B937016": "AWS::KMS::Key",
    "LogsKeyA6AB43B2": "AWS::KMS::Key",
    "MessagingKey9A79A2B1": "AWS::KMS::Key",
    "AccessLogs8B620ECA": "AWS::S3::Bucket",
    "TrainingData3FDB6D34": "AWS::S3::Bucket",
    "Checkpoints620E2F20": "AWS::S3::Bucket",
    "ModelArtifacts858A2101": "AWS::S3::Bucket",
    "DataCapture91154E3A": "AWS::S3::Bucket",
    "Images2D38C313": "AWS::ECR::Repository",
}
# Bucket -> the key that encrypts it: captures (possibly personal data) have their own.
KMS_BUCKETS = {"TrainingData": "Key961B73FD", "Checkpoints": "Key961B73FD",
               "ModelArtifacts": "Key961B73FD", "DataCapture": "CaptureKey0B937016"}


def bucket(template: dict, prefix: str) -> dict:
    [resource] = [r for lid, r in resources_of_type(template, "AWS::S3::Bucket").items()
                  if lid.startswith(prefix)]
    return resource


@pytest.mark.parametrize("stage", STAGES)
def test_stateful_logical_ids_are_pinned(all_templates, stage) -> None:
    resources = all_templates[(stage, "storage")]["Resources"]
    stateful = {lid: r["Type"] for lid, r in resources.items()
                if r["Type"] in {"AWS::KMS::Key", "AWS::S3::Bucket", "AWS::ECR::Repository"}}
    assert stateful == STATEFUL_LOGICAL_IDS


@pytest.mark.parametrize("stage", STAGES)
def test_every_key_rotates_and_has_an_alias(synthesized, all_templates, stage) -> None:
    template = synthesized.template(stage, "storage")
    keys = resources_of_type(all_templates[(stage, "storage")], "AWS::KMS::Key")
    assert all(k["Properties"]["EnableKeyRotation"] is True and k["Properties"]["PendingWindowInDays"] == 30
               for k in keys.values())
    aliases = {a["Properties"]["AliasName"]: a["Properties"]["TargetKeyId"]["Fn::GetAtt"][0]
               for a in resources_of_type(all_templates[(stage, "storage")], "AWS::KMS::Alias").values()}
    # The data key keeps the stage's original alias.
    assert aliases == {f"alias/ml-{stage}": "Key961B73FD", f"alias/ml-{stage}/capture": "CaptureKey0B937016",
                       f"alias/ml-{stage}/logs": "LogsKeyA6AB43B2",
                       f"alias/ml-{stage}/messaging": "MessagingKey9A79A2B1"}
    template.resource_count_is("AWS::KMS::Key", 4)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("name", KMS_BUCKETS)
def test_data_buckets_are_kms_encrypted_private_and_logged(all_templates, stage, name) -> None:
    props = bucket(all_templates[(stage, "storage")], name)["Properties"]
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"] == [{
        "BucketKeyEnabled": True,
        "ServerSideEncryptionByDefault": {
            "SSEAlgorithm": "aws:kms",
            "KMSMasterKeyID": {"Fn::GetAtt": [KMS_BUCKETS[name], "Arn"]},
        },
    }]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True,
        "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
    assert props["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": "AccessLogs8B620ECA"}
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}


@pytest.mark.parametrize("stage", STAGES)
def test_access_log_bucket_uses_sse_s3_because_log_delivery_requires_it(all_templates, stage) -> None:
    props = bucket(all_templates[(stage, "storage")], "AccessLogs")["Properties"]
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"] == [
        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
    assert props["LifecycleConfiguration"]["Rules"][0]["ExpirationInDays"] == 365


@pytest.mark.parametrize("stage", STAGES)
def test_every_bucket_denies_requests_without_tls(all_templates, stage) -> None:
    template = all_templates[(stage, "storage")]
    policies = resources_of_type(template, "AWS::S3::BucketPolicy").values()
    protected = set()
    for policy in policies:
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if (statement["Effect"] == "Deny"
                    and statement.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}):
                protected.add(policy["Properties"]["Bucket"]["Ref"])
    assert protected == {lid for lid in STATEFUL_LOGICAL_IDS if STATEFUL_LOGICAL_IDS[lid] == "AWS::S3::Bucket"}


@pytest.mark.parametrize("stage", STAGES)
def test_training_data_tiers_raw_prefix_to_ia_then_glacier(all_templates, stage) -> None:
    rules = bucket(all_templates[(stage, "storage")], "TrainingData")["Properties"]["LifecycleConfiguration"]["Rules"]
    assert {"Id": "tier-raw-data", "Prefix": "raw/", "Status": "Enabled", "Transitions": [
        {"StorageClass": "STANDARD_IA", "TransitionInDays": 90},
        {"StorageClass": "GLACIER", "TransitionInDays": 365},
    ]} in rules


@pytest.mark.parametrize("stage", STAGES)
def test_checkpoints_expire_after_the_configured_days(synthesized, all_templates, stage) -> None:
    days = synthesized.configs[stage].storage.checkpoint_expiration_days
    rules = bucket(all_templates[(stage, "storage")], "Checkpoints")["Properties"]["LifecycleConfiguration"]["Rules"]
    assert [r["ExpirationInDays"] for r in rules] == [days]


@pytest.mark.parametrize("stage", STAGES)
def test_endpoint_data_captures_expire_after_the_configured_days(synthesized, all_templates, stage) -> None:
    days = synthesized.configs[stage].storage.data_capture_expiration_days
    rules = bucket(all_templates[(stage, "storage")], "DataCapture")["Properties"]["LifecycleConfiguration"]["Rules"]
    assert [(r["Id"], r["ExpirationInDays"]) for r in rules] == [("expire-captures", days)]


@pytest.mark.parametrize("stage", STAGES)
def test_model_artifacts_are_versioned_and_old_versions_expire(synthesized, all_templates, stage) -> None:
    props = bucket(all_templates[(stage, "storage")], "ModelArtifacts")["Properties"]
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    [rule] = props["LifecycleConfiguration"]["Rules"]
    days = synthesized.configs[stage].storage.model_noncurrent_expiration_days
    assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": days}


@pytest.mark.parametrize("stage", [s for s in STAGES if s != "dev"])
def test_stages_that_promote_images_have_immutable_tags(synthesized, all_templates, stage) -> None:
    # Every stage but dev promotes images: immutable tags are required there, not chosen.
    [repo] = resources_of_type(all_templates[(stage, "storage")], "AWS::ECR::Repository").values()
    assert repo["Properties"]["ImageTagMutability"] == "IMMUTABLE"
    config = synthesized.configs[stage]
    with pytest.raises(ConfigError, match=rf"^{stage}\.storage\.ecr_immutable_tags: False is not allowed"):
        replace(config, storage=replace(config.storage, ecr_immutable_tags=False))


@pytest.mark.parametrize("stage", STAGES)
def test_image_repository_scans_encrypts_and_keeps_the_configured_tagged_images(synthesized, all_templates,
                                                                              stage) -> None:
    [repo] = resources_of_type(all_templates[(stage, "storage")], "AWS::ECR::Repository").values()
    props = repo["Properties"]
    assert props["ImageScanningConfiguration"] == {"ScanOnPush": True}
    immutable = synthesized.configs[stage].storage.ecr_immutable_tags
    assert props["ImageTagMutability"] == ("IMMUTABLE" if immutable else "MUTABLE")
    assert props["EncryptionConfiguration"] == {
        "EncryptionType": "KMS", "KmsKey": {"Fn::GetAtt": ["Key961B73FD", "Arn"]}}
    assert "RepositoryName" not in props  # generated: a rebuilt stage never collides
    policy = json.loads(props["LifecyclePolicy"]["LifecyclePolicyText"])
    tagged = [r for r in policy["rules"] if r["selection"]["tagStatus"] == "tagged"]
    keep = synthesized.configs[stage].storage.ecr_keep_tagged_images
    assert tagged == [{
        "rulePriority": 2,
        "description": f"Keep the last {keep} tagged images",
        "selection": {"tagStatus": "tagged", "tagPatternList": ["*"],
                      "countType": "imageCountMoreThan", "countNumber": keep},
        "action": {"type": "expire"},
    }]


@pytest.mark.parametrize("stage", STAGES)
def test_stateful_resources_are_retained_and_protected_where_the_stage_retains(synthesized, all_templates,
                                                                               stage) -> None:
    protected = synthesized.configs[stage].storage.retain  # only dev may be False (validated)
    policy = "Retain" if protected else "Delete"
    resources = all_templates[(stage, "storage")]["Resources"]
    for logical_id in STATEFUL_LOGICAL_IDS:
        assert resources[logical_id]["DeletionPolicy"] == policy, logical_id
        assert resources[logical_id]["UpdateReplacePolicy"] == policy, logical_id
    assert synthesized.stack(stage, "storage").termination_protection is protected


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_that_does_not_retain_empties_buckets_and_repository_on_destroy(synthesized, all_templates,
                                                                                 stage) -> None:
    resources = all_templates[(stage, "storage")]["Resources"]
    auto_deleted = {r["Properties"]["BucketName"]["Ref"]
                    for r in resources_of_type(all_templates[(stage, "storage")], "Custom::S3AutoDeleteObjects").values()}
    if synthesized.configs[stage].storage.retain:
        assert not auto_deleted
        assert resources["Images2D38C313"]["Properties"].get("EmptyOnDelete", False) is False
        return
    assert auto_deleted == {"AccessLogs8B620ECA", "TrainingData3FDB6D34", "Checkpoints620E2F20",
                            "ModelArtifacts858A2101", "DataCapture91154E3A"}
    assert resources["Images2D38C313"]["Properties"]["EmptyOnDelete"] is True


def test_storage_stack_exposes_objects_for_other_stacks(synthesized) -> None:
    storage = synthesized.app.node.find_child("dev").storage
    for attribute in ("data_key", "capture_key", "logs_key", "messaging_key", "training_data_bucket", "checkpoint_bucket", "model_artifacts_bucket",
                      "data_capture_bucket", "access_log_bucket", "image_repository"):
        assert hasattr(getattr(storage, attribute), "node"), attribute
    assert callable(storage.checkpoint_bucket.grant_read_write)


def test_storage_outputs_name_what_users_push_to(synthesized) -> None:
    template = synthesized.template("prod", "storage")
    for output in ("TrainingDataBucketName", "CheckpointBucketName", "ModelArtifactsBucketName",
                   "DataCaptureBucketName", "ImageRepositoryUri", "KeyArn", "CaptureKeyArn",
                   "LogsKeyArn", "MessagingKeyArn"):
        template.has_output(output, {"Value": Match.any_value()})
