"""Interruption handler: SQS batch in, per-record failures out.

The queue carries spot interruption warnings and rebalance recommendations
(EventBridge) and the fleet's termination lifecycle hook messages. See
``batch.py`` for how a batch runs, ``logic.py`` for the decisions,
``ledger.py`` for idempotency, ``calls.py`` for retries, ``quarantine.py``
and ``requeue.py`` for what happens to malformed and failed records,
``telemetry.py`` for the JSON log lines and EMF metrics (standard library).
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config

from batch import MAX_WORKERS, Processor, RecordOutcome
from logic import Clients, Settings
from quarantine import Quarantine
from requeue import Requeue
from telemetry import CountMetrics, Logger

logger = Logger()
metrics = CountMetrics()

# One attempt per SDK call: calls.py retries inside the record's deadline
# and knows when a repeat of SendCommand must look before it sends. Short
# timeouts: the whole invocation has a few seconds (README, time budget).
_BOTO_CONFIG = Config(retries={"mode": "standard", "max_attempts": 1},
                      connect_timeout=2, read_timeout=4, max_pool_connections=MAX_WORKERS + 4)


def log_outcome(outcome: RecordOutcome) -> None:
    """The one structured line per decision."""
    fields = {"message_id": outcome.message_id, "instance_id": outcome.instance_id,
              "event_kind": outcome.kind, "outcome": outcome.outcome, "action": outcome.action,
              "reason": outcome.reason}
    if outcome.outcome == "failed":
        logger.warning("interruption decision", **fields)
    else:
        logger.info("interruption decision", **fields)


def build_processor(environ: dict[str, str] | None = None) -> Processor:
    env = os.environ if environ is None else environ
    settings = Settings(
        autoscaling_group_name=env["AUTOSCALING_GROUP_NAME"],
        fleet_tag_key=env["FLEET_TAG_KEY"],
        fleet_tag_value=env["FLEET_TAG_VALUE"],
        document_name=env["CHECKPOINT_DOCUMENT_NAME"],
        rebalance_action=env.get("REBALANCE_ACTION", "checkpoint"),
        command_delivery_timeout_seconds=int(env.get("COMMAND_DELIVERY_TIMEOUT_SECONDS", "60")),
    )
    sqs = boto3.client("sqs", config=_BOTO_CONFIG)
    clients = Clients(ec2=boto3.client("ec2", config=_BOTO_CONFIG),
                      ssm=boto3.client("ssm", config=_BOTO_CONFIG),
                      autoscaling=boto3.client("autoscaling", config=_BOTO_CONFIG))
    return Processor(settings=settings, clients=clients,
                     dynamodb=boto3.client("dynamodb", config=_BOTO_CONFIG),
                     table_name=env["IDEMPOTENCY_TABLE_NAME"], metrics=metrics,
                     log=log_outcome,
                     quarantine=Quarantine(sqs, env["DEAD_LETTER_QUEUE_URL"]),
                     requeue=Requeue(sqs, env["QUEUE_URL"], int(env["QUEUE_VISIBILITY_TIMEOUT_SECONDS"])))


_processor: Processor | None = None


def _message_ids(event: Any) -> list[str]:
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list):
        return []
    return [r["messageId"] for r in records if isinstance(r, dict)
            and isinstance(r.get("messageId"), str) and r["messageId"]]


def handler(event: Any, context: Any) -> dict[str, Any]:
    global _processor
    try:
        if _processor is None:
            _processor = build_processor()
        return _processor.process_batch(event, context).response()
    except Exception:  # noqa: BLE001 - last line of defence: retry the batch, never raise
        logger.exception("interruption batch failed before its records were decided")
        return {"batchItemFailures": [{"itemIdentifier": m} for m in _message_ids(event)]}
    finally:
        try:
            metrics.flush()
        except Exception:  # noqa: BLE001 - metrics must not fail the batch
            logger.exception("could not flush metrics")
