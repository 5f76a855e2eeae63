"""Failed records come back in seconds, not after the visibility timeout.

A record handed back through ``batchItemFailures`` stays invisible for the
queue's visibility timeout (48 s, README "Interruption time budget"). For a
record that failed because AWS was busy (a throttled storm, a dropped
connection) that is most of a spot notice. So its visibility is cut to a
few seconds, doubling with each receive; if that call fails, the visibility
timeout still bounds the retry. The function's role may already do this on
its queue: Lambda's event source mapping needs ``ChangeMessageVisibility``.
"""

from __future__ import annotations

from typing import Any

from calls import CallStats, Deadline, call

FIRST_RETRY_SECONDS = 2


def retry_after_seconds(receive_count: Any, ceiling_seconds: int) -> int:
    """2 s after the first receive, 4 s after the second, ... at most the ceiling."""
    try:
        count = max(1, int(receive_count))
    except (TypeError, ValueError):
        count = 1
    return min(ceiling_seconds, FIRST_RETRY_SECONDS * 2 ** min(count - 1, 10))


class Requeue:
    def __init__(self, sqs: Any, queue_url: str, ceiling_seconds: int,
                 stats: CallStats | None = None) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.ceiling_seconds = ceiling_seconds
        self.stats = stats

    def sooner(self, records: list[Any], deadline: Deadline) -> int:
        """Make failed records visible again soon (one batch call); how many were."""
        entries = []
        for record in records:
            receipt = record.get("receiptHandle") if isinstance(record, dict) else None
            attributes = record.get("attributes") if isinstance(record, dict) else None
            if not isinstance(receipt, str) or not receipt:
                continue
            count = attributes.get("ApproximateReceiveCount") if isinstance(attributes, dict) else None
            entries.append({"Id": str(len(entries)), "ReceiptHandle": receipt,
                            "VisibilityTimeout": retry_after_seconds(count, self.ceiling_seconds)})
        if not entries:
            return 0
        try:
            response = call("sqs:ChangeMessageVisibilityBatch", lambda: self.sqs.change_message_visibility_batch(
                QueueUrl=self.queue_url, Entries=entries), deadline, self.stats)
        except Exception:  # noqa: BLE001 - any failure: the visibility timeout still bounds the retry
            return 0
        return len(response.get("Successful", []))
