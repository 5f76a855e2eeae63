"""``make refresh-amis [STAGE=<stage>]``: re-pin the AMIs the stacks launch.

The stacks never resolve a public "latest" parameter at deploy time (an
update would roll every GPU instance and no diff would show it): they read
``ml_stacks/ami_pins.json``. This command is the only way that file changes:
for the regions of the selected stages (all stages by default) it reads the
public SSM parameters the pins came from (the Deep Learning Base GPU AMI for
the training fleet; the Bottlerocket / EKS-optimized release of every node
group AMI type for the stage's Kubernetes version), names the training AMI
with ``DescribeImages``, rewrites the pin file and prints ``old -> new`` per
pin. The change is then an ordinary reviewed diff; ``make diff`` shows the
instances it replaces.

Read-only AWS calls (ssm:GetParameter, ec2:DescribeImages); credentials from
the default chain. Expected failures are one line on stderr (delivery.cli_errors).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from delivery.cli_errors import UserError, run
from ml_stacks import pin_file as pin_file_io
from ml_stacks.config import StageConfig, default_configs, select_stages
from ml_stacks.pins import (
    PIN_FILE,
    TRAINING_AMI_PARAMETER,
    load_pins,
    release_version_parameter,
    validate_pins,
)

SOURCE = "make refresh-amis (ssm:GetParameter, ec2:DescribeImages)"
# clients(service, region) -> boto3 client
Clients = Callable[[str, str], Any]


@dataclass
class RegionTargets:
    """What one region needs pinned: the training AMI and node group releases."""

    training: bool = False
    releases: set[tuple[str, str]] = field(default_factory=set)  # (kubernetes version, AMI type)


@dataclass(frozen=True)
class Change:
    pin: str  # "training us-east-1", "eks us-east-1 1.34 BOTTLEROCKET_x86_64"
    old: str | None
    new: str

    def line(self) -> str:
        if self.old == self.new:
            return f"{self.pin}: {self.new} (unchanged)"
        return f"{self.pin}: {self.old or '(none)'} -> {self.new}"


def targets(configs: Iterable[StageConfig]) -> dict[str, RegionTargets]:
    """Per region, every pin the selected stages' stacks read."""
    found: dict[str, RegionTargets] = {}
    for config in configs:
        region = found.setdefault(config.region, RegionTargets())
        region.training |= config.training.enabled
        if config.eks.enabled:
            groups = (config.eks.system, *config.eks.nodegroups.values())
            region.releases |= {(config.eks.kubernetes_version, g.ami_type) for g in groups}
    return found


def refresh(pins: dict[str, Any], wanted: dict[str, RegionTargets], *, clients: Clients,
            today: dt.date) -> tuple[dict[str, Any], list[Change]]:
    """``pins`` with every wanted pin resolved anew, and what changed."""
    pins = json.loads(json.dumps(pins))  # a copy: the caller's stays as it was
    training_pins = pins.setdefault("training", {})
    release_pins = pins.setdefault("eks_release_versions", {})
    changes: list[Change] = []
    for region in sorted(wanted):
        ssm = clients("ssm", region)
        if wanted[region].training:
            old = training_pins.get(region)
            parameter = old["ssm_parameter"] if old else TRAINING_AMI_PARAMETER
            ami_id = _parameter(ssm, parameter, region)
            name = _image_name(clients("ec2", region), ami_id, parameter, region)
            training_pins[region] = {"ami_id": ami_id, "name": name, "ssm_parameter": parameter,
                                     "resolved_at": today.isoformat(), "source": SOURCE}
            changes.append(Change(f"training {region}",
                                  f"{old['ami_id']} ({old['name']})" if old else None,
                                  f"{ami_id} ({name})"))
        for kubernetes_version, ami_type in sorted(wanted[region].releases):
            parameter = release_version_parameter(kubernetes_version, ami_type)
            version = _parameter(ssm, parameter, region)
            by_type = release_pins.setdefault(region, {}).setdefault(kubernetes_version, {})
            old = by_type.get(ami_type)
            by_type[ami_type] = {"release_version": version, "ssm_parameter": parameter,
                                 "resolved_at": today.isoformat(), "source": SOURCE}
            changes.append(Change(f"eks {region} {kubernetes_version} {ami_type}",
                                  old["release_version"] if old else None, version))
    validate_pins(pins, "resolved pins")
    return pins, changes


def _parameter(ssm: Any, name: str, region: str) -> str:
    try:
        return ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except ssm.exceptions.ParameterNotFound:
        raise UserError(f"public parameter {name} does not exist in {region}: the AMI or "
                        "Kubernetes version is not published there (check the stage config)") from None


def _image_name(ec2: Any, ami_id: str, parameter: str, region: str) -> str:
    from botocore.exceptions import ClientError

    try:
        images = ec2.describe_images(ImageIds=[ami_id]).get("Images", [])
    except ClientError as error:
        if not error.response.get("Error", {}).get("Code", "").startswith("InvalidAMIID"):
            raise
        images = []
    if not images:
        raise UserError(f"{parameter} in {region} names {ami_id}, which DescribeImages does not "
                        "return: retry later (the parameter may be mid-update)")
    return images[0]["Name"]


def write_pins(path: Path, pins: dict[str, Any]) -> None:
    pin_file_io.write(path, pins)


def boto3_clients() -> Clients:
    import boto3

    cache: dict[tuple[str, str], Any] = {}

    def client(service: str, region: str) -> Any:
        if (service, region) not in cache:
            cache[(service, region)] = boto3.client(service, region_name=region)
        return cache[(service, region)]
    return client


def main(argv: list[str] | None = None, *, clients: Clients | None = None,
         today: dt.date | None = None, pin_file: Path = PIN_FILE) -> int:
    parser = argparse.ArgumentParser(description="Re-pin the AMIs in ml_stacks/ami_pins.json")
    parser.add_argument("--stage", default="", help="one stage (default: every stage)")
    args = parser.parse_args(argv)
    configs = select_stages(default_configs(), args.stage or None)
    pins, changes = refresh(load_pins(pin_file), targets(configs), clients=clients or boto3_clients(),
                            today=today or dt.datetime.now(dt.timezone.utc).date())
    pin_file_io.report(changes, pins=pins, pin_file=pin_file,
                       what_diff_shows="the instances the new AMIs replace")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
