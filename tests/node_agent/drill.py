"""The runs drill: one training run survives two spot reclaims (test_drill.py, bench/drill.py).

Everything runs on 127.0.0.1 and stops by itself:

* moto's server (S3, DynamoDB, SNS, SQS, EventBridge) shared by every
  simulated instance; the runs table is created with RUNS_CONTRACT.md's schema,
* per instance: its own instance ID, its own fake IMDSv2 (spot notice on
  `announce()`), its own state and checkpoint directories, and the agent's
  `run` loop and `watch` as subprocesses (process launcher: the trainer is a
  local process); a reclaim adds the Run Command path (`checkpoint` with a
  lifecycle token) and then kills every process of the instance,
* an Auto Scaling Query-API stub for the two lifecycle calls moto does not
  implement; it knows which token is active and answers a used one with the
  real "No active Lifecycle Action found" ValidationError,
* the trainer is examples/trainer/train.py (deterministic: fixed seed, the
  batch of a step depends on the step alone).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

import boto3

from ml_runs.runs import plain

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "node_agent" / "ml_node_agent.py"
TRAINER = ROOT / "examples" / "trainer" / "train.py"

INSTANCE_ID = "i-0d1a2b3c4d5e6f708"
INSTANCE_IDS = ("i-0aaaaaaaaaaaaaa01", "i-0bbbbbbbbbbbbbb02", "i-0ccccccccccccc03")
BUCKET = "ml-drill-checkpoints"
TABLE = "ml-drill-runs"
LOG_GROUP = "/ml/drill/runs"
REGION = "us-east-1"
HOOK = "ml-drill-terminate-hook"
GROUP = "ml-drill-gpu-fleet"
STAGE = "drill"
MARKER = "CHECKPOINT_DONE"
INSTANCE_TYPE = "g5.xlarge"  # one A10G: the drill's fake nvidia-smi answers for one GPU
GPU_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "gpu"
SPOT_NOTICE_SECONDS = 120.0
WAIT_SECONDS = 180.0  # only a hang reaches this: the drill asserts order and content, never speed


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1:<free port> in a daemon thread."""

    handler: type

    def __init__(self) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _ImdsHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        return None

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # a connection the handler reset on purpose

    def _send(self, status: int, body: bytes = b"", length: Optional[int] = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True  # the agent gave up on this request (its timeout): nothing to answer

    def _fault(self) -> bool:
        """Apply the next injected fault, if any; True when the request was answered by it."""
        imds: FakeImds = self.server.owner  # type: ignore[attr-defined]
        with imds.lock:
            fault = imds.faults.pop(0) if imds.faults else None
            if fault:
                imds.faults_served.append(fault)
        if fault is None:
            return False
        if fault == "500":
            self._send(500, b"internal error")
        elif fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
        elif fault == "truncated":
            self._send(200, imds.instance_id.encode()[:5], length=len(imds.instance_id) + 20)
            self.close_connection = True
        elif fault == "non-utf8":
            self._send(200, b"\xff\xfei-\x80\x81")
        elif fault == "timeout":
            time.sleep(imds.timeout_fault_seconds)
            self._send(500)
        return True

    def do_PUT(self) -> None:
        imds: FakeImds = self.server.owner  # type: ignore[attr-defined]
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if self.path != "/latest/api/token" or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            self._send(400)
            return
        with imds.lock:
            imds.token_requests += 1
        self._send(200, imds.token.encode())

    def do_GET(self) -> None:
        imds: FakeImds = self.server.owner  # type: ignore[attr-defined]
        if self.headers.get("X-aws-ec2-metadata-token") != imds.token:
            self._send(401)
            return
        with imds.lock:
            imds.gets.append(self.path)
            notice = imds.notice
        if self._fault():
            return
        if self.path == "/latest/meta-data/instance-id":
            self._send(200, imds.instance_id.encode())
        elif self.path == "/latest/meta-data/instance-type":
            self._send(200, imds.instance_type.encode())
        elif self.path == "/latest/meta-data/spot/instance-action" and notice is not None:
            self._send(200, json.dumps(notice).encode())
        else:
            self._send(404)


class FakeImds(_Server):
    """IMDSv2 that requires a session token; spot/instance-action is 404 until announce().

    ``faults`` (e.g. ["500", "reset", "truncated", "non-utf8", "timeout"]) are
    served one per GET before the real answer.
    """

    handler = _ImdsHandler

    def __init__(self, instance_id: str = INSTANCE_ID, faults: Optional[List[str]] = None,
                 timeout_fault_seconds: float = 1.5) -> None:
        super().__init__()
        self.instance_id = instance_id
        self.instance_type = INSTANCE_TYPE
        self.token = "imds-token-" + uuid.uuid4().hex
        self.lock = threading.Lock()
        self.notice: Optional[dict] = None
        self.notice_at: Optional[float] = None
        self.token_requests = 0
        self.gets: List[str] = []
        self.faults: List[str] = list(faults or [])
        self.faults_served: List[str] = []
        self.timeout_fault_seconds = timeout_fault_seconds

    def announce(self) -> float:
        """Start returning a terminate notice two minutes ahead, as EC2 does; the notice's epoch time."""
        now = time.time()
        action_time = dt.datetime.fromtimestamp(now + SPOT_NOTICE_SECONDS, dt.timezone.utc)
        with self.lock:
            self.notice = {"action": "terminate", "time": action_time.strftime("%Y-%m-%dT%H:%M:%SZ")}
            self.notice_at = now
        return now


_ASG_NS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"


class _LifecycleHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        return None

    def _send(self, status: int, xml: str) -> None:
        data = xml.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        stub: LifecycleStub = self.server.owner  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length", "0"))
        params = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        action = params.pop("Action", "")
        params.pop("Version", None)
        request_id = str(uuid.uuid4())
        with stub.lock:
            stub.calls.append({"action": action, "params": params, "at": time.time()})
            token = params.get("LifecycleActionToken")
            known = action in ("CompleteLifecycleAction", "RecordLifecycleActionHeartbeat", "SetInstanceHealth")
            active = token in stub.active_tokens or action == "SetInstanceHealth"
            if action == "CompleteLifecycleAction" and active:
                stub.active_tokens.discard(token)
        if not known:
            self._send(400, f'<ErrorResponse xmlns="{_ASG_NS}"><Error><Type>Sender</Type>'
                            f"<Code>InvalidAction</Code><Message>{escape(action)} is not stubbed</Message>"
                            f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>")
        elif not active:
            message = (f"No active Lifecycle Action found with token {token}")
            self._send(400, f'<ErrorResponse xmlns="{_ASG_NS}"><Error><Type>Sender</Type>'
                            f"<Code>ValidationError</Code><Message>{escape(message)}</Message></Error>"
                            f"<RequestId>{request_id}</RequestId></ErrorResponse>")
        else:
            self._send(200, f'<{action}Response xmlns="{_ASG_NS}"><{action}Result/>'
                            f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
                            f"</{action}Response>")


class LifecycleStub(_Server):
    """The Auto Scaling Query API for the two lifecycle calls; records every call."""

    handler = _LifecycleHandler

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.active_tokens: set = set()
        self.calls: List[dict] = []

    def open_action(self) -> str:
        token = str(uuid.uuid4())
        with self.lock:
            self.active_tokens.add(token)
        return token

    def calls_of(self, action: str) -> List[dict]:
        with self.lock:
            return [c for c in self.calls if c["action"] == action]




# ----------------------------------------------------------------------------- helpers


def parse_log(text: str) -> List[dict]:
    lines = []
    for raw in text.splitlines():
        raw = raw.strip()
        if raw.startswith("{"):
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue  # a line cut by a kill
    return lines


def log_epoch(line: dict) -> float:
    return dt.datetime.strptime(line["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()


def first(lines: List[dict], step: str, **match) -> Optional[dict]:
    for line in lines:
        if line.get("step") == step and all(line.get(k) == v for k, v in match.items()):
            return line
    return None


def last(lines: List[dict], step: str, **match) -> Optional[dict]:
    found = None
    for line in lines:
        if line.get("step") == step and all(line.get(k) == v for k, v in match.items()):
            found = line
    return found


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT_SECONDS, poll: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"drill: timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


def trainer_command(*, steps: int, checkpoint_every: int, step_seconds: float, checkpoint_bytes: int,
                    seed: int = 1234) -> List[str]:
    return [sys.executable, "-u", str(TRAINER), "--steps", str(steps), "--checkpoint-every", str(checkpoint_every),
            "--step-seconds", str(step_seconds), "--checkpoint-bytes", str(checkpoint_bytes), "--seed", str(seed)]


def run_spec(command: List[str], *, max_failures: int, gpus: int = 1, max_duration_minutes: int = 60,
             environment: Optional[Dict[str, str]] = None) -> dict:
    return {"image": "drill.local/trainer:latest", "command": command, "args": [],
            "environment": environment or {"PYTHONUNBUFFERED": "1"}, "gpus": gpus, "max_failures": max_failures,
            "max_duration_minutes": max_duration_minutes}


def run_item(run_id: str, spec: dict, now: Optional[float] = None) -> dict:
    """A PENDING run as `ml_runs submit` writes it (RUNS_CONTRACT.md)."""
    stamp = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.timezone.utc) \
        .strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"run_id": run_id, "name": run_id.rsplit("-", 1)[0], "state": "PENDING", "spec": spec,
            "created_at": stamp, "updated_at": stamp, "failures": 0, "attempt_count": 0, "attempts": []}


def create_runs_table(dynamodb: Any, name: str = TABLE) -> None:
    """The runs table of RUNS_CONTRACT.md: run_id key, by-state index (state, created_at), on demand."""
    dynamodb.create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "run_id", "AttributeType": "S"},
                              {"AttributeName": "state", "AttributeType": "S"},
                              {"AttributeName": "created_at", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "run_id", "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[{"IndexName": "by-state",
                                 "KeySchema": [{"AttributeName": "state", "KeyType": "HASH"},
                                               {"AttributeName": "created_at", "KeyType": "RANGE"}],
                                 "Projection": {"ProjectionType": "ALL"}}])


class Cloud:
    """moto's server on 127.0.0.1 with the bucket, runs table, alerts topic and a job-finished rule."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)

    def __enter__(self) -> "Cloud":
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        # The server shares moto's in-process backends: start from nothing.
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(self.url + "/moto-api/reset", method="POST"), timeout=30).close()
        session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                        region_name=REGION)
        self.s3, self.dynamodb, self.sns, self.sqs, self.events = (
            session.client(name, endpoint_url=self.url) for name in ("s3", "dynamodb", "sns", "sqs", "events"))
        self.table = session.resource("dynamodb", endpoint_url=self.url).Table(TABLE)
        self.s3.create_bucket(Bucket=BUCKET)
        create_runs_table(self.dynamodb)
        self.topic_arn = self.sns.create_topic(Name="ml-drill-alerts")["TopicArn"]
        self.alerts_queue = self._queue("alerts")
        self.sns.subscribe(TopicArn=self.topic_arn, Protocol="sqs", Endpoint=self._queue_arn(self.alerts_queue))
        self.events_queue = self._queue("job-finished")
        self.events.put_rule(Name="job-finished", EventPattern=json.dumps(
            {"source": ["ml.training"], "detail-type": ["Training Job Finished"]}))
        self.events.put_targets(Rule="job-finished", Targets=[{"Id": "queue",
                                                              "Arn": self._queue_arn(self.events_queue)}])
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop()

    def _queue(self, name: str) -> str:
        return self.sqs.create_queue(QueueName=f"ml-drill-{name}")["QueueUrl"]

    def _queue_arn(self, url: str) -> str:
        return self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    def _drain(self, url: str) -> List[dict]:
        bodies = []
        while True:
            messages = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            if not messages:
                return bodies
            for message in messages:
                bodies.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    def alerts(self) -> List[dict]:
        """SNS notifications (Subject, Message) delivered to the alerts queue."""
        return self._drain(self.alerts_queue)

    def alerts_seen(self) -> List[dict]:
        """Every alert so far (kept: a drill may poll for them and still read them afterwards)."""
        self._seen_alerts = getattr(self, "_seen_alerts", []) + self._drain(self.alerts_queue)
        return list(self._seen_alerts)

    def finished_events(self) -> List[dict]:
        return self._drain(self.events_queue)

    def put_run(self, item: dict) -> None:
        self.table.put_item(Item=item, ConditionExpression="attribute_not_exists(run_id)")

    def run(self, run_id: str) -> dict:
        return plain(self.table.get_item(Key={"run_id": run_id}, ConsistentRead=True).get("Item", {}))

    def objects(self, prefix: str) -> Dict[str, bytes]:
        found = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = self.s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
        return found

    def object_keys(self, prefix: str) -> List[str]:
        keys = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return keys

    def read(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


# ----------------------------------------------------------------------------- simulated instances


@dataclass
class AgentSettings:
    lease_seconds: float = 10.0
    lease_renew_seconds: float = 1.0
    claim_poll_seconds: float = 0.2
    imds_poll_seconds: float = 0.2
    budget_seconds: int = 60
    heartbeat_seconds: int = 1
    hung_after_seconds: float = 0.0
    hung_action: str = "alert"
    # The interpreter that runs the agent, e.g. a Python 3.9 with boto3 (the oldest the agent supports).
    agent_python: str = sys.executable


class SimInstance:
    """One GPU instance: own instance ID, IMDS, directories; the agent's processes in their own sessions."""

    def __init__(self, workdir: Path, instance_id: str, cloud: Cloud, lifecycle: LifecycleStub,
                 settings: AgentSettings, query_gpu: str = "g5-query-gpu-healthy.csv") -> None:
        self.instance_id = instance_id
        self.dir = workdir / instance_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.kernel_log = self.dir / "kern.log"
        self.kernel_log.write_text((GPU_FIXTURES / "kern-boot-clean.log").read_text())
        bin_dir = self._gpu_tools(query_gpu)
        self.state_dir = self.dir / "state"
        self.lifecycle = lifecycle
        self.settings = settings
        self.imds = FakeImds(instance_id).__enter__()
        self.processes: Dict[str, subprocess.Popen] = {}
        self.token: Optional[str] = None
        self.env = {
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "HOME": str(self.dir), "PYTHONDONTWRITEBYTECODE": "1",
            "ML_KERNEL_LOG": str(self.kernel_log), "ML_PROGRESS_DIR": str(self.dir / "progress"),
            "ML_HUNG_AFTER_SECONDS": str(settings.hung_after_seconds), "ML_HUNG_ACTION": settings.hung_action,
            "ML_ENV_FILE": str(self.dir / "no-such.env"), "ML_STATE_DIR": str(self.state_dir),
            "ML_IMDS_ENDPOINT": self.imds.url, "ML_CHECKPOINT_BUCKET": BUCKET,
            "ML_CHECKPOINT_DIR": str(self.dir / "checkpoints"), "ML_CHECKPOINT_DONE_MARKER": MARKER,
            "ML_TRAINING_SIGNAL": "SIGUSR1", "ML_CHECKPOINT_BUDGET_SECONDS": str(settings.budget_seconds),
            "ML_HEARTBEAT_SECONDS": str(settings.heartbeat_seconds), "ML_AUTOSCALING_GROUP_NAME": GROUP,
            "ML_LIFECYCLE_HOOK_NAME": HOOK, "AWS_REGION": REGION, "ML_STAGE": STAGE, "ML_RUNS_TABLE": TABLE,
            "ML_RUNS_LOG_GROUP": LOG_GROUP, "ML_ALERTS_TOPIC_ARN": cloud.topic_arn, "ML_TRAINER_LAUNCHER": "process",
            "ML_LEASE_SECONDS": str(settings.lease_seconds),
            "ML_LEASE_RENEW_SECONDS": str(settings.lease_renew_seconds),
            "ML_CLAIM_POLL_SECONDS": str(settings.claim_poll_seconds), "ML_GPU_COUNT": "1",
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ENDPOINT_URL": cloud.url, "AWS_ENDPOINT_URL_AUTO_SCALING": lifecycle.url,
        }

    def _gpu_tools(self, query_gpu: str) -> Path:
        """A fake `nvidia-smi` on the instance's PATH answering from the recorded fixtures (no dcgmi: skipped)."""
        bin_dir = self.dir / "bin"
        bin_dir.mkdir(exist_ok=True)
        script = bin_dir / "nvidia-smi"
        script.write_text("#!/bin/sh\n"
                          'case "$*" in\n'
                          f"  *--query-gpu=*) cat '{GPU_FIXTURES / query_gpu}' ;;\n"
                          f"  *--query-remapped-rows=*) cat '{GPU_FIXTURES / 'g5-remapped-rows-healthy.csv'}' ;;\n"
                          "  -L) echo 'GPU 0: NVIDIA A10G (UUID: GPU-5c2b3f0e-8d1a-4b7e-9c2d-1f0e3a4b5c6d)' ;;\n"
                          '  *) echo "fake nvidia-smi: unsupported arguments: $*" >&2; exit 2 ;;\n'
                          "esac\n")
        script.chmod(0o755)
        return bin_dir

    def inject_xid(self, code: int, text: str = "GPU has fallen off the bus.") -> float:
        """The driver's kernel log line for an Xid on this instance's GPU; when it was written."""
        with open(self.kernel_log, "a") as log:
            log.write(f"NVRM: Xid (PCI:0000:00:1e): {code}, pid='<unknown>', name=<unknown>, {text}\n")
        return time.time()

    def replace(self) -> None:
        """What the group does to an Unhealthy instance: terminate it through the termination hook's Run Command."""
        self.token = self.lifecycle.open_action()
        self._spawn("checkpoint", "checkpoint", "--reason", "lifecycle-terminate", "--event-id",
                    f"drill-{uuid.uuid4()}", "--lifecycle-hook-name", HOOK, "--lifecycle-action-token", self.token,
                    "--autoscaling-group-name", GROUP)

    def _spawn(self, name: str, *args: str) -> None:
        with open(self.dir / f"{name}.log", "w") as out:
            self.processes[name] = subprocess.Popen(
                [self.settings.agent_python, str(AGENT), *args], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)

    def start(self, watch: bool = True) -> None:
        self._spawn("run", "run")
        if watch:
            self._spawn("watch", "watch", "--poll-seconds", str(self.settings.imds_poll_seconds),
                        "--exit-after-notice")

    def check_alive(self) -> None:
        """Fail fast (with the agent's last words) instead of waiting for a timeout."""
        process = self.processes.get("run")
        if process is not None and process.poll() is not None:
            tail = (self.dir / "run.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"drill: the run loop of {self.instance_id} exited {process.returncode}:\n{tail}")

    def progressed_to(self, step: int) -> bool:
        self.check_alive()
        return self.max_step() >= step

    def log(self, name: str) -> List[dict]:
        path = self.dir / f"{name}.log"
        return parse_log(path.read_text(errors="replace")) if path.exists() else []

    def trainer_logs(self) -> Dict[int, List[dict]]:
        """Trainer output per attempt (the process launcher's files), parsed."""
        found = {}
        for path in sorted((self.state_dir / "trainer-logs").glob("*")):
            attempt = int(path.name.rsplit("_", 1)[1].split("-", 1)[0])
            events = []
            for raw in path.read_text(errors="replace").splitlines():
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(line, dict) and "event" in line:
                    events.append(line)
            found[attempt] = events
        return found

    def max_step(self) -> int:
        return max((e["step"] for events in self.trainer_logs().values() for e in events if e["event"] == "step"),
                   default=0)

    def announce(self) -> float:
        """The spot notice in IMDS and, right behind it, the termination hook's Run Command with its token."""
        notice_at = self.imds.announce()
        self.token = self.lifecycle.open_action()
        self._spawn("checkpoint", "checkpoint", "--reason", "lifecycle-terminate", "--event-id",
                    f"drill-{uuid.uuid4()}", "--lifecycle-hook-name", HOOK, "--lifecycle-action-token", self.token,
                    "--autoscaling-group-name", GROUP)
        return notice_at

    def wait_for_checkpoint_flows(self) -> Dict[str, int]:
        codes = {}
        for name in ("watch", "checkpoint"):
            if name in self.processes:
                codes[name] = self.processes[name].wait(timeout=WAIT_SECONDS)
        return codes

    def terminate(self) -> None:
        """What EC2 does at the end of the notice: every process of the instance dies at once."""
        for process in self.processes.values():
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=WAIT_SECONDS)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM, as systemd does), then anything left is killed."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self.terminate()

    def close(self) -> None:
        self.terminate()
        self.imds.__exit__(None, None, None)


# ----------------------------------------------------------------------------- the drill


@dataclass
class Attempt:
    attempt: int
    instance_id: str
    resumed_from_step: int  # 0 on a first attempt
    last_step: int  # the last step the trainer finished on this instance
    last_checkpoint_step: int  # the last checkpoint it completed (marker written)
    steps_executed: int
    first_step_at: Optional[float]


@dataclass
class DrillResult:
    run_id: str
    run: dict
    steps: int
    reference_state: bytes
    final_state: bytes
    final_prefix: str
    attempts: List[Attempt]
    reclaims: List[dict]
    exit_codes: List[Dict[str, int]]
    lifecycle_calls: List[dict]
    alerts: List[dict]
    events: List[dict]
    logs: Dict[str, Dict[str, List[dict]]] = field(default_factory=dict)

    @property
    def executed_steps(self) -> int:
        return sum(a.steps_executed for a in self.attempts)

    @property
    def goodput(self) -> float:
        return self.steps / self.executed_steps if self.executed_steps else 0.0

    def completes(self, token: str) -> List[dict]:
        return [c for c in self.lifecycle_calls
                if c["action"] == "CompleteLifecycleAction" and c["params"].get("LifecycleActionToken") == token]


def _attempts(instances: List[SimInstance]) -> List[Attempt]:
    attempts = []
    for instance in instances:
        for number, events in instance.trainer_logs().items():
            steps = [e for e in events if e["event"] == "step"]
            resumed = next((e["step"] for e in events if e["event"] == "resume"), 0)
            checkpoints = [e["step"] for e in events if e["event"] == "checkpoint"]
            attempts.append(Attempt(attempt=number, instance_id=instance.instance_id, resumed_from_step=resumed,
                                    last_step=steps[-1]["step"] if steps else resumed,
                                    last_checkpoint_step=max(checkpoints, default=resumed),
                                    steps_executed=len(steps), first_step_at=steps[0]["t"] if steps else None))
    return sorted(attempts, key=lambda a: a.attempt)


def _reclaim_timings(notice_at: float, old: SimInstance, new: SimInstance, resumed: Optional[Attempt],
                     lifecycle: LifecycleStub) -> Dict[str, float]:
    watch = old.log("watch")
    # Whichever path led (the IMDS watch or the hook's Run Command) signalled, uploaded and released.
    leader = next((log for log in (watch, old.log("checkpoint")) if first(log, "dedupe", role="leader")), watch)
    marks = {
        "detected": first(watch, "notice"), "signalled": first(leader, "signal"), "uploaded": last(leader, "latest"),
        "released": first(leader, "release"), "claimed": first(new.log("run"), "claim", claimed=True),
        "restored": first(new.log("run"), "restore"),
    }
    timings = {f"notice_to_{name}_s": log_epoch(line) - notice_at for name, line in marks.items() if line}
    completes = [c for c in lifecycle.calls_of("CompleteLifecycleAction")
                 if c["params"].get("LifecycleActionToken") == old.token]
    if completes:
        timings["notice_to_completed_s"] = completes[0]["at"] - notice_at
    if resumed and resumed.first_step_at:
        timings["notice_to_resumed_s"] = resumed.first_step_at - notice_at
    return timings


def run_drill(workdir: Path, *, steps: int = 240, checkpoint_every: int = 40, step_seconds: float = 0.02,
              checkpoint_bytes: int = 0, reclaim_at: tuple = (0.3, 0.65), max_failures: int = 1,
              settings: Optional[AgentSettings] = None) -> DrillResult:
    """One run, three instances: reclaim the first at `reclaim_at[0]` of the steps, the second at
    `reclaim_at[1]`; the third finishes. Every process and server is stopped on return."""
    settings = settings or AgentSettings()
    workdir.mkdir(parents=True, exist_ok=True)
    command = trainer_command(steps=steps, checkpoint_every=checkpoint_every, step_seconds=step_seconds,
                              checkpoint_bytes=checkpoint_bytes)
    with Cloud() as cloud, LifecycleStub() as lifecycle:
        reference_dir = workdir / "reference"
        reference = subprocess.Popen(command, env={**os.environ, "ML_CHECKPOINT_DIR": str(reference_dir),
                                                   "ML_RESUME_FROM": ""},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run_id = f"drill-{uuid.uuid4().hex[:8]}"
        cloud.put_run(run_item(run_id, run_spec(command, max_failures=max_failures)))
        instances = [SimInstance(workdir, iid, cloud, lifecycle, settings) for iid in INSTANCE_IDS]
        try:
            instances[0].start()
            wait_until(lambda: instances[0].check_alive() or first(instances[0].log("run"), "claim", claimed=True),
                       f"{instances[0].instance_id} to claim the run")
            notices, exit_codes = [], []
            for index, fraction in enumerate(reclaim_at):
                old, new = instances[index], instances[index + 1]
                target = int(steps * fraction)
                # The replacement is up and polling before the notice: what is measured
                # excludes boot and image pull.
                new.start()
                wait_until(lambda: first(new.log("run"), "run-loop-start"), f"{new.instance_id}'s run loop")
                wait_until(lambda: old.progressed_to(target), f"{old.instance_id} to reach step {target}")
                notices.append(old.announce())
                exit_codes.append(old.wait_for_checkpoint_flows())
                old.terminate()
                # The run moves to this replacement, not to the one started next.
                wait_until(lambda: new.check_alive() or first(new.log("run"), "claim", claimed=True),
                           f"{new.instance_id} to claim the run")
            run = wait_until(lambda: (lambda r: r if r.get("state") in ("SUCCEEDED", "FAILED", "CANCELLED")
                                      else None)(cloud.run(run_id)), f"run {run_id} to end")
            wait_until(lambda: first(instances[-1].log("run"), "job-finished") or first(
                instances[-1].log("run"), "end", level="error"), "the job-finished decision")
            instances[-1].stop()
            if reference.wait(timeout=WAIT_SECONDS) != 0:
                raise RuntimeError("drill: the uninterrupted reference run failed")
            attempts = _attempts(instances)
            by_number = {a.attempt: a for a in attempts}
            reclaims = []
            for index, notice_at in enumerate(notices):
                old, new = instances[index], instances[index + 1]
                timings = _reclaim_timings(notice_at, old, new, by_number.get(index + 2), lifecycle)
                reclaims.append({"instance_id": old.instance_id, "token": old.token, "notice_at": notice_at,
                                 "timings": timings})
            final_prefix = cloud.read(f"runs/{run_id}/LATEST").decode()
            return DrillResult(
                run_id=run_id, run=run, steps=steps, reference_state=(reference_dir / "state.json").read_bytes(),
                final_state=cloud.read(final_prefix + "state.json"), final_prefix=final_prefix, attempts=attempts,
                reclaims=reclaims, exit_codes=exit_codes, lifecycle_calls=list(lifecycle.calls),
                alerts=cloud.alerts(), events=cloud.finished_events(),
                logs={i.instance_id: {n: i.log(n) for n in ("run", "watch", "checkpoint")} for i in instances})
        finally:
            for instance in instances:
                instance.close()
            if reference.poll() is None:
                reference.kill()
                reference.wait()


@dataclass
class FailureResult:
    run: dict
    alerts: List[dict]
    events: List[dict]
    run_log: List[dict]


def run_failure_drill(workdir: Path, *, max_failures: int = 2, exit_code: int = 3,
                      settings: Optional[AgentSettings] = None) -> FailureResult:
    """One instance, a trainer that always exits `exit_code`: retried up to max_failures, then FAILED."""
    settings = settings or AgentSettings()
    command = [sys.executable, "-c", f"import sys; print('loss is nan at step 1', flush=True); sys.exit({exit_code})"]
    with Cloud() as cloud, LifecycleStub() as lifecycle:
        run_id = f"broken-{uuid.uuid4().hex[:8]}"
        cloud.put_run(run_item(run_id, run_spec(command, max_failures=max_failures)))
        instance = SimInstance(workdir, INSTANCE_IDS[0], cloud, lifecycle, settings)
        try:
            instance.start(watch=False)
            run = wait_until(lambda: (lambda r: r if r.get("state") == "FAILED" else None)(cloud.run(run_id)),
                             f"run {run_id} to fail")
            wait_until(lambda: first(instance.log("run"), "job-finished"), "the job-finished decision")
            instance.stop()
            return FailureResult(run=run, alerts=cloud.alerts(), events=cloud.finished_events(),
                                 run_log=instance.log("run"))
        finally:
            instance.close()


# ----------------------------------------------------------------------------- GPU faults and hung runs


@dataclass
class XidResult:
    run_id: str
    run: dict
    steps: int
    reference_state: bytes
    final_state: bytes
    attempts: List[Attempt]
    health_calls: List[dict]
    completes: List[dict]
    alerts: List[dict]
    timings: Dict[str, float]
    logs: Dict[str, Dict[str, List[dict]]]


def _health_calls(lifecycle: LifecycleStub) -> List[dict]:
    return [{**c["params"], "at": c["at"]} for c in lifecycle.calls_of("SetInstanceHealth")]


def run_xid_drill(workdir: Path, *, xid: int = 79, steps: int = 200, checkpoint_every: int = 40,
                  step_seconds: float = 0.02, fault_at: float = 0.4,
                  settings: Optional[AgentSettings] = None) -> XidResult:
    """One run, two instances: a fatal Xid on the first at `fault_at` of the steps; the second finishes.

    After the first marks itself Unhealthy, the drill plays the group: it
    terminates the instance through the termination hook's Run Command (which
    follows the Xid's checkpoint flow and completes the lifecycle action).
    """
    settings = settings or AgentSettings()
    workdir.mkdir(parents=True, exist_ok=True)
    command = trainer_command(steps=steps, checkpoint_every=checkpoint_every, step_seconds=step_seconds,
                              checkpoint_bytes=0)
    with Cloud() as cloud, LifecycleStub() as lifecycle:
        reference_dir = workdir / "reference"
        reference = subprocess.Popen(command, env={**os.environ, "ML_CHECKPOINT_DIR": str(reference_dir),
                                                   "ML_RESUME_FROM": ""},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run_id = f"xid-{uuid.uuid4().hex[:8]}"
        cloud.put_run(run_item(run_id, run_spec(command, max_failures=1)))
        faulty, spare = (SimInstance(workdir, iid, cloud, lifecycle, settings) for iid in INSTANCE_IDS[:2])
        try:
            faulty.start()
            wait_until(lambda: faulty.check_alive() or first(faulty.log("run"), "claim", claimed=True),
                       f"{faulty.instance_id} to claim the run")
            spare.start()
            wait_until(lambda: first(spare.log("run"), "health-gate", healthy=True), f"{spare.instance_id}'s gate")
            wait_until(lambda: faulty.progressed_to(int(steps * fault_at)), "the run to make progress")
            xid_at = faulty.inject_xid(xid)
            wait_until(lambda: _health_calls(lifecycle), "SetInstanceHealth")
            faulty.replace()
            faulty.processes["checkpoint"].wait(timeout=WAIT_SECONDS)
            wait_until(lambda: first(faulty.log("run"), "alert"), "the GPU fault alert")
            faulty.terminate()
            run = wait_until(lambda: (lambda r: r if r.get("state") in ("SUCCEEDED", "FAILED", "CANCELLED")
                                      else None)(cloud.run(run_id)), f"run {run_id} to end")
            wait_until(lambda: first(spare.log("run"), "job-finished"), "the job-finished decision")
            spare.stop()
            if reference.wait(timeout=WAIT_SECONDS) != 0:
                raise RuntimeError("drill: the uninterrupted reference run failed")
            attempts = _attempts([faulty, spare])
            resumed = next((a for a in attempts if a.instance_id == spare.instance_id), None)
            run_log = faulty.log("run")
            marks = {"detected": first(run_log, "xid", fatal=True), "released": first(run_log, "release"),
                     "claimed": first(spare.log("run"), "claim", claimed=True)}
            timings = {f"xid_to_{name}_s": log_epoch(line) - xid_at for name, line in marks.items() if line}
            timings["xid_to_unhealthy_s"] = _health_calls(lifecycle)[0]["at"] - xid_at
            if resumed and resumed.first_step_at:
                timings["xid_to_resumed_s"] = resumed.first_step_at - xid_at
            final_prefix = cloud.read(f"runs/{run_id}/LATEST").decode()
            return XidResult(
                run_id=run_id, run=run, steps=steps, reference_state=(reference_dir / "state.json").read_bytes(),
                final_state=cloud.read(final_prefix + "state.json"), attempts=attempts,
                health_calls=_health_calls(lifecycle), completes=lifecycle.calls_of("CompleteLifecycleAction"),
                alerts=cloud.alerts(), timings=timings,
                logs={i.instance_id: {n: i.log(n) for n in ("run", "watch", "checkpoint")} for i in (faulty, spare)})
        finally:
            for instance in (faulty, spare):
                instance.close()
            if reference.poll() is None:
                reference.kill()
                reference.wait()


@dataclass
class GateResult:
    run: dict
    health_calls: List[dict]
    alerts: List[dict]
    run_log: List[dict]


def run_gate_drill(workdir: Path, *, query_gpu: str = "g5-query-gpu-uncorrected-ecc.csv",
                   settings: Optional[AgentSettings] = None) -> GateResult:
    """One instance whose GPU reports uncorrected ECC errors at launch, one PENDING run."""
    settings = settings or AgentSettings()
    with Cloud() as cloud, LifecycleStub() as lifecycle:
        run_id = f"gate-{uuid.uuid4().hex[:8]}"
        cloud.put_run(run_item(run_id, run_spec(trainer_command(steps=10, checkpoint_every=5, step_seconds=0,
                                                                checkpoint_bytes=0), max_failures=1)))
        instance = SimInstance(workdir, INSTANCE_IDS[0], cloud, lifecycle, settings, query_gpu=query_gpu)
        try:
            instance.start(watch=False)
            # The loop's first turn after the gate: "instance is draining: no new run".
            wait_until(lambda: instance.check_alive() or first(instance.log("run"), "claim"), "the first claim turn")
            wait_until(lambda: cloud.alerts_seen(), "the gate's alert")
            instance.stop()
            return GateResult(run=cloud.run(run_id), health_calls=_health_calls(lifecycle),
                              alerts=cloud.alerts_seen(), run_log=instance.log("run"))
        finally:
            instance.close()


@dataclass
class HungResult:
    run: dict
    alerts: List[dict]
    run_log: List[dict]
    last_progress_to_alert_s: List[float]


def run_hung_drill(workdir: Path, *, hung_after_seconds: float = 2.0, hang_at_step: int = 30,
                   max_failures: int = 1, settings: Optional[AgentSettings] = None) -> HungResult:
    """One instance, a trainer that stops making progress at `hang_at_step`; ML_HUNG_ACTION=restart."""
    settings = settings or AgentSettings()
    settings.hung_after_seconds, settings.hung_action = hung_after_seconds, "restart"
    command = trainer_command(steps=1000, checkpoint_every=20, step_seconds=0.01, checkpoint_bytes=0) + [
        "--hang-at-step", str(hang_at_step)]
    with Cloud() as cloud, LifecycleStub() as lifecycle:
        run_id = f"hung-{uuid.uuid4().hex[:8]}"
        cloud.put_run(run_item(run_id, run_spec(command, max_failures=max_failures)))
        instance = SimInstance(workdir, INSTANCE_IDS[0], cloud, lifecycle, settings)
        try:
            instance.start(watch=False)
            run = wait_until(lambda: (lambda r: r if r.get("state") == "FAILED" else None)(cloud.run(run_id)),
                             f"run {run_id} to fail as hung")
            wait_until(lambda: first(instance.log("run"), "job-finished"), "the job-finished decision")
            instance.stop()
            run_log = instance.log("run")
            lasts = [max(e["t"] for e in events if e["event"] == "step")
                     for _, events in sorted(instance.trainer_logs().items())]
            alerts_at = [log_epoch(line) for line in run_log if line.get("step") == "alert"
                         and line.get("subject", "").endswith(" hung")]
            return HungResult(run=run, alerts=cloud.alerts(), run_log=run_log,
                              last_progress_to_alert_s=[a - p for p, a in zip(lasts, alerts_at)])
        finally:
            instance.close()
