"""The node agent's local interruption drill (used by test_drill.py and bench/drill.py).

Everything runs on 127.0.0.1 and stops by itself:

* a real training process (trainer.py) that checkpoints on SIGUSR1,
* a fake IMDSv2 that starts returning spot/instance-action on `announce()`,
* moto's S3 server (ThreadedMotoServer),
* a small Auto Scaling Query-API stub for the two lifecycle calls moto does
  not implement; it knows which token is active and answers a used one with
  the real "No active Lifecycle Action found" ValidationError,
* a `systemctl` shim on the agent's PATH that sends the signal to the
  trainer's pid the way `systemctl kill --signal=... UNIT` would,
* the agent itself, `ml_node_agent.py watch` as a subprocess, and then the
  Run Command path (`ml_node_agent.py checkpoint ...` with a lifecycle token)
  as a second subprocess while the first checkpoint is under way.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

import boto3

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "node_agent" / "ml_node_agent.py"
TRAINER = Path(__file__).resolve().parent / "trainer.py"

INSTANCE_ID = "i-0d1a2b3c4d5e6f708"
BUCKET = "ml-drill-checkpoints"
REGION = "us-east-1"
UNIT = "ml-training.service"
HOOK = "ml-drill-terminate-hook"
GROUP = "ml-drill-gpu-fleet"
SPOT_NOTICE_SECONDS = 120.0


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

    def _send(self, status: int, body: str = "") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:
        imds: FakeImds = self.server.owner  # type: ignore[attr-defined]
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if self.path != "/latest/api/token" or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            self._send(400)
            return
        with imds.lock:
            imds.token_requests += 1
        self._send(200, imds.token)

    def do_GET(self) -> None:
        imds: FakeImds = self.server.owner  # type: ignore[attr-defined]
        if self.headers.get("X-aws-ec2-metadata-token") != imds.token:
            self._send(401)
            return
        with imds.lock:
            imds.gets.append(self.path)
            notice = imds.notice
        if self.path == "/latest/meta-data/instance-id":
            self._send(200, imds.instance_id)
        elif self.path == "/latest/meta-data/spot/instance-action" and notice is not None:
            self._send(200, json.dumps(notice))
        else:
            self._send(404)


class FakeImds(_Server):
    """IMDSv2 that requires a session token; spot/instance-action is 404 until announce()."""

    handler = _ImdsHandler

    def __init__(self, instance_id: str = INSTANCE_ID) -> None:
        super().__init__()
        self.instance_id = instance_id
        self.token = "imds-token-" + uuid.uuid4().hex
        self.lock = threading.Lock()
        self.notice: Optional[dict] = None
        self.notice_at: Optional[float] = None
        self.token_requests = 0
        self.gets: List[str] = []

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
            known = action in ("CompleteLifecycleAction", "RecordLifecycleActionHeartbeat")
            active = token in stub.active_tokens
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


SYSTEMCTL_SHIM = """#!/bin/sh
# systemctl shim for the drill: `systemctl kill --signal=SIG UNIT` signals the
# trainer's pid; any other unit is "not loaded", as with the real systemctl.
echo "$*" >> "$DRILL_SYSTEMCTL_LOG"
[ "$1" = kill ] || { echo "drill shim: only 'kill' is supported" >&2; exit 1; }
sig=${2#--signal=}
unit=$3
if [ "$unit" != "$DRILL_TRAINING_UNIT" ]; then
  echo "Failed to kill unit $unit: Unit $unit not loaded." >&2
  exit 1
fi
pid=$(sed -n 's/.*"pid": *\\([0-9]*\\).*/\\1/p' "$DRILL_TRAINER_STATE")
exec kill -s "${sig#SIG}" "$pid"
"""


def parse_log(text: str) -> List[dict]:
    lines = []
    for raw in text.splitlines():
        raw = raw.strip()
        if raw.startswith("{"):
            lines.append(json.loads(raw))
    return lines


def log_epoch(line: dict) -> float:
    return dt.datetime.strptime(line["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()


def first(lines: List[dict], step: str, **match) -> Optional[dict]:
    for line in lines:
        if line.get("step") == step and all(line.get(k) == v for k, v in match.items()):
            return line
    return None


@dataclass
class DrillResult:
    notice_at: float
    watch_exit: int
    checkpoint_exit: int
    watch_log: List[dict]
    checkpoint_log: List[dict]
    trainer_state: dict
    systemctl_calls: List[str]
    lifecycle_calls: List[dict]
    token: str
    objects: Dict[str, bytes]
    local_files: Dict[str, bytes]
    timings: Dict[str, float] = field(default_factory=dict)


def _wait_until(predicate, timeout: float, what: str, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"drill: timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def run_drill(workdir: Path, *, poll_seconds: float = 5.0, checkpoint_mb: float = 1.0,
              save_seconds: float = 0.5, budget_seconds: int = 90, heartbeat_seconds: int = 30,
              notice_after_seconds: float = 1.0, timeout_seconds: float = 150.0,
              agent_python: str = sys.executable) -> DrillResult:
    """Run one interruption drill in `workdir`; every process and server is stopped on return.

    `agent_python` runs the agent (e.g. a Python 3.9 with boto3, the oldest the agent supports).
    """
    from moto.server import ThreadedMotoServer

    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = workdir / "checkpoints"
    state_dir = workdir / "agent-state"
    bin_dir = workdir / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "systemctl"
    shim.write_text(SYSTEMCTL_SHIM)
    shim.chmod(0o755)
    trainer_state = workdir / "trainer.json"
    systemctl_log = workdir / "systemctl.log"
    systemctl_log.write_text("")

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    processes: List[subprocess.Popen] = []
    try:
        host, port = moto.get_host_and_port()
        s3_url = f"http://{host}:{port}"
        s3 = boto3.client("s3", region_name=REGION, endpoint_url=s3_url,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket=BUCKET)
        # The previous checkpoint: it must survive the new upload.
        s3.put_object(Bucket=BUCKET, Key=f"{INSTANCE_ID}/20260101T000000Z/model.bin", Body=b"previous")
        s3.put_object(Bucket=BUCKET, Key=f"{INSTANCE_ID}/LATEST", Body=f"{INSTANCE_ID}/20260101T000000Z/".encode())

        with FakeImds() as imds, LifecycleStub() as lifecycle:
            env = {
                "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                "HOME": str(workdir),
                "PYTHONDONTWRITEBYTECODE": "1",
                "ML_ENV_FILE": str(workdir / "no-such.env"),
                "ML_STATE_DIR": str(state_dir),
                "ML_IMDS_ENDPOINT": imds.url,
                "ML_CHECKPOINT_BUCKET": BUCKET,
                "ML_CHECKPOINT_DIR": str(checkpoint_dir),
                "ML_CHECKPOINT_DONE_MARKER": "CHECKPOINT_DONE",
                "ML_TRAINING_UNIT": UNIT,
                "ML_TRAINING_SIGNAL": "SIGUSR1",
                "ML_CHECKPOINT_BUDGET_SECONDS": str(budget_seconds),
                "ML_HEARTBEAT_SECONDS": str(heartbeat_seconds),
                "ML_AUTOSCALING_GROUP_NAME": GROUP,
                "ML_LIFECYCLE_HOOK_NAME": HOOK,
                "AWS_REGION": REGION,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_ENDPOINT_URL_S3": s3_url,
                "AWS_ENDPOINT_URL_AUTO_SCALING": lifecycle.url,
                "DRILL_SYSTEMCTL_LOG": str(systemctl_log),
                "DRILL_TRAINING_UNIT": UNIT,
                "DRILL_TRAINER_STATE": str(trainer_state),
            }
            trainer = subprocess.Popen(
                [sys.executable, str(TRAINER), "--state-file", str(trainer_state),
                 "--checkpoint-mb", str(checkpoint_mb), "--save-seconds", str(save_seconds),
                 "--max-seconds", str(timeout_seconds)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            processes.append(trainer)
            _wait_until(lambda: "pid" in _read_json(trainer_state), 30, "the trainer to start")

            watch = subprocess.Popen(
                [agent_python, str(AGENT), "watch", "--poll-seconds", str(poll_seconds), "--exit-after-notice"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            processes.append(watch)
            _wait_until(lambda: "/latest/meta-data/spot/instance-action" in imds.gets, 30,
                        "the agent's first IMDS poll")
            time.sleep(notice_after_seconds)
            notice_at = imds.announce()

            # The lifecycle hook fires while the IMDS-triggered checkpoint is
            # under way; Run Command starts the same agent with its token.
            _wait_until(lambda: _read_json(trainer_state).get("signals", 0) >= 1, timeout_seconds,
                        "the trainer to be signalled")
            token = lifecycle.open_action()
            checkpoint = subprocess.Popen(
                [agent_python, str(AGENT), "checkpoint", "--reason", "lifecycle-terminate",
                 "--event-id", f"drill-{uuid.uuid4()}", "--lifecycle-hook-name", HOOK,
                 "--lifecycle-action-token", token, "--autoscaling-group-name", GROUP],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            processes.append(checkpoint)

            watch_out, watch_err = watch.communicate(timeout=timeout_seconds)
            checkpoint_out, checkpoint_err = checkpoint.communicate(timeout=timeout_seconds)
            if watch.returncode != 0 or checkpoint.returncode != 0:
                sys.stderr.write(watch_out + watch_err + checkpoint_out + checkpoint_err)

            objects = {}
            paginator = s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=BUCKET, Prefix=f"{INSTANCE_ID}/"):
                for item in page.get("Contents", []):
                    objects[item["Key"]] = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            local_files = {p.relative_to(checkpoint_dir).as_posix(): p.read_bytes()
                           for p in sorted(checkpoint_dir.rglob("*")) if p.is_file()}
            result = DrillResult(
                notice_at=notice_at,
                watch_exit=watch.returncode,
                checkpoint_exit=checkpoint.returncode,
                watch_log=parse_log(watch_out),
                checkpoint_log=parse_log(checkpoint_out),
                trainer_state=_read_json(trainer_state),
                systemctl_calls=systemctl_log.read_text().splitlines(),
                lifecycle_calls=list(lifecycle.calls),
                token=token,
                objects=objects,
                local_files=local_files,
            )
            result.timings = _timings(result)
            return result
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        moto.stop()


def _timings(result: DrillResult) -> Dict[str, float]:
    timings: Dict[str, float] = {}
    detected = first(result.watch_log, "notice")
    signalled = first(result.watch_log, "signal")
    uploaded = first(result.watch_log, "latest")
    if detected:
        timings["notice_to_detected_s"] = log_epoch(detected) - result.notice_at
    if signalled:
        timings["notice_to_signalled_s"] = log_epoch(signalled) - result.notice_at
    if uploaded:
        timings["notice_to_uploaded_s"] = log_epoch(uploaded) - result.notice_at
    completes = [c for c in result.lifecycle_calls if c["action"] == "CompleteLifecycleAction"]
    if completes:
        timings["notice_to_completed_s"] = completes[0]["at"] - result.notice_at
    return timings
