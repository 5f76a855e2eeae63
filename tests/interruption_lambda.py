"""Loads lambda/interruption_handler's flat modules for the tests.

Lambda imports them by bare name (``handler``, ``logic``, ...); other
functions have modules of the same names, so they are imported here and then
taken out of ``sys.modules`` again: tests use these objects, nothing else
sees the names.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
LAMBDA_DIR = ROOT / "lambda" / "interruption_handler"
FIXTURES = Path(__file__).resolve().parent / "lambda" / "fixtures" / "interruption_handler"
_NAMES = ("calls", "messages", "logic", "ledger", "quarantine", "requeue", "batch", "telemetry",
          "handler")


def _load() -> dict[str, ModuleType]:
    saved = {name: sys.modules.pop(name) for name in _NAMES if name in sys.modules}
    sys.path.insert(0, str(LAMBDA_DIR))
    try:
        return {name: importlib.import_module(name) for name in _NAMES}
    finally:
        sys.path.remove(str(LAMBDA_DIR))
        for name in _NAMES:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


_modules = _load()
calls = _modules["calls"]
ledger = _modules["ledger"]
quarantine = _modules["quarantine"]
requeue = _modules["requeue"]
messages = _modules["messages"]
logic = _modules["logic"]
batch = _modules["batch"]
telemetry = _modules["telemetry"]
handler = _modules["handler"]


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def sqs_record(body: object, message_id: str = "059f36b4-87a3-44ab-83d2-661975830a7d",
               receive_count: int = 1) -> dict:
    """An SQS event source record as Lambda delivers it."""
    return {
        "messageId": message_id,
        "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...",
        "body": body if isinstance(body, str) else json.dumps(body),
        "attributes": {
            "ApproximateReceiveCount": str(receive_count),
            "SentTimestamp": "1763886000000",
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": "1763886000100",
        },
        "messageAttributes": {},
        "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:ml-dev-training-InterruptionHandlerQueue",
        "awsRegion": "us-east-1",
    }


def sqs_event(*records: dict) -> dict:
    return {"Records": list(records)}
