"""The ``storage`` section: the stateful buckets, keys and image repository."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ml_stacks.config.base import _REGION_RE, _require


# An IAM role name (the break-glass role is matched by name, at any path,
# so an IAM Identity Center permission-set role works too).
_ROLE_NAME_RE = re.compile(r"^[\w+=,.@-]{1,64}$")
_ECR_REPOSITORY_NAME_RE = re.compile(r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*$")


@dataclass(frozen=True)
class StorageConfig:
    """Stateful storage: key, buckets, image repository.

    ``retain`` keeps buckets, the key and the repository when their stack is
    deleted and turns on termination protection; only dev may set it False
    (and then ``cdk destroy`` empties and removes them).
    ``ecr_immutable_tags`` (default True): a pushed tag can never be moved to
    another image. Only dev may set it False; staging and prod promote images.
    ``data_capture_expiration_days``: how long endpoint request/response
    captures (which may hold personal data) are kept.
    ``image_repository_name``: None (the default) lets CloudFormation name
    the ECR repository, so a stage rebuilt after ``destroy`` never collides
    with the repository its predecessor retained. A stage deployed before
    names were generated sets its old ``ml-<stage>/images`` here to keep that
    repository (a new name replaces it); preflight then checks for a leftover.

    Data protection (docs/security.md, "Data protection and network egress"):
    the training data and model artifacts buckets are versioned in every
    stage; a noncurrent version (an overwritten or deleted object) is kept
    ``training_data_noncurrent_expiration_days`` /
    ``model_noncurrent_expiration_days`` and then expires, which bounds
    what versioning costs and is the window to undo a delete.
    ``deletion_protection`` (default False; requires ``retain``) adds a
    bucket-policy deny on both buckets (and their replicas) of everything
    that destroys versions or the protection itself (``s3:DeleteObjectVersion``,
    ``s3:PutBucketVersioning``, ``s3:PutLifecycleConfiguration``,
    ``s3:DeleteBucket``, ``s3:PutBucketPolicy``, ...) for every principal
    but ``break_glass_role_name`` (an IAM role name, required with it) and
    the CDK CloudFormation execution role that deploys the stack.
    ``replication_region`` (default None: no replication): the region of a
    second copy of both buckets, in stack ``ml-<stage>-replica``
    (``<stage>/replica``) with its own KMS key; must differ from the
    stage's region.
    """

    retain: bool = True
    checkpoint_expiration_days: int = 30
    model_noncurrent_expiration_days: int = 30
    ecr_keep_tagged_images: int = 10
    ecr_immutable_tags: bool = True
    access_log_expiration_days: int = 365
    data_capture_expiration_days: int = 90
    image_repository_name: str | None = None
    training_data_noncurrent_expiration_days: int = 30
    deletion_protection: bool = False
    break_glass_role_name: str | None = None
    replication_region: str | None = None

    def validate(self, prefix: str, stage: str, region: str) -> None:
        name = self.image_repository_name
        _require(name is None or (isinstance(name, str) and 2 <= len(name) <= 256
                                  and bool(_ECR_REPOSITORY_NAME_RE.match(name))),
                 f"{prefix}.image_repository_name", name,
                 f"None (CloudFormation names it) or an ECR repository name such as 'ml-{stage}/images'")
        _require(self.retain or stage == "dev", f"{prefix}.retain", self.retain,
                 "True outside dev: staging and prod never delete stateful data with their stack")
        # Staging and prod promote images (a tag tested in staging is what prod
        # serves and trains): there a tag must name one image for good.
        _require(self.ecr_immutable_tags is True or stage == "dev", f"{prefix}.ecr_immutable_tags",
                 self.ecr_immutable_tags, "True outside dev: stages that promote images need immutable tags")
        for name, low, high in (
            ("checkpoint_expiration_days", 1, 3650),
            ("model_noncurrent_expiration_days", 1, 3650),
            ("training_data_noncurrent_expiration_days", 1, 3650),
            ("ecr_keep_tagged_images", 1, 1000),
            ("access_log_expiration_days", 1, 3650),
            ("data_capture_expiration_days", 1, 3650),
        ):
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
                     f"{prefix}.{name}", value, f"an integer from {low} to {high}")
        self._validate_data_protection(prefix, region)

    def _validate_data_protection(self, prefix: str, region: str) -> None:
        _require(isinstance(self.deletion_protection, bool), f"{prefix}.deletion_protection",
                 self.deletion_protection, "True or False")
        _require(not self.deletion_protection or self.retain, f"{prefix}.deletion_protection",
                 self.deletion_protection,
                 "False when retain is False: a stage whose stack deletes its buckets cannot "
                 "also refuse their deletion")
        name = self.break_glass_role_name
        _require(name is None or (isinstance(name, str) and bool(_ROLE_NAME_RE.match(name))),
                 f"{prefix}.break_glass_role_name", name,
                 "None or an IAM role name (letters, digits and + = , . @ _ -, at most 64), "
                 "such as 'ml-prod-break-glass'")
        _require(name is not None or not self.deletion_protection, f"{prefix}.break_glass_role_name",
                 name, "an IAM role name when deletion_protection is True: the one role that may "
                 "still delete a version (an erasure request) or lift the protection")
        replica = self.replication_region
        _require(replica is None or (isinstance(replica, str) and bool(_REGION_RE.match(replica))),
                 f"{prefix}.replication_region", replica,
                 "None (no replication) or an AWS region name such as 'us-west-2'")
        _require(replica != region, f"{prefix}.replication_region", replica,
                 f"a region other than the stage's own ({region}): a replica in the same "
                 "region does not survive a regional outage")
