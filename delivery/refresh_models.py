"""``make refresh-models STAGE=<stage>``: pin the newest approved version of each registry model.

A model with ``model_package_group`` is served from the package version
pinned in ``ml_stacks/model_pins.json``; this command is the only way that
pin changes. For every such model of the stage it asks the stage's account
for the newest ``Approved`` version of the group (``ListModelPackages``,
newest first), reads what that version's containers pull and load
(``DescribeModelPackage``), rewrites the stage's pins and prints
``old -> new`` per model. The new version then reaches the stage as a
reviewed diff of the pin file; ``make diff`` shows the blue/green update it
causes, and the deploy rolls back by itself on the endpoint's alarms.

Read-only AWS calls (sts:GetCallerIdentity, sagemaker:ListModelPackages,
sagemaker:DescribeModelPackage) in the stage's region; credentials from the
default chain. Expected failures are one line on stderr (delivery.cli_errors).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from delivery.cli_errors import UserError, run
from delivery.stage_check import caller_account, check_account, stage_config
from ml_stacks import model_pins
from ml_stacks import pin_file as pin_file_io
from ml_stacks.config import IMAGE_URI_RE, StageConfig

SOURCE = "make refresh-models (sagemaker:ListModelPackages, sagemaker:DescribeModelPackage)"
# Packages read per ListModelPackages page while looking for a usable one.
PAGE_SIZE = 10
# clients(service, region) -> boto3 client
Clients = Callable[[str, str], Any]


@dataclass(frozen=True)
class Change:
    model: str  # "prod/ranker"
    old: str | None  # "ranker-models v11"
    new: str | None  # None: the model no longer comes from the registry

    def line(self) -> str:
        if self.old == self.new:
            return f"{self.model}: {self.new} (unchanged)"
        return f"{self.model}: {self.old or '(none)'} -> {self.new or '(removed)'}"


def refresh(pins: dict[str, Any], config: StageConfig, *, sagemaker: Any,
            today: dt.date) -> tuple[dict[str, Any], list[Change]]:
    """``pins`` with ``config``'s registry models pinned anew (and nothing
    else of that stage), and what changed; other stages' pins stay as they were."""
    pins = json.loads(json.dumps(pins))  # a copy: the caller's stays as it was
    old = pins.get(config.name, {})
    new: dict[str, Any] = {}
    changes: list[Change] = []
    for model in config.serving.models:
        group = model.model_package_group
        if group is None:
            continue
        arn = latest_approved(sagemaker, group, config.region)
        pin = new[model.name] = describe(sagemaker, arn, group=group, region=config.region, today=today)
        before = old.get(model.name) or {}
        changes.append(Change(f"{config.name}/{model.name}", _label(before), _label(pin)))
        version = model.shadow.model_package_version if model.shadow else None
        if version is not None:
            # The candidate may still wait for approval: that is what the shadow is for.
            pin["shadow"] = describe(sagemaker, f"{arn.rsplit('/', 1)[0]}/{version}", group=group,
                                     region=config.region, today=today,
                                     allowed=("Approved", "PendingManualApproval"))
        if version is not None or before.get("shadow"):
            changes.append(Change(f"{config.name}/{model.name} shadow", _label(before.get("shadow")),
                                  _label(pin.get("shadow"))))
    for name in sorted(set(old) - set(new)):
        changes.append(Change(f"{config.name}/{name}", _label(old[name]), None))
    if new:
        pins[config.name] = new
    else:
        pins.pop(config.name, None)
    model_pins.validate_pins(pins, "resolved pins")
    return pins, changes


def _label(pin: dict[str, Any] | None) -> str | None:
    return f"{pin['model_package_group']} v{pin['version']}" if pin else None


def latest_approved(sagemaker: Any, group: str, region: str) -> str:
    """ARN of the newest Approved, completed version in ``group``."""
    token = None
    while True:
        request = {"ModelPackageGroupName": group, "ModelApprovalStatus": "Approved",
                   "ModelPackageType": "Versioned", "SortBy": "CreationTime",
                   "SortOrder": "Descending", "MaxResults": PAGE_SIZE}
        if token:
            request["NextToken"] = token
        response = sagemaker.list_model_packages(**request)
        for summary in response.get("ModelPackageSummaryList", []):
            if summary.get("ModelPackageStatus") == "Completed":
                return summary["ModelPackageArn"]
        token = response.get("NextToken")
        if not token:
            raise UserError(f"model package group {group} in {region} has no Approved, completed "
                            "version: approve one in the model registry (or check the group name)")


def describe(sagemaker: Any, arn: str, *, group: str, region: str, today: dt.date,
             allowed: tuple[str, ...] = ("Approved",)) -> dict[str, Any]:
    """The pin of package ``arn`` (its approval status one of ``allowed``):
    version, each container's image and artifact."""
    try:
        package = sagemaker.describe_model_package(ModelPackageName=arn)
    except sagemaker.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") != "ValidationException":
            raise
        raise UserError(f"{arn} does not exist ({error.response['Error'].get('Message', '')}): check "
                        "the group and version") from None
    status = package.get("ModelApprovalStatus")
    if status not in allowed:
        raise UserError(f"{arn} is {status!r}, not {' or '.join(allowed)}: "
                        + ("run the command again" if allowed == ("Approved",)
                           else "a rejected version is no candidate; name another"))
    containers = []
    for container in package.get("InferenceSpecification", {}).get("Containers", []):
        if "ModelDataSource" in container and "ModelDataUrl" not in container:
            raise UserError(f"{arn} loads an uncompressed S3 prefix (ModelDataSource); serving "
                            "supports packages whose containers name a ModelDataUrl (model.tar.gz)")
        match = IMAGE_URI_RE.match(container.get("Image", ""))
        if match is None or match["region"] != region:
            raise UserError(f"{arn} runs {container.get('Image')!r}: SageMaker serves an ECR image "
                            f"in the endpoint's region {region} only")
        containers.append({"image": container["Image"],
                           "model_data_url": container.get("ModelDataUrl")})
    if not containers:
        raise UserError(f"{arn} has no inference containers to serve")
    return {"model_package_group": group, "model_package_arn": arn,
            "version": package["ModelPackageVersion"], "containers": containers,
            "resolved_at": today.isoformat(), "source": SOURCE}


def write_pins(path: Path, pins: dict[str, Any]) -> None:
    pin_file_io.write(path, pins, sort_keys=True)


def boto3_clients() -> Clients:
    import boto3

    return lambda service, region: boto3.client(service, region_name=region)


def main(argv: list[str] | None = None, *, clients: Clients | None = None,
         today: dt.date | None = None, pin_file: Path | None = None) -> int:
    parser = argparse.ArgumentParser(description="Pin the newest Approved version of each "
                                                 "registry model in ml_stacks/model_pins.json")
    parser.add_argument("--stage", default="", help="the stage whose models to pin")
    parser.add_argument("--account", default="", help="account the stage is pinned to")
    args = parser.parse_args(argv)
    config = stage_config(args.stage, account=args.account)
    clients = clients or boto3_clients()
    account, arn = caller_account(clients("sts", config.region))
    check_account(config, account)
    print(f"{config.name}: account {account} as {arn}, region {config.region}", file=sys.stderr)
    pin_file = Path(pin_file or model_pins.PIN_FILE)
    pins, changes = refresh(model_pins.load_pins(pin_file), config,
                            sagemaker=clients("sagemaker", config.region),
                            today=today or dt.datetime.now(dt.timezone.utc).date())
    if not changes:
        print(f"{config.name} serves no model from the model registry (model_package_group); "
              "nothing to pin")
        return 0
    pin_file_io.report(changes, pins=pins, pin_file=pin_file, sort_keys=True,
                       what_diff_shows="the blue/green update of each endpoint")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
