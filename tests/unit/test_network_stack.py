"""Network stack: VPC layout, NAT, flow logs and endpoints per stage."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace

import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk.assertions import Match

from ml_stacks.app_factory import build_app
from ml_stacks.config import PRIVATE_GPU_NODE_ENDPOINTS, default_configs
from tests.conftest import STAGES, resources_of_type

@pytest.mark.parametrize("stage", STAGES)
def test_vpc_uses_the_configured_cidr_and_dns(synthesized, stage) -> None:
    config = synthesized.configs[stage]
    synthesized.template(stage, "network").has_resource_properties("AWS::EC2::VPC", {
        "CidrBlock": config.network.vpc_cidr,
        "EnableDnsHostnames": True,
        "EnableDnsSupport": True,
    })


@pytest.mark.parametrize("stage", STAGES)
def test_three_subnet_tiers_in_every_configured_az(synthesized, stage, all_templates) -> None:
    config = synthesized.configs[stage]
    subnets = resources_of_type(all_templates[(stage, "network")], "AWS::EC2::Subnet").values()
    azs = config.network.availability_zones
    by_tier: dict[str, list[str]] = {}
    for subnet in subnets:
        tags = {t["Key"]: t["Value"] for t in subnet["Properties"]["Tags"]}
        key = "AvailabilityZoneId" if config.network.uses_zone_ids else "AvailabilityZone"
        by_tier.setdefault(tags["aws-cdk:subnet-name"], []).append(subnet["Properties"][key])
    assert {tier: sorted(zones) for tier, zones in by_tier.items()} == {
        "public": sorted(azs), "private": sorted(azs), "isolated": sorted(azs)}

    vpc = ipaddress.ip_network(config.network.vpc_cidr)
    cidrs = [ipaddress.ip_network(s["Properties"]["CidrBlock"]) for s in subnets]
    assert all(c.subnet_of(vpc) for c in cidrs)
    assert all(not a.overlaps(b) for i, a in enumerate(cidrs) for b in cidrs[i + 1:])


@pytest.mark.parametrize("stage", STAGES)
def test_no_subnet_assigns_public_ips_and_only_nat_gateways_hold_elastic_ips(all_templates, stage) -> None:
    template = all_templates[(stage, "network")]
    subnets = resources_of_type(template, "AWS::EC2::Subnet").values()
    assert subnets and all(s["Properties"].get("MapPublicIpOnLaunch") is False for s in subnets)
    eips = resources_of_type(template, "AWS::EC2::EIP")
    nats = resources_of_type(template, "AWS::EC2::NatGateway").values()
    assert len(eips) == len(nats)
    assert sorted(n["Properties"]["AllocationId"]["Fn::GetAtt"][0] for n in nats) == sorted(eips)


@pytest.mark.parametrize("stage", STAGES)
def test_private_subnets_get_the_largest_share_of_addresses(all_templates, stage) -> None:
    subnets = resources_of_type(all_templates[(stage, "network")], "AWS::EC2::Subnet").values()
    size = {}
    for subnet in subnets:
        tags = {t["Key"]: t["Value"] for t in subnet["Properties"]["Tags"]}
        size[tags["aws-cdk:subnet-name"]] = ipaddress.ip_network(subnet["Properties"]["CidrBlock"]).num_addresses
    assert size["private"] > size["isolated"] > size["public"]


@pytest.mark.parametrize("stage", STAGES)
def test_nat_gateways_follow_the_stage_config(synthesized, stage) -> None:
    nat_gateways = synthesized.configs[stage].network.nat_gateways
    template = synthesized.template(stage, "network")
    template.resource_count_is("AWS::EC2::NatGateway", nat_gateways)
    template.resource_count_is("AWS::EC2::EIP", nat_gateways)


@pytest.mark.parametrize("stage", STAGES)
def test_flow_logs_capture_all_traffic_to_a_log_group_with_retention(synthesized, stage) -> None:
    template = synthesized.template(stage, "network")
    template.has_resource_properties("AWS::EC2::FlowLog", {
        "ResourceType": "VPC",
        "TrafficType": "ALL",
        "LogDestinationType": "cloud-watch-logs",
        "LogGroupName": {"Ref": Match.string_like_regexp("^VpcFlowLogGroup")},
    })
    template.has_resource_properties("AWS::Logs::LogGroup", {
        "RetentionInDays": synthesized.configs[stage].network.flow_log_retention_days})


@pytest.mark.parametrize("stage", STAGES)
def test_flow_log_group_is_kept_where_the_stage_retains_its_data(synthesized, stage) -> None:
    deletion_policy = "Retain" if synthesized.configs[stage].storage.retain else "Delete"
    synthesized.template(stage, "network").has_resource("AWS::Logs::LogGroup", {
        "DeletionPolicy": deletion_policy, "UpdateReplacePolicy": deletion_policy})


@pytest.mark.parametrize("stage", STAGES)
def test_s3_and_dynamodb_gateway_endpoints_always_exist(all_templates, stage) -> None:
    endpoints = resources_of_type(all_templates[(stage, "network")], "AWS::EC2::VPCEndpoint").values()
    gateway_services = sorted(
        e["Properties"]["ServiceName"]["Fn::Join"][1][-1]
        for e in endpoints if e["Properties"].get("VpcEndpointType") == "Gateway"
    )
    assert gateway_services == [".dynamodb", ".s3"]


@pytest.mark.parametrize("stage", STAGES)
def test_interface_endpoints_are_exactly_the_configured_ones(synthesized, all_templates, stage) -> None:
    config = synthesized.configs[stage]
    endpoints = [e["Properties"] for e in
                 resources_of_type(all_templates[(stage, "network")], "AWS::EC2::VPCEndpoint").values()
                 if e["Properties"].get("VpcEndpointType") == "Interface"]
    # Config names are the services' own DNS names.
    expected = sorted(f"com.amazonaws.{config.region}.{name}" for name in config.network.interface_endpoints)
    actual = sorted(e["ServiceName"] for e in endpoints)
    assert actual == expected
    assert all(e["PrivateDnsEnabled"] is True for e in endpoints)


def test_the_private_gpu_node_set_has_what_a_node_without_nat_needs() -> None:
    assert {"sagemaker.api", "sagemaker.runtime", "ecr.api", "ecr.dkr", "sts", "logs",
            "monitoring", "ssm", "sqs"} <= set(PRIVATE_GPU_NODE_ENDPOINTS)


@pytest.mark.parametrize("stage", STAGES)
def test_endpoint_security_group_admits_only_https_from_the_vpc(synthesized, stage) -> None:
    network = synthesized.configs[stage].network
    template = synthesized.template(stage, "network")
    # A stage without interface endpoints has no security group to admit anything.
    template.resource_count_is("AWS::EC2::SecurityGroup", 1 if network.interface_endpoints else 0)
    if not network.interface_endpoints:
        return
    cidr = network.vpc_cidr
    template.has_resource_properties("AWS::EC2::SecurityGroup", {
        "SecurityGroupIngress": [{"CidrIp": cidr, "FromPort": 443, "ToPort": 443, "IpProtocol": "tcp",
                                  "Description": Match.any_value()}],
        "SecurityGroupEgress": [Match.object_like({"CidrIp": "255.255.255.255/32"})],
    })


def test_network_stack_exposes_the_vpc_as_an_object(synthesized) -> None:
    stage = synthesized.app.node.find_child("prod")
    vpc = stage.network.vpc
    assert isinstance(vpc, ec2.Vpc)
    azs = len(synthesized.configs["prod"].network.availability_zones)
    assert len(vpc.private_subnets) == azs and len(vpc.isolated_subnets) == azs


def test_a_stage_configured_with_zone_ids_places_subnets_by_zone_id(tmp_path) -> None:
    dev = default_configs()["dev"]
    zone_ids = ("use1-az1", "use1-az4")
    dev = replace(dev, network=replace(dev.network, availability_zones=zone_ids))
    app = build_app([dev], outdir=str(tmp_path))
    assembly = app.synth()  # the whole stage, cdk-nag gate included
    templates = {s.stack_name: s.template for s in assembly.nested_assemblies[0].nested_assembly.stacks}
    [network] = [t for name, t in templates.items() if name.endswith("-network")]
    subnets = resources_of_type(network, "AWS::EC2::Subnet").values()
    assert sorted(s["Properties"]["AvailabilityZoneId"] for s in subnets) == sorted(zone_ids * 3)
    assert all("AvailabilityZone" not in s["Properties"] for s in subnets)
    # Every other stack addresses the subnets by ID, never by zone.
    for name, template in templates.items():
        if not name.endswith("-network"):
            assert "use1-az" not in json.dumps(template), name
