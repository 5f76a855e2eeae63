"""The ml_runs CLI against a deployed stage in moto: what it writes, what it
scales, what it prints, and how it fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ml_runs.world import World

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "runs" / "example-trainer.json"


def spec_file(tmp_path: Path, **fields) -> Path:
    spec = {"name": "resnet", "image": "ghcr.io/acme/trainer:1.2", "command": ["python", "train.py"],
            **fields}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({k: v for k, v in spec.items() if v is not None}))
    return path


def submit(world: World, tmp_path: Path, **fields) -> str:
    result = world.cli("submit", str(spec_file(tmp_path, **fields)))
    assert result.status == 0, result.err
    return result.out.strip()


# --- submit ----------------------------------------------------------------------------

def test_submit_writes_a_pending_run_per_the_contract_and_raises_capacity(world, tmp_path) -> None:
    run_id = submit(world, tmp_path, args=["--lr", "0.1"], environment={"SEED": "7"}, gpus=1)
    name, suffix = run_id.rsplit("-", 1)
    assert name == "resnet" and len(suffix) == 8 and int(suffix, 16) >= 0
    item = world.item(run_id)
    training = world.config.training
    assert item == {
        "run_id": run_id, "name": "resnet", "state": "PENDING",
        "spec": {"image": "ghcr.io/acme/trainer:1.2", "command": ["python", "train.py"],
                 "args": ["--lr", "0.1"], "environment": {"SEED": "7"}, "gpus": 1,
                 "max_failures": training.run_default_max_failures,
                 "max_duration_minutes": training.run_default_max_duration_minutes},
        "created_at": "2026-11-29T14:00:00Z", "updated_at": "2026-11-29T14:00:00Z",
        "failures": 0, "attempt_count": 0, "attempts": [],
    }
    assert world.desired_capacity() == 1


def test_capacity_follows_pending_and_running_runs_up_to_the_group_maximum(world, tmp_path) -> None:
    maximum = world.config.training.max_capacity
    ids = [submit(world, tmp_path) for _ in range(maximum + 1)]
    assert world.desired_capacity() == maximum
    world.update(ids[0], state="RUNNING", lease_holder="i-0a1b2c3d4e5f60718", lease_expires_at=0)
    result = world.cli("submit", str(spec_file(tmp_path)))
    assert world.desired_capacity() == maximum
    # maximum + 2 runs are pending or running: two wait.
    assert "2 run(s) wait for an instance" in result.err


def test_submit_never_lowers_a_larger_desired_capacity(world, tmp_path) -> None:
    world.set_desired_capacity(2)
    submit(world, tmp_path)
    assert world.desired_capacity() == 2


def test_submit_to_a_closed_fleet_queues_the_run_and_says_when_it_reopens(world, tmp_path) -> None:
    # Off hours: the evening scheduled action set minimum, desired and maximum to 0.
    world.clients["autoscaling"].update_auto_scaling_group(
        AutoScalingGroupName=world.outputs["AutoScalingGroupName"], MinSize=0, MaxSize=0,
        DesiredCapacity=0)
    result = world.cli("submit", str(spec_file(tmp_path)))
    assert result.status == 0, result.err
    run_id = result.out.strip()
    assert world.item(run_id)["state"] == "PENDING"
    assert world.desired_capacity() == 0
    idle = world.config.idle_shutdown
    assert result.err == (f"submitted run {run_id} (PENDING); {world.outputs['AutoScalingGroupName']} "
                          f"is closed (MaxSize 0, off hours: it reopens at "
                          f"'{idle.off_hours_scale_out_cron}' {idle.off_hours_time_zone}): the run is "
                          "queued and starts by itself when the fleet reopens\n")


def test_the_example_spec_is_valid_for_every_stage(world) -> None:
    result = world.cli("submit", str(EXAMPLE))
    assert result.status == 0, result.err
    assert world.item(result.out.strip())["spec"]["image"] == json.loads(EXAMPLE.read_text())["image"]


def test_yaml_specs_are_read_too(world, tmp_path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("name: bert\nimage: bert-trainer:3\ncommand: [python, train.py]\ngpus: 1\n")
    result = world.cli("submit", str(path))
    assert result.status == 0, result.err
    assert world.item(result.out.strip())["spec"]["command"] == ["python", "train.py"]


def test_a_bad_spec_is_one_line_and_writes_nothing(world, tmp_path) -> None:
    result = world.cli("submit", str(spec_file(tmp_path, gpus=64)))
    maximum = world.config.training.max_gpus_per_instance
    assert result.status == 1
    assert result.err.startswith(f"error: spec.gpus: 64 is not allowed — 1 to {maximum} ")
    assert world.config.training.instance_types[0] in result.err
    assert result.err.count("\n") == 1
    assert world.cli("list").out.strip() == "no runs"
    assert world.desired_capacity() == 0


# --- list / show -----------------------------------------------------------------------

def test_list_shows_runs_newest_first_with_attempts_failures_and_age(world, tmp_path) -> None:
    first = submit(world, tmp_path)
    world.later(hours=2, minutes=5)
    second = submit(world, tmp_path, name="bert")
    world.update(first, state="RUNNING", attempt_count=2, failures=1)
    world.later(minutes=1)
    lines = world.cli("list").out.splitlines()
    assert lines[0].split() == ["RUN", "ID", "STATE", "ATTEMPTS", "FAILURES", "AGE"]
    assert lines[1].split() == [second, "PENDING", "0", f"0/{world.config.training.run_default_max_failures}", "1m"]
    assert lines[2].split() == [first, "RUNNING", "2", f"1/{world.config.training.run_default_max_failures}", "2h06m"]
    only = world.cli("list", "--state", "RUNNING").out.splitlines()
    assert [line.split()[0] for line in only[1:]] == [first]


def test_show_prints_state_attempts_and_last_checkpoint(world, tmp_path) -> None:
    run_id = submit(world, tmp_path)
    checkpoint = f"s3://{world.outputs['CheckpointBucketName']}/runs/{run_id}/20261129T141500000000Z/"
    world.update(run_id, state="PENDING", attempt_count=2, failures=1, started_at="2026-11-29T14:01:00Z",
                 last_checkpoint=checkpoint, attempts=[
                     {"attempt": 1, "instance_id": "i-0aaaaaaaaaaaaaaa1", "started_at": "2026-11-29T14:01:00Z",
                      "ended_at": "2026-11-29T14:20:00Z", "end_reason": "reclaimed",
                      "detail": "spot-interruption"},
                     {"attempt": 2, "instance_id": "i-0bbbbbbbbbbbbbbb2", "started_at": "2026-11-29T14:25:00Z",
                      "ended_at": "2026-11-29T14:40:00Z", "end_reason": "failed", "exit_code": 137}])
    text = world.cli("show", run_id).out
    assert f"last checkpoint  {checkpoint}" in text
    assert "state            PENDING" in text and "failures         1 of 3" in text
    rows = text.split("attempts\n")[1].splitlines()
    assert rows[1].split() == ["1", "i-0aaaaaaaaaaaaaaa1", "2026-11-29T14:01:00Z", "2026-11-29T14:20:00Z",
                               "reclaimed", "-", "spot-interruption"]
    assert rows[2].split() == ["2", "i-0bbbbbbbbbbbbbbb2", "2026-11-29T14:25:00Z", "2026-11-29T14:40:00Z",
                               "failed", "137", "-"]


def test_show_of_an_unknown_run_is_one_line(world) -> None:
    result = world.cli("show", "nope-12345678")
    assert (result.status, result.err) == (1, "error: run nope-12345678 not found in stage dev "
                                              "(`make run STAGE=dev ARGS=list` lists the runs)\n")


# --- cancel ----------------------------------------------------------------------------

def test_cancel_of_the_last_pending_run_puts_no_event_and_says_the_sweep_stops_the_fleet(
        world, tmp_path) -> None:
    run_id = submit(world, tmp_path)
    world.later(minutes=3)
    # The CLI may not announce "job finished" (only the stage's instances
    # may): without an events client, any attempt would fail the command.
    del world.clients["events"]
    result = world.cli("cancel", run_id)
    assert (result.status, result.out) == (0, f"run {run_id} CANCELLED\n")
    idle = world.config.idle_shutdown
    assert result.err == (f"no run left: the idle-GPU sweep stops {world.outputs['AutoScalingGroupName']}'s "
                          f"idle instances (idle for {idle.window_minutes} min, launched at least "
                          f"{idle.launch_grace_minutes} min ago)\n")
    item = world.item(run_id)
    assert (item["state"], item["end_reason"], item["ended_at"]) == ("CANCELLED", "cancelled", "2026-11-29T14:03:00Z")
    assert world.desired_capacity() == 1  # lowered by the sweep, not by the CLI


def test_cancel_with_runs_left_says_nothing_about_the_fleet(world, tmp_path) -> None:
    first, _ = submit(world, tmp_path), submit(world, tmp_path)
    result = world.cli("cancel", first)
    assert (result.status, result.out, result.err) == (0, f"run {first} CANCELLED\n", "")


def test_cancel_of_a_running_run_asks_its_holder(world, tmp_path) -> None:
    run_id = submit(world, tmp_path)
    lease = int(world.now.timestamp()) + world.config.training.lease_seconds
    world.update(run_id, state="RUNNING", lease_holder="i-0123456789abcdef0", lease_expires_at=lease,
                 attempt_count=1)
    result = world.cli("cancel", run_id)
    assert result.out.startswith("cancel requested: i-0123456789abcdef0 stops run")
    item = world.item(run_id)
    assert (item["state"], item["cancel_requested"]) == ("RUNNING", True)
    assert "RUNNING (cancel requested)" in world.cli("show", run_id).out


def test_cancel_of_a_running_run_whose_holder_vanished_cancels_it_and_closes_the_attempt(world, tmp_path) -> None:
    run_id = submit(world, tmp_path)
    world.update(run_id, state="RUNNING", lease_holder="i-0123456789abcdef0",
                 lease_expires_at=int(world.now.timestamp()) - 1, attempt_count=1,
                 attempts=[{"attempt": 1, "instance_id": "i-0123456789abcdef0",
                            "started_at": "2026-11-29T13:00:00Z"}])
    assert world.cli("cancel", run_id).status == 0
    item = world.item(run_id)
    assert item["state"] == "CANCELLED"
    assert "lease_holder" not in item and "lease_expires_at" not in item
    assert item["attempts"][0] == {"attempt": 1, "instance_id": "i-0123456789abcdef0",
                                   "started_at": "2026-11-29T13:00:00Z", "ended_at": "2026-11-29T14:00:00Z",
                                   "end_reason": "cancelled", "detail": "lease-expired"}


@pytest.mark.parametrize("state", ["SUCCEEDED", "FAILED", "CANCELLED"])
def test_cancel_of_a_finished_run_names_its_state(world, tmp_path, state) -> None:
    run_id = submit(world, tmp_path)
    world.update(run_id, state=state)
    result = world.cli("cancel", run_id)
    assert (result.status, result.err) == (
        1, f"error: run {run_id} is already {state}: only PENDING or RUNNING runs can be cancelled\n")


# --- logs ------------------------------------------------------------------------------

def test_logs_print_every_attempt_of_the_run_only(world, tmp_path) -> None:
    run_id = submit(world, tmp_path)
    world.log(f"{run_id}/1-i-0aaaaaaaaaaaaaaa1", "step 1", "step 2")
    world.log(f"{run_id}/2-i-0bbbbbbbbbbbbbbb2", "resumed at step 2", at=world.now.replace(minute=5))
    world.log("other-run-00000000/1-i-0ccccccccccccccc3", "not mine")
    out = world.cli("logs", run_id).out
    assert out.splitlines() == ["[1-i-0aaaaaaaaaaaaaaa1] step 1", "[1-i-0aaaaaaaaaaaaaaa1] step 2",
                                "[2-i-0bbbbbbbbbbbbbbb2] resumed at step 2"]


def test_logs_follow_polls_until_the_run_ends_and_prints_each_line_once(world, tmp_path) -> None:
    run_id = submit(world, tmp_path)
    stream = f"{run_id}/1-i-0aaaaaaaaaaaaaaa1"
    world.log(stream, "step 1")
    polls = iter([("step 2",), ("step 3",)])

    def tick(seconds: float) -> None:
        world.slept.append(seconds)
        lines = next(polls, None)
        if lines is None:
            world.update(run_id, state="SUCCEEDED")
        else:
            world.log(stream, *lines, at=world.now.replace(second=len(world.slept)))
    result = world.cli("logs", run_id, "--follow", "--poll-seconds", "2", sleep=tick)
    assert [line.split("] ")[1] for line in result.out.splitlines()] == ["step 1", "step 2", "step 3"]
    assert world.slept == [2.0, 2.0, 2.0]
    assert result.err == f"run {run_id} is SUCCEEDED\n"


def test_logs_follow_stops_after_its_bound(world, tmp_path) -> None:
    run_id = submit(world, tmp_path)
    result = world.cli("logs", run_id, "--follow", "--poll-seconds", "30", "--follow-minutes", "2")
    assert world.slept == [30.0] * 4
    assert result.err == f"stopped following after 2 minutes; run {run_id} is still PENDING\n"


# --- stage resolution ------------------------------------------------------------------

def test_a_stage_that_is_not_deployed_is_one_line(world) -> None:
    world.clients["cloudformation"].delete_stack(StackName="ml-dev-training")
    result = world.cli("list")
    assert (result.status, result.err) == (
        1, "error: stack ml-dev-training is not deployed in us-east-1 (make deploy STAGE=dev)\n")


def test_an_aws_rejection_is_one_line(world, tmp_path) -> None:
    run_id = submit(world, tmp_path)
    world.clients["logs"].delete_log_group(logGroupName=world.outputs["RunsLogGroupName"])
    result = world.cli("logs", run_id)
    assert result.status == 1
    assert result.err.startswith("error: AWS rejected FilterLogEvents (ResourceNotFoundException: ")
    assert result.err.count("\n") == 1


def test_a_submitted_run_is_named_when_the_fleet_cannot_be_raised(world, tmp_path) -> None:
    world.clients["autoscaling"].delete_auto_scaling_group(
        AutoScalingGroupName=world.outputs["AutoScalingGroupName"], ForceDelete=True)
    result = world.cli("submit", str(spec_file(tmp_path)))
    run_id = result.out.strip()
    assert result.status == 1
    assert result.err.startswith(f"error: run {run_id} is submitted (PENDING), but the fleet's desired "
                                 "capacity was not raised (Auto Scaling group ")
    assert world.item(run_id)["state"] == "PENDING"
    rate = world.config.training.runs_capacity_rate_minutes
    assert result.err.endswith(f"the runs capacity function raises it within {rate} minutes once the "
                               "group is reachable; do not submit it again\n")


@pytest.mark.parametrize(("enabled", "dry_run", "says"), [
    (False, False, "idle shutdown is off in stage dev: lower g's desired capacity yourself"),
    (True, True, "idle shutdown only reports in stage dev: lower g's desired capacity yourself"),
])
def test_cancel_says_who_lowers_the_fleet_when_the_sweep_stops_nothing(enabled, dry_run, says) -> None:
    from dataclasses import replace

    from ml_runs.cli import _idle_fate
    from ml_stacks.config import default_configs

    dev = default_configs()["dev"]
    dev = replace(dev, idle_shutdown=replace(dev.idle_shutdown, enabled=enabled, dry_run=dry_run))
    assert _idle_fate(dev, "g") == says
