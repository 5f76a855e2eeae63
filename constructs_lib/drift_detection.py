"""Scheduled CloudFormation drift detection over the stacks of a stage."""

from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from constructs import Construct

from constructs_lib.acknowledge import acknowledge

CODE_DIR = Path(__file__).resolve().parent.parent / "lambda" / "drift_detector"

# DetectStackDrift compares each resource with what its service reports,
# using the caller's permissions: the function must be able to read the
# configuration (never the data) of every resource type the stage's stacks
# contain. Reads of configuration only: no s3:GetObject, no secret values.
DRIFT_READ_ACTIONS = (
    "application-autoscaling:Describe*",
    "autoscaling:Describe*",
    "budgets:ViewBudget",
    "cloudwatch:Describe*",
    "cloudwatch:ListTagsForResource",
    "ec2:Describe*",
    "ecr:Describe*",
    "ecr:GetLifecyclePolicy",
    "ecr:GetRepositoryPolicy",
    "ecr:ListTagsForResource",
    "eks:Describe*",
    "eks:List*",
    "events:Describe*",
    "events:List*",
    "iam:Get*",
    "iam:List*",
    "kms:Describe*",
    "kms:Get*",
    "kms:List*",
    "lambda:Get*",
    "lambda:List*",
    "logs:Describe*",
    "logs:ListTagsForResource",
    "logs:ListTagsLogGroup",
    "s3:GetAccelerateConfiguration",
    "s3:GetBucket*",
    "s3:GetEncryptionConfiguration",
    "s3:GetLifecycleConfiguration",
    "s3:GetReplicationConfiguration",
    "sagemaker:Describe*",
    "sagemaker:List*",
    "sns:Get*",
    "sns:List*",
    "sqs:GetQueueAttributes",
    "sqs:ListQueueTags",
    "ssm:Describe*",
    "ssm:GetDocument",
    "ssm:ListTagsForResource",
)


class StackDriftDetection(Construct):
    """A function that runs ``DetectStackDrift`` on every stack whose name
    starts with ``stack_name_prefix`` on ``schedule`` and publishes drifted
    stacks (and stacks it could not check) to ``alerts_topic``.

    An alarm on the function's own errors goes to the same topic, so a
    broken checker is not mistaken for "no drift".

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
        timeout: cdk.Duration = cdk.Duration.minutes(10),
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.log_group = logs.LogGroup(self, "Logs", retention=log_retention,
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
            },
            description=f"Daily CloudFormation drift detection of the {stage} stacks",
        )
        self.log_group.grant_write(role)
        alerts_topic.grant_publish(role)

        stage_stacks = stack.format_arn(service="cloudformation", resource="stack",
                                        resource_name=f"{stack_name_prefix}*/*")
        role.add_to_policy(iam.PolicyStatement(
            sid="DetectDriftOfStageStacks",
            actions=["cloudformation:DetectStackDrift", "cloudformation:DetectStackResourceDrift",
                     "cloudformation:DescribeStackResourceDrifts"],
            resources=[stage_stacks],
        ))
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
                    "permissions, and drift detection reads the configuration of every resource "
                    "of the stage's stacks, whatever their names")
        for action in sorted({a for a in DRIFT_READ_ACTIONS if a.endswith("*")}):
            acknowledge(role, f"AwsSolutions::AwsSolutions-IAM5[Action::{action}]",
                        "drift detection calls the read (Describe/Get/List) APIs of each "
                        "resource type it checks; configuration reads only, no data reads")
        acknowledge(role, f"AwsSolutions::AwsSolutions-IAM5[Resource::{_as_nag_prints(stack, stage_stacks)}]",
                    "every stack of the stage (its name prefix), including stacks added to the "
                    "stage later: the function finds them with ListStacks")
        acknowledge(role, "AwsSolutions::AwsSolutions-IAM5[Action::kms:GenerateDataKey*]",
                    "Topic.grant_publish on the encrypted alerts topic: SNS needs the "
                    "GenerateDataKey family on the stage key to encrypt each published message")

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


def _as_nag_prints(stack: cdk.Stack, value: str) -> str:
    """``value`` the way a cdk-nag finding id spells it: pseudo parameters
    that are still tokens become ``<AWS::...>``."""
    resolved = stack.resolve(value)
    if isinstance(resolved, str):
        return resolved
    parts = resolved["Fn::Join"][1]
    return "".join(p if isinstance(p, str) else f"<{p['Ref']}>" for p in parts)
