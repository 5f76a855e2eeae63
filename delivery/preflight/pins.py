"""Pinned versions exist: EKS add-on versions for the cluster version, and
AMIs (present, available, not deprecated)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Mapping, Sequence

from delivery.preflight import Result, failed, passed, warned
from ml_stacks import pins as ami_pins
from ml_stacks.config import StageConfig

# An AMI deprecated within this long is a WARN: refresh the pin before it lands.
DEPRECATION_WARNING = dt.timedelta(days=30)
# A Kubernetes version whose EKS standard support ends within this long is a WARN.
STANDARD_SUPPORT_WARNING = dt.timedelta(days=60)


@dataclass(frozen=True)
class PinnedAmi:
    """One AMI the stage launches, as pinned in the repository."""

    use: str  # what launches it, e.g. "training fleet"
    ami_id: str
    name: str = ""


def addon_versions(eks, addon: str, kubernetes_version: str) -> list[str]:
    """Every version of ``addon`` EKS lists for the Kubernetes version."""
    versions: list[str] = []
    pages = eks.get_paginator("describe_addon_versions").paginate(
        addonName=addon, kubernetesVersion=kubernetes_version)
    for page in pages:
        for info in page["addons"]:
            versions += [v["addonVersion"] for v in info.get("addonVersions", [])]
    return versions


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.lstrip("v").replace("-eksbuild.", ".").split(".")
                 if part.isdigit())


def check_kubernetes_support(eks, kubernetes_version: str, *, now: dt.datetime,
                             extra_cost: str = "") -> Result:
    """The cluster's Kubernetes version is offered, and in EKS standard
    support: past its end, EKS bills the cluster at the extended support rate
    (extended support is on by default). ``extra_cost`` says by how much."""
    name = f"kubernetes {kubernetes_version}"
    listed = eks.describe_cluster_versions(clusterVersions=[kubernetes_version])["clusterVersions"]
    info = next((v for v in listed if v["clusterVersion"] == kubernetes_version), None)
    if info is None or info.get("versionStatus") == "UNSUPPORTED":
        return failed(name, f"EKS does not offer Kubernetes {kubernetes_version} in this region",
                      "set eks.kubernetes_version to a version `aws eks describe-cluster-versions` lists")
    ends = info.get("endOfStandardSupportDate")
    if ends is None:
        return passed(name, f"{info.get('versionStatus', 'offered')}, no end of standard support announced")
    day = ends.date().isoformat()
    upgrade = ("move eks.kubernetes_version to a newer version with its add-on and node AMI pins "
               "(docs/eks.md, Kubernetes versions)")
    cost = f": {extra_cost}" if extra_cost else ""
    if ends <= now:
        return warned(name, f"in EKS extended support since {day}{cost}", upgrade)
    if ends - now <= STANDARD_SUPPORT_WARNING:
        return warned(name, f"EKS standard support ends {day}, in {(ends - now).days} days{cost}", upgrade)
    return passed(name, f"EKS standard support until {day}")


def check_addon_pins(eks, pins: Mapping[str, str], *, kubernetes_version: str) -> list[Result]:
    """Every pinned add-on version is listed for the cluster's version."""
    rows: list[Result] = []
    for addon, pinned in pins.items():
        listed = addon_versions(eks, addon, kubernetes_version)
        name = f"addon {addon}"
        if pinned in listed:
            rows.append(passed(name, f"{pinned} is listed for Kubernetes {kubernetes_version}"))
            continue
        newest = sorted(listed, key=_version_key)[-3:]
        rows.append(failed(
            name, f"{pinned} is not listed for Kubernetes {kubernetes_version}"
                  + (f" (newest: {', '.join(reversed(newest))})" if newest else " (no versions listed)"),
            f"pin a listed version in EksConfig.addons ({addon}): aws eks describe-addon-versions "
            f"--addon-name {addon} --kubernetes-version {kubernetes_version}"))
    return rows


def eks_ami_name(kubernetes_version: str, ami_type: str, release_version: str) -> str:
    """The public AMI name of a managed node group release: Bottlerocket
    ``bottlerocket-aws-k8s-1.34-nvidia-x86_64-v1.52.0-b7ac6e1a``, AL2023
    ``amazon-eks-node-al2023-x86_64-nvidia-1.34-v20251016``."""
    arm = "_ARM_64" in ami_type
    if ami_type.startswith("BOTTLEROCKET"):
        variant = f"aws-k8s-{kubernetes_version}" + ("-nvidia" if ami_type.endswith("_NVIDIA") else "")
        return f"bottlerocket-{variant}-{'aarch64' if arm else 'x86_64'}-v{release_version}"
    flavour = "nvidia" if ami_type.endswith("_NVIDIA") else "standard"
    build_date = release_version.rsplit("-", 1)[1]
    return (f"amazon-eks-node-al2023-{'arm64' if arm else 'x86_64'}-{flavour}-"
            f"{kubernetes_version}-v{build_date}")


def _images(ec2, filters: list[dict], **kwargs) -> list[dict]:
    images: list[dict] = []
    for page in ec2.get_paginator("describe_images").paginate(Filters=filters, IncludeDeprecated=True,
                                                              **kwargs):
        images += page["Images"]
    return images


def _judge_image(name: str, what: str, image: dict | None, now: dt.datetime) -> Result:
    fix = "make refresh-amis (resolves the current public AMIs and rewrites the pin), review the diff"
    if image is None:
        return failed(name, f"{what} does not exist in this region", fix)
    label = f"{image['ImageId']} {image.get('Name', '')}".strip()
    if image.get("State") != "available":
        return failed(name, f"{label} is {image.get('State')}", fix)
    deprecation = image.get("DeprecationTime")
    when = _parse_time(deprecation) if deprecation else None
    if when is not None and when <= now:
        return failed(name, f"{label} deprecated since {deprecation}", fix)
    if when is not None and when - now <= DEPRECATION_WARNING:
        return warned(name, f"{label} deprecated on {deprecation}", fix)
    return passed(name, f"{label} available" + (f", deprecated on {deprecation}" if deprecation else ""))


def check_amis(ec2, amis: Sequence[PinnedAmi], *, now: dt.datetime) -> list[Result]:
    """Every pinned AMI ID exists, is available and is not deprecated."""
    if not amis:
        return []
    # A filter, unlike ImageIds, answers a missing image with nothing instead of an error.
    found = {i["ImageId"]: i for i in _images(ec2, [{"Name": "image-id", "Values": [a.ami_id for a in amis]}])}
    return [_judge_image(f"ami {a.use}", f"{a.ami_id} ({a.name or 'unnamed'})", found.get(a.ami_id), now)
            for a in amis]


def check_release_versions(ec2, releases: Sequence[tuple[str, str, str, str | None]], *,
                           now: dt.datetime) -> list[Result]:
    """Every pinned node group release exists as a public Amazon AMI and is
    not deprecated. ``releases``: (node group, AMI type, Kubernetes version,
    release version or None when not pinned)."""
    rows: list[Result] = []
    for group, ami_type, kubernetes_version, release in releases:
        name = f"release {group}"
        if release is None:
            rows.append(warned(name, f"no pinned release for {ami_type} on Kubernetes {kubernetes_version}: "
                                     "EKS picks its latest when the group is created",
                               "make refresh-amis adds the pin, review the diff"))
            continue
        ami_name = eks_ami_name(kubernetes_version, ami_type, release)
        images = _images(ec2, [{"Name": "name", "Values": [ami_name]}], Owners=["amazon"])
        rows.append(_judge_image(name, f"{ami_type} release {release} ({ami_name})",
                                 images[0] if images else None, now))
    return rows


def _parse_time(value) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def stage_amis(config: StageConfig) -> tuple[list[PinnedAmi], list[tuple[str, str, str, str | None]]]:
    """The stage's pinned training AMI and its node groups' releases."""
    amis: list[PinnedAmi] = []
    if config.training.enabled:
        pin = ami_pins.training_ami(config.region)
        amis.append(PinnedAmi(use="training fleet", ami_id=pin.ami_id, name=pin.name))
    releases = []
    if config.eks.enabled:
        version = config.eks.kubernetes_version
        for group, settings in {"system": config.eks.system, **config.eks.nodegroups}.items():
            releases.append((group, settings.ami_type, version,
                             ami_pins.eks_release_version(config.region, version, settings.ami_type)))
    return amis, releases
