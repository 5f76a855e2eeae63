"""Resources with fixed names that would collide with the next create.

The names come from the synthesized templates (every resource whose name
property is a literal string, or a join of literals and the account, region
and partition, such as the replica buckets'), not from a list kept by hand,
each looked up in its stack's region: a resource
kept by ``RETAIN`` after ``make destroy``, or recreated by a service after
its stack deleted it (SageMaker and EKS write to their log groups), makes a
create of the same name fail with "already exists". A resource the stage's
own stack already manages is not a leftover.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from delivery.preflight import Result, error_code, failed, passed


@dataclass(frozen=True)
class FixedName:
    stack_name: str
    logical_id: str
    resource_type: str
    name_property: str
    name: str
    # The stack's region when it is not the stage's own (the replica's).
    region: str | None = None


def _log_group(client, name: str) -> bool:
    groups = client.describe_log_groups(logGroupNamePrefix=name)["logGroups"]
    return any(g["logGroupName"] == name for g in groups)


def _absent_on(*codes: str) -> Callable[[Callable[[], object]], bool]:
    def probe(call: Callable[[], object]) -> bool:
        try:
            call()
        except Exception as error:  # noqa: BLE001 - only "not found" means absent
            if error_code(error) in codes:
                return False
            raise
        return True
    return probe


def _bucket(client, name: str) -> bool | str:
    """True when the bucket is this account's; a string saying so when
    another account holds the name (bucket names are global)."""
    try:
        client.head_bucket(Bucket=name)
    except Exception as error:  # noqa: BLE001 - only 404 and 403 are answers
        code = error_code(error)
        if code in ("404", "NoSuchBucket"):
            return False
        if code in ("403", "AccessDenied"):
            return "in another account"
        raise
    return True


_ecr_absent = _absent_on("RepositoryNotFoundException")
_kms_absent = _absent_on("NotFoundException")
_iam_absent = _absent_on("NoSuchEntity")
_ssm_absent = _absent_on("ParameterNotFound")
_eks_absent = _absent_on("ResourceNotFoundException")
_dashboard_absent = _absent_on("ResourceNotFound", "ResourceNotFoundException")
_events_absent = _absent_on("ResourceNotFoundException")
# SageMaker answers "not found" with a ValidationException.
_sagemaker_absent = _absent_on("ValidationException")

# (resource type, name property) -> (client service, exists(client, name)).
# Only names that are unique in the account and region: names scoped to a
# parent (a lifecycle hook in its group, an add-on in its cluster, an inline
# policy in its role) cannot collide after the parent is gone.
CHECKERS: Mapping[tuple[str, str], tuple[str, Callable[[object, str], bool | str]]] = {
    ("AWS::Logs::LogGroup", "LogGroupName"): ("logs", _log_group),
    ("AWS::S3::Bucket", "BucketName"): ("s3", _bucket),
    ("AWS::ECR::Repository", "RepositoryName"): (
        "ecr", lambda c, n: _ecr_absent(lambda: c.describe_repositories(repositoryNames=[n]))),
    ("AWS::KMS::Alias", "AliasName"): ("kms", lambda c, n: _kms_absent(lambda: c.describe_key(KeyId=n))),
    ("AWS::IAM::Role", "RoleName"): ("iam", lambda c, n: _iam_absent(lambda: c.get_role(RoleName=n))),
    ("AWS::SSM::Parameter", "Name"): ("ssm", lambda c, n: _ssm_absent(lambda: c.get_parameter(Name=n))),
    ("AWS::EKS::Cluster", "Name"): ("eks", lambda c, n: _eks_absent(lambda: c.describe_cluster(name=n))),
    ("AWS::SageMaker::Endpoint", "EndpointName"): (
        "sagemaker", lambda c, n: _sagemaker_absent(lambda: c.describe_endpoint(EndpointName=n))),
    ("AWS::SageMaker::InferenceComponent", "InferenceComponentName"): (
        "sagemaker", lambda c, n: _sagemaker_absent(
            lambda: c.describe_inference_component(InferenceComponentName=n))),
    ("AWS::AutoScaling::AutoScalingGroup", "AutoScalingGroupName"): (
        "autoscaling", lambda c, n: bool(
            c.describe_auto_scaling_groups(AutoScalingGroupNames=[n])["AutoScalingGroups"])),
    ("AWS::CloudWatch::Alarm", "AlarmName"): (
        "cloudwatch", lambda c, n: bool(c.describe_alarms(AlarmNames=[n])["MetricAlarms"])),
    ("AWS::CloudWatch::Dashboard", "DashboardName"): (
        "cloudwatch", lambda c, n: _dashboard_absent(lambda: c.get_dashboard(DashboardName=n))),
    # The idle stack's job-finished bus: CloudFormation requires a name, CDK
    # generates it from the construct path (the same on every rebuild).
    ("AWS::Events::EventBus", "Name"): (
        "events", lambda c, n: _events_absent(lambda: c.describe_event_bus(Name=n))),
}
# Name properties that are not account-wide identifiers (or not names at
# all). tests/delivery/test_preflight_leftovers.py fails when a template
# gains a literal name property that is in neither table.
NOT_COLLIDING: frozenset[tuple[str, str]] = frozenset({
    ("AWS::EKS::Addon", "AddonName"),
    ("AWS::AutoScaling::LifecycleHook", "LifecycleHookName"),
    ("AWS::IAM::Policy", "PolicyName"),
    ("AWS::ApplicationAutoScaling::ScalingPolicy", "PolicyName"),
    ("AWS::SageMaker::InferenceComponent", "VariantName"),
    ("AWS::CloudWatch::Alarm", "MetricName"),
    ("AWS::SNS::Topic", "DisplayName"),
    ("AWS::EC2::VPCEndpoint", "ServiceName"),
})


# Pseudo parameters a fixed name may be joined from, and how to fill them.
_PSEUDO = ("AWS::AccountId", "AWS::Region", "AWS::Partition", "AWS::URLSuffix")


def _name_value(value: object, pseudo: Mapping[str, str]) -> str | None:
    """A literal name, or a ``Fn::Join`` of literals and pseudo parameters
    filled from ``pseudo``; None for anything that depends on a resource."""
    if isinstance(value, str):
        return value
    join = value.get("Fn::Join") if isinstance(value, dict) and len(value) == 1 else None
    if not (isinstance(join, list) and len(join) == 2 and isinstance(join[1], list)):
        return None
    parts = []
    for part in join[1]:
        ref = part.get("Ref") if isinstance(part, dict) and len(part) == 1 else None
        if isinstance(part, str):
            parts.append(part)
        elif ref in _PSEUDO:
            parts.append(pseudo.get(ref, "${" + ref + "}"))
        else:
            return None
    return join[0].join(parts)


def _region_pseudo(region: str) -> dict[str, str]:
    """The region-derived pseudo parameters of a stack in ``region``."""
    partition = ("aws-cn" if region.startswith("cn-")
                 else "aws-us-gov" if region.startswith("us-gov-") else "aws")
    suffix = "amazonaws.com.cn" if partition == "aws-cn" else "amazonaws.com"
    return {"AWS::Region": region, "AWS::Partition": partition, "AWS::URLSuffix": suffix}


def literal_names(template: Mapping, pseudo: Mapping[str, str] | None = None
                  ) -> Iterable[tuple[str, str, str, str]]:
    """(logical id, type, property, name) for every fixed ``*Name`` property:
    a literal, or a join of literals and pseudo parameters (``pseudo`` fills
    them; unfilled ones stay ``${AWS::AccountId}``)."""
    for logical_id, resource in template.get("Resources", {}).items():
        for prop, value in (resource.get("Properties") or {}).items():
            name = _name_value(value, pseudo or {}) if prop.endswith("Name") else None
            if name is not None:
                yield logical_id, resource["Type"], prop, name


def fixed_names(templates: Mapping[str, Mapping], *, account: str | None = None,
                regions: Mapping[str, str] | None = None, home_region: str | None = None
                ) -> list[FixedName]:
    """Every collision-prone fixed name of ``{stack name: template}``.

    ``account`` and ``regions`` (stack name -> its region) fill the pseudo
    parameters of joined names; a stack whose region is not ``home_region``
    has its names looked up there."""
    found: list[FixedName] = []
    for stack_name, template in templates.items():
        region = (regions or {}).get(stack_name)
        pseudo = {**({"AWS::AccountId": account} if account else {}),
                  **(_region_pseudo(region) if region else {})}
        elsewhere = region if region and home_region and region != home_region else None
        for logical_id, resource_type, prop, value in literal_names(template, pseudo):
            if (resource_type, prop) in CHECKERS:
                found.append(FixedName(stack_name, logical_id, resource_type, prop, value, elsewhere))
    return found


def _owned(cfn, fixed: FixedName) -> bool:
    try:
        detail = cfn.describe_stack_resource(StackName=fixed.stack_name,
                                             LogicalResourceId=fixed.logical_id)
    except Exception as error:  # noqa: BLE001 - a missing stack or resource means not ours
        if error_code(error) == "ValidationError":
            return False
        raise
    resource = detail["StackResourceDetail"]
    if resource.get("ResourceStatus", "").startswith("DELETE_"):
        return False
    # The physical ID is the name, or an ARN ending in it (SageMaker endpoints
    # and inference components; SageMaker lower-cases names in ARNs).
    physical = resource.get("PhysicalResourceId", "").lower()
    name = fixed.name.lower()
    return physical == name or physical.endswith(f"/{name}")


def _remove_hint(fixed: FixedName) -> str:
    commands = {
        "AWS::Logs::LogGroup": f"aws logs delete-log-group --log-group-name {fixed.name}",
        "AWS::ECR::Repository": f"aws ecr delete-repository --repository-name {fixed.name} --force",
        "AWS::KMS::Alias": f"aws kms delete-alias --alias-name {fixed.name}",
        "AWS::IAM::Role": f"aws iam delete-role --role-name {fixed.name} (detach its policies first)",
        "AWS::SSM::Parameter": f"aws ssm delete-parameter --name {fixed.name}",
        "AWS::CloudWatch::Alarm": f"aws cloudwatch delete-alarms --alarm-names {fixed.name}",
        "AWS::CloudWatch::Dashboard": f"aws cloudwatch delete-dashboards --dashboard-names {fixed.name}",
        "AWS::Events::EventBus": f"aws events delete-event-bus --name {fixed.name} (delete its rules first)",
        "AWS::S3::Bucket": f"aws s3 rb s3://{fixed.name} --force (it deletes the data; with versioning, "
                           "delete every object version first)",
    }
    return commands.get(fixed.resource_type, f"delete {fixed.resource_type} {fixed.name}")


def check_leftovers(client: Callable[..., object], cfn, names: Iterable[FixedName],
                    *, stage: str) -> list[Result]:
    """FAIL per fixed name that exists outside the stack that will create it;
    one PASS row when none does. ``client(service)`` is a client of the
    stage's region, ``client(service, region)`` of another; ``cfn`` the
    stage region's CloudFormation client."""
    rows: list[Result] = []
    checked = 0
    for fixed in names:
        checked += 1
        service, exists = CHECKERS[(fixed.resource_type, fixed.name_property)]
        where = (client(service) if fixed.region is None else client(service, fixed.region))
        found = exists(where, fixed.name)
        if not found:
            continue
        if isinstance(found, str):
            rows.append(failed(
                f"leftover {fixed.name}", f"{fixed.resource_type} {fixed.name} exists {found}",
                "S3 bucket names are global: its owner must delete it, or the stage needs another "
                f"name for it (see {fixed.stack_name}'s stack in ml_stacks/)"))
            continue
        stack_cfn = cfn if fixed.region is None else client("cloudformation", fixed.region)
        if _owned(stack_cfn, fixed):
            continue
        rows.append(_leftover_row(fixed, stage))
    if not rows:
        rows.append(passed("leftovers", f"none of {checked} fixed names exists outside its stack"))
    return rows


def _leftover_row(fixed: FixedName, stage: str) -> Result:
    stack_id = fixed.stack_name.removeprefix(f"ml-{stage}-")
    where = f" in {fixed.region}" if fixed.region else ""
    return failed(
        f"leftover {fixed.name}",
        f"{fixed.resource_type} {fixed.name} exists{where} but {fixed.stack_name} does not manage it",
        f"adopt it: node_modules/.bin/cdk import -c stages={stage} '{stage}/{stack_id}' (answer "
        f"the prompt for {fixed.logical_id} with {fixed.name}; needs bootstrap version 12+), "
        f"or remove it: {_remove_hint(fixed)}")
