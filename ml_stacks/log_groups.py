"""The names of every log group a stage creates, and the patterns its logs key admits.

CloudWatch Logs may use the stage's logs key only for log groups whose ARN
matches ``log_group_name_patterns`` (the key policy's
``kms:EncryptionContext:aws:logs:arn`` condition). So every log group we
create has an explicit name:

- our own groups: ``/<stack prefix>/<stack>/<purpose>/<stack uuid>``. The
  stack's UUID (from ``AWS::StackId``) keeps the name unique per creation of
  the stack: a group kept by ``RETAIN`` never collides with the group of the
  same stack created again after a destroy, and so none of them is a fixed
  name preflight has to look for (``ml_stacks/fixed_names.py``);
- groups whose name a service decides (EKS control plane, SageMaker
  endpoints and inference components): their fixed names from
  ``fixed_names``.

The storage stack computes the patterns from config alone, so it never
depends on the stacks whose groups it admits.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from ml_stacks.config import StageConfig
from ml_stacks.fixed_names import LOG_GROUP, fixed_names


def own_log_group_prefix(config: StageConfig) -> str:
    """The name prefix of every log group the stage names itself: ``/<stack prefix>/``."""
    return f"/{config.stack_prefix}/"


def log_group_name(stack: cdk.Stack, config: StageConfig, purpose: str) -> str:
    """``/<stack prefix>/<stack construct id>/<purpose>/<stack uuid>`` (a token)."""
    stack_uuid = cdk.Fn.select(2, cdk.Fn.split("/", stack.stack_id))
    return f"{own_log_group_prefix(config)}{stack.node.id}/{purpose}/{stack_uuid}"


# CloudWatch Logs' own use of a log group key, as its user guide states it
# ("Encrypt log data in CloudWatch Logs using AWS KMS").
LOGS_SERVICE_KEY_ACTIONS = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*",
                            "kms:GenerateDataKey*", "kms:Describe*"]
# CDK's provider of buckets that empty themselves on destroy (``auto_delete_objects``).
AUTO_DELETE_PROVIDER = "Custom::S3AutoDeleteObjectsCustomResourceProvider"
# The groups SageMaker names after an endpoint or inference component.
SAGEMAKER_LOG_GROUP_PREFIXES = ("/aws/sagemaker/Endpoints/", "/aws/sagemaker/InferenceComponents/")


def log_group_name_patterns(config: StageConfig) -> list[str]:
    """Every log group name of ``config``'s stage, as ``ArnLike`` resource-name patterns.

    SageMaker's groups are matched by the stage's endpoint name prefix
    (``ml-<stage>-``), not one name per model: adding or removing a model must
    not change the storage stack's key policy (one stack per model).
    """
    service_named = [f.name for f in fixed_names(config) if f.resource_type == LOG_GROUP
                     and not f.name.startswith(SAGEMAKER_LOG_GROUP_PREFIXES)]
    sagemaker = [f"{prefix}{config.stack_prefix}-*" for prefix in SAGEMAKER_LOG_GROUP_PREFIXES]
    return [f"{own_log_group_prefix(config)}*", *service_named, *sagemaker]


def allow_logs_service(key: kms.Key, config: StageConfig) -> None:
    """Let CloudWatch Logs in the key's region use ``key`` for the stage's
    log groups only.

    CloudWatch Logs calls KMS with the log group's ARN as encryption
    context: the condition lists exactly the names the stage gives its
    groups, computed from config so the key's stack depends on no other.
    """
    stack = cdk.Stack.of(key)
    arns = [stack.format_arn(service="logs", resource="log-group", resource_name=pattern,
                             arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)
            for pattern in log_group_name_patterns(config)]
    key.add_to_resource_policy(iam.PolicyStatement(
        sid="AllowCloudWatchLogsForStageLogGroups",
        principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
        actions=LOGS_SERVICE_KEY_ACTIONS,
        resources=["*"],
        conditions={"ArnLike": {"kms:EncryptionContext:aws:logs:arn": arns}},
    ))


def encrypted_log_group(scope: Construct, construct_id: str, *, config: StageConfig, purpose: str,
                        key: kms.IKey, retention: logs.RetentionDays,
                        removal_policy: cdk.RemovalPolicy) -> logs.LogGroup:
    """A log group of the stage named by ``log_group_name`` and encrypted with ``key``."""
    return logs.LogGroup(scope, construct_id,
                         log_group_name=log_group_name(cdk.Stack.of(scope), config, purpose),
                         encryption_key=key, retention=retention, removal_policy=removal_policy)


def encrypt_provider_logs(stack: cdk.Stack, provider_id: str, *, config: StageConfig, purpose: str,
                          key: kms.IKey) -> logs.LogGroup | None:
    """Give the singleton Lambda of a CDK custom resource provider (``provider_id``,
    e.g. ``Custom::S3AutoDeleteObjectsCustomResourceProvider``) a log group of the
    stage encrypted with ``key``, one month of retention. None when ``stack``
    has no such provider.

    These providers are plain ``AWS::Lambda::Function`` resources without a
    logging option: left alone, Lambda writes to ``/aws/lambda/<function>``,
    a group it creates itself, unencrypted and kept forever.
    """
    provider = stack.node.try_find_child(provider_id)
    if provider is None:
        return None
    log_group = encrypted_log_group(stack, f"{provider_id.removeprefix('Custom::')}Logs",
                                    config=config, purpose=purpose, key=key,
                                    retention=logs.RetentionDays.ONE_MONTH,
                                    removal_policy=cdk.RemovalPolicy.DESTROY)
    handler = provider.node.find_child("Handler")
    handler.add_property_override("LoggingConfig.LogGroup", log_group.log_group_name)
    handler.node.add_dependency(log_group)
    return log_group
