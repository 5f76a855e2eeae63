"""Who and where: the credentials' account, the region, the CDK bootstrap."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from delivery.preflight import Result, error_code, failed, passed, warned
from delivery.stage_check import caller_account

TOOLKIT_STACK = "CDKToolkit"
_HEALTHY_STACK_STATES = ("CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE",
                         "IMPORT_COMPLETE", "IMPORT_ROLLBACK_COMPLETE")


@dataclass(frozen=True)
class BootstrapRequirement:
    """What the synthesized stage needs from ``cdk bootstrap``."""

    version: int
    ssm_parameter: str  # /cdk-bootstrap/<qualifier>/version


def bootstrap_requirement(assembly_dir: Path | str, stage: str) -> BootstrapRequirement:
    """The highest ``requiresBootstrapStackVersion`` of the stage's artifacts
    in a synthesized cloud assembly (what ``cdk deploy`` itself enforces)."""
    manifest_path = Path(assembly_dir) / f"assembly-{stage}" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    versions: list[int] = []
    parameters: set[str] = set()
    for artifact in manifest.get("artifacts", {}).values():
        props = artifact.get("properties", {})
        if "requiresBootstrapStackVersion" in props:
            versions.append(int(props["requiresBootstrapStackVersion"]))
            parameters.add(props.get("bootstrapStackVersionSsmParameter", ""))
    if not versions:
        raise ValueError(f"{manifest_path}: no artifact states requiresBootstrapStackVersion")
    return BootstrapRequirement(version=max(versions), ssm_parameter=sorted(parameters)[0])


def check_account(sts, *, stage: str, expected_account: str | None) -> tuple[Result, str]:
    """The credentials' account against the stage's pinned account.

    Returns the row and the account the credentials belong to.
    """
    account, arn = caller_account(sts)
    name = "account"
    if expected_account is None:
        # Account-agnostic stacks deploy wherever the credentials point.
        return passed(name, f"credentials are {arn} in {account} ({stage} is not pinned: "
                            "deploys to this account)"), account
    if account != expected_account:
        return failed(name, f"credentials are in {account}, {stage} deploys to {expected_account}",
                      f"use credentials of account {expected_account} (AWS_PROFILE) or fix ACCOUNT"), account
    return passed(name, f"credentials are {arn} in {account} = {stage}'s account"), account


def check_region(ec2, *, region: str, session_region: str | None, name: str = "region") -> Result:
    """The stage's region is enabled for the account; say when the shell's
    default region differs (the deploy still uses the stage's). ``name``:
    the row's check (another region of the stage, with no session check)."""
    [info] = ec2.describe_regions(RegionNames=[region], AllRegions=True)["Regions"]
    status = info.get("OptInStatus", "opt-in-not-required")
    if status == "not-opted-in":
        return failed(name, f"{region} is not enabled for this account ({status})",
                      f"enable {region} in the account settings (Billing > AWS Regions), then retry")
    if session_region and session_region != region:
        return warned(name, f"stage region {region} ({status}); AWS_REGION is {session_region}",
                      f"export AWS_REGION={region} so aws CLI commands in the docs hit the stage")
    return passed(name, f"{'stage ' if name == 'region' else ''}region {region} ({status})")


def check_bootstrap(cfn, ssm, *, region: str, account: str, stage: str,
                    requirement: BootstrapRequirement, name: str = "cdk bootstrap") -> Result:
    """The CDKToolkit stack exists and is healthy, and the version parameter
    every template's ``CheckBootstrapVersion`` rule reads is recent enough.
    ``name``: the row's check (another region's row names its region)."""
    fix = f"make bootstrap STAGE={stage} (cdk bootstrap aws://{account}/{region})"
    try:
        [stack] = cfn.describe_stacks(StackName=TOOLKIT_STACK)["Stacks"]
    except Exception as error:  # noqa: BLE001 - only "does not exist" is expected
        if error_code(error) == "ValidationError":
            return failed(name, f"no {TOOLKIT_STACK} stack in {account}/{region}; "
                                f"this app needs bootstrap version >= {requirement.version}", fix)
        raise
    status = stack["StackStatus"]
    if status not in _HEALTHY_STACK_STATES:
        return failed(name, f"{TOOLKIT_STACK} is {status}", f"repair or delete the stack, then {fix}")
    try:
        version = ssm.get_parameter(Name=requirement.ssm_parameter)["Parameter"]["Value"]
    except Exception as error:  # noqa: BLE001 - only "no parameter" is expected
        if error_code(error) != "ParameterNotFound":
            raise
        return failed(name, f"{TOOLKIT_STACK} exists but {requirement.ssm_parameter} does not "
                            "(another qualifier, or a legacy bootstrap)", fix)
    if not version.isdigit() or int(version) < requirement.version:
        return failed(name, f"bootstrap version {version} < {requirement.version} required "
                            f"({requirement.ssm_parameter})", fix)
    return passed(name, f"bootstrap version {version} >= {requirement.version} required "
                        f"({requirement.ssm_parameter})")
