#!/usr/bin/env python3
"""The interruption path's retry time budget, read from the synthesized templates.

For every stage: the queue's visibility timeout *V*, the event source
mapping's batching window *W* and the function timeout *T*, and the worst
case from first delivery to action for a record that fails once
(V + W + T, docs/lambdas.md "Interruption time budget"). Offline: one
synth of every stage, or none with ``--assembly`` (the cdk.out of `make synth`).

    .venv/bin/python bench/interruption_budget.py [--assembly cdk.out]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from delivery.assembly import templates_by_stack  # noqa: E402


def resources_of_type(template: dict, resource_type: str) -> dict[str, dict]:
    return {lid: r for lid, r in template["Resources"].items() if r["Type"] == resource_type}


def budget(template: dict) -> dict:
    [queue] = [q["Properties"] for k, q in resources_of_type(template, "AWS::SQS::Queue").items()
               if k.startswith("InterruptionHandlerQueue")]
    [mapping] = [m["Properties"] for m in resources_of_type(template, "AWS::Lambda::EventSourceMapping").values()]
    # The function the queue feeds (the training stack has others, e.g. runs capacity).
    function = template["Resources"][mapping["FunctionName"]["Ref"]]["Properties"]
    visibility, timeout = queue["VisibilityTimeout"], function["Timeout"]
    window = mapping.get("MaximumBatchingWindowInSeconds", 0)
    return {"visibility_timeout_s": visibility, "batching_window_s": window, "function_timeout_s": timeout,
            "max_receive_count": queue["RedrivePolicy"]["maxReceiveCount"],
            "batch_size": mapping["BatchSize"], "max_concurrency": mapping["ScalingConfig"]["MaximumConcurrency"],
            "worst_case_retry_s": visibility + window + timeout}


def report(templates: dict[tuple[str, str], dict]) -> str:
    return json.dumps({stage: budget(template) for (stage, name), template in sorted(templates.items())
                       if name == "training"}, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assembly", type=Path, default=None,
                        help="read an existing cloud assembly (e.g. cdk.out of `make synth`) instead of synthesizing")
    args = parser.parse_args()
    if args.assembly:
        print(report(templates_by_stack(args.assembly)))
        return
    # Only a synth needs aws_cdk (and its Node): not imported for --assembly.
    from ml_stacks.config import default_configs
    from tests.conftest import synthesize

    with tempfile.TemporaryDirectory() as outdir:
        synthesized = synthesize(default_configs(), Path(outdir))
        print(report({key: stack.template_json for key, stack in synthesized.stacks.items()}))


if __name__ == "__main__":
    main()
