"""Malformed messages go straight to the dead-letter queue, never nowhere.

The queue is fed only by this stack's rules and lifecycle hook, so a message
that cannot be parsed means a changed AWS format or a bug: a human must see
it. It is copied to the DLQ at once (the DLQ alarm and the
``MalformedMessages`` alarm fire) instead of burning ``maxReceiveCount``
receives; if even that copy fails, the record is failed back to SQS and the
redrive policy moves it later.
"""

from __future__ import annotations

import json
import re
from typing import Any

from botocore.exceptions import ClientError

from calls import CallStats, Deadline, TransientError, call

# Characters SQS accepts in a message body or string attribute.
_SQS_UNSAFE = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
MAX_BODY_CHARACTERS = 200_000  # of SQS's 256 KiB message, attributes included


def sqs_safe(text: str, limit: int) -> str:
    """``text`` unchanged when SQS can carry it, else JSON-escaped; at most ``limit``."""
    if _SQS_UNSAFE.search(text):
        text = json.dumps(text)
    return text[:limit]


class Quarantine:
    def __init__(self, sqs: Any, queue_url: str, stats: CallStats | None = None) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.stats = stats

    def put(self, message_id: str, body: Any, reason: str, deadline: Deadline) -> None:
        text = body if isinstance(body, str) else json.dumps(body, default=repr)
        request = {
            "QueueUrl": self.queue_url,
            "MessageBody": sqs_safe(text, MAX_BODY_CHARACTERS) or "(empty body)",
            "MessageAttributes": {
                "reason": {"DataType": "String",
                           "StringValue": ascii(reason)[1:-1][:1000] or "malformed"},
                "source_message_id": {"DataType": "String",
                                      "StringValue": ascii(message_id)[1:-1][:256] or "-"},
            },
        }
        try:
            call("sqs:SendMessage", lambda: self.sqs.send_message(**request), deadline, self.stats)
        except ClientError as error:
            raise TransientError("sqs:SendMessage", error) from error
