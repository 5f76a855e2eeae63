"""The ``network`` section: VPC, subnets, NAT, endpoints, flow logs."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Mapping

from ml_stacks.config.base import ConfigError, LOG_RETENTION_DAYS, _require


# Interface endpoint names accepted in config, in the service's own DNS
# spelling, mapped to the aws_cdk.aws_ec2.InterfaceVpcEndpointAwsService
# attribute that creates them. These are the ones private GPU nodes, EKS
# nodes and SageMaker endpoints actually call.
INTERFACE_ENDPOINTS: Mapping[str, str] = {
    "sagemaker.api": "SAGEMAKER_API",
    "sagemaker.runtime": "SAGEMAKER_RUNTIME",
    "ecr.api": "ECR",
    "ecr.dkr": "ECR_DOCKER",
    "sts": "STS",
    "logs": "CLOUDWATCH_LOGS",
    "monitoring": "CLOUDWATCH_MONITORING",
    "ssm": "SSM",
    "ssmmessages": "SSM_MESSAGES",
    "ec2messages": "EC2_MESSAGES",
    "sqs": "SQS",
    "sns": "SNS",
    "kms": "KMS",
    "ec2": "EC2",
    "autoscaling": "AUTOSCALING",
    "eks": "EKS",
    "eks-auth": "EKS_AUTH",
    "events": "EVENTBRIDGE",
}

# What a private GPU node needs to pull images, fetch parameters, ship logs
# and metrics, be reached by Run Command and talk to SageMaker without NAT.
PRIVATE_GPU_NODE_ENDPOINTS: tuple[str, ...] = (
    "sagemaker.api",
    "sagemaker.runtime",
    "ecr.api",
    "ecr.dkr",
    "sts",
    "logs",
    "monitoring",
    "ssm",
    "ssmmessages",
    "ec2messages",
    "sqs",
)

# The AWS-managed prefix lists of the S3 and DynamoDB gateway endpoints, per
# region (``aws ec2 describe-managed-prefix-lists --filters
# Name=prefix-list-name,Values=com.amazonaws.<region>.s3`` and ``...dynamodb``;
# the IDs are the same in every account of a region). A security group that
# does not allow HTTPS to the internet reaches S3 and DynamoDB only through
# these. A stage whose training fleet has no internet HTTPS needs its
# region here: add a region once you have looked its two IDs up.
GATEWAY_ENDPOINT_PREFIX_LISTS: Mapping[str, Mapping[str, str]] = {
    "us-east-1": {"s3": "pl-63a5400a", "dynamodb": "pl-02cd2c6b"},
}


VPC_PREFIX_MIN, VPC_PREFIX_MAX = 16, 22
MAX_AZS = 6


@dataclass(frozen=True)
class NetworkConfig:
    """The stage's VPC.

    ``availability_zones`` are given explicitly so synth never looks them up
    (offline, deterministic): either zone names (``us-east-1a``) or zone IDs
    (``use1-az1``), all of one kind. A zone name maps to a different
    physical zone in each account; a zone ID is the same zone everywhere, so
    IDs are the way to say "the zone where g6 is offered" once for every
    account (preflight resolves them and checks the instance types).
    ``nat_gateways`` defaults to 1: one per AZ is the production choice, one
    is the cheap one.
    """

    vpc_cidr: str
    availability_zones: tuple[str, ...]
    nat_gateways: int = 1
    interface_endpoints: tuple[str, ...] = ()
    flow_log_retention_days: int = 90

    def validate(self, prefix: str, region: str) -> None:
        path = f"{prefix}.vpc_cidr"
        try:
            net = ipaddress.IPv4Network(self.vpc_cidr, strict=True)
        except (ValueError, TypeError):
            raise ConfigError(path, self.vpc_cidr,
                              "an IPv4 network address in CIDR notation, e.g. '10.0.0.0/16'") from None
        _require(VPC_PREFIX_MIN <= net.prefixlen <= VPC_PREFIX_MAX, path, self.vpc_cidr,
                 f"a prefix between /{VPC_PREFIX_MIN} and /{VPC_PREFIX_MAX} "
                 "(room for public, private and isolated subnets in every AZ)")
        _require(net.is_private, path, self.vpc_cidr,
                 "a private range (10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16)")

        path = f"{prefix}.availability_zones"
        azs = self.availability_zones
        _require(isinstance(azs, tuple) and 1 <= len(azs) <= MAX_AZS, path, azs,
                 f"a tuple of 1 to {MAX_AZS} AZ names or AZ IDs")
        _require(len(set(azs)) == len(azs), path, azs, "each AZ once")
        name_re = re.compile(rf"^{re.escape(region)}[a-z]$")
        id_re = re.compile(rf"^{re.escape(zone_id_prefix(region))}-az[1-9][0-9]?$")
        example = f"'{region}a' (name) or '{zone_id_prefix(region)}-az1' (ID)"
        for az in azs:
            _require(isinstance(az, str) and bool(name_re.match(az) or id_re.match(az)), path, az,
                     f"an AZ name or AZ ID of region {region!r}, e.g. {example}")
        kinds = {bool(id_re.match(az)) for az in azs}
        _require(len(kinds) == 1, path, azs,
                 f"AZ names only or AZ IDs only, not both, e.g. {example}")

        path = f"{prefix}.nat_gateways"
        _require(isinstance(self.nat_gateways, int) and 1 <= self.nat_gateways <= len(azs),
                 path, self.nat_gateways,
                 f"1 to {len(azs)} (one per AZ at most; private subnets need at least one)")

        path = f"{prefix}.interface_endpoints"
        _require(isinstance(self.interface_endpoints, tuple), path,
                 self.interface_endpoints, "a tuple of endpoint names")
        for name in self.interface_endpoints:
            _require(name in INTERFACE_ENDPOINTS, path, name,
                     "one of " + ", ".join(sorted(INTERFACE_ENDPOINTS)))
        _require(len(set(self.interface_endpoints)) == len(self.interface_endpoints),
                 path, self.interface_endpoints, "each endpoint once")

        path = f"{prefix}.flow_log_retention_days"
        _require(self.flow_log_retention_days in LOG_RETENTION_DAYS, path,
                 self.flow_log_retention_days,
                 "a CloudWatch Logs retention: " + ", ".join(map(str, LOG_RETENTION_DAYS)))

    @property
    def uses_zone_ids(self) -> bool:
        """True when ``availability_zones`` are AZ IDs (``use1-az1``), not names."""
        return bool(_ZONE_ID_RE.match(self.availability_zones[0]))


_ZONE_ID_RE = re.compile(r"^[a-z]+[0-9]-az[0-9]+$")
_DIRECTION_ABBREVIATIONS = {
    "north": "n", "south": "s", "east": "e", "west": "w", "central": "c",
    "northeast": "ne", "southeast": "se", "northwest": "nw", "southwest": "sw",
}


def zone_id_prefix(region: str) -> str:
    """The prefix of ``region``'s AZ IDs: 'use1' for us-east-1, 'apse2' for
    ap-southeast-2, 'usgw1' for us-gov-west-1."""
    parts = region.split("-")
    area, number = parts[0], parts[-1]
    gov = "g" if "gov" in parts else ""
    direction = _DIRECTION_ABBREVIATIONS.get(parts[-2], parts[-2])
    return f"{area}{gov}{direction}{number}"
