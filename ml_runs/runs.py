"""The CLI's side of the runs table and the fleet (node_agent/RUNS_CONTRACT.md).

Plain functions over boto3 clients passed in: submit a run and raise the
fleet's desired capacity, read runs, cancel one.

The CLI never puts ``Training Job Finished``: the idle stack accepts it
only from the stage's instances (its bus denies every other principal).
When a cancel leaves nothing to run, the instances find no run to claim
and the idle-GPU sweep stops them (docs/stacks.md, "Which events are trusted").
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Iterator

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from delivery.cli_errors import UserError
from ml_runs.spec import RunSpec

STATE_INDEX = "by-state"
PENDING, RUNNING = "PENDING", "RUNNING"
SUCCEEDED, FAILED, CANCELLED = "SUCCEEDED", "FAILED", "CANCELLED"
STATES = (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED)
ACTIVE = (PENDING, RUNNING)
# A cancel re-reads and retries when an instance changed the run meanwhile.
CANCEL_TRIES = 3

_serializer, _deserializer = TypeSerializer(), TypeDeserializer()


@dataclass(frozen=True)
class StageRuns:
    """Where one deployed stage keeps its runs (the training stack's outputs)."""

    stage: str
    table: str
    log_group: str
    group: str
    bucket: str


@dataclass(frozen=True)
class Capacity:
    before: int
    after: int
    max_size: int
    active: int


def timestamp(now: datetime) -> str:
    """ISO-8601 UTC with seconds, e.g. ``2026-11-29T14:03:07Z``."""
    return now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def new_run_id(name: str) -> str:
    return f"{name}-{secrets.token_hex(4)}"


def _dump(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(v) for k, v in item.items()}


def _load(item: dict[str, Any]) -> dict[str, Any]:
    return {k: plain(_deserializer.deserialize(v)) for k, v in item.items()}


def plain(value: Any) -> Any:
    """A deserialized DynamoDB value with Decimals as int/float (the CLI, the drill and its tests)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def _condition_failed(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


# --- submit -------------------------------------------------------------------------

def put_run(dynamodb: Any, runs: StageRuns, spec: RunSpec, *, now: datetime,
            run_id: str | None = None) -> dict[str, Any]:
    """Write the PENDING run (never over an existing one); the item written."""
    stamp = timestamp(now)
    item = {
        "run_id": run_id or new_run_id(spec.name),
        "name": spec.name,
        "state": PENDING,
        "spec": spec.as_item(),
        "created_at": stamp,
        "updated_at": stamp,
        "failures": 0,
        "attempt_count": 0,
        "attempts": [],
    }
    try:
        dynamodb.put_item(TableName=runs.table, Item=_dump(item),
                          ConditionExpression="attribute_not_exists(run_id)")
    except ClientError as error:
        if _condition_failed(error):
            raise UserError(f"run {item['run_id']} already exists: submit again for a new id") from None
        raise
    return item


def _query(dynamodb: Any, runs: StageRuns, state: str, **params: Any) -> Iterator[dict[str, Any]]:
    """Pages of ``by-state`` for one state (eventually consistent, like any GSI)."""
    request = {"TableName": runs.table, "IndexName": STATE_INDEX,
               "KeyConditionExpression": "#s = :state",
               "ExpressionAttributeNames": {"#s": "state"},
               "ExpressionAttributeValues": {":state": {"S": state}}, **params}
    while True:
        page = dynamodb.query(**request)
        yield page
        if "LastEvaluatedKey" not in page:
            return
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def active_run_ids(dynamodb: Any, runs: StageRuns) -> set[str]:
    """The ids of PENDING and RUNNING runs, as the index shows them.

    Ids, not a ``Select=COUNT``: the index is eventually consistent, so the
    caller adds or removes the run it has just written itself.
    """
    return {item["run_id"]["S"]
            for state in ACTIVE
            for page in _query(dynamodb, runs, state, ProjectionExpression="run_id")
            for item in page["Items"]}


def raise_capacity(autoscaling: Any, runs: StageRuns, active: int) -> Capacity:
    """Desired capacity becomes ``min(MaxSize, max(DesiredCapacity, active))``."""
    found = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[runs.group])
    groups = found.get("AutoScalingGroups", [])
    if not groups:
        raise UserError(f"Auto Scaling group {runs.group} of stage {runs.stage} not found: "
                        "is the training stack deployed?")
    group = groups[0]
    before, max_size = group["DesiredCapacity"], group["MaxSize"]
    after = min(max_size, max(before, active))
    if after != before:
        autoscaling.set_desired_capacity(AutoScalingGroupName=runs.group, DesiredCapacity=after,
                                         HonorCooldown=False)
    return Capacity(before=before, after=after, max_size=max_size, active=active)


# --- read ---------------------------------------------------------------------------

def get_run(dynamodb: Any, runs: StageRuns, run_id: str) -> dict[str, Any]:
    found = dynamodb.get_item(TableName=runs.table, Key={"run_id": {"S": run_id}},
                              ConsistentRead=True)
    if "Item" not in found:
        raise UserError(f"run {run_id} not found in stage {runs.stage} "
                        f"(`make run STAGE={runs.stage} ARGS=list` lists the runs)")
    return _load(found["Item"])


def list_runs(dynamodb: Any, runs: StageRuns, *, states: tuple[str, ...] = STATES,
              limit: int = 50) -> list[dict[str, Any]]:
    """The newest ``limit`` runs in ``states``, newest first."""
    found: list[dict[str, Any]] = []
    for state in states:
        taken = 0
        for page in _query(dynamodb, runs, state, ScanIndexForward=False):
            items = [_load(i) for i in page["Items"]]
            found.extend(items)
            taken += len(items)
            if taken >= limit:
                break
    found.sort(key=lambda run: (run.get("created_at", ""), run["run_id"]), reverse=True)
    return found[:limit]


# --- cancel -------------------------------------------------------------------------

@dataclass(frozen=True)
class CancelOutcome:
    run_id: str
    state: str  # CANCELLED, or RUNNING when the holder was asked to stop
    holder: str | None = None
    # Whether no run is PENDING or RUNNING any more (the fleet is idle).
    nothing_left: bool = False


def cancel(dynamodb: Any, runs: StageRuns, run_id: str, *, now: datetime) -> CancelOutcome:
    """PENDING → CANCELLED; RUNNING → cancel requested (the holder stops it), or
    CANCELLED at once when its lease already expired; a terminal run is an error."""
    for _ in range(CANCEL_TRIES):
        run = get_run(dynamodb, runs, run_id)
        state = run["state"]
        if state not in ACTIVE:
            raise UserError(f"run {run_id} is already {state}: only PENDING or RUNNING runs "
                            "can be cancelled")
        try:
            if state == PENDING:
                _cancel_pending(dynamodb, runs, run, now)
            elif int(run.get("lease_expires_at", 0)) < int(now.timestamp()):
                _cancel_orphan(dynamodb, runs, run, now)
            else:
                _request_cancel(dynamodb, runs, run, now)
                return CancelOutcome(run_id, RUNNING, holder=run.get("lease_holder"))
        except ClientError as error:
            if _condition_failed(error):
                continue  # an instance moved the run meanwhile: decide again
            raise
        # The run just ended never counts (the by-state index is eventually consistent).
        idle = not (active_run_ids(dynamodb, runs) - {run_id})
        return CancelOutcome(run_id, CANCELLED, nothing_left=idle)
    raise UserError(f"run {run_id} kept changing while it was being cancelled: try again")


def _terminal_update(run: dict[str, Any], now: datetime) -> tuple[list[str], dict[str, Any]]:
    stamp = timestamp(now)
    sets = ["#s = :cancelled", "ended_at = :now", "updated_at = :now", "end_reason = :reason"]
    values = {":cancelled": {"S": CANCELLED}, ":now": {"S": stamp}, ":reason": {"S": "cancelled"},
              ":seen": {"N": str(run.get("attempt_count", 0))}}
    return sets, values


def _cancel_pending(dynamodb: Any, runs: StageRuns, run: dict[str, Any], now: datetime) -> None:
    sets, values = _terminal_update(run, now)
    dynamodb.update_item(
        TableName=runs.table, Key={"run_id": {"S": run["run_id"]}},
        UpdateExpression="SET " + ", ".join(sets),
        ConditionExpression="#s = :pending AND attempt_count = :seen",
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={**values, ":pending": {"S": PENDING}},
    )


def _cancel_orphan(dynamodb: Any, runs: StageRuns, run: dict[str, Any], now: datetime) -> None:
    """A RUNNING run whose holder vanished: CANCELLED, its last attempt closed."""
    sets, values = _terminal_update(run, now)
    attempts = run.get("attempts", [])
    if attempts and "ended_at" not in attempts[-1]:
        last = f"attempts[{len(attempts) - 1}]"
        sets += [f"{last}.ended_at = :now", f"{last}.end_reason = :reason",
                 f"{last}.detail = :expired"]
        values[":expired"] = {"S": "lease-expired"}
    dynamodb.update_item(
        TableName=runs.table, Key={"run_id": {"S": run["run_id"]}},
        UpdateExpression="SET " + ", ".join(sets) + " REMOVE lease_holder, lease_expires_at",
        ConditionExpression=("#s = :running AND lease_holder = :holder AND lease_expires_at < :epoch "
                             "AND attempt_count = :seen"),
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={**values, ":running": {"S": RUNNING},
                                   ":holder": {"S": run.get("lease_holder", "")},
                                   ":epoch": {"N": str(int(now.timestamp()))}},
    )


def _request_cancel(dynamodb: Any, runs: StageRuns, run: dict[str, Any], now: datetime) -> None:
    dynamodb.update_item(
        TableName=runs.table, Key={"run_id": {"S": run["run_id"]}},
        UpdateExpression="SET cancel_requested = :true, updated_at = :now",
        ConditionExpression="#s = :running AND lease_holder = :holder AND lease_expires_at >= :epoch",
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={":true": {"BOOL": True}, ":now": {"S": timestamp(now)},
                                   ":running": {"S": RUNNING},
                                   ":holder": {"S": run.get("lease_holder", "")},
                                   ":epoch": {"N": str(int(now.timestamp()))}},
    )
