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
import json
import re
import zoneinfo
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from ml_stacks import example_models

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

    ``availability_zones`` are given explicitly so synth never looks them up
    (offline, deterministic): either zone names (``us-east-1a``) or zone IDs
    (``use1-az1``), all of one kind. A zone name maps to a different
    physical zone in each account; a zone ID is the same zone everywhere, so
    IDs are the way to say "the zone where g6 is offered" once for every
    account (preflight resolves them and checks the instance types).
    ``nat_gateways`` defaults to 1: one per AZ is the production choice, one
    is the cheap one.
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
                 f"a tuple of 1 to {MAX_AZS} AZ names or AZ IDs")
        _require(len(set(azs)) == len(azs), path, azs, "each AZ once")
        name_re = re.compile(rf"^{re.escape(region)}[a-z]$")
        id_re = re.compile(rf"^{re.escape(zone_id_prefix(region))}-az[1-9][0-9]?$")
        example = f"'{region}a' (name) or '{zone_id_prefix(region)}-az1' (ID)"
        for az in azs:
            _require(isinstance(az, str) and bool(name_re.match(az) or id_re.match(az)), path, az,
                     f"an AZ name or AZ ID of region {region!r}, e.g. {example}")
        kinds = {bool(id_re.match(az)) for az in azs}
        _require(len(kinds) == 1, path, azs,
                 f"AZ names only or AZ IDs only, not both, e.g. {example}")

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

    @property
    def uses_zone_ids(self) -> bool:
        """True when ``availability_zones`` are AZ IDs (``use1-az1``), not names."""
        return bool(_ZONE_ID_RE.match(self.availability_zones[0]))


_ZONE_ID_RE = re.compile(r"^[a-z]+[0-9]-az[0-9]+$")
_DIRECTION_ABBREVIATIONS = {
    "north": "n", "south": "s", "east": "e", "west": "w", "central": "c",
    "northeast": "ne", "southeast": "se", "northwest": "nw", "southwest": "sw",
}


def zone_id_prefix(region: str) -> str:
    """The prefix of ``region``'s AZ IDs: 'use1' for us-east-1, 'apse2' for
    ap-southeast-2, 'usgw1' for us-gov-west-1."""
    parts = region.split("-")
    area, number = parts[0], parts[-1]
    gov = "g" if "gov" in parts else ""
    direction = _DIRECTION_ABBREVIATIONS.get(parts[-2], parts[-2])
    return f"{area}{gov}{direction}{number}"


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


# GPU families the training fleet may use: x86_64 NVIDIA instances the Deep
# Learning Base GPU AMI supports (G4ad is AMD, G5g is Arm: neither runs it).
TRAINING_GPU_FAMILIES: tuple[str, ...] = (
    "g4dn", "g5", "g6", "g6e", "gr6", "p4d", "p4de", "p5", "p5e", "p5en",
)
# Sizes with an EFA interface, per family (multi-node training).
EFA_INSTANCE_TYPES: frozenset[str] = frozenset({
    "g4dn.8xlarge", "g4dn.12xlarge", "g4dn.16xlarge", "g4dn.metal",
    "g5.8xlarge", "g5.12xlarge", "g5.16xlarge", "g5.24xlarge", "g5.48xlarge",
    "g6.8xlarge", "g6.12xlarge", "g6.16xlarge", "g6.24xlarge", "g6.48xlarge",
    "g6e.8xlarge", "g6e.12xlarge", "g6e.16xlarge", "g6e.24xlarge", "g6e.48xlarge",
    "p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge", "p5e.48xlarge", "p5en.48xlarge",
})
# GPUs per instance type, for every type the training fleet may use (the
# families above). A run asks for 1 to the largest count among its stage's
# instance types; the node agent takes only runs that fit its instance.
GPUS_PER_INSTANCE_TYPE: Mapping[str, int] = {
    **{f"g4dn.{s}": 1 for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g4dn.12xlarge": 4, "g4dn.metal": 8,
    **{f"{family}.{s}": 1 for family in ("g5", "g6", "g6e")
       for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    **{f"{family}.{s}": n for family in ("g5", "g6", "g6e")
       for s, n in (("12xlarge", 4), ("24xlarge", 4), ("48xlarge", 8))},
    "gr6.4xlarge": 1, "gr6.8xlarge": 1,
    "p4d.24xlarge": 8, "p4de.24xlarge": 8,
    "p5.4xlarge": 1, "p5.48xlarge": 8, "p5e.48xlarge": 8, "p5en.48xlarge": 8,
}
# A run holder that vanished must free its run within 2 minutes (issue 11).
MAX_LEASE_SECONDS = 120
MAX_RUN_DURATION_MINUTES = 30 * 24 * 60
_INSTANCE_TYPE_RE = re.compile(r"^([a-z][a-z0-9]*)\.(metal|[0-9]*x?large)$")
# Powertools for AWS Lambda (Python) releases and the public layer version
# that ships each (AWSLambdaPowertoolsPythonV3-<python>-x86_64:<layer>). The
# same release is pinned in requirements-dev.txt, so tests run what deploys.
POWERTOOLS_LAYER_VERSIONS: Mapping[str, int] = {"3.23.0": 27}
TRAINING_SIGNALS: tuple[str, ...] = ("SIGUSR1", "SIGUSR2", "SIGTERM", "SIGINT", "SIGHUP")
REBALANCE_ACTIONS: tuple[str, ...] = ("checkpoint", "log-only")
# What the node agent does about a run without progress for hung_after_minutes:
# tell the alerts topic only, or also restart the attempt from its last checkpoint.
HUNG_ACTIONS: tuple[str, ...] = ("alert", "restart")
MAX_HUNG_AFTER_MINUTES = 24 * 60
ROOT_DEVICE_NAMES: tuple[str, ...] = ("/dev/xvda", "/dev/sda1")
# Absolute path without shell metacharacters: it lands in user data.
_SAFE_PATH_RE = re.compile(r"^/[A-Za-z0-9_./-]{1,254}$")
_SAFE_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
# Time the node agent needs after the checkpoint budget to upload the
# checkpoint and complete the lifecycle action.
CHECKPOINT_UPLOAD_MARGIN_SECONDS = 60
HEARTBEAT_TIMEOUT_MIN_SECONDS, HEARTBEAT_TIMEOUT_MAX_SECONDS = 30, 7200
# The GPU metric definition shared by the CloudWatch agent config and the
# idle-shutdown function (constructs_lib/gpu_metrics.py reads it too).
GPU_METRICS_DEFINITION = Path(__file__).resolve().parent.parent / "lambda" / "idle_shutdown" / "gpu_metrics.json"
_CRON_FIELD_RE = re.compile(r"^[0-9A-Za-z*/,\-?#L]+$")
_TAG_KEY_RE = re.compile(r"^[\w .:/=+\-@]{1,128}$")


def gpu_metric_period_seconds() -> int:
    """The period the agent publishes GPU metrics at (gpu_metrics.json)."""
    return int(json.loads(GPU_METRICS_DEFINITION.read_text())["period_seconds"])


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainingConfig:
    """The GPU training fleet and its interruption handling.

    The fleet is an Auto Scaling group of spot (and optionally on-demand)
    GPU instances, ``min_capacity`` 0 and at most ``max_capacity``; its
    termination lifecycle hook waits ``lifecycle_heartbeat_timeout_seconds``
    (renewed by the node agent's heartbeats) for a checkpoint that must fit
    in ``checkpoint_budget_seconds``. The fleet's AMI is the stage region's
    pin in ``ml_stacks/ami_pins.json`` (``make refresh-amis`` changes it).

    Runs (node_agent/RUNS_CONTRACT.md): an instance holds a run with a lease
    of ``lease_seconds`` (at most 120: a vanished holder's run is claimable
    within 2 minutes), renewed every ``lease_renew_seconds``; an idle
    instance looks for a run every ``claim_poll_seconds``. A run spec without
    ``max_failures`` / ``max_duration_minutes`` gets
    ``run_default_max_failures`` / ``run_default_max_duration_minutes``.
    Trainer output is kept ``runs_log_retention_days``. Every
    ``runs_capacity_rate_minutes`` the runs capacity reconciler raises the
    fleet's desired capacity to the PENDING + RUNNING runs (capped by its
    maximum; it never lowers it).

    Hung runs: a trainer that reports no progress for ``hung_after_minutes``
    is reported to the alerts topic and, with ``hung_action`` ``"restart"``
    (default), its attempt is restarted from the last checkpoint by the
    node agent; ``"alert"`` only reports.

    When spot runs dry: if a PENDING run's spot launches have failed for lack
    of capacity for ``spot_fallback_after_minutes`` (default 15; None turns
    the fallback off), the runs capacity reconciler raises the fleet's
    on-demand share above its base to ``spot_fallback_on_demand_percentage``
    (default 100) and puts it back to ``on_demand_percentage`` when no run is
    active any more (or, below 100 %, when launches succeed with no spot
    capacity failure). Every switch goes to the alerts topic. A fleet with
    ``on_demand_percentage`` 100 has no fallback.
    """

    enabled: bool = True
    instance_types: tuple[str, ...] = ("g5.xlarge", "g6.xlarge", "g5.2xlarge", "g6.2xlarge")
    max_capacity: int = 4
    on_demand_base: int = 0
    on_demand_percentage: int = 0
    root_volume_size_gib: int = 200
    root_volume_iops: int = 3000
    root_volume_throughput_mibps: int = 250
    root_device_name: str = "/dev/xvda"
    imds_hop_limit: int = 2
    efa_enabled: bool = False
    checkpoint_budget_seconds: int = 90
    lifecycle_heartbeat_timeout_seconds: int = 300
    heartbeat_interval_seconds: int = 30
    checkpoint_dir: str = "/opt/ml/checkpoints"
    checkpoint_done_marker: str = "CHECKPOINT_DONE"
    training_signal: str = "SIGUSR1"
    rebalance_action: str = "checkpoint"
    lambda_timeout_seconds: int = 8
    powertools_version: str = "3.23.0"
    log_retention_days: int = 90
    lease_seconds: int = 90
    lease_renew_seconds: int = 30
    claim_poll_seconds: int = 15
    run_default_max_failures: int = 3
    run_default_max_duration_minutes: int = 72 * 60
    runs_log_retention_days: int = 90
    runs_capacity_rate_minutes: int = 5
    hung_after_minutes: int = 30
    hung_action: str = "restart"
    spot_fallback_after_minutes: int | None = 15
    spot_fallback_on_demand_percentage: int = 100

    def validate(self, prefix: str) -> None:
        _require(isinstance(self.enabled, bool), f"{prefix}.enabled", self.enabled, "True or False")
        self._validate_instances(prefix)
        self._validate_volume(prefix)
        self._validate_checkpointing(prefix)
        self._validate_runs(prefix)

        _require(_is_int(self.imds_hop_limit) and 1 <= self.imds_hop_limit <= 3,
                 f"{prefix}.imds_hop_limit", self.imds_hop_limit,
                 "1 to 3 (2 lets a container on the instance reach IMDSv2)")
        _require(self.rebalance_action in REBALANCE_ACTIONS, f"{prefix}.rebalance_action",
                 self.rebalance_action, "one of " + ", ".join(REBALANCE_ACTIONS))
        _require(_is_int(self.lambda_timeout_seconds) and 3 <= self.lambda_timeout_seconds <= 8,
                 f"{prefix}.lambda_timeout_seconds", self.lambda_timeout_seconds,
                 "3 to 8 seconds (the queue's visibility timeout is 6 times this, and a retried "
                 "record must be acted on within 60 s: README, interruption time budget)")
        _require(self.powertools_version in POWERTOOLS_LAYER_VERSIONS,
                 f"{prefix}.powertools_version", self.powertools_version,
                 "a Powertools release with a known public layer version: "
                 + ", ".join(POWERTOOLS_LAYER_VERSIONS))
        _require(self.log_retention_days in LOG_RETENTION_DAYS, f"{prefix}.log_retention_days",
                 self.log_retention_days,
                 "a CloudWatch Logs retention: " + ", ".join(map(str, LOG_RETENTION_DAYS)))

    def _validate_instances(self, prefix: str) -> None:
        path = f"{prefix}.instance_types"
        types = self.instance_types
        _require(isinstance(types, tuple) and 2 <= len(types) <= 20, path, types,
                 "a tuple of 2 to 20 instance types (spot needs several pools to choose from)")
        for instance_type in types:
            match = _INSTANCE_TYPE_RE.match(instance_type) if isinstance(instance_type, str) else None
            _require(match is not None and match.group(1) in TRAINING_GPU_FAMILIES, path,
                     instance_type, "an NVIDIA x86_64 GPU instance type of family "
                     + ", ".join(TRAINING_GPU_FAMILIES) + ", e.g. 'g5.xlarge'")
            _require(instance_type in GPUS_PER_INSTANCE_TYPE, path, instance_type,
                     "a size listed in GPUS_PER_INSTANCE_TYPE (ml_stacks/config.py), which runs "
                     "need to know how many GPUs it has")
        _require(len(set(types)) == len(types), path, types, "each instance type once")
        families = {t.split(".")[0] for t in types}
        _require(len(families) >= 2, path, types,
                 "at least two instance families (e.g. g5 and g6): one family's spot "
                 "capacity can vanish at once")
        if self.efa_enabled:
            for instance_type in types:
                _require(instance_type in EFA_INSTANCE_TYPES, path, instance_type,
                         "an EFA-capable size when efa_enabled, e.g. 'g5.8xlarge' or 'p4d.24xlarge'")

        _require(isinstance(self.efa_enabled, bool), f"{prefix}.efa_enabled", self.efa_enabled,
                 "True or False")
        _require(_is_int(self.max_capacity) and 1 <= self.max_capacity <= 1000,
                 f"{prefix}.max_capacity", self.max_capacity, "an integer from 1 to 1000")
        _require(_is_int(self.on_demand_base) and 0 <= self.on_demand_base <= self.max_capacity,
                 f"{prefix}.on_demand_base", self.on_demand_base,
                 f"an integer from 0 to max_capacity ({self.max_capacity})")
        _require(_is_int(self.on_demand_percentage) and 0 <= self.on_demand_percentage <= 100,
                 f"{prefix}.on_demand_percentage", self.on_demand_percentage,
                 "an integer from 0 (all spot above the base) to 100 (all on-demand)")

    def _validate_volume(self, prefix: str) -> None:
        size, iops, throughput = (self.root_volume_size_gib, self.root_volume_iops,
                                  self.root_volume_throughput_mibps)
        _require(_is_int(size) and 75 <= size <= 16384, f"{prefix}.root_volume_size_gib", size,
                 "75 to 16384 GiB (the Deep Learning AMI's root snapshot is 75 GiB)")
        _require(_is_int(iops) and 3000 <= iops <= 16000, f"{prefix}.root_volume_iops", iops,
                 "3000 to 16000 (gp3)")
        _require(_is_int(throughput) and 125 <= throughput <= 1000,
                 f"{prefix}.root_volume_throughput_mibps", throughput, "125 to 1000 MiB/s (gp3)")
        _require(throughput * 4 <= iops, f"{prefix}.root_volume_throughput_mibps", throughput,
                 f"at most 0.25 MiB/s per provisioned IOPS: {iops // 4} for {iops} IOPS")
        _require(self.root_device_name in ROOT_DEVICE_NAMES, f"{prefix}.root_device_name",
                 self.root_device_name,
                 "the AMI's root device: /dev/xvda (Amazon Linux) or /dev/sda1 (Ubuntu)")

    def _validate_checkpointing(self, prefix: str) -> None:
        budget = self.checkpoint_budget_seconds
        _require(_is_int(budget) and 10 <= budget <= 3600, f"{prefix}.checkpoint_budget_seconds",
                 budget, "10 to 3600 seconds (a spot notice gives 120 s in all)")
        timeout = self.lifecycle_heartbeat_timeout_seconds
        path = f"{prefix}.lifecycle_heartbeat_timeout_seconds"
        _require(_is_int(timeout)
                 and HEARTBEAT_TIMEOUT_MIN_SECONDS <= timeout <= HEARTBEAT_TIMEOUT_MAX_SECONDS,
                 path, timeout,
                 f"{HEARTBEAT_TIMEOUT_MIN_SECONDS} to {HEARTBEAT_TIMEOUT_MAX_SECONDS} seconds "
                 "(the lifecycle hook's limits)")
        _require(timeout >= budget + CHECKPOINT_UPLOAD_MARGIN_SECONDS, path, timeout,
                 f"at least checkpoint_budget_seconds + {CHECKPOINT_UPLOAD_MARGIN_SECONDS} "
                 f"({budget + CHECKPOINT_UPLOAD_MARGIN_SECONDS}): the hook must outlast a whole "
                 "checkpoint and its upload even if every heartbeat is lost")
        interval = self.heartbeat_interval_seconds
        _require(_is_int(interval) and 5 <= interval <= timeout // 2,
                 f"{prefix}.heartbeat_interval_seconds", interval,
                 f"5 to half the heartbeat timeout ({timeout // 2} s), so one lost heartbeat "
                 "does not expire the hook")
        _require(isinstance(self.checkpoint_dir, str) and bool(_SAFE_PATH_RE.match(self.checkpoint_dir))
                 and ".." not in self.checkpoint_dir.split("/"),
                 f"{prefix}.checkpoint_dir", self.checkpoint_dir,
                 "an absolute path of letters, digits and _ . - / without '..'")
        _require(isinstance(self.checkpoint_done_marker, str)
                 and bool(_SAFE_FILE_NAME_RE.match(self.checkpoint_done_marker))
                 and self.checkpoint_done_marker not in (".", ".."),
                 f"{prefix}.checkpoint_done_marker", self.checkpoint_done_marker,
                 "a file name of letters, digits and _ . -")
        _require(self.training_signal in TRAINING_SIGNALS, f"{prefix}.training_signal",
                 self.training_signal, "one of " + ", ".join(TRAINING_SIGNALS))

    def _validate_runs(self, prefix: str) -> None:
        lease = self.lease_seconds
        _require(_is_int(lease) and 30 <= lease <= MAX_LEASE_SECONDS, f"{prefix}.lease_seconds", lease,
                 f"30 to {MAX_LEASE_SECONDS} seconds (a vanished holder's run must be claimable "
                 "within 2 minutes)")
        renew = self.lease_renew_seconds
        _require(_is_int(renew) and 5 <= renew <= lease // 2, f"{prefix}.lease_renew_seconds", renew,
                 f"5 to half the lease ({lease // 2} s), so one lost renewal does not lose the run")
        _require(_is_int(self.claim_poll_seconds) and 1 <= self.claim_poll_seconds <= 300,
                 f"{prefix}.claim_poll_seconds", self.claim_poll_seconds, "1 to 300 seconds")
        _require(_is_int(self.run_default_max_failures) and 1 <= self.run_default_max_failures <= 100,
                 f"{prefix}.run_default_max_failures", self.run_default_max_failures,
                 "1 to 100 trainer failures")
        minutes = self.run_default_max_duration_minutes
        _require(_is_int(minutes) and 1 <= minutes <= MAX_RUN_DURATION_MINUTES,
                 f"{prefix}.run_default_max_duration_minutes", minutes,
                 f"1 to {MAX_RUN_DURATION_MINUTES} minutes (30 days)")
        _require(self.runs_log_retention_days in LOG_RETENTION_DAYS, f"{prefix}.runs_log_retention_days",
                 self.runs_log_retention_days,
                 "a CloudWatch Logs retention: " + ", ".join(map(str, LOG_RETENTION_DAYS)))
        rate = self.runs_capacity_rate_minutes
        _require(_is_int(rate) and 1 <= rate <= 60, f"{prefix}.runs_capacity_rate_minutes", rate,
                 "1 to 60 minutes (the longest a PENDING run waits for the fleet to be raised)")
        hung = self.hung_after_minutes
        _require(_is_int(hung) and 1 <= hung <= MAX_HUNG_AFTER_MINUTES, f"{prefix}.hung_after_minutes",
                 hung, f"1 to {MAX_HUNG_AFTER_MINUTES} minutes without progress from the trainer "
                 "(longer than its slowest step plus checkpoint)")
        _require(self.hung_action in HUNG_ACTIONS, f"{prefix}.hung_action", self.hung_action,
                 "one of " + ", ".join(HUNG_ACTIONS))
        after = self.spot_fallback_after_minutes
        _require(after is None or (_is_int(after) and self.runs_capacity_rate_minutes <= after <= 1440),
                 f"{prefix}.spot_fallback_after_minutes", after,
                 f"None (no fallback) or {self.runs_capacity_rate_minutes} (runs_capacity_rate_minutes: "
                 "the reconciler looks no more often) to 1440 minutes")
        share = self.spot_fallback_on_demand_percentage
        # An all on-demand fleet has nothing to fall back from.
        _require(after is None or self.on_demand_percentage == 100
                 or (_is_int(share) and self.on_demand_percentage < share <= 100),
                 f"{prefix}.spot_fallback_on_demand_percentage", share,
                 f"more than on_demand_percentage ({self.on_demand_percentage}) and at most 100 "
                 "(or spot_fallback_after_minutes=None for no fallback)")

    @property
    def powertools_layer_version(self) -> int:
        return POWERTOOLS_LAYER_VERSIONS[self.powertools_version]

    @property
    def max_gpus_per_instance(self) -> int:
        """The most GPUs one instance of the fleet has: the most a run may ask for."""
        return max(GPUS_PER_INSTANCE_TYPE[t] for t in self.instance_types)


@dataclass(frozen=True)
class IdleShutdownConfig:
    """Never pay for an idle GPU (the ``idle`` stack).

    An instance of a group tagged ``opt_in_tag_key=opt_in_tag_value`` is
    stopped when its GPU utilization stayed below
    ``gpu_utilization_threshold_percent`` for ``window_minutes`` (every
    datapoint, the whole window covered), it is older than
    ``launch_grace_minutes``, not scale-in protected and has no
    ``ml:keep-alive-until`` tag in the future. ``dry_run`` decides and
    reports without stopping anything. ``off_hours_scale_in_cron`` /
    ``off_hours_scale_out_cron`` (both or neither, unix cron in
    ``off_hours_time_zone``) scale the fleet to 0 at night and back in the
    morning; None (the default, and prod's value) means no schedule.
    ``savings_horizon_hours`` is the idle time a stop is assumed to save,
    for the ``GpuHoursSaved`` metric only.
    """

    enabled: bool = True
    dry_run: bool = False
    gpu_utilization_threshold_percent: float = 5.0
    window_minutes: int = 15
    launch_grace_minutes: int = 20
    schedule_rate_minutes: int = 5
    opt_in_tag_key: str = "ml:idle-shutdown"
    opt_in_tag_value: str = "enabled"
    off_hours_scale_in_cron: str | None = None
    off_hours_scale_out_cron: str | None = None
    off_hours_time_zone: str = "UTC"
    savings_horizon_hours: float = 1.0

    @property
    def off_hours(self) -> bool:
        return self.off_hours_scale_in_cron is not None

    def validate(self, prefix: str) -> None:
        for name in ("enabled", "dry_run"):
            _require(isinstance(getattr(self, name), bool), f"{prefix}.{name}",
                     getattr(self, name), "True or False")
        value = self.gpu_utilization_threshold_percent
        _require(_is_number(value) and 0 < value <= 100,
                 f"{prefix}.gpu_utilization_threshold_percent", value,
                 "a percentage above 0 and at most 100")
        period = gpu_metric_period_seconds()
        value = self.window_minutes
        _require(_is_int(value) and value * 60 >= 2 * period and value <= 1440,
                 f"{prefix}.window_minutes", value,
                 f"whole minutes from {max(1, 2 * period // 60)} (two GPU metric periods of "
                 f"{period} s) to 1440")
        _require(value * 60 % period == 0, f"{prefix}.window_minutes", value,
                 f"a multiple of the GPU metric period ({period} s)")
        value = self.launch_grace_minutes
        _require(_is_int(value) and 0 <= value <= 1440, f"{prefix}.launch_grace_minutes", value,
                 "whole minutes from 0 to 1440")
        value = self.schedule_rate_minutes
        _require(_is_int(value) and 1 <= value <= 60, f"{prefix}.schedule_rate_minutes", value,
                 "whole minutes from 1 to 60")
        _require(value <= self.window_minutes, f"{prefix}.schedule_rate_minutes", value,
                 f"at most window_minutes ({self.window_minutes}): a longer rate leaves "
                 "idle time unobserved between runs")
        value = self.opt_in_tag_key
        _require(isinstance(value, str) and bool(_TAG_KEY_RE.match(value))
                 and not value.lower().startswith("aws:"),
                 f"{prefix}.opt_in_tag_key", value,
                 "a tag key of 1-128 letters, digits, spaces and _ . : / = + - @, not starting with 'aws:'")
        value = self.opt_in_tag_value
        _require(isinstance(value, str) and 0 < len(value) <= 256 and bool(_TAG_VALUE_RE.match(value)),
                 f"{prefix}.opt_in_tag_value", value,
                 "a tag value of 1-256 letters, digits, spaces and _ . : / = + - @")
        crons = (self.off_hours_scale_in_cron, self.off_hours_scale_out_cron)
        _require((crons[0] is None) == (crons[1] is None), f"{prefix}.off_hours_scale_out_cron",
                 crons[1], "set together with off_hours_scale_in_cron (both or neither)")
        for name in ("off_hours_scale_in_cron", "off_hours_scale_out_cron"):
            value = getattr(self, name)
            if value is None:
                continue
            fields = value.split() if isinstance(value, str) else []
            _require(len(fields) == 5 and all(_CRON_FIELD_RE.match(f) for f in fields),
                     f"{prefix}.{name}", value,
                     "a five-field unix cron expression, e.g. '0 20 * * MON-FRI'")
        if self.off_hours:
            _require(crons[0] != crons[1], f"{prefix}.off_hours_scale_out_cron", crons[1],
                     "a different time than off_hours_scale_in_cron")
        value = self.off_hours_time_zone
        _require(isinstance(value, str) and _is_time_zone(value), f"{prefix}.off_hours_time_zone",
                 value, "an IANA time zone name such as 'UTC' or 'Europe/Berlin'")
        value = self.savings_horizon_hours
        _require(_is_number(value) and 0 < value <= 168, f"{prefix}.savings_horizon_hours", value,
                 "hours above 0 and at most 168")


def _is_time_zone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


# --- serving (SageMaker real-time endpoints) --------------------------------

# SageMaker resource names (endpoints, variants, components): letters, digits
# and single or repeated hyphens, starting and ending with a letter or digit.
_SAGEMAKER_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
# Every name derived from a model (endpoint "ml-<stage>-<model>", alarm and
# log group names) stays under SageMaker's 63 characters with this limit.
MODEL_NAME_MAX = 40
_ML_INSTANCE_TYPE_RE = re.compile(r"^ml\.[a-z0-9-]+\.[a-z0-9]+$")
_GPU_INSTANCE_RE = re.compile(r"^ml\.(g|p)[0-9][a-z0-9-]*\.")
_IMAGE_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
IMAGE_URI_RE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?"
    r"/(?P<repository>[a-z0-9]+(?:[._/-][a-z0-9]+)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127})|@sha256:[0-9a-f]{64})$"
)
_PAYLOAD_PATH_RE = re.compile(r"^(?!/)(?!.*(^|/)\.\.(/|$))[A-Za-z0-9_./-]+\.(json|csv)$")
_S3_KEY_RE = re.compile(r"^[A-Za-z0-9!_.*'()=+-]+(/[A-Za-z0-9!_.*'()=+-]+)*$")
_ENV_KEY_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,1023}$")
# The pattern SageMaker accepts for data-capture content types.
_CONTENT_TYPE_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*/[a-zA-Z0-9](-*[a-zA-Z0-9.])*$")
DEPLOYMENT_STRATEGIES: tuple[str, ...] = ("canary", "linear", "all_at_once")
# Inference components accept 16 environment variables; models more. The
# lower limit keeps a model valid in both modes.
MAX_ENVIRONMENT = 16
MAX_CONTENT_TYPES = 10
# SageMaker invocations time out after 60 s: a p99 above that cannot happen.
MAX_LATENCY_MS = 60_000


def _from_mapping(cls: type, values: Mapping[str, Any], path: str) -> dict[str, Any]:
    """``values`` as keyword arguments of dataclass ``cls``; an unknown key is
    rejected with the list of allowed keys (a typo must not be ignored)."""
    _require(isinstance(values, Mapping), path, values, "a mapping of field names to values")
    allowed = [f.name for f in fields(cls)]
    for key in values:
        _require(key in allowed, f"{path}.{key}", key, "a known field: " + ", ".join(allowed))
    return dict(values)


@dataclass(frozen=True)
class ModelConfig:
    """One model served by its own SageMaker real-time endpoint ``ml-<stage>-<name>``.

    The container image is either ``image_tag`` in the stage's ECR repository
    (the storage stack's ``ImageRepositoryUri`` output) or a full ECR ``image_uri`` in the stage's region
    (e.g. an AWS Deep Learning Container); exactly one of the two.

    The model artifact is exactly one of ``model_data_key``, the
    ``model.tar.gz`` object its owner uploads to the stage's model-artifacts
    bucket before the deploy (``make preflight`` checks it exists), or
    ``example_model``, the name of a directory under ``examples/models/``
    whose archive is built at synth time and ships with the deploy as a CDK
    asset. Either way the endpoint's role may read that one object only.
    ``smoke_payload`` is the request body ``make smoke`` sends (a repository
    path, ``.json`` or ``.csv``); by default an example model's own
    ``payload.json``.

    Scaling: ``min_instance_count`` ≤ ``initial_instance_count`` ≤
    ``max_instance_count``, target tracking on invocations per instance
    (``target_invocations_per_instance``, per minute) and, on GPU instance
    types, optionally on ``gpu_utilization_target_percent`` (SageMaker sums
    the utilization of all GPUs of an instance: 0–100 × GPUs).

    ``scale_to_zero`` (dev only) serves the model through an inference
    component whose copies and instances scale in to zero when idle and back
    out on the first request; ``min_instance_count`` must then be 0 and the
    component reserves ``component_cpu_cores``/``component_memory_mb``/
    ``component_accelerators`` of an instance.

    Deployments are blue/green (``canary``, ``linear`` or ``all_at_once``)
    and roll back by themselves when one of the endpoint's alarms fires.
    """

    name: str
    instance_type: str
    model_data_key: str | None = None
    example_model: str | None = None
    smoke_payload: str | None = None
    image_tag: str | None = None
    image_uri: str | None = None
    environment: Mapping[str, str] = field(default_factory=dict, hash=False)
    initial_instance_count: int = 1
    min_instance_count: int = 1
    max_instance_count: int = 2
    target_invocations_per_instance: int = 70
    scale_in_cooldown_seconds: int = 300
    scale_out_cooldown_seconds: int = 60
    gpu_utilization_target_percent: int | None = None
    capture_sampling_percent: int = 20
    capture_json_content_types: tuple[str, ...] = ("application/json",)
    capture_csv_content_types: tuple[str, ...] = ("text/csv",)
    alarm_5xx_errors: int = 1
    alarm_4xx_rate_percent: float = 5.0
    alarm_latency_p99_ms: int = 1000
    deployment: str = "canary"
    deployment_step_percent: int = 10
    deployment_wait_seconds: int = 300
    deployment_termination_wait_seconds: int = 300
    scale_to_zero: bool = False
    component_cpu_cores: float = 1
    component_memory_mb: int = 1024
    component_accelerators: int = 0

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, path: str = "model") -> "ModelConfig":
        """Build from a plain mapping (e.g. parsed YAML/JSON); unknown keys fail."""
        kwargs = _from_mapping(cls, values, path)
        for key in ("capture_json_content_types", "capture_csv_content_types"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = tuple(kwargs[key])
        missing = [f.name for f in fields(cls)
                   if f.name not in kwargs and f.default is MISSING and f.default_factory is MISSING]
        _require(not missing, f"{path}", sorted(kwargs),
                 "a mapping with the required fields " + ", ".join(missing))
        return cls(**kwargs)

    @property
    def is_gpu(self) -> bool:
        return bool(_GPU_INSTANCE_RE.match(self.instance_type))

    @property
    def payload_path(self) -> str | None:
        """Repository path of the request ``make smoke`` sends, None if there is none."""
        if self.smoke_payload is not None:
            return self.smoke_payload
        if self.example_model is not None:
            return f"examples/models/{self.example_model}/payload.json"
        return None

    def _validate_artifact(self, path: str) -> None:
        key, example = self.model_data_key, self.example_model
        _require((key is None) != (example is None), f"{path}.model_data_key", key,
                 "exactly one of model_data_key (a model.tar.gz you upload) or example_model "
                 f"(shipped with the deploy; example_model is {example!r})")
        if key is not None:
            _require(isinstance(key, str) and len(key) <= 1024 and bool(_S3_KEY_RE.match(key))
                     and key.endswith(".tar.gz"), f"{path}.model_data_key", key,
                     "an S3 key of a model.tar.gz in the model-artifacts bucket, "
                     "e.g. 'my-model/v1/model.tar.gz' (no leading slash)")
        else:
            names = example_models.available()
            _require(example in names, f"{path}.example_model", example,
                     "a directory of examples/models with code/inference.py and payload.json: "
                     + (", ".join(names) or "none in this checkout"))
        payload = self.smoke_payload
        if payload is not None:
            _require(isinstance(payload, str) and bool(_PAYLOAD_PATH_RE.match(payload)),
                     f"{path}.smoke_payload", payload,
                     "a relative path in the repository ending in .json or .csv, "
                     "e.g. 'examples/models/sentiment/payload.json'")

    def validate(self, prefix: str, *, stage: str, region: str) -> None:
        name = self.name
        _require(isinstance(name, str) and bool(_SAGEMAKER_NAME_RE.match(name))
                 and len(name) <= MODEL_NAME_MAX, f"{prefix}.name", name,
                 f"1 to {MODEL_NAME_MAX} letters, digits and hyphens, starting and ending with "
                 "a letter or digit (it names the SageMaker endpoint ml-<stage>-<name>)")
        path = f"{prefix}.{name}"

        self._validate_image(path, region)
        self._validate_artifact(path)
        self._validate_environment(path)
        self._validate_capacity(path, stage)
        self._validate_scaling(path)
        self._validate_capture_and_alarms(path)
        self._validate_deployment(path)

    def _validate_image(self, path: str, region: str) -> None:
        has_tag, has_uri = self.image_tag is not None, self.image_uri is not None
        _require(has_tag != has_uri, f"{path}.image_tag", self.image_tag,
                 "exactly one of image_tag (in the stage's ECR repository) or image_uri")
        if has_tag:
            _require(isinstance(self.image_tag, str) and bool(_IMAGE_TAG_RE.match(self.image_tag)),
                     f"{path}.image_tag", self.image_tag,
                     "an ECR image tag: letters, digits, _ . - (at most 128)")
        else:
            match = IMAGE_URI_RE.match(self.image_uri) if isinstance(self.image_uri, str) else None
            _require(match is not None, f"{path}.image_uri", self.image_uri,
                     "an ECR image URI <account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag> "
                     "(or @sha256:<digest>)")
            _require(match["region"] == region, f"{path}.image_uri", self.image_uri,
                     f"an image in the stage's region {region!r} (SageMaker pulls from its own region)")

    def _validate_environment(self, path: str) -> None:
        env = self.environment
        _require(isinstance(env, Mapping) and len(env) <= MAX_ENVIRONMENT, f"{path}.environment",
                 env, f"a mapping of at most {MAX_ENVIRONMENT} variables")
        for env_key, env_value in env.items():
            _require(isinstance(env_key, str) and bool(_ENV_KEY_RE.match(env_key)),
                     f"{path}.environment", env_key,
                     "variable names of letters, digits and _, not starting with a digit")
            _require(isinstance(env_value, str) and len(env_value) <= 1024,
                     f"{path}.environment.{env_key}", env_value, "a string of at most 1024 characters")

    def _validate_capacity(self, path: str, stage: str) -> None:
        _require(isinstance(self.instance_type, str) and self.instance_type.startswith("ml.")
                 and bool(_ML_INSTANCE_TYPE_RE.match(self.instance_type)), f"{path}.instance_type",
                 self.instance_type, "a SageMaker instance type starting with 'ml.', e.g. 'ml.g5.xlarge'")

        for count in ("initial_instance_count", "min_instance_count", "max_instance_count"):
            value = getattr(self, count)
            _require(_is_int(value) and 0 <= value <= 100, f"{path}.{count}", value,
                     "an integer from 0 to 100")
        _require(self.initial_instance_count >= 1, f"{path}.initial_instance_count",
                 self.initial_instance_count, "at least 1 (an endpoint starts with an instance)")
        _require(self.max_instance_count >= 1, f"{path}.max_instance_count",
                 self.max_instance_count, "at least 1")
        counts = (self.min_instance_count, self.initial_instance_count, self.max_instance_count)
        _require(counts[0] <= counts[1] <= counts[2], f"{path}.min/initial/max_instance_count",
                 counts, "min_instance_count ≤ initial_instance_count ≤ max_instance_count")

        _require(isinstance(self.scale_to_zero, bool), f"{path}.scale_to_zero", self.scale_to_zero,
                 "True or False")
        if self.scale_to_zero:
            _require(stage == "dev", f"{path}.scale_to_zero", True,
                     "False outside dev: a scaled-in endpoint answers only after minutes of cold start")
            _require(self.min_instance_count == 0, f"{path}.min_instance_count",
                     self.min_instance_count, "0 with scale_to_zero (that is what it scales in to)")
            _require(_is_number(self.component_cpu_cores) and 0 < self.component_cpu_cores <= 192,
                     f"{path}.component_cpu_cores", self.component_cpu_cores,
                     "a number of CPU cores above 0 (at most 192)")
            _require(_is_int(self.component_memory_mb) and 128 <= self.component_memory_mb <= 2_000_000,
                     f"{path}.component_memory_mb", self.component_memory_mb,
                     "an integer of MiB from 128")
            _require(_is_int(self.component_accelerators) and 0 <= self.component_accelerators <= 16,
                     f"{path}.component_accelerators", self.component_accelerators,
                     "an integer from 0 to 16")
            _require(self.component_accelerators == 0 or self.is_gpu, f"{path}.component_accelerators",
                     self.component_accelerators, "0 on an instance type without GPUs")
        else:
            _require(self.min_instance_count >= 1, f"{path}.min_instance_count",
                     self.min_instance_count,
                     "at least 1 (only scale_to_zero endpoints in dev may scale in to 0)")

    def _validate_scaling(self, path: str) -> None:
        _require(_is_int(self.target_invocations_per_instance)
                 and 1 <= self.target_invocations_per_instance <= 100_000,
                 f"{path}.target_invocations_per_instance", self.target_invocations_per_instance,
                 "an integer from 1 to 100000 invocations per instance per minute")
        for cooldown in ("scale_in_cooldown_seconds", "scale_out_cooldown_seconds"):
            value = getattr(self, cooldown)
            _require(_is_int(value) and 0 <= value <= 3600, f"{path}.{cooldown}", value,
                     "an integer from 0 to 3600 seconds")
        gpu = self.gpu_utilization_target_percent
        if gpu is not None:
            _require(_is_int(gpu) and 1 <= gpu <= 800, f"{path}.gpu_utilization_target_percent", gpu,
                     "None or an integer from 1 to 800 (SageMaker sums the GPUs of an instance)")
            _require(self.is_gpu, f"{path}.gpu_utilization_target_percent", gpu,
                     f"None on {self.instance_type!r}: GPU scaling needs a GPU instance type (ml.g*/ml.p*)")
            _require(not self.scale_to_zero, f"{path}.gpu_utilization_target_percent", gpu,
                     "None with scale_to_zero (inference components scale on invocations per copy)")

    def _validate_capture_and_alarms(self, path: str) -> None:
        _require(_is_int(self.capture_sampling_percent) and 0 <= self.capture_sampling_percent <= 100,
                 f"{path}.capture_sampling_percent", self.capture_sampling_percent,
                 "an integer from 0 to 100")
        for types_field in ("capture_json_content_types", "capture_csv_content_types"):
            value = getattr(self, types_field)
            _require(isinstance(value, tuple) and len(value) <= MAX_CONTENT_TYPES,
                     f"{path}.{types_field}", value,
                     f"a tuple of at most {MAX_CONTENT_TYPES} content types")
            for content_type in value:
                _require(isinstance(content_type, str) and len(content_type) <= 256
                         and bool(_CONTENT_TYPE_RE.match(content_type)), f"{path}.{types_field}",
                         content_type, "a content type such as 'application/json'")

        _require(_is_int(self.alarm_5xx_errors) and 1 <= self.alarm_5xx_errors <= 100_000,
                 f"{path}.alarm_5xx_errors", self.alarm_5xx_errors,
                 "an integer from 1 to 100000 errors in 5 minutes")
        _require(_is_number(self.alarm_4xx_rate_percent) and 0 < self.alarm_4xx_rate_percent <= 100,
                 f"{path}.alarm_4xx_rate_percent", self.alarm_4xx_rate_percent,
                 "a percentage above 0, at most 100")
        _require(_is_int(self.alarm_latency_p99_ms) and 1 <= self.alarm_latency_p99_ms <= MAX_LATENCY_MS,
                 f"{path}.alarm_latency_p99_ms", self.alarm_latency_p99_ms,
                 f"an integer from 1 to {MAX_LATENCY_MS} ms (invocations time out after 60 s)")

    def _validate_deployment(self, path: str) -> None:
        _require(self.deployment in DEPLOYMENT_STRATEGIES, f"{path}.deployment", self.deployment,
                 "one of " + ", ".join(DEPLOYMENT_STRATEGIES))
        _require(_is_int(self.deployment_step_percent) and 1 <= self.deployment_step_percent <= 50,
                 f"{path}.deployment_step_percent", self.deployment_step_percent,
                 "an integer from 1 to 50 (percent of capacity per canary/linear step)")
        for wait in ("deployment_wait_seconds", "deployment_termination_wait_seconds"):
            value = getattr(self, wait)
            _require(_is_int(value) and 0 <= value <= 3600, f"{path}.{wait}", value,
                     "an integer from 0 to 3600 seconds")


@dataclass(frozen=True)
class ServingConfig:
    """The stage's SageMaker real-time endpoints: one per model.

    Adding a ``ModelConfig`` here is the only step to serve a model.
    ``log_retention_days`` applies to each endpoint's CloudWatch log group.
    """

    models: tuple[ModelConfig, ...] = ()
    log_retention_days: int = 30

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, path: str = "serving") -> "ServingConfig":
        kwargs = _from_mapping(cls, values, path)
        models = kwargs.get("models", ())
        _require(isinstance(models, (list, tuple)), f"{path}.models", models, "a list of models")
        kwargs["models"] = tuple(
            m if isinstance(m, ModelConfig) else ModelConfig.from_dict(m, path=f"{path}.models[{i}]")
            for i, m in enumerate(models))
        return cls(**kwargs)

    def validate(self, prefix: str, *, stage: str, region: str) -> None:
        path = f"{prefix}.models"
        _require(isinstance(self.models, tuple)
                 and all(isinstance(m, ModelConfig) for m in self.models),
                 path, self.models, "a tuple of ModelConfig")
        for model in self.models:
            model.validate(path, stage=stage, region=region)
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        _require(not duplicates, path, duplicates, "each model name once (it names the endpoint)")
        _require(self.log_retention_days in LOG_RETENTION_DAYS, f"{prefix}.log_retention_days",
                 self.log_retention_days,
                 "a CloudWatch Logs retention: " + ", ".join(map(str, LOG_RETENTION_DAYS)))


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


# AWS Budgets accepts at most five notifications per budget.
MAX_BUDGET_NOTIFICATIONS = 5


@dataclass(frozen=True)
class BudgetConfig:
    """The stage's monthly AWS Budgets cost budget, alerting the alerts topic.

    ``filter_by_environment_tag`` counts only costs tagged
    ``Environment=<stage>`` (stages sharing an account); the tag must be
    activated as a cost allocation tag in Billing once per account. False
    counts the whole account (one account per stage).
    """

    monthly_limit_usd: int = 1000
    actual_alert_percents: tuple[int, ...] = (80, 100)
    forecast_alert_percents: tuple[int, ...] = (100,)
    filter_by_environment_tag: bool = True

    def validate(self, prefix: str) -> None:
        path = f"{prefix}.monthly_limit_usd"
        _require(isinstance(self.monthly_limit_usd, int) and not isinstance(self.monthly_limit_usd, bool)
                 and 1 <= self.monthly_limit_usd <= 10_000_000, path, self.monthly_limit_usd,
                 "a whole number of US dollars from 1 to 10,000,000")
        for name in ("actual_alert_percents", "forecast_alert_percents"):
            path = f"{prefix}.{name}"
            values = getattr(self, name)
            _require(isinstance(values, tuple), path, values, "a tuple of percentages, e.g. (80, 100)")
            for value in values:
                _require(isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1000,
                         path, value, "whole percentages of the limit from 1 to 1000")
            _require(len(set(values)) == len(values), path, values, "each percentage once")
        total = len(self.actual_alert_percents) + len(self.forecast_alert_percents)
        _require(1 <= total <= MAX_BUDGET_NOTIFICATIONS, f"{prefix}.actual_alert_percents", total,
                 f"1 to {MAX_BUDGET_NOTIFICATIONS} alerts in total (actual plus forecast): "
                 "the AWS Budgets limit per budget")
        _require(isinstance(self.filter_by_environment_tag, bool), f"{prefix}.filter_by_environment_tag",
                 self.filter_by_environment_tag, "True or False")


@dataclass(frozen=True)
class DriftConfig:
    """The stage's own scheduled CloudFormation drift detection.

    Runs daily at ``schedule_hour_utc`` on every stack of the stage and
    notifies the alerts topic when a stack drifted or could not be checked.
    """

    enabled: bool = True
    schedule_hour_utc: int = 6
    log_retention_days: int = 90

    def validate(self, prefix: str) -> None:
        _require(isinstance(self.enabled, bool), f"{prefix}.enabled", self.enabled, "True or False")
        _require(isinstance(self.schedule_hour_utc, int) and not isinstance(self.schedule_hour_utc, bool)
                 and 0 <= self.schedule_hour_utc <= 23, f"{prefix}.schedule_hour_utc",
                 self.schedule_hour_utc, "an hour of the day, 0 to 23 (UTC)")
        _require(self.log_retention_days in LOG_RETENTION_DAYS, f"{prefix}.log_retention_days",
                 self.log_retention_days,
                 "a CloudWatch Logs retention: " + ", ".join(map(str, LOG_RETENTION_DAYS)))


@dataclass(frozen=True)
class StageConfig:
    """Everything one stage deploys. Validated on construction."""

    name: str
    region: str
    network: NetworkConfig
    tags: StageTags
    storage: StorageConfig = field(default_factory=StorageConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    eks: EksConfig = field(default_factory=EksConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    idle_shutdown: IdleShutdownConfig = field(default_factory=IdleShutdownConfig)
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
        self.budget.validate(f"{prefix}.budget")
        self.drift.validate(f"{prefix}.drift")
        self.eks.validate(f"{prefix}.eks", self.name)
        self.serving.validate(f"{prefix}.serving", stage=self.name, region=self.region)
        _require(isinstance(self.training, TrainingConfig), f"{prefix}.training", self.training,
                 "a TrainingConfig")
        self.training.validate(f"{prefix}.training")
        self.idle_shutdown.validate(f"{prefix}.idle_shutdown")
        self.tags.validate(f"{prefix}.tags")

    @property
    def stack_prefix(self) -> str:
        """Prefix of every CloudFormation stack name of this stage."""
        return f"ml-{self.name}"

    def with_account(self, account: str | None) -> "StageConfig":
        return replace(self, account=account)


# AWS Deep Learning Containers for PyTorch inference (SageMaker flavour),
# published by AWS in us-east-1. A model.tar.gz for them holds the weights and
# code/inference.py (model_fn/predict_fn).
PYTORCH_CPU_INFERENCE_IMAGE = (
    "763104351884.dkr.ecr.us-east-1.amazonaws.com/"
    "pytorch-inference:2.6.0-cpu-py312-ubuntu22.04-sagemaker")
PYTORCH_GPU_INFERENCE_IMAGE = (
    "763104351884.dkr.ecr.us-east-1.amazonaws.com/"
    "pytorch-inference:2.6.0-gpu-py312-cu124-ubuntu22.04-sagemaker")


DEFAULT_TAGS = StageTags(
    team="ml-platform",
    project="ml-infra",
    cost_center="ml-0001",
    repository="ml-infra-cdk",
)


def _dev_config(account: str | None, eks_public_access_cidrs: tuple[str, ...]) -> StageConfig:
    """Dev: small, scale-to-zero serving, the example model, off at night."""
    return StageConfig(
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
                              ecr_immutable_tags=False, data_capture_expiration_days=30),
        # Two small GPUs at most: dev proves the interruption flow, not scale.
        training=TrainingConfig(max_capacity=2, log_retention_days=30, runs_log_retention_days=30),
        # Nobody trains in dev at night: the fleet goes to 0 at 20:00 on
        # weekdays and stays there over the weekend.
        idle_shutdown=IdleShutdownConfig(
            off_hours_scale_in_cron="0 20 * * MON-FRI",
            off_hours_scale_out_cron="0 7 * * MON-FRI",
        ),
        # Dev serves on CPU through a scale-to-zero inference component: an
        # idle dev endpoint costs nothing, the first request after idling
        # waits for an instance. It serves the example model shipped in
        # examples/models/sentiment, so a fresh account needs no upload.
        serving=ServingConfig(models=(
            ModelConfig(
                name="classifier",
                image_uri=PYTORCH_CPU_INFERENCE_IMAGE,
                example_model="sentiment",
                instance_type="ml.m5.large",
                initial_instance_count=1,
                min_instance_count=0,
                max_instance_count=1,
                scale_to_zero=True,
                component_cpu_cores=1,
                component_memory_mb=2048,
                capture_sampling_percent=100,
                deployment="all_at_once",
                deployment_wait_seconds=0,
                deployment_termination_wait_seconds=0,
            ),
        ), log_retention_days=14),
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
        budget=BudgetConfig(monthly_limit_usd=1500),
        drift=DriftConfig(log_retention_days=30),
        tags=DEFAULT_TAGS,
    )


def _staging_config(account: str | None) -> StageConfig:
    """Staging: what prod runs, on the smallest fleet that shows a blue/green deployment."""
    return StageConfig(
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
        storage=StorageConfig(retain=True, ecr_immutable_tags=True),
        training=TrainingConfig(max_capacity=4, log_retention_days=90),
        idle_shutdown=IdleShutdownConfig(
            off_hours_scale_in_cron="0 22 * * MON-FRI",
            off_hours_scale_out_cron="0 6 * * MON-FRI",
        ),
        # Staging runs what prod runs, on the smallest fleet that still shows
        # a blue/green deployment. Its artifact is the team's own upload
        # (make preflight fails until it exists); the smoke payload fits the
        # example archive the README suggests as a stand-in until then.
        serving=ServingConfig(models=(
            ModelConfig(
                name="classifier",
                image_uri=PYTORCH_GPU_INFERENCE_IMAGE,
                model_data_key="classifier/model.tar.gz",
                smoke_payload="examples/models/sentiment/payload.json",
                instance_type="ml.g5.xlarge",
                initial_instance_count=1,
                min_instance_count=1,
                max_instance_count=2,
                gpu_utilization_target_percent=70,
                capture_sampling_percent=50,
                deployment="all_at_once",
                deployment_wait_seconds=0,
                deployment_termination_wait_seconds=300,
            ),
        ), log_retention_days=30),
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
        budget=BudgetConfig(monthly_limit_usd=5000),
        drift=DriftConfig(log_retention_days=90),
        tags=DEFAULT_TAGS,
    )


def _prod_config(account: str | None) -> StageConfig:
    """Prod: retained, private, on-demand coordinator, canary deployments."""
    return StageConfig(
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
        training=TrainingConfig(
            instance_types=("g5.2xlarge", "g6.2xlarge", "g5.4xlarge", "g6.4xlarge",
                            "g6e.2xlarge"),
            max_capacity=16,
            # One on-demand node keeps a long run's coordinator off the spot market.
            on_demand_base=1,
            root_volume_size_gib=500,
            root_volume_iops=6000,
            root_volume_throughput_mibps=500,
            log_retention_days=365,
            runs_log_retention_days=365,
        ),
        # Long prod runs may sit on a barrier for a while: a longer window,
        # and no off-hours schedule.
        idle_shutdown=IdleShutdownConfig(window_minutes=30, launch_grace_minutes=30),
        # Two instances in two AZs so one failure never takes the endpoint
        # down; new versions take 10% of capacity for 10 minutes first.
        serving=ServingConfig(models=(
            ModelConfig(
                name="classifier",
                image_uri=PYTORCH_GPU_INFERENCE_IMAGE,
                # Uploaded by the model's owner before the first deploy
                # (checked by make preflight); replace the payload with one
                # your model answers.
                model_data_key="classifier/model.tar.gz",
                smoke_payload="examples/models/sentiment/payload.json",
                instance_type="ml.g5.xlarge",
                initial_instance_count=2,
                min_instance_count=2,
                max_instance_count=6,
                gpu_utilization_target_percent=70,
                capture_sampling_percent=10,
                deployment="canary",
                deployment_step_percent=10,
                deployment_wait_seconds=600,
                deployment_termination_wait_seconds=600,
            ),
        ), log_retention_days=90),
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
        budget=BudgetConfig(monthly_limit_usd=60000),
        drift=DriftConfig(log_retention_days=365),
        tags=DEFAULT_TAGS,
    )


def default_configs(*, account: str | None = None,
                    eks_public_access_cidrs: tuple[str, ...] = ()) -> dict[str, StageConfig]:
    """The three stages as this repository deploys them.

    ``eks_public_access_cidrs`` (``-c eks_public_access_cidrs=...``) opens dev's
    EKS API endpoint publicly to those CIDRs only (the team's VPN or office
    egress); without it dev's endpoint is private like the others.
    """
    return {c.name: c for c in (
        _dev_config(account, tuple(eks_public_access_cidrs)),
        _staging_config(account),
        _prod_config(account),
    )}


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
