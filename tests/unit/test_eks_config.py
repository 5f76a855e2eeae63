"""EksConfig validation: every rejection names the field, the value and what is allowed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ml_stacks.config import (
    GPU_INSTANCE_FAMILIES,
    AddonVersions,
    ConfigError,
    EksConfig,
    NodegroupConfig,
    ServingPairConfig,
    default_configs,
    instance_family,
)


def stage(name: str = "dev", **eks_changes):
    config = default_configs()[name]
    return replace(config, eks=replace(config.eks, **eks_changes))


def gpu_group(**changes) -> NodegroupConfig:
    base = NodegroupConfig(instance_types=("g6.xlarge",), min_size=0, desired_size=0, max_size=2,
                           ami_type="BOTTLEROCKET_x86_64_NVIDIA", disk_size_gib=100)
    return replace(base, **changes)


def rejects(field_path: str, match: str, build) -> ConfigError:
    with pytest.raises(ConfigError, match=match) as error:
        build()
    assert error.value.field_path == field_path
    return error.value


def test_every_stage_validates_its_eks_config_under_its_own_name() -> None:
    # Which stage runs which groups is the stage's choice (the snapshots
    # record the repository's); that it is checked, under its name, is not.
    for name, config in default_configs().items():
        assert len(config.eks.gpu_training.instance_types) >= 2
        assert 1 <= config.eks.system.min_size <= config.eks.system.desired_size <= config.eks.system.max_size
        rejects(f"{name}.eks.gpu_training.instance_types", "at least two",
                lambda c=config: replace(c, eks=replace(c.eks, gpu_training=replace(
                    c.eks.gpu_training, instance_types=c.eks.gpu_training.instance_types[:1]))))


def test_fails_when_a_gpu_group_uses_a_cpu_instance_type() -> None:
    error = rejects("dev.eks.gpu_inference.instance_types", "an NVIDIA GPU instance type",
                    lambda: stage(gpu_inference=gpu_group(instance_types=("m7i.xlarge",))))
    assert error.value == "m7i.xlarge"
    assert "g6e (NVIDIA L40S)" in error.allowed and "p5 (NVIDIA H100)" in error.allowed


def test_fails_when_the_training_group_uses_a_non_nvidia_accelerator() -> None:
    # g4ad is AMD, inf2 is Neuron: neither runs on the NVIDIA AMI types.
    for instance_type in ("g4ad.xlarge", "inf2.xlarge"):
        rejects("dev.eks.gpu_training.instance_types", "NVIDIA GPU instance type",
                lambda t=instance_type: stage(gpu_training=gpu_group(instance_types=("g6.xlarge", t))))


def test_fails_when_the_system_group_uses_a_gpu_instance_type() -> None:
    system = NodegroupConfig(instance_types=("g5.xlarge",), min_size=1, desired_size=1, max_size=2,
                             ami_type="BOTTLEROCKET_x86_64")
    rejects("dev.eks.system.instance_types", "a CPU instance type", lambda: stage(system=system))


def test_fails_on_a_malformed_instance_type() -> None:
    rejects("dev.eks.gpu_inference.instance_types", "an EC2 instance type",
            lambda: stage(gpu_inference=gpu_group(instance_types=("g6-xlarge",))))


def test_fails_on_an_unknown_ami_type() -> None:
    error = rejects("dev.eks.gpu_inference.ami_type", "one of BOTTLEROCKET_x86_64_NVIDIA",
                    lambda: stage(gpu_inference=gpu_group(ami_type="AL2_x86_64_GPU")))
    assert error.value == "AL2_x86_64_GPU"


def test_fails_when_a_gpu_group_uses_a_cpu_ami_type() -> None:
    rejects("dev.eks.gpu_inference.ami_type", "one of",
            lambda: stage(gpu_inference=gpu_group(ami_type="BOTTLEROCKET_x86_64")))


def test_fails_when_the_ami_architecture_does_not_match_the_instances() -> None:
    rejects("dev.eks.gpu_inference.ami_type", "an AMI type for x86_64 instances",
            lambda: stage(gpu_inference=gpu_group(ami_type="BOTTLEROCKET_ARM_64_NVIDIA")))
    # g5g is Graviton + T4G: the arm64 NVIDIA AMI is the right one.
    stage(gpu_inference=gpu_group(instance_types=("g5g.xlarge",), ami_type="AL2023_ARM_64_NVIDIA"))


def test_fails_when_instance_types_mix_architectures() -> None:
    rejects("dev.eks.gpu_inference.instance_types", "one CPU architecture",
            lambda: stage(gpu_inference=gpu_group(instance_types=("g6.xlarge", "g5g.xlarge"))))


@pytest.mark.parametrize("sizes", [(2, 1, 3), (0, 4, 3), (3, 3, 2)])
def test_fails_unless_min_le_desired_le_max(sizes) -> None:
    low, desired, high = sizes
    error = rejects("dev.eks.gpu_inference.desired_size", "min_size <= desired_size <= max_size",
                    lambda: stage(gpu_inference=gpu_group(min_size=low, desired_size=desired,
                                                          max_size=high)))
    assert error.value == sizes


def test_fails_on_a_negative_or_non_integer_size() -> None:
    rejects("dev.eks.gpu_training.min_size", "an integer from 0",
            lambda: stage(gpu_training=gpu_group(instance_types=("g6.xlarge", "g5.xlarge"), min_size=-1)))
    rejects("dev.eks.gpu_inference.max_size", "an integer from 0",
            lambda: stage(gpu_inference=gpu_group(max_size=True)))


def test_fails_when_a_group_can_never_have_a_node() -> None:
    rejects("dev.eks.gpu_inference.max_size", "at least 1",
            lambda: stage(gpu_inference=gpu_group(max_size=0)))


@pytest.mark.parametrize("size", [8, 20000, 50.5])
def test_fails_on_a_disk_size_out_of_range(size) -> None:
    rejects("dev.eks.gpu_inference.disk_size_gib", "GiB, gp3",
            lambda: stage(gpu_inference=gpu_group(disk_size_gib=size)))


def test_fails_when_the_training_group_has_a_single_spot_instance_type() -> None:
    rejects("dev.eks.gpu_training.instance_types", "at least two instance types",
            lambda: stage(gpu_training=gpu_group()))


def test_fails_on_a_public_endpoint_in_prod_unless_explicitly_allowed() -> None:
    error = rejects("prod.eks.public_access_cidrs", "allow_public_endpoint=True",
                    lambda: stage("prod", public_access_cidrs=("203.0.113.0/24",)))
    assert "empty in prod (private endpoint only)" in error.allowed
    rejects("staging.eks.public_access_cidrs", "allow_public_endpoint",
            lambda: stage("staging", public_access_cidrs=("203.0.113.0/24",)))
    allowed = stage("prod", public_access_cidrs=("203.0.113.0/24",), allow_public_endpoint=True)
    assert allowed.eks.public_access_cidrs == ("203.0.113.0/24",)


@pytest.mark.parametrize("cidr, match", [
    ("0.0.0.0/0", "never the whole internet"),
    ("10.0.0.0/16", "not RFC 1918"),
    ("203.0.113.7/24", "CIDR notation"),
    ("not-a-cidr", "CIDR notation"),
])
def test_fails_on_a_bad_public_access_cidr(cidr, match) -> None:
    rejects("dev.eks.public_access_cidrs", match, lambda: stage(public_access_cidrs=(cidr,)))


def test_fails_on_an_unsupported_kubernetes_version() -> None:
    error = rejects("dev.eks.kubernetes_version", "one of 1.33, 1.34, 1.35",
                    lambda: stage(kubernetes_version="1.29"))
    assert error.value == "1.29"


def test_fails_on_an_unpinned_addon_version() -> None:
    rejects("dev.eks.addons.coredns", "a pinned add-on version",
            lambda: stage(addons=AddonVersions(coredns="latest")))
    rejects("dev.eks.addons.cloudwatch_observability", "a pinned add-on version",
            lambda: stage(addons=AddonVersions(cloudwatch_observability="v4")))


def test_fails_when_kube_proxy_does_not_match_the_kubernetes_version() -> None:
    rejects("dev.eks.addons.kube_proxy", "a kube-proxy build for Kubernetes 1.35",
            lambda: stage(kubernetes_version="1.35"))


def test_fails_on_a_principal_that_is_not_an_iam_role_or_user_arn() -> None:
    rejects("dev.eks.admin_principal_arns", "an IAM role or user ARN",
            lambda: stage(admin_principal_arns=("arn:aws:iam::123456789012:group/admins",)))
    rejects("dev.eks.readonly_principal_arns", "an IAM role or user ARN",
            lambda: stage(readonly_principal_arns=("ml-readers",)))


def test_fails_when_a_principal_is_both_admin_and_readonly() -> None:
    arn = "arn:aws:iam::123456789012:role/ml-oncall"
    rejects("dev.eks.readonly_principal_arns", "one access entry per principal",
            lambda: stage(admin_principal_arns=(arn,), readonly_principal_arns=(arn,)))


def test_fails_on_an_unpinned_device_plugin_chart() -> None:
    rejects("dev.eks.device_plugin_chart_version", "a pinned chart version",
            lambda: stage(device_plugin_chart_version="latest"))


def test_serving_pair_groups_are_validated_as_gpu_groups() -> None:
    pair = ServingPairConfig(baseline=gpu_group(min_size=1, desired_size=1),
                             burst=gpu_group(instance_types=("c7i.xlarge",)))
    rejects("dev.eks.serving_pair.burst.instance_types", "NVIDIA GPU instance type",
            lambda: stage(serving_pair=pair))


def test_device_plugin_is_needed_only_for_al2023_nvidia_groups() -> None:
    assert not EksConfig().needs_device_plugin
    assert stage(gpu_inference=gpu_group(ami_type="AL2023_x86_64_NVIDIA")).eks.needs_device_plugin


def test_instance_family_parses_hyphenated_families() -> None:
    assert instance_family("p6-b200.48xlarge") == "p6-b200"
    assert instance_family("g6e.12xlarge") == "g6e"
    assert instance_family("g6e") is None
    assert {"g4dn", "g5", "g6", "g6e", "p4d", "p5"} <= set(GPU_INSTANCE_FAMILIES)


def test_fails_when_the_system_group_can_have_no_node() -> None:
    system = replace(default_configs()["dev"].eks.system, min_size=0, desired_size=0)
    rejects("dev.eks.system.min_size", "CoreDNS", lambda: stage(system=system))


# --- node auto repair ------------------------------------------------------------

def test_node_repair_defaults_are_on_with_percentage_limits() -> None:
    from ml_stacks.config import NodeRepairConfig
    repair = EksConfig().node_repair
    assert repair == NodeRepairConfig(enabled=True, max_parallel_repaired_percentage=25,
                                      max_unhealthy_percentage=50)


@pytest.mark.parametrize("field, value", [
    ("max_parallel_repaired_percentage", 0), ("max_parallel_repaired_percentage", 101),
    ("max_unhealthy_percentage", 0), ("max_unhealthy_percentage", 50.0), ("enabled", "yes"),
])
def test_fails_when_a_node_repair_value_is_not_allowed(field, value) -> None:
    from ml_stacks.config import NodeRepairConfig
    error = rejects(f"dev.eks.node_repair.{field}", "not allowed",
                    lambda: stage(node_repair=replace(NodeRepairConfig(), **{field: value})))
    assert error.value == value


def test_fails_when_the_node_monitoring_agent_pin_is_not_a_version() -> None:
    rejects("dev.eks.addons.eks_node_monitoring_agent", "pinned add-on version",
            lambda: stage(addons=AddonVersions(eks_node_monitoring_agent="latest")))


def test_fails_on_a_zone_id_where_eks_creates_no_cluster() -> None:
    from ml_stacks.config.eks import EKS_UNSUPPORTED_ZONE_IDS

    dev = default_configs()["dev"]
    [refused] = EKS_UNSUPPORTED_ZONE_IDS[dev.region]
    prefix = refused.rsplit("-az", 1)[0]
    allowed = next(zone for zone in (f"{prefix}-az{n}" for n in range(1, 10)) if zone != refused)
    zones = (allowed, refused)

    def with_zones(eks_enabled: bool):
        return replace(dev, network=replace(dev.network, availability_zones=zones),
                       eks=replace(dev.eks, enabled=eks_enabled))

    error = rejects("dev.network.availability_zones", refused, lambda: with_zones(True))
    assert error.value == refused
    assert with_zones(False).network.availability_zones == zones  # no cluster, no constraint
