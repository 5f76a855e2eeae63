"""Network stack: the stage's VPC, flow logs and VPC endpoints."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from constructs import Construct

from constructs_lib.ml_vpc import MlVpc
from ml_stacks.base_stack import StageStack, log_retention
from ml_stacks.config import INTERFACE_ENDPOINTS, StageConfig
from ml_stacks.log_groups import encrypt_provider_logs, log_group_name


class NetworkStack(StageStack):
    """Exposes ``vpc`` (``ec2.IVpc``) and ``endpoint_security_group`` (the
    interface endpoints' group, None without endpoints) for the other stacks.

    Flow logs and the log group of CDK's default-security-group function are
    encrypted with ``logs_key``."""

    def __init__(self, scope: Construct, construct_id: str, *, config: StageConfig,
                 logs_key: kms.IKey) -> None:
        super().__init__(scope, construct_id, config=config,
                         description=f"ml-infra {config.name}: VPC, flow logs, VPC endpoints")
        net = config.network
        self.network = MlVpc(
            self,
            "Vpc",
            cidr=net.vpc_cidr,
            availability_zones=net.availability_zones,
            nat_gateways=net.nat_gateways,
            interface_endpoints={
                name: getattr(ec2.InterfaceVpcEndpointAwsService, INTERFACE_ENDPOINTS[name])
                for name in net.interface_endpoints
            },
            flow_log_retention=log_retention(net.flow_log_retention_days),
            removal_policy=self.removal_policy,
            zone_ids=net.uses_zone_ids,
            flow_log_group_name=log_group_name(self, config, "flow-logs"),
            flow_log_key=logs_key,
        )
        # The VPC's restrictDefaultSecurityGroup custom resource runs on a
        # provider function of CDK's with no log group option.
        encrypt_provider_logs(self, "Custom::VpcRestrictDefaultSGCustomResourceProvider",
                              config=config, purpose="restrict-default-security-group", key=logs_key)
        self.vpc: ec2.IVpc = self.network.vpc
        self.endpoint_security_group: ec2.ISecurityGroup | None = self.network.endpoint_security_group
        cdk.CfnOutput(self, "VpcId", value=self.vpc.vpc_id, description="The stage VPC")
