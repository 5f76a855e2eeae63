"""Every pinned model registry version still exists and is still servable.

``make refresh-models`` pinned each registry model's newest Approved version;
since then someone may have revoked the approval (a regression found late)
or deleted the version. A deploy would then serve a version the registry
says no to, or fail on a missing package and roll the serving stack back.
Read-only: ``sagemaker:DescribeModelPackage`` per pinned version.
"""

from __future__ import annotations

from typing import Iterable

from delivery.preflight import Result, error_code, failed, passed, warned
from ml_stacks import model_pins
from ml_stacks.model_pins import REFRESH_COMMAND


def check_model_packages(sagemaker, *, models: Iterable, stage: str, region: str,
                         account: str | None) -> list[Result]:
    """One row per pinned version (production's, and a shadow candidate's)."""
    rows: list[Result] = []
    command = REFRESH_COMMAND.format(stage=stage)
    for model in models:
        if model.model_package_group is None:
            continue
        shadow = model.shadow.model_package_version if model.shadow else None
        pin = model_pins.model_pin(stage, model.name, model.model_package_group, region=region,
                                   account=account, shadow_version=shadow)
        rows.append(_check(sagemaker, f"model {model.name} package", pin, allowed=("Approved",),
                           fix=f"{command} pins the newest Approved version; review and deploy that",
                           severity=failed))
        if pin.shadow is not None:
            rows.append(_check(sagemaker, f"model {model.name} shadow package", pin.shadow,
                               allowed=("Approved", "PendingManualApproval"),
                               fix="name another candidate in shadow.model_package_version, or remove "
                                   f"shadow, then {command}", severity=warned))
    return rows


def _check(sagemaker, name: str, pin: model_pins.ModelPin, *, allowed: tuple[str, ...], fix: str,
           severity) -> Result:
    label = f"{pin.model_package_group} v{pin.version}"
    try:
        package = sagemaker.describe_model_package(ModelPackageName=pin.model_package_arn)
    except Exception as error:  # noqa: BLE001 - only "does not exist" is expected
        if error_code(error) != "ValidationException":
            raise
        return failed(name, f"{label} is pinned but does not exist any more", fix)
    status, approval = package.get("ModelPackageStatus"), package.get("ModelApprovalStatus")
    if status != "Completed":
        return failed(name, f"{label} is {status}, not Completed", fix)
    if approval not in allowed:
        return severity(name, f"{label} was pinned, and is {approval} now", fix)
    return passed(name, f"{label} exists and is {approval}")
