"""Training data and models: versioned, protected from deletion, replicated (issue 14, gap 7).

Every expectation comes from the stage's config (``synthesized.configs``),
so a stage that turns an option on or off is checked for what it asked.
"""

from __future__ import annotations

import json

import pytest

from constructs_lib.secure_bucket import DESTRUCTIVE_ACTIONS
from ml_stacks.config import ConfigError, StorageConfig
from tests.conftest import STAGES, resources_of_type
from tests.unit.test_config import stage as stage_config

DATA_BUCKETS = {"TrainingData": "training_data_noncurrent_expiration_days",
                "ModelArtifacts": "model_noncurrent_expiration_days"}
# The replica's stateful resources: a changed logical ID replaces a bucket or
# the key in the replica region. Never edit to make a test pass.
REPLICA_STATEFUL_LOGICAL_IDS = {
    "Key961B73FD": "AWS::KMS::Key",
    "AccessLogs8B620ECA": "AWS::S3::Bucket",
    "TrainingData3FDB6D34": "AWS::S3::Bucket",
    "ModelArtifacts858A2101": "AWS::S3::Bucket",
}


def flat(value) -> str:
    return json.dumps(value, sort_keys=True)


def bucket(template: dict, prefix: str) -> tuple[str, dict]:
    [(lid, resource)] = [(lid, r) for lid, r in resources_of_type(template, "AWS::S3::Bucket").items()
                         if lid.startswith(prefix)]
    return lid, resource["Properties"]


def statements_on(template: dict, bucket_id: str) -> list[dict]:
    return [s for p in resources_of_type(template, "AWS::S3::BucketPolicy").values()
            if p["Properties"]["Bucket"] == {"Ref": bucket_id}
            for s in p["Properties"]["PolicyDocument"]["Statement"]]


def replicated_stages(synthesized) -> list[str]:
    return [s for s in STAGES if synthesized.configs[s].storage.replication_region]


# --- versioning ---------------------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize(("name", "days_field"), DATA_BUCKETS.items())
def test_data_and_model_buckets_are_versioned_and_noncurrent_versions_expire(
        synthesized, all_templates, stage, name, days_field) -> None:
    _, props = bucket(all_templates[(stage, "storage")], name)
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    days = getattr(synthesized.configs[stage].storage, days_field)
    [rule] = [r for r in props["LifecycleConfiguration"]["Rules"] if "NoncurrentVersionExpiration" in r]
    assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": days}
    assert rule["ExpiredObjectDeleteMarker"] is True
    assert "Prefix" not in rule and "Filter" not in rule  # every object


# --- deletion protection -------------------------------------------------------------------

def protected_buckets(synthesized, stage: str) -> list[tuple[str, str]]:
    """(stack, bucket construct id) of every data bucket the stage protects."""
    stacks = ["storage"] + (["replica"] if synthesized.configs[stage].storage.replication_region else [])
    return [(stack, name) for stack in stacks for name in DATA_BUCKETS]


@pytest.mark.parametrize("stage", STAGES)
def test_protected_stages_deny_destruction_to_all_but_break_glass_and_the_deploy_role(
        synthesized, all_templates, stage) -> None:
    storage = synthesized.configs[stage].storage
    for stack, name in protected_buckets(synthesized, stage):
        template = all_templates[(stage, stack)]
        bucket_id, _ = bucket(template, name)
        denies = [s for s in statements_on(template, bucket_id)
                  if s.get("Sid") == "DenyDestructionExceptBreakGlass"]
        if not storage.deletion_protection:
            assert denies == [], (stack, name)
            continue
        [deny] = denies
        assert deny["Effect"] == "Deny" and deny["Principal"] == {"AWS": "*"}
        assert set(deny["Action"]) == set(DESTRUCTIVE_ACTIONS)
        assert {"s3:DeleteObjectVersion", "s3:PutBucketVersioning", "s3:DeleteBucket",
                "s3:PutLifecycleConfiguration", "s3:PutBucketPolicy"} <= set(deny["Action"])
        assert "s3:DeleteObject" not in deny["Action"]  # a delete marker stays undoable
        assert flat(deny["Resource"]).count(bucket_id) == 2  # the bucket and its objects
        exempt = flat(deny["Condition"]["ArnNotLike"]["aws:PrincipalArn"])
        assert f':role/{storage.break_glass_role_name}"' in exempt
        assert f':role/*/{storage.break_glass_role_name}"' in exempt
        region = synthesized.stack(stage, stack).environment.rsplit("/", 1)[1]
        assert f"cfn-exec-role-${{AWS::AccountId}}-{region}" in exempt


def test_some_stage_protects_and_some_stage_does_not(synthesized) -> None:
    # Both branches of the test above are exercised by the repository's stages.
    flags = {synthesized.configs[s].storage.deletion_protection for s in STAGES}
    assert flags == {True, False}


# --- replication ---------------------------------------------------------------------------

def test_the_replica_stack_exists_exactly_for_stages_with_a_replication_region(synthesized) -> None:
    assert replicated_stages(synthesized), "no stage replicates: the tests below check nothing"
    for stage in STAGES:
        region = synthesized.configs[stage].storage.replication_region
        assert ((stage, "replica") in synthesized.stacks) is (region is not None), stage


@pytest.mark.parametrize("stage", STAGES)
def test_the_replica_stack_lives_in_the_replica_region_and_deploys_before_storage(synthesized, stage) -> None:
    config = synthesized.configs[stage]
    if not config.storage.replication_region:
        pytest.skip(f"{stage} does not replicate")
    replica = synthesized.stack(stage, "replica")
    assert replica.stack_name == f"ml-{stage}-replica"
    assert replica.environment.endswith(f"/{config.storage.replication_region}")
    assert replica.termination_protection is config.storage.retain
    stage_construct = synthesized.app.node.find_child(stage)
    assert stage_construct.replica in stage_construct.storage.dependencies


@pytest.mark.parametrize("stage", STAGES)
def test_replica_stateful_logical_ids_are_pinned_and_retained(synthesized, all_templates, stage) -> None:
    if (stage, "replica") not in all_templates:
        pytest.skip(f"{stage} does not replicate")
    resources = all_templates[(stage, "replica")]["Resources"]
    stateful = {lid: r["Type"] for lid, r in resources.items()
                if r["Type"] in {"AWS::KMS::Key", "AWS::S3::Bucket"}}
    assert stateful == REPLICA_STATEFUL_LOGICAL_IDS
    policy = "Retain" if synthesized.configs[stage].storage.retain else "Delete"
    assert {resources[lid]["DeletionPolicy"] for lid in stateful} == {policy}


@pytest.mark.parametrize("stage", STAGES)
def test_source_buckets_replicate_kms_objects_into_the_replica_buckets_with_the_replica_key(
        synthesized, all_templates, stage) -> None:
    storage_template = all_templates[(stage, "storage")]
    if (stage, "replica") not in all_templates:
        for name in DATA_BUCKETS:
            assert "ReplicationConfiguration" not in bucket(storage_template, name)[1]
        return
    replica_template = all_templates[(stage, "replica")]
    [alias] = resources_of_type(replica_template, "AWS::KMS::Alias").values()
    for name in DATA_BUCKETS:
        config = bucket(storage_template, name)[1]["ReplicationConfiguration"]
        [rule] = config["Rules"]
        assert rule["Status"] == "Enabled" and rule["Filter"] == {"Prefix": ""}
        assert rule["SourceSelectionCriteria"] == {"SseKmsEncryptedObjects": {"Status": "Enabled"}}
        assert rule["DeleteMarkerReplication"] == {"Status": "Enabled"}
        destination = rule["Destination"]
        # The destination ARN and key are the very bucket name and alias the
        # replica stack creates (written out: they are in another region).
        replica_name = bucket(replica_template, name)[1]["BucketName"]["Fn::Join"][1]
        destination_parts = destination["Bucket"]["Fn::Join"][1]
        assert flat(destination_parts).endswith(flat(replica_name[1:])[1:])
        assert flat(destination_parts).startswith('["arn:", {"Ref": "AWS::Partition"}, ":s3:::' + replica_name[0])
        key_id = flat(destination["EncryptionConfiguration"]["ReplicaKmsKeyID"])
        region = synthesized.configs[stage].storage.replication_region
        assert f":kms:{region}:" in key_id and f':{alias["Properties"]["AliasName"]}"' in key_id
        assert config["Role"]["Fn::GetAtt"][0].startswith("ReplicationRole")


@pytest.mark.parametrize("stage", STAGES)
def test_replication_role_reaches_only_the_two_buckets_their_replicas_and_keys(
        synthesized, all_templates, stage) -> None:
    if (stage, "replica") not in all_templates:
        pytest.skip(f"{stage} does not replicate")
    template = all_templates[(stage, "storage")]
    [(role_id, role)] = [(lid, r) for lid, r in resources_of_type(template, "AWS::IAM::Role").items()
                         if lid.startswith("ReplicationRole")]
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "s3.amazonaws.com"}
    assert role["Properties"]["RoleName"] == f"ml-{stage}-s3-replication"
    statements = [s for p in resources_of_type(template, "AWS::IAM::Policy").values()
                  if {"Ref": role_id} in p["Properties"]["Roles"]
                  for s in p["Properties"]["PolicyDocument"]["Statement"]]
    by_sid = {s["Sid"]: s for s in statements}
    assert set(by_sid) == {"ReadReplicationConfiguration", "ReadVersionsForReplication", "WriteReplicas",
                           "DecryptSourceObjects"}
    for statement in statements:
        assert statement["Resource"] != "*" and "*" not in statement["Resource"]
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        assert not [a for a in actions if "*" in a]
    sources = flat(by_sid["ReadVersionsForReplication"]["Resource"])
    assert "TrainingData3FDB6D34" in sources and "ModelArtifacts858A2101" in sources
    assert "Checkpoints" not in flat(statements) and "DataCapture" not in flat(statements)
    replicas = flat(by_sid["WriteReplicas"]["Resource"])
    assert f"ml-{stage}-training-data-replica-" in replicas and f"ml-{stage}-model-artifacts-replica-" in replicas
    assert set(by_sid["WriteReplicas"]["Action"]) == {"s3:ReplicateObject", "s3:ReplicateDelete",
                                                      "s3:ReplicateTags"}
    decrypt = by_sid["DecryptSourceObjects"]
    assert decrypt["Action"] == "kms:Decrypt"
    region = synthesized.configs[stage].region
    assert decrypt["Condition"] == {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}}


@pytest.mark.parametrize("stage", STAGES)
def test_the_replica_key_admits_the_replication_role_through_s3_only(synthesized, all_templates, stage) -> None:
    if (stage, "replica") not in all_templates:
        pytest.skip(f"{stage} does not replicate")
    template = all_templates[(stage, "replica")]
    [key] = resources_of_type(template, "AWS::KMS::Key").values()
    assert key["Properties"]["EnableKeyRotation"] is True
    [grant] = [s for s in key["Properties"]["KeyPolicy"]["Statement"]
               if s.get("Sid") == "AllowS3ReplicationRoleToEncryptReplicas"]
    # The replica buckets use S3 Bucket Keys, which S3 verifies with
    # kms:Decrypt before it encrypts a replica with one.
    for name in DATA_BUCKETS:
        [rule] = bucket(template, name)[1]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert rule["BucketKeyEnabled"] is True
    assert set(grant["Action"]) == {"kms:Encrypt", "kms:GenerateDataKey", "kms:Decrypt"}
    condition = grant["Condition"]["StringEquals"]
    assert flat(condition["aws:PrincipalArn"]).endswith(f':role/ml-{stage}-s3-replication"]]}}')
    region = synthesized.configs[stage].storage.replication_region
    assert condition["kms:ViaService"] == f"s3.{region}.amazonaws.com"


# --- config --------------------------------------------------------------------------------

@pytest.mark.parametrize(("storage", "field", "value", "allowed"), [
    (StorageConfig(replication_region="eu-west-1"), "dev.storage.replication_region", "eu-west-1",
     "other than the stage's own"),
    (StorageConfig(replication_region="mars-north-1"), "dev.storage.replication_region", "mars-north-1",
     "AWS region name"),
    (StorageConfig(replication_region="us-west-2 "), "dev.storage.replication_region", "us-west-2 ",
     "AWS region name"),
    (StorageConfig(deletion_protection=True), "dev.storage.break_glass_role_name", None,
     "IAM role name when deletion_protection"),
    (StorageConfig(deletion_protection=True, break_glass_role_name="a b"),
     "dev.storage.break_glass_role_name", "a b", "IAM role name"),
    (StorageConfig(retain=False, deletion_protection=True, break_glass_role_name="bg"),
     "dev.storage.deletion_protection", True, "False when retain is False"),
    (StorageConfig(deletion_protection="yes"), "dev.storage.deletion_protection", "yes", "True or False"),
    (StorageConfig(training_data_noncurrent_expiration_days=0),
     "dev.storage.training_data_noncurrent_expiration_days", 0, "1 to 3650"),
])
def test_fails_when_a_data_protection_value_is_not_allowed(storage, field, value, allowed) -> None:
    # The test stage lives in eu-west-1.
    with pytest.raises(ConfigError) as caught:
        stage_config(storage=storage)
    assert (caught.value.field_path, caught.value.value) == (field, value)
    assert allowed in caught.value.allowed


def test_a_replica_in_another_region_with_break_glass_is_accepted() -> None:
    config = stage_config(storage=StorageConfig(replication_region="eu-central-1", deletion_protection=True,
                                                break_glass_role_name="BreakGlass"))
    assert config.storage.replication_region == "eu-central-1"
