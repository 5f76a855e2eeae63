"""Read access to exactly one S3 object, wherever it lives.

Used for files CDK ships as assets (the node agent zip, an example model
archive) and for model artifacts: a role gets ``s3:GetObject`` on the one
key, never the bucket. In the CDK bootstrap bucket no KMS grant is needed:
its default key, AWS managed or the one ``cdk bootstrap
--bootstrap-customer-key`` creates, lets every principal of the account
decrypt through S3.
"""

from __future__ import annotations

from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3


def grant_read_object(role: iam.IRole, *, bucket: s3.IBucket, key: str, sid: str) -> None:
    """Add one statement to ``role``: ``s3:GetObject`` on ``bucket``'s ``key`` alone."""
    role.add_to_principal_policy(iam.PolicyStatement(
        sid=sid,
        actions=["s3:GetObject"],
        resources=[bucket.arn_for_objects(key)],
    ))
