"""Typed, frozen stage configuration.

One ``StageConfig`` per stage. Every section validates itself when it is
built, so a bad value fails before any construct exists, with a message that
names the field, the value and what is allowed. Later capabilities add a
section (``training``, ``serving``, ``eks``) as another field of
``StageConfig`` with its own dataclass; nothing here has to move for that.

This module reads nothing global: ``app.py`` alone reads CDK context and the
environment and passes plain values in.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

STAGE_NAMES: tuple[str, ...] = ("dev", "staging", "prod")

# Interface endpoint names accepted in config, in the service's own DNS
# spelling, mapped to the aws_cdk.aws_ec2.InterfaceVpcEndpointAwsService
# attribute that creates them. These are the ones private GPU nodes, EKS
# nodes and SageMaker endpoints actually call.
INTERFACE_ENDPOINTS: Mapping[str, str] = {
    "sagemaker.api": "SAGEMAKER_API",
    "sagemaker.runtime": "SAGEMAKER_RUNTIME",
    "ecr.api": "ECR",
    "ecr.dkr": "ECR_DOCKER",
    "sts": "STS",
    "logs": "CLOUDWATCH_LOGS",
    "monitoring": "CLOUDWATCH_MONITORING",
    "ssm": "SSM",
    "ssmmessages": "SSM_MESSAGES",
    "ec2messages": "EC2_MESSAGES",
    "sqs": "SQS",
    "sns": "SNS",
    "kms": "KMS",
    "ec2": "EC2",
    "autoscaling": "AUTOSCALING",
    "eks": "EKS",
    "eks-auth": "EKS_AUTH",
    "events": "EVENTBRIDGE",
}

# What a private GPU node needs to pull images, fetch parameters, ship logs
# and metrics, be reached by Run Command and talk to SageMaker without NAT.
PRIVATE_GPU_NODE_ENDPOINTS: tuple[str, ...] = (
    "sagemaker.api",
    "sagemaker.runtime",
    "ecr.api",
    "ecr.dkr",
    "sts",
    "logs",
    "monitoring",
    "ssm",
    "ssmmessages",
    "ec2messages",
    "sqs",
)

_REGION_RE = re.compile(
    r"^(us|eu|ap|sa|ca|me|af|il|mx)(-gov)?-"
    r"(north|south|east|west|central|northeast|southeast|northwest|southwest)-[1-9]$"
)
_ACCOUNT_RE = re.compile(r"^\d{12}$")
# Characters AWS accepts in tag keys and values.
_TAG_VALUE_RE = re.compile(r"^[\w .:/=+\-@]*$")
VPC_PREFIX_MIN, VPC_PREFIX_MAX = 16, 22
MAX_AZS = 6


class ConfigError(ValueError):
    """A configuration value is not allowed.

    The message always has the shape ``<field>: <value> — <what is allowed>``.
    """

    def __init__(self, field_path: str, value: object, allowed: str) -> None:
        self.field_path = field_path
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field_path}: {value!r} is not allowed — {allowed}")


def _require(condition: bool, field_path: str, value: object, allowed: str) -> None:
    if not condition:
        raise ConfigError(field_path, value, allowed)


@dataclass(frozen=True)
class StageTags:
    """Cost-allocation tags carried by every taggable resource of a stage.

    ``Environment`` (the stage name) and ``ManagedBy=cdk`` are added by the
    app itself and cannot be overridden here.
    """

    team: str
    project: str
    cost_center: str
    repository: str

    def as_dict(self) -> dict[str, str]:
        return {
            "Team": self.team,
            "Project": self.project,
            "CostCenter": self.cost_center,
            "Repository": self.repository,
        }

    def validate(self, prefix: str) -> None:
        for key, value in self.as_dict().items():
            path = f"{prefix}.{key}"
            _require(isinstance(value, str) and value.strip() != "", path, value,
                     "a non-empty string")
            _require(len(value) <= 256, path, value, "at most 256 characters")
            _require(bool(_TAG_VALUE_RE.match(value)), path, value,
                     "letters, digits, spaces and _ . : / = + - @ only")


@dataclass(frozen=True)
class NetworkConfig:
    """The stage's VPC.

    ``availability_zones`` are named explicitly so synth never looks them up
    (offline, deterministic). ``nat_gateways`` defaults to 1: one per AZ is
    the production choice, one is the cheap one.
    """

    vpc_cidr: str
    availability_zones: tuple[str, ...]
    nat_gateways: int = 1
    interface_endpoints: tuple[str, ...] = ()
    flow_log_retention_days: int = 90

    def validate(self, prefix: str, region: str) -> None:
        path = f"{prefix}.vpc_cidr"
        try:
            net = ipaddress.IPv4Network(self.vpc_cidr, strict=True)
        except (ValueError, TypeError):
            raise ConfigError(path, self.vpc_cidr,
                              "an IPv4 network address in CIDR notation, e.g. '10.0.0.0/16'") from None
        _require(VPC_PREFIX_MIN <= net.prefixlen <= VPC_PREFIX_MAX, path, self.vpc_cidr,
                 f"a prefix between /{VPC_PREFIX_MIN} and /{VPC_PREFIX_MAX} "
                 "(room for public, private and isolated subnets in every AZ)")
        _require(net.is_private, path, self.vpc_cidr,
                 "a private range (10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16)")

        path = f"{prefix}.availability_zones"
        azs = self.availability_zones
        _require(isinstance(azs, tuple) and 1 <= len(azs) <= MAX_AZS, path, azs,
                 f"a tuple of 1 to {MAX_AZS} AZ names")
        _require(len(set(azs)) == len(azs), path, azs, "each AZ once")
        az_re = re.compile(rf"^{re.escape(region)}[a-z]$")
        for az in azs:
            _require(isinstance(az, str) and bool(az_re.match(az)), path, az,
                     f"an AZ of region {region!r}, e.g. '{region}a'")

        path = f"{prefix}.nat_gateways"
        _require(isinstance(self.nat_gateways, int) and 1 <= self.nat_gateways <= len(azs),
                 path, self.nat_gateways,
                 f"1 to {len(azs)} (one per AZ at most; private subnets need at least one)")

        path = f"{prefix}.interface_endpoints"
        _require(isinstance(self.interface_endpoints, tuple), path,
                 self.interface_endpoints, "a tuple of endpoint names")
        for name in self.interface_endpoints:
            _require(name in INTERFACE_ENDPOINTS, path, name,
                     "one of " + ", ".join(sorted(INTERFACE_ENDPOINTS)))
        _require(len(set(self.interface_endpoints)) == len(self.interface_endpoints),
                 path, self.interface_endpoints, "each endpoint once")

        path = f"{prefix}.flow_log_retention_days"
        _require(self.flow_log_retention_days in LOG_RETENTION_DAYS, path,
                 self.flow_log_retention_days,
                 "a CloudWatch Logs retention: " + ", ".join(map(str, LOG_RETENTION_DAYS)))


# The retention periods CloudWatch Logs accepts, in days, with the
# aws_logs.RetentionDays member for each.
LOG_RETENTION_DAYS: Mapping[int, str] = {
    1: "ONE_DAY", 3: "THREE_DAYS", 5: "FIVE_DAYS", 7: "ONE_WEEK", 14: "TWO_WEEKS",
    30: "ONE_MONTH", 60: "TWO_MONTHS", 90: "THREE_MONTHS", 120: "FOUR_MONTHS",
    150: "FIVE_MONTHS", 180: "SIX_MONTHS", 365: "ONE_YEAR", 400: "THIRTEEN_MONTHS",
    545: "EIGHTEEN_MONTHS", 731: "TWO_YEARS", 1096: "THREE_YEARS", 1827: "FIVE_YEARS",
    2192: "SIX_YEARS", 2557: "SEVEN_YEARS", 2922: "EIGHT_YEARS", 3288: "NINE_YEARS",
    3653: "TEN_YEARS",
}


@dataclass(frozen=True)
class StorageConfig:
    """Stateful storage: key, buckets, image repository.

    ``retain`` keeps buckets, the key and the repository when their stack is
    deleted and turns on termination protection; only dev may set it False
    (and then ``cdk destroy`` empties and removes them).
    """

    retain: bool = True
    checkpoint_expiration_days: int = 30
    model_noncurrent_expiration_days: int = 30
    ecr_keep_tagged_images: int = 10
    ecr_immutable_tags: bool = True
    access_log_expiration_days: int = 365

    def validate(self, prefix: str, stage: str) -> None:
        _require(self.retain or stage == "dev", f"{prefix}.retain", self.retain,
                 "True outside dev: staging and prod never delete stateful data with their stack")
        for name, low, high in (
            ("checkpoint_expiration_days", 1, 3650),
            ("model_noncurrent_expiration_days", 1, 3650),
            ("ecr_keep_tagged_images", 1, 1000),
            ("access_log_expiration_days", 1, 3650),
        ):
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
                     f"{prefix}.{name}", value, f"an integer from {low} to {high}")


_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class AlertsConfig:
    """Who hears about the stage's alarms and notifications (SNS e-mail).

    Subscribers must confirm the e-mail AWS sends them before they receive
    anything.
    """

    email_subscribers: tuple[str, ...] = ()

    def validate(self, prefix: str) -> None:
        path = f"{prefix}.email_subscribers"
        _require(isinstance(self.email_subscribers, tuple), path, self.email_subscribers,
                 "a tuple of e-mail addresses")
        for address in self.email_subscribers:
            _require(isinstance(address, str) and bool(_EMAIL_RE.match(address)), path, address,
                     "an e-mail address such as 'ml-oncall@example.com'")


# GPU instance families a GPU node group may use, with the CPU architecture
# (which decides the AMI type) and the accelerator, for error messages and
# the README. NVIDIA only: every GPU AMI type below is an NVIDIA variant, so
# AMD (g4ad) and Neuron (inf/trn) families are not here.
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
ADDON_NAMES: tuple[str, ...] = ("vpc-cni", "coredns", "kube-proxy", "eks-pod-identity-agent")
CLOUDWATCH_ADDON = "amazon-cloudwatch-observability"
_ADDON_VERSION_RE = re.compile(r"^v\d+\.\d+\.\d+-eksbuild\.\d+$")
_CHART_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_INSTANCE_TYPE_RE = re.compile(r"^(?P<family>[a-z][a-z0-9-]*?)\.(?P<size>[0-9]*[a-z]+[0-9]*[a-z]*)$")
_IAM_PRINCIPAL_ARN_RE = re.compile(
    r"^arn:aws(-[a-z]+)*:iam::\d{12}:(role|user)/[\w+=,.@/-]{1,512}$")
_RFC1918 = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
# Managed node groups: at most 450 nodes per group by default quota.
MAX_NODEGROUP_SIZE = 450
DISK_SIZE_GIB_MIN, DISK_SIZE_GIB_MAX = 20, 16384


def instance_family(instance_type: str) -> str | None:
    """``g5`` for ``g5.xlarge``, ``p6-b200`` for ``p6-b200.48xlarge``; None if malformed."""
    match = _INSTANCE_TYPE_RE.match(instance_type) if isinstance(instance_type, str) else None
    return match.group("family") if match else None


def _cpu_architecture(family: str) -> str:
    # Graviton families carry a "g" right after the generation digit
    # (m7g, c7gn, t4g, r8gd); every other CPU family here is x86_64.
    return "arm64" if re.match(r"^[a-z]+\d+g", family) else "x86_64"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    --kubernetes-version <v> --addon-name <name>`` lists the valid ones)."""

    vpc_cni: str = "v1.20.4-eksbuild.1"
    coredns: str = "v1.12.4-eksbuild.1"
    kube_proxy: str = "v1.34.0-eksbuild.5"
    eks_pod_identity_agent: str = "v1.3.8-eksbuild.2"
    # Container Insights and application signals; None leaves it out.
    cloudwatch_observability: str | None = None

    def as_dict(self) -> dict[str, str]:
        """Add-on name -> version, for every add-on to install."""
        versions = {
            "vpc-cni": self.vpc_cni,
            "coredns": self.coredns,
            "kube-proxy": self.kube_proxy,
            "eks-pod-identity-agent": self.eks_pod_identity_agent,
        }
        if self.cloudwatch_observability is not None:
            versions[CLOUDWATCH_ADDON] = self.cloudwatch_observability
        return versions

    def validate(self, prefix: str, kubernetes_version: str) -> None:
        for name in ("vpc_cni", "coredns", "kube_proxy", "eks_pod_identity_agent",
                     "cloudwatch_observability"):
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
    and ``readonly_principal_arns`` get access entries in addition to the
    admin and read-only roles the stack creates. ``enabled=False`` leaves the
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


@dataclass(frozen=True)
class StageConfig:
    """Everything one stage deploys. Validated on construction."""

    name: str
    region: str
    network: NetworkConfig
    tags: StageTags
    storage: StorageConfig = field(default_factory=StorageConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    eks: EksConfig = field(default_factory=EksConfig)
    account: str | None = None

    def __post_init__(self) -> None:
        _require(self.name in STAGE_NAMES, "name", self.name,
                 "one of " + ", ".join(STAGE_NAMES))
        prefix = self.name
        _require(isinstance(self.region, str) and bool(_REGION_RE.match(self.region)),
                 f"{prefix}.region", self.region, "an AWS region name such as 'us-east-1'")
        _require(self.account is None or bool(_ACCOUNT_RE.match(str(self.account))),
                 f"{prefix}.account", self.account,
                 "None (account-agnostic) or a 12-digit AWS account ID")
        self.network.validate(f"{prefix}.network", self.region)
        self.storage.validate(f"{prefix}.storage", self.name)
        self.alerts.validate(f"{prefix}.alerts")
        self.eks.validate(f"{prefix}.eks", self.name)
        self.tags.validate(f"{prefix}.tags")

    @property
    def stack_prefix(self) -> str:
        """Prefix of every CloudFormation stack name of this stage."""
        return f"ml-{self.name}"

    def with_account(self, account: str | None) -> "StageConfig":
        return replace(self, account=account)


DEFAULT_TAGS = StageTags(
    team="ml-platform",
    project="ml-infra",
    cost_center="ml-0001",
    repository="ml-infra-cdk",
)


def default_configs(*, account: str | None = None,
                    eks_public_access_cidrs: tuple[str, ...] = ()) -> dict[str, StageConfig]:
    """The three stages as this repository deploys them.

    ``eks_public_access_cidrs`` (``-c eks_public_access_cidrs=...``) opens dev's
    EKS API endpoint publicly to those CIDRs only (the team's VPN or office
    egress); without it dev's endpoint is private like the others.
    """
    dev = StageConfig(
        name="dev",
        account=account,
        region="us-east-1",
        network=NetworkConfig(
            vpc_cidr="10.10.0.0/16",
            availability_zones=("us-east-1a", "us-east-1b"),
            nat_gateways=1,
            # Each interface endpoint costs ~$7.3/month per AZ: in dev the one
            # NAT gateway is cheaper.
            interface_endpoints=(),
            flow_log_retention_days=30,
        ),
        storage=StorageConfig(retain=False, checkpoint_expiration_days=7,
                              ecr_immutable_tags=False),
        # Small, and no GPU runs unless a workload scales a group up.
        eks=EksConfig(
            public_access_cidrs=tuple(eks_public_access_cidrs),
            control_plane_log_retention_days=30,
            system=NodegroupConfig(instance_types=("m7i.large",), min_size=1, desired_size=1,
                                   max_size=2, ami_type="BOTTLEROCKET_x86_64", disk_size_gib=40),
            gpu_inference=NodegroupConfig(instance_types=("g6.xlarge", "g5.xlarge"), min_size=0,
                                          desired_size=0, max_size=2,
                                          ami_type="BOTTLEROCKET_x86_64_NVIDIA", disk_size_gib=100),
            gpu_training=NodegroupConfig(instance_types=("g6.12xlarge", "g6e.12xlarge", "g5.12xlarge"),
                                         min_size=0, desired_size=0, max_size=2,
                                         ami_type="BOTTLEROCKET_x86_64_NVIDIA", disk_size_gib=200),
        ),
        tags=DEFAULT_TAGS,
    )
    staging = StageConfig(
        name="staging",
        account=account,
        region="us-east-1",
        network=NetworkConfig(
            vpc_cidr="10.20.0.0/16",
            availability_zones=("us-east-1a", "us-east-1b", "us-east-1c"),
            nat_gateways=1,
            interface_endpoints=("ecr.api", "ecr.dkr", "sts", "logs"),
            flow_log_retention_days=90,
        ),
        storage=StorageConfig(retain=True, ecr_immutable_tags=False),
        eks=EksConfig(
            system=NodegroupConfig(instance_types=("m7i.large",), min_size=2, desired_size=2,
                                   max_size=3, ami_type="BOTTLEROCKET_x86_64", disk_size_gib=40),
            gpu_inference=NodegroupConfig(instance_types=("g6.xlarge", "g5.xlarge"), min_size=1,
                                          desired_size=1, max_size=2,
                                          ami_type="BOTTLEROCKET_x86_64_NVIDIA", disk_size_gib=100),
            gpu_training=NodegroupConfig(instance_types=("g6.12xlarge", "g6e.12xlarge", "g5.12xlarge"),
                                         min_size=0, desired_size=0, max_size=4,
                                         ami_type="BOTTLEROCKET_x86_64_NVIDIA", disk_size_gib=200),
        ),
        tags=DEFAULT_TAGS,
    )
    prod = StageConfig(
        name="prod",
        account=account,
        region="us-east-1",
        network=NetworkConfig(
            vpc_cidr="10.30.0.0/16",
            availability_zones=("us-east-1a", "us-east-1b", "us-east-1c"),
            nat_gateways=3,
            interface_endpoints=PRIVATE_GPU_NODE_ENDPOINTS,
            flow_log_retention_days=365,
        ),
        storage=StorageConfig(retain=True, ecr_immutable_tags=True),
        eks=EksConfig(
            control_plane_log_retention_days=365,
            system=NodegroupConfig(instance_types=("m7i.large", "m6i.large"), min_size=2,
                                   desired_size=3, max_size=4, ami_type="BOTTLEROCKET_x86_64",
                                   disk_size_gib=40),
            gpu_inference=NodegroupConfig(instance_types=("g6.2xlarge", "g5.2xlarge"), min_size=2,
                                          desired_size=2, max_size=6,
                                          ami_type="BOTTLEROCKET_x86_64_NVIDIA", disk_size_gib=150),
            gpu_training=NodegroupConfig(instance_types=("g6e.12xlarge", "g6.12xlarge", "g5.12xlarge",
                                                         "p4d.24xlarge"),
                                         min_size=0, desired_size=0, max_size=8,
                                         ami_type="BOTTLEROCKET_x86_64_NVIDIA", disk_size_gib=500),
            serving_pair=ServingPairConfig(
                baseline=NodegroupConfig(instance_types=("g6.2xlarge",), min_size=1, desired_size=1,
                                         max_size=2, ami_type="BOTTLEROCKET_x86_64_NVIDIA",
                                         disk_size_gib=150),
                burst=NodegroupConfig(instance_types=("g6.2xlarge", "g5.2xlarge", "g6e.2xlarge"),
                                      min_size=0, desired_size=0, max_size=8,
                                      ami_type="BOTTLEROCKET_x86_64_NVIDIA", disk_size_gib=150),
            ),
        ),
        tags=DEFAULT_TAGS,
    )
    return {c.name: c for c in (dev, staging, prod)}


def select_stages(configs: Mapping[str, StageConfig], requested: str | Iterable[str] | None
                  ) -> list[StageConfig]:
    """The configs named by ``-c stages=...`` in stage order; all when None/empty."""
    if requested is None:
        return list(configs.values())
    names = [n.strip() for n in (requested.split(",") if isinstance(requested, str) else requested)]
    names = [n for n in names if n]
    if not names:
        return list(configs.values())
    for name in names:
        _require(name in configs, "stages", name,
                 "a comma-separated list of " + ", ".join(configs))
    return [c for n, c in configs.items() if n in names]
