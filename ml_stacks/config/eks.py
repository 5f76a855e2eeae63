"""The ``eks`` section: the cluster, its add-ons and GPU node groups."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Mapping

from ml_stacks.config.base import ConfigError, LOG_RETENTION_DAYS, _is_int, _require


GPU_INSTANCE_FAMILIES: Mapping[str, tuple[str, str]] = {
    "g4dn": ("x86_64", "NVIDIA T4"),
    "g5": ("x86_64", "NVIDIA A10G"),
    "g5g": ("arm64", "NVIDIA T4G"),
    "g6": ("x86_64", "NVIDIA L4"),
    "g6e": ("x86_64", "NVIDIA L40S"),
    "gr6": ("x86_64", "NVIDIA L4"),
    "p4d": ("x86_64", "NVIDIA A100 40 GB"),
    "p4de": ("x86_64", "NVIDIA A100 80 GB"),
    "p5": ("x86_64", "NVIDIA H100"),
    "p5e": ("x86_64", "NVIDIA H200"),
    "p5en": ("x86_64", "NVIDIA H200"),
    "p6-b200": ("x86_64", "NVIDIA B200"),
}

# Managed node group AMI types (CloudFormation spelling) -> CPU architecture.
GPU_AMI_TYPES: Mapping[str, str] = {
    "BOTTLEROCKET_x86_64_NVIDIA": "x86_64",
    "BOTTLEROCKET_ARM_64_NVIDIA": "arm64",
    "AL2023_x86_64_NVIDIA": "x86_64",
    "AL2023_ARM_64_NVIDIA": "arm64",
}
CPU_AMI_TYPES: Mapping[str, str] = {
    "BOTTLEROCKET_x86_64": "x86_64",
    "BOTTLEROCKET_ARM_64": "arm64",
    "AL2023_x86_64_STANDARD": "x86_64",
    "AL2023_ARM_64_STANDARD": "arm64",
}
# Bottlerocket's NVIDIA variants ship the NVIDIA device plugin; the AL2023
# NVIDIA AMIs ship the driver and container toolkit only, so the cluster must
# run the plugin itself (Helm chart) on nodes of these AMI types.
AMI_TYPES_NEEDING_DEVICE_PLUGIN: frozenset[str] = frozenset(
    {"AL2023_x86_64_NVIDIA", "AL2023_ARM_64_NVIDIA"})
# Bottlerocket keeps images and containers on a second (data) volume; the
# OS volume is the AMI's own. AL2023 has one root volume.
BOTTLEROCKET_DATA_DEVICE = "/dev/xvdb"
ROOT_DEVICE = "/dev/xvda"

# Kubernetes versions this app deploys: a kubectl Lambda layer within one
# minor version of the cluster must exist (aws-cdk.lambda-layer-kubectl-v34).
KUBERNETES_VERSIONS: tuple[str, ...] = ("1.33", "1.34", "1.35")
# Zone IDs where EKS places no cluster (EKS user guide, VPC and subnet
# requirements): a cluster with a subnet there fails to create
# (UnsupportedAvailabilityZoneException). Zone names map to IDs per account,
# so a name is checked by `make preflight`, an ID already by the config.
EKS_UNSUPPORTED_ZONE_IDS: dict[str, tuple[str, ...]] = {
    "us-east-1": ("use1-az3",),
    "us-west-1": ("usw1-az2",),
    "ca-central-1": ("cac1-az3",),
}
ADDON_NAMES: tuple[str, ...] = ("vpc-cni", "coredns", "kube-proxy", "eks-pod-identity-agent")
CLOUDWATCH_ADDON = "amazon-cloudwatch-observability"
NODE_MONITORING_ADDON = "eks-node-monitoring-agent"
# Add-ons that run a Deployment: EKS reports them DEGRADED (and CloudFormation
# fails) until a node can run their pods, so they wait for the system group.
# The others are DaemonSets, ACTIVE with no node at all.
ADDONS_NEEDING_NODES: frozenset[str] = frozenset({"coredns", CLOUDWATCH_ADDON})
_ADDON_VERSION_RE = re.compile(r"^v\d+\.\d+\.\d+-eksbuild\.\d+$")
_CHART_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_EKS_INSTANCE_TYPE_RE = re.compile(r"^(?P<family>[a-z][a-z0-9-]*?)\.(?P<size>[0-9]*[a-z]+[0-9]*[a-z]*)$")
_IAM_PRINCIPAL_ARN_RE = re.compile(
    r"^arn:aws(-[a-z]+)*:iam::\d{12}:(role|user)/[\w+=,.@/-]{1,512}$")
_RFC1918 = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
# Managed node groups: at most 450 nodes per group by default quota.
MAX_NODEGROUP_SIZE = 450


@dataclass(frozen=True)
class NodeRepairConfig:
    """EKS node auto repair on every GPU node group (``NodeRepairConfig`` of
    ``AWS::EKS::Nodegroup``), fed by the node monitoring agent add-on.

    ``max_parallel_repaired_percentage`` (default 25): at most this share of
    a group's unhealthy nodes is repaired at once, so a bad batch does not
    replace a whole group in one go. ``max_unhealthy_percentage`` (default
    50): above this share of unhealthy nodes repair stops, because that many
    at once is a systemic fault (an AMI, a driver, a zone) that replacing
    nodes will not fix. Percentages rather than counts, so the limits follow
    the group's size (EKS takes either, never both).
    """

    enabled: bool = True
    max_parallel_repaired_percentage: int = 25
    max_unhealthy_percentage: int = 50

    def validate(self, prefix: str) -> None:
        _require(isinstance(self.enabled, bool), f"{prefix}.enabled", self.enabled, "True or False")
        for name in ("max_parallel_repaired_percentage", "max_unhealthy_percentage"):
            value = getattr(self, name)
            _require(_is_int(value) and 1 <= value <= 100, f"{prefix}.{name}", value,
                     "an integer percentage from 1 to 100")
DISK_SIZE_GIB_MIN, DISK_SIZE_GIB_MAX = 20, 16384


def instance_family(instance_type: str) -> str | None:
    """``g5`` for ``g5.xlarge``, ``p6-b200`` for ``p6-b200.48xlarge``; None if malformed."""
    match = _EKS_INSTANCE_TYPE_RE.match(instance_type) if isinstance(instance_type, str) else None
    return match.group("family") if match else None


def _cpu_architecture(family: str) -> str:
    # Graviton families carry a "g" right after the generation digit
    # (m7g, c7gn, t4g, r8gd); every other CPU family here is x86_64.
    return "arm64" if re.match(r"^[a-z]+\d+g", family) else "x86_64"


@dataclass(frozen=True)
class NodegroupConfig:
    """One managed node group's size and machines.

    The capacity type (on-demand or spot) is not here: it follows from the
    group's role (system, inference and baseline are on-demand, training and
    burst are spot) so that a config cannot put inference on spot by mistake.
    ``disk_size_gib`` sizes the volume pods and images live on (Bottlerocket's
    data volume, AL2023's root volume): an encrypted gp3 volume.
    """

    instance_types: tuple[str, ...]
    min_size: int
    desired_size: int
    max_size: int
    ami_type: str
    disk_size_gib: int = 100

    def validate(self, prefix: str, *, gpu: bool) -> None:
        path = f"{prefix}.instance_types"
        _require(isinstance(self.instance_types, tuple) and len(self.instance_types) >= 1,
                 path, self.instance_types, "a non-empty tuple of EC2 instance types")
        _require(len(set(self.instance_types)) == len(self.instance_types), path,
                 self.instance_types, "each instance type once")
        gpu_families = ", ".join(f"{f} ({GPU_INSTANCE_FAMILIES[f][1]})" for f in GPU_INSTANCE_FAMILIES)
        architectures = set()
        for instance_type in self.instance_types:
            family = instance_family(instance_type)
            _require(family is not None, path, instance_type,
                     "an EC2 instance type such as 'g5.xlarge' or 'm7i.large'")
            if gpu:
                _require(family in GPU_INSTANCE_FAMILIES, path, instance_type,
                         "an NVIDIA GPU instance type of a family in GPU_INSTANCE_FAMILIES: "
                         + gpu_families)
                architectures.add(GPU_INSTANCE_FAMILIES[family][0])
            else:
                _require(family not in GPU_INSTANCE_FAMILIES, path, instance_type,
                         "a CPU instance type (GPU families belong in the GPU node groups)")
                architectures.add(_cpu_architecture(family))
        _require(len(architectures) == 1, path, self.instance_types,
                 "instance types of one CPU architecture (x86_64 or arm64), not both")
        [architecture] = architectures

        path = f"{prefix}.ami_type"
        ami_types = GPU_AMI_TYPES if gpu else CPU_AMI_TYPES
        _require(self.ami_type in ami_types, path, self.ami_type,
                 "one of " + ", ".join(ami_types))
        _require(ami_types[self.ami_type] == architecture, path, self.ami_type,
                 f"an AMI type for {architecture} instances: "
                 + ", ".join(a for a, arch in ami_types.items() if arch == architecture))

        for name in ("min_size", "desired_size", "max_size"):
            value = getattr(self, name)
            _require(_is_int(value) and 0 <= value <= MAX_NODEGROUP_SIZE, f"{prefix}.{name}",
                     value, f"an integer from 0 to {MAX_NODEGROUP_SIZE}")
        _require(self.max_size >= 1, f"{prefix}.max_size", self.max_size,
                 "at least 1 (a group that can never have a node is a mistake)")
        _require(self.min_size <= self.desired_size <= self.max_size,
                 f"{prefix}.desired_size",
                 (self.min_size, self.desired_size, self.max_size),
                 "min_size <= desired_size <= max_size")

        _require(_is_int(self.disk_size_gib)
                 and DISK_SIZE_GIB_MIN <= self.disk_size_gib <= DISK_SIZE_GIB_MAX,
                 f"{prefix}.disk_size_gib", self.disk_size_gib,
                 f"an integer from {DISK_SIZE_GIB_MIN} to {DISK_SIZE_GIB_MAX} (GiB, gp3)")

    @property
    def needs_device_plugin(self) -> bool:
        return self.ami_type in AMI_TYPES_NEEDING_DEVICE_PLUGIN


@dataclass(frozen=True)
class ServingPairConfig:
    """An on-demand baseline plus a spot burst group for serving: the
    baseline carries steady traffic, the burst group scales out cheaply and
    may lose nodes to spot reclaims without taking the service down."""

    baseline: NodegroupConfig
    burst: NodegroupConfig

    def validate(self, prefix: str) -> None:
        self.baseline.validate(f"{prefix}.baseline", gpu=True)
        self.burst.validate(f"{prefix}.burst", gpu=True)


@dataclass(frozen=True)
class AddonVersions:
    """EKS managed add-on versions, pinned (``aws eks describe-addon-versions
    --kubernetes-version <v> --addon-name <name>`` lists the valid ones;
    ``ml_stacks/addon_versions.py`` records where each pin was checked, and
    preflight verifies them against that API before every deploy)."""

    vpc_cni: str = "v1.20.4-eksbuild.1"
    coredns: str = "v1.12.4-eksbuild.1"
    kube_proxy: str = "v1.34.1-eksbuild.2"
    eks_pod_identity_agent: str = "v1.3.10-eksbuild.1"
    # Reports node health conditions (GPU Xid/DCGM, kernel, storage,
    # networking) that node auto repair acts on.
    eks_node_monitoring_agent: str = "v1.4.2-eksbuild.1"
    # Container Insights and application signals; None leaves it out.
    cloudwatch_observability: str | None = None

    def as_dict(self) -> dict[str, str]:
        """Add-on name -> version, for every add-on to install."""
        versions = {
            "vpc-cni": self.vpc_cni,
            "coredns": self.coredns,
            "kube-proxy": self.kube_proxy,
            "eks-pod-identity-agent": self.eks_pod_identity_agent,
            NODE_MONITORING_ADDON: self.eks_node_monitoring_agent,
        }
        if self.cloudwatch_observability is not None:
            versions[CLOUDWATCH_ADDON] = self.cloudwatch_observability
        return versions

    def validate(self, prefix: str, kubernetes_version: str) -> None:
        for name in ("vpc_cni", "coredns", "kube_proxy", "eks_pod_identity_agent",
                     "eks_node_monitoring_agent", "cloudwatch_observability"):
            value = getattr(self, name)
            if name == "cloudwatch_observability" and value is None:
                continue
            _require(isinstance(value, str) and bool(_ADDON_VERSION_RE.match(value)),
                     f"{prefix}.{name}", value,
                     "a pinned add-on version such as 'v1.20.4-eksbuild.1'")
        # kube-proxy is built per Kubernetes minor version and must match it.
        _require(self.kube_proxy.startswith(f"v{kubernetes_version}."), f"{prefix}.kube_proxy",
                 self.kube_proxy,
                 f"a kube-proxy build for Kubernetes {kubernetes_version} "
                 f"('v{kubernetes_version}.<patch>-eksbuild.<n>')")


@dataclass(frozen=True)
class EksConfig:
    """The stage's EKS cluster and its node groups.

    Endpoint: always private; ``public_access_cidrs`` adds a public endpoint
    reachable only from those CIDRs. Outside dev a public endpoint also needs
    ``allow_public_endpoint=True``, stated on purpose. ``admin_principal_arns``
    (``AmazonEKSClusterAdminPolicy``) and ``readonly_principal_arns``
    (``AmazonEKSViewPolicy``), both cluster scope, are the only cluster
    access: none configured, no human access entry. ``enabled=False`` leaves the
    eks stack out of the stage (the control plane alone is $0.10/h).
    """

    enabled: bool = True
    kubernetes_version: str = "1.34"
    public_access_cidrs: tuple[str, ...] = ()
    allow_public_endpoint: bool = False
    admin_principal_arns: tuple[str, ...] = ()
    readonly_principal_arns: tuple[str, ...] = ()
    addons: AddonVersions = field(default_factory=AddonVersions)
    system: NodegroupConfig = field(default_factory=lambda: NodegroupConfig(
        instance_types=("m7i.large",), min_size=2, desired_size=2, max_size=3,
        ami_type="BOTTLEROCKET_x86_64", disk_size_gib=40))
    gpu_inference: NodegroupConfig = field(default_factory=lambda: NodegroupConfig(
        instance_types=("g6.xlarge",), min_size=1, desired_size=1, max_size=2,
        ami_type="BOTTLEROCKET_x86_64_NVIDIA", disk_size_gib=100))
    gpu_training: NodegroupConfig = field(default_factory=lambda: NodegroupConfig(
        instance_types=("g6.12xlarge", "g6e.12xlarge", "g5.12xlarge"), min_size=0,
        desired_size=0, max_size=2, ami_type="BOTTLEROCKET_x86_64_NVIDIA", disk_size_gib=200))
    serving_pair: ServingPairConfig | None = None
    # NVIDIA device plugin Helm chart, installed only for AL2023 NVIDIA groups.
    device_plugin_chart_version: str = "0.17.1"
    # Control-plane logs (all five types) go to /aws/eks/<cluster>/cluster;
    # the stack creates that group first so it does not grow forever.
    control_plane_log_retention_days: int = 90
    node_repair: NodeRepairConfig = field(default_factory=NodeRepairConfig)

    def validate(self, prefix: str, stage: str) -> None:
        _require(isinstance(self.enabled, bool), f"{prefix}.enabled", self.enabled, "True or False")
        _require(self.kubernetes_version in KUBERNETES_VERSIONS, f"{prefix}.kubernetes_version",
                 self.kubernetes_version, "one of " + ", ".join(KUBERNETES_VERSIONS))

        path = f"{prefix}.public_access_cidrs"
        _require(isinstance(self.public_access_cidrs, tuple), path, self.public_access_cidrs,
                 "a tuple of IPv4 CIDRs")
        for cidr in self.public_access_cidrs:
            try:
                net = ipaddress.IPv4Network(cidr, strict=True)
            except (ValueError, TypeError):
                raise ConfigError(path, cidr, "an IPv4 network in CIDR notation, e.g. '198.51.100.0/24'") from None
            _require(net.prefixlen >= 8, path, cidr,
                     "a prefix of /8 or longer (never the whole internet)")
            _require(not any(net.overlaps(private) for private in _RFC1918), path, cidr,
                     "a public range, not RFC 1918 (the private endpoint already serves the VPC)")
        _require(not self.public_access_cidrs or stage == "dev" or self.allow_public_endpoint,
                 path, self.public_access_cidrs,
                 f"empty in {stage} (private endpoint only) unless "
                 f"{prefix}.allow_public_endpoint=True is set on purpose")

        for name in ("admin_principal_arns", "readonly_principal_arns"):
            path = f"{prefix}.{name}"
            values = getattr(self, name)
            _require(isinstance(values, tuple), path, values, "a tuple of IAM role or user ARNs")
            for arn in values:
                _require(isinstance(arn, str) and bool(_IAM_PRINCIPAL_ARN_RE.match(arn)), path, arn,
                         "an IAM role or user ARN, e.g. 'arn:aws:iam::123456789012:role/ml-admins'")
            _require(len(set(values)) == len(values), path, values, "each principal once")
        both = set(self.admin_principal_arns) & set(self.readonly_principal_arns)
        _require(not both, f"{prefix}.readonly_principal_arns", sorted(both),
                 "principals not already in admin_principal_arns (one access entry per principal)")

        self.addons.validate(f"{prefix}.addons", self.kubernetes_version)
        self.system.validate(f"{prefix}.system", gpu=False)
        _require(self.system.min_size >= 1, f"{prefix}.system.min_size", self.system.min_size,
                 "at least 1: CoreDNS (and every add-on that runs a Deployment) stays DEGRADED "
                 "until a system node runs it")
        self.gpu_inference.validate(f"{prefix}.gpu_inference", gpu=True)
        self.gpu_training.validate(f"{prefix}.gpu_training", gpu=True)
        _require(len(self.gpu_training.instance_types) >= 2, f"{prefix}.gpu_training.instance_types",
                 self.gpu_training.instance_types,
                 "at least two instance types (spot capacity of one type alone runs dry)")
        if self.serving_pair is not None:
            self.serving_pair.validate(f"{prefix}.serving_pair")
        _require(isinstance(self.device_plugin_chart_version, str)
                 and bool(_CHART_VERSION_RE.match(self.device_plugin_chart_version)),
                 f"{prefix}.device_plugin_chart_version", self.device_plugin_chart_version,
                 "a pinned chart version such as '0.17.1'")
        _require(self.control_plane_log_retention_days in LOG_RETENTION_DAYS,
                 f"{prefix}.control_plane_log_retention_days", self.control_plane_log_retention_days,
                 "a CloudWatch Logs retention: " + ", ".join(map(str, LOG_RETENTION_DAYS)))
        _require(isinstance(self.node_repair, NodeRepairConfig), f"{prefix}.node_repair",
                 self.node_repair, "a NodeRepairConfig")
        self.node_repair.validate(f"{prefix}.node_repair")

    @property
    def nodegroups(self) -> dict[str, NodegroupConfig]:
        """Every GPU node group by role."""
        groups = {"gpu_inference": self.gpu_inference, "gpu_training": self.gpu_training}
        if self.serving_pair is not None:
            groups["serving_baseline"] = self.serving_pair.baseline
            groups["serving_burst"] = self.serving_pair.burst
        return groups

    @property
    def needs_device_plugin(self) -> bool:
        return any(g.needs_device_plugin for g in self.nodegroups.values())
