"""Acknowledging a validation finding (cdk-nag 3, CloudFormation Validate)."""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import aws_cdk as cdk
import jsii
from aws_cdk import aws_iam as iam
from constructs import IConstruct, IValidation


def acknowledge(construct: IConstruct, rule_id: str, reason: str) -> None:
    """Acknowledge ``rule_id`` on ``construct`` and everything under it.

    The one way to acknowledge a finding: call it next to the statement or
    resource the finding is about, on the narrowest construct, with the real
    reason (it lands in the cloud assembly as the audit trail, and on the
    reviewed list tests/unit/acknowledgements.txt). ``rule_id`` is the full
    id the finding prints after "Acknowledge with", e.g.
    ``AwsSolutions::AwsSolutions-IAM5[Resource::*]``. It may contain tokens,
    such as the very ARN a statement grants on
    (``f"AwsSolutions::AwsSolutions-IAM5[Resource::{bucket.arn_for_objects('runs/*')}]"``):
    cdk-nag prints those as the resolved CloudFormation value (a
    cross-stack reference as ``{"Fn::GetStackOutput": ...}``, a pseudo
    parameter as ``<AWS::AccountId>``), which exists only once the app has
    resolved its references, so the id is resolved then, never copied from
    an error message.
    """
    if cdk.Token.is_unresolved(rule_id):
        construct.node.add_validation(_AcknowledgeWhenResolved(construct, rule_id, reason))
        return
    cdk.Validations.of(construct).acknowledge(cdk.Acknowledgment(id=rule_id, reason=reason))


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
    def __init__(self, construct: IConstruct, rule_id: str, reason: str) -> None:
        self._construct = construct
        self._rule_id = rule_id
        self._reason = reason

    def validate(self) -> list[str]:
        resolved = cdk.Stack.of(self._construct).resolve(self._rule_id)
        acknowledge(self._construct, _flatten_id(resolved), self._reason)
        return []


def _flatten_id(resolved: Any) -> str:
    # The literal parts of the id are kept as they are; only the resolved
    # values inside it are flattened the way cdk-nag prints them.
    if isinstance(resolved, dict) and "Fn::Join" in resolved:
        delimiter, items = resolved["Fn::Join"]
        return delimiter.join(item if isinstance(item, str) else flatten_reference(item) for item in items)
    return flatten_reference(resolved)

UNSCOPED_POLICY_ID = "UnscopedApis"
# The reason shared by every PutMetricData grant (each limited by a
# cloudwatch:namespace condition).
PUT_METRIC_DATA_WHY = "no resource type; limited to our namespaces by the cloudwatch:namespace condition"
UNSCOPED_FINDING = "AwsSolutions::AwsSolutions-IAM5[Resource::*]"


class UnscopedApis(iam.Policy):
    """The one policy of a role that holds its actions on ``Resource: *``.

    Only for actions that cannot name a resource: the Service Authorization
    Reference lists no resource type for the action, or the resource is the
    caller itself and unknown before it exists (an instance's agent): every
    such action of the role lands here, so the role has one ``Resource::*``
    finding, acknowledged with the list of actions and, for each, why it
    cannot name a resource. Get it with ``UnscopedApis.of(role)``; add with
    ``allow``. Statements with the same ``sid`` merge (their actions and
    their condition values), so two callers limiting
    ``cloudwatch:PutMetricData`` to their own namespaces share one statement.
    """

    def __init__(self, role: iam.IRole) -> None:
        super().__init__(role, UNSCOPED_POLICY_ID, roles=[role])
        self._statements: dict[str, iam.PolicyStatement] = {}
        self._conditions: dict[str, dict[str, dict[str, list[str]]]] = {}
        self._why: dict[str, str] = {}
        self.node.add_validation(_AcknowledgeUnscoped(self, self._why))

    @classmethod
    def of(cls, role: iam.IRole) -> "UnscopedApis":
        """The role's unscoped policy, created on first use."""
        existing = role.node.try_find_child(UNSCOPED_POLICY_ID)
        if existing is None:
            return cls(role)
        assert isinstance(existing, UnscopedApis), existing
        return existing

    def allow(self, sid: str, actions: Mapping[str, str], *,
              conditions: Mapping[str, Mapping[str, str | Sequence[str]]] | None = None) -> None:
        """Allow ``actions`` (action -> why its API has no resource-level
        permission) on ``*``, in the statement ``sid`` with ``conditions``."""
        unscoped = [action for action in actions if "*" in action]
        if unscoped:
            raise ValueError(f"UnscopedApis: name each action, not a wildcard: {unscoped}")
        self._why.update(actions)
        merged = self._conditions.setdefault(sid, {})
        for operator, keys in (conditions or {}).items():
            for key, values in keys.items():
                known = merged.setdefault(operator, {}).setdefault(key, [])
                for value in [values] if isinstance(values, str) else values:
                    if value not in known:
                        known.append(value)
        statement = self._statements.get(sid)
        if statement is None:
            statement = iam.PolicyStatement(sid=sid, actions=sorted(actions), resources=["*"])
            self._statements[sid] = statement
            self.add_statements(statement)
        else:
            statement.add_actions(*sorted(set(actions) - set(statement.actions)))
        for operator, keys in merged.items():
            statement.add_condition(operator, {key: values[0] if len(values) == 1 else list(values)
                                               for key, values in keys.items()})


@jsii.implements(IValidation)
class _AcknowledgeUnscoped:
    """Acknowledges the policy's ``Resource::*`` once every action is in."""

    def __init__(self, policy: iam.Policy, why: dict[str, str]) -> None:
        self._policy = policy
        self._why = why

    def validate(self) -> list[str]:
        reasons = "; ".join(f"{action}: {why}" for action, why in sorted(self._why.items()))
        acknowledge(self._policy, UNSCOPED_FINDING,
                    f"The role's only statements on *, each action with why it cannot name a "
                    f"resource (Service Authorization Reference): {reasons}")
        return []
