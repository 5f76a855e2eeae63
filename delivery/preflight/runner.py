"""Every preflight check of one stage, in the order a reader fixes them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Callable, Iterable

from delivery import cost
from delivery.assembly import read_assembly
from delivery.cli_errors import describe
from delivery.preflight import FAIL, WARN, Result
from delivery.preflight import account, artifacts, billing, leftovers, model_packages, pins, quotas, zones
from ml_stacks.config import StageConfig

# client(service) in the stage's region; client(service, region) in another.
ClientFactory = Callable[..., object]

# Every IAM action preflight may call: all read-only. docs/deploying.md ("Permissions preflight needs") lists them
# for the role that runs it; tests/delivery/test_preflight_cli.py holds both
# to the calls a run really makes.
IAM_ACTIONS: tuple[str, ...] = (
    "sts:GetCallerIdentity",
    "ec2:DescribeRegions", "ec2:DescribeAvailabilityZones", "ec2:DescribeInstanceTypeOfferings",
    "ec2:DescribeInstanceTypes", "ec2:DescribeInstances", "ec2:DescribeImages",
    "cloudformation:DescribeStacks", "cloudformation:DescribeStackResource",
    "servicequotas:GetServiceQuota", "servicequotas:GetAWSDefaultServiceQuota",
    "servicequotas:ListServiceQuotas", "servicequotas:ListAWSDefaultServiceQuotas",
    "eks:ListClusters", "eks:DescribeAddonVersions", "eks:DescribeCluster", "eks:DescribeClusterVersions",
    "lambda:GetAccountSettings",
    "s3:GetObject",  # HeadObject
    "logs:DescribeLogGroups", "ecr:DescribeRepositories", "kms:DescribeKey", "iam:GetRole",
    "s3:ListBucket",  # HeadBucket
    "ssm:GetParameter", "sagemaker:DescribeEndpoint", "sagemaker:DescribeInferenceComponent",
    "sagemaker:DescribeModelPackage",
    "autoscaling:DescribeAutoScalingGroups", "cloudwatch:DescribeAlarms", "cloudwatch:GetDashboard",
    "events:DescribeEventBus", "ce:ListCostAllocationTags",
)


def stage_templates(assembly_dir: Path | str, stage: str) -> tuple[dict[str, dict], dict[str, str]]:
    """``{CloudFormation stack name: template}`` and ``{stack name: region}``
    of one stage of an assembly."""
    stacks = [s for s in read_assembly(assembly_dir) if s.stage == stage]
    return {s.stack_name: s.template() for s in stacks}, {s.stack_name: s.region for s in stacks}


def lambda_footprint(templates: Iterable[dict]) -> tuple[int, int]:
    """(functions, reserved concurrency) over the stage's templates."""
    functions = reserved = 0
    for template in templates:
        for resource in template.get("Resources", {}).values():
            if resource.get("Type") == "AWS::Lambda::Function":
                functions += 1
                value = (resource.get("Properties") or {}).get("ReservedConcurrentExecutions", 0)
                reserved += value if isinstance(value, int) else 0
    return functions, reserved


def _guarded(label: str, check: Callable[[], list[Result] | Result], *,
             severity: str = FAIL) -> list[Result]:
    """Run one group of checks; an AWS error it cannot get past (access
    denied, throttling) becomes one row of ``severity`` instead of ending
    the run: a check that could not run cannot pass."""
    from botocore.exceptions import ClientError

    try:
        result = check()
    except ClientError as error:
        return [Result(severity, label, f"could not check: {describe(error) or error}",
                       "give the credentials the read-only access docs/deploying.md's preflight section "
                       "lists, or retry if AWS throttled")]
    return [result] if isinstance(result, Result) else list(result)


def run_checks(config: StageConfig, *, assembly_dir: Path | str, client: ClientFactory,
               session_region: str | None, now: dt.datetime | None = None) -> list[Result]:
    """All rows for ``config``'s stage. ``client(service)`` returns a boto3
    client in the stage's region, ``client(service, region)`` one in another
    region the stage deploys to (the replica's)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    region, stage = config.region, config.name
    templates, regions = stage_templates(assembly_dir, stage)
    ec2, cfn = client("ec2"), client("cloudformation")

    # Credentials first: without them nothing else can run (cli_errors says how).
    first, account_id = account.check_account(client("sts"), stage=stage, expected_account=config.account)
    rows = [first]
    rows += _guarded("region", lambda: account.check_region(ec2, region=region, session_region=session_region))
    requirement = account.bootstrap_requirement(assembly_dir, stage)
    rows += _guarded("cdk bootstrap", lambda: account.check_bootstrap(
        cfn, client("ssm"), region=region, account=account_id, stage=stage, requirement=requirement))
    for other in sorted(set(regions.values()) - {region}):
        rows += _other_region_rows(stage, other, ec2=ec2, client=client, account_id=account_id,
                                   requirement=requirement)
    rows += _guarded("zones", lambda: _zone_rows(config, ec2))
    rows += _guarded("quotas", lambda: _quota_rows(config, ec2, client))
    rows += _guarded("stack count", lambda: quotas.check_stack_count(
        cfn, client("service-quotas"), stack_names=templates, region=region))
    functions, reserved = lambda_footprint(templates.values())
    rows += _guarded("lambda concurrency", lambda: quotas.check_lambda_concurrency(
        client("lambda"), functions=functions, reserved=reserved))
    if config.eks.enabled:
        rows += _guarded("kubernetes", lambda: pins.check_kubernetes_support(
            client("eks"), config.eks.kubernetes_version, now=now, extra_cost=_extended_support_cost(region)))
        rows += _guarded("addons", lambda: pins.check_addon_pins(
            client("eks"), config.eks.addons.as_dict(), kubernetes_version=config.eks.kubernetes_version))
    rows += _guarded("ami pins", lambda: _ami_rows(config, ec2, now))
    rows += _guarded("model artifacts", lambda: artifacts.check_model_artifacts(
        client("s3"), bucket=artifacts.artifacts_bucket(cfn, f"{config.stack_prefix}-storage"),
        models=config.serving.models, stage=stage, storage_stack=f"{config.stack_prefix}-storage"))
    if config.serving.model_package_groups:
        rows += _guarded("model packages", lambda: model_packages.check_model_packages(
            client("sagemaker"), models=config.serving.models, stage=stage, region=region,
            account=config.account))
    rows += _guarded("leftovers", lambda: leftovers.check_leftovers(
        client, cfn, leftovers.fixed_names(templates, account=account_id, regions=regions,
                                           home_region=region), stage=stage))
    tag = "Environment" if config.budget.filter_by_environment_tag else None
    # Cost allocation tags are a Billing setting, run from the organization's
    # management account: credentials that cannot read them can only warn.
    rows += _guarded("cost allocation tag", lambda: billing.check_cost_allocation_tag(
        client("ce"), tag_key=tag), severity=WARN)
    return rows


def _other_region_rows(stage: str, other: str, *, ec2, client: ClientFactory, account_id: str,
                       requirement: account.BootstrapRequirement) -> list[Result]:
    """Another region the stage deploys to (the replica's): enabled, and
    bootstrapped like the stage's own."""
    rows = _guarded(f"region {other}", lambda: account.check_region(
        ec2, region=other, session_region=None, name=f"region {other}"))
    return rows + _guarded(f"cdk bootstrap {other}", lambda: account.check_bootstrap(
        client("cloudformation", other), client("ssm", other), region=other, account=account_id,
        stage=stage, requirement=requirement, name=f"cdk bootstrap {other}"))


def _extended_support_cost(region: str) -> str:
    """What extended support adds to a cluster, from the region's price table."""
    try:
        prices = cost.Prices.load(region)
    except cost.PriceError:
        return ""
    extra = prices.monthly(prices.eks_extended_support_cluster_hour - prices.eks_cluster_hour)
    return (f"the cluster costs {cost.money(prices.eks_extended_support_cluster_hour)}/hour instead of "
            f"{cost.money(prices.eks_cluster_hour)}/hour (+${extra:,.0f}/month)")


def _zone_rows(config: StageConfig, ec2) -> list[Result]:
    configured = config.network.availability_zones
    rows = zones.check_zones(configured, zones.account_zones(ec2), region=config.region,
                             refused=config.eks_refused_zone_ids)
    groups: dict[str, tuple[str, ...]] = {}
    if config.training.enabled:
        groups["training fleet"] = config.training.instance_types
    if config.eks.enabled:
        groups["eks system"] = config.eks.system.instance_types
        groups.update({f"eks {role}": g.instance_types for role, g in config.eks.nodegroups.items()})
    all_types = list(dict.fromkeys(t for types in groups.values() for t in types))
    if not all_types:
        return rows
    offered = zones.offerings(ec2, all_types, configured, by_id=config.network.uses_zone_ids)
    node_groups = [group for group in groups if group.startswith("eks ")]
    return rows + zones.check_offerings(groups, offered, configured, every_zone=node_groups)


def _quota_rows(config: StageConfig, ec2, client: ClientFactory) -> list[Result]:
    vcpus = quotas.instance_vcpus(ec2, quotas.stage_instance_types(config))
    service_quotas = client("service-quotas")
    # The cluster quota is judged against the clusters the account already has.
    needs = [n for n in quotas.quota_needs(config, vcpus) if n.code != quotas.EKS_CLUSTERS[0]]
    endpoints = quotas.endpoint_instances_need(config)
    needs += [endpoints] if endpoints is not None else []
    in_use = quotas.ec2_vcpus_in_use(ec2)
    rows = quotas.check_quotas(service_quotas, needs, region=config.region, in_use=in_use)
    if config.eks.enabled:
        rows.append(quotas.check_eks_cluster_headroom(
            client("eks"), service_quotas, cluster_name=config.stack_prefix, region=config.region))
    return rows


def _ami_rows(config: StageConfig, ec2, now: dt.datetime) -> list[Result]:
    amis, releases = pins.stage_amis(config)
    return pins.check_amis(ec2, amis, now=now) + pins.check_release_versions(ec2, releases, now=now)
