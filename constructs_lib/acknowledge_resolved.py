"""Compatibility: ``acknowledge`` resolves tokens in a finding id itself.

``acknowledge_resources(construct, rule, [arn], reason)`` is
``acknowledge(construct, f"{rule}[Resource::{arn}]", reason)`` for each
``arn``; new code calls ``constructs_lib.acknowledge.acknowledge`` directly,
next to the statement it covers. Kept so code written against it still
works; remove once nothing imports it.
"""

from __future__ import annotations

from typing import Sequence

from constructs import IConstruct

from constructs_lib.acknowledge import acknowledge, flatten_reference

__all__ = ["acknowledge_resources", "flatten_reference"]


def acknowledge_resources(construct: IConstruct, rule: str, resources: Sequence[str],
                          reason: str) -> None:
    """Acknowledge ``rule`` (e.g. ``AwsSolutions::AwsSolutions-IAM5``) for each
    resource string in ``resources`` (tokens allowed) on ``construct``."""
    for resource in resources:
        acknowledge(construct, f"{rule}[Resource::{resource}]", reason)
