"""Every taggable resource of every template carries the stage's cost tags."""

from __future__ import annotations

from functools import lru_cache

import pytest
from cfnlint.schema import PROVIDER_SCHEMA_MANAGER

from ml_stacks.stage import stage_tags

REQUIRED = ("Environment", "Team", "Project", "CostCenter", "ManagedBy", "Repository")


@lru_cache(maxsize=None)
def taggable(resource_type: str, region: str) -> bool:
    """Whether CloudFormation accepts tags on this type (from its resource schema)."""
    if resource_type.startswith("Custom::") or resource_type == "AWS::CDK::Metadata":
        return False
    schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema(region, resource_type).schema
    tagging = schema.get("tagging", {})
    return bool(tagging.get("taggable", "Tags" in schema.get("properties", {}))) and \
        "Tags" in schema.get("properties", {})


def tags_of(resource: dict) -> dict[str, str]:
    tags = resource.get("Properties", {}).get("Tags", {})
    if isinstance(tags, dict):  # map-shaped Tags (e.g. AWS::SSM::Parameter)
        return tags
    return {t["Key"]: t["Value"] for t in tags}


def test_every_taggable_resource_carries_the_stage_tags(synthesized, all_templates) -> None:
    checked = 0
    missing = []
    for (stage, stack), template in all_templates.items():
        expected = stage_tags(synthesized.configs[stage])
        assert set(expected) == set(REQUIRED)
        region = synthesized.configs[stage].region
        for logical_id, resource in template["Resources"].items():
            if not taggable(resource["Type"], region):
                continue
            checked += 1
            tags = tags_of(resource)
            wrong = {k: tags.get(k) for k, v in expected.items() if tags.get(k) != v}
            if wrong:
                missing.append(f"{stage}/{stack} {logical_id} ({resource['Type']}): {wrong}")
    assert checked > 100  # the walk really saw the templates
    assert missing == []


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_environment_tag_is_the_stage_name(all_templates, stage) -> None:
    [vpc] = [r for r in all_templates[(stage, "network")]["Resources"].values() if r["Type"] == "AWS::EC2::VPC"]
    assert tags_of(vpc)["Environment"] == stage
    assert tags_of(vpc)["ManagedBy"] == "cdk"
