"""Ops stack: the stage's alerts topic, which every alarm and notification uses."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from ml_stacks.base_stack import StageStack
from ml_stacks.config import StageConfig

# Services that publish to the alerts topic on the stage's behalf. Each must
# be able to use the topic's KMS key, or its messages are silently dropped.
PUBLISHING_SERVICES = ("cloudwatch.amazonaws.com", "events.amazonaws.com")


class OpsStack(StageStack):
    """Exposes ``alerts_topic`` (``sns.ITopic``), encrypted with the stage key."""

    def __init__(self, scope: Construct, construct_id: str, *, config: StageConfig,
                 key: kms.IKey) -> None:
        super().__init__(scope, construct_id, config=config,
                         description=f"ml-infra {config.name}: alerts topic")
        self.alerts_topic = sns.Topic(
            self,
            "Alerts",
            display_name=f"ml-infra {config.name} alerts",
            master_key=key,
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
        key.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowStageServicesToUseAlertsTopicKey",
            principals=principals,
            actions=["kms:Decrypt", "kms:GenerateDataKey*"],
            resources=["*"],
            conditions=same_account,
        ))
        for address in config.alerts.email_subscribers:
            self.alerts_topic.add_subscription(subscriptions.EmailSubscription(address))
        cdk.CfnOutput(self, "AlertsTopicArn", value=self.alerts_topic.topic_arn,
                      description="Subscribe here for the stage's alarms and notifications")
