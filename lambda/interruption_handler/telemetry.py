"""Structured log lines and EMF count metrics, standard library only.

Like the other functions (lambda/idle_shutdown/idle_report.py,
lambda/runs_capacity), everything is one JSON object per line on stdout:
Lambda ships stdout to CloudWatch Logs unchanged, which is what Embedded
Metric Format needs. The fields are the ones Powertools' Logger and Metrics
wrote before (level, location, message, timestamp, service, xray_trace_id and
the extra fields, None values left out; exceptions with their traceback), and
the metrics keep their namespace, names, unit and dimension, so the alarms
(constructs_lib/interruption_handler.py) and log queries keep working.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from datetime import datetime, timezone
from typing import Any, Callable

# The construct's alarms read these (constructs_lib/interruption_handler.py
# METRICS_NAMESPACE / SERVICE_NAME; a test keeps the two equal).
SERVICE_NAME = "interruption-handler"
METRICS_NAMESPACE = "MlInfra/Training"
# CloudWatch accepts at most 100 metrics in one EMF directive.
MAX_METRICS_PER_LINE = 100


def stdout(line: str) -> None:
    """One write per line, so lines from threads never interleave."""
    sys.stdout.write(line + "\n")


class Logger:
    """``info`` / ``warning`` / ``exception`` as one JSON line each."""

    def __init__(self, write: Callable[[str], None] = stdout) -> None:
        self._write = write

    def info(self, message: str, **fields: Any) -> None:
        self._line("INFO", message, fields)

    def warning(self, message: str, **fields: Any) -> None:
        self._line("WARNING", message, fields)

    def exception(self, message: str, **fields: Any) -> None:
        """At ERROR, with the traceback of the exception being handled."""
        error = sys.exc_info()[1]
        if error is not None:
            fields = {**fields, "exception": traceback.format_exc().rstrip(),
                      "exception_name": type(error).__name__}
        self._line("ERROR", message, fields)

    def _line(self, level: str, message: str, fields: dict[str, Any]) -> None:
        caller = sys._getframe(2)  # the function that called info/warning/exception
        record = {"level": level, "location": f"{caller.f_code.co_name}:{caller.f_lineno}",
                  "message": message,
                  "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                  "service": SERVICE_NAME}
        trace = os.environ.get("_X_AMZN_TRACE_ID")
        if trace:
            record["xray_trace_id"] = trace.split(";")[0].replace("Root=", "")
        record.update((k, v) for k, v in fields.items() if v is not None)
        self._write(json.dumps(record, default=str))


class CountMetrics:
    """Count metrics summed per name, written as one EMF line by ``flush``."""

    def __init__(self, write: Callable[[str], None] = stdout,
                 clock: Callable[[], float] = time.time) -> None:
        self._write = write
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def count(self, name: str, value: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + value

    def flush(self) -> None:
        """Write what was counted (nothing if nothing was) and start again."""
        with self._lock:
            counts, self._counts = self._counts, {}
        names = sorted(counts)
        for start in range(0, len(names), MAX_METRICS_PER_LINE):
            chunk = names[start:start + MAX_METRICS_PER_LINE]
            self._write(json.dumps({
                "_aws": {
                    "Timestamp": int(self._clock() * 1000),
                    "CloudWatchMetrics": [{
                        "Namespace": METRICS_NAMESPACE,
                        "Dimensions": [["service"]],
                        "Metrics": [{"Name": name, "Unit": "Count"} for name in chunk],
                    }],
                },
                "service": SERVICE_NAME,
                **{name: counts[name] for name in chunk},
            }))
