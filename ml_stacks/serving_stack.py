"""Serving: one stack per model (``serving-<model>``) plus the stage's shared ``serving`` stack.

Adding a ``ModelConfig`` to ``serving.models`` is the only step to serve a
model: it gets a stack of its own, ``ml-<stage>-serving-<model>``
(``cdk deploy '<stage>/serving-<model>'`` deploys that model alone;
``'<stage>/*'`` still deploys the whole stage). A model's stack is built
from its own ``ModelConfig`` and the stage's shared objects only, so adding,
changing or removing one model leaves every other model's template byte for
byte as it was, and no stack comes near CloudFormation's 500 resources
however many models the stage serves.

The shared ``serving`` stack holds what spans models without naming any:
the stage's serving dashboard, whose graphs find the stage's endpoints with
CloudWatch search expressions (a new endpoint appears on it by itself).
Per-model alarms stay in the model's stack with the endpoint they roll back.

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

from constructs_lib.inference_endpoint import (
    COMPONENT_INSTANCE_NAMESPACE, ENDPOINT_INSTANCE_NAMESPACE, SAGEMAKER_NAMESPACE,
    InferenceEndpoint, InferenceImage,
)
from ml_stacks import example_models
from ml_stacks.base_stack import StageStack, log_retention
from ml_stacks.config import ModelConfig, StageConfig
from ml_stacks.serving_release import release_props, shadow_widgets
from ml_stacks.serving_names import (  # noqa: F401  (the serving names, re-exported)
    MODEL_STACK_PREFIX, SHARED_STACK_ID, component_output_key, endpoint_name, endpoint_output_key,
    model_stack_id, model_stack_name, serving_stack_ids,
)


class ServingStack(StageStack):
    """The stage's shared serving pieces: ``dashboard`` (``ml-<stage>-serving``).

    Nothing here depends on which models the stage serves: its graphs are
    CloudWatch search expressions over the stage's endpoint names
    (``ml-<stage>-*``), one line per endpoint or inference component, so a
    model stack is added or removed without touching this template.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: StageConfig) -> None:
        super().__init__(scope, construct_id, config=config,
                         description=f"ml-infra {config.name}: serving dashboard of every endpoint")
        self.dashboard = cloudwatch.Dashboard(
            self, "Dashboard",
            dashboard_name=f"{config.stack_prefix}-serving",
            default_interval=cdk.Duration.hours(3),
        )
        self.dashboard.add_widgets(cloudwatch.TextWidget(
            markdown=(f"# ml-infra {config.name}: SageMaker endpoints\n"
                      f"Every endpoint `{config.stack_prefix}-<model>` of the stage, one line each "
                      f"(stack `{config.stack_prefix}-serving-<model>`). Endpoints on instances by "
                      "endpoint, scale-to-zero models by inference component."),
            width=24, height=2,
        ))
        self.dashboard.add_widgets(*_stage_widgets(config.stack_prefix))


class ModelServingStack(StageStack):
    """One model's endpoint, ``ml-<stage>-serving-<model>``.

    Exposes ``endpoint`` (``InferenceEndpoint``) and ``example_asset`` (the
    asset of its example model, or None). Outputs ``<Model>EndpointName`` and,
    with scale to zero, ``<Model>InferenceComponentName`` (what ``make smoke``
    invokes). The endpoint's constructs sit under a construct named after the
    model, as they did in the single serving stack, so their logical IDs are
    the ones an existing deployment has (``docs/models.md``, migration).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: StageConfig,
        model: ModelConfig,
        vpc: ec2.IVpc,
        data_key: kms.IKey,
        capture_key: kms.IKey,
        logs_key: kms.IKey,
        model_artifacts_bucket: s3.IBucket,
        data_capture_bucket: s3.IBucket,
        image_repository: ecr.IRepository,
        alerts_topic: sns.ITopic,
    ) -> None:
        super().__init__(scope, construct_id, config=config,
                         description=f"ml-infra {config.name}: SageMaker endpoint of model {model.name}")
        self.model = model
        self.example_asset: s3_assets.Asset | None = None
        data_bucket, artifact_key = self._model_data(model, model_artifacts_bucket)
        self.endpoint = self._build_endpoint(
            config, model, vpc=vpc, keys=(data_key, capture_key, logs_key), data_bucket=data_bucket,
            artifact_key=artifact_key, capture_bucket=data_capture_bucket,
            image=self._image(model, image_repository), alerts_topic=alerts_topic,
            release=release_props(self, config, model, model_artifacts_bucket=model_artifacts_bucket,
                                  image_repository=image_repository))
        self._build_outputs(model)
        self.shadow_dashboard: cloudwatch.Dashboard | None = None
        if self.endpoint.shadow is not None:
            # Production beside the candidate, in the model's own stack: the
            # stage dashboard's per-variant graphs show the shadow too, this
            # one pairs them metric by metric.
            self.shadow_dashboard = cloudwatch.Dashboard(
                self, "ShadowDashboard", dashboard_name=f"{endpoint_name(config, model)}-shadow",
                widgets=[shadow_widgets(self.endpoint)])

    def _model_data(self, model: ModelConfig, bucket: s3.IBucket
                    ) -> tuple[s3.IBucket | None, str | None]:
        """(bucket, key) of the model's ``model.tar.gz``; (None, None) for a registry model."""
        if model.model_package_group is not None:
            return None, None
        if model.example_model is None:
            return bucket, model.model_data_key
        # A single-file asset is uploaded as-is (only directories are zipped).
        # The hash is the uncompressed tar's, so another zlib never moves the key.
        self.example_asset = s3_assets.Asset(
            self, f"{model.name}-example-model",
            path=str(example_models.staged_archive(model.example_model)),
            asset_hash=example_models.archive_digest(model.example_model),
            asset_hash_type=cdk.AssetHashType.CUSTOM,
        )
        return self.example_asset.bucket, self.example_asset.s3_object_key

    def _image(self, model: ModelConfig, repository: ecr.IRepository) -> InferenceImage | None:
        if model.model_package_group is not None:
            return None  # the pinned model package names its image
        if model.image_tag is None:
            return InferenceImage.from_uri(model.image_uri)
        return InferenceImage.from_repository(repository, model.image_tag, scope=self)

    def _build_endpoint(self, config: StageConfig, model: ModelConfig, *, vpc: ec2.IVpc,
                        keys: tuple[kms.IKey, kms.IKey, kms.IKey], data_bucket: s3.IBucket | None,
                        artifact_key: str | None, capture_bucket: s3.IBucket,
                        image: InferenceImage | None, alerts_topic: sns.ITopic,
                        release: dict) -> InferenceEndpoint:
        """``keys``: the stage's data, capture and logs keys; ``release``: the
        registry, shadow, high-resolution scaling and off-hours props
        (``ml_stacks/serving_release.py``)."""
        data_key, capture_key, logs_key = keys
        return InferenceEndpoint(
            self,
            model.name,
            endpoint_name=endpoint_name(config, model),
            image=image,
            model_data_bucket=data_bucket,
            model_data_key=artifact_key,
            capture_bucket=capture_bucket,
            capture_prefix=f"{model.name}/",
            key=data_key,
            capture_key=capture_key,
            log_key=logs_key,
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
            log_retention=log_retention(config.serving.log_retention_days),
            **release,
        )

    def _build_outputs(self, model: ModelConfig) -> None:
        cdk.CfnOutput(self, endpoint_output_key(model.name),
                      value=self.endpoint.endpoint_name,
                      description=f"InvokeEndpoint target of model {model.name}")
        if self.endpoint.component is not None:
            cdk.CfnOutput(self, component_output_key(model.name),
                          value=self.endpoint.component_name,
                          description=f"InferenceComponentName to invoke model {model.name} with")


def _search(stack_prefix: str, schema: str, dimension: str, metric: str,
            statistic: str) -> cloudwatch.SearchExpression:
    """Every series of ``metric`` whose ``dimension`` is one of the stage's names
    (``<stack_prefix>-...``, a partial match), one line each."""
    return cloudwatch.SearchExpression(
        expression=(f"SEARCH('{{{schema}}} MetricName=\"{metric}\" {dimension}={stack_prefix}', "
                    f"'{statistic}', 60)"),
        label="",  # each line is labelled with its endpoint or component alone
    )


def _stage_widgets(stack_prefix: str) -> list[cloudwatch.IWidget]:
    """Graphs of every endpoint (by endpoint and variant) and every inference
    component of the stage, found at view time: a search returns up to 500
    series, so one graph holds a stage of 200 models."""
    endpoint = f"{SAGEMAKER_NAMESPACE},EndpointName,VariantName"
    component = f"{SAGEMAKER_NAMESPACE},InferenceComponentName"
    instances = f"{ENDPOINT_INSTANCE_NAMESPACE},EndpointName,VariantName"
    copies = f"{COMPONENT_INSTANCE_NAMESPACE},InferenceComponentName"
    both = [(endpoint, "EndpointName"), (component, "InferenceComponentName")]
    return [
        cloudwatch.GraphWidget(title="Invocations (per minute)", width=12, left=[
            _search(stack_prefix, schema, dim, "Invocations", "Sum") for schema, dim in both]),
        cloudwatch.GraphWidget(title="Model latency p99 (µs)", width=12, left=[
            _search(stack_prefix, schema, dim, "ModelLatency", "p99") for schema, dim in both]),
        cloudwatch.GraphWidget(title="5XX errors", width=8, left=[
            _search(stack_prefix, schema, dim, "Invocation5XXErrors", "Sum")
            for schema, dim in both]),
        cloudwatch.GraphWidget(title="4XX errors", width=8, left=[
            _search(stack_prefix, schema, dim, "Invocation4XXErrors", "Sum")
            for schema, dim in both]),
        cloudwatch.GraphWidget(title="GPU utilization (%, summed over an instance's GPUs)", width=8, left=[
            _search(stack_prefix, instances, "EndpointName", "GPUUtilization", "Average"),
            _search(stack_prefix, copies, "InferenceComponentName", "GPUUtilizationNormalized", "Average")]),
        cloudwatch.GraphWidget(title="CPU utilization (%)", width=12, left=[
            _search(stack_prefix, instances, "EndpointName", "CPUUtilization", "Average"),
            _search(stack_prefix, copies, "InferenceComponentName", "CPUUtilizationNormalized", "Average")]),
        # Each instance in service publishes one CPU datapoint a minute.
        cloudwatch.GraphWidget(title="Instances in service", width=12, left=[
            _search(stack_prefix, instances, "EndpointName", "CPUUtilization", "SampleCount")]),
    ]
