"""Tell the stage when a model version it could serve is approved.

SageMaker publishes a "SageMaker Model Package State Change" event to the
account's default bus whenever a model package changes; its detail carries
``ModelPackageGroupName``, ``ModelPackageVersion``, ``ModelPackageArn`` and
``ModelApprovalStatus``. One rule matches the approvals of the stage's
groups and publishes one readable line to the alerts topic: which version,
and the command that pins it. Nothing deploys by itself: the pin is a
reviewed change.
"""

from __future__ import annotations

from typing import Sequence

import jsii
from aws_cdk import aws_events as events
from aws_cdk import aws_sns as sns
from constructs import Construct

SOURCE = "aws.sagemaker"
DETAIL_TYPE = "SageMaker Model Package State Change"
APPROVED = "Approved"


class ModelApprovalNotice(Construct):
    """A rule on the approval of a package version in one of ``groups``,
    notifying ``topic`` with the group, version, ARN and ``command``
    (e.g. ``make refresh-models STAGE=prod``). Exposes ``rule``.

    ``topic`` must already admit ``events.amazonaws.com`` to publish (the
    stage's alerts topic does, for this account's rules only): the notice
    adds no statement to its policy.
    """

    def __init__(self, scope: Construct, construct_id: str, *, groups: Sequence[str],
                 topic: sns.ITopic, command: str) -> None:
        super().__init__(scope, construct_id)
        if not groups:
            raise ValueError("groups: at least one model package group to watch")
        self.rule = events.Rule(
            self, "Resource",
            description=f"Model package approved in {', '.join(groups)}: pin it with {command}",
            event_pattern=events.EventPattern(
                source=[SOURCE],
                detail_type=[DETAIL_TYPE],
                detail={"ModelPackageGroupName": list(groups), "ModelApprovalStatus": [APPROVED]},
            ),
        )
        group = events.EventField.from_path("$.detail.ModelPackageGroupName")
        version = events.EventField.from_path("$.detail.ModelPackageVersion")
        arn = events.EventField.from_path("$.detail.ModelPackageArn")
        self.rule.add_target(_TopicAsIs(topic, events.RuleTargetInput.from_text(
            f"Model package {group} version {version} was approved ({arn}). "
            f"Run `{command}` to pin it, review and merge the diff, then deploy.")))


@jsii.implements(events.IRuleTarget)
class _TopicAsIs:
    """The topic as a rule target, without the publish grant
    ``aws_events_targets.SnsTopic`` adds to the topic policy (one without the
    ``aws:SourceAccount`` condition the alerts topic's own statement has)."""

    def __init__(self, topic: sns.ITopic, message: events.RuleTargetInput) -> None:
        self.topic = topic
        self.message = message

    def bind(self, _rule: events.IRule, _id: str | None = None) -> events.RuleTargetConfig:
        return events.RuleTargetConfig(arn=self.topic.topic_arn, input=self.message)
