"""Replica stack (stateful, in ``storage.replication_region``): the second copy
of the training data and model artifacts, with its own KMS key.

It is deployed before the storage stack (which replicates into it), and the
storage stack addresses it by names fixed here: CloudFormation cannot pass a
generated name from one region to another. The replication role lives in the
storage stack under ``replication_role_name``; this key admits it by name.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from constructs_lib.secure_bucket import SecureBucket, noncurrent_version_rule
from ml_stacks.base_stack import StageStack
from ml_stacks.config import StageConfig
from ml_stacks.fixed_names import REPLICA_BUCKETS, replica_bucket_name
from ml_stacks.log_groups import AUTO_DELETE_PROVIDER, allow_logs_service, encrypt_provider_logs

ABORT_INCOMPLETE_UPLOADS = cdk.Duration.days(7)


class ReplicaStack(StageStack):
    """Exposes, as plain strings the stacks in the stage's own region can use:
    ``training_data_bucket_arn``, ``model_artifacts_bucket_arn``,
    ``key_alias_arn`` (S3 encrypts replicas with it),
    ``replication_role_name`` and ``bucket_names`` (all three buckets, for
    drift detection); and the constructs ``key``, ``access_log_bucket``,
    ``training_data_bucket``, ``model_artifacts_bucket``."""

    def __init__(self, scope: Construct, construct_id: str, *, config: StageConfig) -> None:
        storage = config.storage
        assert storage.replication_region is not None
        super().__init__(scope, construct_id, config=config,
                         description=f"ml-infra {config.name}: replica of training data and "
                                     f"model artifacts (stateful)",
                         termination_protection=storage.retain,
                         region=storage.replication_region)
        self.replica_region = storage.replication_region
        self.replication_role_name = f"{config.stack_prefix}-s3-replication"
        self._build_key(config)
        self._build_buckets(config)
        self._build_provider_logs(config)

    @staticmethod
    def _bucket_name(config: StageConfig, purpose: str) -> str:
        return replica_bucket_name(config, purpose, cdk.Aws.ACCOUNT_ID)

    def _build_key(self, config: StageConfig) -> None:
        alias = f"alias/{config.stack_prefix}-replica"
        self.key = kms.Key(
            self, "Key",
            alias=alias,
            description=f"ml-infra {config.name}: replicas of training data and model artifacts",
            enable_key_rotation=True,
            removal_policy=self.removal_policy,
            pending_window=cdk.Duration.days(30),
        )
        self.key_alias_arn = (f"arn:{cdk.Aws.PARTITION}:kms:{self.replica_region}:"
                              f"{cdk.Aws.ACCOUNT_ID}:{alias}")
        # Matched on aws:PrincipalArn rather than naming the role: the role
        # is created after this key (the storage stack deploys second), and a
        # key policy naming a principal that does not exist is rejected.
        # Decrypt too: the replica buckets use S3 Bucket Keys, and S3 calls
        # kms:Decrypt to verify a Bucket Key before it encrypts a replica
        # with it (S3 user guide, "Replicating encrypted objects", S3 Bucket
        # Keys and replication); without it every replica write fails while
        # PutBucketReplication still succeeds.
        role_arn = f"arn:{cdk.Aws.PARTITION}:iam::{cdk.Aws.ACCOUNT_ID}:role/{self.replication_role_name}"
        self.key.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowS3ReplicationRoleToEncryptReplicas",
            principals=[iam.AnyPrincipal()],
            actions=["kms:Encrypt", "kms:GenerateDataKey", "kms:Decrypt"],
            resources=["*"],
            conditions={
                "StringEquals": {"aws:PrincipalArn": role_arn,
                                 "kms:CallerAccount": cdk.Aws.ACCOUNT_ID,
                                 "kms:ViaService": f"s3.{self.replica_region}.amazonaws.com"},
            },
        ))

    def _build_provider_logs(self, config: StageConfig) -> None:
        """A replica that empties its buckets on destroy (a stage that keeps no
        data) runs CDK's provider Lambda in this region. Its logs go to a
        group of the stage encrypted with a logs key of this region (keys are
        regional; the stage's logs key is in the storage stack), like every
        other log group of the stage. ``logs_key`` is None otherwise."""
        self.logs_key: kms.Key | None = None
        if self.node.try_find_child(AUTO_DELETE_PROVIDER) is None:
            return
        self.logs_key = kms.Key(
            self, "LogsKey",
            alias=f"alias/{config.stack_prefix}-replica/logs",
            description=f"ml-infra {config.name}: CloudWatch Logs of the replica region",
            enable_key_rotation=True,
            removal_policy=self.removal_policy,
            pending_window=cdk.Duration.days(30),
        )
        allow_logs_service(self.logs_key, config)
        encrypt_provider_logs(self, AUTO_DELETE_PROVIDER, config=config, purpose="auto-delete-objects",
                              key=self.logs_key)

    def _build_buckets(self, config: StageConfig) -> None:
        storage = config.storage
        removal = self.removal_policy
        self.access_log_bucket = s3.Bucket(
            self, "AccessLogs",
            # Named like the replicas, for the same reason: the ops stack's
            # drift detection reads its configuration from another region.
            bucket_name=self._bucket_name(config, REPLICA_BUCKETS["AccessLogs"]),
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[s3.LifecycleRule(
                id="expire-access-logs",
                expiration=cdk.Duration.days(storage.access_log_expiration_days),
                abort_incomplete_multipart_upload_after=ABORT_INCOMPLETE_UPLOADS)],
            removal_policy=removal,
            auto_delete_objects=removal == cdk.RemovalPolicy.DESTROY,
        )
        buckets = {}
        for construct_id, days in (
            ("TrainingData", storage.training_data_noncurrent_expiration_days),
            ("ModelArtifacts", storage.model_noncurrent_expiration_days),
        ):
            bucket = SecureBucket(
                self, construct_id,
                bucket_name=self._bucket_name(config, REPLICA_BUCKETS[construct_id]),
                encryption_key=self.key,
                access_log_bucket=self.access_log_bucket,
                log_prefix=REPLICA_BUCKETS[construct_id],
                removal_policy=removal,
                versioned=True,
                # The replica keeps the source's recovery window: a replicated
                # delete marker hides an object, its version expires later.
                lifecycle_rules=[noncurrent_version_rule(days)],
            )
            if storage.deletion_protection:
                bucket.protect_from_deletion(exempt_role_arns=self.deletion_exempt_role_arns())
            buckets[construct_id] = bucket
        self.training_data_bucket = buckets["TrainingData"]
        self.model_artifacts_bucket = buckets["ModelArtifacts"]
        partition = cdk.Aws.PARTITION
        self.training_data_bucket_arn = (
            f"arn:{partition}:s3:::{self._bucket_name(config, REPLICA_BUCKETS['TrainingData'])}")
        self.model_artifacts_bucket_arn = (
            f"arn:{partition}:s3:::{self._bucket_name(config, REPLICA_BUCKETS['ModelArtifacts'])}")
        self.bucket_names = tuple(self._bucket_name(config, p) for p in REPLICA_BUCKETS.values())
        cdk.CfnOutput(self, "TrainingDataReplicaBucketName",
                      value=self.training_data_bucket.bucket_name,
                      description="Replica of the training data")
        cdk.CfnOutput(self, "ModelArtifactsReplicaBucketName",
                      value=self.model_artifacts_bucket.bucket_name,
                      description="Replica of the model artifacts")

