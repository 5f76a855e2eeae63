"""A run's trainer output: ``FilterLogEvents`` on its streams, polled when following.

Streams are ``<run-id>/<attempt>-<instance-id>`` (RUNS_CONTRACT.md); every
line is printed once, prefixed with the attempt it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from ml_runs.runs import ACTIVE, StageRuns, get_run, parse_timestamp

# Bounds: pages per poll (FilterLogEvents may return empty pages with a
# token while it searches), and how long `--follow` may run.
MAX_PAGES_PER_POLL = 200
DEFAULT_POLL_SECONDS = 5.0
DEFAULT_FOLLOW_MINUTES = 60


@dataclass
class _Cursor:
    start_ms: int
    seen: set[tuple[str, str]] = field(default_factory=set)  # (stream, event id) at start_ms


@dataclass(frozen=True)
class FollowOptions:
    follow: bool = False
    poll_seconds: float = DEFAULT_POLL_SECONDS
    follow_minutes: float = DEFAULT_FOLLOW_MINUTES


def print_logs(logs: Any, dynamodb: Any, runs: StageRuns, run_id: str, *, options: FollowOptions,
               out: TextIO, err: TextIO, sleep: Callable[[float], None],
               monotonic: Callable[[], float]) -> int:
    """Print the run's log lines; with ``follow``, keep polling until the run
    has ended (one last read after that) or ``follow_minutes`` passed."""
    run = get_run(dynamodb, runs, run_id)
    cursor = _Cursor(start_ms=int(parse_timestamp(run["created_at"]).timestamp() * 1000))
    deadline = monotonic() + options.follow_minutes * 60
    printed = _poll(logs, runs, run_id, cursor, out)
    while options.follow and run["state"] in ACTIVE:
        if monotonic() >= deadline:
            err.write(f"stopped following after {options.follow_minutes:g} minutes; run {run_id} "
                      f"is still {run['state']}\n")
            return printed
        sleep(options.poll_seconds)
        run = get_run(dynamodb, runs, run_id)
        # Read after the state: a run that has just ended has flushed its lines.
        printed += _poll(logs, runs, run_id, cursor, out)
    if options.follow:
        err.write(f"run {run_id} is {run['state']}\n")
    return printed


def _poll(logs: Any, runs: StageRuns, run_id: str, cursor: _Cursor, out: TextIO) -> int:
    request = {"logGroupName": runs.log_group, "logStreamNamePrefix": f"{run_id}/",
               "startTime": cursor.start_ms}
    printed = 0
    newest = cursor.start_ms
    newest_ids = set(cursor.seen)
    for _ in range(MAX_PAGES_PER_POLL):
        page = logs.filter_log_events(**request)
        for event in page.get("events", []):
            stream = event.get("logStreamName", "")
            key = (stream, event["eventId"])
            if (not stream.startswith(f"{run_id}/") or event["timestamp"] < cursor.start_ms
                    or (event["timestamp"] == cursor.start_ms and key in cursor.seen)):
                continue
            out.write(f"[{stream[len(run_id) + 1:]}] {event['message'].rstrip(chr(10))}\n")
            printed += 1
            if event["timestamp"] > newest:
                newest, newest_ids = event["timestamp"], set()
            if event["timestamp"] == newest:
                newest_ids.add(key)
        if "nextToken" not in page:
            break
        request["nextToken"] = page["nextToken"]
    # startTime is inclusive: remember what was printed at the newest millisecond.
    cursor.start_ms, cursor.seen = newest, newest_ids
    out.flush()
    return printed
