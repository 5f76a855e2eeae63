"""An S3 bucket that cannot be created insecurely."""

from __future__ import annotations

from typing import Sequence

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

# What destroys data or the protection itself; denied by
# ``SecureBucket.protect_from_deletion`` to all but the exempt roles.
# Deleting an object (a delete marker) stays allowed: the version behind it
# is kept until the noncurrent-version lifecycle rule expires it.
# ``s3:PutLifecycleConfiguration`` also covers DeleteBucketLifecycle and
# ``s3:PutReplicationConfiguration`` DeleteBucketReplication.
DESTRUCTIVE_ACTIONS = (
    "s3:DeleteObjectVersion",
    "s3:DeleteBucket",
    "s3:PutBucketVersioning",
    "s3:PutLifecycleConfiguration",
    "s3:PutReplicationConfiguration",
    "s3:PutBucketPolicy",
    "s3:DeleteBucketPolicy",
)


class SecureBucket(s3.Bucket):
    """``s3.Bucket`` with the platform's non-negotiables always on.

    Public access blocked, TLS required, ACLs disabled (bucket owner enforced),
    encrypted with ``encryption_key`` (SSE-KMS with an S3 Bucket Key, so KMS
    request costs stay flat) and server access logs written to
    ``access_log_bucket`` under ``<log_prefix>/``.

    ``removal_policy`` decides what ``cdk destroy`` does: ``RETAIN`` keeps
    the bucket; ``DESTROY`` empties and deletes it (dev only).
    ``bucket_name`` (default None: CloudFormation names it) only for a bucket
    another region must address before it exists (a replication target).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        encryption_key: kms.IKey,
        access_log_bucket: s3.IBucket,
        log_prefix: str,
        removal_policy: cdk.RemovalPolicy,
        versioned: bool = False,
        lifecycle_rules: Sequence[s3.LifecycleRule] = (),
        bucket_name: str | None = None,
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            bucket_name=bucket_name,
            encryption=s3.BucketEncryption.KMS,
            encryption_key=encryption_key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=access_log_bucket,
            server_access_logs_prefix=f"{log_prefix}/",
            versioned=versioned,
            lifecycle_rules=list(lifecycle_rules),
            removal_policy=removal_policy,
            auto_delete_objects=removal_policy == cdk.RemovalPolicy.DESTROY,
        )

    def protect_from_deletion(self, *, exempt_role_arns: Sequence[str]) -> None:
        """Deny ``DESTRUCTIVE_ACTIONS`` on this bucket to every principal whose
        ARN matches none of ``exempt_role_arns`` (IAM role ARNs; ``*`` allowed).

        A bucket-policy deny applies to every principal of the account,
        administrators included; the bucket's own account root can still
        delete the policy (S3 always allows it), which is the last way out
        if every exempt role is lost.
        """
        self.add_to_resource_policy(iam.PolicyStatement(
            sid="DenyDestructionExceptBreakGlass",
            effect=iam.Effect.DENY,
            principals=[iam.AnyPrincipal()],
            actions=list(DESTRUCTIVE_ACTIONS),
            resources=[self.bucket_arn, self.arn_for_objects("*")],
            conditions={"ArnNotLike": {"aws:PrincipalArn": list(exempt_role_arns)}},
        ))


def noncurrent_version_rule(days: int, *, rule_id: str = "expire-noncurrent-versions",
                            abort_uploads_after: cdk.Duration | None = cdk.Duration.days(7)
                            ) -> s3.LifecycleRule:
    """Noncurrent versions (overwritten or deleted objects) expire ``days``
    after they stop being current, which bounds what versioning costs;
    delete markers with no version left behind them are removed; incomplete
    multipart uploads are aborted after ``abort_uploads_after`` (None: a
    rule of its own does it)."""
    return s3.LifecycleRule(
        id=rule_id,
        noncurrent_version_expiration=cdk.Duration.days(days),
        expired_object_delete_marker=True,
        abort_incomplete_multipart_upload_after=abort_uploads_after,
    )
