"""One stage: its name, account, region, tags and every section."""

from __future__ import annotations

import re

from dataclasses import dataclass, field, replace

from ml_stacks.config.base import _ACCOUNT_RE, _REGION_RE, _TAG_VALUE_RE, _require
from ml_stacks.config.eks import EKS_UNSUPPORTED_ZONE_IDS, EksConfig
from ml_stacks.config.idle import IdleShutdownConfig
from ml_stacks.config.network import GATEWAY_ENDPOINT_PREFIX_LISTS, NetworkConfig
from ml_stacks.config.ops import AlertsConfig, BudgetConfig, DriftConfig
from ml_stacks.config.serving import ServingConfig
from ml_stacks.config.storage import StorageConfig
from ml_stacks.config.training import FLEET_INTERFACE_ENDPOINTS, TrainingConfig


# A stage name is part of every stack, endpoint, alarm and log group name;
# every derived name's length limit was checked against "staging", so no
# stage name may be longer.
STAGE_NAME_MAX = 7
_STAGE_NAME_RE = re.compile(r"^[a-z][a-z0-9]*$")


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
        _require(isinstance(self.name, str) and bool(_STAGE_NAME_RE.match(self.name))
                 and len(self.name) <= STAGE_NAME_MAX, "name", self.name,
                 f"lowercase letters and digits, starting with a letter, at most "
                 f"{STAGE_NAME_MAX} characters (such as 'perf')")
        prefix = self.name
        _require(isinstance(self.region, str) and bool(_REGION_RE.match(self.region)),
                 f"{prefix}.region", self.region, "an AWS region name such as 'us-east-1'")
        _require(self.account is None or bool(_ACCOUNT_RE.match(str(self.account))),
                 f"{prefix}.account", self.account,
                 "None (account-agnostic) or a 12-digit AWS account ID")
        self.network.validate(f"{prefix}.network", self.region)
        self.storage.validate(f"{prefix}.storage", self.name, self.region)
        self.alerts.validate(f"{prefix}.alerts")
        self.budget.validate(f"{prefix}.budget")
        self.drift.validate(f"{prefix}.drift")
        self.eks.validate(f"{prefix}.eks", self.name)
        self._validate_eks_zones(f"{prefix}.network.availability_zones")
        self.serving.validate(f"{prefix}.serving", stage=self.name, region=self.region)
        _require(isinstance(self.training, TrainingConfig), f"{prefix}.training", self.training,
                 "a TrainingConfig")
        self.training.validate(f"{prefix}.training")
        self._validate_training_egress(f"{prefix}.training.egress")
        self.idle_shutdown.validate(f"{prefix}.idle_shutdown")
        self.tags.validate(f"{prefix}.tags")

    def _validate_eks_zones(self, path: str) -> None:
        """The cluster uses a private subnet in every zone: none may be a zone
        EKS places no cluster in (zone IDs only; names: make preflight)."""
        refused = self.eks_refused_zone_ids
        for zone in self.network.availability_zones:
            _require(zone not in refused, path, zone,
                     f"a zone EKS can place a cluster in: not {', '.join(refused)} in {self.region}")

    @property
    def eks_refused_zone_ids(self) -> tuple[str, ...]:
        """Zone IDs the stage's EKS cluster cannot use (none without a cluster)."""
        return EKS_UNSUPPORTED_ZONE_IDS.get(self.region, ()) if self.eks.enabled else ()

    def _validate_training_egress(self, path: str) -> None:
        """A fleet without internet HTTPS must reach every AWS API it calls
        through an endpoint of its own VPC."""
        training = self.training
        if not training.enabled or training.reaches_internet_https:
            return
        missing = [e for e in FLEET_INTERFACE_ENDPOINTS if e not in self.network.interface_endpoints]
        _require(not missing, path, training.egress,
                 "a destination with HTTPS to 0.0.0.0/0 (INTERNET_HTTPS), or network.interface_endpoints "
                 "with " + ", ".join(missing) + ": the fleet calls these APIs and would reach none of them")
        _require(self.region in GATEWAY_ENDPOINT_PREFIX_LISTS, path, training.egress,
                 f"a destination with HTTPS to 0.0.0.0/0 (INTERNET_HTTPS), or the S3 and DynamoDB gateway "
                 f"prefix lists of {self.region} in GATEWAY_ENDPOINT_PREFIX_LISTS "
                 "(ml_stacks/config/network.py): without them the fleet reaches neither service")

    @property
    def stack_prefix(self) -> str:
        """Prefix of every CloudFormation stack name of this stage."""
        return f"ml-{self.name}"

    @property
    def regions(self) -> tuple[str, ...]:
        """Every region the stage deploys stacks to, its own first (then the
        replica's, when ``storage.replication_region`` is set)."""
        replica = self.storage.replication_region
        return (self.region,) + ((replica,) if replica is not None else ())

    def with_account(self, account: str | None) -> "StageConfig":
        return replace(self, account=account)
