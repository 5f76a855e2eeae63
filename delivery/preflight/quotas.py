"""Service quotas the stage needs, at deploy time and at max capacity.

The needs are computed from the stage config alone (:func:`quota_needs`),
so the quota table in docs/deploying.md and ``--quotas`` need no credentials; the checks then
compare them with the account's applied quota values (Service Quotas API).

EC2 quotas count vCPUs per bucket of instance families and per purchase
option. A group that may use several instance types is counted at its
largest type of each bucket: any mix the allocation strategy picks fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from delivery.preflight import Result, error_code, failed, passed, warned
from ml_stacks.config import StageConfig, instance_family

# (bucket, purchase option) -> (quota code, quota name), service "ec2".
# Codes as Service Quotas lists them for EC2 (vCPU-based limits).
EC2_VCPU_QUOTAS: Mapping[tuple[str, str], tuple[str, str]] = {
    ("G and VT", "on-demand"): ("L-DB2E81BA", "Running On-Demand G and VT instances"),
    ("G and VT", "spot"): ("L-3819A6DF", "All G and VT Spot Instance Requests"),
    ("P", "on-demand"): ("L-417A185B", "Running On-Demand P instances"),
    ("P", "spot"): ("L-7212CCBC", "All P Spot Instance Requests"),
    ("Standard", "on-demand"): ("L-1216C47A",
                                "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"),
    ("Standard", "spot"): ("L-34B43A08", "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests"),
}
EKS_CLUSTERS = ("L-1194D53C", "Clusters")
# One stack per model: a stage of N models is N + 6 or 7 stacks, and every
# stack of the account and region counts (default 2,000).
CLOUDFORMATION_STACKS = ("L-0485CB21", "Stack count")
# Every endpoint instance of the account and region, whatever its type
# (default 200): a stage of 200 models at one instance each fills it.
SAGEMAKER_ENDPOINT_INSTANCES = ("L-7A3DF611", "Number of instances across active endpoints")
EKS_NODEGROUPS_PER_CLUSTER = ("L-6D54EA21", "Managed node groups per cluster")
EKS_NODES_PER_NODEGROUP = ("L-BD136A63", "Nodes per managed node group")
_STANDARD_LETTERS = frozenset("acdhimrtz")

# Default vCPUs of the instance types the stages use (AWS instance type
# specifications; tests/delivery/test_preflight_quotas.py compares every
# entry with EC2's DescribeInstanceTypes data). A type missing here is
# looked up with DescribeInstanceTypes at preflight time.
VCPUS: Mapping[str, int] = {
    "m6i.large": 2, "m7i.large": 2,
    "g4dn.xlarge": 4, "g4dn.2xlarge": 8, "g4dn.12xlarge": 48,
    "g5.xlarge": 4, "g5.2xlarge": 8, "g5.4xlarge": 16, "g5.12xlarge": 48, "g5.48xlarge": 192,
    "g6.xlarge": 4, "g6.2xlarge": 8, "g6.4xlarge": 16, "g6.12xlarge": 48, "g6.48xlarge": 192,
    "g6e.xlarge": 4, "g6e.2xlarge": 8, "g6e.4xlarge": 16, "g6e.12xlarge": 48, "g6e.48xlarge": 192,
    "p4d.24xlarge": 96, "p4de.24xlarge": 96, "p5.48xlarge": 192,
}
# EKS node group roles that run on spot (the rest are on-demand), as
# constructs_lib/gpu_nodegroups.py creates them.
SPOT_NODEGROUPS = frozenset({"gpu_training", "serving_burst"})
# AWS rejects a reservation that leaves fewer unreserved executions.
LAMBDA_MIN_UNRESERVED = 10


def ec2_bucket(instance_type: str) -> str | None:
    """``G and VT``, ``P`` or ``Standard`` for an EC2 instance type; None if
    it draws on another quota (Inf, Trn, X, U, F, ...)."""
    family = instance_family(instance_type) or ""
    if family.startswith(("g", "vt")):
        return "G and VT"
    if family.startswith("p"):
        return "P"
    if family[:1] in _STANDARD_LETTERS:
        return "Standard"
    return None


@dataclass
class QuotaNeed:
    """What the stage needs of one quota, and what makes up the need."""

    service: str
    code: str | None  # None: SageMaker quotas are found by name
    name: str
    unit: str
    deploy: int = 0
    maximum: int = 0
    # Peak while a blue/green endpoint update runs at max capacity.
    update_peak: int = 0
    parts: list[str] = field(default_factory=list)

    def add(self, deploy: int, maximum: int, part: str, *, update_peak: int | None = None) -> None:
        self.deploy += deploy
        self.maximum += maximum
        self.update_peak += maximum if update_peak is None else update_peak
        self.parts.append(part)


def _pool_vcpus(types: Iterable[str], vcpus: Mapping[str, int]) -> dict[str, tuple[int, str]]:
    """Per EC2 bucket, the largest vCPU count among ``types`` and its type."""
    largest: dict[str, tuple[int, str]] = {}
    for instance_type in types:
        bucket = ec2_bucket(instance_type)
        if bucket is None:
            continue
        count = vcpus[instance_type]
        if count > largest.get(bucket, (0, ""))[0]:
            largest[bucket] = (count, instance_type)
    return largest


def _ec2_need(needs: dict, bucket: str, option: str) -> QuotaNeed:
    code, name = EC2_VCPU_QUOTAS[(bucket, option)]
    return needs.setdefault(code, QuotaNeed("ec2", code, name, "vCPUs"))


def _training_needs(config: StageConfig, vcpus: Mapping[str, int], needs: dict) -> None:
    training = config.training
    if not training.enabled:
        return
    above_base = training.max_capacity - training.on_demand_base
    on_demand = training.on_demand_base + math.ceil(above_base * training.on_demand_percentage / 100)
    counts = {"on-demand": on_demand, "spot": training.max_capacity - on_demand}
    # The fleet's Auto Scaling group starts at 0 instances: nothing at deploy.
    for bucket, (size, largest) in _pool_vcpus(training.instance_types, vcpus).items():
        for option, count in counts.items():
            if count:
                _ec2_need(needs, bucket, option).add(
                    0, count * size, f"training {count}x{largest} {option}")


def _eks_needs(config: StageConfig, vcpus: Mapping[str, int], needs: dict) -> None:
    eks = config.eks
    if not eks.enabled:
        return
    groups = {"system": eks.system, **eks.nodegroups}
    for role, group in groups.items():
        option = "spot" if role in SPOT_NODEGROUPS else "on-demand"
        for bucket, (size, largest) in _pool_vcpus(group.instance_types, vcpus).items():
            _ec2_need(needs, bucket, option).add(
                group.desired_size * size, group.max_size * size,
                f"eks {role} {group.desired_size}..{group.max_size}x{largest} {option}")
    clusters = needs.setdefault(EKS_CLUSTERS[0], QuotaNeed("eks", *EKS_CLUSTERS, "clusters"))
    clusters.add(1, 1, f"cluster {config.stack_prefix}")
    per_cluster = QuotaNeed("eks", *EKS_NODEGROUPS_PER_CLUSTER, "node groups")
    per_cluster.add(len(groups), len(groups), "+".join(groups))
    needs[EKS_NODEGROUPS_PER_CLUSTER[0]] = per_cluster
    role, group = max(groups.items(), key=lambda item: item[1].max_size)
    per_group = QuotaNeed("eks", *EKS_NODES_PER_NODEGROUP, "nodes")
    per_group.add(group.desired_size, group.max_size, f"largest group {role}")
    needs[EKS_NODES_PER_NODEGROUP[0]] = per_group


def endpoint_instances_need(config: StageConfig) -> QuotaNeed | None:
    """The stage's endpoints against the account-wide instance quota of all
    endpoints (``L-7A3DF611``), which grows with the number of models whatever
    their instance types; None without models."""
    models = config.serving.models
    if not models:
        return None
    need = QuotaNeed("sagemaker", *SAGEMAKER_ENDPOINT_INSTANCES, "instances")
    need.add(sum(m.initial_instance_count for m in models), sum(m.max_instance_count for m in models),
             f"{len(models)} endpoints",
             update_peak=sum(m.max_instance_count * (1 if m.scale_to_zero else 2) for m in models))
    return need


def _serving_needs(config: StageConfig, needs: dict) -> None:
    for model in config.serving.models:
        name = f"{model.instance_type} for endpoint usage"
        need = needs.setdefault(name, QuotaNeed("sagemaker", None, name, "instances"))
        # A blue/green update runs the new fleet next to the old one;
        # inference components (scale_to_zero) roll copies instead.
        peak = model.max_instance_count * (1 if model.scale_to_zero else 2)
        need.add(model.initial_instance_count, model.max_instance_count,
                 f"endpoint {model.name} {model.initial_instance_count}..{model.max_instance_count}",
                 update_peak=peak)
        shadow = model.shadow
        if shadow is not None:
            # A fixed candidate fleet, also rebuilt next to the old one on an update.
            shadow_type = shadow.instance_type or model.instance_type
            name = f"{shadow_type} for endpoint usage"
            need = needs.setdefault(name, QuotaNeed("sagemaker", None, name, "instances"))
            need.add(shadow.instance_count, shadow.instance_count,
                     f"endpoint {model.name} shadow {shadow.instance_count}",
                     update_peak=2 * shadow.instance_count)


def quota_needs(config: StageConfig, vcpus: Mapping[str, int] = VCPUS) -> list[QuotaNeed]:
    """Every quota the stage draws on, with deploy-time and max-capacity
    needs; EC2 entries in vCPUs, SageMaker in instances."""
    needs: dict[str, QuotaNeed] = {}
    _training_needs(config, vcpus, needs)
    _eks_needs(config, vcpus, needs)
    _serving_needs(config, needs)
    return [n for n in needs.values() if n.maximum > 0]


def stage_instance_types(config: StageConfig) -> list[str]:
    """Every EC2 instance type the stage may launch, in config order."""
    types: list[str] = []
    if config.training.enabled:
        types += config.training.instance_types
    if config.eks.enabled:
        for group in (config.eks.system, *config.eks.nodegroups.values()):
            types += group.instance_types
    return list(dict.fromkeys(types))


def instance_vcpus(ec2, instance_types: Iterable[str], known: Mapping[str, int] = VCPUS) -> dict[str, int]:
    """vCPUs of each type: the table first, DescribeInstanceTypes for the rest."""
    result = {t: known[t] for t in instance_types if t in known}
    missing = [t for t in instance_types if t not in known]
    if missing:
        for info in ec2.describe_instance_types(InstanceTypes=missing)["InstanceTypes"]:
            result[info["InstanceType"]] = info["VCpuInfo"]["DefaultVCpus"]
    return result


def ec2_vcpus_in_use(ec2, known: Mapping[str, int] = VCPUS) -> dict[str, int]:
    """Quota code -> vCPUs of the region's pending and running instances.

    Instances of every workload count, the stage's own included (a redeploy
    sees its running nodes here): usage can only warn, never fail.
    """
    counts: dict[tuple[str, str], int] = {}
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}])
    for page in pages:
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                option = "spot" if instance.get("InstanceLifecycle") == "spot" else "on-demand"
                key = (instance["InstanceType"], option)
                counts[key] = counts.get(key, 0) + 1
    vcpus = instance_vcpus(ec2, sorted({t for t, _ in counts}), known)
    usage: dict[str, int] = {}
    for (instance_type, option), count in counts.items():
        bucket = ec2_bucket(instance_type)
        if bucket is not None:
            code = EC2_VCPU_QUOTAS[(bucket, option)][0]
            usage[code] = usage.get(code, 0) + count * vcpus[instance_type]
    return usage


def quota_value(quotas, service: str, code: str) -> float | None:
    """The applied value of a quota, else its AWS default (Service Quotas
    has an applied value only once the account has one); None when the
    region has no such quota."""
    for operation in (quotas.get_service_quota, quotas.get_aws_default_service_quota):
        try:
            return float(operation(ServiceCode=service, QuotaCode=code)["Quota"]["Value"])
        except Exception as error:  # noqa: BLE001 - only "no such quota" falls through
            if error_code(error) != "NoSuchResourceException":
                raise
    return None


def _label(need: QuotaNeed) -> str:
    return f"quota {need.service} {need.code or need.name.split(' ')[0]}"


def _unknown_quota(need: QuotaNeed, region: str) -> Result:
    what = need.code or repr(need.name)
    return warned(_label(need), f"no quota {what} in {region}",
                  f"list them: aws service-quotas list-aws-default-service-quotas --service-code "
                  f"{need.service} --region {region}; if the instance type is not offered here, "
                  "pick another")


def quotas_by_name(quotas, service: str) -> dict[str, tuple[float, str]]:
    """Quota name -> (value, code) for a service: defaults overlaid with
    applied values."""
    values: dict[str, tuple[float, str]] = {}
    for operation in ("list_aws_default_service_quotas", "list_service_quotas"):
        for page in quotas.get_paginator(operation).paginate(ServiceCode=service):
            for quota in page["Quotas"]:
                values[quota["QuotaName"]] = (float(quota["Value"]), quota["QuotaCode"])
    return values


def judge(need: QuotaNeed, value: float, *, region: str, code: str | None = None,
          in_use: int = 0) -> Result:
    """PASS when the quota holds max capacity, WARN when it holds the deploy
    but not max capacity (or not a blue/green update at max, or not next to
    what already runs in the account), FAIL when the deploy itself would
    exceed it."""
    label = _label(need)
    figure = (f"{need.name}: need {need.deploy} {need.unit} at deploy, {need.maximum} at max"
              f" ({'; '.join(need.parts)}); quota {value:g}"
              + (f", {in_use} in use now" if in_use else ""))
    ask = (f"aws service-quotas request-service-quota-increase --region {region} "
           f"--service-code {need.service} --quota-code {need.code or code} "
           f"--desired-value {need.update_peak}")
    if value < need.deploy:
        return failed(label, figure, f"the deploy would fail: {ask}")
    if value < need.maximum:
        return warned(label, figure, f"deploys, but cannot scale to max: {ask}")
    if value < need.update_peak:
        return warned(label, figure + f"; {need.update_peak} during a blue/green update at max",
                      f"an endpoint update at max capacity would fail: {ask}")
    if value - in_use < need.maximum:
        return warned(label, figure, f"running instances (this stage's included) leave "
                                     f"{value - in_use:g}: if they are not this stage's, {ask}")
    return passed(label, figure)


def check_quotas(quotas, needs: Iterable[QuotaNeed], *, region: str,
                 in_use: Mapping[str, int] | None = None) -> list[Result]:
    """One row per quota the stage needs; ``in_use``: quota code -> what
    already runs in the account (EC2 vCPUs)."""
    in_use = in_use or {}
    rows: list[Result] = []
    by_name: dict[str, dict[str, tuple[float, str]]] = {}
    for need in needs:
        code = need.code
        if code is not None:
            value = quota_value(quotas, need.service, code)
        else:
            if need.service not in by_name:
                by_name[need.service] = quotas_by_name(quotas, need.service)
            value, code = by_name[need.service].get(need.name, (None, None))
        rows.append(_unknown_quota(need, region) if value is None
                    else judge(need, value, region=region, code=code, in_use=in_use.get(code, 0)))
    return rows


def check_eks_cluster_headroom(eks, quotas, *, cluster_name: str, region: str) -> Result:
    """The account's cluster count leaves room for the stage's cluster."""
    clusters: list[str] = []
    for page in eks.get_paginator("list_clusters").paginate():
        clusters += page["clusters"]
    limit = quota_value(quotas, "eks", EKS_CLUSTERS[0])
    name = f"quota eks {EKS_CLUSTERS[0]}"
    figure = (f"{EKS_CLUSTERS[1]}: need 1 more, {len(clusters)} in {region} already; "
              f"quota {'unknown' if limit is None else f'{limit:g}'}")
    if cluster_name in clusters or limit is None or len(clusters) + 1 <= limit:
        return passed(name, figure)
    return failed(name, figure, f"delete an unused cluster or raise {EKS_CLUSTERS[0]}")


def account_stacks(cfn) -> set[str]:
    """Names of every stack of the region that counts against the quota
    (DescribeStacks without a name lists all but the deleted ones)."""
    names: set[str] = set()
    for page in cfn.get_paginator("describe_stacks").paginate():
        names |= {stack["StackName"] for stack in page["Stacks"]}
    return names


def check_stack_count(cfn, quotas, *, stack_names: Iterable[str], region: str) -> Result:
    """The region's stacks plus the stage's new ones fit the stack quota."""
    stage = set(stack_names)
    existing = account_stacks(cfn)
    new = stage - existing
    limit = quota_value(quotas, "cloudformation", CLOUDFORMATION_STACKS[0])
    name = f"quota cloudformation {CLOUDFORMATION_STACKS[0]}"
    after = len(existing) + len(new)
    figure = (f"{CLOUDFORMATION_STACKS[1]}: the stage has {len(stage)} stacks "
              f"({len(stage) - len(new)} deployed, {len(new)} new), {len(existing)} in {region} "
              f"already, {after} after the deploy; quota {'unknown' if limit is None else f'{limit:g}'}")
    ask = (f"aws service-quotas request-service-quota-increase --region {region} "
           f"--service-code cloudformation --quota-code {CLOUDFORMATION_STACKS[0]} "
           f"--desired-value {after + len(stage)}")
    if limit is None:
        return warned(name, figure, f"no quota {CLOUDFORMATION_STACKS[0]} in {region}: check the "
                                    "account's CloudFormation stack limit (DescribeAccountLimits)")
    if after > limit:
        return failed(name, figure, f"the deploy would fail: delete unused stacks or {ask}")
    if limit - after < len(stage):
        return warned(name, figure, f"no room for another stage of this size: {ask}")
    return passed(name, figure)


def check_lambda_concurrency(lambda_client, *, functions: int, reserved: int) -> Result:
    """Account concurrency against what the stage's functions reserve.

    AWS keeps ``LAMBDA_MIN_UNRESERVED`` unreserved: a reservation that
    leaves fewer fails the deploy. Fewer unreserved executions than the
    stage has functions means they can throttle each other.
    """
    settings = lambda_client.get_account_settings()["AccountLimit"]
    limit, unreserved = settings["ConcurrentExecutions"], settings["UnreservedConcurrentExecutions"]
    name = "lambda concurrency"
    figure = (f"account limit {limit}, unreserved {unreserved}; stage reserves {reserved} "
              f"across {functions} functions")
    ask = ("aws service-quotas request-service-quota-increase --service-code lambda "
           "--quota-code L-B99A9384 --desired-value 1000")
    if unreserved - reserved < LAMBDA_MIN_UNRESERVED:
        return failed(name, figure, f"remove the reservation or raise the limit: {ask}")
    if unreserved - reserved < functions:
        return warned(name, figure, f"functions may throttle each other: {ask}")
    return passed(name, figure)


def quota_table(needs: Iterable[QuotaNeed]) -> list[tuple[str, str, str, str, str]]:
    """(service, code, name, at deploy, at max) rows for docs/deploying.md's table and the bench."""
    return [(n.service, n.code or "(by name)", n.name, f"{n.deploy} {n.unit}",
             f"{n.maximum} {n.unit}" + (f" ({n.update_peak} during update)" if n.update_peak > n.maximum else ""))
            for n in needs]

