"""The ``storage`` section: the stateful buckets, keys and image repository."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ml_stacks.config.base import _require


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
    """

    retain: bool = True
    checkpoint_expiration_days: int = 30
    model_noncurrent_expiration_days: int = 30
    ecr_keep_tagged_images: int = 10
    ecr_immutable_tags: bool = True
    access_log_expiration_days: int = 365
    data_capture_expiration_days: int = 90
    image_repository_name: str | None = None

    def validate(self, prefix: str, stage: str) -> None:
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
            ("ecr_keep_tagged_images", 1, 1000),
            ("access_log_expiration_days", 1, 3650),
            ("data_capture_expiration_days", 1, 3650),
        ):
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
                     f"{prefix}.{name}", value, f"an integer from {low} to {high}")
