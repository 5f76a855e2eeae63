"""The idempotency record of each interruption, in DynamoDB, with states.

``claim`` writes IN_PROGRESS (with a lease until the invocation's deadline)
before anything is done; ``finish`` writes COMPLETED with the decision.
If ``finish`` fails after ``SendCommand`` succeeded, the record stays
IN_PROGRESS; the redelivery (after the queue's visibility timeout, so after
the lease) takes it over and is told so (``Claim.taken_over``): the caller
then asks SSM whether the command exists before sending one
(``logic.decide(maybe_sent=True)``). A second command is never sent because
a save failed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable

from botocore.exceptions import ClientError

from calls import CallStats, Deadline, TransientError, call, error_code

IN_PROGRESS, COMPLETED = "IN_PROGRESS", "COMPLETED"
# Long enough to swallow EventBridge's and SQS's redeliveries of one event.
TTL_SECONDS = 24 * 3600

NEW, TAKEN_OVER, DONE, BUSY = "new", "taken-over", "done", "busy"


@dataclass(frozen=True)
class Claim:
    state: str
    first_message_id: str | None = None
    decision: dict[str, Any] | None = None

    @property
    def taken_over(self) -> bool:
        return self.state == TAKEN_OVER


class Ledger:
    def __init__(self, dynamodb: Any, table_name: str, *, stats: CallStats | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.dynamodb = dynamodb
        self.table_name = table_name
        self.stats = stats
        self.clock = clock

    def claim(self, key: str, message_id: str, lease_seconds: float, deadline: Deadline) -> Claim:
        now = int(self.clock())
        item = {"id": {"S": key}, "status": {"S": IN_PROGRESS},
                "lease_until": {"N": str(now + max(1, int(lease_seconds) + 1))},
                "expiration": {"N": str(now + TTL_SECONDS)},
                "first_message_id": {"S": message_id}}
        try:
            old = self._call("dynamodb:PutItem", lambda: self.dynamodb.put_item(
                TableName=self.table_name, Item=item, ReturnValues="ALL_OLD",
                ConditionExpression="attribute_not_exists(id) OR expiration < :now "
                                    "OR (#s = :in_progress AND lease_until < :now)",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":now": {"N": str(now)},
                                           ":in_progress": {"S": IN_PROGRESS}}), deadline)
        except ClientError as error:
            if error_code(error) != "ConditionalCheckFailedException":
                raise TransientError("dynamodb:PutItem", error) from error
            return self._existing(key, deadline)
        previous = old.get("Attributes") or {}
        stale = (previous.get("status", {}).get("S") == IN_PROGRESS
                 and int(previous.get("expiration", {}).get("N", "0")) >= now)
        return Claim(TAKEN_OVER if stale else NEW, message_id)

    def _existing(self, key: str, deadline: Deadline) -> Claim:
        try:
            found = self._call("dynamodb:GetItem", lambda: self.dynamodb.get_item(
                TableName=self.table_name, Key={"id": {"S": key}}, ConsistentRead=True), deadline)
        except ClientError as error:
            raise TransientError("dynamodb:GetItem", error) from error
        item = found.get("Item") or {}
        first = item.get("first_message_id", {}).get("S")
        if item.get("status", {}).get("S") == COMPLETED:
            return Claim(DONE, first, json.loads(item.get("decision", {}).get("S", "{}")))
        return Claim(BUSY, first)

    def release(self, key: str, message_id: str, deadline: Deadline) -> bool:
        """Drop our IN_PROGRESS record when nothing was sent, so the retry
        claims afresh instead of taking over (and asking SSM first)."""
        try:
            self._call("dynamodb:DeleteItem", lambda: self.dynamodb.delete_item(
                TableName=self.table_name, Key={"id": {"S": key}},
                ConditionExpression="#s = :in_progress AND first_message_id = :me",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":in_progress": {"S": IN_PROGRESS}, ":me": {"S": message_id}}),
                deadline)
        except Exception:  # noqa: BLE001 - kept: the retry takes it over and looks first
            return False
        return True

    def finish(self, key: str, first_message_id: str, decision: dict[str, Any],
               deadline: Deadline) -> None:
        now = int(self.clock())
        item = {"id": {"S": key}, "status": {"S": COMPLETED},
                "expiration": {"N": str(now + TTL_SECONDS)},
                "first_message_id": {"S": first_message_id},
                "decision": {"S": json.dumps(decision, sort_keys=True, default=str)}}
        try:
            self._call("dynamodb:PutItem", lambda: self.dynamodb.put_item(
                TableName=self.table_name, Item=item), deadline)
        except ClientError as error:
            raise TransientError("dynamodb:PutItem", error) from error

    def _call(self, operation: str, function: Callable[[], Any], deadline: Deadline) -> Any:
        return call(operation, function, deadline, self.stats)
