"""The ``serving`` section: SageMaker real-time endpoints, one per model."""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Mapping

from ml_stacks import example_models
from ml_stacks.config.base import LOG_RETENTION_DAYS, _from_mapping, _is_int, _is_number, _require


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
# A SageMaker Model Registry model package group name.
MODEL_PACKAGE_GROUP_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
# SageMaker shadow tests exclude endpoints on Inf1 (Inferentia 1) instances.
_INF1_RE = re.compile(r"^ml\.inf1\.")
# Target concurrent requests per model (or per copy) of high-resolution scaling.
MAX_CONCURRENT_REQUESTS_TARGET = 1000


@dataclass(frozen=True)
class ShadowConfig:
    """A candidate version of a model served beside production as a shadow variant.

    SageMaker copies ``sampling_percent`` of the production requests to the
    candidate and discards its answers: callers only ever see production's.
    The candidate is either ``model_data_key`` in the model-artifacts bucket,
    served by ``image_tag``/``image_uri`` (default: production's image;
    required when production comes from the model registry, whose image is
    the package's), or ``model_package_version``, a version of the model's
    own ``model_package_group`` (pinned by ``make refresh-models`` like
    production's, approved or still pending), on ``instance_count``
    instances of ``instance_type`` (default: production's). Its latency and
    error alarms notify the alerts topic but never roll a deployment back:
    they inform the promotion, which is a config change (the candidate
    becomes the model, ``shadow`` goes; docs/models.md).
    """

    sampling_percent: int
    model_data_key: str | None = None
    image_tag: str | None = None
    image_uri: str | None = None
    instance_type: str | None = None
    instance_count: int = 1
    model_package_version: int | None = None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, path: str = "shadow") -> "ShadowConfig":
        kwargs = _from_mapping(cls, values, path)
        _require("sampling_percent" in kwargs, path, sorted(kwargs),
                 "a mapping with the required field sampling_percent")
        return cls(**kwargs)

    def validate(self, path: str, *, model: "ModelConfig", region: str) -> None:
        _require(not model.scale_to_zero, path, "shadow",
                 "None with scale_to_zero: an inference component endpoint's variant carries "
                 "no model, so SageMaker has nothing to shadow")
        _require(_is_int(self.sampling_percent) and 1 <= self.sampling_percent <= 100,
                 f"{path}.sampling_percent", self.sampling_percent,
                 "an integer from 1 to 100 (percent of production requests copied to the candidate)")
        if self.model_package_version is not None:
            self._validate_package_version(path, model)
        else:
            self._validate_artifact_candidate(path, model, region)
        self._validate_fleet(path)

    def _validate_artifact_candidate(self, path: str, model: "ModelConfig", region: str) -> None:
        key = self.model_data_key
        _require(isinstance(key, str) and len(key) <= 1024 and bool(_S3_KEY_RE.match(key))
                 and key.endswith(".tar.gz"), f"{path}.model_data_key", key,
                 "the S3 key of the candidate's model.tar.gz in the model-artifacts bucket, "
                 "e.g. 'my-model/v2/model.tar.gz', or a model_package_version")
        _require(self.image_tag is None or self.image_uri is None, f"{path}.image_tag", self.image_tag,
                 "at most one of image_tag or image_uri (neither: production's image)")
        if self.image_tag is None and self.image_uri is None:
            _require(model.model_package_group is None, f"{path}.image_uri", None,
                     "an image_tag or image_uri: production comes from the model registry, so "
                     "there is no production image to default to")
        _validate_image_choice(path, self.image_tag, self.image_uri, region)

    def _validate_package_version(self, path: str, model: "ModelConfig") -> None:
        version = self.model_package_version
        _require(_is_int(version) and version >= 1, f"{path}.model_package_version", version,
                 "None or a model package version number (1 or more)")
        _require(model.model_package_group is not None, f"{path}.model_package_version", version,
                 "None unless the model has a model_package_group (the candidate is a version of it)")
        _require(self.model_data_key is None, f"{path}.model_data_key", self.model_data_key,
                 "None with model_package_version (exactly one candidate)")
        _require(self.image_tag is None and self.image_uri is None, f"{path}.image_uri",
                 self.image_uri or self.image_tag,
                 "None with model_package_version: the model package names its image")

    def _validate_fleet(self, path: str) -> None:
        instance_type = self.instance_type
        if instance_type is not None:
            _require(isinstance(instance_type, str) and bool(_ML_INSTANCE_TYPE_RE.match(instance_type)),
                     f"{path}.instance_type", instance_type,
                     "None (production's) or a SageMaker instance type such as 'ml.g5.xlarge'")
            _require(not _INF1_RE.match(instance_type), f"{path}.instance_type", instance_type,
                     "not an Inf1 type: SageMaker shadow variants exclude Inf1 instances")
        _require(_is_int(self.instance_count) and 1 <= self.instance_count <= 100,
                 f"{path}.instance_count", self.instance_count, "an integer from 1 to 100")


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

    ``model_package_group`` serves the pinned ``Approved`` version of a
    SageMaker Model Registry group instead of an S3 artifact (a third
    choice beside ``model_data_key`` and ``example_model``; the package
    names its image, so ``image_tag``/``image_uri`` stay None). The version
    is pinned in ``ml_stacks/model_pins.json`` and changes only through
    ``make refresh-models STAGE=<stage>``: a new version is a reviewed diff.

    ``shadow`` (a ``ShadowConfig``) runs a candidate as a shadow variant
    beside production. ``target_concurrent_requests`` adds target tracking on
    the concurrent requests per model (per copy with ``scale_to_zero``),
    which SageMaker publishes every 10 seconds instead of every minute.
    A ``scale_to_zero`` model follows the stage's off-hours schedule
    (``idle_shutdown.off_hours_*``): no copy at night, serving again in the
    morning.
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
    model_package_group: str | None = None
    shadow: ShadowConfig | None = None
    target_concurrent_requests: float | None = None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, path: str = "model") -> "ModelConfig":
        """Build from a plain mapping (e.g. parsed YAML/JSON); unknown keys fail."""
        kwargs = _from_mapping(cls, values, path)
        if isinstance(kwargs.get("shadow"), Mapping):
            kwargs["shadow"] = ShadowConfig.from_dict(kwargs["shadow"], path=f"{path}.shadow")
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
        key, example, group = self.model_data_key, self.example_model, self.model_package_group
        _require(sum(v is not None for v in (key, example, group)) == 1, f"{path}.model_data_key", key,
                 "exactly one of model_data_key (a model.tar.gz you upload), example_model "
                 f"(shipped with the deploy; example_model is {example!r}) or model_package_group "
                 f"(a model registry group; model_package_group is {group!r})")
        if group is not None:
            _require(isinstance(group, str) and bool(MODEL_PACKAGE_GROUP_RE.match(group)),
                     f"{path}.model_package_group", group,
                     "a model package group name: 1 to 63 letters, digits and hyphens")
            _require(not self.scale_to_zero, f"{path}.model_package_group", group,
                     "None with scale_to_zero (an inference component takes an image and an "
                     "artifact, not a model package): serve a registry model on instances")
        elif key is not None:
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
        if self.shadow is not None:
            _require(isinstance(self.shadow, ShadowConfig), f"{path}.shadow", self.shadow,
                     "None or a ShadowConfig")
            self.shadow.validate(f"{path}.shadow", model=self, region=region)

    def _validate_image(self, path: str, region: str) -> None:
        has_tag, has_uri = self.image_tag is not None, self.image_uri is not None
        if self.model_package_group is not None:
            _require(not has_tag and not has_uri, f"{path}.image_uri", self.image_uri or self.image_tag,
                     "None with model_package_group: the model package names its image")
            return
        _require(has_tag != has_uri, f"{path}.image_tag", self.image_tag,
                 "exactly one of image_tag (in the stage's ECR repository) or image_uri")
        _validate_image_choice(path, self.image_tag, self.image_uri, region)

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
        _require(self.shadow is None or not _INF1_RE.match(self.instance_type), f"{path}.instance_type",
                 self.instance_type, "not an Inf1 type with shadow: SageMaker shadow variants exclude "
                 "endpoints on Inf1 instances")

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
        target = self.target_concurrent_requests
        if target is not None:
            _require(_is_number(target) and 0 < target <= MAX_CONCURRENT_REQUESTS_TARGET,
                     f"{path}.target_concurrent_requests", target,
                     f"None or a number above 0, at most {MAX_CONCURRENT_REQUESTS_TARGET} concurrent "
                     "requests per model (per copy with scale_to_zero)")

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


def _validate_image_choice(path: str, image_tag: str | None, image_uri: str | None,
                           region: str) -> None:
    """An ECR tag of the stage's repository or a full ECR URI in ``region``, whichever is set."""
    if image_tag is not None:
        _require(isinstance(image_tag, str) and bool(_IMAGE_TAG_RE.match(image_tag)),
                 f"{path}.image_tag", image_tag,
                 "an ECR image tag: letters, digits, _ . - (at most 128)")
    elif image_uri is not None:
        match = IMAGE_URI_RE.match(image_uri) if isinstance(image_uri, str) else None
        _require(match is not None, f"{path}.image_uri", image_uri,
                 "an ECR image URI <account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag> "
                 "(or @sha256:<digest>)")
        _require(match["region"] == region, f"{path}.image_uri", image_uri,
                 f"an image in the stage's region {region!r} (SageMaker pulls from its own region)")


@dataclass(frozen=True)
class ServingConfig:
    """The stage's SageMaker real-time endpoints: one per model.

    Adding a ``ModelConfig`` here is the only step to serve a model.
    ``log_retention_days`` applies to each endpoint's CloudWatch log group.
    """

    models: tuple[ModelConfig, ...] = ()
    log_retention_days: int = 30

    @property
    def model_package_groups(self) -> tuple[str, ...]:
        """The model registry groups the stage's models are served from, sorted."""
        return tuple(sorted({m.model_package_group for m in self.models
                             if m.model_package_group is not None}))

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
