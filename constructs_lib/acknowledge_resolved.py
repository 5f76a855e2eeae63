"""Acknowledging a finding whose id contains a deploy-time value (a token).

cdk-nag prints an IAM5 finding on a resource ARN such as another stack's
bucket ARN as the resolved CloudFormation expression (for a cross-stack
reference, ``{"Fn::GetStackOutput": {...}}``). That expression exists only
once the app has resolved its cross-stack references, so the acknowledgement
is computed then, from the very token the grant used, instead of being
copied from an error message.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import aws_cdk as cdk
import jsii
from constructs import IConstruct, IValidation

from constructs_lib.acknowledge import acknowledge


def flatten_reference(node: Any) -> str:
    """The flat string cdk-nag 3 prints for a resolved CloudFormation value."""
    if node is None:
        return ""
    if isinstance(node, str):
        return node.replace("${", "<").replace("}", ">")
    if isinstance(node, dict):
        if "Fn::Join" in node:
            delimiter, items = node["Fn::Join"]
            return delimiter.join(flatten_reference(item) for item in items)
        if "Fn::Sub" in node:
            return flatten_reference(node["Fn::Sub"])
        if "Fn::GetAtt" in node:
            resource, attribute = node["Fn::GetAtt"]
            return f"<{flatten_reference(resource)}.{flatten_reference(attribute)}>"
        if "Fn::ImportValue" in node:
            return flatten_reference(node["Fn::ImportValue"])
        if "Ref" in node:
            return f"<{flatten_reference(node['Ref'])}>"
    return json.dumps(node, separators=(",", ":"))


@jsii.implements(IValidation)
class _AcknowledgeWhenResolved:
    def __init__(self, construct: IConstruct, rule: str, resources: Sequence[str], reason: str) -> None:
        self._construct = construct
        self._rule = rule
        self._resources = list(resources)
        self._reason = reason

    def validate(self) -> list[str]:
        stack = cdk.Stack.of(self._construct)
        for resource in self._resources:
            flat = flatten_reference(stack.resolve(resource))
            acknowledge(self._construct, f"{self._rule}[Resource::{flat}]", self._reason)
        return []


def acknowledge_resources(construct: IConstruct, rule: str, resources: Sequence[str],
                          reason: str) -> None:
    """Acknowledge ``rule`` (e.g. ``AwsSolutions::AwsSolutions-IAM5``) for each
    resource string in ``resources`` (tokens allowed) on ``construct``."""
    construct.node.add_validation(_AcknowledgeWhenResolved(construct, rule, resources, reason))
