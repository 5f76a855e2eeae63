"""Serving stack: one SageMaker real-time endpoint per model in the stage config.

Adding a ``ModelConfig`` to ``serving.models`` is the only step to serve a
model. Each model's constructs live under a construct named after the model,
so adding or removing one model never changes another's logical IDs.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from constructs import Construct

from constructs_lib.inference_endpoint import InferenceEndpoint, InferenceImage
from ml_stacks.base_stack import StageStack, log_retention
from ml_stacks.config import ModelConfig, StageConfig


class ServingStack(StageStack):
    """Exposes ``endpoints`` ({model name: ``InferenceEndpoint``}) and ``dashboard``."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: StageConfig,
        vpc: ec2.IVpc,
        key: kms.IKey,
        model_artifacts_bucket: s3.IBucket,
        data_capture_bucket: s3.IBucket,
        image_repository: ecr.IRepository,
        alerts_topic: sns.ITopic,
    ) -> None:
        super().__init__(scope, construct_id, config=config,
                         description=f"ml-infra {config.name}: SageMaker real-time endpoints")
        serving = config.serving
        retention = log_retention(serving.log_retention_days)
        self.endpoints: dict[str, InferenceEndpoint] = {}
        for model in serving.models:
            endpoint = InferenceEndpoint(
                self,
                model.name,
                endpoint_name=endpoint_name(config, model),
                image=_image(model, image_repository),
                model_data_bucket=model_artifacts_bucket,
                model_data_key=model.model_data_key,
                capture_bucket=data_capture_bucket,
                capture_prefix=f"{model.name}/",
                key=key,
                vpc=vpc,
                instance_type=model.instance_type,
                environment=model.environment,
                initial_instance_count=model.initial_instance_count,
                min_instance_count=model.min_instance_count,
                max_instance_count=model.max_instance_count,
                target_invocations_per_instance=model.target_invocations_per_instance,
                scale_in_cooldown=cdk.Duration.seconds(model.scale_in_cooldown_seconds),
                scale_out_cooldown=cdk.Duration.seconds(model.scale_out_cooldown_seconds),
                gpu_utilization_target_percent=model.gpu_utilization_target_percent,
                capture_sampling_percent=model.capture_sampling_percent,
                capture_json_content_types=model.capture_json_content_types,
                capture_csv_content_types=model.capture_csv_content_types,
                alarm_topic=alerts_topic,
                alarm_5xx_errors=model.alarm_5xx_errors,
                alarm_4xx_rate_percent=model.alarm_4xx_rate_percent,
                alarm_latency_p99=cdk.Duration.millis(model.alarm_latency_p99_ms),
                deployment=model.deployment,
                deployment_step_percent=model.deployment_step_percent,
                deployment_wait=cdk.Duration.seconds(model.deployment_wait_seconds),
                deployment_termination_wait=cdk.Duration.seconds(
                    model.deployment_termination_wait_seconds),
                scale_to_zero=model.scale_to_zero,
                component_cpu_cores=model.component_cpu_cores,
                component_memory_mb=model.component_memory_mb,
                component_accelerators=model.component_accelerators,
                log_retention=retention,
            )
            self.endpoints[model.name] = endpoint
            cdk.CfnOutput(self, f"{_output_id(model.name)}EndpointName",
                          value=endpoint.endpoint_name,
                          description=f"InvokeEndpoint target of model {model.name}")

        self.dashboard = cloudwatch.Dashboard(
            self, "Dashboard",
            dashboard_name=f"{config.stack_prefix}-serving",
            default_interval=cdk.Duration.hours(3),
        )
        self.dashboard.add_widgets(cloudwatch.TextWidget(
            markdown=(f"# ml-infra {config.name}: SageMaker endpoints\n"
                      + (", ".join(f"`{e.endpoint_name}`" for e in self.endpoints.values())
                         or "No models are configured in `serving.models`.")),
            width=24, height=2,
        ))
        for endpoint in self.endpoints.values():
            self.dashboard.add_widgets(*_endpoint_widgets(endpoint))


def endpoint_name(config: StageConfig, model: ModelConfig) -> str:
    """The SageMaker endpoint name of ``model`` in ``config``'s stage."""
    return f"{config.stack_prefix}-{model.name}"


def _image(model: ModelConfig, repository: ecr.IRepository) -> InferenceImage:
    if model.image_tag is not None:
        return InferenceImage.from_repository(repository, model.image_tag)
    return InferenceImage.from_uri(model.image_uri)


def _output_id(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-") if part)


def _endpoint_widgets(endpoint: InferenceEndpoint) -> list[cloudwatch.IWidget]:
    name = endpoint.endpoint_name
    return [
        cloudwatch.GraphWidget(
            title=f"{name}: invocations", width=5,
            left=[endpoint.metric_invocations()]),
        cloudwatch.GraphWidget(
            title=f"{name}: model latency (µs)", width=5,
            left=[endpoint.metric_model_latency(statistic="p50"),
                  endpoint.metric_model_latency(statistic="p99")]),
        cloudwatch.GraphWidget(
            title=f"{name}: errors", width=5,
            left=[endpoint.metric_invocation_4xx_errors(), endpoint.metric_invocation_5xx_errors()]),
        cloudwatch.GraphWidget(
            title=f"{name}: instances", width=4,
            left=[endpoint.metric_instance_count()]),
        cloudwatch.GraphWidget(
            title=f"{name}: GPU utilization (%)", width=5,
            left=[endpoint.metric_gpu_utilization()]),
    ]
