#!/usr/bin/env python3
"""The interruption path's retry time budget, read from the synthesized templates.

For every stage: the queue's visibility timeout *V*, the event source
mapping's batching window *W* and the function timeout *T*, and the worst
case from first delivery to action for a record that fails once
(V + W + T, README "Interruption time budget"). Offline, one synth.

    .venv/bin/python bench/interruption_budget.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ml_stacks.config import default_configs  # noqa: E402
from tests.conftest import resources_of_type, synthesize  # noqa: E402


def budget(template: dict) -> dict:
    [queue] = [q["Properties"] for k, q in resources_of_type(template, "AWS::SQS::Queue").items()
               if k.startswith("InterruptionHandlerQueue")]
    [mapping] = [m["Properties"] for m in resources_of_type(template, "AWS::Lambda::EventSourceMapping").values()]
    [function] = [f["Properties"] for f in resources_of_type(template, "AWS::Lambda::Function").values()]
    visibility, timeout = queue["VisibilityTimeout"], function["Timeout"]
    window = mapping.get("MaximumBatchingWindowInSeconds", 0)
    return {"visibility_timeout_s": visibility, "batching_window_s": window, "function_timeout_s": timeout,
            "max_receive_count": queue["RedrivePolicy"]["maxReceiveCount"],
            "batch_size": mapping["BatchSize"], "max_concurrency": mapping["ScalingConfig"]["MaximumConcurrency"],
            "worst_case_retry_s": visibility + window + timeout}


def main() -> None:
    with tempfile.TemporaryDirectory() as outdir:
        synthesized = synthesize(default_configs(), Path(outdir))
        print(json.dumps({stage: budget(stack.template_json)
                          for (stage, name), stack in sorted(synthesized.stacks.items()) if name == "training"},
                         indent=2))


if __name__ == "__main__":
    main()
