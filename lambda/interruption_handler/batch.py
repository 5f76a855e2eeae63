"""One SQS batch: parse, deduplicate, look up, decide, report per-record failures.

Every record ends as exactly one of ``handled``, ``skipped`` or ``failed``
and one structured log line says which, why, and for which instance. Only
``failed`` records go back to SQS (``batchItemFailures``); nothing raises.

The instances of the whole batch are looked up in one call per API
(``logic.look_up``); each record then runs in its own thread with its own
retries, all bounded by one deadline a little before the function timeout,
so a throttled record never holds up the others and the function answers
before Lambda would time it out (which would fail the whole batch).
Malformed messages are copied to the dead-letter queue (``quarantine.py``).

A record may stand for several instances (an AWS Health event, a Capacity
Block warning): each instance is decided on its own with its own
idempotency key, the record fails if any of them failed (its redelivery
finds the others done in the ledger), and a Capacity Block's reservation
is resolved to the fleet's instances in it first, one DescribeInstances for
all of the batch's reservations.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from calls import CallStats, Deadline, TransientError
from ledger import BUSY, DONE, Claim, Ledger
from logic import (FAILED, HANDLED, SKIPPED, Clients, Decision, Facts, MetricSink, Settings, Trace,
                   decide, instances_in_reservations, look_up, needs_lookup)
from messages import (INSTANCE_ID_PATTERN, Fanout, Interruption, MalformedMessage, ReservationNotice,
                      TestNotification, parse_body)
from quarantine import Quarantine
from requeue import Requeue

# Answer this long before the invocation's end: the per-record failures must
# reach Lambda before its timeout does.
SAFETY_MARGIN_SECONDS = 1.5
# Without a Lambda context (tests, bench): the budget of one record.
DEFAULT_BUDGET_SECONDS = 5.0
# After the deadline, within the safety margin: releasing a failed record's
# claim, then cutting the failed records' visibility.
RELEASE_BUDGET_SECONDS = 0.3
REQUEUE_BUDGET_SECONDS = 1.0
MAX_WORKERS = 16
_INSTANCE_ID = re.compile(INSTANCE_ID_PATTERN)


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
    stats: CallStats = field(default_factory=CallStats)

    def response(self) -> dict[str, list[dict[str, str]]]:
        # A record of several instances is handed back once.
        failed = dict.fromkeys(o.message_id for o in self.outcomes if o.outcome == FAILED and o.message_id)
        return {"batchItemFailures": [{"itemIdentifier": m} for m in failed]}


@dataclass
class _Entry:
    message_id: str | None
    body: Any = None
    record: Any = None
    parsed: Interruption | None = None
    outcome: RecordOutcome | None = None
    malformed: str | None = None
    duplicate_of: "_Entry | None" = None
    notice: ReservationNotice | None = None


class _Counts:
    """Metric counts from worker threads, handed to the sink in one place."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def count(self, name: str) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + 1


class Processor:
    """Deduplicated decisions, backed by the DynamoDB idempotency table."""

    def __init__(self, *, settings: Settings, clients: Clients, dynamodb: Any, table_name: str,
                 metrics: MetricSink, log: Callable[..., None], quarantine: Quarantine | None = None,
                 requeue: Requeue | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clients = clients
        self.dynamodb = dynamodb
        self.table_name = table_name
        self.metrics = metrics
        self.log = log
        self.quarantine = quarantine
        self.requeue = requeue
        self.clock = clock
        self.sleep = sleep
        self.wall_clock = wall_clock

    def process_batch(self, event: Any, context: Any = None) -> BatchResult:
        result = BatchResult()
        records = event.get("Records") if isinstance(event, dict) else None
        if not isinstance(records, list):
            self._emit(result, [RecordOutcome(None, SKIPPED, "drop", "event without a Records list")],
                       _Counts())
            return result
        deadline = Deadline.after(self._budget(context), self.clock, self.sleep)
        counts = _Counts()
        entries = self._resolve([e for record in records for e in self._parse(record, counts)],
                                deadline, result.stats)
        primaries: dict[str, _Entry] = {}
        for entry in entries:
            if entry.parsed is not None:
                first = primaries.setdefault(entry.parsed.idempotency_key, entry)
                entry.duplicate_of = first if first is not entry else None
        work = [e for e in entries if e.malformed or (e.parsed and e.duplicate_of is None)]
        ledger = Ledger(self.dynamodb, self.table_name, stats=result.stats, clock=self.wall_clock)
        with ThreadPoolExecutor(max_workers=max(1, min(MAX_WORKERS, len(work) + 1))) as pool:
            lookup = pool.submit(self._look_up, primaries.values(), deadline, result.stats)
            jobs = [pool.submit(self._run, entry, lookup, ledger, deadline, counts, result.stats)
                    for entry in work]
            for entry, job in zip(work, jobs):
                entry.outcome = _settled(job, entry)
        for entry in entries:
            if entry.duplicate_of is not None:
                entry.outcome = self._duplicate(entry, entry.duplicate_of.outcome, counts)
        self._retry_sooner(entries, counts)
        self._emit(result, [e.outcome for e in entries], counts)
        return result

    def _retry_sooner(self, entries: list[_Entry], counts: _Counts) -> None:
        failed = list({e.message_id: e for e in entries
                       if e.outcome.outcome == FAILED and e.record is not None}.values())
        if self.requeue is None or not failed:
            return
        # Its own short budget: the batch's deadline may be spent already.
        deadline = Deadline.after(REQUEUE_BUDGET_SECONDS, self.clock, self.sleep)
        for _ in range(self.requeue.sooner([e.record for e in failed], deadline)):
            counts.count("RecordsRequeuedSooner")

    def _budget(self, context: Any) -> float:
        try:
            remaining = context.get_remaining_time_in_millis() / 1000.0
        except Exception:  # noqa: BLE001 - no usable context: tests and the bench
            return DEFAULT_BUDGET_SECONDS
        return max(0.5, remaining - SAFETY_MARGIN_SECONDS)

    def _parse(self, record: Any, counts: _Counts) -> list[_Entry]:
        message_id = record.get("messageId") if isinstance(record, dict) else None
        if not isinstance(message_id, str) or not message_id:
            return [_Entry(None, outcome=RecordOutcome(None, SKIPPED, "drop", "record without a messageId"))]
        body = record.get("body")
        try:
            parsed = parse_body(body)
        except MalformedMessage as error:
            counts.count("MalformedMessages")
            return [_Entry(message_id, body, record, malformed=str(error))]
        if isinstance(parsed, TestNotification):
            return [_Entry(message_id, outcome=RecordOutcome(message_id, SKIPPED, "none", "test-notification"))]
        if isinstance(parsed, Fanout):
            return [_Entry(message_id, body, record, parsed=p) for p in parsed.interruptions]
        if isinstance(parsed, ReservationNotice):
            return [_Entry(message_id, body, record, notice=parsed)]
        if parsed.salvaged:
            counts.count("MalformedMessages")
        return [_Entry(message_id, body, record, parsed=parsed)]

    def _resolve(self, entries: list[_Entry], deadline: Deadline, stats: CallStats) -> list[_Entry]:
        """Each reservation notice becomes one entry per fleet instance in it."""
        notices = [e for e in entries if e.notice is not None]
        if not notices:
            return entries
        try:
            members = instances_in_reservations([e.notice.capacity_reservation_id for e in notices],
                                                self.settings, self.clients, deadline, stats)
            error = None
        except TransientError as failure:
            members, error = {}, f"retry: {failure}"
        resolved: list[_Entry] = []
        for entry in entries:
            notice = entry.notice
            if notice is None:
                resolved.append(entry)
                continue
            reason = f"capacity reservation {notice.capacity_reservation_id}"
            if error is not None:
                entry.outcome = RecordOutcome(entry.message_id, FAILED, "retry", error, None, notice.kind)
                resolved.append(entry)
                continue
            instances = [i for i in members.get(notice.capacity_reservation_id, [])
                         if _INSTANCE_ID.fullmatch(i)]
            if not instances:
                entry.outcome = RecordOutcome(entry.message_id, SKIPPED, "none",
                                              f"{reason} holds no instance of the fleet", None, notice.kind)
                resolved.append(entry)
            resolved.extend(_Entry(entry.message_id, entry.body, entry.record,
                                   parsed=notice.interruption(i)) for i in instances)
        return resolved

    def _look_up(self, primaries: Any, deadline: Deadline, stats: CallStats) -> dict[str, Facts]:
        ids = [e.parsed.instance_id for e in primaries if needs_lookup(e.parsed, self.settings)]
        return look_up(ids, self.settings, self.clients, deadline, stats) if ids else {}

    def _run(self, entry: _Entry, lookup: Future, ledger: Ledger, deadline: Deadline,
             counts: _Counts, stats: CallStats) -> RecordOutcome:
        message_id = entry.message_id
        if entry.malformed is not None:
            self._quarantine(entry, f"malformed: {entry.malformed}", deadline)
            return RecordOutcome(message_id, SKIPPED, "quarantined", f"malformed: {entry.malformed}")
        parsed = entry.parsed
        claim = ledger.claim(parsed.idempotency_key, message_id, deadline.remaining(), deadline)
        if claim.state == BUSY:
            raise TransientError("idempotency", "the same event is being handled right now")
        if claim.state == DONE:
            outcome = self._stored(entry, claim, counts)
        else:
            outcome = self._decide(entry, claim, lookup, ledger, deadline, counts, stats)
        duplicate = claim.state == DONE and claim.first_message_id != message_id
        if parsed.salvaged and not duplicate:
            # Once per event: the message that decided it (or its redelivery).
            self._quarantine(entry, f"acted on without its token: {parsed.salvaged}", deadline)
        return outcome

    def _decide(self, entry: _Entry, claim: Claim, lookup: Future, ledger: Ledger, deadline: Deadline,
                counts: _Counts, stats: CallStats) -> RecordOutcome:
        parsed, trace = entry.parsed, Trace()
        try:
            facts = lookup.result().get(parsed.instance_id) if needs_lookup(parsed, self.settings) else None
            decision = decide(parsed, facts, self.settings, self.clients, counts, deadline,
                              stats=stats, maybe_sent=claim.taken_over, trace=trace)
            ledger.finish(parsed.idempotency_key, entry.message_id, decision.as_dict(), deadline)
        except Exception:
            if not claim.taken_over and not trace.maybe_sent:
                ledger.release(parsed.idempotency_key, entry.message_id,
                               Deadline.after(RELEASE_BUDGET_SECONDS, self.clock, self.sleep))
            raise
        return RecordOutcome(entry.message_id, decision.outcome, decision.action, decision.reason,
                             parsed.instance_id, parsed.kind)

    def _quarantine(self, entry: _Entry, reason: str, deadline: Deadline) -> None:
        if self.quarantine is None:
            raise TransientError("quarantine", "no dead-letter queue configured: SQS redrive moves it")
        self.quarantine.put(entry.message_id, entry.body, reason, deadline)

    def _stored(self, entry: _Entry, claim: Claim, counts: _Counts) -> RecordOutcome:
        stored = claim.decision or {}
        parsed = entry.parsed
        if claim.first_message_id != entry.message_id:
            counts.count("DuplicateDeliveries")
            return RecordOutcome(entry.message_id, SKIPPED, "none",
                                 f"duplicate of message {claim.first_message_id}: "
                                 f"{stored.get('action')}", parsed.instance_id, parsed.kind)
        return RecordOutcome(entry.message_id, stored.get("outcome", HANDLED), stored.get("action", "none"),
                             stored.get("reason", "decided before"), parsed.instance_id, parsed.kind)

    def _duplicate(self, entry: _Entry, first: RecordOutcome, counts: _Counts) -> RecordOutcome:
        parsed = entry.parsed
        if first.outcome == FAILED:
            # Handed back together: the retry of both is deduplicated again.
            return RecordOutcome(entry.message_id, FAILED, "retry", f"duplicate of failed message "
                                 f"{first.message_id}", parsed.instance_id, parsed.kind)
        counts.count("DuplicateDeliveries")
        return RecordOutcome(entry.message_id, SKIPPED, "none",
                             f"duplicate of message {first.message_id}: {first.action}",
                             parsed.instance_id, parsed.kind)

    def _emit(self, result: BatchResult, outcomes: list[RecordOutcome], counts: _Counts) -> None:
        for outcome in outcomes:
            if outcome.outcome == FAILED:
                counts.count("RecordsFailed")
            result.outcomes.append(outcome)
            self.log(outcome)
        for name, value in sorted(counts.counts.items()):
            for _ in range(value):
                self.metrics.count(name)


def _settled(job: Future, entry: _Entry) -> RecordOutcome:
    """The record's outcome; any error hands it back to SQS, with its reason."""
    parsed = entry.parsed
    instance_id, kind = (parsed.instance_id, parsed.kind) if parsed else (None, None)
    try:
        return job.result()
    except TransientError as error:
        reason = f"retry: {error}"
        if error.operation == "idempotency":
            reason = "retry: the same event is being handled right now"
    except Exception as error:  # noqa: BLE001 - a bug must not lose the record
        reason = f"retry: unexpected {type(error).__name__}: {str(error)[:200]}"
    return RecordOutcome(entry.message_id, FAILED, "retry", reason, instance_id, kind)


__all__ = ["BatchResult", "Decision", "HANDLED", "Processor", "RecordOutcome"]
