"""Acknowledging a validation finding (cdk-nag 3, CloudFormation Validate)."""

from __future__ import annotations

import aws_cdk as cdk
from constructs import IConstruct


def acknowledge(construct: IConstruct, rule_id: str, reason: str) -> None:
    """Acknowledge ``rule_id`` on ``construct`` and everything under it.

    Call it on the narrowest construct the finding is about, with the real
    reason: the reason lands in the cloud assembly as the audit trail.
    ``rule_id`` is the full id the finding prints after "Acknowledge with",
    e.g. ``AwsSolutions::AwsSolutions-IAM5[Resource::*]``.
    """
    cdk.Validations.of(construct).acknowledge(cdk.Acknowledgment(id=rule_id, reason=reason))
