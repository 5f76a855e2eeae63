"""Scheduled drift detection on every stack of this stage.

Environment: ``STAGE`` (dev), ``STACK_PREFIX`` (``ml-dev-``: every stack
of the stage, including ones added later), ``TOPIC_ARN`` (the stage's
alerts topic), ``OTHER_REGIONS`` (comma-separated regions where the stage
has stacks too, such as its replica's; default none).
"""

from __future__ import annotations

import json
import logging
import os

import boto3

import drift_checks as drift

logger = logging.getLogger()
logger.setLevel(logging.INFO)


def handler(event, context):
    stage = os.environ["STAGE"]
    others = [r for r in os.environ.get("OTHER_REGIONS", "").split(",") if r]
    report = drift.detect(boto3.client("cloudformation"), stage, os.environ["STACK_PREFIX"],
                          remaining_ms=context.get_remaining_time_in_millis,
                          other_regions={r: boto3.client("cloudformation", region_name=r) for r in others})
    for stack in report.stacks:
        logger.info(json.dumps({"stage": stage, "stack": stack.stack_name, "region": stack.region or None,
                                "status": stack.status,
                                "detail": stack.detail,
                                "drifted_resources": [r["LogicalResourceId"]
                                                      for r in stack.drifted_resources]}))
    message_id = drift.notify(boto3.client("sns"), os.environ["TOPIC_ARN"], report)
    return {
        "stage": stage,
        "checked": len(report.stacks),
        "drifted": [s.label for s in report.drifted],
        "unchecked": [s.label for s in report.unchecked],
        "notified": message_id is not None,
    }
