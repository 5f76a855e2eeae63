"""The runs capacity function (lambda/runs_capacity) against a deployed stage in
moto: the runs table with the contract's schema and index (tests/ml_runs/world.py,
runs written by the CLI's own writer) and the fleet's Auto Scaling group."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from ml_runs.runs import StageRuns, _dump, put_run
from ml_runs.spec import RunSpec
from tests.ml_runs.world import World

FUNCTION_DIR = Path(__file__).resolve().parents[2] / "lambda" / "runs_capacity"


def _handler_module():
    name = "runs_capacity_handler"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, FUNCTION_DIR / "handler.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        # Lambda imports the function's own modules by bare name.
        sys.path.insert(0, str(FUNCTION_DIR))
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(FUNCTION_DIR))
    return sys.modules[name]


capacity = _handler_module()


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield World.create()


def settings(world: World) -> Any:
    # The environment the construct gives the function (asserted against the
    # template in tests/unit/test_runs_capacity_stack.py).
    return capacity.Settings.from_env({
        "RUNS_TABLE": world.table, "STATE_INDEX": "by-state",
        "GROUP_NAME": world.outputs["AutoScalingGroupName"],
        "MAX_GPUS_PER_INSTANCE": str(world.config.training.max_gpus_per_instance)})


def runs_of(world: World) -> StageRuns:
    o = world.outputs
    return StageRuns(stage=world.config.name, table=o["RunsTableName"], log_group=o["RunsLogGroupName"],
                     group=o["AutoScalingGroupName"], bucket=o["CheckpointBucketName"])


def add_runs(world: World, *states: str, gpus: int = 1) -> list[str]:
    """Runs written by the CLI's own writer, then moved to ``states`` as an agent would."""
    ids = []
    for i, state in enumerate(states):
        world.later(seconds=1)
        item = put_run(world.clients["dynamodb"], runs_of(world),
                       RunSpec(name=f"run{i}", image="ghcr.io/acme/trainer:1", gpus=gpus), now=world.now)
        if state != "PENDING":
            world.update(item["run_id"], state=state, lease_holder=f"i-0a1b2c3d4e5f6{i:04d}",
                         lease_expires_at=int((world.now + timedelta(seconds=90)).timestamp()))
        ids.append(item["run_id"])
    return ids


def shape_group(world: World, *, desired: int, max_size: int, min_size: int = 0) -> None:
    world.clients["autoscaling"].update_auto_scaling_group(
        AutoScalingGroupName=world.outputs["AutoScalingGroupName"], MinSize=min_size,
        MaxSize=max_size, DesiredCapacity=desired)


class Recorder:
    """The function's clients, recording the calls it makes; ``before`` hooks run
    just before a named call (to interleave a concurrent actor)."""

    def __init__(self, world: World, *, before: dict[str, Callable[[], None]] | None = None,
                 after_count: Callable[[], None] | None = None, query_limit: int | None = None) -> None:
        self.world, self.calls, self.before = world, [], dict(before or {})
        self.after_count, self.query_limit = after_count, query_limit

    def __call__(self, name: str) -> Any:
        recorder, client = self, self.world.clients[name]

        class Proxy:
            def __getattr__(self, operation: str) -> Any:
                method = getattr(client, operation)

                def call(**params: Any) -> Any:
                    recorder.calls.append((operation, params))
                    hook = recorder.before.pop(operation, None)
                    if hook:
                        hook()
                    if operation == "query" and recorder.query_limit:
                        params = {**params, "Limit": recorder.query_limit}
                    response = method(**params)
                    last_page = (operation == "query" and "LastEvaluatedKey" not in response
                                 and params["ExpressionAttributeValues"][":state"]["S"] == "RUNNING")
                    if last_page and recorder.after_count:
                        hook, recorder.after_count = recorder.after_count, None
                        hook()
                    return response
                return call
        return Proxy()

    def named(self, operation: str) -> list[dict[str, Any]]:
        return [params for op, params in self.calls if op == operation]


def reconcile(world: World, clients: Any = None) -> tuple[dict, list[dict]]:
    lines: list[str] = []
    result = capacity.reconcile(settings(world), clients=clients or Recorder(world), write=lines.append)
    return result, [json.loads(line) for line in lines]


# --- decisions -------------------------------------------------------------------------

def test_raises_the_desired_capacity_to_the_pending_and_running_runs(world) -> None:
    shape_group(world, desired=0, max_size=5)
    add_runs(world, "PENDING", "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
    clients = Recorder(world)
    result, [line] = reconcile(world, clients)
    assert world.desired_capacity() == 3
    assert clients.named("set_desired_capacity") == [{
        "AutoScalingGroupName": world.outputs["AutoScalingGroupName"], "DesiredCapacity": 3,
        "HonorCooldown": False}]
    assert result == {"action": "raise", "reason": "below_active_runs", "active": 3, "desired_capacity": 3}
    assert line == {"event": "capacity_decision", "group": world.outputs["AutoScalingGroupName"],
                    "action": "raise", "reason": "below_active_runs", "pending": 2, "running": 1,
                    "active": 3, "desired_capacity": 0, "new_desired_capacity": 3, "min_size": 0,
                    "max_size": 5, "ignored": 0, "ignored_items": []}


def test_the_raise_is_capped_by_the_group_maximum(world) -> None:
    maximum = world.config.training.max_capacity
    shape_group(world, desired=0, max_size=maximum)
    add_runs(world, *["PENDING"] * (maximum + 2))
    result, [line] = reconcile(world)
    assert world.desired_capacity() == maximum
    assert (result["action"], result["reason"]) == ("raise", "capped_by_max_size")
    assert line["active"] == maximum + 2 and line["new_desired_capacity"] == maximum


@pytest.mark.parametrize(("desired", "active", "reason"), [
    (3, 1, "enough_capacity"), (2, 2, "enough_capacity"), (2, 0, "no_active_runs")])
def test_never_lowers_the_desired_capacity(world, desired, active, reason) -> None:
    shape_group(world, desired=desired, max_size=5)
    add_runs(world, *["RUNNING"] * active)
    clients = Recorder(world)
    result, [line] = reconcile(world, clients)
    assert world.desired_capacity() == desired
    assert clients.named("set_desired_capacity") == []
    assert (line["action"], line["reason"], line["new_desired_capacity"]) == ("none", reason, desired)


def test_a_closed_fleet_is_left_alone_and_its_runs_wait(world) -> None:
    # Off hours: the evening action set minimum, desired and maximum to 0.
    shape_group(world, desired=0, max_size=0)
    add_runs(world, "PENDING", "PENDING")
    clients = Recorder(world)
    result, [line] = reconcile(world, clients)
    assert world.desired_capacity() == 0
    assert clients.named("set_desired_capacity") == []
    assert (line["action"], line["reason"], line["active"], line["max_size"]) == ("none", "fleet_closed", 2, 0)


def test_counts_every_page_of_the_index(world) -> None:
    shape_group(world, desired=0, max_size=10)
    add_runs(world, *["PENDING"] * 5, *["RUNNING"] * 3)
    clients = Recorder(world, query_limit=2)
    result, _ = reconcile(world, clients)
    queries = clients.named("query")
    # 5 PENDING in pages of 2 (3 pages, the last without LastEvaluatedKey),
    # 3 RUNNING in 2 pages: every page after the first starts where the last ended.
    assert len(queries) >= 5
    assert sum("ExclusiveStartKey" in q for q in queries) >= 3
    assert all(q["IndexName"] == "by-state" for q in queries)
    assert result["active"] == 8 and world.desired_capacity() == 8


def test_malformed_and_uncarriable_items_are_logged_and_not_counted(world) -> None:
    shape_group(world, desired=0, max_size=10)
    [good] = add_runs(world, "PENDING")
    too_many = world.config.training.max_gpus_per_instance + 1
    base = {"name": "x", "created_at": "2026-11-29T14:00:00Z", "updated_at": "2026-11-29T14:00:00Z",
            "failures": 0, "attempt_count": 0, "attempts": []}
    bad = {
        "hand-written": {"run_id": "hand-written", "state": "PENDING", "spec": {"gpus": 1}},
        "nospec-0000000a": {"run_id": "nospec-0000000a", "state": "PENDING"},
        "text-0000000b": {"run_id": "text-0000000b", "state": "RUNNING", "spec": {"gpus": "one"}},
        "zero-0000000c": {"run_id": "zero-0000000c", "state": "PENDING", "spec": {"gpus": 0}},
        "huge-0000000d": {"run_id": "huge-0000000d", "state": "PENDING", "spec": {"gpus": too_many}},
    }
    for item in bad.values():
        world.clients["dynamodb"].put_item(TableName=world.table, Item=_dump({**base, **item}))
    result, [line] = reconcile(world)
    assert result["active"] == 1 and world.desired_capacity() == 1
    assert line["ignored"] == len(bad)
    reasons = {i["run_id"]: i["reason"] for i in line["ignored_items"]}
    assert reasons == {"hand-written": "malformed_run_id", "nospec-0000000a": "malformed_spec_gpus",
                       "text-0000000b": "malformed_spec_gpus", "zero-0000000c": "malformed_spec_gpus",
                       "huge-0000000d": "needs_more_gpus_than_any_instance"}
    assert good not in reasons


# --- idempotence and overlap -----------------------------------------------------------

def test_a_second_invocation_changes_nothing(world) -> None:
    shape_group(world, desired=0, max_size=5)
    add_runs(world, "PENDING", "RUNNING")
    first, second = Recorder(world), Recorder(world)
    reconcile(world, first)
    result, [line] = reconcile(world, second)
    assert world.desired_capacity() == 2
    assert len(first.named("set_desired_capacity")) == 1 and second.named("set_desired_capacity") == []
    assert (line["action"], line["reason"]) == ("none", "enough_capacity")


def test_an_invocation_overtaken_by_a_newer_one_never_undoes_its_raise(world) -> None:
    """A counts 2 runs; right after A's count, a third run is submitted and B
    raises the fleet to 3. A reads the group after its count, so it sees 3 and
    leaves it: a stale count never lowers a newer raise (reading the group
    before counting would set 2 here)."""
    shape_group(world, desired=0, max_size=5)
    add_runs(world, "PENDING", "PENDING")
    results: list[dict] = []

    def overtake() -> None:
        add_runs(world, "PENDING")
        results.append(reconcile(world)[0])

    stale = Recorder(world, after_count=overtake)
    result, [line] = reconcile(world, stale)
    assert results == [{"action": "raise", "reason": "below_active_runs", "active": 3, "desired_capacity": 3}]
    assert (line["active"], line["desired_capacity"], line["action"]) == (2, 3, "none")
    assert stale.named("set_desired_capacity") == []
    assert world.desired_capacity() == 3


def test_concurrent_invocations_agree(world) -> None:
    shape_group(world, desired=1, max_size=5)
    add_runs(world, "PENDING", "PENDING", "RUNNING", "RUNNING")
    outcomes: list[Any] = []

    def invoke() -> None:
        try:
            outcomes.append(reconcile(world)[0]["desired_capacity"])
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            outcomes.append(error)

    threads = [threading.Thread(target=invoke) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == [4, 4, 4, 4]
    assert world.desired_capacity() == 4


# --- the gaps it closes ----------------------------------------------------------------

def test_a_run_released_by_the_off_hours_scale_in_gets_an_instance_in_the_morning(world) -> None:
    maximum = world.config.training.max_capacity
    shape_group(world, desired=1, max_size=maximum)
    [run_id] = add_runs(world, "RUNNING")
    # Evening: the fleet closes; the agent checkpoints and releases the run.
    shape_group(world, desired=0, max_size=0)
    world.update(run_id, state="PENDING")
    assert reconcile(world)[1][0]["reason"] == "fleet_closed"
    assert world.desired_capacity() == 0
    # Morning: the scheduled action restores minimum and maximum, not desired.
    shape_group(world, desired=0, max_size=maximum)
    result, _ = reconcile(world)
    assert result["action"] == "raise" and world.desired_capacity() == 1


def test_a_job_finished_scale_down_after_a_submit_is_undone(world) -> None:
    shape_group(world, desired=1, max_size=5)
    add_runs(world, "PENDING")  # submitted; the CLI raised the fleet to 1 ...
    world.set_desired_capacity(0)  # ... and a late job-finished event scaled it to its minimum
    reconcile(world)
    assert world.desired_capacity() == 1


# --- AWS errors ------------------------------------------------------------------------

def _stubbed(world: World, service: str) -> tuple[Any, Stubber]:
    import boto3

    client = boto3.client(service, region_name=world.config.region)
    return client, Stubber(client)


@pytest.mark.parametrize("code", ["ThrottlingException", "AccessDeniedException"])
def test_a_failed_count_is_logged_and_raised_and_nothing_is_changed(world, code) -> None:
    shape_group(world, desired=0, max_size=5)
    dynamodb, stub = _stubbed(world, "dynamodb")
    stub.add_client_error("query", service_error_code=code, service_message="Rate exceeded")
    calls = Recorder(world)
    clients = lambda name: dynamodb if name == "dynamodb" else calls(name)  # noqa: E731
    lines: list[str] = []
    with stub, pytest.raises(ClientError) as raised:
        capacity.reconcile(settings(world), clients=clients, write=lines.append)
    assert raised.value.response["Error"]["Code"] == code
    [line] = [json.loads(line) for line in lines]
    assert line["event"] == "capacity_failed" and line["error_code"] == code
    assert calls.calls == [] and world.desired_capacity() == 0


@pytest.mark.parametrize("code", ["Throttling", "AccessDenied"])
def test_a_refused_raise_is_logged_and_raised(world, code) -> None:
    add_runs(world, "PENDING")
    autoscaling, stub = _stubbed(world, "autoscaling")
    group = world.outputs["AutoScalingGroupName"]
    stub.add_response("describe_auto_scaling_groups", {"AutoScalingGroups": [{
        "AutoScalingGroupName": group, "MinSize": 0, "MaxSize": 5, "DesiredCapacity": 0,
        "DefaultCooldown": 300, "AvailabilityZones": ["us-east-1a"], "HealthCheckType": "EC2",
        "CreatedTime": world.now}]}, {"AutoScalingGroupNames": [group]})
    stub.add_client_error("set_desired_capacity", service_error_code=code, service_message="denied",
                          expected_params={"AutoScalingGroupName": group, "DesiredCapacity": 1,
                                           "HonorCooldown": False})
    clients = lambda name: autoscaling if name == "autoscaling" else world.clients[name]  # noqa: E731
    lines: list[str] = []
    with stub, pytest.raises(ClientError):
        capacity.reconcile(settings(world), clients=clients, write=lines.append)
    stub.assert_no_pending_responses()
    [line] = [json.loads(line) for line in lines]
    assert (line["event"], line["error_code"], line["group"]) == ("capacity_failed", code, group)


def test_a_missing_group_is_logged_and_raised(world) -> None:
    add_runs(world, "PENDING")
    wrong = capacity.Settings(table=world.table, index="by-state", group="ml-dev-training-gone", max_gpus=1)
    lines: list[str] = []
    with pytest.raises(LookupError, match="ml-dev-training-gone"):
        capacity.reconcile(wrong, clients=world.clients.__getitem__, write=lines.append)
    assert json.loads(lines[0])["event"] == "capacity_failed"


def test_the_handler_reads_its_settings_from_the_environment(world, monkeypatch) -> None:
    shape_group(world, desired=0, max_size=5)
    add_runs(world, "PENDING")
    for key, value in {"RUNS_TABLE": world.table, "STATE_INDEX": "by-state",
                       "GROUP_NAME": world.outputs["AutoScalingGroupName"],
                       "MAX_GPUS_PER_INSTANCE": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(capacity, "_clients", {})
    monkeypatch.setenv("AWS_DEFAULT_REGION", world.config.region)
    result = capacity.handler({"source": "aws.events", "detail-type": "Scheduled Event"}, None)
    assert result["desired_capacity"] == 1 and world.desired_capacity() == 1
