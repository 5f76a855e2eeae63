"""Stage config validation: every rejection names the field, the value and what is allowed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ml_stacks.config import (
    STAGE_NAME_MAX,
    AlertsConfig,
    ConfigError,
    NetworkConfig,
    StageConfig,
    StageTags,
    StorageConfig,
    default_configs,
    select_stages,
)

TAGS = StageTags(team="t", project="p", cost_center="c", repository="r")


def stage(**overrides) -> StageConfig:
    network = overrides.pop("network", None) or NetworkConfig(
        vpc_cidr="10.0.0.0/16", availability_zones=("eu-west-1a", "eu-west-1b"))
    values = dict(name="dev", region="eu-west-1", network=network, tags=TAGS)
    values.update(overrides)
    return StageConfig(**values)


def network(**overrides) -> NetworkConfig:
    values = dict(vpc_cidr="10.0.0.0/16", availability_zones=("eu-west-1a", "eu-west-1b"))
    values.update(overrides)
    return NetworkConfig(**values)


def test_default_configs_are_valid_and_keyed_by_their_stage_names() -> None:
    configs = default_configs()
    assert configs and list(configs) == [c.name for c in configs.values()]
    for name, config in configs.items():
        # What validation guarantees for any stage (the values are the stage's own).
        assert 1 <= config.network.nat_gateways <= len(config.network.availability_zones), name
        assert config.storage.retain or name == "dev", name
        with pytest.raises(ConfigError) as error:
            replace(config, network=replace(config.network,
                                            nat_gateways=len(config.network.availability_zones) + 1))
        assert error.value.field_path == f"{name}.network.nat_gateways"


@pytest.mark.parametrize(
    ("overrides", "field", "value", "allowed"),
    [
        ({"network": network(vpc_cidr="10.0.0.0/33")}, "dev.network.vpc_cidr", "10.0.0.0/33", "CIDR notation"),
        ({"network": network(vpc_cidr="10.0.0.1/16")}, "dev.network.vpc_cidr", "10.0.0.1/16", "CIDR notation"),
        ({"network": network(vpc_cidr="banana")}, "dev.network.vpc_cidr", "banana", "CIDR notation"),
        ({"network": network(vpc_cidr="10.0.0.0/8")}, "dev.network.vpc_cidr", "10.0.0.0/8", "between /16 and /22"),
        ({"network": network(vpc_cidr="10.0.0.0/24")}, "dev.network.vpc_cidr", "10.0.0.0/24", "between /16 and /22"),
        ({"network": network(vpc_cidr="8.8.0.0/16")}, "dev.network.vpc_cidr", "8.8.0.0/16", "private range"),
        ({"network": network(availability_zones=("us-east-1a", "eu-west-1b"))},
         "dev.network.availability_zones", "us-east-1a", "AZ ID of region 'eu-west-1'"),
        ({"network": network(availability_zones=("eu-west-1",))},
         "dev.network.availability_zones", "eu-west-1", "AZ ID of region"),
        ({"network": network(availability_zones=("eu-west-1a", "eu-west-1a"))},
         "dev.network.availability_zones", ("eu-west-1a", "eu-west-1a"), "each AZ once"),
        ({"network": network(availability_zones=())}, "dev.network.availability_zones", (), "1 to 6"),
        ({"network": network(availability_zones=("euw1-az1", "eu-west-1b"))},
         "dev.network.availability_zones", ("euw1-az1", "eu-west-1b"), "names only or AZ IDs only"),
        ({"network": network(availability_zones=("use1-az1", "use1-az2"))},
         "dev.network.availability_zones", "use1-az1", "'euw1-az1' (ID)"),
        ({"network": network(availability_zones=("euw1-az0",))},
         "dev.network.availability_zones", "euw1-az0", "AZ name or AZ ID of region 'eu-west-1'"),
        ({"network": network(availability_zones=("euw1-az1", "euw1-az1"))},
         "dev.network.availability_zones", ("euw1-az1", "euw1-az1"), "each AZ once"),
        ({"network": network(availability_zones=["eu-west-1a"])},
         "dev.network.availability_zones", ["eu-west-1a"], "tuple"),
        ({"network": network(nat_gateways=3)}, "dev.network.nat_gateways", 3, "1 to 2"),
        ({"network": network(nat_gateways=0)}, "dev.network.nat_gateways", 0, "at least one"),
        ({"network": network(interface_endpoints=("s3",))}, "dev.network.interface_endpoints", "s3",
         "one of "),
        ({"network": network(interface_endpoints=("sts", "sts"))}, "dev.network.interface_endpoints",
         ("sts", "sts"), "each endpoint once"),
        ({"network": network(flow_log_retention_days=42)}, "dev.network.flow_log_retention_days", 42,
         "retention"),
        ({"name": "Perf"}, "name", "Perf", "lowercase letters and digits"),
        ({"name": "perf-1"}, "name", "perf-1", "lowercase letters and digits"),
        ({"name": "x" * (STAGE_NAME_MAX + 1)}, "name", "x" * (STAGE_NAME_MAX + 1),
         f"at most {STAGE_NAME_MAX} characters"),
        ({"region": "moon-1"}, "dev.region", "moon-1", "AWS region"),
        ({"account": "12345"}, "dev.account", "12345", "12-digit"),
        ({"name": "prod", "storage": StorageConfig(retain=False)}, "prod.storage.retain", False,
         "True outside dev"),
        ({"name": "staging", "storage": StorageConfig(ecr_immutable_tags=False)},
         "staging.storage.ecr_immutable_tags", False, "True outside dev"),
        ({"name": "prod", "storage": StorageConfig(ecr_immutable_tags=False)},
         "prod.storage.ecr_immutable_tags", False, "True outside dev"),
        ({"storage": StorageConfig(checkpoint_expiration_days=0)},
         "dev.storage.checkpoint_expiration_days", 0, "1 to 3650"),
        ({"storage": StorageConfig(ecr_keep_tagged_images=True)},
         "dev.storage.ecr_keep_tagged_images", True, "integer"),
        ({"alerts": AlertsConfig(email_subscribers=("not-an-address",))},
         "dev.alerts.email_subscribers", "not-an-address", "e-mail address"),
        ({"tags": replace(TAGS, team="")}, "dev.tags.Team", "", "non-empty"),
        ({"tags": replace(TAGS, cost_center="a#b")}, "dev.tags.CostCenter", "a#b", "letters, digits"),
    ],
)
def test_fails_when_a_value_is_not_allowed(overrides, field, value, allowed) -> None:
    with pytest.raises(ConfigError) as caught:
        stage(**overrides)
    error = caught.value
    assert error.field_path == field
    assert error.value == value
    assert allowed in error.allowed
    assert str(error).startswith(f"{field}: {value!r} is not allowed")


@pytest.mark.parametrize(("region", "zones"), [
    ("eu-west-1", ("euw1-az1", "euw1-az3")),
    ("us-east-1", ("use1-az1", "use1-az4", "use1-az6")),
    ("ap-southeast-2", ("apse2-az1",)),
    ("us-gov-west-1", ("usgw1-az1", "usgw1-az2")),
])
def test_zone_ids_of_the_stage_region_are_accepted(region, zones) -> None:
    config = stage(region=region, network=network(availability_zones=zones))
    assert config.network.availability_zones == zones
    assert config.network.uses_zone_ids


def test_zone_names_are_not_zone_ids() -> None:
    assert not stage().network.uses_zone_ids


def test_nat_gateway_count_may_equal_the_az_count() -> None:
    assert stage(network=network(nat_gateways=2)).network.nat_gateways == 2


def test_config_is_frozen() -> None:
    config = stage()
    with pytest.raises(AttributeError):
        config.region = "us-east-1"  # type: ignore[misc]


def test_select_stages_defaults_to_all_in_stage_order() -> None:
    configs = default_configs()
    assert [c.name for c in select_stages(configs, None)] == ["dev", "staging", "prod"]
    assert [c.name for c in select_stages(configs, "")] == ["dev", "staging", "prod"]
    assert [c.name for c in select_stages(configs, "prod, dev")] == ["dev", "prod"]


def test_fails_when_an_unknown_stage_is_selected() -> None:
    with pytest.raises(ConfigError, match=r"stages: 'qa' is not allowed — a comma-separated list of dev, staging, prod"):
        select_stages(default_configs(), "dev,qa")


def test_account_override_is_validated() -> None:
    assert default_configs(account="123456789012")["prod"].account == "123456789012"
    with pytest.raises(ConfigError, match="dev.account"):
        default_configs(account="not-an-account")
