"""Machine image pins: the AMIs the stacks launch, committed in the repository.

A public SSM ``.../latest/...`` parameter read by a template re-resolves at
every deploy: any update of the stack can then roll every GPU instance, and
an offline diff cannot show it. So the stacks never read one. They read
``ami_pins.json`` here, and only ``make refresh-amis`` (delivery/refresh_amis.py,
credentials) changes that file, from the same public parameters: an AMI
change is a reviewed diff of this file.

Two kinds of pins:

- ``training``: per region, the AMI ID of the training fleet's launch
  template (AWS Deep Learning Base OSS Nvidia Driver GPU AMI, Amazon Linux
  2023), with the image name and the parameter it was resolved from.
- ``eks_release_versions``: per region, Kubernetes version and managed node
  group AMI type, the node group ``release_version`` (Bottlerocket
  ``<version>-<commit>``, AL2023 ``<k8s>.<patch>-<date>``).

This module reads nothing but that file; preflight imports it to check that
every pin still exists and is not deprecated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ml_stacks import pin_file as pin_file_io
from ml_stacks.config import CPU_AMI_TYPES, GPU_AMI_TYPES, ConfigError

PIN_FILE = Path(__file__).resolve().parent / "ami_pins.json"
AMI_ID_RE = re.compile(r"^ami-[0-9a-f]{8}([0-9a-f]{9})?$")
# Bottlerocket "1.52.0-b7ac6e1a"; EKS-optimized AL2023 "1.34.1-20251016".
RELEASE_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+-([0-9a-f]{8}|\d{8})$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# The public parameter of the AWS Deep Learning Base OSS Nvidia Driver GPU
# AMI (Amazon Linux 2023, x86_64): where a region's first training pin comes from.
TRAINING_AMI_PARAMETER = (
    "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"
)


@dataclass(frozen=True)
class AmiPin:
    """One pinned AMI: its ID, its image name, the public SSM parameter
    ``make refresh-amis`` resolves it from and the day it was resolved."""

    ami_id: str
    name: str
    ssm_parameter: str
    resolved_at: str


@dataclass(frozen=True)
class ReleasePin:
    """One pinned managed node group release version and its SSM parameter."""

    release_version: str
    ssm_parameter: str
    resolved_at: str


def release_version_parameter(kubernetes_version: str, ami_type: str) -> str:
    """The public SSM parameter holding the latest release version of
    ``ami_type`` for ``kubernetes_version`` (what ``make refresh-amis`` reads)."""
    architecture = {**GPU_AMI_TYPES, **CPU_AMI_TYPES}.get(ami_type)
    if architecture is None:
        raise ConfigError("ami_type", ami_type,
                          "a managed node group AMI type: " + ", ".join({**CPU_AMI_TYPES, **GPU_AMI_TYPES}))
    arch = "x86_64" if architecture == "x86_64" else "arm64"
    if ami_type.startswith("BOTTLEROCKET"):
        variant = f"aws-k8s-{kubernetes_version}" + ("-nvidia" if ami_type.endswith("_NVIDIA") else "")
        return f"/aws/service/bottlerocket/{variant}/{arch}/latest/image_version"
    flavour = "nvidia" if ami_type.endswith("_NVIDIA") else "standard"
    return (f"/aws/service/eks/optimized-ami/{kubernetes_version}/amazon-linux-2023/"
            f"{arch}/{flavour}/recommended/release_version")


def load_pins(pin_file: Path = PIN_FILE) -> dict[str, Any]:
    """The pin file as a dict, validated (a malformed pin fails here, at synth)."""
    return pin_file_io.load(Path(pin_file), validate_pins, described_in="ml_stacks/pins.py")


def validate_pins(pins: Mapping[str, Any], where: str) -> None:
    """Raise ConfigError naming the first malformed pin of ``pins``."""
    for region, pin in pins.get("training", {}).items():
        path = f"{where}: training.{region}"
        _require_fields(pin, path, ("ami_id", "name", "ssm_parameter", "resolved_at"))
        if not AMI_ID_RE.match(pin["ami_id"]):
            raise ConfigError(f"{path}.ami_id", pin["ami_id"], "an AMI ID such as 'ami-0123456789abcdef0'")
        _require_date(pin["resolved_at"], f"{path}.resolved_at")
    for region, versions in pins.get("eks_release_versions", {}).items():
        for kubernetes_version, by_type in versions.items():
            for ami_type, pin in by_type.items():
                path = f"{where}: eks_release_versions.{region}.{kubernetes_version}.{ami_type}"
                _require_fields(pin, path, ("release_version", "ssm_parameter", "resolved_at"))
                if pin["ssm_parameter"] != release_version_parameter(kubernetes_version, ami_type):
                    raise ConfigError(f"{path}.ssm_parameter", pin["ssm_parameter"],
                                      release_version_parameter(kubernetes_version, ami_type))
                if not RELEASE_VERSION_RE.match(pin["release_version"]):
                    raise ConfigError(f"{path}.release_version", pin["release_version"],
                                      "a release version such as '1.52.0-b7ac6e1a' (Bottlerocket) "
                                      "or '1.34.1-20251016' (AL2023)")
                _require_date(pin["resolved_at"], f"{path}.resolved_at")


def _require_fields(pin: Any, path: str, names: tuple[str, ...]) -> None:
    if not isinstance(pin, Mapping) or not all(isinstance(pin.get(n), str) and pin[n] for n in names):
        raise ConfigError(path, pin, "an object with the strings " + ", ".join(names))


def _require_date(value: str, path: str) -> None:
    if not _DATE_RE.match(value):
        raise ConfigError(path, value, "a date YYYY-MM-DD")


def training_ami(region: str, *, pin_file: Path = PIN_FILE) -> AmiPin:
    """The pinned training AMI of ``region``; ConfigError if there is none."""
    pins = load_pins(pin_file)["training"]
    if region not in pins:
        raise ConfigError("training AMI pin", region,
                          f"a region pinned in {Path(pin_file).name} ({', '.join(sorted(pins)) or 'none'}): "
                          f"run `make refresh-amis STAGE=<a stage in {region}>`")
    pin = pins[region]
    return AmiPin(ami_id=pin["ami_id"], name=pin["name"], ssm_parameter=pin["ssm_parameter"],
                  resolved_at=pin["resolved_at"])


def eks_release_pin(region: str, kubernetes_version: str, ami_type: str, *,
                    pin_file: Path = PIN_FILE) -> ReleasePin | None:
    """The pinned release of ``ami_type`` node groups, None when not pinned."""
    pin = (load_pins(pin_file).get("eks_release_versions", {})
           .get(region, {}).get(kubernetes_version, {}).get(ami_type))
    if pin is None:
        return None
    return ReleasePin(release_version=pin["release_version"], ssm_parameter=pin["ssm_parameter"],
                      resolved_at=pin["resolved_at"])


def eks_release_version(region: str, kubernetes_version: str, ami_type: str, *,
                        pin_file: Path = PIN_FILE) -> str | None:
    """The node group ``release_version`` for ``ami_type`` in ``region``.

    None when the pin file has none: the node group then gets the latest
    release EKS has when the group is created and keeps it (EKS never
    updates a group's AMI by itself), so nothing rolls on a later deploy;
    only stages created on different days may differ. The eks stack warns
    about it, and ``make refresh-amis`` adds the pin.
    """
    pin = eks_release_pin(region, kubernetes_version, ami_type, pin_file=pin_file)
    return pin.release_version if pin else None
