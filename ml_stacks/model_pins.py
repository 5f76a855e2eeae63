"""Model registry pins: the package version each registry-served model deploys.

A model with ``model_package_group`` serves a SageMaker Model Registry
package, never "the latest approved" resolved at deploy time: a deploy would
then ship whatever was approved last, without a diff anyone reviewed. The
serving stacks read ``model_pins.json`` here instead, and only ``make
refresh-models STAGE=<stage>`` (delivery/refresh_models.py, credentials)
rewrites it, from ``ListModelPackages`` (Approved, newest first) and
``DescribeModelPackage``: a new model version reaches a stage as a reviewed
change of this file, with the blue/green deployment ``make diff`` shows.

Shape: stage -> model name -> pin. A pin holds the package ARN and version,
the image and model data URL of each of the package's containers (the
endpoint's role may pull and read those alone) and the day it was resolved;
a model whose ``shadow`` names a ``model_package_version`` also has a
``shadow`` pin of that version, of the same shape.

This module reads nothing but that file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from ml_stacks import pin_file as pin_file_io
from ml_stacks.config import IMAGE_URI_RE, MODEL_PACKAGE_GROUP_RE, ConfigError

PIN_FILE = Path(__file__).resolve().parent / "model_pins.json"
REFRESH_COMMAND = "make refresh-models STAGE={stage}"
MODEL_PACKAGE_ARN_RE = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):sagemaker:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
    r"model-package/(?P<group>[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62})/(?P<version>[1-9]\d*)$")
# The one S3 object a container loads (ModelDataUrl): s3://bucket/key.
MODEL_DATA_URL_RE = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(?P<key>\S{1,1024})$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_PIN_FIELDS = ("model_package_group", "model_package_arn", "version", "containers", "resolved_at")


@dataclass(frozen=True)
class ContainerPin:
    """One container of a pinned package: its image and the artifact it loads (None: none)."""

    image: str
    model_data_url: str | None


@dataclass(frozen=True)
class ModelPin:
    """The pinned package version of one model in one stage."""

    model_package_group: str
    model_package_arn: str
    version: int
    containers: tuple[ContainerPin, ...]
    resolved_at: str
    shadow: "ModelPin | None" = None

    @property
    def region(self) -> str:
        return MODEL_PACKAGE_ARN_RE.match(self.model_package_arn)["region"]

    @property
    def account(self) -> str:
        return MODEL_PACKAGE_ARN_RE.match(self.model_package_arn)["account"]


def load_pins(pin_file: Path | None = None) -> dict[str, Any]:
    """The pin file as a dict, validated (a malformed pin fails here, at synth)."""
    return pin_file_io.load(Path(pin_file or PIN_FILE), validate_pins, described_in="ml_stacks/model_pins.py")


def validate_pins(pins: Any, where: str) -> None:
    """Raise ConfigError naming the first malformed pin of ``pins``."""
    if not isinstance(pins, Mapping):
        raise ConfigError(where, pins, "an object of stage -> model -> pin")
    for stage, models in pins.items():
        if not isinstance(models, Mapping):
            raise ConfigError(f"{where}: {stage}", models, "an object of model name -> pin")
        for model, pin in models.items():
            validate_pin(pin, f"{where}: {stage}.{model}")


def validate_pin(pin: Any, path: str) -> None:
    if not isinstance(pin, Mapping) or any(pin.get(name) in (None, "", []) for name in _PIN_FIELDS):
        raise ConfigError(path, pin, "an object with " + ", ".join(_PIN_FIELDS))
    group = pin["model_package_group"]
    if not isinstance(group, str) or not MODEL_PACKAGE_GROUP_RE.match(group):
        raise ConfigError(f"{path}.model_package_group", group, "a model package group name")
    match = MODEL_PACKAGE_ARN_RE.match(str(pin["model_package_arn"]))
    if match is None or match["group"] != group or int(match["version"]) != pin["version"]:
        raise ConfigError(f"{path}.model_package_arn", pin["model_package_arn"],
                          f"arn:aws:sagemaker:<region>:<account>:model-package/{group}/{pin['version']}")
    if not isinstance(pin["containers"], list):
        raise ConfigError(f"{path}.containers", pin["containers"], "a list of containers")
    for index, container in enumerate(pin["containers"]):
        where = f"{path}.containers[{index}]"
        image = container.get("image") if isinstance(container, Mapping) else None
        if not isinstance(image, str) or not IMAGE_URI_RE.match(image):
            raise ConfigError(f"{where}.image", image, "an ECR image URI")
        url = container.get("model_data_url")
        if url is not None and not MODEL_DATA_URL_RE.match(str(url)):
            raise ConfigError(f"{where}.model_data_url", url, "None or s3://<bucket>/<key>")
    if not isinstance(pin["resolved_at"], str) or not _DATE_RE.match(pin["resolved_at"]):
        raise ConfigError(f"{path}.resolved_at", pin["resolved_at"], "a date YYYY-MM-DD")
    if "shadow" in pin:
        validate_pin(pin["shadow"], f"{path}.shadow")
        if pin["shadow"]["model_package_group"] != group:
            raise ConfigError(f"{path}.shadow.model_package_group", pin["shadow"]["model_package_group"],
                              f"{group!r}: a shadow candidate is a version of the model's own group")


def model_pin(stage: str, model: str, group: str, *, region: str, account: str | None = None,
              shadow_version: int | None = None, pin_file: Path | None = None) -> ModelPin:
    """The pinned package of ``model`` in ``stage``, from ``group`` in ``region``
    (and ``account`` when the stage names one), with the pin of its shadow
    candidate ``shadow_version`` if given; a one-line ConfigError saying
    which command to run when one is missing or pinned for another group,
    version or place."""
    command = REFRESH_COMMAND.format(stage=stage)
    pin = load_pins(pin_file).get(stage, {}).get(model)
    if pin is None:
        raise ConfigError(f"model pin {stage}.{model}", group,
                          f"a package version pinned in model_pins.json: run `{command}`")
    if pin["model_package_group"] != group:
        raise ConfigError(f"model pin {stage}.{model}.model_package_group", pin["model_package_group"],
                          f"{group!r}, the group the model is configured with: run `{command}`")
    shadow = None
    if shadow_version is not None:
        shadow_pin = pin.get("shadow")
        if shadow_pin is None or shadow_pin["version"] != shadow_version:
            raise ConfigError(f"model pin {stage}.{model}.shadow", shadow_pin and shadow_pin["version"],
                              f"version {shadow_version} of {group!r}, the configured shadow candidate: "
                              f"run `{command}`")
        shadow = _built(shadow_pin)
    built = replace(_built(pin), shadow=shadow)
    if built.region != region or (account is not None and built.account != account):
        raise ConfigError(f"model pin {stage}.{model}.model_package_arn", built.model_package_arn,
                          f"a package in the stage's region {region}"
                          + (f" and account {account}" if account else "") + f": run `{command}`")
    return built


def _built(pin: Mapping[str, Any]) -> ModelPin:
    return ModelPin(
        model_package_group=pin["model_package_group"], model_package_arn=pin["model_package_arn"],
        version=pin["version"], resolved_at=pin["resolved_at"],
        containers=tuple(ContainerPin(image=c["image"], model_data_url=c.get("model_data_url"))
                         for c in pin["containers"]))
