"""Explicit KMS grants, scoped to one key and to the service that uses it.

aws-cdk-lib's ``Topic.grant_publish`` and ``Queue.grant_send_messages``
add ``kms:GenerateDataKey*`` and ``kms:ReEncrypt*`` for an encrypted topic
or queue: wider than a publisher needs, and usable outside SNS or SQS. The
helpers here grant what the SNS and SQS developer guides name for a producer
of an SSE-KMS topic or queue (``kms:GenerateDataKey`` and ``kms:Decrypt``),
on that one key, only when the call comes through the service
(``kms:ViaService``).
"""

from __future__ import annotations

from typing import Sequence

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import IConstruct

# What a producer of an SSE-KMS message needs: a data key, and Decrypt to reuse it.
PRODUCER_KEY_ACTIONS = ("kms:GenerateDataKey", "kms:Decrypt")


def via_service(scope: IConstruct, service: str) -> dict:
    """The condition that a KMS call comes through ``service`` (``s3``, ``sqs``,
    ``sns``, ``dynamodb``) in the region of ``scope``'s stack."""
    region = cdk.Stack.of(scope).region
    return {"StringEquals": {"kms:ViaService": f"{service}.{region}.amazonaws.com"}}


def grant_key_via(grantee: iam.IGrantable, key: kms.IKey, service: str,
                  actions: Sequence[str]) -> iam.Grant:
    """``actions`` on ``key`` for ``grantee``, only through ``service``."""
    return iam.Grant.add_to_principal(
        grantee=grantee, actions=list(actions), resource_arns=[key.key_arn],
        conditions=via_service(key, service))


def grant_publish(topic: sns.ITopic, grantee: iam.IGrantable) -> None:
    """``sns:Publish`` on ``topic``; with its key, the producer's key actions through SNS."""
    iam.Grant.add_to_principal(grantee=grantee, actions=["sns:Publish"],
                               resource_arns=[topic.topic_arn])
    if topic.master_key is not None:
        grant_key_via(grantee, topic.master_key, "sns", PRODUCER_KEY_ACTIONS)


def grant_send_messages(queue: sqs.IQueue, grantee: iam.IGrantable) -> None:
    """What ``Queue.grant_send_messages`` gives, with the producer's key actions
    through SQS instead of its key wildcards."""
    iam.Grant.add_to_principal(
        grantee=grantee,
        actions=["sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"],
        resource_arns=[queue.queue_arn])
    if queue.encryption_master_key is not None:
        grant_key_via(grantee, queue.encryption_master_key, "sqs", PRODUCER_KEY_ACTIONS)
