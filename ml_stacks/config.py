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
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Iterable, Mapping

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
    ``data_capture_expiration_days``: how long endpoint request/response
    captures (which may hold personal data) are kept.
    """

    retain: bool = True
    checkpoint_expiration_days: int = 30
    model_noncurrent_expiration_days: int = 30
    ecr_keep_tagged_images: int = 10
    ecr_immutable_tags: bool = True
    access_log_expiration_days: int = 365
    data_capture_expiration_days: int = 90

    def validate(self, prefix: str, stage: str) -> None:
        _require(self.retain or stage == "dev", f"{prefix}.retain", self.retain,
                 "True outside dev: staging and prod never delete stateful data with their stack")
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


# --- serving (SageMaker real-time endpoints) --------------------------------

# SageMaker resource names (endpoints, variants, components): letters, digits
# and single or repeated hyphens, starting and ending with a letter or digit.
_SAGEMAKER_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
# Every name derived from a model (endpoint "ml-<stage>-<model>", alarm and
# log group names) stays under SageMaker's 63 characters with this limit.
MODEL_NAME_MAX = 40
_INSTANCE_TYPE_RE = re.compile(r"^ml\.[a-z0-9-]+\.[a-z0-9]+$")
_GPU_INSTANCE_RE = re.compile(r"^ml\.(g|p)[0-9][a-z0-9-]*\.")
_IMAGE_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
IMAGE_URI_RE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?"
    r"/(?P<repository>[a-z0-9]+(?:[._/-][a-z0-9]+)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127})|@sha256:[0-9a-f]{64})$"
)
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


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
    (``ml-<stage>/images``) or a full ECR ``image_uri`` in the stage's region
    (e.g. an AWS Deep Learning Container); exactly one of the two.
    ``model_data_key`` is the ``model.tar.gz`` object in the stage's
    model-artifacts bucket; the endpoint's role may read that object only.

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
    model_data_key: str
    instance_type: str
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

    def validate(self, prefix: str, *, stage: str, region: str) -> None:
        name = self.name
        _require(isinstance(name, str) and bool(_SAGEMAKER_NAME_RE.match(name))
                 and len(name) <= MODEL_NAME_MAX, f"{prefix}.name", name,
                 f"1 to {MODEL_NAME_MAX} letters, digits and hyphens, starting and ending with "
                 "a letter or digit (it names the SageMaker endpoint ml-<stage>-<name>)")
        path = f"{prefix}.{name}"

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

        key = self.model_data_key
        _require(isinstance(key, str) and len(key) <= 1024 and bool(_S3_KEY_RE.match(key))
                 and key.endswith(".tar.gz"), f"{path}.model_data_key", key,
                 "an S3 key of a model.tar.gz in the model-artifacts bucket, "
                 "e.g. 'my-model/v1/model.tar.gz' (no leading slash)")

        env = self.environment
        _require(isinstance(env, Mapping) and len(env) <= MAX_ENVIRONMENT, f"{path}.environment",
                 env, f"a mapping of at most {MAX_ENVIRONMENT} variables")
        for env_key, env_value in env.items():
            _require(isinstance(env_key, str) and bool(_ENV_KEY_RE.match(env_key)),
                     f"{path}.environment", env_key,
                     "variable names of letters, digits and _, not starting with a digit")
            _require(isinstance(env_value, str) and len(env_value) <= 1024,
                     f"{path}.environment.{env_key}", env_value, "a string of at most 1024 characters")

        _require(isinstance(self.instance_type, str) and self.instance_type.startswith("ml.")
                 and bool(_INSTANCE_TYPE_RE.match(self.instance_type)), f"{path}.instance_type",
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


@dataclass(frozen=True)
class StageConfig:
    """Everything one stage deploys. Validated on construction."""

    name: str
    region: str
    network: NetworkConfig
    tags: StageTags
    storage: StorageConfig = field(default_factory=StorageConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
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
        self.serving.validate(f"{prefix}.serving", stage=self.name, region=self.region)
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
                              ecr_immutable_tags=False, data_capture_expiration_days=30),
        # Dev serves on CPU through a scale-to-zero inference component: an
        # idle dev endpoint costs nothing, the first request after idling
        # waits for an instance.
        serving=ServingConfig(models=(
            ModelConfig(
                name="classifier",
                image_uri=PYTORCH_CPU_INFERENCE_IMAGE,
                model_data_key="classifier/model.tar.gz",
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
        # Staging runs what prod runs, on the smallest fleet that still shows
        # a blue/green deployment.
        serving=ServingConfig(models=(
            ModelConfig(
                name="classifier",
                image_uri=PYTORCH_GPU_INFERENCE_IMAGE,
                model_data_key="classifier/model.tar.gz",
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
        # Two instances in two AZs so one failure never takes the endpoint
        # down; new versions take 10% of capacity for 10 minutes first.
        serving=ServingConfig(models=(
            ModelConfig(
                name="classifier",
                image_uri=PYTORCH_GPU_INFERENCE_IMAGE,
                model_data_key="classifier/model.tar.gz",
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
