"""``make drift STAGE=<stage>``: CloudFormation drift detection on every
stack of a deployed stage (in each of its regions), from a workstation or
the drift workflow.

Uses the default credential chain and the same detection code as the
stage's scheduled drift Lambda (``lambda/drift_detector/drift_checks.py``).
Exit status 1 when a stack drifted or could not be checked; the report also
goes to ``$GITHUB_STEP_SUMMARY`` when set.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from delivery.cli_errors import run
from delivery.stage_check import stage_config
from ml_stacks.config import default_configs

CHECKS = Path(__file__).resolve().parent.parent / "lambda" / "drift_detector" / "drift_checks.py"
# A CI job may take as long as it needs; a Lambda has 15 minutes.
CLI_BUDGET_MS = 25 * 60 * 1000


def load_checks():
    """The Lambda's module, loaded from its file (lambda/ is not a package)."""
    name = "delivery_drift_checks"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, CHECKS)
        module = importlib.util.module_from_spec(spec)
        # dataclasses look their module up in sys.modules while executing it.
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CloudFormation drift detection of one stage")
    parser.add_argument("--stage", required=True, help=", ".join(default_configs()))
    args = parser.parse_args(argv)
    config = stage_config(args.stage)

    import time

    import boto3

    checks = load_checks()
    deadline = time.monotonic() + CLI_BUDGET_MS / 1000
    cfn = boto3.client("cloudformation", region_name=config.region)
    # The stage's other regions (its replica's): their stacks are checked too.
    others = {r: boto3.client("cloudformation", region_name=r) for r in config.regions[1:]}
    report = checks.detect(cfn, config.name, f"{config.stack_prefix}-",
                           remaining_ms=lambda: int((deadline - time.monotonic()) * 1000),
                           other_regions=others)
    subject, body = checks.render(report)
    if not report.stacks:
        body = f"No deployed stack named {config.stack_prefix}-* in {', '.join(config.regions)}."
    print(subject if report.stacks else body)
    print(body if report.stacks else "")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as out:
            out.write(f"### {subject}\n\n```\n{body}\n```\n")
    return 1 if report.needs_attention else 0


if __name__ == "__main__":
    sys.exit(run(main))
