"""Fixed physical names: only where a service needs them, and all of them listed
for preflight (ml_stacks.fixed_names), so a rebuilt stage never fails on a
leftover it cannot see."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ml_stacks.config import default_configs
from ml_stacks.fixed_names import ECR_REPOSITORY, LOG_GROUP, fixed_names
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
    """(stack, type, name, retained) of every resource with a literal physical name
    whose type can outlive its stack (logs, repositories, buckets, keys, tables)."""
    found = set()
    for (template_stage, stack), template in all_templates.items():
        if template_stage != stage:
            continue
        for resource in template["Resources"].values():
            prop = NAME_PROPERTIES.get(resource["Type"])
            name = resource.get("Properties", {}).get(prop) if prop else None
            if isinstance(name, str) and resource["Type"] != "AWS::SSM::Parameter":
                found.add((stack, resource["Type"], name, resource.get("DeletionPolicy") == "Retain"))
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
def test_the_only_retained_fixed_name_is_the_log_group_eks_itself_names(synthesized, stage) -> None:
    config = synthesized.configs[stage]
    retained = [f for f in fixed_names(config) if f.retained]
    expected = [f"/aws/eks/ml-{stage}/cluster"] if config.storage.retain and config.eks.enabled else []
    assert [f.name for f in retained] == expected


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
