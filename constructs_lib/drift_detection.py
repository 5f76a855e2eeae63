"""Scheduled CloudFormation drift detection over the stacks of a stage."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from constructs import Construct

from constructs_lib.acknowledge import acknowledge
from constructs_lib.kms_grants import grant_publish

CODE_DIR = Path(__file__).resolve().parent.parent / "lambda" / "drift_detector"

# DetectStackDrift compares each resource with what its service reports,
# using the caller's permissions: the function must be able to read the
# configuration (never the data) of every resource type the stage's stacks
# contain. The actions are the read handlers' permissions of those types
# (CloudFormation resource schemas, `handlers.read.permissions`), spelled out:
# no `Verb*` wildcards. Left out on purpose: `kms:Decrypt` (Lambda lists it to
# show a function's environment decrypted: data, not configuration),
# `iam:PassRole` (the Events rule schema lists it; not a read) and
# `managed-fleets:Get*` (Auto Scaling features we do not use) and
# `vpc-lattice:DescribeServiceNetworkVpcEndpointAssociation` (the VPC endpoint
# schema lists it, IAM has no such action: cfn-lint W3037).
# tests/unit/test_guardrails.py checks this list against the schemas of every
# resource type the stages deploy.
DRIFT_READ_ACTIONS = (
    "application-autoscaling:DescribeScalableTargets",
    "application-autoscaling:DescribeScalingPolicies",
    "application-autoscaling:DescribeScheduledActions",
    "application-autoscaling:ListTagsForResource",
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:DescribeLifecycleHooks",
    "autoscaling:DescribeNotificationConfigurations",
    "autoscaling:DescribePolicies",
    "autoscaling:DescribeScheduledActions",
    "autoscaling:DescribeTags",
    "autoscaling:DescribeTrafficSources",
    "autoscaling:DescribeWarmPool",
    "billing:GetBillingViewData",
    "budgets:ListTagsForResource",
    "budgets:ViewBudget",
    "cloudwatch:DescribeAlarms",
    "cloudwatch:GetDashboard",
    "cloudwatch:ListTagsForResource",
    "dynamodb:DescribeContinuousBackups",
    "dynamodb:DescribeContributorInsights",
    "dynamodb:DescribeKinesisStreamingDestination",
    "dynamodb:DescribeTable",
    "dynamodb:DescribeTimeToLive",
    "dynamodb:GetResourcePolicy",
    "dynamodb:ListTagsOfResource",
    "ec2:DescribeAddresses",
    "ec2:DescribeFlowLogs",
    "ec2:DescribeInternetGateways",
    "ec2:DescribeLaunchTemplateVersions",
    "ec2:DescribeLaunchTemplates",
    "ec2:DescribeNatGateways",
    "ec2:DescribeNetworkAcls",
    "ec2:DescribeRouteTables",
    "ec2:DescribeSecurityGroupRules",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeSubnets",
    "ec2:DescribeVpcAttribute",
    "ec2:DescribeVpcEncryptionControls",
    "ec2:DescribeVpcEndpoints",
    "ec2:DescribeVpcs",
    "ec2:DescribeVpnGateways",
    "ecr:DescribeRepositories",
    "ecr:GetLifecyclePolicy",
    "ecr:GetRepositoryPolicy",
    "ecr:ListTagsForResource",
    "eks:DescribeAccessEntry",
    "eks:DescribeAddon",
    "eks:DescribeCluster",
    "eks:DescribeNodegroup",
    "eks:ListAssociatedAccessPolicies",
    "eks:ListTagsForResource",
    "events:DescribeEventBus",
    "events:DescribeRule",
    "events:ListTagsForResource",
    "events:ListTargetsByRule",
    "kms:DescribeKey",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:ListAliases",
    "kms:ListResourceTags",
    # Event source mappings are named by a generated UUID (the ARN pattern
    # event-source-mapping:* named every mapping anyway); ListTags reads the
    # tags of mappings and functions (tags, not code or environment).
    "lambda:GetEventSourceMapping",
    "lambda:ListTags",
    "logs:DescribeIndexPolicies",
    "logs:DescribeLogGroups",
    "logs:DescribeResourcePolicies",
    "logs:GetDataProtectionPolicy",
    "logs:ListTagsForResource",
    "sagemaker:DescribeEndpoint",
    "sagemaker:DescribeEndpointConfig",
    "sagemaker:DescribeInferenceComponent",
    "sagemaker:DescribeModel",
    "sagemaker:ListTags",
    "sns:GetDataProtectionPolicy",
    "sns:GetTopicAttributes",
    "sns:ListSubscriptionsByTopic",
    "sns:ListTagsForResource",
    "sqs:GetQueueAttributes",
    "sqs:ListQueueTags",
    "ssm:DescribeDocument",
    "ssm:GetDocument",
    "ssm:ListTagsForResource",
)
# Reads whose API takes a resource ARN, scoped to the stage's own resources:
# CloudFormation names them after their stack (``<stack>-<logical id>-<suffix>``),
# and every stack of the stage starts with the prefix.
# (resource ARN pattern, with {p} the stack name prefix) -> actions
DRIFT_STAGE_SCOPED_READS: dict[str, tuple[str, ...]] = {
    "arn:{partition}:lambda:{region}:{account}:function:{p}*": (
        "lambda:GetFunction", "lambda:GetFunctionCodeSigningConfig",
        "lambda:GetFunctionEventInvokeConfig", "lambda:GetFunctionRecursionConfig",
        "lambda:GetFunctionScalingConfig", "lambda:GetPolicy",
        "lambda:GetRuntimeManagementConfig"),
    # Roles and instance profiles in one pattern: these actions apply to no
    # other IAM resource type, so matching role/... and instance-profile/...
    # (under any path) grants nothing more than one pattern each did.
    "arn:{partition}:iam::{account}:*/{p}*": (
        "iam:GetInstanceProfile", "iam:GetRole", "iam:GetRolePolicy",
        "iam:ListAttachedRolePolicies", "iam:ListRolePolicies"),
}
# Bucket configuration reads: only the buckets the stage names (``buckets``).
DRIFT_BUCKET_READS = (
    "s3:GetAccelerateConfiguration", "s3:GetAnalyticsConfiguration", "s3:GetBucketAbac",
    "s3:GetBucketCORS", "s3:GetBucketLogging", "s3:GetBucketMetadataTableConfiguration",
    "s3:GetBucketNotification", "s3:GetBucketObjectLockConfiguration",
    "s3:GetBucketOwnershipControls", "s3:GetBucketPolicy", "s3:GetBucketPublicAccessBlock",
    "s3:GetBucketTagging", "s3:GetBucketVersioning", "s3:GetBucketWebsite",
    "s3:GetEncryptionConfiguration", "s3:GetIntelligentTieringConfiguration",
    "s3:GetInventoryConfiguration", "s3:GetLifecycleConfiguration",
    "s3:GetMetricsConfiguration", "s3:GetReplicationConfiguration", "s3:ListBucket",
    "s3:ListTagsForResource")
# The parameters' own read (it returns the value): only the parameters the
# stage names (``parameter_names``), each by its full name.
DRIFT_PARAMETER_READS = ("ssm:GetParameters",)


class StackDriftDetection(Construct):
    """A function that runs ``DetectStackDrift`` on every stack whose name
    starts with ``stack_name_prefix`` on ``schedule`` and publishes drifted
    stacks (and stacks it could not check) to ``alerts_topic``.

    An alarm on the function's own errors goes to the same topic, so a
    broken checker is not mistaken for "no drift".

    ``parameter_names``: the SSM parameters of the stage's stacks, by full
    name (``/ml-dev/...``); drift detection may read these values and no
    other parameter's. ``buckets``: the stage's buckets, in any of its
    regions; it reads their configuration (never objects) and no other
    bucket's. A parameter or bucket left out is reported as not checked
    (UNKNOWN). Default: none.

    ``other_regions``: regions besides this stack's where the stage has
    stacks (the replica's); their stacks are checked too. Default: none.
    ``other_function_regions``: those of them whose stacks hold Lambda
    functions, whose configuration it then reads there. Default: none.

    Attributes: ``function`` (``lambda_.Function``), ``rule``
    (``events.Rule``), ``errors_alarm`` (``cloudwatch.Alarm``).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        stage: str,
        stack_name_prefix: str,
        alerts_topic: sns.ITopic,
        schedule: events.Schedule,
        log_retention: logs.RetentionDays,
        removal_policy: cdk.RemovalPolicy,
        parameter_names: Sequence[str] = (),
        buckets: Sequence[s3.IBucket] = (),
        other_regions: Sequence[str] = (),
        other_function_regions: Sequence[str] = (),
        timeout: cdk.Duration = cdk.Duration.minutes(10),
        log_group_name: str | None = None,
        log_key: kms.IKey | None = None,
    ) -> None:
        """``log_group_name`` / ``log_key``: the function's log group name and
        encryption key. Defaults: a name CloudFormation generates, CloudWatch
        Logs' own encryption."""
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.log_group = logs.LogGroup(self, "Logs", retention=log_retention,
                                       log_group_name=log_group_name, encryption_key=log_key,
                                       removal_policy=removal_policy)
        # An own role: the managed AWSLambdaBasicExecutionRole would allow
        # writing to every log group of the account.
        role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                        description=f"Drift detection of the {stage} stacks")
        self.function = lambda_.Function(
            self,
            "Resource",
            runtime=lambda_.Runtime.PYTHON_3_14,
            handler="handler.handler",
            code=lambda_.Code.from_asset(str(CODE_DIR), exclude=["__pycache__", "*.pyc"]),
            timeout=timeout,
            memory_size=256,
            role=role,
            log_group=self.log_group,
            environment={
                "STAGE": stage,
                "STACK_PREFIX": stack_name_prefix,
                "TOPIC_ARN": alerts_topic.topic_arn,
                **({"OTHER_REGIONS": ",".join(other_regions)} if other_regions else {}),
            },
            description=f"Daily CloudFormation drift detection of the {stage} stacks",
        )
        self.log_group.grant_write(role)
        grant_publish(alerts_topic, role)
        self._grant_detection(role, stack, stack_name_prefix, parameter_names, buckets,
                              regions=(stack.region, *other_regions),
                              function_regions=(stack.region, *other_function_regions))

        self.rule = events.Rule(self, "Schedule", schedule=schedule,
                                description=f"Daily drift detection of the {stage} stacks")
        self.rule.add_target(targets.LambdaFunction(self.function, retry_attempts=2,
                                                    max_event_age=cdk.Duration.hours(2)))

        self.errors_alarm = self.function.metric_errors(period=cdk.Duration.hours(1)).create_alarm(
            self, "ErrorsAlarm",
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=f"The {stage} drift detection function failed: drift is not being checked",
        )
        self.errors_alarm.add_alarm_action(cw_actions.SnsAction(alerts_topic))

    def _grant_detection(self, role: iam.Role, stack: cdk.Stack, stack_name_prefix: str,
                         parameter_names: Sequence[str], buckets: Sequence[s3.IBucket], *,
                         regions: Sequence[str], function_regions: Sequence[str]) -> None:
        """DetectStackDrift on the stage's stacks (in each of its ``regions``)
        and the configuration reads it makes."""
        stage_stacks = [stack.format_arn(service="cloudformation", resource="stack", region=region,
                                         resource_name=f"{stack_name_prefix}*/*") for region in regions]
        role.add_to_policy(iam.PolicyStatement(
            sid="DetectDriftOfStageStacks",
            actions=["cloudformation:DetectStackDrift", "cloudformation:DetectStackResourceDrift",
                     "cloudformation:DescribeStackResourceDrifts"],
            resources=stage_stacks,
        ))
        for stacks in stage_stacks:
            acknowledge(role, f"AwsSolutions::AwsSolutions-IAM5[Resource::{stacks}]",
                        "every stack of the stage in this region (its name prefix; a stack ARN ends "
                        "in an ID known only once the stack exists), including stacks added to the "
                        "stage later: the function finds them with ListStacks")
        # ListStacks and DescribeStackDriftDetectionStatus support no
        # resource-level permissions.
        role.add_to_policy(iam.PolicyStatement(
            sid="ListStacksAndDetectionStatus",
            actions=["cloudformation:ListStacks", "cloudformation:DescribeStackDriftDetectionStatus"],
            resources=["*"],
        ))
        role.add_to_policy(iam.PolicyStatement(
            sid="ReadConfigurationOfCheckedResources",
            actions=list(DRIFT_READ_ACTIONS),
            resources=["*"],
        ))
        acknowledge(role, "AwsSolutions::AwsSolutions-IAM5[Resource::*]",
                    "ListStacks and DescribeStackDriftDetectionStatus have no resource-level "
                    "permissions, and drift detection reads the configuration (Describe/Get/List "
                    "actions named one by one) of every resource of the stage's stacks, whose "
                    "IDs are generated")
        self._add_stage_scoped_reads(role, stack, stack_name_prefix, function_regions=function_regions)
        if parameter_names:
            role.add_to_policy(iam.PolicyStatement(
                sid="ReadConfigurationOfStageParameters", actions=list(DRIFT_PARAMETER_READS),
                resources=[stack.format_arn(service="ssm", resource="parameter",
                                            resource_name=name.lstrip("/"))
                           for name in parameter_names]))
        if buckets:
            role.add_to_policy(iam.PolicyStatement(
                sid="ReadConfigurationOfStageBuckets", actions=list(DRIFT_BUCKET_READS),
                resources=[bucket.bucket_arn for bucket in buckets]))

    def _add_stage_scoped_reads(self, role: iam.Role, stack: cdk.Stack, stack_name_prefix: str, *,
                                function_regions: Sequence[str]) -> None:
        """Reads of functions, roles and instance profiles: only the stage's own,
        functions in each of ``function_regions`` (IAM is global: one pattern)."""
        for index, (pattern, actions) in enumerate(DRIFT_STAGE_SCOPED_READS.items()):
            resources = list(dict.fromkeys(
                _stage_scoped_resource(pattern, stack, stack_name_prefix, region)
                for region in function_regions))
            role.add_to_policy(iam.PolicyStatement(
                sid=f"ReadConfigurationOfStageResources{index}", actions=list(actions),
                resources=resources))
            for resource in resources:
                acknowledge(role, f"AwsSolutions::AwsSolutions-IAM5[Resource::{resource}]",
                            "the stage's own resources of this type: CloudFormation names them after "
                            "their stack, and every stack of the stage starts with the stage prefix")


def _stage_scoped_resource(pattern: str, stack: cdk.Stack, stack_name_prefix: str, region: str) -> str:
    return pattern.format(partition=stack.partition, region=region, account=stack.account,
                          p=stack_name_prefix)

