"""Monthly cost of a stage's always-on resources and of its maximum capacity.

Read from synthesized templates and a committed, dated price table
(``delivery/prices/<region>.json``: source and date inside). Nothing is
fetched at run time. Priced:

- NAT gateways, interface VPC endpoints (per AZ), EKS control planes and
  customer-managed KMS keys: always on, so always-on == maximum;
- EC2 capacity: Auto Scaling groups (MinSize/MaxSize; instance types from
  the launch template, the launch configuration or the mixed instances
  policy's overrides), EKS managed node groups (ScalingConfig; instance
  types or launch template) and plain instances;
- SageMaker endpoint configs: each variant's InitialInstanceCount, or the
  Application Auto Scaling MinCapacity/MaxCapacity registered for it.

Where a group may run several instance types, each instance is priced at
the most expensive of them, and spot capacity at the on-demand price: the
figures are upper bounds. Traffic, storage and requests are not included.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from delivery.assembly import home_regions, read_assembly, templates_by_stack

PRICES_DIR = Path(__file__).resolve().parent / "prices"


class PriceError(LookupError):
    pass


@dataclass(frozen=True)
class Prices:
    region: str
    retrieved: str
    hours_per_month: float
    nat_gateway_hour: float
    interface_endpoint_az_hour: float
    eks_cluster_hour: float
    eks_extended_support_cluster_hour: float
    kms_key_month: float
    ec2_instance_hour: Mapping[str, float]
    sagemaker_instance_hour: Mapping[str, float]

    @classmethod
    def load(cls, region: str, prices_dir: Path = PRICES_DIR) -> "Prices":
        path = prices_dir / f"{region}.json"
        if not path.exists():
            raise PriceError(f"no price table for region {region!r}: add {path}")
        raw = json.loads(path.read_text())
        return cls(**{name: raw[name] for name in cls.__dataclass_fields__})

    def monthly(self, hourly: float) -> float:
        return hourly * self.hours_per_month


@dataclass(frozen=True)
class CostLine:
    stage: str
    stack: str
    logical_id: str
    resource_type: str
    detail: str
    always_on: float  # USD per month at minimum capacity
    maximum: float  # USD per month at maximum configured capacity


@dataclass(frozen=True)
class Unpriced:
    stage: str
    stack: str
    logical_id: str
    resource_type: str
    reason: str


@dataclass
class StageCost:
    stage: str
    region: str
    lines: list[CostLine] = field(default_factory=list)
    unpriced: list[Unpriced] = field(default_factory=list)

    @property
    def always_on(self) -> float:
        return round(sum(line.always_on for line in self.lines), 2)

    @property
    def maximum(self) -> float:
        return round(sum(line.maximum for line in self.lines), 2)


class _Unpriceable(Exception):
    pass


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise _Unpriceable(f"{what} is {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise _Unpriceable(f"{what} is not a literal number: {json.dumps(value)}")


def _ref_target(value: Any) -> str | None:
    if isinstance(value, Mapping):
        if isinstance(value.get("Ref"), str):
            return value["Ref"]
        att = value.get("Fn::GetAtt")
        if isinstance(att, list) and att:
            return att[0]
    return None


class _TemplateEstimator:
    def __init__(self, stage: str, stack: str, template: Mapping, prices: Prices) -> None:
        self.stage, self.stack, self.prices = stage, stack, prices
        self.resources: Mapping[str, Mapping] = template.get("Resources", {})

    def _props(self, logical_id: str) -> Mapping:
        return self.resources[logical_id].get("Properties", {})

    def _ec2_hour(self, instance_types: Iterable[str]) -> tuple[float, str]:
        types = sorted(set(instance_types))
        if not types:
            raise _Unpriceable("no instance type found")
        missing = [t for t in types if t not in self.prices.ec2_instance_hour]
        if missing:
            raise _Unpriceable(f"no {self.prices.region} price for {', '.join(missing)}")
        priciest = max(types, key=lambda t: self.prices.ec2_instance_hour[t])
        return self.prices.ec2_instance_hour[priciest], priciest

    def _launch_template_types(self, spec: Any) -> list[str]:
        """Instance type of the launch template a LaunchTemplateSpecification names."""
        if not isinstance(spec, Mapping):
            raise _Unpriceable("no launch template")
        target = _ref_target(spec.get("LaunchTemplateId") or spec.get("Id"))
        name = spec.get("LaunchTemplateName") or spec.get("Name")
        if target is None and isinstance(name, str):
            target = next((lid for lid, r in self.resources.items()
                           if r["Type"] == "AWS::EC2::LaunchTemplate"
                           and r.get("Properties", {}).get("LaunchTemplateName") == name), None)
        if target is None or target not in self.resources:
            raise _Unpriceable("launch template is not in this template")
        instance_type = self._props(target).get("LaunchTemplateData", {}).get("InstanceType")
        if not isinstance(instance_type, str):
            raise _Unpriceable(f"launch template {target} has no literal InstanceType")
        return [instance_type]

    def _asg(self, props: Mapping) -> tuple[int, int, list[str]]:
        low = _count(props.get("MinSize"), "MinSize")
        high = _count(props.get("MaxSize"), "MaxSize")
        mixed = props.get("MixedInstancesPolicy")
        if mixed:
            lt = mixed.get("LaunchTemplate", {})
            overrides = lt.get("Overrides") or []
            types = []
            for override in overrides:
                if isinstance(override.get("InstanceType"), str):
                    types.append(override["InstanceType"])
                elif override.get("LaunchTemplateSpecification"):
                    types += self._launch_template_types(override["LaunchTemplateSpecification"])
                else:
                    raise _Unpriceable("an override selects instances by attributes, not type")
            if not types:
                types = self._launch_template_types(lt.get("LaunchTemplateSpecification"))
        elif props.get("LaunchTemplate"):
            types = self._launch_template_types(props["LaunchTemplate"])
        elif props.get("LaunchConfigurationName"):
            target = _ref_target(props["LaunchConfigurationName"])
            if target not in self.resources:
                raise _Unpriceable("launch configuration is not in this template")
            types = [self._props(target)["InstanceType"]]
        else:
            raise _Unpriceable("no launch template or configuration")
        return low, high, types

    def _nodegroup(self, props: Mapping) -> tuple[int, int, list[str]]:
        scaling = props.get("ScalingConfig", {})
        low = _count(scaling.get("MinSize", scaling.get("DesiredSize", 1)), "ScalingConfig.MinSize")
        high = _count(scaling.get("MaxSize", scaling.get("DesiredSize", 1)), "ScalingConfig.MaxSize")
        if props.get("InstanceTypes"):
            types = list(props["InstanceTypes"])
        elif props.get("LaunchTemplate"):
            types = self._launch_template_types(props["LaunchTemplate"])
        else:
            # EKS's documented default instance type for a managed node group.
            ami = str(props.get("AmiType", ""))
            types = ["g4dn.xlarge" if ("GPU" in ami or "NVIDIA" in ami) else "t3.medium"]
        return low, high, types

    def _sagemaker_scaling(self) -> dict[tuple[str, str], tuple[int, int]]:
        """{(endpoint config logical id, variant name): (min, max)} from
        Application Auto Scaling targets on SageMaker variants."""
        endpoints_by_name: dict[str, str] = {}
        config_of_endpoint: dict[str, str] = {}
        configs_by_name = {r.get("Properties", {}).get("EndpointConfigName"): lid
                           for lid, r in self.resources.items()
                           if r["Type"] == "AWS::SageMaker::EndpointConfig"}
        for lid, res in self.resources.items():
            if res["Type"] == "AWS::SageMaker::Endpoint":
                props = res.get("Properties", {})
                if isinstance(props.get("EndpointName"), str):
                    endpoints_by_name[props["EndpointName"]] = lid
                name = props.get("EndpointConfigName")
                config = _ref_target(name) or (configs_by_name.get(name) if isinstance(name, str) else None)
                if config:
                    config_of_endpoint[lid] = config
        scaling: dict[tuple[str, str], tuple[int, int]] = {}
        for res in self.resources.values():
            props = res.get("Properties", {})
            if (res["Type"] != "AWS::ApplicationAutoScaling::ScalableTarget"
                    or props.get("ServiceNamespace") != "sagemaker"
                    or props.get("ScalableDimension") != "sagemaker:variant:DesiredInstanceCount"):
                continue
            endpoint, variant = self._parse_variant_resource_id(props.get("ResourceId"),
                                                                endpoints_by_name)
            config = config_of_endpoint.get(endpoint or "")
            if config and variant:
                scaling[(config, variant)] = (_count(props.get("MinCapacity"), "MinCapacity"),
                                              _count(props.get("MaxCapacity"), "MaxCapacity"))
        return scaling

    @staticmethod
    def _parse_variant_resource_id(value: Any, endpoints_by_name: Mapping[str, str]
                                   ) -> tuple[str | None, str | None]:
        """``endpoint/<name>/variant/<variant>``, literal or an Fn::Join of
        literals and a Ref/GetAtt of the endpoint."""
        parts: list[Any]
        if isinstance(value, str):
            parts = [value]
        elif isinstance(value, Mapping) and isinstance(value.get("Fn::Join"), list):
            separator, parts = value["Fn::Join"]
            parts = [p for item in parts for p in ([separator, item] if separator else [item])]
        else:
            return None, None
        endpoint = next((_ref_target(p) for p in parts if _ref_target(p)), None)
        text = "".join(p if isinstance(p, str) else "\0" for p in parts)
        match = re.match(r"^endpoint/([^/]*)/variant/([^/\0]+)$", text)
        if not match:
            return None, None
        if endpoint is None:
            endpoint = endpoints_by_name.get(match.group(1))
        return endpoint, match.group(2)

    def estimate(self) -> tuple[list[CostLine], list[Unpriced]]:
        lines: list[CostLine] = []
        unpriced: list[Unpriced] = []
        p = self.prices
        scaling = None

        def add(lid: str, rtype: str, detail: str, always_on: float, maximum: float) -> None:
            lines.append(CostLine(self.stage, self.stack, lid, rtype, detail,
                                  round(always_on, 4), round(maximum, 4)))

        for lid, res in self.resources.items():
            rtype, props = res["Type"], res.get("Properties", {})
            try:
                if rtype == "AWS::EC2::NatGateway":
                    if props.get("ConnectivityType", "public") == "public":
                        cost = p.monthly(p.nat_gateway_hour)
                        add(lid, rtype, "NAT gateway", cost, cost)
                elif rtype == "AWS::EC2::VPCEndpoint":
                    if props.get("VpcEndpointType", "Gateway") == "Interface":
                        azs = len(props.get("SubnetIds") or [])
                        if azs == 0:
                            raise _Unpriceable("interface endpoint without literal SubnetIds")
                        cost = azs * p.monthly(p.interface_endpoint_az_hour)
                        service = props.get("ServiceName")
                        name = service if isinstance(service, str) else json.dumps(service)
                        add(lid, rtype, f"interface endpoint in {azs} AZs: {name}", cost, cost)
                elif rtype == "AWS::EKS::Cluster":
                    cost = p.monthly(p.eks_cluster_hour)
                    add(lid, rtype, "EKS control plane", cost, cost)
                elif rtype == "AWS::KMS::Key":
                    add(lid, rtype, "customer managed KMS key", p.kms_key_month, p.kms_key_month)
                elif rtype in ("AWS::AutoScaling::AutoScalingGroup", "AWS::EKS::Nodegroup"):
                    low, high, types = (self._asg(props) if rtype.startswith("AWS::AutoScaling")
                                        else self._nodegroup(props))
                    hourly, priced_as = self._ec2_hour(types)
                    add(lid, rtype, f"{low}..{high} x {priced_as}"
                        + (f" (of {', '.join(sorted(set(types)))})" if len(set(types)) > 1 else ""),
                        low * p.monthly(hourly), high * p.monthly(hourly))
                elif rtype == "AWS::EC2::Instance":
                    hourly, priced_as = self._ec2_hour([props.get("InstanceType", "m1.small")])
                    add(lid, rtype, f"1 x {priced_as}", p.monthly(hourly), p.monthly(hourly))
                elif rtype == "AWS::SageMaker::EndpointConfig":
                    if scaling is None:
                        scaling = self._sagemaker_scaling()
                    # A shadow variant's instances run (and bill) like production's.
                    for variant in (*props.get("ProductionVariants", []),
                                    *props.get("ShadowProductionVariants", [])):
                        if variant.get("ServerlessConfig"):
                            continue  # billed per request, nothing always on
                        name = variant.get("VariantName")
                        instance_type = variant.get("InstanceType")
                        if instance_type not in p.sagemaker_instance_hour:
                            raise _Unpriceable(f"no {p.region} price for {instance_type}")
                        initial = _count(variant.get("InitialInstanceCount", 1),
                                         "InitialInstanceCount")
                        low, high = scaling.get((lid, name), (initial, initial))
                        hourly = p.sagemaker_instance_hour[instance_type]
                        add(lid, rtype, f"variant {name}: {low}..{high} x {instance_type}",
                            low * p.monthly(hourly), high * p.monthly(hourly))
            except (_Unpriceable, KeyError) as error:
                unpriced.append(Unpriced(self.stage, self.stack, lid, rtype, str(error)))
        return lines, unpriced


def estimate(templates: Mapping[tuple[str, str], Mapping], *, region_of: Mapping[str, str],
             prices_dir: Path = PRICES_DIR) -> dict[str, StageCost]:
    """``{stage: StageCost}`` for ``{(stage, stack): template}``."""
    stages: dict[str, StageCost] = {}
    loaded: dict[str, Prices] = {}
    for (stage, stack), template in templates.items():
        region = region_of.get(stage, "us-east-1")
        if region not in loaded:
            loaded[region] = Prices.load(region, prices_dir)
        stage_cost = stages.setdefault(stage, StageCost(stage=stage, region=region))
        lines, unpriced = _TemplateEstimator(stage, stack, template, loaded[region]).estimate()
        stage_cost.lines.extend(lines)
        stage_cost.unpriced.extend(unpriced)
    return stages


def regions_of(templates_dirs: Iterable[Path]) -> dict[str, str]:
    """Stage -> region from the assemblies' manifests (``aws://account/region``).

    The region most of the stage's stacks deploy to: a stage's replica stack
    lives in another region, but the stage is priced (and its resource
    schemas read) in its own. The replica holds only keys and buckets, whose
    prices are the same in every region.
    """
    return home_regions(stack for outdir in templates_dirs for stack in read_assembly(outdir))


def money(amount: float) -> str:
    return f"${amount:,.2f}"


def format_report(stages: Mapping[str, StageCost], prices_dir: Path = PRICES_DIR) -> str:
    out = []
    for stage_cost in stages.values():
        prices = Prices.load(stage_cost.region, prices_dir)
        out.append(f"{stage_cost.stage} ({stage_cost.region}, prices of {prices.retrieved}): "
                   f"always-on {money(stage_cost.always_on)}/month, "
                   f"max capacity {money(stage_cost.maximum)}/month")
        for line in sorted(stage_cost.lines, key=lambda l: (l.stack, l.resource_type, l.logical_id)):
            out.append(f"  {line.stack:<10} {line.resource_type:<36} {money(line.always_on):>11}"
                       f" {money(line.maximum):>11}  {line.logical_id}: {line.detail}")
        for item in stage_cost.unpriced:
            out.append(f"  UNPRICED {item.stack}/{item.logical_id} ({item.resource_type}): {item.reason}")
    return "\n".join(out)


def format_delta(base: Mapping[str, StageCost], head: Mapping[str, StageCost]) -> str:
    rows = [("stage", "always-on base", "head", "delta", "max base", "head", "delta")]
    for stage in list(head) + [s for s in base if s not in head]:
        b, h = base.get(stage), head.get(stage)
        ba, ha = (b.always_on if b else 0.0), (h.always_on if h else 0.0)
        bm, hm = (b.maximum if b else 0.0), (h.maximum if h else 0.0)
        rows.append((stage, money(ba), money(ha), _signed(ha - ba), money(bm), money(hm), _signed(hm - bm)))
    return _table(rows)


def _signed(amount: float) -> str:
    amount = round(amount, 2)
    return ("+" if amount >= 0 else "-") + money(abs(amount))


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """``python -m delivery.cost [cdk.out]``: the report of ``make cost``.

    Exits 1 when a resource that costs money cannot be priced (an instance
    type missing from the price table): add its price rather than ignore it.
    """
    outdir = Path(argv[1] if len(argv) > 1 else "cdk.out")
    stages = estimate(templates_by_stack(outdir), region_of=regions_of([outdir]))
    print(format_report(stages))
    return 1 if any(s.unpriced for s in stages.values()) else 0


if __name__ == "__main__":
    import sys

    from delivery.cli_errors import run

    sys.exit(run(lambda: main(sys.argv)))
