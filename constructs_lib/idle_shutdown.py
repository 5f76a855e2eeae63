"""IdleShutdown: the idle-GPU sweep and the job-completion scale-down.

A Lambda function (``lambda/idle_shutdown``) runs on an EventBridge
schedule and on ``ml.training`` / ``Training Job Finished`` events. It may
terminate instances and set the desired capacity only of Auto Scaling groups
that carry the opt-in tag: IAM enforces that with a condition on
``autoscaling:ResourceTag/<key>``, the function checks it too.

Job-finished events are trusted only on the construct's own event bus
(``event_bus``), never on the account's default bus: the bus policy written
by ``accept_completion_only_from`` denies ``events:PutEvents`` to every
principal but the stage's producers, which in the same account overrides
any identity policy that allows ``events:PutEvents`` on ``*``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import aws_cdk as cdk
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from constructs import Construct

from constructs_lib.acknowledge import UnscopedApis, acknowledge
from constructs_lib.kms_grants import grant_publish

CODE_DIR = Path(__file__).resolve().parent.parent / "lambda" / "idle_shutdown"
# lambda/idle_shutdown/idle_settings.py STAGE_TAG: the function acts on a
# job-finished event only for a group this stage enrolled.
STAGE_TAG = "ml:idle-shutdown-stage"
COMPLETION_SOURCE = "ml.training"
COMPLETION_DETAIL_TYPE = "Training Job Finished"
PRODUCERS_ONLY_SID = "OnlyTheStageProducersPutEvents"
# Another statement ID: a stage whose fleet was switched off may still have a
# training stack (cdk deploy does not delete it) holding PRODUCERS_ONLY_SID.
NO_PRODUCERS_SID = "NobodyPutsEvents"


class IdleShutdown(Construct):
    """Stops idle GPU instances of opted-in Auto Scaling groups.

    ``event_bus`` is where the job-finished rule listens; call
    ``accept_completion_only_from`` exactly once (from the producers' stack)
    to lock it to its producers.

    :param alerts_topic: where stops and job-completion scale-downs are
        reported, and where the function's error alarm goes.
    :param stage: stage name, in notifications and as the EMF dimension.
    :param threshold_percent: idle below this GPU utilization. Default 5.
    :param window: how long every datapoint must stay below. Default 15 min.
    :param launch_grace: instances younger than this are never stopped.
        Default 20 min.
    :param schedule_rate: how often the sweep runs. Default 5 min.
    :param dry_run: decide and report, stop nothing. Default False.
    :param enabled: False disables both rules (the function stays). Default True.
    :param opt_in_tag_key / opt_in_tag_value: the tag a group needs.
        Default ``ml:idle-shutdown`` = ``enabled``.
    :param savings_horizon_hours: idle time a stop is assumed to save (the
        ``GpuHoursSaved`` metric only). Default 1.
    :param log_retention: of the function's log group. Default one month.
    :param removal_policy: of the log group. Default DESTROY.
    :param log_group_name / log_key: the log group's name and encryption
        key. Defaults: a name CloudFormation generates, CloudWatch Logs' own
        encryption.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        alerts_topic: sns.ITopic,
        stage: str,
        threshold_percent: float = 5.0,
        window: cdk.Duration = cdk.Duration.minutes(15),
        launch_grace: cdk.Duration = cdk.Duration.minutes(20),
        schedule_rate: cdk.Duration = cdk.Duration.minutes(5),
        dry_run: bool = False,
        enabled: bool = True,
        opt_in_tag_key: str = "ml:idle-shutdown",
        opt_in_tag_value: str = "enabled",
        savings_horizon_hours: float = 1.0,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
        removal_policy: cdk.RemovalPolicy = cdk.RemovalPolicy.DESTROY,
        log_group_name: str | None = None,
        log_key: kms.IKey | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.opt_in_tag_key = opt_in_tag_key
        self.opt_in_tag_value = opt_in_tag_value
        self.stage = stage
        self._producers_policy: cdk.CfnResource | None = None

        self._build_logs_and_role(log_retention, removal_policy, log_group_name, log_key)
        self._build_policies(alerts_topic, opt_in_tag_key, opt_in_tag_value)
        self._build_function(alerts_topic, stage, threshold_percent, window, launch_grace,
                             dry_run, opt_in_tag_key, opt_in_tag_value, savings_horizon_hours)
        self._build_rules(schedule_rate, enabled)
        self._build_errors_alarm(alerts_topic)

    def _build_logs_and_role(self, log_retention: logs.RetentionDays,
                             removal_policy: cdk.RemovalPolicy, log_group_name: str | None,
                             log_key: kms.IKey | None) -> None:
        self.log_group = logs.LogGroup(self, "Logs", retention=log_retention,
                                       log_group_name=log_group_name, encryption_key=log_key,
                                       removal_policy=removal_policy)
        self.role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                             description="idle-shutdown function: reads fleets and GPU metrics, "
                                         "stops idle instances of opted-in groups")
        self.log_group.grant_write(self.role)

    def _build_policies(self, alerts_topic: sns.ITopic, opt_in_tag_key: str,
                        opt_in_tag_value: str) -> None:
        stack = cdk.Stack.of(self)
        # Reads only: every write is in ActOnOptedInGroups, conditioned on the opt-in tag.
        UnscopedApis.of(self.role).allow("DescribeFleetsAndGpuMetrics", {
            "autoscaling:DescribeAutoScalingGroups": "no resource type; finds the opted-in groups",
            "ec2:DescribeInstances": "no resource type; launch times and instance types",
            "ec2:DescribeInstanceTypes": "no resource type; GPU count per instance type",
            "cloudwatch:GetMetricData": "no resource type; the GPU utilization queries",
        })
        group_arn = stack.format_arn(service="autoscaling", resource="autoScalingGroup",
                                     resource_name="*:autoScalingGroupName/*",
                                     arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)
        act = iam.Policy(self, "ActPolicy", roles=[self.role], statements=[iam.PolicyStatement(
            sid="ActOnOptedInGroups",
            actions=["autoscaling:TerminateInstanceInAutoScalingGroup",
                     "autoscaling:SetDesiredCapacity"],
            resources=[group_arn],
            conditions={"StringEquals": {f"autoscaling:ResourceTag/{opt_in_tag_key}": opt_in_tag_value}},
        )])
        acknowledge(act, f"AwsSolutions::AwsSolutions-IAM5[Resource::{group_arn}]",
                    "Groups are found at run time by tag, not known at synth; the condition on "
                    f"autoscaling:ResourceTag/{opt_in_tag_key} limits the writes to opted-in groups.")
        grant_publish(alerts_topic, self.role)

    def _build_function(self, alerts_topic: sns.ITopic, stage: str, threshold_percent: float,
                        window: cdk.Duration, launch_grace: cdk.Duration, dry_run: bool,
                        opt_in_tag_key: str, opt_in_tag_value: str,
                        savings_horizon_hours: float) -> None:
        self.function = lambda_.Function(
            self,
            "Resource",
            description="Stops idle GPU instances of opted-in Auto Scaling groups; scales a "
                        "group down when its training job finishes",
            runtime=lambda_.Runtime.PYTHON_3_14,
            architecture=lambda_.Architecture.ARM_64,
            handler="handler.handler",
            code=lambda_.Code.from_asset(str(CODE_DIR), exclude=["__pycache__", "*.pyc"]),
            role=self.role,
            log_group=self.log_group,
            memory_size=512,
            timeout=cdk.Duration.minutes(5),
            # No reserved concurrency: a new account's limit cannot spare it.
            # Overlapping invocations are harmless: Auto Scaling refuses a
            # decrementing terminate at the group's minimum and a stop already
            # made (tests/lambda/test_idle_overlap.py).
            environment={
                "STAGE": stage,
                "THRESHOLD_PERCENT": _number(threshold_percent),
                "WINDOW_SECONDS": str(int(window.to_seconds())),
                "GRACE_SECONDS": str(int(launch_grace.to_seconds())),
                "DRY_RUN": "true" if dry_run else "false",
                "OPT_IN_TAG_KEY": opt_in_tag_key,
                "OPT_IN_TAG_VALUE": opt_in_tag_value,
                "TOPIC_ARN": alerts_topic.topic_arn,
                "SAVINGS_HORIZON_HOURS": _number(savings_horizon_hours),
            },
        )
        self.function.node.add_dependency(self.role)

    def _build_rules(self, schedule_rate: cdk.Duration, enabled: bool) -> None:
        self.schedule_rule = events.Rule(
            self,
            "Schedule",
            description="Idle-GPU sweep",
            schedule=events.Schedule.rate(schedule_rate),
            enabled=enabled,
            # A missed sweep is not retried: the next one comes in one rate.
            targets=[targets.LambdaFunction(self.function, retry_attempts=0)],
        )
        # A bus of its own (name generated from the construct path, unique
        # per stage): a rule on the default bus would act on an event anyone
        # allowed events:PutEvents there can forge.
        self.event_bus = events.EventBus(
            self, "JobFinishedBus",
            description=f"{COMPLETION_SOURCE} / {COMPLETION_DETAIL_TYPE} from the stage's "
                        "training instances only (bus policy)")
        self.completion_rule = events.Rule(
            self,
            "JobFinished",
            description=f"{COMPLETION_SOURCE} / {COMPLETION_DETAIL_TYPE}: scale the job's group down",
            event_bus=self.event_bus,
            event_pattern=events.EventPattern(source=[COMPLETION_SOURCE],
                                              detail_type=[COMPLETION_DETAIL_TYPE]),
            enabled=enabled,
            targets=[targets.LambdaFunction(self.function, max_event_age=cdk.Duration.hours(1),
                                            retry_attempts=20)],
        )

    def _build_errors_alarm(self, alerts_topic: sns.ITopic) -> None:
        self.errors_alarm = cloudwatch.Alarm(
            self,
            "Errors",
            alarm_description="The idle-shutdown function failed: idle GPUs may be running",
            metric=self.function.metric_errors(period=cdk.Duration.minutes(15)),
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        self.errors_alarm.add_alarm_action(cw_actions.SnsAction(alerts_topic))

    def accept_completion_only_from(self, scope: Construct,
                                    producers: Sequence[iam.IRole]) -> cdk.CfnResource:
        """Deny ``events:PutEvents`` on ``event_bus`` to every principal but ``producers``.

        The policy is created in ``scope`` (the producers' stack: it names
        their roles, and the producers' stack already depends on this one).
        No producers denies everyone: a stage without a fleet accepts no
        completion at all. The producers still need an identity grant
        (``event_bus.grant_put_events_to``): within one account either
        policy may allow, and an explicit deny in either wins. Call it once:
        a second deny naming other roles would shut out the first ones.
        """
        if self._producers_policy is not None:
            raise ValueError(f"{self.node.path}: accept_completion_only_from was already called; "
                             "pass every producer role in one call")
        sid = PRODUCERS_ONLY_SID if producers else NO_PRODUCERS_SID
        statement = iam.PolicyStatement(
            sid=sid,
            effect=iam.Effect.DENY,
            principals=[iam.AnyPrincipal()],
            actions=["events:PutEvents"],
            resources=[self.event_bus.event_bus_arn],
            conditions=({"ArnNotEquals": {"aws:PrincipalArn": [r.role_arn for r in producers]}}
                        if producers else None),
        )
        # Neither the L2 EventBusPolicy (under jsii it hands the statement
        # object, not its JSON, to the template: circular reference at synth)
        # nor CfnEventBusPolicy (it prints a deprecation warning for its
        # unused Principal on every synth): the resource as CloudFormation has it.
        self._producers_policy = cdk.CfnResource(
            scope, "JobFinishedProducersOnly", type="AWS::Events::EventBusPolicy",
            properties={"EventBusName": self.event_bus.event_bus_name,
                        "StatementId": sid,
                        "Statement": statement.to_statement_json()})
        return self._producers_policy

    def enroll(self, group: autoscaling.IAutoScalingGroup) -> None:
        """Opt ``group`` in: tag it so the function (and its IAM condition) accept it.

        A second tag names the stage: only this stage's function acts on a
        job-finished event for the group. The tags stay on the group (not
        propagated to instances).
        """
        cdk.Tags.of(group).add(self.opt_in_tag_key, self.opt_in_tag_value,
                               apply_to_launched_instances=False)
        cdk.Tags.of(group).add(STAGE_TAG, self.stage, apply_to_launched_instances=False)


def _number(value: float) -> str:
    return f"{value:g}"
