"""Cross-region replication of SSE-KMS buckets into buckets of another region."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from constructs_lib.acknowledge import acknowledge
from constructs_lib.kms_grants import via_service


@dataclass(frozen=True)
class ReplicaTarget:
    """One source bucket (versioned, SSE-KMS) and where its copy goes:
    ``destination_bucket_arn`` (versioned) and ``replica_key_arn`` (key or
    alias ARN in the destination's region, which S3 encrypts replicas with)."""

    source: s3.Bucket
    destination_bucket_arn: str
    replica_key_arn: str


class BucketReplication(Construct):
    """Replicates every object of each target's source bucket, SSE-KMS
    encrypted ones included (``SseKmsEncryptedObjects``), with delete
    markers, to its destination, encrypted there with the replica key.

    One role for all targets, named ``role_name`` (the destination key's
    policy admits it by that name, so it is fixed), allowed exactly what S3
    replication needs: read the source buckets' replication configuration,
    list them, read object versions for replication, decrypt with the source
    keys through S3, and replicate objects, deletes and tags into the
    destination buckets. ``kms:Encrypt`` on the replica key comes from that
    key's own policy (it lives in another region's stack).
    """

    def __init__(self, scope: Construct, construct_id: str, *, role_name: str,
                 targets: Sequence[ReplicaTarget]) -> None:
        super().__init__(scope, construct_id)
        self.role = iam.Role(
            self, "Role",
            role_name=role_name,
            assumed_by=iam.ServicePrincipal("s3.amazonaws.com"),
            description="S3 cross-region replication of the stage's data and model buckets",
        )
        self._grant(targets)
        for target in targets:
            self._configure(target)

    def _grant(self, targets: Sequence[ReplicaTarget]) -> None:
        sources = [t.source for t in targets]
        source_objects = [b.arn_for_objects("*") for b in sources]
        destination_objects = [f"{t.destination_bucket_arn}/*" for t in targets]
        statements = [
            iam.PolicyStatement(sid="ReadReplicationConfiguration",
                                actions=["s3:GetReplicationConfiguration", "s3:ListBucket"],
                                resources=[b.bucket_arn for b in sources]),
            iam.PolicyStatement(sid="ReadVersionsForReplication",
                                actions=["s3:GetObjectVersionForReplication", "s3:GetObjectVersionAcl",
                                         "s3:GetObjectVersionTagging"],
                                resources=source_objects),
            iam.PolicyStatement(sid="WriteReplicas",
                                actions=["s3:ReplicateObject", "s3:ReplicateDelete", "s3:ReplicateTags"],
                                resources=destination_objects),
        ]
        keys = {id(b.encryption_key): b.encryption_key for b in sources if b.encryption_key}
        if keys:
            statements.append(iam.PolicyStatement(
                sid="DecryptSourceObjects",
                actions=["kms:Decrypt"],
                resources=[k.key_arn for k in keys.values()],
                conditions=via_service(self, "s3"),
            ))
        self.policy = iam.Policy(self, "Policy", roles=[self.role], statements=statements)
        for objects in (*source_objects, *destination_objects):
            acknowledge(
                self.policy, f"AwsSolutions::AwsSolutions-IAM5[Resource::{objects}]",
                "Replication copies every object of the source bucket into its replica: the role "
                "reads versions for replication of all keys of the source buckets and writes "
                "replicas of all keys of their replica buckets, nothing else.")

    def _configure(self, target: ReplicaTarget) -> None:
        cfn_bucket = target.source.node.default_child
        assert isinstance(cfn_bucket, s3.CfnBucket)
        cfn_bucket.replication_configuration = s3.CfnBucket.ReplicationConfigurationProperty(
            role=self.role.role_arn,
            rules=[s3.CfnBucket.ReplicationRuleProperty(
                id="replicate-everything",
                status="Enabled",
                priority=1,
                # An empty prefix filter selects every object and makes this
                # a V2 rule, the only kind that can replicate delete markers.
                filter=s3.CfnBucket.ReplicationRuleFilterProperty(prefix=""),
                # A delete hides the object in the replica too; the version
                # behind it stays there until the replica's noncurrent rule.
                delete_marker_replication=s3.CfnBucket.DeleteMarkerReplicationProperty(
                    status="Enabled"),
                source_selection_criteria=s3.CfnBucket.SourceSelectionCriteriaProperty(
                    sse_kms_encrypted_objects=s3.CfnBucket.SseKmsEncryptedObjectsProperty(
                        status="Enabled")),
                destination=s3.CfnBucket.ReplicationDestinationProperty(
                    bucket=target.destination_bucket_arn,
                    encryption_configuration=s3.CfnBucket.EncryptionConfigurationProperty(
                        replica_kms_key_id=target.replica_key_arn),
                ),
            )],
        )
