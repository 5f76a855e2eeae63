"""Serving config validation: every rejection names the field, the value and what is allowed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ml_stacks.config import (
    PYTORCH_CPU_INFERENCE_IMAGE,
    ConfigError,
    ModelConfig,
    NetworkConfig,
    ServingConfig,
    StageConfig,
    StageTags,
    StorageConfig,
    default_configs,
)

TAGS = StageTags(team="t", project="p", cost_center="c", repository="r")
MODEL = ModelConfig(name="ranker", image_tag="ranker-1.4.0", model_data_key="ranker/v1/model.tar.gz",
                    instance_type="ml.m5.large")
GPU_MODEL = replace(MODEL, instance_type="ml.g5.xlarge")
ZERO_MODEL = replace(MODEL, scale_to_zero=True, min_instance_count=0)


def stage(*models: ModelConfig, name: str = "dev", region: str = "us-east-1") -> StageConfig:
    return StageConfig(
        name=name, region=region, tags=TAGS,
        network=NetworkConfig(vpc_cidr="10.0.0.0/16",
                              availability_zones=(f"{region}a", f"{region}b")),
        serving=ServingConfig(models=models),
    )


def test_every_model_of_every_stage_has_a_smoke_payload_and_an_image_in_its_region() -> None:
    for name, config in default_configs().items():
        for model in config.serving.models:
            # Every model has something make smoke can send.
            assert model.payload_path is not None, (name, model.name)
            # Exactly one image source; a full URI is in the stage's region.
            assert (model.image_uri is None) != (model.image_tag is None), (name, model.name)
            if model.image_uri is not None:
                assert f".dkr.ecr.{config.region}.amazonaws.com/" in model.image_uri, (name, model.name)
            # Scale to zero is dev's alone, and then scales in to 0.
            assert not model.scale_to_zero or (name, model.min_instance_count) == ("dev", 0), model.name


def test_the_public_dlc_images_are_the_pytorch_inference_images_of_the_region() -> None:
    assert PYTORCH_CPU_INFERENCE_IMAGE.startswith("763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:")
    assert "-cpu-" in PYTORCH_CPU_INFERENCE_IMAGE


def test_every_model_ships_an_example_or_names_the_artifact_preflight_checks() -> None:
    """An example model ships with the deploy and brings its payload; any other names its upload."""
    for name, config in default_configs().items():
        for model in config.serving.models:
            assert (model.example_model is None) != (model.model_data_key is None), (name, model.name)
            if model.example_model is not None:
                assert model.payload_path == (model.smoke_payload
                                              or f"examples/models/{model.example_model}/payload.json")
            else:
                assert model.model_data_key.endswith(".tar.gz"), (name, model.name)


def test_example_model_alone_is_a_valid_artifact_and_brings_its_payload() -> None:
    model = replace(MODEL, model_data_key=None, example_model="sentiment")
    [built] = stage(model).serving.models
    assert built.payload_path == "examples/models/sentiment/payload.json"
    assert replace(built, smoke_payload="payloads/ranker.csv").payload_path == "payloads/ranker.csv"
    assert MODEL.payload_path is None


@pytest.mark.parametrize("model", [
    replace(MODEL, example_model="sentiment"),
    replace(MODEL, model_data_key=None),
], ids=["both", "neither"])
def test_fails_unless_exactly_one_of_model_data_key_and_example_model(model) -> None:
    with pytest.raises(ConfigError) as caught:
        stage(model)
    assert caught.value.field_path == "dev.serving.models.ranker.model_data_key"
    assert caught.value.allowed.startswith("exactly one of model_data_key")
    assert "\n" not in str(caught.value)


def test_fails_when_the_example_model_is_not_in_the_repository() -> None:
    with pytest.raises(ConfigError, match=r"^dev\.serving\.models\.ranker\.example_model: 'missing' is not "
                                          r"allowed — a directory of examples/models .*: sentiment$"):
        stage(replace(MODEL, model_data_key=None, example_model="missing"))


@pytest.mark.parametrize("payload", ["/etc/passwd.json", "../outside.json", "payloads/ranker.txt", "", 3])
def test_fails_when_the_smoke_payload_is_not_a_repository_json_or_csv_file(payload) -> None:
    with pytest.raises(ConfigError) as caught:
        stage(replace(MODEL, smoke_payload=payload))
    assert caught.value.field_path == "dev.serving.models.ranker.smoke_payload"


def test_model_defaults_match_the_documented_ones() -> None:
    assert (MODEL.target_invocations_per_instance, MODEL.scale_in_cooldown_seconds,
            MODEL.scale_out_cooldown_seconds) == (70, 300, 60)
    assert MODEL.deployment == "canary"
    assert ServingConfig().models == ()


def test_a_stage_without_models_is_valid() -> None:
    assert stage().serving.models == ()


@pytest.mark.parametrize(
    ("model", "field", "value", "allowed"),
    [
        (replace(MODEL, name="Ranker_v2"), "dev.serving.models.name", "Ranker_v2", "letters, digits and hyphens"),
        (replace(MODEL, name="-ranker"), "dev.serving.models.name", "-ranker", "starting and ending"),
        (replace(MODEL, name="r" * 41), "dev.serving.models.name", "r" * 41, "1 to 40"),
        (replace(MODEL, name=""), "dev.serving.models.name", "", "1 to 40"),
        (replace(MODEL, image_tag=None), "dev.serving.models.ranker.image_tag", None, "exactly one of"),
        (replace(MODEL, image_uri=PYTORCH_CPU_INFERENCE_IMAGE), "dev.serving.models.ranker.image_tag",
         "ranker-1.4.0", "exactly one of"),
        (replace(MODEL, image_tag="latest?"), "dev.serving.models.ranker.image_tag", "latest?", "ECR image tag"),
        (replace(MODEL, image_tag=None, image_uri="docker.io/pytorch/pytorch:latest"),
         "dev.serving.models.ranker.image_uri", "docker.io/pytorch/pytorch:latest", "ECR image URI"),
        (replace(MODEL, image_tag=None, image_uri=PYTORCH_CPU_INFERENCE_IMAGE.replace("us-east-1", "eu-west-1")),
         "dev.serving.models.ranker.image_uri", PYTORCH_CPU_INFERENCE_IMAGE.replace("us-east-1", "eu-west-1"),
         "stage's region 'us-east-1'"),
        (replace(MODEL, model_data_key="/ranker/model.tar.gz"), "dev.serving.models.ranker.model_data_key",
         "/ranker/model.tar.gz", "no leading slash"),
        (replace(MODEL, model_data_key="ranker/model.pt"), "dev.serving.models.ranker.model_data_key",
         "ranker/model.pt", "model.tar.gz"),
        (replace(MODEL, environment={"1BAD": "x"}), "dev.serving.models.ranker.environment", "1BAD",
         "variable names"),
        (replace(MODEL, environment={"OK": 3}), "dev.serving.models.ranker.environment.OK", 3, "a string"),
        (replace(MODEL, environment={f"V{i}": "x" for i in range(17)}), "dev.serving.models.ranker.environment",
         {f"V{i}": "x" for i in range(17)}, "at most 16"),
        (replace(MODEL, instance_type="g5.xlarge"), "dev.serving.models.ranker.instance_type", "g5.xlarge",
         "starting with 'ml.'"),
        (replace(MODEL, instance_type="ml.big"), "dev.serving.models.ranker.instance_type", "ml.big",
         "starting with 'ml.'"),
        (replace(MODEL, initial_instance_count=0, min_instance_count=0),
         "dev.serving.models.ranker.initial_instance_count", 0, "at least 1"),
        (replace(MODEL, initial_instance_count=3, max_instance_count=2),
         "dev.serving.models.ranker.min/initial/max_instance_count", (1, 3, 2),
         "min_instance_count ≤ initial_instance_count ≤ max_instance_count"),
        (replace(MODEL, min_instance_count=2, initial_instance_count=1),
         "dev.serving.models.ranker.min/initial/max_instance_count", (2, 1, 2),
         "min_instance_count ≤ initial_instance_count"),
        (replace(MODEL, max_instance_count=101), "dev.serving.models.ranker.max_instance_count", 101, "0 to 100"),
        (replace(MODEL, min_instance_count=True), "dev.serving.models.ranker.min_instance_count", True,
         "an integer"),
        (replace(MODEL, min_instance_count=0), "dev.serving.models.ranker.min_instance_count", 0,
         "only scale_to_zero endpoints"),
        (replace(ZERO_MODEL, initial_instance_count=1, max_instance_count=0),
         "dev.serving.models.ranker.max_instance_count", 0, "at least 1"),
        (replace(MODEL, environment=[("A", "b")]), "dev.serving.models.ranker.environment", [("A", "b")],
         "a mapping"),
        (replace(MODEL, scale_to_zero="yes"), "dev.serving.models.ranker.scale_to_zero", "yes", "True or False"),
        (replace(ZERO_MODEL, component_accelerators=17), "dev.serving.models.ranker.component_accelerators", 17,
         "0 to 16"),
        (replace(ZERO_MODEL, instance_type="ml.g5.xlarge", gpu_utilization_target_percent=70),
         "dev.serving.models.ranker.gpu_utilization_target_percent", 70, "None with scale_to_zero"),
        (replace(ZERO_MODEL, min_instance_count=1), "dev.serving.models.ranker.min_instance_count", 1,
         "0 with scale_to_zero"),
        (replace(ZERO_MODEL, component_memory_mb=64), "dev.serving.models.ranker.component_memory_mb", 64,
         "from 128"),
        (replace(ZERO_MODEL, component_cpu_cores=0), "dev.serving.models.ranker.component_cpu_cores", 0,
         "above 0"),
        (replace(ZERO_MODEL, component_accelerators=1), "dev.serving.models.ranker.component_accelerators", 1,
         "without GPUs"),
        (replace(MODEL, target_invocations_per_instance=0),
         "dev.serving.models.ranker.target_invocations_per_instance", 0, "1 to 100000"),
        (replace(MODEL, scale_in_cooldown_seconds=-1), "dev.serving.models.ranker.scale_in_cooldown_seconds", -1,
         "0 to 3600"),
        (replace(MODEL, scale_out_cooldown_seconds=7200), "dev.serving.models.ranker.scale_out_cooldown_seconds",
         7200, "0 to 3600"),
        (replace(MODEL, gpu_utilization_target_percent=70),
         "dev.serving.models.ranker.gpu_utilization_target_percent", 70, "GPU instance type"),
        (replace(GPU_MODEL, gpu_utilization_target_percent=0),
         "dev.serving.models.ranker.gpu_utilization_target_percent", 0, "1 to 800"),
        (replace(MODEL, capture_sampling_percent=101), "dev.serving.models.ranker.capture_sampling_percent", 101,
         "0 to 100"),
        (replace(MODEL, capture_sampling_percent=-1), "dev.serving.models.ranker.capture_sampling_percent", -1,
         "0 to 100"),
        (replace(MODEL, capture_json_content_types=("json",)),
         "dev.serving.models.ranker.capture_json_content_types", "json", "content type"),
        (replace(MODEL, capture_csv_content_types=["text/csv"]),
         "dev.serving.models.ranker.capture_csv_content_types", ["text/csv"], "a tuple"),
        (replace(MODEL, capture_json_content_types=tuple(f"application/x{i}" for i in range(11))),
         "dev.serving.models.ranker.capture_json_content_types",
         tuple(f"application/x{i}" for i in range(11)), "at most 10"),
        (replace(MODEL, alarm_5xx_errors=0), "dev.serving.models.ranker.alarm_5xx_errors", 0, "1 to 100000"),
        (replace(MODEL, alarm_4xx_rate_percent=0), "dev.serving.models.ranker.alarm_4xx_rate_percent", 0,
         "above 0"),
        (replace(MODEL, alarm_latency_p99_ms=61_000), "dev.serving.models.ranker.alarm_latency_p99_ms", 61_000,
         "time out after 60 s"),
        (replace(MODEL, deployment="rolling"), "dev.serving.models.ranker.deployment", "rolling",
         "canary, linear, all_at_once"),
        (replace(MODEL, deployment_step_percent=60), "dev.serving.models.ranker.deployment_step_percent", 60,
         "1 to 50"),
        (replace(MODEL, deployment_wait_seconds=3601), "dev.serving.models.ranker.deployment_wait_seconds", 3601,
         "0 to 3600"),
        (replace(MODEL, deployment_termination_wait_seconds=-5),
         "dev.serving.models.ranker.deployment_termination_wait_seconds", -5, "0 to 3600"),
    ],
)
def test_fails_when_a_model_value_is_not_allowed(model, field, value, allowed) -> None:
    with pytest.raises(ConfigError) as caught:
        stage(model)
    error = caught.value
    assert error.field_path == field
    assert error.value == value
    assert allowed in error.allowed
    assert str(error).startswith(f"{field}: {value!r} is not allowed — ")


def test_fails_when_scale_to_zero_is_used_outside_dev() -> None:
    with pytest.raises(ConfigError, match=r"^staging\.serving\.models\.ranker\.scale_to_zero: True is not "
                                          r"allowed — False outside dev"):
        stage(ZERO_MODEL, name="staging")


def test_fails_when_two_models_share_a_name() -> None:
    with pytest.raises(ConfigError, match=r"dev\.serving\.models: \['ranker'\] is not allowed — each model "
                                          r"name once"):
        stage(MODEL, replace(MODEL, model_data_key="ranker/v2/model.tar.gz"))


def test_fails_when_log_retention_is_not_a_cloudwatch_value() -> None:
    with pytest.raises(ConfigError, match=r"dev\.serving\.log_retention_days: 10 is not allowed"):
        StageConfig(name="dev", region="us-east-1", tags=TAGS,
                    network=NetworkConfig(vpc_cidr="10.0.0.0/16", availability_zones=("us-east-1a",)),
                    serving=ServingConfig(models=(MODEL,), log_retention_days=10))


def test_gpu_policy_and_accelerators_are_allowed_on_gpu_instances() -> None:
    model = replace(GPU_MODEL, gpu_utilization_target_percent=70)
    assert stage(model).serving.models[0].is_gpu
    assert stage(replace(ZERO_MODEL, instance_type="ml.g5.xlarge", component_accelerators=1))


def test_from_dict_builds_the_same_config() -> None:
    serving = ServingConfig.from_dict({"models": [{
        "name": "ranker", "image_tag": "ranker-1.4.0", "model_data_key": "ranker/v1/model.tar.gz",
        "instance_type": "ml.m5.large", "capture_json_content_types": ["application/json"]}]})
    assert serving == ServingConfig(models=(replace(MODEL, capture_json_content_types=("application/json",)),))


def test_from_dict_rejects_an_unknown_model_key_and_lists_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        ModelConfig.from_dict({"name": "ranker", "instance_type": "ml.m5.large",
                               "model_data_key": "ranker/model.tar.gz", "image_tag": "1",
                               "instance_count": 2}, path="dev.serving.models[0]")
    error = caught.value
    assert error.field_path == "dev.serving.models[0].instance_count"
    assert error.value == "instance_count"
    assert error.allowed.startswith("a known field: name, instance_type, model_data_key, example_model, "
                                    "smoke_payload, image_tag")
    assert "initial_instance_count" in error.allowed


def test_from_dict_rejects_an_unknown_serving_key() -> None:
    with pytest.raises(ConfigError, match=r"serving\.model: 'model' is not allowed — a known field: models, "
                                          r"log_retention_days"):
        ServingConfig.from_dict({"model": []})


def test_from_dict_names_the_missing_required_fields() -> None:
    with pytest.raises(ConfigError, match=r"a mapping with the required fields instance_type$"):
        ModelConfig.from_dict({"name": "ranker"})


def test_from_dict_rejects_a_model_that_is_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"serving\.models\[0\]: 'ranker' is not allowed — a mapping"):
        ServingConfig.from_dict({"models": ["ranker"]})


def test_fails_when_models_is_not_a_tuple_of_model_configs() -> None:
    with pytest.raises(ConfigError, match=r"dev\.serving\.models: .* is not allowed — a tuple of ModelConfig"):
        StageConfig(name="dev", region="us-east-1", tags=TAGS,
                    network=NetworkConfig(vpc_cidr="10.0.0.0/16", availability_zones=("us-east-1a",)),
                    serving=ServingConfig(models=[MODEL]))


def test_fails_when_data_captures_would_never_expire() -> None:
    with pytest.raises(ConfigError, match=r"dev\.storage\.data_capture_expiration_days: 0 is not allowed — an "
                                          r"integer from 1 to 3650"):
        StageConfig(name="dev", region="us-east-1", tags=TAGS,
                    network=NetworkConfig(vpc_cidr="10.0.0.0/16", availability_zones=("us-east-1a",)),
                    storage=StorageConfig(retain=False, data_capture_expiration_days=0))
