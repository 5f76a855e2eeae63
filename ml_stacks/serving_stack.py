"""Serving stack: one SageMaker real-time endpoint per model in the stage config.

Adding a ``ModelConfig`` to ``serving.models`` is the only step to serve a
model. Each model's constructs live under a construct named after the model,
so adding or removing one model never changes another's logical IDs.

A model's artifact is either an object its owner uploaded to the stage's
model-artifacts bucket (``model_data_key``) or an example model from
``examples/models/`` (``example_model``), archived at synth time and shipped
as a CDK file asset: the deploy uploads it to the bootstrap bucket before any
stack changes, so the endpoint has something to load on a fresh account.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_sns as sns
from constructs import Construct

from constructs_lib.inference_endpoint import InferenceEndpoint, InferenceImage
from ml_stacks import example_models
from ml_stacks.base_stack import StageStack, log_retention
from ml_stacks.config import ModelConfig, StageConfig
from ml_stacks.serving_release import release_props, shadow_widgets


class ServingStack(StageStack):
    """Exposes ``endpoints`` ({model name: ``InferenceEndpoint``}),
    ``example_assets`` ({model name: the asset of its example model}) and
    ``dashboard``. Outputs per model: ``<Model>EndpointName`` and, with
    scale to zero, ``<Model>InferenceComponentName`` (what ``make smoke`` invokes)."""

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
        self.example_assets: dict[str, s3_assets.Asset] = {}
        for model in serving.models:
            data_bucket, data_key = self._model_data(model, model_artifacts_bucket)
            endpoint = InferenceEndpoint(
                self,
                model.name,
                endpoint_name=endpoint_name(config, model),
                image=_image(model, image_repository),
                model_data_bucket=data_bucket,
                model_data_key=data_key,
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
                **release_props(config, model, model_artifacts_bucket=model_artifacts_bucket,
                                image_repository=image_repository),
            )
            self.endpoints[model.name] = endpoint
            cdk.CfnOutput(self, endpoint_output_key(model.name),
                          value=endpoint.endpoint_name,
                          description=f"InvokeEndpoint target of model {model.name}")
            if endpoint.component is not None:
                cdk.CfnOutput(self, component_output_key(model.name),
                              value=endpoint.component_name,
                              description=f"InferenceComponentName to invoke model {model.name} with")

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
            if endpoint.shadow is not None:
                self.dashboard.add_widgets(*shadow_widgets(endpoint))

    def _model_data(self, model: ModelConfig, bucket: s3.IBucket
                    ) -> tuple[s3.IBucket | None, str | None]:
        """(bucket, key) of the model's ``model.tar.gz``; (None, None) for a registry model."""
        if model.model_package_group is not None:
            return None, None
        if model.example_model is None:
            return bucket, model.model_data_key
        # A single-file asset is uploaded as-is (only directories are zipped).
        # The hash is the uncompressed tar's, so another zlib never moves the key.
        asset = s3_assets.Asset(
            self, f"{model.name}-example-model",
            path=str(example_models.staged_archive(model.example_model)),
            asset_hash=example_models.archive_digest(model.example_model),
            asset_hash_type=cdk.AssetHashType.CUSTOM,
        )
        self.example_assets[model.name] = asset
        return asset.bucket, asset.s3_object_key


def endpoint_name(config: StageConfig, model: ModelConfig) -> str:
    """The SageMaker endpoint name of ``model`` in ``config``'s stage."""
    return f"{config.stack_prefix}-{model.name}"


def _image(model: ModelConfig, repository: ecr.IRepository) -> InferenceImage | None:
    if model.model_package_group is not None:
        return None  # the pinned model package names its image
    if model.image_tag is not None:
        return InferenceImage.from_repository(repository, model.image_tag)
    return InferenceImage.from_uri(model.image_uri)


def _output_id(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-") if part)


def endpoint_output_key(model_name: str) -> str:
    """Output of the serving stack holding the endpoint name of ``model_name``."""
    return f"{_output_id(model_name)}EndpointName"


def component_output_key(model_name: str) -> str:
    """Output holding the inference component name of a scale-to-zero ``model_name``."""
    return f"{_output_id(model_name)}InferenceComponentName"


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
