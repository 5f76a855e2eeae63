"""CloudFormation drift detection for the stacks of one stage.

Pure logic with the boto3 clients passed in: the scheduled Lambda
(``handler.py``) and the CI job (``delivery/drift_cli.py``) share it.
Detection is read-only, so a repeated run does no harm; a run notifies
whenever it finds drift, so a drift nobody fixes is reported again on the
next run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from botocore.exceptions import ClientError

# Stacks in these states can be checked; anything in progress or failed
# would make DetectStackDrift raise a ValidationError.
CHECKABLE_STATUSES = (
    "CREATE_COMPLETE",
    "UPDATE_COMPLETE",
    "UPDATE_ROLLBACK_COMPLETE",
    "IMPORT_COMPLETE",
    "IMPORT_ROLLBACK_COMPLETE",
)
DRIFTED_RESOURCE_STATUSES = ["MODIFIED", "DELETED"]
POLL_SECONDS = 5
# Stop polling while there is still time to report what is unfinished.
RESERVE_MS = 30_000
SNS_SUBJECT_MAX = 100


@dataclass
class StackResult:
    stack_name: str
    status: str  # IN_SYNC, DRIFTED, UNKNOWN (detection failed or unfinished)
    detail: str = ""
    drifted_resources: list[dict[str, Any]] = field(default_factory=list)
    # Empty for the stage's own region; the region of a stack elsewhere (the replica).
    region: str = ""

    @property
    def label(self) -> str:
        """The stack's name, with its region when it is not the stage's."""
        return f"{self.stack_name} ({self.region})" if self.region else self.stack_name


@dataclass
class DriftReport:
    stage: str
    stacks: list[StackResult]

    @property
    def drifted(self) -> list[StackResult]:
        return [s for s in self.stacks if s.status == "DRIFTED"]

    @property
    def unchecked(self) -> list[StackResult]:
        return [s for s in self.stacks if s.status not in ("DRIFTED", "IN_SYNC")]

    @property
    def needs_attention(self) -> bool:
        return bool(self.drifted or self.unchecked)


def stage_stacks(cfn, prefix: str) -> list[str]:
    """Names of the checkable stacks whose name starts with ``prefix``
    (``ml-dev-``): every stack of the stage, whatever stacks it has."""
    names = []
    for page in cfn.get_paginator("list_stacks").paginate(StackStatusFilter=list(CHECKABLE_STATUSES)):
        names += [s["StackName"] for s in page["StackSummaries"] if s["StackName"].startswith(prefix)]
    return sorted(set(names))


def drifted_resources(cfn, stack_name: str) -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"StackName": stack_name,
                              "StackResourceDriftStatusFilters": DRIFTED_RESOURCE_STATUSES}
    while True:
        page = cfn.describe_stack_resource_drifts(**kwargs)
        for drift in page["StackResourceDrifts"]:
            resources.append({
                "LogicalResourceId": drift["LogicalResourceId"],
                "PhysicalResourceId": drift.get("PhysicalResourceId", ""),
                "ResourceType": drift["ResourceType"],
                "StackResourceDriftStatus": drift["StackResourceDriftStatus"],
                "PropertyDifferences": [
                    {k: d.get(k) for k in ("PropertyPath", "DifferenceType")}
                    for d in drift.get("PropertyDifferences", [])
                ],
            })
        if not page.get("NextToken"):
            return resources
        kwargs["NextToken"] = page["NextToken"]


def detect(cfn, stage: str, prefix: str, *, remaining_ms: Callable[[], int],
           sleep: Callable[[float], None] = time.sleep,
           other_regions: Mapping[str, Any] | None = None) -> DriftReport:
    """Start a detection on every stack of the stage, then poll them all.

    ``cfn`` is the client of the stage's region; ``other_regions`` maps each
    other region the stage deploys to (the replica's) to its client."""
    clients = {"": cfn, **(other_regions or {})}
    results: dict[tuple[str, str], StackResult] = {}
    pending: dict[tuple[str, str], str] = {}
    for region, client in clients.items():
        for name in stage_stacks(client, prefix):
            try:
                pending[(region, name)] = client.detect_stack_drift(StackName=name)["StackDriftDetectionId"]
            except ClientError as error:
                results[(region, name)] = StackResult(name, "UNKNOWN", f"DetectStackDrift failed: {error}",
                                                      region=region)
    while pending:
        for key, detection_id in list(pending.items()):
            status = clients[key[0]].describe_stack_drift_detection_status(StackDriftDetectionId=detection_id)
            if status["DetectionStatus"] == "DETECTION_IN_PROGRESS":
                continue
            del pending[key]
            results[key] = _result(clients[key[0]], key, status)
        if pending:
            if remaining_ms() < RESERVE_MS + POLL_SECONDS * 1000:
                for region, name in pending:
                    results[(region, name)] = StackResult(name, "UNKNOWN", "detection did not finish in time",
                                                          region=region)
                break
            sleep(POLL_SECONDS)
    return DriftReport(stage=stage, stacks=[results[k] for k in sorted(results, key=lambda k: (k[1], k[0]))])


def _result(cfn, key: tuple[str, str], status: dict[str, Any]) -> StackResult:
    """The result of one finished detection."""
    region, name = key
    drift_status = status.get("StackDriftStatus", "UNKNOWN")
    # DETECTION_FAILED still reports what it could check; a stack
    # with resources it could not check is never called in sync.
    if status["DetectionStatus"] == "DETECTION_FAILED" and drift_status != "DRIFTED":
        return StackResult(name, "UNKNOWN", status.get("DetectionStatusReason", ""), region=region)
    if drift_status == "DRIFTED":
        return StackResult(name, "DRIFTED", f"{status.get('DriftedStackResourceCount', 0)} resources drifted",
                           drifted_resources(cfn, name), region=region)
    return StackResult(name, drift_status, region=region)


def render(report: DriftReport) -> tuple[str, str]:
    """(subject, body) of the notification."""
    parts = []
    if report.drifted:
        parts.append(f"{len(report.drifted)} stack(s) drifted")
    if report.unchecked:
        parts.append(f"{len(report.unchecked)} not checked")
    subject = f"[ml-{report.stage}] CloudFormation drift: {', '.join(parts) or 'in sync'}"
    lines = [f"Drift detection on stage {report.stage}:", ""]
    for stack in report.stacks:
        lines.append(f"{stack.label}: {stack.status}" + (f" ({stack.detail})" if stack.detail else ""))
        for resource in stack.drifted_resources:
            lines.append(f"  {resource['StackResourceDriftStatus']} {resource['ResourceType']} "
                         f"{resource['LogicalResourceId']} ({resource['PhysicalResourceId']})")
            for diff in resource["PropertyDifferences"]:
                lines.append(f"    {diff['DifferenceType']} {diff['PropertyPath']}")
    lines += ["", "A drifted resource was changed outside CloudFormation. Put the change into "
              f"code, or undo it by deploying the stage again (make deploy STAGE={report.stage})."]
    return subject[:SNS_SUBJECT_MAX], "\n".join(lines)


def notify(sns, topic_arn: str, report: DriftReport) -> str | None:
    """Publish the report when a stack drifted or could not be checked."""
    if not report.needs_attention:
        return None
    subject, body = render(report)
    return sns.publish(TopicArn=topic_arn, Subject=subject, Message=body)["MessageId"]
