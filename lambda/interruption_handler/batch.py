"""One SQS batch: parse, deduplicate, decide, and report per-record failures.

Every record ends as exactly one of ``handled``, ``skipped`` or ``failed``
and one structured log line says which, why, and for which instance. Only
``failed`` records go back to SQS (``batchItemFailures``); nothing raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyPersistenceLayerError,
)

from logic import FAILED, HANDLED, SKIPPED, Clients, Decision, MetricSink, Settings, TransientError, decide
from messages import Interruption, MalformedMessage, TestNotification, parse_body

# Long enough to swallow EventBridge's and SQS's redeliveries of one event.
IDEMPOTENCY_TTL_SECONDS = 24 * 3600


@dataclass(frozen=True)
class RecordOutcome:
    message_id: str | None
    outcome: str
    action: str
    reason: str
    instance_id: str | None = None
    kind: str | None = None


@dataclass
class BatchResult:
    outcomes: list[RecordOutcome] = field(default_factory=list)

    def response(self) -> dict[str, list[dict[str, str]]]:
        return {"batchItemFailures": [{"itemIdentifier": o.message_id} for o in self.outcomes
                                      if o.outcome == FAILED and o.message_id]}


class Processor:
    """Deduplicated decisions, backed by the DynamoDB idempotency table."""

    def __init__(self, *, settings: Settings, clients: Clients, dynamodb: Any, table_name: str,
                 metrics: MetricSink, log: Callable[..., None]) -> None:
        self.settings = settings
        self.clients = clients
        self.metrics = metrics
        self.log = log
        self.config = IdempotencyConfig(event_key_jmespath="idempotency_key",
                                        expires_after_seconds=IDEMPOTENCY_TTL_SECONDS)
        persistence = DynamoDBPersistenceLayer(table_name=table_name, boto3_client=dynamodb)

        @idempotent_function(data_keyword_argument="request", config=self.config,
                             persistence_store=persistence)
        def process(request: dict[str, Any]) -> dict[str, Any]:
            decision = decide(Interruption.from_request(request["interruption"]), self.settings,
                              self.clients, self.metrics)
            return {**decision.as_dict(), "first_message_id": request["message_id"]}

        self._process = process

    def process_batch(self, event: Any, context: Any = None) -> BatchResult:
        if context is not None:
            # In-progress records then expire with this invocation, so a
            # crashed attempt does not block the retry for a whole TTL.
            self.config.register_lambda_context(context)
        result = BatchResult()
        records = event.get("Records") if isinstance(event, dict) else None
        if not isinstance(records, list):
            self._record(result, RecordOutcome(None, SKIPPED, "drop", "event without a Records list"))
            return result
        for record in records:
            self._record(result, self._process_record(record))
        return result

    def _process_record(self, record: Any) -> RecordOutcome:
        message_id = record.get("messageId") if isinstance(record, dict) else None
        if not isinstance(message_id, str) or not message_id:
            return RecordOutcome(None, SKIPPED, "drop", "record without a messageId")
        try:
            parsed = parse_body(record.get("body"))
        except MalformedMessage as error:
            self.metrics.count("MalformedMessages")
            return RecordOutcome(message_id, SKIPPED, "drop", f"malformed: {error}")
        if isinstance(parsed, TestNotification):
            return RecordOutcome(message_id, SKIPPED, "none", "test-notification")
        try:
            stored = self._process(request={"idempotency_key": parsed.idempotency_key,
                                            "interruption": parsed.as_request(),
                                            "message_id": message_id})
        except TransientError as error:
            return self._failed(message_id, parsed, f"retry: {error}")
        except IdempotencyAlreadyInProgressError:
            return self._failed(message_id, parsed, "retry: the same event is being handled right now")
        except IdempotencyPersistenceLayerError as error:
            return self._failed(message_id, parsed, f"retry: idempotency table: {str(error)[:200]}")
        except Exception as error:  # noqa: BLE001 - a bug must not lose the record
            return self._failed(message_id, parsed, f"retry: unexpected {type(error).__name__}: "
                                                    f"{str(error)[:200]}")
        if stored.get("first_message_id") != message_id:
            self.metrics.count("DuplicateDeliveries")
            return RecordOutcome(message_id, SKIPPED, "none",
                                 f"duplicate of message {stored.get('first_message_id')}: "
                                 f"{stored.get('action')}", parsed.instance_id, parsed.kind)
        return RecordOutcome(message_id, stored["outcome"], stored["action"], stored["reason"],
                             parsed.instance_id, parsed.kind)

    def _failed(self, message_id: str, parsed: Interruption, reason: str) -> RecordOutcome:
        self.metrics.count("RecordsFailed")
        return RecordOutcome(message_id, FAILED, "retry", reason, parsed.instance_id, parsed.kind)

    def _record(self, result: BatchResult, outcome: RecordOutcome) -> None:
        result.outcomes.append(outcome)
        self.log(outcome)


__all__ = ["BatchResult", "Decision", "HANDLED", "Processor", "RecordOutcome"]
