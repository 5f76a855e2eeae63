"""Pinned versions exist: EKS add-on versions for the cluster version, and
AMIs (present, available, not deprecated)."""

from __future__ import annotations

import datetime as dt
import importlib
from dataclasses import dataclass
from typing import Mapping, Sequence

from delivery.preflight import Result, failed, passed, warned


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


def check_amis(ec2, amis: Sequence[PinnedAmi], *, now: dt.datetime) -> list[Result]:
    """Every pinned AMI exists, is available and is not deprecated."""
    if not amis:
        return []
    found = {}
    for page in ec2.get_paginator("describe_images").paginate(
            ImageIds=[a.ami_id for a in amis], IncludeDeprecated=True):
        for image in page["Images"]:
            found[image["ImageId"]] = image
    rows: list[Result] = []
    for ami in amis:
        name = f"ami {ami.use}"
        fix = "make refresh-amis (resolves the current public AMIs and rewrites the pin), review the diff"
        image = found.get(ami.ami_id)
        if image is None:
            rows.append(failed(name, f"{ami.ami_id} ({ami.name or 'unnamed'}) does not exist here", fix))
            continue
        if image.get("State") != "available":
            rows.append(failed(name, f"{ami.ami_id} is {image.get('State')}", fix))
            continue
        deprecation = image.get("DeprecationTime")
        when = _parse_time(deprecation) if deprecation else None
        if when is not None and when <= now:
            rows.append(failed(name, f"{ami.ami_id} {image.get('Name', '')} deprecated since {deprecation}", fix))
        elif when is not None and when - now <= dt.timedelta(days=30):
            rows.append(warned(name, f"{ami.ami_id} {image.get('Name', '')} deprecated on {deprecation}", fix))
        else:
            rows.append(passed(name, f"{ami.ami_id} {image.get('Name', '')} available"
                                     + (f", deprecated on {deprecation}" if deprecation else "")))
    return rows


def _parse_time(value) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def pinned_amis(region: str) -> list[PinnedAmi] | None:
    """The AMIs pinned in ``ml_stacks/pins.py`` for ``region``; None when
    this checkout has no pins module (AMIs then resolve at deploy time)."""
    try:
        pins = importlib.import_module("ml_stacks.pins")
    except ModuleNotFoundError as error:
        if error.name != "ml_stacks.pins":
            raise
        return None
    pin = pins.training_ami(region)
    return [PinnedAmi(use="training fleet", ami_id=pin.ami_id, name=pin.name)]


def unpinned_amis(region: str) -> Result:
    return warned("ami pins", f"no AMI pins for {region} (ml_stacks/pins.py absent): the training "
                              "AMI resolves from a public SSM parameter at every deploy",
                  "pin AMIs in the repository (make refresh-amis) so an AMI change is a reviewed diff")
