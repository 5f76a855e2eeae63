"""Stages serving many models, for the scale test and bench/serving_scale.py.

``with_models(config, n)`` keeps the stage's own models and adds generated
ones of three real-shaped kinds in turn until it serves ``n``: a CPU model
from the stage's image repository (``image_tag``), a GPU model from the AWS
Deep Learning Container with GPU scaling and a linear deployment, and a CPU
model from the DLC with a canary. Every artifact is a ``model_data_key``.
"""

from __future__ import annotations

from dataclasses import replace

from ml_stacks.config import ModelConfig, StageConfig, pytorch_inference_image


def generated_model(index: int, region: str) -> ModelConfig:
    """Model number ``index`` of a large stage (``model-<index>``)."""
    name = f"model-{index:03d}"
    kind = index % 3
    if kind == 0:
        return ModelConfig(name=name, image_tag=f"{name}-1.0.0", instance_type="ml.c5.xlarge",
                           model_data_key=f"{name}/v1/model.tar.gz", max_instance_count=3)
    if kind == 1:
        return ModelConfig(name=name, image_uri=pytorch_inference_image(region, gpu=True),
                           instance_type="ml.g5.xlarge", model_data_key=f"{name}/v1/model.tar.gz",
                           gpu_utilization_target_percent=70, deployment="linear",
                           deployment_step_percent=25)
    return ModelConfig(name=name, image_uri=pytorch_inference_image(region, gpu=False),
                       instance_type="ml.m5.large", model_data_key=f"{name}/v1/model.tar.gz")


def with_models(config: StageConfig, count: int) -> StageConfig:
    """``config`` serving ``count`` models: its own first, then generated ones."""
    own = config.serving.models[:count]
    extra = tuple(generated_model(i, config.region) for i in range(len(own), count))
    return replace(config, serving=replace(config.serving, models=own + extra))


def with_new_version(config: StageConfig, name: str) -> StageConfig:
    """``config`` with model ``name`` moved to its next artifact version (``v2``)."""
    models = tuple(replace(m, model_data_key=m.model_data_key.replace("/v1/", "/v2/"))
                   if m.name == name else m for m in config.serving.models)
    return replace(config, serving=replace(config.serving, models=models))
