"""Job-finished events are trusted only from the stage's own producers.

The idle stack's completion rule listens on a bus of its own, never on the
default bus; the bus policy denies ``events:PutEvents`` to every principal
but the training fleet's instance role (within one account an explicit deny
in a resource policy overrides any identity policy's allow); the instances
may put events on that bus and on no other. The bus policy is evaluated
here the way IAM evaluates a deny, on the synthesized document.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import replace
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sns as sns
from aws_cdk.assertions import Template

from constructs_lib.idle_shutdown import (COMPLETION_DETAIL_TYPE, COMPLETION_SOURCE, NO_PRODUCERS_SID,
                                          PRODUCERS_ONLY_SID, IdleShutdown)
from ml_stacks.app_factory import build_app
from ml_stacks.config import default_configs
from tests.conftest import STAGES, resources_of_type, stacks_of
from tests.unit.test_training_runs import actions, fleet_statements, install_environment

ACCOUNT = "111122223333"
FLEET_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/ml-dev-training-FleetRole-0ABC"
# Principals of the same account that an identity policy may well allow
# events:PutEvents on "*": none of them is a producer.
FORGERS = (
    f"arn:aws:iam::{ACCOUNT}:role/app-publisher",
    f"arn:aws:iam::{ACCOUNT}:user/alice",
    f"arn:aws:iam::{ACCOUNT}:root",
    f"arn:aws:iam::{ACCOUNT}:role/other/ml-dev-training-FleetRole-0ABC",  # same name, other path
    f"arn:aws:iam::{ACCOUNT}:role/ml-dev-training-FleetRole-0ABCD",
    "arn:aws:iam::444455556666:role/ml-dev-training-FleetRole-0ABC",       # another account
)


# --- a deny evaluator, as IAM evaluates one statement ---------------------------------------

def _values(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _condition_holds(operator: str, key: str, expected: list[str], context: dict[str, str]) -> bool:
    if operator not in ("ArnEquals", "ArnNotEquals", "StringEquals", "StringNotEquals"):
        raise AssertionError(f"the evaluator does not know {operator}: extend it before trusting it")
    present = key in context
    equal = present and context[key] in expected
    # A negated operator matches a request that lacks the key (IAM condition operators).
    return not equal if operator.endswith("NotEquals") else equal


def denies(statement: dict, *, principal_arn: str, action: str, resource: str) -> bool:
    """Whether ``statement`` is an explicit deny of this request."""
    if statement["Effect"] != "Deny":
        return False
    principals = statement.get("Principal")
    if principals != "*" and principal_arn not in _values(principals.get("AWS", [])) \
            and "*" not in _values(principals.get("AWS", [])):
        return False
    if not any(fnmatch.fnmatchcase(action, a) for a in _values(statement["Action"])):
        return False
    if not any(fnmatch.fnmatchcase(resource, r) for r in _values(statement["Resource"])):
        return False
    context = {"aws:PrincipalArn": principal_arn}
    return all(_condition_holds(op, key, _values(expected), context)
               for op, keys in statement.get("Condition", {}).items()
               for key, expected in keys.items())


def substitute(value: Any, tokens: dict[str, str]) -> Any:
    """``value`` with every intrinsic listed in ``tokens`` (by its JSON) replaced."""
    if json.dumps(value, sort_keys=True) in tokens:
        return tokens[json.dumps(value, sort_keys=True)]
    if isinstance(value, list):
        return [substitute(v, tokens) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, tokens) for k, v in value.items()}
    return value


# --- reading the stage ---------------------------------------------------------------------

def bus_of(idle: dict) -> tuple[str, dict]:
    [(bus_id, bus)] = resources_of_type(idle, "AWS::Events::EventBus").items()
    return bus_id, bus["Properties"]


def output_value(stack_template: dict, reference: dict) -> Any:
    """What a ``Fn::GetStackOutput`` reference resolves to in the producing stack."""
    return stack_template["Outputs"][reference["Fn::GetStackOutput"]["OutputName"]]["Value"]


def producers_policy(template: dict) -> dict:
    [policy] = resources_of_type(template, "AWS::Events::EventBusPolicy").values()
    return policy["Properties"]


def fleet_role_id(training: dict) -> str:
    [role_id] = [k for k in resources_of_type(training, "AWS::IAM::Role") if k.startswith("FleetRole")]
    return role_id


def completion_rules(template: dict) -> list[dict]:
    return [r["Properties"] for r in resources_of_type(template, "AWS::Events::Rule").values()
            if COMPLETION_SOURCE in r["Properties"].get("EventPattern", {}).get("source", [])]


# --- the rule ------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_the_job_finished_rule_listens_only_on_the_stages_own_bus(synthesized, stage) -> None:
    idle = synthesized.stack(stage, "idle").template_json
    bus_id, bus = bus_of(idle)
    [rule] = completion_rules(idle)
    assert rule["EventBusName"] == {"Ref": bus_id}
    assert rule["EventPattern"] == {"source": [COMPLETION_SOURCE], "detail-type": [COMPLETION_DETAIL_TYPE]}
    # Nothing of the stage acts on ml.training events put on the default bus.
    for name in stacks_of(synthesized.configs[stage]):
        if name != "idle":
            assert completion_rules(synthesized.stack(stage, name).template_json) == []


def test_every_stage_has_a_bus_of_its_own(synthesized) -> None:
    names = [bus_of(synthesized.stack(stage, "idle").template_json)[1]["Name"] for stage in STAGES]
    assert len(set(names)) == len(STAGES) and "default" not in names
    assert all(stage in name for stage, name in zip(STAGES, names))


# --- the bus policy ------------------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_the_bus_policy_names_the_idle_bus_and_denies_everyone_but_the_fleet_role(synthesized, stage) -> None:
    idle = synthesized.stack(stage, "idle").template_json
    training = synthesized.stack(stage, "training").template_json
    bus_id, bus = bus_of(idle)
    policy = producers_policy(training)
    assert policy["StatementId"] == PRODUCERS_ONLY_SID
    assert output_value(idle, policy["EventBusName"]) == {"Ref": bus_id}
    statement = policy["Statement"]
    assert output_value(idle, statement["Resource"]) == {"Fn::GetAtt": [bus_id, "Arn"]}

    bus_arn = f"arn:aws:events:{synthesized.configs[stage].region}:{ACCOUNT}:event-bus/{bus['Name']}"
    resolved = substitute(statement, {
        json.dumps({"Fn::GetAtt": [fleet_role_id(training), "Arn"]}, sort_keys=True): FLEET_ROLE_ARN,
        json.dumps(statement["Resource"], sort_keys=True): bus_arn})
    assert not denies(resolved, principal_arn=FLEET_ROLE_ARN, action="events:PutEvents", resource=bus_arn)
    for forger in FORGERS:
        assert denies(resolved, principal_arn=forger, action="events:PutEvents", resource=bus_arn), forger


def test_the_evaluator_can_tell_a_deny_from_no_deny() -> None:
    """The evaluator is not vacuous: a statement without a deny or for another
    action or bus does not deny; an unknown operator fails loudly."""
    bus = f"arn:aws:events:us-east-1:{ACCOUNT}:event-bus/b"
    deny = {"Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "events:PutEvents", "Resource": bus,
            "Condition": {"ArnNotEquals": {"aws:PrincipalArn": [FLEET_ROLE_ARN]}}}
    request = {"principal_arn": FORGERS[0], "action": "events:PutEvents", "resource": bus}
    assert denies(deny, **request)
    assert not denies({**deny, "Effect": "Allow"}, **request)
    assert not denies({**deny, "Action": "events:PutRule"}, **request)
    assert not denies({**deny, "Resource": bus + "2"}, **request)
    with pytest.raises(AssertionError):
        denies({**deny, "Condition": {"ArnNotLike": {"aws:PrincipalArn": "x"}}}, **request)


# --- the producers' permissions ------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_the_instances_may_put_events_on_the_stage_bus_and_no_other(synthesized, stage) -> None:
    idle = synthesized.stack(stage, "idle").template_json
    training = synthesized.stack(stage, "training").template_json
    bus_id, _ = bus_of(idle)
    on_events = [s for s in fleet_statements(training) if any(a.startswith("events:") for a in actions(s))]
    assert [actions(s) for s in on_events] == [{"events:PutEvents"}]
    assert output_value(idle, on_events[0]["Resource"]) == {"Fn::GetAtt": [bus_id, "Arn"]}
    for name in stacks_of(synthesized.configs[stage]):
        assert "event-bus/default" not in json.dumps(synthesized.stack(stage, name).template_json)


@pytest.mark.parametrize("stage", STAGES)
def test_the_agent_is_told_the_stage_bus(synthesized, stage) -> None:
    idle = synthesized.stack(stage, "idle").template_json
    bus_id, _ = bus_of(idle)
    environment = install_environment(synthesized.stack(stage, "training").template_json)
    assert output_value(idle, environment["ML_EVENT_BUS_NAME"]) == {"Ref": bus_id}


# --- without a fleet -----------------------------------------------------------------------

def test_a_stage_without_a_fleet_accepts_no_job_finished_event_at_all(tmp_path) -> None:
    dev = default_configs()["dev"]
    dev = replace(dev, training=replace(dev.training, enabled=False))
    app = build_app([dev], outdir=str(tmp_path))
    stage = app.node.find_child("dev")
    assert stage.training is None
    idle = Template.from_stack(stage.idle).to_json()
    bus_id, bus = bus_of(idle)
    policy = producers_policy(idle)
    assert policy["EventBusName"] == {"Ref": bus_id}
    statement = policy["Statement"]
    assert policy["StatementId"] == statement["Sid"] == NO_PRODUCERS_SID
    assert "Condition" not in statement
    bus_arn = f"arn:aws:events:{dev.region}:{ACCOUNT}:event-bus/{bus['Name']}"
    resolved = substitute(statement, {json.dumps(statement["Resource"], sort_keys=True): bus_arn})
    for principal in (FLEET_ROLE_ARN, *FORGERS):
        assert denies(resolved, principal_arn=principal, action="events:PutEvents", resource=bus_arn)


def test_producers_are_named_in_one_call_only() -> None:
    """A second deny naming other roles would shut the first ones out."""
    stack = cdk.Stack(cdk.App(), "idle", env=cdk.Environment(region="us-east-1"))
    shutdown = IdleShutdown(stack, "IdleShutdown", alerts_topic=sns.Topic(stack, "Alerts"), stage="test")
    role = iam.Role(stack, "Producer", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"))
    shutdown.accept_completion_only_from(stack, [role])
    with pytest.raises(ValueError, match="already called"):
        shutdown.accept_completion_only_from(stack, [role])


def test_the_construct_writes_the_stage_tag_the_function_reads() -> None:
    from constructs_lib.idle_shutdown import STAGE_TAG
    from tests.idle_function import module

    assert module("idle_settings").STAGE_TAG == STAGE_TAG
