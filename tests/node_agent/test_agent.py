"""The node agent's checkpoint flow and IMDS watch (node_agent/ml_node_agent.py), step by step and whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from tests.node_agent.drill import AGENT, FakeImds
from tests.node_agent.helpers import (
    BUCKET, GROUP, HOOK, INSTANCE, OTHER_INSTANCE, RUN_ID, TOKEN, Cloud, FakeClock, RecordingAutoscaling,
    RecordingS3, Runner, StaticImds, base_env, make_config, write_checkpoint)

CONTAINER = f"ml-run-{RUN_ID}-1"


@pytest.fixture
def cloud(aws_env):
    with mock_aws():
        yield Cloud()


@pytest.fixture
def s3(cloud):
    return cloud.s3


def lifecycle(agent):
    return agent.LifecycleAction(hook_name=HOOK, autoscaling_group_name=GROUP, token=TOKEN)


def expected_lifecycle_params(**extra):
    params = {"LifecycleHookName": HOOK, "AutoScalingGroupName": GROUP, "LifecycleActionToken": TOKEN,
              "InstanceId": INSTANCE}
    params.update(extra)
    return params


def make_agent(agent, tmp_path, logs, cloud, *, runner, autoscaling=None, clock=None, imds=None, s3=None, **env):
    config = make_config(agent, tmp_path, **env)
    config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if clock is not None:
        kwargs.update(clock=clock.time, sleep=clock.sleep)
    return agent.Agent(config, imds=imds or StaticImds(), s3=s3 or cloud.s3,
                       autoscaling=autoscaling or RecordingAutoscaling(), dynamodb=cloud.dynamodb, sns=cloud.sns,
                       events=cloud.events, log=agent.JsonLog(logs.stream), run=runner, marker_poll_seconds=0.05,
                       follower_poll_seconds=0.05, **kwargs)


def hold_current_run(agent, tmp_path, cloud, phase="running", **fields):
    """This instance holds RUN_ID: in the table and in its state dir, its trainer in CONTAINER."""
    cloud.hold_run(**fields)
    agent.NodeState(tmp_path / "state").set_current_run(
        {"run_id": RUN_ID, "attempt": 1, "phase": phase, "instance_id": INSTANCE, "launcher": "docker",
         "container": CONTAINER})


# ----------------------------------------------------------------------------- config


def test_config_defaults_signal_budget_heartbeat_and_run_settings(agent, tmp_path):
    config = make_config(agent, tmp_path, ML_TRAINING_SIGNAL=None, ML_CHECKPOINT_BUDGET_SECONDS=None,
                         ML_HEARTBEAT_SECONDS=None, ML_CHECKPOINT_DONE_MARKER=None, ML_IMDS_ENDPOINT=None,
                         ML_TRAINER_LAUNCHER=None)
    assert config.training_signal == "SIGUSR1"
    assert (config.budget_seconds, config.heartbeat_seconds) == (90, 30)
    assert config.done_marker == "CHECKPOINT_DONE"
    assert config.imds_endpoint == "http://169.254.169.254"
    assert (config.launcher, config.event_bus_name) == ("docker", "default")
    assert (config.lease_seconds, config.lease_renew_seconds, config.claim_poll_seconds) == (90, 30, 15)
    assert config.gpu_count is None


def test_config_fails_naming_every_missing_variable(agent, tmp_path):
    names = ("ML_CHECKPOINT_BUCKET", "ML_CHECKPOINT_DIR", "AWS_REGION", "ML_STAGE", "ML_RUNS_TABLE",
             "ML_RUNS_LOG_GROUP", "ML_ALERTS_TOPIC_ARN")
    with pytest.raises(agent.ConfigError) as error:
        agent.Config.from_env(base_env(tmp_path, **{name: None for name in names}))
    for name in names:
        assert f"{name} is not set" in str(error.value)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ML_TRAINING_SIGNAL", "SIGNOPE", "ML_TRAINING_SIGNAL='SIGNOPE' is not a signal name"),
        ("ML_CHECKPOINT_BUDGET_SECONDS", "soon", "ML_CHECKPOINT_BUDGET_SECONDS='soon' is not a number"),
        ("ML_HEARTBEAT_SECONDS", "0", "ML_HEARTBEAT_SECONDS='0' is out of range (1 to 7200 seconds)"),
        ("ML_CHECKPOINT_DIR", "relative/dir", "ML_CHECKPOINT_DIR='relative/dir' is not an absolute path"),
        ("ML_CHECKPOINT_DONE_MARKER", "a/b", "ML_CHECKPOINT_DONE_MARKER='a/b' is not a plain file name"),
        ("ML_TRAINER_LAUNCHER", "podman", "ML_TRAINER_LAUNCHER='podman' is not one of docker, process"),
        ("ML_LEASE_RENEW_SECONDS", "90", "ML_LEASE_RENEW_SECONDS=90 must be shorter than ML_LEASE_SECONDS=90"),
        ("ML_GPU_COUNT", "eight", "ML_GPU_COUNT='eight' is not a whole number of GPUs"),
        ("ML_CLAIM_POLL_SECONDS", "0", "ML_CLAIM_POLL_SECONDS='0' is out of range"),
    ],
)
def test_config_fails_on_invalid_value_with_name_value_and_allowed(agent, tmp_path, name, value, message):
    with pytest.raises(agent.ConfigError) as error:
        make_config(agent, tmp_path, **{name: value})
    assert message in str(error.value)


def test_config_accepts_signal_without_sig_prefix(agent, tmp_path):
    assert make_config(agent, tmp_path, ML_TRAINING_SIGNAL="usr2").training_signal == "SIGUSR2"


def test_env_file_fills_in_what_the_environment_lacks(agent, tmp_path):
    env_file = tmp_path / "agent.env"
    env_file.write_text('# comment\nML_CHECKPOINT_BUCKET="from-file"\nML_RUNS_TABLE="a \\"quoted\\" table"\n'
                        "AWS_REGION=eu-west-1\n")
    merged = agent.merged_environment({"ML_ENV_FILE": str(env_file), "AWS_REGION": "us-east-1"})
    assert merged["ML_CHECKPOINT_BUCKET"] == "from-file"
    assert merged["ML_RUNS_TABLE"] == 'a "quoted" table'
    assert merged["AWS_REGION"] == "us-east-1"  # the environment wins


# ----------------------------------------------------------------------------- IMDS


def test_imds_fetches_a_token_once_and_sends_it_with_every_get(agent):
    with FakeImds(instance_id=INSTANCE) as imds:
        client = agent.Imds(imds.url)
        assert client.instance_id() == INSTANCE
        assert client.spot_instance_action() is None  # 404: no notice yet
        imds.announce()
        notice = client.spot_instance_action()
    assert notice["action"] == "terminate" and notice["time"].endswith("Z")
    assert imds.token_requests == 1
    assert imds.gets == ["/latest/meta-data/instance-id"] + ["/latest/meta-data/spot/instance-action"] * 2


def test_imds_refetches_the_token_after_a_401(agent):
    with FakeImds() as imds:
        client = agent.Imds(imds.url)
        client.spot_instance_action()
        imds.token = "rotated"
        assert client.spot_instance_action() is None
    assert imds.token_requests == 2


@pytest.mark.parametrize("fault", ["500", "reset", "truncated", "non-utf8", "timeout"])
def test_imds_read_retries_one_bad_answer_and_returns_the_instance_id(agent, fault):
    with FakeImds(instance_id=INSTANCE, faults=[fault], timeout_fault_seconds=0.6) as imds:
        client = agent.Imds(imds.url, timeout_seconds=0.3, retry_seconds=10)
        assert client.instance_id() == INSTANCE
    assert imds.faults_served == [fault]
    assert imds.gets.count("/latest/meta-data/instance-id") == 2


@pytest.mark.parametrize("fault", ["truncated", "non-utf8", "reset"])
def test_imds_spot_action_survives_a_garbled_body(agent, fault):
    with FakeImds(faults=[fault]) as imds:
        imds.announce()
        notice = agent.Imds(imds.url, timeout_seconds=0.3).spot_instance_action()
    assert notice["action"] == "terminate"


def test_imds_that_keeps_failing_raises_imds_error_at_the_deadline(agent):
    with FakeImds(faults=["500"] * 1000) as imds:
        client = agent.Imds(imds.url, timeout_seconds=0.3, retry_seconds=0.5)
        started = time.monotonic()
        with pytest.raises(agent.ImdsError, match="HTTP 500"):
            client.instance_id()
    assert time.monotonic() - started < 30  # bounded (generous: a slow machine must not fail this)


def test_imds_garbled_bodies_only_ever_raise_imds_error(agent):
    with FakeImds(faults=["non-utf8", "truncated"] * 500) as imds:
        with pytest.raises(agent.ImdsError):
            agent.Imds(imds.url, timeout_seconds=0.3, retry_seconds=0.3).instance_id()


def test_imds_unreachable_falls_back_to_the_instance_id_read_earlier_on_this_boot(agent, tmp_path):
    with FakeImds(instance_id=INSTANCE) as imds:
        assert agent.Imds(imds.url, cache_dir=tmp_path).instance_id() == INSTANCE
        url = imds.url
    assert agent.Imds(url, timeout_seconds=0.2, retry_seconds=0.2, cache_dir=tmp_path).instance_id() == INSTANCE
    with pytest.raises(agent.ImdsError):
        agent.Imds(url, timeout_seconds=0.2, retry_seconds=0.2, cache_dir=tmp_path / "fresh").instance_id()


# ----------------------------------------------------------------------------- signal and stop


def test_signal_of_a_container_runs_docker_kill_with_the_configured_signal(agent, logs):
    runner = Runner()
    assert agent.signal_trainer({"container": CONTAINER}, "SIGUSR1", agent.JsonLog(logs.stream), run=runner)
    assert runner.commands == [["docker", "kill", "--signal=SIGUSR1", CONTAINER]]
    assert logs.steps("signal")[0]["signalled"] is True


def test_signal_of_a_gone_container_is_logged_not_raised(agent, logs):
    runner = Runner(returncode=1, stderr=f"Error response from daemon: No such container: {CONTAINER}\n")
    assert not agent.signal_trainer({"container": CONTAINER}, "SIGUSR1", agent.JsonLog(logs.stream), run=runner)
    line = logs.steps("signal")[0]
    assert line["level"] == "warning" and "No such container" in line["error"]


def test_signal_without_docker_is_logged_not_raised(agent, logs):
    runner = Runner(error=FileNotFoundError(2, "No such file or directory: 'docker'"))
    assert not agent.signal_trainer({"container": CONTAINER}, "SIGUSR1", agent.JsonLog(logs.stream), run=runner)
    assert logs.steps("signal")[0]["level"] == "error"


def test_signal_and_stop_of_a_local_process_trainer(agent, logs, tmp_path):
    ready = tmp_path / "ready"
    got = tmp_path / "got-usr1"
    code = ("import signal, pathlib, time\n"
            f"signal.signal(signal.SIGUSR1, lambda *a: pathlib.Path({str(got)!r}).write_text('1'))\n"
            f"pathlib.Path({str(ready)!r}).write_text('1')\n"
            "while True: time.sleep(0.05)\n")
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        log = agent.JsonLog(logs.stream)
        assert agent.signal_trainer({"pid": process.pid}, "SIGUSR1", log)
        while not got.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got.exists()
        agent.stop_trainer({"pid": process.pid}, log, grace_seconds=10)
        assert process.wait(timeout=30) == -15
    finally:
        process.kill()
        process.wait()


def test_a_trainer_that_already_exited_is_not_signalled_so_nobody_waits_for_its_answer(agent, logs):
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while agent._pid_alive(process.pid) and time.monotonic() < deadline:  # a zombie until reaped
        time.sleep(0.05)
    try:
        assert not agent.signal_trainer({"pid": process.pid}, "SIGUSR1", agent.JsonLog(logs.stream))
    finally:
        process.wait()
    assert logs.steps("signal")[0]["signalled"] is False


def test_signal_with_no_trainer_started_yet_is_not_sent(agent, logs):
    assert not agent.signal_trainer({"run_id": RUN_ID}, "SIGUSR1", agent.JsonLog(logs.stream), run=Runner())
    assert logs.steps("signal")[0]["error"] == "no trainer is running"


# ----------------------------------------------------------------------------- marker wait


def test_wait_ignores_a_marker_older_than_the_request(agent, tmp_path, logs):
    marker = tmp_path / "CHECKPOINT_DONE"
    marker.write_text("old")
    old = time.time() - 100
    os.utime(marker, (old, old))
    clock = FakeClock()
    requested = clock.now

    def trainer_finishes(now):
        if now - requested >= 3:
            marker.write_text("new")
            os.utime(marker, (requested + 3, requested + 3))

    clock.on_sleep = trainer_finishes
    mtime = agent.wait_for_marker(marker, requested, requested + 90, agent.JsonLog(logs.stream), before=old,
                                  clock=clock.time, sleep=clock.sleep, poll_seconds=0.5)
    assert mtime == pytest.approx(requested + 3)
    assert logs.steps("wait")[0]["found"] is True


def test_wait_accepts_a_new_marker_stamped_a_second_before_the_request_by_clock_skew(agent, tmp_path, logs):
    marker = tmp_path / "CHECKPOINT_DONE"
    clock = FakeClock()
    requested = clock.now

    def skewed_trainer(now):
        marker.write_text("answer")
        os.utime(marker, (requested - 1, requested - 1))

    clock.on_sleep = skewed_trainer
    mtime = agent.wait_for_marker(marker, requested, requested + 90, agent.JsonLog(logs.stream), before=None,
                                  clock=clock.time, sleep=clock.sleep, poll_seconds=0.5)
    assert mtime == pytest.approx(requested - 1)
    assert clock.now == pytest.approx(requested + 0.5)  # found at the first poll after it appeared


def test_wait_does_not_take_the_marker_that_was_there_before_the_signal_for_the_answer(agent, tmp_path, logs):
    marker = tmp_path / "CHECKPOINT_DONE"
    marker.write_text("periodic")
    clock = FakeClock()
    requested = clock.now
    os.utime(marker, (requested - 1, requested - 1))  # within the skew, but older than the signal
    mtime = agent.wait_for_marker(marker, requested, requested + 5, agent.JsonLog(logs.stream),
                                  before=requested - 1, clock=clock.time, sleep=clock.sleep, poll_seconds=0.5)
    assert mtime is None


def test_wait_gives_up_at_the_budget(agent, tmp_path, logs):
    clock = FakeClock()
    requested = clock.now
    mtime = agent.wait_for_marker(tmp_path / "CHECKPOINT_DONE", requested, requested + 90,
                                  agent.JsonLog(logs.stream), clock=clock.time, sleep=clock.sleep, poll_seconds=0.5)
    assert mtime is None
    assert clock.now == pytest.approx(requested + 90)
    line = logs.steps("wait")[0]
    assert line["found"] is False and line["level"] == "error"
# ----------------------------------------------------------------------------- heartbeat


def test_heartbeat_is_sent_at_once_then_every_interval(agent, logs, aws_env):
    client = boto3.client("autoscaling", region_name="us-east-1")
    clock = FakeClock(start=1000.0)
    beat = agent.Heartbeat(client, lifecycle(agent), INSTANCE, 30, agent.JsonLog(logs.stream), clock=clock.time)
    with Stubber(client) as stub:
        for _ in range(3):
            stub.add_response("record_lifecycle_action_heartbeat", {}, expected_lifecycle_params())
        for t in (0, 10, 29.9, 30, 45, 59.9, 60.5, 61):
            clock.now = 1000.0 + t
            beat.maybe_beat()
        stub.assert_no_pending_responses()
    assert beat.beats == 3  # t = 0, 30, 60.5


def test_heartbeat_stops_when_the_token_has_expired(agent, logs, aws_env):
    client = boto3.client("autoscaling", region_name="us-east-1")
    clock = FakeClock(start=0.0)
    beat = agent.Heartbeat(client, lifecycle(agent), INSTANCE, 30, agent.JsonLog(logs.stream), clock=clock.time)
    with Stubber(client) as stub:
        stub.add_client_error("record_lifecycle_action_heartbeat", service_error_code="ValidationError",
                              service_message=f"No active Lifecycle Action found with token {TOKEN}",
                              http_status_code=400, expected_params=expected_lifecycle_params())
        for t in (0, 30, 60, 90):  # an unexpected call would raise from the stubber
            clock.now = t
            beat.maybe_beat()
    assert beat.expired and beat.beats == 0
    assert logs.steps("heartbeat")[0]["expired"] is True



# ----------------------------------------------------------------------------- upload


def snapshot(agent, tmp_path, directory):
    return agent.snapshot_checkpoint(directory, "CHECKPOINT_DONE", tmp_path / "snap")[1]


def test_upload_layout_is_runs_then_stamp_and_latest_is_written_last(agent, s3, tmp_path, logs):
    s3.put_object(Bucket=BUCKET, Key=f"runs/{RUN_ID}/20260101T000000000000Z/model.bin", Body=b"previous")
    s3.put_object(Bucket=BUCKET, Key=f"runs/{RUN_ID}/LATEST", Body=f"runs/{RUN_ID}/20260101T000000000000Z/".encode())
    files = write_checkpoint(tmp_path / "ckpt")
    recording = RecordingS3(s3)
    prefix = agent.upload_checkpoint(recording, BUCKET, snapshot(agent, tmp_path, tmp_path / "ckpt"), RUN_ID,
                                     "20261123T090000123456Z", agent.JsonLog(logs.stream))
    assert prefix == f"runs/{RUN_ID}/20261123T090000123456Z/"
    listed = {item["Key"]: s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
              for item in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    for rel, data in files.items():
        assert listed[prefix + rel] == data
    assert listed[f"runs/{RUN_ID}/LATEST"] == prefix.encode()
    assert listed[f"runs/{RUN_ID}/20260101T000000000000Z/model.bin"] == b"previous"  # never deleted
    assert recording.writes[-1] == f"runs/{RUN_ID}/LATEST"
    assert sorted(recording.writes[:-1]) == sorted(prefix + rel for rel in files)


def test_stamp_has_microseconds_so_two_checkpoints_in_a_second_never_collide(agent):
    assert agent.utc_stamp(1795963726.123456) == "20261129T144846123456Z"


def test_upload_failure_leaves_the_previous_latest_in_place(agent, s3, tmp_path, logs):
    s3.put_object(Bucket=BUCKET, Key=f"runs/{RUN_ID}/LATEST", Body=b"runs/x/20260101T000000000000Z/")
    write_checkpoint(tmp_path / "ckpt")
    recording = RecordingS3(s3, fail_key_suffix="model.bin")
    with pytest.raises(agent.UploadError, match="model.bin"):
        agent.upload_checkpoint(recording, BUCKET, snapshot(agent, tmp_path, tmp_path / "ckpt"), RUN_ID,
                                "20261123T090000000000Z", agent.JsonLog(logs.stream))
    assert f"runs/{RUN_ID}/LATEST" not in recording.writes
    assert s3.get_object(Bucket=BUCKET, Key=f"runs/{RUN_ID}/LATEST")["Body"].read() == b"runs/x/20260101T000000000000Z/"


def test_upload_stops_at_its_deadline_and_never_writes_latest(agent, s3, tmp_path, logs):
    write_checkpoint(tmp_path / "ckpt")
    recording = RecordingS3(s3, stall_seconds=20)
    files = snapshot(agent, tmp_path, tmp_path / "ckpt")
    started = time.monotonic()
    with pytest.raises(agent.UploadError, match="deadline"):
        agent.upload_checkpoint(recording, BUCKET, files, RUN_ID, "20261123T090000000000Z",
                                agent.JsonLog(logs.stream), deadline_seconds=0.3)
    assert time.monotonic() - started < 15  # returned long before the stalled uploads would have
    assert f"runs/{RUN_ID}/LATEST" not in recording.writes


def test_snapshot_skips_symlinks(agent, tmp_path):
    write_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "link.bin").symlink_to(tmp_path / "ckpt" / "model.bin")
    assert "link.bin" not in {key for _, key in snapshot(agent, tmp_path, tmp_path / "ckpt")}


def test_snapshot_of_a_checkpoint_being_written_is_torn(agent, tmp_path):
    write_checkpoint(tmp_path / "ckpt")
    marker = tmp_path / "ckpt" / "CHECKPOINT_DONE"
    os.utime(marker, (time.time() - 10, time.time() - 10))
    (tmp_path / "ckpt" / "model.bin").write_bytes(b"half of the next checkpoint")  # newer than the marker
    with pytest.raises(agent.TornCheckpoint):
        snapshot(agent, tmp_path, tmp_path / "ckpt")


def test_snapshot_keeps_the_completed_checkpoint_while_the_next_one_replaces_files(agent, tmp_path):
    files = write_checkpoint(tmp_path / "ckpt")
    taken = dict((key, path) for path, key in snapshot(agent, tmp_path, tmp_path / "ckpt"))
    write_checkpoint(tmp_path / "ckpt", step=2)  # atomic replaces: new inodes
    assert taken["model.bin"].read_bytes() == files["model.bin"]


# Restores read a run no other test writes: a daemon thread another test left
# running (moto's mock is process-wide) uploads under RUN_ID and must not
# land in these prefixes.
RESTORED_RUN = "restore-only-9f8e7d6c"


def test_restore_downloads_latest_into_an_emptied_directory(agent, s3, tmp_path, logs):
    prefix = f"runs/{RESTORED_RUN}/20261123T090000000000Z/"
    for key, body in {"state.json": b"{}", "shards/rank-0.bin": b"s", "CHECKPOINT_DONE": b"5"}.items():
        s3.put_object(Bucket=BUCKET, Key=prefix + key, Body=body)
    s3.put_object(Bucket=BUCKET, Key=f"runs/{RESTORED_RUN}/LATEST", Body=prefix.encode())
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "stale-from-another-run.bin").write_bytes(b"x")
    uri = agent.restore_checkpoint(s3, BUCKET, RESTORED_RUN, tmp_path / "ckpt", agent.JsonLog(logs.stream))
    assert uri == f"s3://{BUCKET}/{prefix}"
    assert sorted(p.relative_to(tmp_path / "ckpt").as_posix() for p in (tmp_path / "ckpt").rglob("*")
                  if p.is_file()) == ["CHECKPOINT_DONE", "shards/rank-0.bin", "state.json"]


def test_restore_of_a_first_attempt_is_empty(agent, s3, tmp_path, logs):
    assert agent.restore_checkpoint(s3, BUCKET, RESTORED_RUN, tmp_path / "ckpt", agent.JsonLog(logs.stream)) == ""
    assert list((tmp_path / "ckpt").iterdir()) == []


def test_restore_refuses_a_latest_outside_the_run(agent, s3, tmp_path, logs):
    s3.put_object(Bucket=BUCKET, Key=f"runs/{RESTORED_RUN}/LATEST", Body=b"runs/other-run/20261123T090000000000Z/")
    with pytest.raises(agent.UploadError, match="does not name a prefix of the run"):
        agent.restore_checkpoint(s3, BUCKET, RESTORED_RUN, tmp_path / "ckpt", agent.JsonLog(logs.stream))


# ----------------------------------------------------------------------------- lifecycle completion


def test_complete_lifecycle_action_sends_continue(agent, logs, aws_env):
    client = boto3.client("autoscaling", region_name="us-east-1")
    with Stubber(client) as stub:
        stub.add_response("complete_lifecycle_action", {},
                          expected_lifecycle_params(LifecycleActionResult="CONTINUE"))
        assert agent.complete_lifecycle_action(client, lifecycle(agent), INSTANCE, agent.JsonLog(logs.stream))
        stub.assert_no_pending_responses()


def test_complete_lifecycle_action_with_an_expired_token_is_logged_and_ignored(agent, logs, aws_env):
    client = boto3.client("autoscaling", region_name="us-east-1")
    with Stubber(client) as stub:
        stub.add_client_error("complete_lifecycle_action", service_error_code="ValidationError",
                              service_message=f"No active Lifecycle Action found with token {TOKEN}",
                              http_status_code=400,
                              expected_params=expected_lifecycle_params(LifecycleActionResult="CONTINUE"))
        assert agent.complete_lifecycle_action(client, lifecycle(agent), INSTANCE, agent.JsonLog(logs.stream))
    line = logs.steps("complete-lifecycle")[0]
    assert line["ignored"] is True and line["level"] == "warning"


def test_complete_lifecycle_action_other_errors_are_reported(agent, logs, aws_env):
    client = boto3.client("autoscaling", region_name="us-east-1")
    with Stubber(client) as stub:
        stub.add_client_error("complete_lifecycle_action", service_error_code="AccessDenied",
                              service_message="not allowed", http_status_code=403)
        assert not agent.complete_lifecycle_action(client, lifecycle(agent), INSTANCE, agent.JsonLog(logs.stream))
    assert logs.steps("complete-lifecycle")[0]["level"] == "error"


# ----------------------------------------------------------------------------- the checkpoint flow


def test_checkpoint_signals_waits_uploads_stops_releases_then_completes_with_heartbeats(
        agent, cloud, tmp_path, logs, aws_env):
    hold_current_run(agent, tmp_path, cloud)
    autoscaling = boto3.client("autoscaling", region_name="us-east-1")
    clock = FakeClock()
    started = clock.now
    answered = []
    runner = Runner(on_signal=lambda: answered.append(True))

    def trainer(now):  # the trainer needs 65 s to write its checkpoint
        if answered and now - started >= 65 and not (tmp_path / "ckpt" / "CHECKPOINT_DONE").exists():
            write_checkpoint(tmp_path / "ckpt")
            os.utime(tmp_path / "ckpt" / "CHECKPOINT_DONE", (now, now))

    clock.on_sleep = trainer
    node = make_agent(agent, tmp_path, logs, cloud, runner=runner, autoscaling=autoscaling, clock=clock)
    node._marker_poll = 1.0
    with Stubber(autoscaling) as stub:
        for _ in range(3):  # t = 0, 30, 60 while waiting
            stub.add_response("record_lifecycle_action_heartbeat", {}, expected_lifecycle_params())
        stub.add_response("complete_lifecycle_action", {},
                          expected_lifecycle_params(LifecycleActionResult="CONTINUE"))
        assert node.checkpoint("lifecycle-terminate", "evt-1", lifecycle(agent)) == 0
        stub.assert_no_pending_responses()
    assert runner.commands[0] == ["docker", "kill", "--signal=SIGUSR1", CONTAINER]
    assert runner.of("stop") and runner.of("stop")[0][-1] == CONTAINER
    prefix = logs.steps("latest")[0]["prefix"]
    assert prefix.startswith(f"runs/{RUN_ID}/{agent.utc_stamp(started + 65)[:15]}")
    assert cloud.objects(f"runs/{RUN_ID}/LATEST")[f"runs/{RUN_ID}/LATEST"] == prefix.encode()
    run = cloud.run()
    assert run["state"] == "PENDING" and "lease_holder" not in run and "lease_expires_at" not in run
    assert run["attempts"][0]["end_reason"] == "reclaimed" and run["attempts"][0]["detail"] == "lifecycle-terminate"
    assert run["last_checkpoint"] == f"s3://{BUCKET}/{prefix}"
    assert run.get("failures", 0) == 0
    steps = [line["step"] for line in logs.lines]
    assert steps.index("signal") < steps.index("wait") < steps.index("upload") < steps.index("latest") \
        < steps.index("stop-trainer") < steps.index("release") < steps.index("complete-lifecycle") \
        < steps.index("done")


def test_checkpoint_with_no_run_completes_the_lifecycle_action_at_once(agent, cloud, tmp_path, logs):
    autoscaling = RecordingAutoscaling()
    runner = Runner()
    node = make_agent(agent, tmp_path, logs, cloud, runner=runner, autoscaling=autoscaling)
    assert node.checkpoint("lifecycle-terminate", "evt-1", lifecycle(agent)) == 0
    assert runner.commands == []
    assert autoscaling.names() == ["heartbeat", "complete"]
    assert logs.steps("done")[0]["result"] == "no-run"
    assert agent.NodeState(tmp_path / "state").draining()["reason"] == "lifecycle-terminate"


def test_trainer_not_answering_still_uploads_the_completed_checkpoint_that_never_reached_s3(
        agent, cloud, tmp_path, logs):
    hold_current_run(agent, tmp_path, cloud)
    agent.NodeState(tmp_path / "state").set_uploads({"run_id": RUN_ID})
    files = write_checkpoint(tmp_path / "ckpt", step=40)
    autoscaling = RecordingAutoscaling()
    node = make_agent(agent, tmp_path, logs, cloud, runner=Runner(), autoscaling=autoscaling,
                      ML_CHECKPOINT_BUDGET_SECONDS="1")
    assert node.checkpoint("lifecycle-terminate", "evt-1", lifecycle(agent)) == 1
    assert logs.steps("done")[0]["result"] == "checkpoint-timeout"
    prefix = logs.steps("latest")[0]["prefix"]
    objects = cloud.objects(f"runs/{RUN_ID}/")
    assert {key[len(prefix):]: body for key, body in objects.items() if key.startswith(prefix)} == files
    assert cloud.run()["state"] == "PENDING" and cloud.run()["last_checkpoint"] == f"s3://{BUCKET}/{prefix}"
    assert autoscaling.names()[-1] == "complete"


def test_a_checkpoint_already_in_s3_is_not_uploaded_again(agent, cloud, tmp_path, logs):
    hold_current_run(agent, tmp_path, cloud)
    write_checkpoint(tmp_path / "ckpt")
    state = agent.NodeState(tmp_path / "state")
    state.set_uploads({"run_id": RUN_ID, "prefix": f"runs/{RUN_ID}/20261123T090000000000Z/",
                       "marker_mtime": agent.marker_mtime(tmp_path / "ckpt" / "CHECKPOINT_DONE")})
    node = make_agent(agent, tmp_path, logs, cloud, runner=Runner(returncode=1, stderr="No such container"))
    assert node.checkpoint("spot-interruption", "evt-1") == 0
    assert logs.steps("done")[0]["result"] == "nothing-new"
    assert cloud.objects(f"runs/{RUN_ID}/") == {}
    assert cloud.run()["last_checkpoint"] == f"s3://{BUCKET}/runs/{RUN_ID}/20261123T090000000000Z/"


def test_release_of_a_run_with_a_cancel_request_cancels_it_and_reports_the_job_finished(
        agent, cloud, tmp_path, logs):
    hold_current_run(agent, tmp_path, cloud, cancel_requested=True)
    node = make_agent(agent, tmp_path, logs, cloud, runner=Runner(on_signal=lambda: write_checkpoint(tmp_path / "ckpt")))
    assert node.checkpoint("spot-interruption", "evt-1") == 0
    run = cloud.run()
    assert (run["state"], run["end_reason"], run["attempts"][0]["end_reason"]) == ("CANCELLED", "cancelled",
                                                                                  "cancelled")
    [event] = cloud.finished_events()
    assert event["detail"] == {"autoScalingGroupName": GROUP, "runId": RUN_ID, "state": "CANCELLED"}


def test_a_run_another_instance_took_over_is_not_released_but_the_action_still_completes(
        agent, cloud, tmp_path, logs):
    hold_current_run(agent, tmp_path, cloud)
    cloud.hold_run(holder=OTHER_INSTANCE)  # its lease expired and another instance claimed it
    autoscaling = RecordingAutoscaling()
    node = make_agent(agent, tmp_path, logs, cloud, runner=Runner(), autoscaling=autoscaling,
                      ML_CHECKPOINT_BUDGET_SECONDS="1")
    node.checkpoint("lifecycle-terminate", "evt-1", lifecycle(agent))
    assert logs.steps("release")[0]["released"] is False
    assert cloud.run()["lease_holder"] == OTHER_INSTANCE and cloud.run()["state"] == "RUNNING"
    assert autoscaling.names()[-1] == "complete"


def test_upload_failure_exits_1_but_the_run_is_released_and_the_action_completed(agent, cloud, tmp_path, logs):
    hold_current_run(agent, tmp_path, cloud)
    runner = Runner(on_signal=lambda: write_checkpoint(tmp_path / "ckpt"))
    autoscaling = RecordingAutoscaling()
    node = make_agent(agent, tmp_path, logs, cloud, runner=runner, autoscaling=autoscaling,
                      s3=RecordingS3(cloud.s3, fail_key_suffix="optimizer.pt"))
    assert node.checkpoint("lifecycle-terminate", "evt-1", lifecycle(agent)) == 1
    assert logs.steps("done")[0]["result"] == "upload-failed"
    assert f"runs/{RUN_ID}/LATEST" not in cloud.objects()
    assert cloud.run()["state"] == "PENDING"
    assert autoscaling.names()[-1] == "complete"


def test_a_stalled_upload_is_cut_at_the_deadline_so_the_action_completes_before_the_hook_times_out(
        agent, cloud, tmp_path, logs, monkeypatch):
    monkeypatch.setattr(agent, "UPLOAD_GRACE_SECONDS", 0.5)
    hold_current_run(agent, tmp_path, cloud)
    runner = Runner(on_signal=lambda: write_checkpoint(tmp_path / "ckpt"))
    autoscaling = RecordingAutoscaling()
    node = make_agent(agent, tmp_path, logs, cloud, runner=runner, autoscaling=autoscaling,
                      s3=RecordingS3(cloud.s3, stall_seconds=30), ML_CHECKPOINT_BUDGET_SECONDS="1")
    started = time.time()
    assert node.checkpoint("lifecycle-terminate", "evt-1", lifecycle(agent)) == 1
    completed_at = autoscaling.calls[-1][2]
    assert autoscaling.names()[-1] == "complete"
    assert completed_at - started < 25  # long before the stalled upload would have ended
    assert logs.steps("done")[0]["result"] == "upload-failed"
    assert cloud.run()["state"] == "PENDING"


def test_a_run_not_started_yet_is_released_without_signalling(agent, cloud, tmp_path, logs):
    hold_current_run(agent, tmp_path, cloud, phase="starting")
    runner = Runner()
    node = make_agent(agent, tmp_path, logs, cloud, runner=runner)
    assert node.checkpoint("rebalance-recommendation", "evt-1") == 0
    assert runner.commands == []
    assert cloud.run()["state"] == "PENDING"
    assert cloud.run()["attempts"][0]["detail"] == "rebalance-recommendation"
    assert agent.NodeState(tmp_path / "state").current_run()["phase"] == "released"
# ----------------------------------------------------------------------------- dedupe


def test_coordinator_follows_a_running_or_recent_checkpoint_and_leads_after_the_window(agent, tmp_path):
    clock = FakeClock(start=1000.0)
    first = agent.Coordinator(tmp_path, 90, clock=clock.time)
    assert first.claim("spot-imds", "a")[0] == "leader"
    role, record = agent.Coordinator(tmp_path, 90, clock=clock.time).claim("lifecycle-terminate", "b")
    assert (role, record["state"], record["event_id"]) == ("follower", "in-progress", "a")
    first.finish("uploaded", prefix="p/")
    clock.now += 89
    role, record = agent.Coordinator(tmp_path, 90, clock=clock.time).claim("lifecycle-terminate", "c")
    assert (role, record["result"]) == ("follower", "uploaded")
    clock.now += 2
    assert agent.Coordinator(tmp_path, 90, clock=clock.time).claim("lifecycle-terminate", "d")[0] == "leader"


def test_coordinator_takes_over_from_a_leader_that_died(agent, tmp_path):
    (tmp_path / "checkpoint.json").write_text(json.dumps({"state": "in-progress", "started": 1.0, "pid": 1}))
    coordinator = agent.Coordinator(tmp_path, 90)
    assert coordinator.claim("spot-imds", "a")[0] == "leader"


def test_follower_of_a_dead_leader_reports_leader_lost(agent, tmp_path):
    (tmp_path / "checkpoint.json").write_text(json.dumps({"state": "in-progress", "started": 1.0}))
    assert agent.Coordinator(tmp_path, 90).wait_for_leader()["result"] == "leader-lost"


def test_second_request_within_the_budget_does_not_signal_again_but_completes_its_action(
        agent, cloud, tmp_path, logs):
    hold_current_run(agent, tmp_path, cloud)
    autoscaling = RecordingAutoscaling()
    runner = Runner(on_signal=lambda: write_checkpoint(tmp_path / "ckpt"))
    node = make_agent(agent, tmp_path, logs, cloud, runner=runner, autoscaling=autoscaling)
    assert node.checkpoint("spot-interruption", "evt-1") == 0
    assert node.checkpoint("lifecycle-terminate", "evt-2", lifecycle(agent)) == 0
    assert len(runner.of("kill")) == 1
    assert [(name, params) for name, params, _ in autoscaling.calls if name == "complete"] == [
        ("complete", expected_lifecycle_params(LifecycleActionResult="CONTINUE"))]
    assert len([k for k in cloud.objects() if k.endswith("/model.bin")]) == 1
    assert logs.steps("dedupe")[-1]["leader_result"] == "uploaded"


def test_concurrent_request_waits_for_the_leader_heartbeating_then_completes(agent, cloud, tmp_path, logs):
    hold_current_run(agent, tmp_path, cloud)
    leader_signalled = threading.Event()

    def slow_trainer():
        leader_signalled.set()
        threading.Timer(0.5, write_checkpoint, args=(tmp_path / "ckpt",)).start()

    runner = Runner(on_signal=slow_trainer)
    leader = make_agent(agent, tmp_path, logs, cloud, runner=runner, ML_HEARTBEAT_SECONDS="1")
    results = {}
    thread = threading.Thread(target=lambda: results.setdefault("leader", leader.checkpoint("spot-interruption", "a")))
    thread.start()
    assert leader_signalled.wait(10)
    autoscaling = RecordingAutoscaling()
    follower = make_agent(agent, tmp_path, logs, cloud, runner=runner, autoscaling=autoscaling,
                          ML_HEARTBEAT_SECONDS="1")
    assert follower.checkpoint("lifecycle-terminate", "b", lifecycle(agent)) == 0
    thread.join(10)
    assert results["leader"] == 0
    assert len(runner.of("kill")) == 1
    names = [name for name, _, _ in autoscaling.calls]
    assert names[0] == "heartbeat" and names[-1] == "complete" and names.count("complete") == 1
    assert all(params["LifecycleActionToken"] == TOKEN for _, params, _ in autoscaling.calls)
    finished = agent.Coordinator(tmp_path / "state", 90).read()["finished"]
    assert autoscaling.calls[-1][2] >= finished  # completed only after the upload finished


# ----------------------------------------------------------------------------- watch


def test_watch_runs_the_checkpoint_once_per_notice(agent, cloud, tmp_path, logs):
    hold_current_run(agent, tmp_path, cloud)
    notice = {"action": "terminate", "time": "2026-11-23T10:00:00Z"}
    imds = StaticImds([None, None, notice, dict(notice), dict(notice), dict(notice)])
    runner = Runner(on_signal=lambda: write_checkpoint(tmp_path / "ckpt"))
    node = make_agent(agent, tmp_path, logs, cloud, runner=runner, imds=imds)
    sleeps = []
    assert node.watch(poll_seconds=5, stop=lambda: imds.polls >= 6, poll_sleep=sleeps.append) == 0
    assert len(runner.of("kill")) == 1
    assert sleeps == [5] * 6
    start = logs.steps("start")[0]
    assert start["reason"] == "spot-imds" and "lifecycle_hook" not in start
    # A restarted watch remembers the notice it handled.
    imds.notices = [dict(notice)]
    imds.polls = 0
    node.watch(poll_seconds=5, stop=lambda: imds.polls >= 1, poll_sleep=sleeps.append)
    assert len(runner.of("kill")) == 1


def test_watch_logs_imds_failures_once_per_outage(agent, cloud, tmp_path, logs):
    failure = agent.ImdsError("connection refused")
    imds = StaticImds([failure, failure, failure, None])
    node = make_agent(agent, tmp_path, logs, cloud, runner=Runner(), imds=imds)
    node.watch(poll_seconds=5, stop=lambda: imds.polls >= 4, poll_sleep=lambda s: None)
    imds_lines = logs.steps("imds")
    assert [line["level"] for line in imds_lines] == ["error", "info"]


def test_watch_exit_after_notice_returns_the_checkpoint_exit_code(agent, cloud, tmp_path, logs):
    imds = StaticImds([{"action": "stop", "time": "2026-11-23T10:00:00Z"}])
    node = make_agent(agent, tmp_path, logs, cloud, runner=Runner(returncode=1, stderr="gone"), imds=imds)
    assert node.watch(exit_after_notice=True, poll_sleep=lambda s: None) == 0  # no run on the instance


def test_watch_polls_spot_instance_action_every_second_by_default(agent):
    assert agent.IMDS_POLL_SECONDS == 1.0
    assert agent._parser().parse_args(["watch"]).poll_seconds == 1.0


def test_watch_survives_a_garbled_imds_answer_and_still_checkpoints(agent, cloud, tmp_path, logs):
    hold_current_run(agent, tmp_path, cloud)
    runner = Runner(on_signal=lambda: write_checkpoint(tmp_path / "ckpt"))
    with FakeImds(instance_id=INSTANCE, faults=["non-utf8", "truncated", "500"]) as imds:
        imds.announce()
        node = make_agent(agent, tmp_path, logs, cloud, runner=runner,
                          imds=agent.Imds(imds.url, timeout_seconds=0.5, retry_seconds=0.2))
        assert node.watch(poll_seconds=0.05, exit_after_notice=True, poll_sleep=time.sleep) == 0
    assert len(runner.of("kill")) == 1
    assert cloud.run()["state"] == "PENDING" and logs.steps("done")[-1]["result"] == "uploaded"


# ----------------------------------------------------------------------------- CLI


def test_cli_config_error_exits_1_and_names_the_variable(agent, tmp_path, capsys):
    env = base_env(tmp_path, ML_CHECKPOINT_BUCKET=None)
    assert agent.main(["checkpoint", "--reason", "spot-interruption", "--event-id", "e"], environ=env) == 1
    out, err = capsys.readouterr()
    assert "ML_CHECKPOINT_BUCKET is not set" in err
    assert json.loads(out.splitlines()[-1])["step"] == "config"


def test_cli_token_without_hook_or_group_names_them(agent, tmp_path, capsys):
    env = base_env(tmp_path, ML_AUTOSCALING_GROUP_NAME=None, ML_LIFECYCLE_HOOK_NAME=None)
    code = agent.main(["checkpoint", "--reason", "lifecycle-terminate", "--event-id", "e",
                       "--lifecycle-action-token", TOKEN], environ=env)
    assert code == 1
    err = capsys.readouterr().err
    assert "--lifecycle-hook-name" in err and "--autoscaling-group-name" in err


def test_cli_rejects_an_unknown_reason(agent, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        agent.main(["checkpoint", "--reason", "because", "--event-id", "e"], environ=base_env(tmp_path))
    assert exit_info.value.code == 2


def test_agent_parses_as_python_3_9(agent):
    import ast

    source = Path(agent.__file__).read_text()
    ast.parse(source, feature_version=(3, 9))


# ----------------------------------------------------------------------------- faults


def test_unreachable_imds_still_completes_the_lifecycle_action_without_instance_id(agent, cloud, tmp_path, logs):
    class Unreachable(StaticImds):
        def instance_id(self):
            raise agent.ImdsError("IMDS GET /latest/meta-data/instance-id failed: timed out")

    autoscaling = RecordingAutoscaling()
    runner = Runner()
    node = make_agent(agent, tmp_path, logs, cloud, runner=runner, autoscaling=autoscaling, imds=Unreachable())
    assert node.checkpoint("lifecycle-terminate", "evt-1", lifecycle(agent)) == 1
    assert runner.commands == []
    completes = [params for name, params, _ in autoscaling.calls if name == "complete"]
    assert completes == [{"LifecycleHookName": HOOK, "AutoScalingGroupName": GROUP, "LifecycleActionToken": TOKEN,
                          "LifecycleActionResult": "CONTINUE"}]


def test_unwritable_state_dir_is_an_error_that_still_completes_the_action(agent, cloud, tmp_path, logs):
    (tmp_path / "state-file").write_text("not a directory")
    autoscaling = RecordingAutoscaling()
    node = make_agent(agent, tmp_path, logs, cloud, runner=Runner(), autoscaling=autoscaling,
                      ML_STATE_DIR=str(tmp_path / "state-file"))
    assert node.checkpoint("lifecycle-terminate", "evt-1", lifecycle(agent)) == 1
    assert logs.steps("done")[0]["result"] == "internal-error"
    assert [name for name, _, _ in autoscaling.calls][-1] == "complete"


def test_unexpected_leader_error_is_recorded_for_followers(agent, cloud, tmp_path, logs):
    hold_current_run(agent, tmp_path, cloud)
    def exploding_run(command, **kwargs):
        raise ValueError("unexpected")  # not an OSError: escapes signal_trainer

    node = make_agent(agent, tmp_path, logs, cloud, runner=exploding_run)
    assert node.checkpoint("spot-interruption", "evt-1") == 1
    assert agent.Coordinator(tmp_path / "state", 90).read()["result"] == "internal-error"
    assert node.checkpoint("lifecycle-terminate", "evt-2", lifecycle(agent)) == 1  # follows, does not retry
    assert logs.steps("dedupe")[-1]["leader_result"] == "internal-error"


def test_watch_service_stops_cleanly_on_sigterm(tmp_path):
    import signal as signals
    import sys

    from tests.node_agent.drill import AGENT

    with FakeImds() as imds:
        env = {**base_env(tmp_path), "ML_IMDS_ENDPOINT": imds.url, "PATH": os.environ["PATH"],
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_EC2_METADATA_DISABLED": "true"}
        process = subprocess.Popen([sys.executable, str(AGENT), "watch"], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while "/latest/meta-data/spot/instance-action" not in imds.gets and time.monotonic() < deadline:
                time.sleep(0.05)
            process.send_signal(signals.SIGTERM)
            out, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 0, err
    assert [json.loads(line)["step"] for line in out.splitlines()] == ["watch-start", "watch-stop"]


@pytest.mark.parametrize("fault", ["timeout", "reset", "500", "truncated", "non-utf8"])
def test_one_bad_imds_answer_for_the_instance_id_still_signals_uploads_and_releases(
        agent, cloud, tmp_path, logs, fault):
    hold_current_run(agent, tmp_path, cloud)
    runner = Runner(on_signal=lambda: write_checkpoint(tmp_path / "ckpt"))
    autoscaling = RecordingAutoscaling()
    with FakeImds(instance_id=INSTANCE, faults=[fault], timeout_fault_seconds=0.6) as imds:
        node = make_agent(agent, tmp_path, logs, cloud, runner=runner, autoscaling=autoscaling,
                          imds=agent.Imds(imds.url, timeout_seconds=0.3))
        assert node.checkpoint("lifecycle-terminate", "evt-1", lifecycle(agent)) == 0
    assert imds.faults_served == [fault]
    assert len(runner.of("kill")) == 1 and logs.steps("latest")
    assert cloud.run()["state"] == "PENDING"
    assert autoscaling.calls[-1][1]["InstanceId"] == INSTANCE


def test_agent_accepts_every_reason_the_checkpoint_document_may_send(agent) -> None:
    """The SSM document's Reason pattern and the agent's --reason choices are one set:
    a reason the interruption handler sends but the agent rejects would be a
    checkpoint that never happens."""
    import re

    from constructs_lib.interruption_handler import REASON_PATTERN

    alternatives = re.fullmatch(r"\^\((.*)\)\$", REASON_PATTERN).group(1).split("|")
    assert set(alternatives) == set(agent.CHECKPOINT_REASONS)


@pytest.mark.parametrize("reason", ["health-scheduled-change", "capacity-block-expiring"])
def test_a_scheduled_host_change_checkpoints_then_asks_the_group_for_a_replacement(
        agent, cloud, tmp_path, logs, reason):
    hold_current_run(agent, tmp_path, cloud)
    write_checkpoint(tmp_path / "ckpt", step=40)
    autoscaling = RecordingAutoscaling()
    node = make_agent(agent, tmp_path, logs, cloud, runner=Runner(), autoscaling=autoscaling,
                      ML_CHECKPOINT_BUDGET_SECONDS="1")
    node.checkpoint(reason, "evt-1")
    [(name, params, _)] = [c for c in autoscaling.calls if c[0] == "health"]
    assert params == {"InstanceId": INSTANCE, "HealthStatus": "Unhealthy", "ShouldRespectGracePeriod": False}
    assert cloud.objects(f"runs/{RUN_ID}/"), "the checkpoint is uploaded before the instance goes"
    assert agent.NodeState(tmp_path / "state").draining()["reason"] == reason


@pytest.mark.parametrize("reason", ["spot-interruption", "rebalance-recommendation",
                                    "capacity-reservation-interruption"])
def test_a_reclaim_notice_leaves_the_replacement_to_aws_and_the_group(agent, cloud, tmp_path, logs, reason):
    autoscaling = RecordingAutoscaling()
    node = make_agent(agent, tmp_path, logs, cloud, runner=Runner(), autoscaling=autoscaling)
    node.checkpoint(reason, "evt-1")
    assert "health" not in autoscaling.names()
