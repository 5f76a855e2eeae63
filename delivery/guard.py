"""The stateful-replacement guard.

A change that would replace or remove a stateful resource (its data or
identity does not survive: buckets, keys, repositories, log groups, tables,
the EKS cluster, the VPC) fails the diff unless the change names it
explicitly. The allow mechanism is a git trailer on a commit of the change:

    Allow-Replace: dev/storage/CheckpointsBucketA1B2C3D4

one trailer per resource, ``<stage>/<stack>/<logical id>`` exactly as the
guard prints it. Only commits between the base and the head count, so an
allowance never outlives the change it was written for.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from delivery.changes import REMOVED, REPLACED, ResourceChange

# Types whose replacement or deletion loses data or an identity other
# systems hold (a key that encrypted data, a cluster nodes joined, a VPC
# everything lives in). A type list, not a property list: what counts as a
# replacement comes from the resource schemas (delivery.changes).
STATEFUL_TYPES = frozenset({
    "AWS::S3::Bucket",
    "AWS::KMS::Key",
    "AWS::ECR::Repository",
    "AWS::Logs::LogGroup",
    "AWS::DynamoDB::Table",
    "AWS::DynamoDB::GlobalTable",
    "AWS::EKS::Cluster",
    "AWS::EC2::VPC",
    "AWS::EFS::FileSystem",
    "AWS::RDS::DBInstance",
    "AWS::RDS::DBCluster",
})

TRAILER_KEY = "Allow-Replace"


@dataclass(frozen=True)
class GuardResult:
    violations: tuple[ResourceChange, ...]  # destructive, not allowed
    allowed: tuple[ResourceChange, ...]  # destructive, named by an Allow-Replace
    unused_allowances: tuple[str, ...]  # named but not destructive: probably a typo

    @property
    def passed(self) -> bool:
        return not self.violations


def destructive(changes: Iterable[ResourceChange]) -> list[ResourceChange]:
    return [c for c in changes
            if c.resource_type in STATEFUL_TYPES and c.action in (REPLACED, REMOVED)]


def check(changes: Iterable[ResourceChange], allowances: Iterable[str] = ()) -> GuardResult:
    allow = {a.strip() for a in allowances if a.strip()}
    hits = destructive(changes)
    allowed = tuple(c for c in hits if c.address in allow)
    violations = tuple(c for c in hits if c.address not in allow)
    unused = tuple(sorted(allow - {c.address for c in hits}))
    return GuardResult(violations=violations, allowed=allowed, unused_allowances=unused)


def allowances_from_git(repo: Path | str, base: str, head: str = "HEAD") -> list[str]:
    """Every ``Allow-Replace`` trailer value on the commits ``base..head``."""
    result = subprocess.run(
        ["git", "-C", str(repo), "log", "--no-merges",
         f"--format=%(trailers:key={TRAILER_KEY},valueonly,separator=%x0A)", f"{base}..{head}"],
        capture_output=True, text=True, check=True,
    )
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def format_result(result: GuardResult) -> str:
    lines = []
    for change in result.violations:
        lines.append(f"BLOCKED  {change.action} {change.resource_type} {change.address}"
                     f" ({change.reason})")
    for change in result.allowed:
        lines.append(f"allowed  {change.action} {change.resource_type} {change.address}"
                     f" ({TRAILER_KEY} trailer)")
    for address in result.unused_allowances:
        lines.append(f"unused   {TRAILER_KEY}: {address} names no replaced or removed stateful resource")
    if result.violations:
        lines.append("")
        lines.append("A stateful resource would be replaced or removed. If that is intended, add "
                     f"a trailer per resource to a commit of this change, e.g.\n"
                     f"  git commit --amend --trailer '{TRAILER_KEY}: {result.violations[0].address}'")
    return "\n".join(lines)
