"""RunsCapacity: a PENDING run never waits forever without an instance.

A small scheduled Lambda function (``lambda/runs_capacity``) counts the
PENDING and RUNNING runs on the runs table's ``by-state`` index and raises
the training fleet's desired capacity to ``min(MaxSize, active runs)``
when it is lower. It never lowers it (idle shutdown and the job-finished
event scale down) and leaves a closed fleet (``MaxSize`` 0, off hours)
alone.

With ``spot_fallback_after`` it also switches the fleet's on-demand share
to ``spot_fallback_on_demand_percentage`` while spot capacity is dry for a
PENDING run and back when the runs end (``lambda/runs_capacity/
spot_fallback.py``; docs/training-runs.md "When spot runs dry").
"""

from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk
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

from constructs_lib.acknowledge import UnscopedApis
from constructs_lib.gpu_training_fleet import GpuTrainingFleet
from constructs_lib.kms_grants import grant_publish
from constructs_lib.training_runs import STATE_INDEX, TrainingRuns

CODE_DIR = Path(__file__).resolve().parent.parent / "lambda" / "runs_capacity"


class RunsCapacity(Construct):
    """Keeps the fleet's desired capacity at least at its active runs.

    :param runs: the runs table it counts (``Query`` on ``by-state`` only).
    :param fleet: the group it raises (``SetDesiredCapacity`` on that group only).
    :param alerts_topic: where the function's errors alarm goes.
    :param max_gpus_per_instance: the most GPUs an instance of the fleet has;
        a run asking for more is logged and not counted (no instance could
        carry it).
    :param spot_fallback_after: spot capacity failures for this long, with a
        run PENDING, switch the fleet's on-demand share up. Default None: no
        fallback.
    :param spot_fallback_on_demand_percentage: the share while switched
        (back to ``fleet.on_demand_percentage`` after). Default 100.
    :param schedule_rate: how often it runs. Default 5 min.
    :param log_retention: of the function's log group. Default one month.
    :param removal_policy: of the log group. Default DESTROY.
    :param log_group_name / log_key: the log group's name and encryption key.
        Defaults: a name CloudFormation generates, CloudWatch Logs' own encryption.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        runs: TrainingRuns,
        fleet: GpuTrainingFleet,
        alerts_topic: sns.ITopic,
        max_gpus_per_instance: int,
        spot_fallback_after: cdk.Duration | None = None,
        spot_fallback_on_demand_percentage: int = 100,
        schedule_rate: cdk.Duration = cdk.Duration.minutes(5),
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
        removal_policy: cdk.RemovalPolicy = cdk.RemovalPolicy.DESTROY,
        log_group_name: str | None = None,
        log_key: kms.IKey | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.log_group = logs.LogGroup(self, "Logs", retention=log_retention,
                                       log_group_name=log_group_name, encryption_key=log_key,
                                       removal_policy=removal_policy)
        if spot_fallback_after is not None and not (
                fleet.on_demand_percentage < spot_fallback_on_demand_percentage <= 100):
            raise ValueError(f"spot_fallback_on_demand_percentage {spot_fallback_on_demand_percentage}: "
                             f"use more than the fleet's {fleet.on_demand_percentage} and at most 100")
        self.role = self._build_role(runs, fleet)
        self.function = self._build_function(runs, fleet, max_gpus_per_instance)
        if spot_fallback_after is not None:
            self._enable_spot_fallback(fleet, alerts_topic, spot_fallback_after,
                                       spot_fallback_on_demand_percentage)
        self.schedule_rule = events.Rule(
            self,
            "Schedule",
            description=f"Raise {fleet.auto_scaling_group_name} to its PENDING + RUNNING runs",
            schedule=events.Schedule.rate(schedule_rate),
            # A missed run is not retried: the next one comes in one rate.
            targets=[targets.LambdaFunction(self.function, retry_attempts=0)],
        )
        self.errors_alarm = self._build_alarm(alerts_topic, schedule_rate)

    def _build_role(self, runs: TrainingRuns, fleet: GpuTrainingFleet) -> iam.Role:
        role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                        description="runs capacity function: counts active runs, raises the "
                                    f"desired capacity of {fleet.auto_scaling_group_name}")
        self.log_group.grant_write(role)
        runs.grant_count_active(role)
        fleet.grant_set_desired_capacity(role)
        # The writes are on this fleet's group ARN (grant_set_desired_capacity).
        UnscopedApis.of(role).allow("DescribeFleet", {
            "autoscaling:DescribeAutoScalingGroups": "no resource type; reads the fleet's capacity",
            "autoscaling:DescribeScalingActivities": "no resource type; reads the fleet's launch "
                                                     "failures (spot fallback)",
        })
        return role

    def _enable_spot_fallback(self, fleet: GpuTrainingFleet, alerts_topic: sns.ITopic,
                              after: cdk.Duration, percentage: int) -> None:
        fleet.grant_switch_on_demand_share(self.role)
        # SNS encrypts the alert with a data key the publisher must be allowed to make.
        grant_publish(alerts_topic, self.role)
        for name, value in (("SPOT_FALLBACK_AFTER_SECONDS", str(int(after.to_seconds()))),
                            ("ON_DEMAND_PERCENTAGE", str(fleet.on_demand_percentage)),
                            ("SPOT_FALLBACK_ON_DEMAND_PERCENTAGE", str(percentage)),
                            ("ALERTS_TOPIC_ARN", alerts_topic.topic_arn)):
            self.function.add_environment(name, value)

    def _build_function(self, runs: TrainingRuns, fleet: GpuTrainingFleet,
                        max_gpus_per_instance: int) -> lambda_.Function:
        function = lambda_.Function(
            self,
            "Resource",
            description=f"Raises {fleet.auto_scaling_group_name} to its PENDING + RUNNING runs "
                        "(never lowers it)",
            runtime=lambda_.Runtime.PYTHON_3_14,
            architecture=lambda_.Architecture.ARM_64,
            handler="handler.handler",
            code=lambda_.Code.from_asset(str(CODE_DIR), exclude=["__pycache__", "*.pyc"]),
            role=self.role,
            log_group=self.log_group,
            memory_size=256,
            timeout=cdk.Duration.minutes(1),
            # No Lambda retry of a failed run: the schedule is the retry, and
            # the errors alarm reports the failure.
            retry_attempts=0,
            environment={
                "RUNS_TABLE": runs.table.table_name,
                "STATE_INDEX": STATE_INDEX,
                "GROUP_NAME": fleet.auto_scaling_group_name,
                "MAX_GPUS_PER_INSTANCE": str(max_gpus_per_instance),
            },
        )
        function.node.add_dependency(self.role)
        return function

    def _build_alarm(self, alerts_topic: sns.ITopic, schedule_rate: cdk.Duration) -> cloudwatch.Alarm:
        period = cdk.Duration.minutes(max(15, int(schedule_rate.to_minutes())))
        alarm = cloudwatch.Alarm(
            self,
            "Errors",
            alarm_description="The runs capacity function failed: a PENDING run may be waiting "
                              "without an instance",
            metric=self.function.metric_errors(period=period),
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        alarm.add_alarm_action(cw_actions.SnsAction(alerts_topic))
        return alarm
