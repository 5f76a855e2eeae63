"""Where a deployed stage keeps its runs: the training stack's outputs."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from delivery.cli_errors import UserError
from ml_runs.runs import StageRuns
from ml_stacks.config import StageConfig

# RUNS_CONTRACT.md, stack outputs of ml-<stage>-training.
OUTPUTS = {"table": "RunsTableName", "log_group": "RunsLogGroupName",
           "group": "AutoScalingGroupName", "bucket": "CheckpointBucketName"}


def training_stack_name(config: StageConfig) -> str:
    return f"{config.stack_prefix}-training"


def resolve(cloudformation: Any, config: StageConfig) -> StageRuns:
    """The runs table, log group, group and bucket of ``config``'s deployed stage."""
    if not config.training.enabled:
        raise UserError(f"stage {config.name} has no training fleet (training.enabled is False)")
    name = training_stack_name(config)
    try:
        [stack] = cloudformation.describe_stacks(StackName=name)["Stacks"]
    except ClientError as error:
        message = error.response.get("Error", {}).get("Message", "")
        if error.response.get("Error", {}).get("Code") == "ValidationError" and "does not exist" in message:
            raise UserError(f"stack {name} is not deployed in {config.region} "
                            f"(make deploy STAGE={config.name})") from None
        raise
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    missing = [key for key in OUTPUTS.values() if key not in outputs]
    if missing:
        raise UserError(f"stack {name} has no output {missing[0]}: it predates runs; deploy it "
                        f"again (make deploy STAGE={config.name})")
    return StageRuns(stage=config.name, **{field: outputs[key] for field, key in OUTPUTS.items()})
