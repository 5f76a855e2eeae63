"""Ops stack: the stage's alerts topic, which every alarm and notification
uses, the stage's drift detection and its monthly budget."""

from __future__ import annotations

from typing import Sequence

import aws_cdk as cdk
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from constructs_lib.drift_detection import StackDriftDetection
from constructs_lib.model_approval_notice import ModelApprovalNotice
from constructs_lib.stage_budget import StageBudget
from ml_stacks.base_stack import StageStack, log_retention
from ml_stacks.config import StageConfig
from ml_stacks.fixed_names import gpu_agent_parameter
from ml_stacks.log_groups import log_group_name
from ml_stacks.model_pins import REFRESH_COMMAND
from ml_stacks.replica_stack import ReplicaStack

# Services that publish to the alerts topic on the stage's behalf. Each must
# also be able to use the topic's key, or its messages are silently dropped:
# the messaging key's policy admits them (ml_stacks/storage_stack.py).
PUBLISHING_SERVICES = ("cloudwatch.amazonaws.com", "events.amazonaws.com",
                       "budgets.amazonaws.com")


class OpsStack(StageStack):
    """Exposes ``alerts_topic`` (``sns.ITopic``), encrypted with ``messaging_key``,
    ``drift_detection`` (``StackDriftDetection`` or None when disabled),
    ``budget`` (``StageBudget``) and ``model_approvals`` (``ModelApprovalNotice``
    for the stage's model registry groups, or None when it serves none)."""

    def __init__(self, scope: Construct, construct_id: str, *, config: StageConfig,
                 messaging_key: kms.IKey, logs_key: kms.IKey,
                 buckets: Sequence[s3.IBucket] = (),
                 other_region_stacks: Sequence[ReplicaStack] = ()) -> None:
        """``buckets``: the stage's buckets in this region;
        ``other_region_stacks``: its stacks elsewhere (the replica), whose
        buckets drift detection reads by name (``bucket_names``)."""
        super().__init__(scope, construct_id, config=config,
                         description=f"ml-infra {config.name}: alerts topic, drift detection, budget")
        self.alerts_topic = sns.Topic(
            self,
            "Alerts",
            display_name=f"ml-infra {config.name} alerts",
            master_key=messaging_key,
            enforce_ssl=True,
        )
        # Only on behalf of this account: no other account's alarm or rule
        # can use these grants (confused deputy).
        same_account = {"StringEquals": {"aws:SourceAccount": self.account}}
        principals = [iam.ServicePrincipal(s) for s in PUBLISHING_SERVICES]
        self.alerts_topic.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowStageServicesToPublish",
            principals=principals,
            actions=["sns:Publish"],
            resources=[self.alerts_topic.topic_arn],
            conditions=same_account,
        ))
        for address in config.alerts.email_subscribers:
            self.alerts_topic.add_subscription(subscriptions.EmailSubscription(address))

        self.drift_detection = None
        if config.drift.enabled:
            self.drift_detection = StackDriftDetection(
                self,
                "DriftDetection",
                stage=config.name,
                stack_name_prefix=f"{config.stack_prefix}-",
                alerts_topic=self.alerts_topic,
                schedule=events.Schedule.cron(minute="0", hour=str(config.drift.schedule_hour_utc)),
                log_retention=log_retention(config.drift.log_retention_days),
                log_group_name=log_group_name(self, config, "drift-detection"),
                log_key=logs_key,
                removal_policy=self.removal_policy,
                parameter_names=[gpu_agent_parameter(config)],
                buckets=[*buckets, *(s3.Bucket.from_bucket_name(self, f"OtherRegionBucket{i}", name)
                                     for i, name in enumerate(
                                         n for other in other_region_stacks for n in other.bucket_names))],
                other_regions=sorted({other.region for other in other_region_stacks}),
                other_function_regions=sorted({other.region for other in other_region_stacks
                                               if other.has_functions}),
            )
        budget = config.budget
        self.budget = StageBudget(
            self,
            "Budget",
            budget_name=f"{config.stack_prefix}-monthly",
            monthly_limit_usd=budget.monthly_limit_usd,
            alerts_topic=self.alerts_topic,
            actual_alert_percents=budget.actual_alert_percents,
            forecast_alert_percents=budget.forecast_alert_percents,
            cost_tags={"Environment": config.name} if budget.filter_by_environment_tag else None,
        )
        groups = config.serving.model_package_groups
        self.model_approvals = ModelApprovalNotice(
            self, "ModelApprovals", groups=groups, topic=self.alerts_topic,
            command=REFRESH_COMMAND.format(stage=config.name)) if groups else None
        cdk.CfnOutput(self, "AlertsTopicArn", value=self.alerts_topic.topic_arn,
                      description="Subscribe here for the stage's alarms and notifications")
