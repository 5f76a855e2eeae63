"""Every AWS call of the interruption handler, retried inside a deadline.

The SDK's own retries are off (``max_attempts=1`` in ``handler.py``): a
retry here knows the record's deadline, backs off with full jitter, and is
told whether the failed attempt may have happened anyway (a read timeout on
``SendCommand`` may have sent the command), so the caller can look before
it repeats a mutating call. A record that runs out of time fails back to
SQS (``TransientError``); one record's back-off never delays another's
(records run in their own threads, ``batch.py``).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from botocore.exceptions import (BotoCoreError, ClientError, ConnectionClosedError,
                                 ReadTimeoutError)

T = TypeVar("T")

THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
    "TooManyRequestsException", "RequestThrottled", "RequestThrottledException",
    "ProvisionedThroughputExceededException", "SlowDown", "PriorRequestNotComplete",
})
SERVER_CODES = frozenset({"InternalError", "InternalFailure", "InternalServerError",
                          "ServiceUnavailable", "Unavailable", "InternalServerException",
                          "RequestTimeout", "RequestTimeoutException"})
BACKOFF_BASE_SECONDS = 0.1
BACKOFF_CAP_SECONDS = 2.0


class TransientError(Exception):
    """An AWS call failed in a way a later attempt can fix: retry the record."""

    def __init__(self, operation: str, error: Exception | str) -> None:
        self.operation = operation
        self.code = error_code(error) if isinstance(error, Exception) else "Retry"
        super().__init__(f"{operation} failed: {self.code}: {str(error)[:300]}")


def error_code(error: Exception) -> str:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", "Unknown"))
    return type(error).__name__


def error_message(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message", ""))


def is_throttling(error: Exception) -> bool:
    return isinstance(error, ClientError) and error_code(error) in THROTTLING_CODES


def is_retryable(error: Exception) -> bool:
    """Worth another attempt within the deadline (throttling, 5xx, network)."""
    if isinstance(error, BotoCoreError):
        return True
    if not isinstance(error, ClientError):
        return False
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    code = error_code(error)
    return code in THROTTLING_CODES or code in SERVER_CODES or (
        isinstance(status, int) and status >= 500)


def is_ambiguous(error: Exception) -> bool:
    """The request may have been carried out although no answer came back."""
    if isinstance(error, (ReadTimeoutError, ConnectionClosedError)):
        return True
    return is_retryable(error) and not is_throttling(error) and not isinstance(error, BotoCoreError)


@dataclass
class CallStats:
    """Shared by a batch's threads: what it cost (calls per operation, throttles
    met) and when an operation may be called again after a throttle, so one
    record's throttle slows every record of the batch instead of each of
    them spending its own attempts on an exhausted quota."""

    calls: dict[str, int] = field(default_factory=dict)
    throttles: int = 0
    not_before: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, operation: str, throttled: bool) -> None:
        with self._lock:
            self.calls[operation] = self.calls.get(operation, 0) + 1
            self.throttles += int(throttled)

    def hold(self, operation: str, until: float) -> None:
        with self._lock:
            self.not_before[operation] = max(self.not_before.get(operation, 0.0), until)

    def wait_for(self, operation: str, deadline: "Deadline") -> bool:
        """Sleep until ``operation`` may be called; False if that is past the deadline."""
        with self._lock:
            until = self.not_before.get(operation, 0.0)
        wait = until - deadline.clock()
        if wait <= 0:
            return True
        if deadline.remaining() - wait <= 0:
            return False
        deadline.sleep(wait)
        return True


@dataclass
class Deadline:
    """Monotonic point in time after which a record stops retrying."""

    expires_at: float
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep) -> "Deadline":
        return cls(clock() + seconds, clock, sleep)

    def remaining(self) -> float:
        return self.expires_at - self.clock()


def call(operation: str, function: Callable[[], T], deadline: Deadline, stats: CallStats | None,
         *, before_retry: Callable[[Exception], T | None] | None = None,
         rng: random.Random | None = None) -> T:
    """``function()`` until it succeeds, fails for good, or the deadline is near.

    ``before_retry(error)`` runs before each repeat of an attempt whose
    outcome is ambiguous; a non-``None`` result is returned instead of
    repeating (the first attempt did happen). A non-retryable ``ClientError``
    is raised as is for the caller to classify.
    """
    rng = rng or random
    attempt = 0
    while True:
        if stats is not None and attempt and not stats.wait_for(operation, deadline):
            raise TransientError(operation, "throttled until past the record's deadline")
        try:
            result = function()
        except (ClientError, BotoCoreError) as error:
            throttled = is_throttling(error)
            if stats is not None:
                stats.add(operation, throttled)
            if not is_retryable(error):
                raise
            ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** attempt)
            # Equal jitter for throttles (at least half the ceiling: the
            # quota is shared), full jitter for the rest.
            delay = rng.uniform(ceiling / 2 if throttled else 0, ceiling)
            if deadline.remaining() - delay <= 0:
                raise TransientError(operation, error) from error
            if throttled and stats is not None:
                stats.hold(operation, deadline.clock() + delay)
            deadline.sleep(delay)
            attempt += 1
            if before_retry is not None and is_ambiguous(error):
                found = before_retry(error)
                if found is not None:
                    return found
            continue
        if stats is not None:
            stats.add(operation, False)
        return result
