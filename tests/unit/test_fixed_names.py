"""Fixed physical names: only where a service needs them, and all of them listed
for preflight (ml_stacks.fixed_names), so a rebuilt stage never fails on a
leftover it cannot see."""

from __future__ import annotations

from dataclasses import replace

import pytest

from delivery.preflight.leftovers import literal_names
from ml_stacks.config import default_configs
from ml_stacks.fixed_names import ECR_REPOSITORY, LOG_GROUP, S3_BUCKET, fixed_names
from tests.conftest import STAGES

# The property that carries a resource's physical name, per type we create.
NAME_PROPERTIES = {
    LOG_GROUP: "LogGroupName",
    ECR_REPOSITORY: "RepositoryName",
    "AWS::S3::Bucket": "BucketName",
    "AWS::KMS::Key": "KeyId",
    "AWS::DynamoDB::Table": "TableName",
    "AWS::SSM::Parameter": "Name",
}


def named_resources(all_templates, stage: str) -> set[tuple[str, str, str, bool]]:
    """(stack, type, name, retained) of every resource with a fixed physical name
    (a literal, or joined from literals and the account: ``${AWS::AccountId}``)
    whose type can outlive its stack (logs, repositories, buckets, keys, tables)."""
    found = set()
    for (template_stage, stack), template in all_templates.items():
        if template_stage != stage:
            continue
        resources = template["Resources"]
        for logical_id, kind, prop, name in literal_names(template):
            if NAME_PROPERTIES.get(kind) == prop and kind != "AWS::SSM::Parameter":
                found.add((stack, kind, name, resources[logical_id].get("DeletionPolicy") == "Retain"))
    return found


@pytest.mark.parametrize("stage", STAGES)
def test_every_fixed_name_in_the_templates_is_listed_for_preflight(synthesized, all_templates, stage) -> None:
    listed = {(f.stack, f.resource_type, f.name, f.retained) for f in fixed_names(synthesized.configs[stage])}
    assert named_resources(all_templates, stage) == listed


@pytest.mark.parametrize("stage", STAGES)
def test_the_image_repository_name_is_generated(all_templates, stage) -> None:
    [repository] = [r for r in all_templates[(stage, "storage")]["Resources"].values()
                    if r["Type"] == ECR_REPOSITORY]
    assert "RepositoryName" not in repository["Properties"]


@pytest.mark.parametrize("stage", STAGES)
def test_retained_fixed_names_are_the_eks_log_group_and_the_replica_buckets(synthesized, stage) -> None:
    config = synthesized.configs[stage]
    retained = [f for f in fixed_names(config) if f.retained]
    expected = [f"/aws/eks/ml-{stage}/cluster"] if config.storage.retain and config.eks.enabled else []
    if config.storage.retain and config.storage.replication_region:
        expected += [f"ml-{stage}-{purpose}-replica-${{AWS::AccountId}}-{config.storage.replication_region}"
                     for purpose in ("access-logs", "training-data", "model-artifacts")]
    assert [f.name for f in retained] == expected


def test_a_retained_replica_bucket_is_listed_with_its_remove_and_adopt_commands() -> None:
    prod = default_configs()["prod"]
    region = prod.storage.replication_region
    [training] = [f for f in fixed_names(prod) if f.resource_type == S3_BUCKET and f.logical_id_prefix == "TrainingData"]
    assert training.stack_path == "prod/replica"
    assert training.remove.startswith(f"aws s3 rb s3://ml-prod-training-data-replica-${{AWS::AccountId}}-{region} --force")
    assert "cdk import -c stages=prod 'prod/replica'" in training.adopt


def test_a_kept_repository_name_is_listed_with_its_remove_and_adopt_commands() -> None:
    prod = default_configs()["prod"]
    prod = replace(prod, storage=replace(prod.storage, image_repository_name="ml-prod/images"))
    [repository] = [f for f in fixed_names(prod) if f.resource_type == ECR_REPOSITORY]
    assert (repository.name, repository.retained, repository.stack_path) == ("ml-prod/images", True, "prod/storage")
    assert repository.remove == "aws ecr delete-repository --repository-name ml-prod/images --force"
    assert "cdk import -c stages=prod 'prod/storage'" in repository.adopt


def test_log_group_leftovers_are_removed_with_the_logs_cli() -> None:
    [eks] = [f for f in fixed_names(default_configs()["staging"]) if f.stack == "eks"]
    assert eks.remove == "aws logs delete-log-group --log-group-name /aws/eks/ml-staging/cluster"
