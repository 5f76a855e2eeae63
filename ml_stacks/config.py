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
        budget=BudgetConfig(monthly_limit_usd=1500),
        drift=DriftConfig(log_retention_days=30),
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
        budget=BudgetConfig(monthly_limit_usd=5000),
        drift=DriftConfig(log_retention_days=90),
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
        budget=BudgetConfig(monthly_limit_usd=60000),
        drift=DriftConfig(log_retention_days=365),
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
