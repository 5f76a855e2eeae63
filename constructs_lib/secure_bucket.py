"""An S3 bucket that cannot be created insecurely."""

from __future__ import annotations

from typing import Sequence

import aws_cdk as cdk
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct


class SecureBucket(s3.Bucket):
    """``s3.Bucket`` with the platform's non-negotiables always on.

    Public access blocked, TLS required, ACLs disabled (bucket owner enforced),
    encrypted with ``encryption_key`` (SSE-KMS with an S3 Bucket Key, so KMS
    request costs stay flat) and server access logs written to
    ``access_log_bucket`` under ``<log_prefix>/``.

    ``removal_policy`` decides what ``cdk destroy`` does: ``RETAIN`` keeps
    the bucket; ``DESTROY`` empties and deletes it (dev only).
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
    ) -> None:
        super().__init__(
            scope,
            construct_id,
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
