#!/usr/bin/env python3
"""Print what `cdk synth` produced: per stage, each stack and its resource count,
then the validation result (cdk-nag AwsSolutions and CloudFormation Validate).

Reads only the cloud assembly, so it works after any synth:
    python scripts/synth_summary.py cdk.out
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path


def stacks_by_stage(assembly: Path) -> dict[str, list[tuple[str, str, int]]]:
    """{stage: [(display name, stack name, resource count)]} in manifest order."""
    root = json.loads((assembly / "manifest.json").read_text())
    result: dict[str, list[tuple[str, str, int]]] = {}
    for artifact in root.get("artifacts", {}).values():
        if artifact.get("type") != "cdk:cloud-assembly":
            continue
        nested_dir = assembly / artifact["properties"]["directoryName"]
        stage = artifact.get("displayName") or nested_dir.name.removeprefix("assembly-")
        nested = json.loads((nested_dir / "manifest.json").read_text())
        rows = []
        for nested_artifact in nested.get("artifacts", {}).values():
            if nested_artifact.get("type") != "aws:cloudformation:stack":
                continue
            props = nested_artifact["properties"]
            template = json.loads((nested_dir / props["templateFile"]).read_text())
            rows.append((
                nested_artifact.get("displayName", ""),
                props.get("stackName", ""),
                len(template.get("Resources", {})),
            ))
        result[stage] = rows
    return result


def validation_counts(assembly: Path) -> tuple[Counter[str], Counter[str]]:
    """(open, acknowledged) findings per validation plugin."""
    report_file = assembly / "validation-report.json"
    if not report_file.exists():
        return Counter(), Counter()
    report = json.loads(report_file.read_text())
    open_findings: Counter[str] = Counter()
    acknowledged: Counter[str] = Counter()
    for plugin in report.get("pluginReports", []):
        name = plugin["pluginName"]
        for violation in plugin.get("violations", []):
            if violation.get("severity", "error") == "error":
                open_findings[name] += len(violation.get("violatingConstructs", [])) or 1
        for violation in plugin.get("suppressedViolations", []):
            acknowledged[name] += len(violation.get("violatingConstructs", [])) or 1
    return open_findings, acknowledged


def main(argv: list[str]) -> int:
    assembly = Path(argv[1] if len(argv) > 1 else "cdk.out")
    stages = stacks_by_stage(assembly)
    if not stages:
        print(f"no stages found in {assembly}", file=sys.stderr)
        return 1
    width = max(len(name) for rows in stages.values() for name, _, _ in rows)
    for stage, rows in stages.items():
        total = sum(count for _, _, count in rows)
        print(f"{stage}: {len(rows)} stacks, {total} resources")
        for display, stack_name, count in rows:
            print(f"  {display:<{width}}  {stack_name:<24} {count:>4} resources")
    open_findings, acks = validation_counts(assembly)
    plugins = ["AwsSolutions", *sorted(set(open_findings) | set(acks) - {"AwsSolutions"})]
    for name in plugins:
        label = "cdk-nag AwsSolutions" if name == "AwsSolutions" else name
        verdict = "FAILED" if open_findings[name] else "passed"
        print(f"{label}: {verdict}, {open_findings[name]} unacknowledged, "
              f"{acks[name]} acknowledged")
    print(f"templates: {assembly}/assembly-<stage>/*.template.json")
    # build_app makes synth itself fail on an open finding; this is the
    # second lock in case a report was written some other way.
    return 1 if sum(open_findings.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
