"""Unit tests of each step of the node agent (node_agent/ml_node_agent.py)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from tests.node_agent.drill import FakeImds

INSTANCE = "i-0123456789abcdef0"
BUCKET = "ckpt-bucket"
HOOK = "terminate-hook"
GROUP = "gpu-fleet"
TOKEN = "3f1c2a4e-0b1d-4c6e-9a7f-5e2d8c0b1a93"


class FakeClock:
    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start
        self.sleeps: list[float] = []
        self.on_sleep = None

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep(self.now)


class StaticImds:
    def __init__(self, notices=()):
        self.notices = list(notices)
        self.polls = 0

    def instance_id(self) -> str:
        return INSTANCE

    def spot_instance_action(self):
        self.polls += 1
        if not self.notices:
            return None
        value = self.notices.pop(0)
        if isinstance(value, Exception):
            raise value
        return value


class Runner:
    """Stands in for subprocess.run of `systemctl kill`; optionally 'is' the trainer."""

    def __init__(self, on_signal=None, returncode=0, stderr="", error=None):
        self.commands: list[list[str]] = []
        self.on_signal = on_signal
        self.returncode = returncode
        self.stderr = stderr
        self.error = error

    def __call__(self, command, **kwargs):
        self.commands.append(command)
        if self.error:
            raise self.error
        if self.on_signal:
            self.on_signal()
        return subprocess.CompletedProcess(command, self.returncode, "", self.stderr)


class RecordingAutoscaling:
    def __init__(self):
        self.calls: list[tuple[str, dict, float]] = []
        self.lock = threading.Lock()

    def record_lifecycle_action_heartbeat(self, **params):
        with self.lock:
            self.calls.append(("heartbeat", params, time.time()))

    def complete_lifecycle_action(self, **params):
        with self.lock:
            self.calls.append(("complete", params, time.time()))


class RecordingS3:
    """Delegates to a real (moto) client and records the order of writes."""

    def __init__(self, client, fail_key_suffix=None):
        self.client = client
        self.writes: list[str] = []
        self.fail_key_suffix = fail_key_suffix
        self.lock = threading.Lock()

    def upload_file(self, filename, bucket, key):
        with self.lock:
            self.writes.append(key)
        if self.fail_key_suffix and key.endswith(self.fail_key_suffix):
            raise OSError("connection reset by peer")
        return self.client.upload_file(filename, bucket, key)

    def put_object(self, **kwargs):
        with self.lock:
            self.writes.append(kwargs["Key"])
        return self.client.put_object(**kwargs)


def base_env(tmp_path: Path, **overrides) -> dict:
    env = {
        "ML_ENV_FILE": str(tmp_path / "absent.env"),
        "ML_STATE_DIR": str(tmp_path / "state"),
        "ML_CHECKPOINT_BUCKET": BUCKET,
        "ML_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
        "ML_CHECKPOINT_DONE_MARKER": "CHECKPOINT_DONE",
        "ML_TRAINING_UNIT": "ml-training.service",
        "ML_TRAINING_SIGNAL": "SIGUSR1",
        "ML_CHECKPOINT_BUDGET_SECONDS": "90",
        "ML_HEARTBEAT_SECONDS": "30",
        "ML_AUTOSCALING_GROUP_NAME": GROUP,
        "ML_LIFECYCLE_HOOK_NAME": HOOK,
        "AWS_REGION": "us-east-1",
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def make_config(agent, tmp_path, **overrides):
    return agent.Config.from_env(base_env(tmp_path, **overrides))


def write_checkpoint(directory: Path, marker: str = "CHECKPOINT_DONE") -> dict:
    files = {"model.bin": os.urandom(3000), "optimizer.pt": b"adam", "shards/rank-0.bin": b"shard0"}
    for rel, data in files.items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_bytes(data)
    (directory / marker).write_text("done")
    files[marker] = b"done"
    return files


@pytest.fixture
def s3(aws_env):
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def bucket_objects(client) -> dict:
    out = {}
    for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        out[item["Key"]] = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
    return out


def lifecycle(agent):
    return agent.LifecycleAction(hook_name=HOOK, autoscaling_group_name=GROUP, token=TOKEN)


def expected_lifecycle_params(**extra):
    params = {"LifecycleHookName": HOOK, "AutoScalingGroupName": GROUP, "LifecycleActionToken": TOKEN,
              "InstanceId": INSTANCE}
    params.update(extra)
    return params


# ----------------------------------------------------------------------------- config


def test_config_defaults_signal_budget_and_heartbeat(agent, tmp_path):
    config = make_config(agent, tmp_path, ML_TRAINING_SIGNAL=None, ML_CHECKPOINT_BUDGET_SECONDS=None,
                         ML_HEARTBEAT_SECONDS=None, ML_CHECKPOINT_DONE_MARKER=None, ML_IMDS_ENDPOINT=None)
    assert config.training_signal == "SIGUSR1"
    assert config.budget_seconds == 90
    assert config.heartbeat_seconds == 30
    assert config.done_marker == "CHECKPOINT_DONE"
    assert config.imds_endpoint == "http://169.254.169.254"


def test_config_fails_naming_every_missing_variable(agent, tmp_path):
    env = base_env(tmp_path, ML_CHECKPOINT_BUCKET=None, ML_CHECKPOINT_DIR=None, ML_TRAINING_UNIT=None,
                   AWS_REGION=None)
    with pytest.raises(agent.ConfigError) as error:
        agent.Config.from_env(env)
    for name in ("ML_CHECKPOINT_BUCKET", "ML_CHECKPOINT_DIR", "ML_TRAINING_UNIT", "AWS_REGION"):
        assert f"{name} is not set" in str(error.value)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ML_TRAINING_SIGNAL", "SIGNOPE", "ML_TRAINING_SIGNAL='SIGNOPE' is not a signal name"),
        ("ML_CHECKPOINT_BUDGET_SECONDS", "soon", "ML_CHECKPOINT_BUDGET_SECONDS='soon' is not a number"),
        ("ML_HEARTBEAT_SECONDS", "0", "ML_HEARTBEAT_SECONDS='0' is out of range (1 to 7200 seconds)"),
        ("ML_CHECKPOINT_DIR", "relative/dir", "ML_CHECKPOINT_DIR='relative/dir' is not an absolute path"),
        ("ML_CHECKPOINT_DONE_MARKER", "a/b", "ML_CHECKPOINT_DONE_MARKER='a/b' is not a plain file name"),
    ],
)
def test_config_fails_on_invalid_value_with_name_value_and_allowed(agent, tmp_path, name, value, message):
    with pytest.raises(agent.ConfigError, match=None) as error:
        make_config(agent, tmp_path, **{name: value})
    assert message in str(error.value)


def test_config_accepts_signal_without_sig_prefix(agent, tmp_path):
    assert make_config(agent, tmp_path, ML_TRAINING_SIGNAL="usr2").training_signal == "SIGUSR2"


def test_env_file_fills_in_what_the_environment_lacks(agent, tmp_path):
    env_file = tmp_path / "agent.env"
    env_file.write_text('# comment\nML_CHECKPOINT_BUCKET="from-file"\nML_TRAINING_UNIT="a \\"quoted\\" unit"\n'
                        "AWS_REGION=eu-west-1\n")
    merged = agent.merged_environment({"ML_ENV_FILE": str(env_file), "AWS_REGION": "us-east-1"})
    assert merged["ML_CHECKPOINT_BUCKET"] == "from-file"
    assert merged["ML_TRAINING_UNIT"] == 'a "quoted" unit'
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


def test_imds_unreachable_raises_imds_error(agent):
    with FakeImds() as imds:
        url = imds.url
    with pytest.raises(agent.ImdsError):
        agent.Imds(url, timeout_seconds=0.5).instance_id()


# ----------------------------------------------------------------------------- signal


def test_signal_runs_systemctl_kill_with_the_configured_signal(agent, logs):
    runner = Runner()
    assert agent.signal_trainer("ml-training.service", "SIGUSR1", agent.JsonLog(logs.stream), run=runner)
    assert runner.commands == [["systemctl", "kill", "--signal=SIGUSR1", "ml-training.service"]]
    assert logs.steps("signal")[0]["signalled"] is True


def test_signal_of_a_missing_unit_is_logged_not_raised(agent, logs):
    runner = Runner(returncode=1, stderr="Failed to kill unit x.service: Unit x.service not loaded.\n")
    assert not agent.signal_trainer("x.service", "SIGUSR1", agent.JsonLog(logs.stream), run=runner)
    line = logs.steps("signal")[0]
    assert line["level"] == "warning" and "not loaded" in line["error"]


def test_signal_without_systemctl_is_logged_not_raised(agent, logs):
    runner = Runner(error=FileNotFoundError(2, "No such file or directory: 'systemctl'"))
    assert not agent.signal_trainer("x.service", "SIGUSR1", agent.JsonLog(logs.stream), run=runner)
    assert logs.steps("signal")[0]["level"] == "error"


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
    mtime = agent.wait_for_marker(marker, requested, requested + 90, agent.JsonLog(logs.stream),
                                  clock=clock.time, sleep=clock.sleep, poll_seconds=0.5)
    assert mtime == pytest.approx(requested + 3)
    assert logs.steps("wait")[0]["found"] is True


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


def test_upload_layout_is_instance_then_timestamp_and_latest_is_written_last(agent, s3, tmp_path, logs):
    s3.put_object(Bucket=BUCKET, Key=f"{INSTANCE}/20260101T000000Z/model.bin", Body=b"previous")
    s3.put_object(Bucket=BUCKET, Key=f"{INSTANCE}/LATEST", Body=f"{INSTANCE}/20260101T000000Z/".encode())
    files = write_checkpoint(tmp_path)
    recording = RecordingS3(s3)
    prefix = agent.upload_checkpoint(recording, BUCKET, tmp_path, INSTANCE, "20261123T090000Z",
                                     agent.JsonLog(logs.stream))
    assert prefix == f"{INSTANCE}/20261123T090000Z/"
    objects = bucket_objects(s3)
    for rel, data in files.items():
        assert objects[prefix + rel] == data
    assert objects[f"{INSTANCE}/LATEST"] == prefix.encode()
    assert objects[f"{INSTANCE}/20260101T000000Z/model.bin"] == b"previous"  # never deleted
    assert recording.writes[-1] == f"{INSTANCE}/LATEST"
    assert sorted(recording.writes[:-1]) == sorted(prefix + rel for rel in files)


def test_upload_failure_leaves_the_previous_latest_in_place(agent, s3, tmp_path, logs):
    s3.put_object(Bucket=BUCKET, Key=f"{INSTANCE}/LATEST", Body=f"{INSTANCE}/20260101T000000Z/".encode())
    write_checkpoint(tmp_path)
    recording = RecordingS3(s3, fail_key_suffix="model.bin")
    with pytest.raises(agent.UploadError, match="model.bin"):
        agent.upload_checkpoint(recording, BUCKET, tmp_path, INSTANCE, "20261123T090000Z",
                                agent.JsonLog(logs.stream))
    assert f"{INSTANCE}/LATEST" not in recording.writes
    assert bucket_objects(s3)[f"{INSTANCE}/LATEST"] == f"{INSTANCE}/20260101T000000Z/".encode()


def test_upload_skips_symlinks(agent, s3, tmp_path, logs):
    write_checkpoint(tmp_path)
    (tmp_path / "link.bin").symlink_to(tmp_path / "model.bin")
    agent.upload_checkpoint(s3, BUCKET, tmp_path, INSTANCE, "20261123T090000Z", agent.JsonLog(logs.stream))
    assert f"{INSTANCE}/20261123T090000Z/link.bin" not in bucket_objects(s3)


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


# ----------------------------------------------------------------------------- the whole flow


def make_agent(agent, tmp_path, logs, s3, *, runner, autoscaling=None, clock=None, imds=None, **env):
    config = make_config(agent, tmp_path, **env)
    config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if clock is not None:
        kwargs.update(clock=clock.time, sleep=clock.sleep)
    return agent.Agent(config, imds=imds or StaticImds(), s3=s3, autoscaling=autoscaling or RecordingAutoscaling(),
                       log=agent.JsonLog(logs.stream), run=runner, marker_poll_seconds=0.05,
                       follower_poll_seconds=0.05, **kwargs)


def test_checkpoint_signals_waits_uploads_then_completes_with_heartbeats(agent, s3, tmp_path, logs, aws_env):
    autoscaling = boto3.client("autoscaling", region_name="us-east-1")
    clock = FakeClock()
    started = clock.now

    def trainer(now):  # the trainer needs 65 s to write its checkpoint
        if now - started >= 65 and not (tmp_path / "ckpt" / "CHECKPOINT_DONE").exists():
            write_checkpoint(tmp_path / "ckpt")

    clock.on_sleep = trainer
    runner = Runner()
    node = make_agent(agent, tmp_path, logs, s3, runner=runner, autoscaling=autoscaling, clock=clock)
    node._marker_poll = 1.0
    with Stubber(autoscaling) as stub:
        for _ in range(3):  # t = 0, 30, 60 while waiting
            stub.add_response("record_lifecycle_action_heartbeat", {}, expected_lifecycle_params())
        stub.add_response("complete_lifecycle_action", {},
                          expected_lifecycle_params(LifecycleActionResult="CONTINUE"))
        assert node.checkpoint("lifecycle-terminate", "evt-1", lifecycle(agent)) == 0
        stub.assert_no_pending_responses()
    assert runner.commands == [["systemctl", "kill", "--signal=SIGUSR1", "ml-training.service"]]
    prefix = logs.steps("latest")[0]["prefix"]
    assert prefix == f"{INSTANCE}/{agent.utc_stamp(started + 65)}/"
    assert bucket_objects(s3)[f"{INSTANCE}/LATEST"] == prefix.encode()
    steps = [line["step"] for line in logs.lines]
    assert steps.index("signal") < steps.index("wait") < steps.index("upload") < steps.index("latest") \
        < steps.index("complete-lifecycle") < steps.index("done")


def test_checkpoint_timeout_uploads_nothing_but_still_completes_the_action(agent, s3, tmp_path, logs):
    autoscaling = RecordingAutoscaling()
    node = make_agent(agent, tmp_path, logs, s3, runner=Runner(), autoscaling=autoscaling, clock=FakeClock(),
                      ML_HEARTBEAT_SECONDS="1000")
    assert node.checkpoint("lifecycle-terminate", "evt-1", lifecycle(agent)) == 1
    assert bucket_objects(s3) == {}
    assert [name for name, _, _ in autoscaling.calls] == ["heartbeat", "complete"]
    assert autoscaling.calls[-1][1]["LifecycleActionResult"] == "CONTINUE"
    assert logs.steps("done")[0]["result"] == "checkpoint-timeout"


def test_missing_unit_and_no_checkpoint_means_nothing_new_and_exit_0(agent, s3, tmp_path, logs):
    autoscaling = RecordingAutoscaling()
    node = make_agent(agent, tmp_path, logs, s3, runner=Runner(returncode=1, stderr="Unit not loaded."),
                      autoscaling=autoscaling)
    assert node.checkpoint("spot-interruption", "evt-1", lifecycle(agent)) == 0
    assert bucket_objects(s3) == {}
    assert logs.steps("done")[0]["result"] == "nothing-new"
    assert [name for name, _, _ in autoscaling.calls][-1] == "complete"


def test_missing_unit_uploads_a_completed_checkpoint_once(agent, s3, tmp_path, logs):
    node = make_agent(agent, tmp_path, logs, s3, runner=Runner(returncode=1, stderr="Unit not loaded."),
                      ML_CHECKPOINT_BUDGET_SECONDS="1")
    write_checkpoint(tmp_path / "ckpt")
    assert node.checkpoint("spot-interruption", "evt-1") == 0
    assert logs.steps("done")[0]["result"] == "uploaded"
    time.sleep(1.1)  # past the dedupe window
    assert node.checkpoint("spot-interruption", "evt-2") == 0
    assert logs.steps("done")[1]["result"] == "nothing-new"
    assert len([k for k in bucket_objects(s3) if k.endswith("/model.bin")]) == 1


def test_upload_failure_exits_1(agent, s3, tmp_path, logs):
    runner = Runner(on_signal=lambda: write_checkpoint(tmp_path / "ckpt"))
    node = make_agent(agent, tmp_path, logs, RecordingS3(s3, fail_key_suffix="optimizer.pt"), runner=runner)
    assert node.checkpoint("spot-interruption", "evt-1") == 1
    assert logs.steps("done")[0]["result"] == "upload-failed"
    assert f"{INSTANCE}/LATEST" not in bucket_objects(s3)


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
        agent, s3, tmp_path, logs):
    autoscaling = RecordingAutoscaling()
    runner = Runner(on_signal=lambda: write_checkpoint(tmp_path / "ckpt"))
    node = make_agent(agent, tmp_path, logs, s3, runner=runner, autoscaling=autoscaling)
    assert node.checkpoint("spot-interruption", "evt-1") == 0
    assert node.checkpoint("lifecycle-terminate", "evt-2", lifecycle(agent)) == 0
    assert len(runner.commands) == 1
    assert [(name, params) for name, params, _ in autoscaling.calls if name == "complete"] == [
        ("complete", expected_lifecycle_params(LifecycleActionResult="CONTINUE"))]
    assert len([k for k in bucket_objects(s3) if k.endswith("/model.bin")]) == 1
    assert logs.steps("dedupe")[-1]["leader_result"] == "uploaded"


def test_concurrent_request_waits_for_the_leader_heartbeating_then_completes(agent, s3, tmp_path, logs):
    leader_signalled = threading.Event()

    def slow_trainer():
        leader_signalled.set()
        threading.Timer(0.5, write_checkpoint, args=(tmp_path / "ckpt",)).start()

    runner = Runner(on_signal=slow_trainer)
    leader = make_agent(agent, tmp_path, logs, s3, runner=runner, ML_HEARTBEAT_SECONDS="1")
    results = {}
    thread = threading.Thread(target=lambda: results.setdefault("leader", leader.checkpoint("spot-interruption", "a")))
    thread.start()
    assert leader_signalled.wait(10)
    autoscaling = RecordingAutoscaling()
    follower = make_agent(agent, tmp_path, logs, s3, runner=runner, autoscaling=autoscaling,
                          ML_HEARTBEAT_SECONDS="1")
    assert follower.checkpoint("lifecycle-terminate", "b", lifecycle(agent)) == 0
    thread.join(10)
    assert results["leader"] == 0
    assert len(runner.commands) == 1
    names = [name for name, _, _ in autoscaling.calls]
    assert names[0] == "heartbeat" and names[-1] == "complete" and names.count("complete") == 1
    assert all(params["LifecycleActionToken"] == TOKEN for _, params, _ in autoscaling.calls)
    finished = agent.Coordinator(tmp_path / "state", 90).read()["finished"]
    assert autoscaling.calls[-1][2] >= finished  # completed only after the upload finished


# ----------------------------------------------------------------------------- watch


def test_watch_runs_the_checkpoint_once_per_notice(agent, s3, tmp_path, logs):
    notice = {"action": "terminate", "time": "2026-11-23T10:00:00Z"}
    imds = StaticImds([None, None, notice, dict(notice), dict(notice), dict(notice)])
    runner = Runner(on_signal=lambda: write_checkpoint(tmp_path / "ckpt"))
    node = make_agent(agent, tmp_path, logs, s3, runner=runner, imds=imds)
    sleeps = []
    assert node.watch(poll_seconds=5, stop=lambda: imds.polls >= 6, poll_sleep=sleeps.append) == 0
    assert len(runner.commands) == 1
    assert sleeps == [5] * 6
    start = logs.steps("start")[0]
    assert start["reason"] == "spot-imds" and "lifecycle_hook" not in start
    # A restarted watch remembers the notice it handled.
    imds.notices = [dict(notice)]
    imds.polls = 0
    node.watch(poll_seconds=5, stop=lambda: imds.polls >= 1, poll_sleep=sleeps.append)
    assert len(runner.commands) == 1


def test_watch_logs_imds_failures_once_per_outage(agent, s3, tmp_path, logs):
    failure = agent.ImdsError("connection refused")
    imds = StaticImds([failure, failure, failure, None])
    node = make_agent(agent, tmp_path, logs, s3, runner=Runner(), imds=imds)
    node.watch(poll_seconds=5, stop=lambda: imds.polls >= 4, poll_sleep=lambda s: None)
    imds_lines = logs.steps("imds")
    assert [line["level"] for line in imds_lines] == ["error", "info"]


def test_watch_exit_after_notice_returns_the_checkpoint_exit_code(agent, s3, tmp_path, logs):
    imds = StaticImds([{"action": "stop", "time": "2026-11-23T10:00:00Z"}])
    node = make_agent(agent, tmp_path, logs, s3, runner=Runner(returncode=1, stderr="not loaded"), imds=imds)
    assert node.watch(exit_after_notice=True, poll_sleep=lambda s: None) == 0  # nothing new to upload


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


def test_unreachable_imds_still_completes_the_lifecycle_action_without_instance_id(agent, s3, tmp_path, logs):
    class Unreachable(StaticImds):
        def instance_id(self):
            raise agent.ImdsError("IMDS GET /latest/meta-data/instance-id failed: timed out")

    autoscaling = RecordingAutoscaling()
    runner = Runner()
    node = make_agent(agent, tmp_path, logs, s3, runner=runner, autoscaling=autoscaling, imds=Unreachable())
    assert node.checkpoint("lifecycle-terminate", "evt-1", lifecycle(agent)) == 1
    assert runner.commands == []
    completes = [params for name, params, _ in autoscaling.calls if name == "complete"]
    assert completes == [{"LifecycleHookName": HOOK, "AutoScalingGroupName": GROUP, "LifecycleActionToken": TOKEN,
                          "LifecycleActionResult": "CONTINUE"}]


def test_unwritable_state_dir_is_an_error_that_still_completes_the_action(agent, s3, tmp_path, logs):
    (tmp_path / "state-file").write_text("not a directory")
    autoscaling = RecordingAutoscaling()
    node = make_agent(agent, tmp_path, logs, s3, runner=Runner(), autoscaling=autoscaling,
                      ML_STATE_DIR=str(tmp_path / "state-file"))
    assert node.checkpoint("lifecycle-terminate", "evt-1", lifecycle(agent)) == 1
    assert logs.steps("done")[0]["result"] == "internal-error"
    assert [name for name, _, _ in autoscaling.calls][-1] == "complete"


def test_unexpected_leader_error_is_recorded_for_followers(agent, s3, tmp_path, logs):
    def exploding_run(command, **kwargs):
        raise ValueError("unexpected")  # not an OSError: escapes signal_trainer

    node = make_agent(agent, tmp_path, logs, s3, runner=exploding_run)
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
