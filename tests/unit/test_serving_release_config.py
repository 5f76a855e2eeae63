"""Release fields of a model's config: registry group, shadow candidate,
high-resolution scaling. Every rejection is one line naming field, value and fix."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ml_stacks.config import PYTORCH_CPU_INFERENCE_IMAGE, ConfigError, ModelConfig, ServingConfig, ShadowConfig
from tests.unit.test_serving_config import MODEL, ZERO_MODEL, stage

REGISTRY = replace(MODEL, image_tag=None, model_data_key=None, model_package_group="ranker-models")
SHADOW = ShadowConfig(sampling_percent=20, model_data_key="ranker/v2/model.tar.gz")


def test_a_registry_model_needs_neither_image_nor_artifact() -> None:
    [model] = stage(REGISTRY).serving.models
    assert model.model_package_group == "ranker-models"
    assert stage(REGISTRY, replace(REGISTRY, name="other", model_package_group="b-group"),
                 replace(MODEL, name="plain")).serving.model_package_groups == ("b-group", "ranker-models")


def test_shadow_and_high_resolution_scaling_are_valid_on_instances() -> None:
    [model] = stage(replace(MODEL, shadow=SHADOW, target_concurrent_requests=4)).serving.models
    assert model.shadow.sampling_percent == 20
    assert stage(replace(ZERO_MODEL, target_concurrent_requests=1.5))
    assert stage(replace(REGISTRY, shadow=replace(SHADOW, image_uri=PYTORCH_CPU_INFERENCE_IMAGE)))


@pytest.mark.parametrize(("model", "field", "value", "allowed"), [
    (replace(REGISTRY, model_data_key="ranker/v1/model.tar.gz"), "dev.serving.models.ranker.model_data_key",
     "ranker/v1/model.tar.gz", "exactly one of model_data_key"),
    (replace(REGISTRY, example_model="sentiment"), "dev.serving.models.ranker.model_data_key", None,
     "or model_package_group"),
    (replace(REGISTRY, model_package_group="ranker_models"), "dev.serving.models.ranker.model_package_group",
     "ranker_models", "model package group name"),
    (replace(REGISTRY, model_package_group="g" * 64), "dev.serving.models.ranker.model_package_group",
     "g" * 64, "1 to 63"),
    (replace(REGISTRY, image_tag="ranker-1.4.0"), "dev.serving.models.ranker.image_uri", "ranker-1.4.0",
     "the model package names its image"),
    (replace(REGISTRY, image_uri=PYTORCH_CPU_INFERENCE_IMAGE), "dev.serving.models.ranker.image_uri",
     PYTORCH_CPU_INFERENCE_IMAGE, "the model package names its image"),
    (replace(REGISTRY, scale_to_zero=True, min_instance_count=0), "dev.serving.models.ranker.model_package_group",
     "ranker-models", "None with scale_to_zero"),
    (replace(MODEL, target_concurrent_requests=0), "dev.serving.models.ranker.target_concurrent_requests", 0,
     "above 0"),
    (replace(MODEL, target_concurrent_requests=1001), "dev.serving.models.ranker.target_concurrent_requests",
     1001, "at most 1000"),
    (replace(MODEL, target_concurrent_requests="4"), "dev.serving.models.ranker.target_concurrent_requests",
     "4", "a number"),
    (replace(ZERO_MODEL, shadow=SHADOW), "dev.serving.models.ranker.shadow", "shadow",
     "None with scale_to_zero"),
    (replace(MODEL, shadow=replace(SHADOW, sampling_percent=0)), "dev.serving.models.ranker.shadow.sampling_percent",
     0, "1 to 100"),
    (replace(MODEL, shadow=replace(SHADOW, sampling_percent=101)),
     "dev.serving.models.ranker.shadow.sampling_percent", 101, "1 to 100"),
    (replace(MODEL, shadow=replace(SHADOW, model_data_key=None)), "dev.serving.models.ranker.shadow.model_data_key",
     None, "candidate's model.tar.gz"),
    (replace(MODEL, shadow=replace(SHADOW, model_data_key="ranker/v2.pt")),
     "dev.serving.models.ranker.shadow.model_data_key", "ranker/v2.pt", "candidate's model.tar.gz"),
    (replace(MODEL, shadow=replace(SHADOW, image_tag="a", image_uri=PYTORCH_CPU_INFERENCE_IMAGE)),
     "dev.serving.models.ranker.shadow.image_tag", "a", "at most one of image_tag or image_uri"),
    (replace(MODEL, shadow=replace(SHADOW, image_uri=PYTORCH_CPU_INFERENCE_IMAGE.replace("us-east-1", "eu-west-1"))),
     "dev.serving.models.ranker.shadow.image_uri", PYTORCH_CPU_INFERENCE_IMAGE.replace("us-east-1", "eu-west-1"),
     "stage's region"),
    (replace(REGISTRY, shadow=SHADOW), "dev.serving.models.ranker.shadow.image_uri", None,
     "no production image to default to"),
    (replace(MODEL, shadow=replace(SHADOW, instance_type="ml.inf1.xlarge")),
     "dev.serving.models.ranker.shadow.instance_type", "ml.inf1.xlarge", "exclude Inf1"),
    (replace(MODEL, shadow=replace(SHADOW, instance_type="g5.xlarge")),
     "dev.serving.models.ranker.shadow.instance_type", "g5.xlarge", "SageMaker instance type"),
    (replace(MODEL, shadow=replace(SHADOW, instance_count=0)), "dev.serving.models.ranker.shadow.instance_count",
     0, "1 to 100"),
    (replace(MODEL, instance_type="ml.inf1.xlarge", shadow=SHADOW), "dev.serving.models.ranker.instance_type",
     "ml.inf1.xlarge", "exclude endpoints on Inf1"),
    (replace(MODEL, shadow={"sampling_percent": 10}), "dev.serving.models.ranker.shadow",
     {"sampling_percent": 10}, "a ShadowConfig"),
])
def test_fails_when_a_release_value_is_not_allowed(model, field, value, allowed) -> None:
    with pytest.raises(ConfigError) as caught:
        stage(model)
    error = caught.value
    assert (error.field_path, error.value) == (field, value)
    assert allowed in error.allowed
    assert "\n" not in str(error)


def test_from_dict_builds_a_shadow_and_rejects_its_unknown_keys() -> None:
    serving = ServingConfig.from_dict({"models": [{
        "name": "ranker", "image_tag": "ranker-1.4.0", "model_data_key": "ranker/v1/model.tar.gz",
        "instance_type": "ml.m5.large",
        "shadow": {"sampling_percent": 20, "model_data_key": "ranker/v2/model.tar.gz"}}]})
    assert serving.models[0].shadow == SHADOW
    with pytest.raises(ConfigError, match=r"^serving\.models\[0\]\.shadow\.weight: 'weight' is not allowed"):
        ServingConfig.from_dict({"models": [{
            "name": "ranker", "image_tag": "1", "model_data_key": "r/model.tar.gz",
            "instance_type": "ml.m5.large", "shadow": {"sampling_percent": 5, "weight": 1}}]})
    with pytest.raises(ConfigError, match=r"required field sampling_percent$"):
        ModelConfig.from_dict({"name": "ranker", "image_tag": "1", "model_data_key": "r/model.tar.gz",
                               "instance_type": "ml.m5.large", "shadow": {"model_data_key": "x.tar.gz"}})


PENDING = ShadowConfig(sampling_percent=10, model_package_version=13)


def test_a_registry_model_can_shadow_another_version_of_its_group() -> None:
    [model] = stage(replace(REGISTRY, shadow=PENDING)).serving.models
    assert model.shadow.model_package_version == 13


@pytest.mark.parametrize(("model", "field", "value", "allowed"), [
    (replace(MODEL, shadow=PENDING), "dev.serving.models.ranker.shadow.model_package_version", 13,
     "None unless the model has a model_package_group"),
    (replace(REGISTRY, shadow=replace(PENDING, model_package_version=0)),
     "dev.serving.models.ranker.shadow.model_package_version", 0, "version number (1 or more)"),
    (replace(REGISTRY, shadow=replace(PENDING, model_data_key="r/model.tar.gz")),
     "dev.serving.models.ranker.shadow.model_data_key", "r/model.tar.gz", "exactly one candidate"),
    (replace(REGISTRY, shadow=replace(PENDING, image_uri=PYTORCH_CPU_INFERENCE_IMAGE)),
     "dev.serving.models.ranker.shadow.image_uri", PYTORCH_CPU_INFERENCE_IMAGE, "names its image"),
    (replace(REGISTRY, shadow=replace(PENDING, instance_count=101)),
     "dev.serving.models.ranker.shadow.instance_count", 101, "1 to 100"),
])
def test_fails_when_a_registry_shadow_value_is_not_allowed(model, field, value, allowed) -> None:
    with pytest.raises(ConfigError) as caught:
        stage(model)
    assert (caught.value.field_path, caught.value.value) == (field, value)
    assert allowed in caught.value.allowed
