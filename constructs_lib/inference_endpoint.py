"""A SageMaker real-time endpoint that can be updated safely from code.

One ``InferenceEndpoint`` serves one model: a least-privilege execution role,
the model in the VPC with network isolation, an endpoint configuration with
encrypted volume and data capture, the endpoint, autoscaling, alarms, and a
blue/green deployment that rolls back on those alarms.

Why updates never replace the endpoint: every property of
``AWS::SageMaker::Model`` and ``AWS::SageMaker::EndpointConfig`` is
create-only, so any change replaces them. Their names are therefore left to
CloudFormation (a fresh name on every replacement; a fixed name would make the
replacement fail). The endpoint keeps its fixed name and is *updated* to the
new configuration, which SageMaker performs as a blue/green deployment; the
old model and configuration are deleted in the stack's cleanup phase.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import aws_cdk as cdk
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sagemaker as sagemaker
from aws_cdk import aws_sns as sns
from constructs import Construct

from constructs_lib.acknowledge import acknowledge
from constructs_lib.kms_grants import via_service
from constructs_lib.object_read import grant_read_object
from constructs_lib.off_hours import OffHoursSchedule, add_scalable_target_off_hours_schedule

VARIANT_NAME = "AllTraffic"
# A shadow variant is "Shadow-<digest of candidate and fleet>": a new
# candidate or fleet is a new variant, which the blue/green update creates
# as configured (a variant that keeps its name keeps its retained instance
# count, RetainAllVariantProperties).
SHADOW_VARIANT_PREFIX = "Shadow"
SAGEMAKER_NAMESPACE = "AWS/SageMaker"
ENDPOINT_INSTANCE_NAMESPACE = "/aws/sagemaker/Endpoints"
COMPONENT_INSTANCE_NAMESPACE = "/aws/sagemaker/InferenceComponents"
TRAFFIC_ROUTING = {"canary": "CANARY", "linear": "LINEAR", "all_at_once": "ALL_AT_ONCE"}

# Instance families whose storage is local NVMe (SageMaker "instance storage
# volumes"). That storage is encrypted by the instance's hardware module and
# SageMaker rejects an endpoint configuration with a KmsKeyId for them.
_INSTANCE_STORE_FAMILY_RE = re.compile(
    r"^([cmr][5-8][a-z]*d|g4dn|g5|g6|g6e|g7|g7e|p3dn|p4d|p4de|p5|p5e|p5en|p6-[a-z0-9]+|p6e-[a-z0-9]+"
    r"|trn1|trn1n|trn2)$")


def has_instance_storage(instance_type: str) -> bool:
    """Whether ``instance_type`` (``ml.<family>.<size>``) has local NVMe storage."""
    family = instance_type.split(".")[1]
    return bool(_INSTANCE_STORE_FAMILY_RE.match(family))


# Headroom for provisioning the new fleet, pulling the image and loading the
# model before the first traffic shift.
PROVISIONING_HEADROOM_SECONDS = 3600


def deployment_timeout_seconds(deployment: str, step_percent: int, wait_seconds: int,
                               termination_wait_seconds: int) -> int:
    """MaximumExecutionTimeoutInSeconds of a blue/green deployment: every bake
    step, the termination wait and provisioning headroom, within SageMaker's
    600–28800 s."""
    steps = {"canary": 1, "linear": math.ceil(100 / step_percent), "all_at_once": 1}[deployment]
    total = steps * wait_seconds + termination_wait_seconds + PROVISIONING_HEADROOM_SECONDS
    return max(600, min(28_800, total))


_ECR_URI_RE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?P<cn>\.cn)?"
    r"/(?P<repository>[^:@]+)[:@]")


class InferenceImage:
    """The container image of an endpoint and the one repository it may pull from."""

    def __init__(self, image_uri: str, repository_arn: str) -> None:
        self.image_uri = image_uri
        self.repository_arn = repository_arn

    @classmethod
    def from_repository(cls, repository: ecr.IRepository, tag: str, *,
                        scope: Construct) -> "InferenceImage":
        """``tag`` in ``repository``, a repository in ``scope``'s account and
        region (e.g. the stage's image repository).

        Not ``repository.repository_uri_for_tag()``: it derives account and
        region by splitting the repository ARN, and across stacks that ARN is
        a ``Fn::GetStackOutput``, which ``Fn::Split`` rejects (cfn-lint E1022).
        """
        stack = cdk.Stack.of(scope)
        uri = f"{stack.account}.dkr.ecr.{stack.region}.{stack.url_suffix}/{repository.repository_name}:{tag}"
        return cls(uri, repository.repository_arn)

    @classmethod
    def from_uri(cls, image_uri: str) -> "InferenceImage":
        """A full ECR image URI, e.g. an AWS Deep Learning Container."""
        match = _ECR_URI_RE.match(image_uri)
        if match is None:
            raise ValueError(f"image_uri: {image_uri!r} is not an ECR image URI "
                             "(<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag>)")
        partition = "aws-cn" if match["cn"] else "aws"
        return cls(image_uri, f"arn:{partition}:ecr:{match['region']}:{match['account']}:"
                              f"repository/{match['repository']}")


_S3_URL_RE = re.compile(r"^s3://(?P<bucket>[^/]+)/(?P<key>.+)$")


class InferenceModelPackage:
    """A SageMaker Model Registry package version the endpoint serves, and
    what each of its containers pulls and loads (the role may use those alone).

    ``containers`` is ``(image URI, model data URL or None)`` per container of
    the package's inference specification, as ``make refresh-models`` pinned them.
    """

    def __init__(self, package_arn: str, containers: Sequence[tuple[str, str | None]]) -> None:
        if not containers:
            raise ValueError(f"model package {package_arn}: no containers to serve")
        self.package_arn = package_arn
        self.images = [InferenceImage.from_uri(image) for image, _ in containers]
        self.model_data_urls: list[str] = []
        for _, url in containers:
            if url is None:
                continue
            if not _S3_URL_RE.match(url):
                raise ValueError(f"model package {package_arn}: {url!r} is not s3://<bucket>/<key>")
            self.model_data_urls.append(url)


@dataclass(frozen=True)
class ShadowVariant:
    """A candidate served as the endpoint's shadow variant: ``sampling_percent``
    of production's requests are copied to it and its answers discarded.

    The candidate is ``image`` with ``model_data_key`` in ``model_data_bucket``,
    or ``model_package``; it runs on ``instance_count`` × ``instance_type`` (a
    fixed fleet: a shadow is a test, not capacity).
    """

    sampling_percent: int
    instance_type: str
    instance_count: int = 1
    image: InferenceImage | None = None
    model_data_bucket: s3.IBucket | None = None
    model_data_key: str | None = None
    model_package: InferenceModelPackage | None = None

    def identity(self) -> dict[str, object]:
        """What makes this candidate and its fleet (tokens unresolved)."""
        return {"image": self.image.image_uri if self.image else None,
                "artifact": (f"{self.model_data_bucket.bucket_name}/{self.model_data_key}"
                             if self.model_data_bucket else None),
                "package": self.model_package.package_arn if self.model_package else None,
                "instance_type": self.instance_type, "instance_count": self.instance_count}

    def container(self, environment: Mapping[str, str]) -> sagemaker.CfnModel.ContainerDefinitionProperty:
        if self.model_package is not None:
            return sagemaker.CfnModel.ContainerDefinitionProperty(
                model_package_name=self.model_package.package_arn, environment=dict(environment) or None)
        return sagemaker.CfnModel.ContainerDefinitionProperty(
            image=self.image.image_uri,
            model_data_url=f"s3://{self.model_data_bucket.bucket_name}/{self.model_data_key}",
            environment=dict(environment) or None)


class InferenceEndpoint(Construct):
    """A SageMaker real-time endpoint named ``endpoint_name`` serving one model.

    - **Role**: SageMaker assumes it; it may read ``model_data_key`` in
      ``model_data_bucket`` only (the stage's model-artifacts bucket, or the
      CDK bootstrap bucket for a model shipped as a file asset), write ``<capture_prefix>`` in
      ``capture_bucket`` only, pull from the image's repository only,
      decrypt with ``key`` and encrypt captures with ``capture_key`` (both
      through S3 only), and manage its network interfaces in ``vpc``.
    - **Model**: network isolation on; VPC config with a dedicated security
      group (no ingress, HTTPS egress) in ``subnet_type`` subnets (default: private).
    - **Endpoint config**: ``KmsKeyId`` for the volume (omitted for instance
      types with local NVMe storage, which SageMaker encrypts in hardware and
      rejects a key for); data capture of Input and Output to
      ``s3://<capture bucket>/<capture_prefix>`` encrypted with
      ``capture_key`` (default: ``key``).
    - **Logs**: ``/aws/sagemaker/Endpoints/<endpoint_name>`` (and the
      inference component's group), created here with ``log_retention`` and
      encrypted with ``log_key`` (default: CloudWatch Logs' own encryption).
    - **Scaling**: ``min``/``max_instance_count`` with target tracking on
      invocations per instance and optionally GPU utilization.
    - **Alarms**: 5XX errors, 4XX rate, ModelLatency p99, to ``alarm_topic``.
    - **Deployment**: blue/green (``canary``/``linear``/``all_at_once``) with
      automatic rollback on those alarms.

    With ``scale_to_zero`` the model runs as an inference component on an
    endpoint with managed instance scaling (min 0 instances): copies scale in
    to zero when idle, and the first request that finds no copy
    (``NoCapacityInvocationFailures``) scales one back out. That request and
    all others until an instance is up (minutes) fail and must be retried.
    ``off_hours`` closes the component at night (copies to 0, no scale-out
    even on a request) and reopens it in the morning.

    The model is either ``image`` with ``model_data_key`` in
    ``model_data_bucket`` or ``model_package`` (a pinned Model Registry
    version, not with ``scale_to_zero``). ``shadow`` adds a shadow variant
    with its own model and latency/5XX alarms, which notify ``alarm_topic``
    but never roll a deployment back. ``target_concurrent_requests`` adds
    target tracking on the high-resolution (10 s) concurrent requests per
    model (per copy with ``scale_to_zero``).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        endpoint_name: str,
        capture_bucket: s3.IBucket,
        key: kms.IKey,
        vpc: ec2.IVpc,
        instance_type: str,
        subnet_type: ec2.SubnetType = ec2.SubnetType.PRIVATE_WITH_EGRESS,
        capture_prefix: str | None = None,
        environment: Mapping[str, str] | None = None,
        initial_instance_count: int = 1,
        min_instance_count: int = 1,
        max_instance_count: int = 2,
        target_invocations_per_instance: int = 70,
        scale_in_cooldown: cdk.Duration | None = None,
        scale_out_cooldown: cdk.Duration | None = None,
        gpu_utilization_target_percent: int | None = None,
        capture_sampling_percent: int = 20,
        capture_json_content_types: Sequence[str] = ("application/json",),
        capture_csv_content_types: Sequence[str] = ("text/csv",),
        alarm_topic: sns.ITopic | None = None,
        alarm_5xx_errors: int = 1,
        alarm_4xx_rate_percent: float = 5.0,
        alarm_latency_p99: cdk.Duration | None = None,
        deployment: str = "canary",
        deployment_step_percent: int = 10,
        deployment_wait: cdk.Duration | None = None,
        deployment_termination_wait: cdk.Duration | None = None,
        scale_to_zero: bool = False,
        component_cpu_cores: float = 1,
        component_memory_mb: int = 1024,
        component_accelerators: int = 0,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
        capture_key: kms.IKey | None = None,
        log_key: kms.IKey | None = None,
        image: InferenceImage | None = None,
        model_data_bucket: s3.IBucket | None = None,
        model_data_key: str | None = None,
        model_package: InferenceModelPackage | None = None,
        shadow: ShadowVariant | None = None,
        target_concurrent_requests: float | None = None,
        off_hours: OffHoursSchedule | None = None,
    ) -> None:
        """Defaults: private subnets, capture prefix ``<endpoint_name>/``, cooldowns 300 s in /
        60 s out, p99 alarm at 1 s, canary 10% with 300 s waits, one month of logs; no shadow,
        no high-resolution scaling, no off hours."""
        super().__init__(scope, construct_id)
        _check_props(deployment, image, model_data_bucket, model_data_key, model_package,
                     scale_to_zero=scale_to_zero, shadow=shadow, off_hours=off_hours)
        self.endpoint_name, self.instance_type = endpoint_name, instance_type
        self.scale_to_zero, self.model_package, self.shadow = scale_to_zero, model_package, shadow
        self.component_name = endpoint_name if scale_to_zero else None
        deployment_wait = deployment_wait if deployment_wait is not None else cdk.Duration.seconds(300)
        model_data_url = _model_data_url(model_package, model_data_bucket, model_data_key)
        environment = dict(environment or {})
        rollback_alarms = self._build_serving(
            image=image, model_data_bucket=model_data_bucket, model_data_key=model_data_key,
            model_data_url=model_data_url, environment=environment, vpc=vpc, subnet_type=subnet_type,
            initial_instance_count=initial_instance_count, max_instance_count=max_instance_count,
            log_retention=log_retention, log_key=log_key, key=key, capture_key=capture_key,
            capture_bucket=capture_bucket, capture_prefix=capture_prefix, alarm_topic=alarm_topic,
            capture_sampling_percent=capture_sampling_percent, deployment=deployment,
            capture_json_content_types=capture_json_content_types, alarm_5xx_errors=alarm_5xx_errors,
            capture_csv_content_types=capture_csv_content_types, alarm_latency_p99=alarm_latency_p99,
            alarm_4xx_rate_percent=alarm_4xx_rate_percent, deployment_wait=deployment_wait,
            deployment_step_percent=deployment_step_percent,
            deployment_termination_wait=deployment_termination_wait)
        self._build_scaling(
            image=image, model_data_url=model_data_url, environment=environment,
            component_cpu_cores=component_cpu_cores, component_memory_mb=component_memory_mb,
            component_accelerators=component_accelerators, deployment_wait=deployment_wait,
            rollback_alarms=rollback_alarms, min_instance_count=min_instance_count,
            max_instance_count=max_instance_count, off_hours=off_hours,
            target_invocations_per_instance=target_invocations_per_instance,
            gpu_utilization_target_percent=gpu_utilization_target_percent,
            scale_in_cooldown=scale_in_cooldown, scale_out_cooldown=scale_out_cooldown,
            target_concurrent_requests=target_concurrent_requests)

    # --- the two halves: serving (model to endpoint), then scaling ---------

    def _build_serving(
            self, *, capture_bucket: s3.IBucket, key: kms.IKey, vpc: ec2.IVpc,
            subnet_type: ec2.SubnetType, capture_prefix: str | None, environment: dict[str, str],
            image: InferenceImage | None, model_data_bucket: s3.IBucket | None,
            model_data_key: str | None, model_data_url: str | None, initial_instance_count: int,
            max_instance_count: int, capture_sampling_percent: int,
            capture_json_content_types: Sequence[str], capture_csv_content_types: Sequence[str],
            alarm_topic: sns.ITopic | None, alarm_5xx_errors: int, alarm_4xx_rate_percent: float,
            alarm_latency_p99: cdk.Duration | None, deployment: str, deployment_step_percent: int,
            deployment_wait: cdk.Duration, deployment_termination_wait: cdk.Duration | None,
            log_retention: logs.RetentionDays, capture_key: kms.IKey | None,
            log_key: kms.IKey | None) -> list[dict[str, str]]:
        """Logs, network, role and policies, model and endpoint config, alarms
        and the endpoint, in that order. Returns the rollback alarms."""
        capture_prefix = capture_prefix if capture_prefix is not None else f"{self.endpoint_name}/"
        alarm_latency_p99 = alarm_latency_p99 or cdk.Duration.seconds(1)
        deployment_termination_wait = (deployment_termination_wait if deployment_termination_wait
                                       is not None else cdk.Duration.seconds(300))
        # One KmsKeyId covers every variant's volume: none as soon as one
        # variant's instance type keeps its volume on local NVMe.
        local_storage = has_instance_storage(self.instance_type) or (
            self.shadow is not None and has_instance_storage(self.shadow.instance_type))
        volume_key = None if local_storage else key
        capture_key = capture_key or key

        log_groups = self._build_log_groups(log_retention, log_key)
        subnet_ids = self._build_security_group(vpc, subnet_type)
        self._build_role(
            image=image, model_data_bucket=model_data_bucket, model_data_key=model_data_key,
            capture_bucket=capture_bucket, capture_prefix=capture_prefix, key=key,
            capture_key=capture_key, volume_key=volume_key, log_groups=log_groups)
        self._grant_release_sources()
        self._build_service_policy(cdk.Stack.of(self), vpc, subnet_ids)
        capture = self._data_capture_config(
            capture_bucket=capture_bucket, capture_prefix=capture_prefix, key=capture_key,
            sampling_percent=capture_sampling_percent,
            json_content_types=capture_json_content_types,
            csv_content_types=capture_csv_content_types)
        self._build_model_and_endpoint_config(
            image=image, model_data_url=model_data_url, environment=environment,
            subnet_ids=subnet_ids, volume_key=volume_key, capture=capture,
            initial_instance_count=initial_instance_count,
            max_instance_count=max_instance_count)
        rollback_alarms = self._build_alarms(
            alarm_topic=alarm_topic, alarm_5xx_errors=alarm_5xx_errors,
            alarm_4xx_rate_percent=alarm_4xx_rate_percent, alarm_latency_p99=alarm_latency_p99)
        self._grant_read_rollback_alarms()
        self.shadow_alarms: list[cloudwatch.Alarm] = []
        if self.shadow is not None:
            self._build_shadow_alarms(alarm_topic=alarm_topic, alarm_5xx_errors=alarm_5xx_errors,
                                      alarm_latency_p99=alarm_latency_p99)
        deployment_config = None if self.scale_to_zero else self._blue_green_deployment_config(
            deployment=deployment, step_percent=deployment_step_percent,
            wait=deployment_wait, termination_wait=deployment_termination_wait,
            rollback_alarms=rollback_alarms)
        self._build_endpoint(deployment_config, log_groups)
        return rollback_alarms

    def _build_scaling(
            self, *, image: InferenceImage | None, model_data_url: str | None,
            environment: dict[str, str], component_cpu_cores: float, component_memory_mb: int,
            component_accelerators: int, deployment_wait: cdk.Duration,
            rollback_alarms: list[dict[str, str]], min_instance_count: int,
            max_instance_count: int, target_invocations_per_instance: int,
            gpu_utilization_target_percent: int | None, scale_in_cooldown: cdk.Duration | None,
            scale_out_cooldown: cdk.Duration | None, off_hours: OffHoursSchedule | None,
            target_concurrent_requests: float | None) -> None:
        """The inference component and its autoscaling (scale to zero) or the
        variant's autoscaling, then the release's scaling (off hours,
        concurrent requests)."""
        scale_in_cooldown = scale_in_cooldown or cdk.Duration.seconds(300)
        scale_out_cooldown = scale_out_cooldown or cdk.Duration.seconds(60)
        autoscaling_role = self._build_autoscaling_role(cdk.Stack.of(self))
        self.component: sagemaker.CfnInferenceComponent | None = None
        if self.scale_to_zero:
            self._build_inference_component(
                image=image, model_data_url=model_data_url, environment=environment,
                cpu_cores=component_cpu_cores, memory_mb=component_memory_mb,
                accelerators=component_accelerators, deployment_wait=deployment_wait,
                rollback_alarms=rollback_alarms)
            self._build_component_autoscaling(
                autoscaling_role=autoscaling_role, max_instance_count=max_instance_count,
                target_invocations_per_instance=target_invocations_per_instance,
                scale_in_cooldown=scale_in_cooldown, scale_out_cooldown=scale_out_cooldown)
        else:
            self._build_variant_autoscaling(
                autoscaling_role=autoscaling_role, min_instance_count=min_instance_count,
                max_instance_count=max_instance_count,
                target_invocations_per_instance=target_invocations_per_instance,
                gpu_utilization_target_percent=gpu_utilization_target_percent,
                scale_in_cooldown=scale_in_cooldown, scale_out_cooldown=scale_out_cooldown)
        self._build_release_scaling(
            off_hours=off_hours, max_instance_count=max_instance_count,
            target_concurrent_requests=target_concurrent_requests,
            scale_in_cooldown=scale_in_cooldown, scale_out_cooldown=scale_out_cooldown)

    # --- construction steps, in the order the constructor calls them ------

    def _build_log_groups(self, log_retention: logs.RetentionDays,
                          log_key: kms.IKey | None) -> list[logs.LogGroup]:
        """Logs: created here so their retention and key are ours, not
        "never expire" and CloudWatch Logs' own encryption."""
        log_groups = [logs.LogGroup(
            self, "Logs",
            log_group_name=f"/aws/sagemaker/Endpoints/{self.endpoint_name}",
            retention=log_retention,
            encryption_key=log_key,
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )]
        if self.scale_to_zero:
            log_groups.append(logs.LogGroup(
                self, "ComponentLogs",
                log_group_name=f"/aws/sagemaker/InferenceComponents/{self.component_name}",
                retention=log_retention,
                encryption_key=log_key,
                removal_policy=cdk.RemovalPolicy.DESTROY,
            ))
        return log_groups

    def _build_security_group(self, vpc: ec2.IVpc, subnet_type: ec2.SubnetType) -> list[str]:
        """Network: a group of its own, nothing may connect in. Returns the subnet IDs."""
        self.security_group = ec2.SecurityGroup(
            self, "SecurityGroup",
            vpc=vpc,
            description=f"SageMaker endpoint {self.endpoint_name}: no ingress, HTTPS egress",
            allow_all_outbound=False,
        )
        self.security_group.add_egress_rule(
            ec2.Peer.any_ipv4(), ec2.Port.tcp(443),
            "HTTPS to S3 (gateway endpoint), ECR and CloudWatch via endpoints or NAT")
        return vpc.select_subnets(subnet_type=subnet_type).subnet_ids

    def _build_role(self, *, image: InferenceImage | None, model_data_bucket: s3.IBucket | None,
                    model_data_key: str | None, capture_bucket: s3.IBucket, capture_prefix: str,
                    key: kms.IKey, capture_key: kms.IKey, volume_key: kms.IKey | None,
                    log_groups: Sequence[logs.LogGroup]) -> None:
        """Execution role: every statement names its resource."""
        self.role = iam.Role(
            self, "Role",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description=f"SageMaker execution role of endpoint {self.endpoint_name}",
        )
        # One object, wherever it lives (no KMS grant for the bootstrap
        # bucket: constructs_lib/object_read.py says why). A model package's
        # artifacts: _grant_release_sources.
        if model_data_bucket is not None:
            grant_read_object(self.role, bucket=model_data_bucket, key=model_data_key,
                              sid="ReadItsModelArtifact")
        # Data capture writes objects whose keys SageMaker chooses, under the
        # model's own prefix: a policy of its own carries that one wildcard.
        captures = capture_bucket.arn_for_objects(f"{capture_prefix}*")
        self.capture_policy = iam.Policy(
            self, "CapturePolicy",
            roles=[self.role],
            statements=[iam.PolicyStatement(
                sid="WriteItsDataCapture",
                actions=["s3:PutObject"],
                resources=[captures],
            )],
        )
        acknowledge(self.capture_policy, f"AwsSolutions::AwsSolutions-IAM5[Resource::{captures}]",
                    "The only statement here lets SageMaker write data-capture objects, whose keys "
                    "it chooses, under this model's own prefix of the capture bucket.")
        images = [image] if image is not None else []
        for package in self._packages():
            images += package.images
        images += [self.shadow.image] if self.shadow is not None and self.shadow.image else []
        self.role.add_to_policy(iam.PolicyStatement(
            sid="PullItsImage",
            actions=["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer",
                     "ecr:BatchGetImage"],
            resources=list(dict.fromkeys(i.repository_arn for i in images)),
        ))
        # Decrypt: the model artifact (SSE-KMS). Encrypt/GenerateDataKey: the
        # captures SageMaker writes to S3 with KmsKeyId (Decrypt too, which S3
        # needs to complete a multipart upload). Both through S3 only.
        self.role.add_to_policy(iam.PolicyStatement(
            sid="DecryptItsModelArtifact",
            actions=["kms:Decrypt"],
            resources=[key.key_arn],
            conditions=via_service(self, "s3"),
        ))
        self.role.add_to_policy(iam.PolicyStatement(
            sid="EncryptItsDataCapture",
            actions=["kms:Encrypt", "kms:GenerateDataKey", "kms:Decrypt"],
            resources=[capture_key.key_arn],
            conditions=via_service(self, "s3"),
        ))
        if self.scale_to_zero and volume_key is not None:
            # An endpoint configuration with an execution role (inference
            # components) encrypts its volumes through that role's grants;
            # otherwise the deployer's own permissions do it.
            self.role.add_to_policy(iam.PolicyStatement(
                sid="EncryptItsVolumes",
                actions=["kms:CreateGrant"],
                resources=[key.key_arn],
                conditions={"Bool": {"kms:GrantIsForAWSResource": "true"}},
            ))
        self.role.add_to_policy(iam.PolicyStatement(
            sid="WriteItsLogs",
            actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
                     "logs:DescribeLogStreams"],
            resources=[group.log_group_arn for group in log_groups],
        ))

    def _packages(self) -> list[InferenceModelPackage]:
        """The model packages served: production's and the shadow candidate's."""
        packages = [self.model_package] if self.model_package is not None else []
        if self.shadow is not None and self.shadow.model_package is not None:
            packages.append(self.shadow.model_package)
        return packages

    def _grant_release_sources(self) -> None:
        """Read the pinned packages' artifacts and the shadow candidate's, one object each."""
        urls = list(dict.fromkeys(url for package in self._packages() for url in package.model_data_urls))
        if urls:
            self.role.add_to_policy(iam.PolicyStatement(
                sid="ReadItsModelPackageArtifacts",
                actions=["s3:GetObject"],
                resources=[f"arn:{cdk.Aws.PARTITION}:s3:::{match['bucket']}/{match['key']}"
                           for match in map(_S3_URL_RE.match, urls)],
            ))
        if self.shadow is not None and self.shadow.model_package is None:
            grant_read_object(self.role, bucket=self.shadow.model_data_bucket,
                              key=self.shadow.model_data_key, sid="ReadItsShadowArtifact")

    def _build_service_policy(self, stack: cdk.Stack, vpc: ec2.IVpc,
                              subnet_ids: Sequence[str]) -> None:
        """Actions without resource-level permissions (or on resources that do
        not exist yet) live in a policy of their own, so the wildcard
        acknowledgement covers nothing else."""
        vpc_arn = stack.format_arn(service="ec2", resource="vpc", resource_name=vpc.vpc_id)
        interfaces = stack.format_arn(service="ec2", resource="network-interface", resource_name="*")
        self.service_policy = iam.Policy(
            self, "ServicePolicy",
            roles=[self.role],
            statements=[
                iam.PolicyStatement(
                    sid="EcrAuthorizationTokenHasNoResource",
                    actions=["ecr:GetAuthorizationToken"],
                    resources=["*"],
                ),
                iam.PolicyStatement(
                    sid="DescribeTheNetworkHasNoResource",
                    actions=["ec2:DescribeNetworkInterfaces", "ec2:DescribeVpcs",
                             "ec2:DescribeDhcpOptions", "ec2:DescribeSubnets",
                             "ec2:DescribeSecurityGroups"],
                    resources=["*"],
                ),
                iam.PolicyStatement(
                    sid="NetworkInterfacesInItsSubnetsOnly",
                    actions=["ec2:CreateNetworkInterface"],
                    resources=[
                        interfaces,
                        *(stack.format_arn(service="ec2", resource="subnet", resource_name=subnet_id)
                          for subnet_id in subnet_ids),
                        stack.format_arn(service="ec2", resource="security-group",
                                         resource_name=self.security_group.security_group_id),
                    ],
                ),
                iam.PolicyStatement(
                    sid="ManageNetworkInterfacesInItsVpc",
                    actions=["ec2:CreateNetworkInterfacePermission", "ec2:DeleteNetworkInterface",
                             "ec2:DeleteNetworkInterfacePermission"],
                    resources=[interfaces],
                    conditions={"ArnEquals": {"ec2:Vpc": vpc_arn}},
                ),
            ],
        )
        acknowledge(self.service_policy, "AwsSolutions::AwsSolutions-IAM5[Resource::*]",
                    "ecr:GetAuthorizationToken and the ec2:Describe* calls SageMaker makes to place "
                    "the endpoint in the VPC support no resource-level permissions.")
        acknowledge(self.service_policy, f"AwsSolutions::AwsSolutions-IAM5[Resource::{interfaces}]",
                    "SageMaker creates the endpoint's network interfaces at deploy time, so their IDs "
                    "are unknown; creation is limited to the endpoint's subnets and security group "
                    "and the other actions to interfaces in the stage VPC.")

    @staticmethod
    def _data_capture_config(*, capture_bucket: s3.IBucket, capture_prefix: str, key: kms.IKey,
                             sampling_percent: int, json_content_types: Sequence[str],
                             csv_content_types: Sequence[str],
                             ) -> sagemaker.CfnEndpointConfig.DataCaptureConfigProperty:
        """Data capture of Input and Output under the model's prefix, encrypted with ``key``."""
        return sagemaker.CfnEndpointConfig.DataCaptureConfigProperty(
            enable_capture=True,
            initial_sampling_percentage=sampling_percent,
            destination_s3_uri=f"s3://{capture_bucket.bucket_name}/{capture_prefix}",
            kms_key_id=key.key_arn,
            capture_options=[
                sagemaker.CfnEndpointConfig.CaptureOptionProperty(capture_mode="Input"),
                sagemaker.CfnEndpointConfig.CaptureOptionProperty(capture_mode="Output"),
            ],
            capture_content_type_header=sagemaker.CfnEndpointConfig.CaptureContentTypeHeaderProperty(
                json_content_types=list(json_content_types) or None,
                csv_content_types=list(csv_content_types) or None,
            ),
        )

    def _build_model_and_endpoint_config(
            self, *, image: InferenceImage | None, model_data_url: str | None,
            environment: dict[str, str],
            subnet_ids: Sequence[str], volume_key: kms.IKey | None,
            capture: sagemaker.CfnEndpointConfig.DataCaptureConfigProperty,
            initial_instance_count: int, max_instance_count: int) -> None:
        """Model (none with scale to zero: the inference component carries it)
        and endpoint configuration."""
        vpc_config = sagemaker.CfnModel.VpcConfigProperty(
            security_group_ids=[self.security_group.security_group_id], subnets=subnet_ids)
        self.model: sagemaker.CfnModel | None = None
        self.shadow_model: sagemaker.CfnModel | None = None
        self.shadow_variant_name: str | None = None
        if self.scale_to_zero:
            variant = sagemaker.CfnEndpointConfig.ProductionVariantProperty(
                variant_name=VARIANT_NAME,
                instance_type=self.instance_type,
                initial_instance_count=initial_instance_count,
                managed_instance_scaling=sagemaker.CfnEndpointConfig.ManagedInstanceScalingProperty(
                    status="ENABLED", min_instance_count=0, max_instance_count=max_instance_count),
                routing_config=sagemaker.CfnEndpointConfig.RoutingConfigProperty(
                    routing_strategy="LEAST_OUTSTANDING_REQUESTS"),
            )
            self.endpoint_config = sagemaker.CfnEndpointConfig(
                self, "Config",
                execution_role_arn=self.role.role_arn,
                enable_network_isolation=True,
                vpc_config=sagemaker.CfnEndpointConfig.VpcConfigProperty(
                    security_group_ids=[self.security_group.security_group_id], subnets=subnet_ids),
                kms_key_id=volume_key.key_arn if volume_key else None,
                data_capture_config=capture,
                production_variants=[variant],
            )
        else:
            if self.model_package is not None:
                # The package names its image and artifact; SageMaker copies them into the model.
                container = sagemaker.CfnModel.ContainerDefinitionProperty(
                    model_package_name=self.model_package.package_arn,
                    environment=environment or None)
            else:
                container = sagemaker.CfnModel.ContainerDefinitionProperty(
                    image=image.image_uri, model_data_url=model_data_url,
                    environment=environment or None)
            self.model = self._variant_model("Model", container, vpc_config)
            shadow_variants = None
            if self.shadow is not None:
                self.shadow_model = self._variant_model(
                    "ShadowModel", self.shadow.container(environment), vpc_config)
                identity = json.dumps(cdk.Stack.of(self).resolve(self.shadow.identity()), sort_keys=True)
                self.shadow_variant_name = (f"{SHADOW_VARIANT_PREFIX}-"
                                            f"{hashlib.sha256(identity.encode()).hexdigest()[:8]}")
                shadow_variants = [sagemaker.CfnEndpointConfig.ProductionVariantProperty(
                    variant_name=self.shadow_variant_name,
                    model_name=self.shadow_model.attr_model_name,
                    instance_type=self.shadow.instance_type,
                    initial_instance_count=self.shadow.instance_count,
                    # Against production's weight of 1: the share of its
                    # requests SageMaker copies to the shadow.
                    initial_variant_weight=self.shadow.sampling_percent / 100,
                )]
            self.endpoint_config = sagemaker.CfnEndpointConfig(
                self, "Config",
                kms_key_id=volume_key.key_arn if volume_key else None,
                data_capture_config=capture,
                production_variants=[sagemaker.CfnEndpointConfig.ProductionVariantProperty(
                    variant_name=VARIANT_NAME,
                    model_name=self.model.attr_model_name,
                    instance_type=self.instance_type,
                    initial_instance_count=initial_instance_count,
                    initial_variant_weight=1,
                )],
                shadow_production_variants=shadow_variants,
            )
        if volume_key is None:
            cdk.Annotations.of(self).add_info(
                f"{self.instance_type} (or the shadow's instance type) keeps its volume on local "
                "NVMe instance storage, encrypted by the instance's hardware; SageMaker rejects a "
                "KmsKeyId for it, so the endpoint configuration has none. Data capture is still "
                "encrypted with the stage key.")

    def _variant_model(self, construct_id: str,
                       container: sagemaker.CfnModel.ContainerDefinitionProperty,
                       vpc_config: sagemaker.CfnModel.VpcConfigProperty) -> sagemaker.CfnModel:
        """A model of a variant: in the VPC, network isolation on, created once the role may act."""
        model = sagemaker.CfnModel(
            self, construct_id,
            execution_role_arn=self.role.role_arn,
            enable_network_isolation=True,
            vpc_config=vpc_config,
            primary_container=container,
        )
        model.node.add_dependency(self.role, self.service_policy, self.capture_policy)
        return model

    def _build_alarms(self, *, alarm_topic: sns.ITopic | None, alarm_5xx_errors: int,
                      alarm_4xx_rate_percent: float, alarm_latency_p99: cdk.Duration,
                      ) -> list[dict[str, str]]:
        """Alarms: the endpoint's health, also the rollback trigger. Returns
        the rollback alarm list of a deployment configuration."""
        endpoint_name = self.endpoint_name
        self._dimensions = ({"InferenceComponentName": self.component_name} if self.scale_to_zero
                            else {"EndpointName": endpoint_name, "VariantName": VARIANT_NAME})
        self.alarm_5xx = self._server_errors_alarm(
            "Invocation5xxAlarm", alarm_name=f"{endpoint_name}-invocation-5xx-errors",
            description=f"{endpoint_name}: {alarm_5xx_errors}+ server errors in 5 minutes",
            metric=self.metric_invocation_5xx_errors(period=cdk.Duration.minutes(5)),
            threshold=alarm_5xx_errors)
        self.alarm_4xx_rate = cloudwatch.Alarm(
            self, "Invocation4xxRateAlarm",
            alarm_name=f"{endpoint_name}-invocation-4xx-rate",
            alarm_description=(f"{endpoint_name}: more than {alarm_4xx_rate_percent}% of invocations "
                               "failed with 4XX (incl. ModelError) in 5 minutes"),
            metric=self.metric_invocation_4xx_rate_percent(period=cdk.Duration.minutes(5)),
            threshold=alarm_4xx_rate_percent,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        latency_ms = int(alarm_latency_p99.to_milliseconds())
        self.alarm_latency = self._latency_alarm(
            "ModelLatencyP99Alarm", alarm_name=f"{endpoint_name}-model-latency-p99",
            description=f"{endpoint_name}: ModelLatency p99 above {latency_ms} ms in 3 of 5 minutes",
            metric=self.metric_model_latency(statistic="p99", period=cdk.Duration.minutes(1)),
            threshold_ms=latency_ms)
        self.alarms = [self.alarm_5xx, self.alarm_4xx_rate, self.alarm_latency]
        if alarm_topic is not None:
            for alarm in self.alarms:
                alarm.add_alarm_action(cloudwatch_actions.SnsAction(alarm_topic))
                alarm.add_ok_action(cloudwatch_actions.SnsAction(alarm_topic))
        return [{"AlarmName": alarm.alarm_name} for alarm in self.alarms]

    def _grant_read_rollback_alarms(self) -> None:
        """SageMaker reads the rollback alarms with the execution role during
        a blue/green or inference-component update (the deployment guardrails
        guide: the role needs cloudwatch:DescribeAlarms on them). The ARNs
        are built from the alarms' fixed names, so the role's policy does not
        wait for the alarms."""
        stack = cdk.Stack.of(self)
        self.role.add_to_policy(iam.PolicyStatement(
            sid="ReadRollbackAlarms",
            actions=["cloudwatch:DescribeAlarms"],
            resources=[stack.format_arn(service="cloudwatch", resource="alarm",
                                        resource_name=alarm.node.default_child.alarm_name,
                                        arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)
                       for alarm in self.alarms],
        ))

    def _build_shadow_alarms(self, *, alarm_topic: sns.ITopic | None, alarm_5xx_errors: int,
                             alarm_latency_p99: cdk.Duration) -> None:
        """The candidate's latency and server errors at production's thresholds.
        They notify, and never roll back: the shadow answers nobody."""
        name = self.endpoint_name
        latency_ms = int(alarm_latency_p99.to_milliseconds())
        self.shadow_alarm_5xx = self._server_errors_alarm(
            "ShadowInvocation5xxAlarm", alarm_name=f"{name}-shadow-invocation-5xx-errors",
            description=(f"{name} shadow candidate: {alarm_5xx_errors}+ server errors in "
                         "5 minutes (callers are not affected; do not promote it)"),
            metric=self.metric_shadow("Invocation5XXErrors", period=cdk.Duration.minutes(5)),
            threshold=alarm_5xx_errors)
        self.shadow_alarm_latency = self._latency_alarm(
            "ShadowModelLatencyP99Alarm", alarm_name=f"{name}-shadow-model-latency-p99",
            description=(f"{name} shadow candidate: ModelLatency p99 above {latency_ms} ms "
                         "in 3 of 5 minutes (callers are not affected; do not promote it)"),
            metric=self.metric_shadow("ModelLatency", statistic="p99"),
            threshold_ms=latency_ms)
        self.shadow_alarms = [self.shadow_alarm_5xx, self.shadow_alarm_latency]
        if alarm_topic is not None:
            for alarm in self.shadow_alarms:
                alarm.add_alarm_action(cloudwatch_actions.SnsAction(alarm_topic))
                alarm.add_ok_action(cloudwatch_actions.SnsAction(alarm_topic))

    def _server_errors_alarm(self, construct_id: str, *, alarm_name: str, description: str,
                             metric: cloudwatch.IMetric, threshold: int) -> cloudwatch.Alarm:
        """``threshold`` or more server errors in one period of ``metric``."""
        return cloudwatch.Alarm(
            self, construct_id, alarm_name=alarm_name, alarm_description=description,
            metric=metric, threshold=threshold,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=1, treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING)

    def _latency_alarm(self, construct_id: str, *, alarm_name: str, description: str,
                       metric: cloudwatch.IMetric, threshold_ms: int) -> cloudwatch.Alarm:
        """``metric`` (ModelLatency, published in microseconds) above
        ``threshold_ms`` in 3 of 5 periods."""
        return cloudwatch.Alarm(
            self, construct_id, alarm_name=alarm_name, alarm_description=description,
            metric=metric, threshold=threshold_ms * 1000,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=5, datapoints_to_alarm=3,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING)

    @staticmethod
    def _blue_green_deployment_config(*, deployment: str, step_percent: int, wait: cdk.Duration,
                                      termination_wait: cdk.Duration,
                                      rollback_alarms: list[dict[str, str]]) -> dict:
        """Blue/green update policy with automatic rollback on the alarms."""
        routing: dict = {"Type": TRAFFIC_ROUTING[deployment],
                         "WaitIntervalInSeconds": int(wait.to_seconds())}
        step = {"Type": "CAPACITY_PERCENT", "Value": step_percent}
        if deployment == "canary":
            routing["CanarySize"] = step
        elif deployment == "linear":
            routing["LinearStepSize"] = step
        termination_wait_seconds = int(termination_wait.to_seconds())
        return {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": routing,
                "TerminationWaitInSeconds": termination_wait_seconds,
                "MaximumExecutionTimeoutInSeconds": deployment_timeout_seconds(
                    deployment, step_percent, int(wait.to_seconds()),
                    termination_wait_seconds),
            },
            "AutoRollbackConfiguration": {"Alarms": rollback_alarms},
        }

    def _build_endpoint(self, deployment_config: dict | None,
                        log_groups: Sequence[logs.LogGroup]) -> None:
        """The endpoint itself, after everything it needs at creation."""
        self.endpoint = sagemaker.CfnEndpoint(
            self, "Resource",
            endpoint_name=self.endpoint_name,
            endpoint_config_name=self.endpoint_config.attr_endpoint_config_name,
        )
        if deployment_config is not None:
            self.endpoint.add_property_override("DeploymentConfig", deployment_config)
            # A deployment keeps the instance count autoscaling has reached (a
            # deploy at peak must not drop prod to initial_instance_count) but
            # applies a changed data-capture configuration.
            self.endpoint.add_property_override("RetainAllVariantProperties", True)
            # A shadow's sampling share is its weight: a changed share applies too.
            excluded = ["DataCaptureConfig"] + (["DesiredWeight"] if self.shadow is not None else [])
            self.endpoint.add_property_override(
                "ExcludeRetainedVariantProperties", [{"VariantPropertyType": t} for t in excluded])
        self.endpoint.node.add_dependency(self.role, self.service_policy, self.capture_policy,
                                         *log_groups)
        self.endpoint_arn = self.endpoint.ref

    def _build_autoscaling_role(self, stack: cdk.Stack) -> iam.IRole:
        """Application Auto Scaling acts for SageMaker through its service-linked
        role (created on first use); without it CDK would add an empty role."""
        return iam.Role.from_role_arn(
            self, "AutoScalingRole",
            stack.format_arn(
                service="iam", region="", resource="role",
                resource_name="aws-service-role/sagemaker.application-autoscaling.amazonaws.com/"
                              "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"),
            mutable=False,
        )

    def _build_inference_component(self, *, image: InferenceImage, model_data_url: str,
                                   environment: dict[str, str], cpu_cores: float, memory_mb: int,
                                   accelerators: int, deployment_wait: cdk.Duration,
                                   rollback_alarms: list[dict[str, str]]) -> None:
        """Scale to zero: the model as an inference component on the endpoint."""
        requirements = {"NumberOfCpuCoresRequired": cpu_cores,
                        "MinMemoryRequiredInMb": memory_mb}
        if accelerators:
            requirements["NumberOfAcceleratorDevicesRequired"] = accelerators
        container = {"Image": image.image_uri, "ArtifactUrl": model_data_url}
        if environment:
            container["Environment"] = environment
        self.component = sagemaker.CfnInferenceComponent(
            self, "Component",
            inference_component_name=self.component_name,
            endpoint_name=self.endpoint.attr_endpoint_name,
            variant_name=VARIANT_NAME,
            specification=sagemaker.CfnInferenceComponent.InferenceComponentSpecificationProperty(),
        )
        self.component.add_property_override("Specification", {
            "Container": container, "ComputeResourceRequirements": requirements})
        # One copy at deploy time; autoscaling takes it from there (to 0 when idle).
        self.component.add_property_override("RuntimeConfig", {"CopyCount": 1})
        # A new model version rolls out one copy at a time and rolls back
        # on the alarms (the component is updated in place: no names change).
        self.component.add_property_override("DeploymentConfig", {
            "RollingUpdatePolicy": {
                "MaximumBatchSize": {"Type": "COPY_COUNT", "Value": 1},
                "RollbackMaximumBatchSize": {"Type": "COPY_COUNT", "Value": 1},
                "WaitIntervalInSeconds": int(deployment_wait.to_seconds()),
            },
            "AutoRollbackConfiguration": {"Alarms": rollback_alarms},
        })

    def _build_component_autoscaling(self, *, autoscaling_role: iam.IRole, max_instance_count: int,
                                     target_invocations_per_instance: int,
                                     scale_in_cooldown: cdk.Duration,
                                     scale_out_cooldown: cdk.Duration) -> None:
        """Scale to zero: copies track invocations per copy, down to none; a
        request that finds no copy scales one back out."""
        self.scalable_target = appscaling.ScalableTarget(
            self, "ScalableTarget",
            service_namespace=appscaling.ServiceNamespace.SAGEMAKER,
            resource_id=f"inference-component/{self.component_name}",
            scalable_dimension="sagemaker:inference-component:DesiredCopyCount",
            role=autoscaling_role,
            min_capacity=0,
            max_capacity=max_instance_count,
        )
        self.scalable_target.node.add_dependency(self.component)
        self.scalable_target.scale_to_track_metric(
            "InvocationsPerCopy",
            target_value=target_invocations_per_instance,
            predefined_metric=appscaling.PredefinedMetric.SAGEMAKER_INFERENCE_COMPONENT_INVOCATIONS_PER_COPY,
            scale_in_cooldown=scale_in_cooldown,
            scale_out_cooldown=scale_out_cooldown,
        )
        # Target tracking cannot scale out from zero copies (no copy, no
        # invocations per copy): a request that found no capacity adds one.
        self.scale_out_from_zero = appscaling.StepScalingAction(
            self, "ScaleOutFromZero",
            scaling_target=self.scalable_target,
            adjustment_type=appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
            metric_aggregation_type=appscaling.MetricAggregationType.MAXIMUM,
            cooldown=scale_out_cooldown,
        )
        self.scale_out_from_zero.add_adjustment(adjustment=1, lower_bound=0)
        self.no_capacity_alarm = cloudwatch.Alarm(
            self, "NoCapacityAlarm",
            alarm_name=f"{self.endpoint_name}-no-capacity-scale-out",
            alarm_description=f"{self.endpoint_name}: a request found no copy; scale out from zero",
            metric=self.metric("NoCapacityInvocationFailures", statistic="Maximum",
                               period=cdk.Duration.minutes(1)),
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        self.no_capacity_alarm.add_alarm_action(
            cloudwatch_actions.ApplicationScalingAction(self.scale_out_from_zero))

    def _build_variant_autoscaling(self, *, autoscaling_role: iam.IRole, min_instance_count: int,
                                   max_instance_count: int, target_invocations_per_instance: int,
                                   gpu_utilization_target_percent: int | None,
                                   scale_in_cooldown: cdk.Duration,
                                   scale_out_cooldown: cdk.Duration) -> None:
        """Instances of the variant track invocations per instance and
        optionally GPU utilization."""
        self.scalable_target = appscaling.ScalableTarget(
            self, "ScalableTarget",
            service_namespace=appscaling.ServiceNamespace.SAGEMAKER,
            resource_id=f"endpoint/{self.endpoint_name}/variant/{VARIANT_NAME}",
            scalable_dimension="sagemaker:variant:DesiredInstanceCount",
            role=autoscaling_role,
            min_capacity=min_instance_count,
            max_capacity=max_instance_count,
        )
        self.scalable_target.node.add_dependency(self.endpoint)
        self.scalable_target.scale_to_track_metric(
            "InvocationsPerInstance",
            target_value=target_invocations_per_instance,
            predefined_metric=appscaling.PredefinedMetric.SAGEMAKER_VARIANT_INVOCATIONS_PER_INSTANCE,
            scale_in_cooldown=scale_in_cooldown,
            scale_out_cooldown=scale_out_cooldown,
        )
        if gpu_utilization_target_percent is not None:
            self.scalable_target.scale_to_track_metric(
                "GpuUtilization",
                target_value=gpu_utilization_target_percent,
                custom_metric=self.metric_gpu_utilization(),
                scale_in_cooldown=scale_in_cooldown,
                scale_out_cooldown=scale_out_cooldown,
            )

    def _build_release_scaling(self, *, off_hours: OffHoursSchedule | None, max_instance_count: int,
                               target_concurrent_requests: float | None, scale_in_cooldown: cdk.Duration,
                               scale_out_cooldown: cdk.Duration) -> None:
        """Off hours of a component and high-resolution target tracking, when asked for."""
        self.off_hours_actions = add_scalable_target_off_hours_schedule(
            self.scalable_target, off_hours, restore_max_capacity=max_instance_count)
        if target_concurrent_requests is not None:
            self._track_concurrent_requests(target_concurrent_requests, scale_in_cooldown=scale_in_cooldown,
                                            scale_out_cooldown=scale_out_cooldown)

    def _track_concurrent_requests(self, target: float, *, scale_in_cooldown: cdk.Duration,
                                   scale_out_cooldown: cdk.Duration) -> None:
        """Target tracking on concurrent requests per model (per copy for a
        component), which SageMaker publishes every 10 seconds: a burst scales
        out within a minute instead of after several one-minute datapoints."""
        metric = (appscaling.PredefinedMetric
                  .SAGEMAKER_INFERENCE_COMPONENT_CONCURRENT_REQUESTS_PER_COPY_HIGH_RESOLUTION
                  if self.scale_to_zero else
                  appscaling.PredefinedMetric.SAGEMAKER_VARIANT_CONCURRENT_REQUESTS_PER_MODEL_HIGH_RESOLUTION)
        self.scalable_target.scale_to_track_metric(
            "ConcurrentRequests",
            target_value=target,
            predefined_metric=metric,
            scale_in_cooldown=scale_in_cooldown,
            scale_out_cooldown=scale_out_cooldown,
        )

    # --- metrics ---------------------------------------------------------

    def metric(self, metric_name: str, *, statistic: str = "Sum",
               period: cdk.Duration | None = None,
               namespace: str = SAGEMAKER_NAMESPACE) -> cloudwatch.Metric:
        """A metric of this endpoint (its inference component with scale-to-zero)."""
        return cloudwatch.Metric(
            namespace=namespace, metric_name=metric_name, dimensions_map=self._dimensions,
            statistic=statistic, period=period or cdk.Duration.minutes(1))

    def metric_shadow(self, metric_name: str, *, statistic: str = "Sum",
                      period: cdk.Duration | None = None) -> cloudwatch.Metric:
        """A metric of the shadow variant (``AWS/SageMaker``, its own VariantName)."""
        if self.shadow is None:
            raise ValueError(f"{self.endpoint_name} has no shadow variant")
        return cloudwatch.Metric(
            namespace=SAGEMAKER_NAMESPACE, metric_name=metric_name,
            dimensions_map={"EndpointName": self.endpoint_name, "VariantName": self.shadow_variant_name},
            statistic=statistic, period=period or cdk.Duration.minutes(1))

    def metric_invocations(self, *, period: cdk.Duration | None = None) -> cloudwatch.Metric:
        return self.metric("Invocations", period=period)

    def metric_invocation_5xx_errors(self, *, period: cdk.Duration | None = None) -> cloudwatch.Metric:
        return self.metric("Invocation5XXErrors", period=period)

    def metric_invocation_4xx_errors(self, *, period: cdk.Duration | None = None) -> cloudwatch.Metric:
        return self.metric("Invocation4XXErrors", period=period)

    def metric_invocation_4xx_rate_percent(self, *, period: cdk.Duration | None = None
                                           ) -> cloudwatch.MathExpression:
        """4XX errors (ModelError included) as a percentage of invocations; 0 without traffic."""
        return cloudwatch.MathExpression(
            expression="IF(invocations > 0, 100 * errors / invocations, 0)",
            using_metrics={"errors": self.metric_invocation_4xx_errors(period=period),
                           "invocations": self.metric_invocations(period=period)},
            label="4XX rate (%)",
            period=period or cdk.Duration.minutes(1),
        )

    def metric_model_latency(self, *, statistic: str = "p99",
                             period: cdk.Duration | None = None) -> cloudwatch.Metric:
        """Time the model took to answer, in microseconds."""
        return self.metric("ModelLatency", statistic=statistic, period=period)

    def metric_gpu_utilization(self, *, period: cdk.Duration | None = None) -> cloudwatch.Metric:
        """GPU utilization per instance (summed over its GPUs: 0–100 × GPUs)."""
        if self.scale_to_zero:
            return self.metric("GPUUtilizationNormalized", statistic="Average", period=period,
                               namespace=COMPONENT_INSTANCE_NAMESPACE)
        return self.metric("GPUUtilization", statistic="Average", period=period,
                           namespace=ENDPOINT_INSTANCE_NAMESPACE)

    def metric_instance_count(self) -> cloudwatch.Metric:
        """Instances in service: each publishes one CPU datapoint a minute."""
        return cloudwatch.Metric(
            namespace=ENDPOINT_INSTANCE_NAMESPACE, metric_name="CPUUtilization",
            dimensions_map={"EndpointName": self.endpoint_name, "VariantName": VARIANT_NAME},
            statistic="SampleCount", period=cdk.Duration.minutes(1), label="instances")

    def grant_invoke(self, grantee: iam.IGrantable) -> iam.Grant:
        """Allow ``grantee`` to call InvokeEndpoint on this endpoint only."""
        return iam.Grant.add_to_principal(
            grantee=grantee, actions=["sagemaker:InvokeEndpoint"], resource_arns=[self.endpoint_arn])


def _model_data_url(package: InferenceModelPackage | None, bucket: s3.IBucket | None,
                    key: str | None) -> str | None:
    """The S3 URL of the model artifact; none for a model package (it names its own)."""
    return None if package is not None else f"s3://{bucket.bucket_name}/{key}"


def _check_props(deployment: str, image: InferenceImage | None, bucket: s3.IBucket | None,
                 key: str | None, package: InferenceModelPackage | None, *, scale_to_zero: bool,
                 shadow: ShadowVariant | None, off_hours: OffHoursSchedule | None) -> None:
    """A known deployment, exactly one model (an image with its artifact, or a
    model package) and release props the serving mode supports."""
    if deployment not in TRAFFIC_ROUTING:
        raise ValueError(f"deployment: {deployment!r} is not allowed — one of "
                         + ", ".join(TRAFFIC_ROUTING))
    if off_hours is not None and not scale_to_zero:
        raise ValueError("off_hours: only an inference component (scale_to_zero) closes "
                         "for the night; a variant keeps at least one instance")
    artifact = (image is not None, bucket is not None, key is not None)
    if package is None and not all(artifact):
        raise ValueError("model: give image, model_data_bucket and model_data_key, or model_package")
    if package is not None and any(artifact):
        raise ValueError("model: model_package names its image and artifact; give no image, "
                         "model_data_bucket or model_data_key with it")
    if package is not None and scale_to_zero:
        raise ValueError("model_package: an inference component (scale_to_zero) takes an image and "
                         "an artifact, not a model package")
    if shadow is not None and scale_to_zero:
        raise ValueError("shadow: an inference component endpoint's variant carries no model to shadow")
    if shadow is not None and not 1 <= shadow.sampling_percent <= 100:
        raise ValueError(f"shadow.sampling_percent: {shadow.sampling_percent!r} is not from 1 to 100")
    if shadow is not None:
        candidate = (shadow.image is not None, shadow.model_data_bucket is not None,
                     shadow.model_data_key is not None)
        if (shadow.model_package is None) != all(candidate) or (shadow.model_package and any(candidate)):
            raise ValueError("shadow: give image, model_data_bucket and model_data_key, or model_package")
