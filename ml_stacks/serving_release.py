"""How a model is released: registry pins, shadow candidates, high-resolution
scaling and off hours, from a ``ModelConfig`` to ``InferenceEndpoint`` props.

Each model's serving stack passes ``release_props(...)`` to its endpoint and,
with a shadow, gives the model a dashboard of ``shadow_widgets(endpoint)``
(production beside the shadow); everything else about serving stays in the
stack.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_s3 as s3
from constructs import Construct

from constructs_lib.inference_endpoint import (
    InferenceEndpoint,
    InferenceImage,
    InferenceModelPackage,
    ShadowVariant,
)
from constructs_lib.off_hours import OffHoursSchedule
from ml_stacks import model_pins
from ml_stacks.config import ModelConfig, StageConfig


def release_props(scope: Construct, config: StageConfig, model: ModelConfig, *,
                  model_artifacts_bucket: s3.IBucket, image_repository: ecr.IRepository
                  ) -> dict[str, Any]:
    """The ``InferenceEndpoint`` keyword arguments of ``model``'s release
    features, for its endpoint in ``scope``'s stack."""
    props: dict[str, Any] = {"target_concurrent_requests": model.target_concurrent_requests}
    shadow = model.shadow
    pin = None
    if model.model_package_group is not None:
        pin = model_pins.model_pin(
            config.name, model.name, model.model_package_group, region=config.region,
            account=config.account, shadow_version=shadow.model_package_version if shadow else None)
        props["model_package"] = _package(pin)
    if shadow is not None:
        fleet = {"sampling_percent": shadow.sampling_percent, "instance_count": shadow.instance_count,
                 "instance_type": shadow.instance_type or model.instance_type}
        if shadow.model_package_version is not None:
            props["shadow"] = ShadowVariant(model_package=_package(pin.shadow), **fleet)
        else:
            props["shadow"] = ShadowVariant(
                image=_shadow_image(scope, model, image_repository), model_data_bucket=model_artifacts_bucket,
                model_data_key=shadow.model_data_key, **fleet)
    idle = config.idle_shutdown
    if model.scale_to_zero and idle.off_hours:
        props["off_hours"] = OffHoursSchedule(scale_in_cron=idle.off_hours_scale_in_cron,
                                              scale_out_cron=idle.off_hours_scale_out_cron,
                                              time_zone=idle.off_hours_time_zone)
    return props


def _package(pin: model_pins.ModelPin) -> InferenceModelPackage:
    return InferenceModelPackage(pin.model_package_arn, [(c.image, c.model_data_url) for c in pin.containers])


def _shadow_image(scope: Construct, model: ModelConfig, repository: ecr.IRepository) -> InferenceImage:
    """The candidate's own image if it names one, otherwise production's."""
    tag = model.shadow.image_tag if model.shadow.image_uri is None else None
    uri = model.shadow.image_uri
    if tag is None and uri is None:
        tag, uri = model.image_tag, model.image_uri
    if tag is not None:
        return InferenceImage.from_repository(repository, tag, scope=scope)
    return InferenceImage.from_uri(uri)


def shadow_widgets(endpoint: InferenceEndpoint) -> list[cloudwatch.IWidget]:
    """Production and shadow side by side (latency, errors, invocations); none without a shadow."""
    if endpoint.shadow is None:
        return []
    name = endpoint.endpoint_name
    pairs = [
        ("model latency p99 (µs)", endpoint.metric_model_latency(statistic="p99"),
         endpoint.metric_shadow("ModelLatency", statistic="p99")),
        ("5XX errors", endpoint.metric_invocation_5xx_errors(),
         endpoint.metric_shadow("Invocation5XXErrors")),
        ("invocations (shadow: the sampled copies)", endpoint.metric_invocations(),
         endpoint.metric_shadow("Invocations")),
    ]
    return [cloudwatch.GraphWidget(title=f"{name}: {title}, production vs shadow", width=8,
                                   left=[production.with_(label="production"),
                                         shadow.with_(label="shadow")])
            for title, production, shadow in pairs]
