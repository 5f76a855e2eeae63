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
from dataclasses import dataclass, field, replace
from pathlib import Path
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


@dataclass(frozen=True)
class StageConfig:
    """Everything one stage deploys. Validated on construction."""

    name: str
    region: str
    network: NetworkConfig
    tags: StageTags
    storage: StorageConfig = field(default_factory=StorageConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
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
        self.idle_shutdown.validate(f"{prefix}.idle_shutdown")
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


def default_configs(*, account: str | None = None) -> dict[str, StageConfig]:
    """The three stages as this repository deploys them."""
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
        # Nobody trains in dev at night: the fleet goes to 0 at 20:00 on
        # weekdays and stays there over the weekend.
        idle_shutdown=IdleShutdownConfig(
            off_hours_scale_in_cron="0 20 * * MON-FRI",
            off_hours_scale_out_cron="0 7 * * MON-FRI",
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
        idle_shutdown=IdleShutdownConfig(
            off_hours_scale_in_cron="0 22 * * MON-FRI",
            off_hours_scale_out_cron="0 6 * * MON-FRI",
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
        # Long prod runs may sit on a barrier for a while: a longer window,
        # and no off-hours schedule.
        idle_shutdown=IdleShutdownConfig(window_minutes=30, launch_grace_minutes=30),
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
