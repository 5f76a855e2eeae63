"""Shared test helpers for the node agent: fakes, a moto-backed cloud, a held run."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import weakref
from pathlib import Path

import boto3

from tests.node_agent.drill import create_runs_table, run_item, run_spec

INSTANCE = "i-0123456789abcdef0"
OTHER_INSTANCE = "i-0fedcba9876543210"
BUCKET = "ckpt-bucket"
TABLE = "runs-table"
HOOK = "terminate-hook"
GROUP = "gpu-fleet"
TOKEN = "3f1c2a4e-0b1d-4c6e-9a7f-5e2d8c0b1a93"
RUN_ID = "llama-ft-0a1b2c3d"


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
    def __init__(self, notices=(), instance_id: str = INSTANCE):
        self.notices = list(notices)
        self.polls = 0
        self._instance_id = instance_id

    def instance_id(self) -> str:
        return self._instance_id

    def spot_instance_action(self, retry_seconds=None):
        self.polls += 1
        if not self.notices:
            return None
        value = self.notices.pop(0)
        if isinstance(value, Exception):
            raise value
        return value

    def get(self, path, retry_seconds=None):
        return None


class Runner:
    """Stands in for subprocess.run of `docker kill/stop`; `on_signal` plays the trainer answering."""

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
        if self.on_signal and command[:2] == ["docker", "kill"]:
            self.on_signal()
        return subprocess.CompletedProcess(command, self.returncode, "", self.stderr)

    def of(self, verb: str) -> list[list[str]]:
        return [c for c in self.commands if c[:2] == ["docker", verb]]


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

    def set_instance_health(self, **params):
        with self.lock:
            self.calls.append(("health", params, time.time()))

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]


class RecordingS3:
    """Delegates to a real (moto) client and records the order of writes; can fail or stall a key.

    A stalled upload the agent gave up on is abandoned when its test ends
    (``abandon_stalled_uploads``): it must not land, seconds later, in the
    moto account of whichever test runs then."""

    _live: "weakref.WeakSet[RecordingS3]" = weakref.WeakSet()

    def __init__(self, client, fail_key_suffix=None, stall_seconds=0.0):
        self.client = client
        self.writes: list[str] = []
        self.fail_key_suffix = fail_key_suffix
        self.stall_seconds = stall_seconds
        self.lock = threading.Lock()
        self._abandoned = threading.Event()
        RecordingS3._live.add(self)

    def upload_file(self, filename, bucket, key):
        with self.lock:
            self.writes.append(key)
        if self.fail_key_suffix and key.endswith(self.fail_key_suffix):
            raise OSError("connection reset by peer")
        if self.stall_seconds and self._abandoned.wait(self.stall_seconds):
            raise OSError("abandoned: the test that stalled this upload has ended")
        return self.client.upload_file(filename, bucket, key)

    @classmethod
    def abandon_stalled_uploads(cls) -> None:
        for recording in list(cls._live):
            recording._abandoned.set()

    def put_object(self, **kwargs):
        with self.lock:
            self.writes.append(kwargs["Key"])
        return self.client.put_object(**kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


def base_env(tmp_path: Path, **overrides) -> dict:
    env = {
        "ML_ENV_FILE": str(tmp_path / "absent.env"),
        "ML_STATE_DIR": str(tmp_path / "state"),
        "ML_CHECKPOINT_BUCKET": BUCKET,
        "ML_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
        "ML_CHECKPOINT_DONE_MARKER": "CHECKPOINT_DONE",
        "ML_TRAINING_SIGNAL": "SIGUSR1",
        "ML_CHECKPOINT_BUDGET_SECONDS": "90",
        "ML_HEARTBEAT_SECONDS": "30",
        "ML_AUTOSCALING_GROUP_NAME": GROUP,
        "ML_LIFECYCLE_HOOK_NAME": HOOK,
        "AWS_REGION": "us-east-1",
        "ML_STAGE": "dev",
        "ML_RUNS_TABLE": TABLE,
        "ML_RUNS_LOG_GROUP": "/ml/dev/runs",
        "ML_ALERTS_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:ml-dev-alerts",
        "ML_TRAINER_LAUNCHER": "docker",
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def make_config(agent, tmp_path, **overrides):
    return agent.Config.from_env(base_env(tmp_path, **overrides))


def write_checkpoint(directory: Path, marker: str = "CHECKPOINT_DONE", step: int = 1) -> dict:
    """A completed checkpoint the way a trainer writes it: files atomically, then the marker."""
    files = {"model.bin": os.urandom(3000), "optimizer.pt": b"adam", "shards/rank-0.bin": b"shard0",
             "meta.json": json.dumps({"step": step}).encode()}
    for rel, data in files.items():
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name("." + target.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    (directory / marker).write_text(str(step))
    files[marker] = str(step).encode()
    return files


class Cloud:
    """In-process moto: bucket, runs table, alerts topic and a job-finished rule, each read back through SQS."""

    def __init__(self) -> None:
        session = boto3.session.Session(region_name="us-east-1")
        self.s3, self.dynamodb, self.sns, self.sqs, self.events = (
            session.client(n) for n in ("s3", "dynamodb", "sns", "sqs", "events"))
        self.table = session.resource("dynamodb").Table(TABLE)
        self.s3.create_bucket(Bucket=BUCKET)
        create_runs_table(self.dynamodb, TABLE)
        self.topic_arn = self.sns.create_topic(Name="ml-dev-alerts")["TopicArn"]
        self.alerts_queue = self._queue("alerts")
        self.sns.subscribe(TopicArn=self.topic_arn, Protocol="sqs", Endpoint=self._arn(self.alerts_queue))
        self.events_queue = self._queue("finished")
        self.events.put_rule(Name="finished", EventPattern=json.dumps({"source": ["ml.training"]}))
        self.events.put_targets(Rule="finished", Targets=[{"Id": "q", "Arn": self._arn(self.events_queue)}])

    def _queue(self, name):
        return self.sqs.create_queue(QueueName=name)["QueueUrl"]

    def _arn(self, url):
        return self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    def _drain(self, url):
        out = []
        while True:
            messages = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            if not messages:
                return out
            for message in messages:
                out.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    def alerts(self):
        return self._drain(self.alerts_queue)

    def finished_events(self):
        return self._drain(self.events_queue)

    def put_run(self, run_id=RUN_ID, *, command=("true",), max_failures=2, created_at=None, **fields):
        item = run_item(run_id, run_spec(list(command), max_failures=max_failures))
        if created_at:
            item["created_at"] = created_at
        item.update(fields)
        self.table.put_item(Item=item)
        return item

    def hold_run(self, run_id=RUN_ID, holder=INSTANCE, lease_expires_at=None, **fields):
        """A RUNNING run whose first attempt is `holder`'s."""
        started = "2026-11-29T10:00:00Z"
        return self.put_run(run_id, state="RUNNING", attempt_count=1, started_at=started, lease_holder=holder,
                            lease_expires_at=int(lease_expires_at or time.time() + 90),
                            attempts=[{"attempt": 1, "instance_id": holder, "started_at": started}], **fields)

    def run(self, run_id=RUN_ID):
        from ml_runs.runs import plain

        return plain(self.table.get_item(Key={"run_id": run_id}, ConsistentRead=True)["Item"])

    def objects(self, prefix=""):
        out = {}
        for item in self.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []):
            out[item["Key"]] = self.s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
        return out
