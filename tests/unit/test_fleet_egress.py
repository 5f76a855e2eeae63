"""Training fleet egress goes only where the stage says (issue 14, gap 6).

The expected rules are derived from each stage's config: its interface
endpoints, its region's gateway prefix lists and ``training.egress``.
"""

from __future__ import annotations

import json
from dataclasses import replace

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns

from constructs_lib.gpu_training_fleet import NO_TRAFFIC_EGRESS, FleetEgress, GpuTrainingFleet
from ml_stacks.config import (FLEET_INTERFACE_ENDPOINTS, GATEWAY_ENDPOINT_PREFIX_LISTS, INTERNET_HTTPS,
                              ConfigError, EgressDestination, NetworkConfig, StageConfig, TrainingConfig)
from tests.conftest import STAGES, resources_of_type
from tests.unit.test_config import TAGS


def fleet_group(template: dict) -> tuple[str, dict]:
    [(lid, group)] = [(lid, r) for lid, r in resources_of_type(template, "AWS::EC2::SecurityGroup").items()
                      if lid.startswith("FleetSecurityGroup")]
    return lid, group


def egress_rules(template: dict) -> tuple[list[dict], list[dict]]:
    """(inline rules of the fleet's group, its separate SecurityGroupEgress rules)."""
    group_id, group = fleet_group(template)
    separate = [r["Properties"] for r in resources_of_type(template, "AWS::EC2::SecurityGroupEgress").values()
                if r["Properties"]["GroupId"] == {"Fn::GetAtt": [group_id, "GroupId"]}]
    return group["Properties"].get("SecurityGroupEgress", []), separate


def destination(rule: dict) -> str:
    if "DestinationPrefixListId" in rule:
        return rule["DestinationPrefixListId"]
    if "DestinationSecurityGroupId" in rule:
        return "endpoints" if "EndpointSecurityGroup" in json.dumps(rule["DestinationSecurityGroupId"]) else "?"
    return rule["CidrIp"]


@pytest.mark.parametrize("stage", STAGES)
def test_fleet_egress_is_exactly_the_endpoints_and_the_configured_destinations(synthesized, stage) -> None:
    config = synthesized.configs[stage]
    inline, separate = egress_rules(synthesized.stack(stage, "training").template_json)
    real_inline = [r for r in inline if r != NO_TRAFFIC_EGRESS]
    got = sorted((destination(r), r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in real_inline + separate)
    expected = [(d.destination, d.protocol, d.port, d.last_port) for d in config.training.egress]
    if config.network.interface_endpoints:
        expected.append(("endpoints", "tcp", 443, 443))
    expected += [(pl, "tcp", 443, 443) for pl in GATEWAY_ENDPOINT_PREFIX_LISTS.get(config.region, {}).values()]
    assert got == sorted(expected)
    assert not [r for r in real_inline + separate if r["IpProtocol"] == "-1"]  # never all traffic
    # A group whose rules are all separate resources keeps a rule that
    # matches nothing inline, or EC2 would add its allow-all default.
    assert inline == (real_inline or [NO_TRAFFIC_EGRESS])


def test_prod_reaches_nothing_but_its_endpoints_and_dev_reaches_https_anywhere(synthesized) -> None:
    by_stage = {s: egress_rules(synthesized.stack(s, "training").template_json) for s in ("dev", "prod")}
    for stage, (inline, separate) in by_stage.items():
        open_https = [r for r in inline + separate if r.get("CidrIp") == "0.0.0.0/0"]
        assert bool(open_https) is synthesized.configs[stage].training.reaches_internet_https, stage
    assert synthesized.configs["dev"].training.egress == (INTERNET_HTTPS,)
    assert synthesized.configs["prod"].training.egress == ()
    assert set(FLEET_INTERFACE_ENDPOINTS) <= set(synthesized.configs["prod"].network.interface_endpoints)


# --- the construct on its own (EFA, inline rules) -------------------------------------------

def fleet_template(*, efa: bool, egress: list[FleetEgress]) -> dict:
    app = cdk.App()
    stack = cdk.Stack(app, "S", env=cdk.Environment(account="111122223333", region="us-east-1"))
    vpc = ec2.Vpc(stack, "Vpc", availability_zones=["us-east-1a"], nat_gateways=1)
    key = kms.Key(stack, "Key")
    GpuTrainingFleet(
        stack, "Fleet", vpc=vpc, autoscaling_group_name="g", instance_types=["g5.8xlarge", "g6.8xlarge"],
        max_capacity=2, volume_key=key, training_data_bucket=s3.Bucket(stack, "Data"),
        checkpoint_bucket=s3.Bucket(stack, "Checkpoints"), notification_topic=sns.Topic(stack, "Topic"),
        machine_image=ec2.MachineImage.generic_linux({"us-east-1": "ami-0123456789abcdef0"}),
        efa_enabled=efa, egress=egress)
    return app.synth().get_stack_by_name("S").template


def test_efa_allows_all_traffic_within_the_group_both_ways_and_nothing_else_is_added() -> None:
    template = fleet_template(efa=True, egress=[])
    inline, separate = egress_rules(template)
    group_id, _ = fleet_group(template)
    assert inline == [NO_TRAFFIC_EGRESS]
    [self_egress] = separate
    assert self_egress["IpProtocol"] == "-1"
    assert self_egress["DestinationSecurityGroupId"] == {"Fn::GetAtt": [group_id, "GroupId"]}
    [self_ingress] = [r["Properties"] for r in resources_of_type(template, "AWS::EC2::SecurityGroupIngress").values()]
    assert self_ingress["SourceSecurityGroupId"] == {"Fn::GetAtt": [group_id, "GroupId"]}


def test_an_inline_cidr_rule_replaces_the_no_traffic_rule() -> None:
    template = fleet_template(efa=False, egress=[
        FleetEgress(ec2.Peer.ipv4("203.0.113.0/24"), ec2.Port.tcp(8443), "mirror"),
        FleetEgress(ec2.Peer.prefix_list("pl-0123456789abcdef0"), ec2.Port.tcp(443), "registries")])
    inline, separate = egress_rules(template)
    assert inline == [{"CidrIp": "203.0.113.0/24", "Description": "mirror", "FromPort": 8443,
                       "IpProtocol": "tcp", "ToPort": 8443}]
    assert [r["DestinationPrefixListId"] for r in separate] == ["pl-0123456789abcdef0"]


# --- config ---------------------------------------------------------------------------------

def stage_in(region: str, *, endpoints: tuple[str, ...], egress: tuple[EgressDestination, ...]) -> StageConfig:
    return StageConfig(
        name="dev", region=region, tags=TAGS,
        network=NetworkConfig(vpc_cidr="10.0.0.0/16", availability_zones=(f"{region}a", f"{region}b"),
                              interface_endpoints=endpoints),
        training=replace(TrainingConfig(), egress=egress))


def test_closed_egress_needs_every_endpoint_the_fleet_calls() -> None:
    short = tuple(e for e in FLEET_INTERFACE_ENDPOINTS if e != "autoscaling")
    with pytest.raises(ConfigError) as caught:
        stage_in("us-east-1", endpoints=short, egress=())
    assert caught.value.field_path == "dev.training.egress"
    assert "autoscaling" in caught.value.allowed and "INTERNET_HTTPS" in caught.value.allowed
    assert stage_in("us-east-1", endpoints=FLEET_INTERFACE_ENDPOINTS, egress=()).training.egress == ()


def test_closed_egress_needs_the_regions_gateway_prefix_lists() -> None:
    region = "eu-west-1"
    assert region not in GATEWAY_ENDPOINT_PREFIX_LISTS
    with pytest.raises(ConfigError) as caught:
        stage_in(region, endpoints=FLEET_INTERFACE_ENDPOINTS, egress=())
    assert caught.value.field_path == "dev.training.egress"
    assert "GATEWAY_ENDPOINT_PREFIX_LISTS" in caught.value.allowed
    # Internet HTTPS needs neither.
    assert stage_in(region, endpoints=(), egress=(INTERNET_HTTPS,)).training.reaches_internet_https


@pytest.mark.parametrize(("destination", "field", "value", "allowed"), [
    (EgressDestination("10.0.0.1/16", "x"), "destination", "10.0.0.1/16", "IPv4 CIDR"),
    (EgressDestination("pl-xyz", "x"), "destination", "pl-xyz", "prefix list ID"),
    (EgressDestination("0.0.0.0/0", "x", port=0), "port", 0, "1 to 65535"),
    (EgressDestination("0.0.0.0/0", "x", port=443, to_port=80), "to_port", 80, "from 443 to 65535"),
    (EgressDestination("0.0.0.0/0", "x", protocol="icmp"), "protocol", "icmp", "tcp, udp"),
    (EgressDestination("0.0.0.0/0", "pip <mirror>"), "description", "pip <mirror>", "letters, digits"),
])
def test_fails_when_an_egress_destination_is_not_allowed(destination, field, value, allowed) -> None:
    with pytest.raises(ConfigError) as caught:
        stage_in("us-east-1", endpoints=(), egress=(INTERNET_HTTPS, destination))
    assert (caught.value.field_path, caught.value.value) == (f"dev.training.egress[1].{field}", value)
    assert allowed in caught.value.allowed


def test_fails_when_a_destination_is_listed_twice() -> None:
    mirror = EgressDestination("203.0.113.0/24", "pip mirror")
    with pytest.raises(ConfigError) as caught:
        stage_in("us-east-1", endpoints=(), egress=(INTERNET_HTTPS, mirror, replace(mirror, description="again")))
    assert caught.value.field_path == "dev.training.egress"
    assert "once" in caught.value.allowed


def test_https_to_the_internet_means_tcp_443_to_everything() -> None:
    assert INTERNET_HTTPS.reaches_internet_https()
    assert EgressDestination("0.0.0.0/0", "range", port=400, to_port=500).reaches_internet_https()
    assert not EgressDestination("0.0.0.0/0", "udp", protocol="udp").reaches_internet_https()
    assert not EgressDestination("0.0.0.0/1", "half").reaches_internet_https()
