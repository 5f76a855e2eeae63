#!/usr/bin/env python3
"""ml-node-agent: carry training runs across spot instances (CONTRACT.md, RUNS_CONTRACT.md).

Runs on every GPU instance of the training fleet. Python 3.9+, standard
library and boto3 only.

    ml_node_agent.py run
        The run loop: claim one PENDING (or orphaned) run from the runs table
        with a lease, restore runs/<run-id>/LATEST into the checkpoint
        directory, start the trainer (``docker run --gpus all`` or, with
        ML_TRAINER_LAUNCHER=process, a local process), renew the lease, upload
        every completed checkpoint, and record how the attempt ended. Before
        the first claim it checks the GPUs (nvidia-smi, DCGM level 1, no fatal
        Xid since boot; a failing instance marks itself Unhealthy and claims
        nothing); while it runs it follows the kernel log for Xid errors (a
        fatal one checkpoints, releases the run and marks the instance
        Unhealthy) and the trainer's progress file (ML_HUNG_AFTER_SECONDS).

    ml_node_agent.py watch
        Poll IMDSv2 spot/instance-action every second; on a notice run the
        checkpoint flow once (reason ``spot-imds``, no lifecycle token).

    ml_node_agent.py checkpoint --reason REASON --event-id ID
        [--lifecycle-hook-name NAME --lifecycle-action-token TOKEN
         --autoscaling-group-name NAME]
        Signal the current run's trainer, wait for its checkpoint-done marker,
        upload the checkpoint to s3://BUCKET/runs/<run-id>/<stamp>/ and then
        runs/<run-id>/LATEST, stop the trainer, release the run's lease (the
        run goes back to PENDING for the next instance), then complete the
        lifecycle action (CONTINUE) if a token was given. With no current run
        the lifecycle action is completed at once.

Configuration comes from the environment; variables not set there are read
from ``ML_ENV_FILE`` (default /etc/ml-node-agent.env, written by install.sh),
so the command works the same from the systemd units and from Run Command.
The three commands share state in ``ML_STATE_DIR`` (default /run/ml-node-agent):
the current run, whether the instance is draining, what was uploaded last.

Overrides for tests and drills (never needed on an instance): ``ML_IMDS_ENDPOINT``
(IMDS base URL), ``ML_STATE_DIR``, and boto3's own ``AWS_ENDPOINT_URL`` /
``AWS_ENDPOINT_URL_<SERVICE>``.

Exit codes: 0 checkpoint uploaded (or nothing to upload, or no run), 1 otherwise
(configuration errors included), 2 command-line usage error.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import errno
import fcntl
import http.client
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, TextIO, Tuple

# What Run Command may pass as --reason: the SSM document's allowedPattern
# (constructs_lib/interruption_handler.py) admits exactly these.
CHECKPOINT_REASONS = ("spot-interruption", "rebalance-recommendation", "lifecycle-terminate",
                      "health-scheduled-change", "capacity-block-expiring",
                      "capacity-reservation-interruption")
# Notices of a host that AWS will take away later (a retirement or maintenance
# days ahead, a Capacity Block ending in 40 minutes): after the checkpoint the
# instance marks itself Unhealthy, so the group replaces it now and the run
# resumes elsewhere instead of waiting on a draining instance. A spot or
# capacity-reservation interruption needs no such step (AWS reclaims the
# instance within two minutes and the group replaces it), nor does a
# rebalance recommendation (the group's capacity rebalancing replaces it).
REPLACE_AFTER_CHECKPOINT = ("health-scheduled-change", "capacity-block-expiring")
WATCH_REASON = "spot-imds"
DEFAULT_ENV_FILE = "/etc/ml-node-agent.env"
DEFAULT_STATE_DIR = "/run/ml-node-agent"
DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
IMDS_POLL_SECONDS = 1.0
# Every IMDS read retries (timeouts, resets, 5xx, truncated or garbled bodies)
# until this deadline: one bad answer must never skip a checkpoint.
IMDS_RETRY_SECONDS = 10.0
# A marker whose mtime is this much "before" the request still answers it
# (clocks of a network file system or a container runtime can disagree).
MARKER_SKEW_SECONDS = 2.0
# The whole checkpoint flow (marker wait + upload + release) ends this long
# after the budget, so the lifecycle action is completed before the SSM
# document's execution timeout (budget + 60 s) stops the command.
UPLOAD_GRACE_SECONDS = 45.0
# Uploads while the run is training are not racing a notice: bound them loosely.
BACKGROUND_UPLOAD_SECONDS = 900.0
TRAINER_STOP_SECONDS = 20.0
NO_ACTIVE_LIFECYCLE_ACTION = "No active Lifecycle Action found"
LAUNCHERS = ("docker", "process")
RUN_STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
BY_STATE_INDEX = "by-state"
ECR_IMAGE = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?/")

# Results of a checkpoint attempt; the first three mean exit code 0.
UPLOADED = "uploaded"
NOTHING_NEW = "nothing-new"
NO_RUN = "no-run"
TIMED_OUT = "checkpoint-timeout"
UPLOAD_FAILED = "upload-failed"
LEADER_LOST = "leader-lost"
NO_INSTANCE_ID = "instance-id-unavailable"
INTERNAL_ERROR = "internal-error"
OK_RESULTS = (UPLOADED, NOTHING_NEW, NO_RUN)
# The trainer's progress report (RUNS_CONTRACT.md "The trainer"): ML_PROGRESS_FILE.
PROGRESS_FILE = "PROGRESS"


class ConfigError(Exception):
    """The agent's configuration is missing or invalid; the message names every problem."""


# --------------------------------------------------------------------------- config


def read_env_file(path: Path) -> Dict[str, str]:
    """Parse the KEY=value / KEY="value" lines install.sh writes (systemd EnvironmentFile syntax)."""
    values: Dict[str, str] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return values
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        key, value = key.strip(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        values[key] = value
    return values


def merged_environment(environ: Mapping[str, str]) -> Dict[str, str]:
    """The process environment wins; the env file fills in what it lacks."""
    env_file = Path(environ.get("ML_ENV_FILE") or DEFAULT_ENV_FILE)
    merged = read_env_file(env_file)
    merged.update({k: v for k, v in environ.items() if v != ""})
    return merged


def _signal_name(value: str) -> str:
    name = value.strip().upper()
    if name.isdigit():
        return signal.Signals(int(name)).name
    if not name.startswith("SIG"):
        name = "SIG" + name
    return signal.Signals[name].name


class _Checker:
    """Collects every configuration problem so one message names them all."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: List[str] = []

    def required(self, name: str, hint: str) -> str:
        value = self.env.get(name, "").strip()
        if not value:
            self.problems.append(f"{name} is not set ({hint})")
        return value

    def number(self, name: str, default: str, low: float, high: float, unit: str = "seconds") -> float:
        raw = self.env.get(name, default).strip()
        try:
            value = float(raw)
        except ValueError:
            self.problems.append(f"{name}={raw!r} is not a number of {unit} ({low:g} to {high:g})")
            return 0.0
        if not low <= value <= high:
            self.problems.append(f"{name}={raw!r} is out of range ({low:g} to {high:g} {unit})")
        return value

    def choice(self, name: str, default: str, allowed: Tuple[str, ...]) -> str:
        value = self.env.get(name, default).strip()
        if value not in allowed:
            self.problems.append(f"{name}={value!r} is not one of {', '.join(allowed)}")
        return value


@dataclass(frozen=True)
class HealthSettings:
    """GPU health and hung-run settings (RUNS_CONTRACT.md "Health"); every one has a default."""

    gate: bool = True
    expected_gpus: Optional[int] = None
    ecc_uncorrected_max: int = 0
    retired_pages_max: int = 60
    kernel_log: str = "journal"
    progress_dir: Path = Path("/opt/ml/progress")
    hung_after_seconds: float = 0.0
    hung_action: str = "alert"
    metrics_namespace: str = "ML/Training"
    gpu_poll_seconds: float = 60.0

    @property
    def progress_file(self) -> Path:
        return self.progress_dir / PROGRESS_FILE

    @classmethod
    def from_env(cls, check: "_Checker", env: Mapping[str, str]) -> "HealthSettings":
        gate = check.choice("ML_HEALTH_GATE", "on", ("on", "off")) == "on"
        expected_raw = env.get("ML_EXPECTED_GPU_COUNT", "").strip()
        expected = int(check.number("ML_EXPECTED_GPU_COUNT", expected_raw, 0, 64, "GPUs")) if expected_raw else None
        kernel_log = env.get("ML_KERNEL_LOG", "").strip() or "journal"
        if kernel_log not in ("journal", "off") and not kernel_log.startswith("/"):
            check.problems.append(f"ML_KERNEL_LOG={kernel_log!r} is not 'journal', 'off' or an absolute file path")
        progress_dir = env.get("ML_PROGRESS_DIR", "").strip() or "/opt/ml/progress"
        if not progress_dir.startswith("/"):
            check.problems.append(f"ML_PROGRESS_DIR={progress_dir!r} is not an absolute path")
        return cls(
            gate=gate, expected_gpus=expected,
            ecc_uncorrected_max=int(check.number("ML_GPU_ECC_UNCORRECTED_MAX", "0", 0, 1e9, "errors")),
            retired_pages_max=int(check.number("ML_GPU_RETIRED_PAGES_MAX", "60", 0, 1e6, "pages")),
            kernel_log=kernel_log, progress_dir=Path(progress_dir),
            hung_after_seconds=check.number("ML_HUNG_AFTER_SECONDS", "0", 0, 7 * 86400),
            hung_action=check.choice("ML_HUNG_ACTION", "alert", ("alert", "restart")),
            metrics_namespace=env.get("ML_METRICS_NAMESPACE", "").strip() or "ML/Training",
            gpu_poll_seconds=check.number("ML_GPU_POLL_SECONDS", "60" if gate else "0", 0, 86400))


@dataclass(frozen=True)
class Config:
    bucket: str
    checkpoint_dir: Path
    done_marker: str
    training_signal: str
    budget_seconds: float
    heartbeat_seconds: float
    region: str
    autoscaling_group_name: Optional[str]
    lifecycle_hook_name: Optional[str]
    imds_endpoint: str
    state_dir: Path
    stage: str
    runs_table: str
    runs_log_group: str
    alerts_topic_arn: str
    event_bus_name: str
    launcher: str
    lease_seconds: float
    lease_renew_seconds: float
    claim_poll_seconds: float
    gpu_count: Optional[int]
    health: HealthSettings = HealthSettings()

    @property
    def marker_path(self) -> Path:
        return self.checkpoint_dir / self.done_marker

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Config":
        check = _Checker(env)
        bucket = check.required("ML_CHECKPOINT_BUCKET", "the checkpoint bucket name")
        checkpoint_dir = check.required("ML_CHECKPOINT_DIR", "the directory the trainer writes its checkpoint to")
        stage = check.required("ML_STAGE", "the stage name, used in alert subjects")
        table = check.required("ML_RUNS_TABLE", "the runs table name")
        log_group = check.required("ML_RUNS_LOG_GROUP", "the CloudWatch log group of trainer output")
        topic = check.required("ML_ALERTS_TOPIC_ARN", "the SNS topic for FAILED runs")
        region = env.get("AWS_REGION", "").strip() or env.get("AWS_DEFAULT_REGION", "").strip()
        if not region:
            check.problems.append("AWS_REGION is not set (the region of the bucket, table and group)")
        if checkpoint_dir and not checkpoint_dir.startswith("/"):
            check.problems.append(f"ML_CHECKPOINT_DIR={checkpoint_dir!r} is not an absolute path")
        marker = env.get("ML_CHECKPOINT_DONE_MARKER", "CHECKPOINT_DONE").strip()
        if not marker or "/" in marker or marker in (".", ".."):
            check.problems.append(f"ML_CHECKPOINT_DONE_MARKER={marker!r} is not a plain file name")
        raw_signal = env.get("ML_TRAINING_SIGNAL", "SIGUSR1")
        try:
            training_signal = _signal_name(raw_signal)
        except (KeyError, ValueError):
            training_signal = ""
            check.problems.append(f"ML_TRAINING_SIGNAL={raw_signal!r} is not a signal name, e.g. SIGUSR1")
        budget = check.number("ML_CHECKPOINT_BUDGET_SECONDS", "90", 1, 7200)
        heartbeat = check.number("ML_HEARTBEAT_SECONDS", "30", 1, 7200)
        lease = check.number("ML_LEASE_SECONDS", "90", 1, 7200)
        renew = check.number("ML_LEASE_RENEW_SECONDS", "30", 0.1, 7200)
        if lease and renew and renew >= lease:
            check.problems.append(f"ML_LEASE_RENEW_SECONDS={renew:g} must be shorter than ML_LEASE_SECONDS={lease:g}")
        claim_poll = check.number("ML_CLAIM_POLL_SECONDS", "15", 0.05, 3600)
        gpu_raw = env.get("ML_GPU_COUNT", "").strip()
        gpu_count = None
        if gpu_raw:
            if gpu_raw.isdigit():
                gpu_count = int(gpu_raw)
            else:
                check.problems.append(f"ML_GPU_COUNT={gpu_raw!r} is not a whole number of GPUs (0 or more)")
        launcher = check.choice("ML_TRAINER_LAUNCHER", "docker", LAUNCHERS)
        health = HealthSettings.from_env(check, env)
        if check.problems:
            raise ConfigError("invalid node agent configuration: " + "; ".join(check.problems))
        return cls(
            bucket=bucket, checkpoint_dir=Path(checkpoint_dir), done_marker=marker,
            training_signal=training_signal, budget_seconds=budget, heartbeat_seconds=heartbeat,
            region=region,
            autoscaling_group_name=env.get("ML_AUTOSCALING_GROUP_NAME") or None,
            lifecycle_hook_name=env.get("ML_LIFECYCLE_HOOK_NAME") or None,
            imds_endpoint=(env.get("ML_IMDS_ENDPOINT") or DEFAULT_IMDS_ENDPOINT).rstrip("/"),
            state_dir=Path(env.get("ML_STATE_DIR") or DEFAULT_STATE_DIR),
            stage=stage, runs_table=table, runs_log_group=log_group, alerts_topic_arn=topic,
            event_bus_name=env.get("ML_EVENT_BUS_NAME", "").strip() or "default",
            launcher=launcher, lease_seconds=lease, lease_renew_seconds=renew,
            claim_poll_seconds=claim_poll, gpu_count=gpu_count, health=health,
        )


# --------------------------------------------------------------------------- logging


def _utc_iso(epoch: float) -> str:
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utc_seconds(epoch: float) -> str:
    """The runs table's time format: ISO-8601 UTC to the second."""
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc_seconds(value: str) -> Optional[float]:
    try:
        return _dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.timezone.utc).timestamp()
    except (TypeError, ValueError):
        return None


class JsonLog:
    """One JSON object per line on stdout (Run Command and journald capture it); thread-safe."""

    _lock = threading.Lock()

    def __init__(self, stream: Optional[TextIO] = None, clock: Callable[[], float] = time.time,
                 **context: Any) -> None:
        self._stream = stream
        self._clock = clock
        self._context = {k: v for k, v in context.items() if v is not None}

    def bind(self, **context: Any) -> "JsonLog":
        return JsonLog(self._stream, self._clock, **{**self._context, **context})

    def __call__(self, step: str, level: str = "info", **fields: Any) -> None:
        line = {"ts": _utc_iso(self._clock()), "level": level, "agent": "ml-node-agent", "step": step}
        line.update(self._context)
        line.update({k: v for k, v in fields.items() if v is not None})
        stream = self._stream or sys.stdout
        with self._lock:
            stream.write(json.dumps(line, default=str) + "\n")
            stream.flush()


# --------------------------------------------------------------------------- IMDSv2


class ImdsError(Exception):
    pass


class Imds:
    """Minimal IMDSv2 client: session token from PUT /latest/api/token, re-fetched on expiry or 401.

    Every read retries a timeout, a reset, an HTTP 5xx, a truncated or
    non-UTF-8 body until ``retry_seconds`` have passed, then raises ImdsError
    (never anything else).
    """

    TOKEN_TTL_SECONDS = 21600

    def __init__(self, endpoint: str, timeout_seconds: float = 1.0, retry_seconds: float = IMDS_RETRY_SECONDS,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 cache_dir: Optional[Path] = None) -> None:
        self._endpoint = endpoint.rstrip("/")
        self._timeout = timeout_seconds
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._sleep = sleep
        self._cache_dir = cache_dir
        self._token: Optional[str] = None
        self._token_expires = 0.0

    def _request(self, method: str, path: str, headers: Dict[str, str]) -> Tuple[int, str]:
        request = urllib.request.Request(self._endpoint + path, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return response.status, response.read().decode("utf-8")
        except urllib.error.HTTPError as error:
            return error.code, ""
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as error:
            # ValueError covers UnicodeDecodeError; HTTPException covers IncompleteRead.
            raise ImdsError(f"IMDS {method} {path} failed: {type(error).__name__}: {error}") from error

    def _token_once(self) -> str:
        if self._token is None or self._clock() >= self._token_expires:
            status, body = self._request(
                "PUT", "/latest/api/token",
                {"X-aws-ec2-metadata-token-ttl-seconds": str(self.TOKEN_TTL_SECONDS)})
            if status != 200 or not body:
                raise ImdsError(f"IMDS token request returned HTTP {status}")
            self._token = body
            # Renew a minute early so a token never expires between fetch and use.
            self._token_expires = self._clock() + self.TOKEN_TTL_SECONDS - 60
        return self._token

    def _get_once(self, path: str) -> Optional[str]:
        for attempt in range(2):
            status, body = self._request("GET", path, {"X-aws-ec2-metadata-token": self._token_once()})
            if status == 200:
                return body
            if status == 404:
                return None
            if status == 401 and attempt == 0:
                self._token = None
                continue
            raise ImdsError(f"IMDS GET {path} returned HTTP {status}")
        raise ImdsError(f"IMDS GET {path} kept returning HTTP 401")

    def _retrying(self, read: Callable[[], Any], retry_seconds: Optional[float] = None) -> Any:
        deadline = self._clock() + (self._retry_seconds if retry_seconds is None else retry_seconds)
        delay = 0.05
        while True:
            try:
                return read()
            except ImdsError:
                if self._clock() + delay > deadline:
                    raise
            self._sleep(delay)
            delay = min(delay * 2, 1.0)

    def get(self, path: str, retry_seconds: Optional[float] = None) -> Optional[str]:
        """Body of a metadata path, or None when it does not exist (HTTP 404)."""
        return self._retrying(lambda: self._get_once(path), retry_seconds)

    def instance_id(self) -> str:
        """This instance's ID; falls back to the last one read on this boot if IMDS stays unreachable."""
        cache = self._cache_dir / "instance-id" if self._cache_dir else None

        def read() -> str:
            value = (self._get_once("/latest/meta-data/instance-id") or "").strip()
            if not re.fullmatch(r"i-[0-9a-f]{8,32}", value):
                raise ImdsError(f"IMDS instance-id is not an instance ID: {value[:80]!r}")
            return value

        try:
            value = self._retrying(read)
        except ImdsError:
            cached = _read_text(cache) if cache else None
            if cached and re.fullmatch(r"i-[0-9a-f]{8,32}", cached):
                return cached
            raise
        if cache:
            _atomic_write(cache, value)
        return value

    def spot_instance_action(self, retry_seconds: Optional[float] = None) -> Optional[Dict[str, Any]]:
        def read() -> Optional[Dict[str, Any]]:
            body = self._get_once("/latest/meta-data/spot/instance-action")
            if body is None:
                return None
            try:
                notice = json.loads(body)
            except ValueError as error:
                raise ImdsError(f"IMDS spot/instance-action is not JSON: {body[:200]!r}") from error
            if not isinstance(notice, dict) or "action" not in notice:
                raise ImdsError(f"IMDS spot/instance-action has no action: {body[:200]!r}")
            return notice

        return self._retrying(read, retry_seconds)


# --------------------------------------------------------------------------- shared state


def _read_text(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class FileLock:
    """An flock on a file in the state dir, shared by the agent's processes (dropped if a holder dies)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: Optional[int] = None
        self._local = threading.Lock()

    def acquire(self, timeout: Optional[float] = None, tick: Callable[[], None] = lambda: None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._local.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            return False
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(str(self._path), os.O_RDWR | os.O_CREAT, 0o600)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                return True
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    self._local.release()
                    raise
            if deadline is not None and time.monotonic() >= deadline:
                os.close(fd)
                self._local.release()
                return False
            tick()
            time.sleep(0.05)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._local.release()

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class NodeState:
    """What the run loop, `watch` and Run Command share on this instance (files in the state dir).

    ``current-run.json``: the run this instance holds (run id, attempt, how
    to reach its trainer, phase ``starting|running|finishing|released``).
    ``draining.json``: an interruption began; no new run is claimed or started.
    ``uploads.json``: the marker mtime and prefix of the last uploaded checkpoint.
    ``run.lock`` orders claim/start/finish against an interruption;
    ``upload.lock`` makes uploads one at a time.
    """

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.run_lock = FileLock(state_dir / "run.lock")
        self.upload_lock = FileLock(state_dir / "upload.lock")

    def _read(self, name: str) -> Dict[str, Any]:
        try:
            value = json.loads((self.dir / name).read_text())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def _write(self, name: str, record: Dict[str, Any]) -> None:
        _atomic_write(self.dir / name, json.dumps(record, sort_keys=True))

    def current_run(self) -> Dict[str, Any]:
        return self._read("current-run.json")

    def set_current_run(self, record: Dict[str, Any]) -> None:
        self._write("current-run.json", record)

    def update_current_run(self, **fields: Any) -> Dict[str, Any]:
        record = self.current_run()
        record.update(fields)
        self.set_current_run(record)
        return record

    def clear_current_run(self) -> None:
        try:
            (self.dir / "current-run.json").unlink()
        except FileNotFoundError:
            pass

    def draining(self) -> Dict[str, Any]:
        return self._read("draining.json")

    def start_draining(self, reason: str, event_id: str, now: float) -> None:
        if not self.draining():
            self._write("draining.json", {"reason": reason, "event_id": event_id, "since": now})

    def uploads(self) -> Dict[str, Any]:
        return self._read("uploads.json")

    def set_uploads(self, record: Dict[str, Any]) -> None:
        self._write("uploads.json", record)


# --------------------------------------------------------------------------- trainer launchers


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def container_name(run_id: str, attempt: int) -> str:
    return f"ml-run-{run_id}-{attempt}"


def log_stream_name(run_id: str, attempt: int, instance_id: str) -> str:
    return f"{run_id}/{attempt}-{instance_id}"


def signal_trainer(record: Mapping[str, Any], signal_name: str, log: JsonLog, run: Runner = subprocess.run) -> bool:
    """Send the signal to the trainer described by a current-run record; True when it was delivered."""
    if record.get("container"):
        command = ["docker", "kill", f"--signal={signal_name}", record["container"]]
        try:
            result = run(command, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as error:
            log("signal", level="error", container=record["container"], signal=signal_name, signalled=False,
                error=str(error))
            return False
        if result.returncode != 0:
            log("signal", level="warning", container=record["container"], signal=signal_name, signalled=False,
                exit_code=result.returncode, error=(result.stderr or result.stdout or "").strip()[:500])
            return False
        log("signal", container=record["container"], signal=signal_name, signalled=True)
        return True
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 1 or not _pid_alive(pid):
        log("signal", level="warning", signal=signal_name, signalled=False, error="no trainer is running")
        return False
    try:
        os.kill(pid, signal.Signals[signal_name])
    except OSError as error:
        log("signal", level="warning", pid=pid, signal=signal_name, signalled=False, error=str(error))
        return False
    log("signal", pid=pid, signal=signal_name, signalled=True)
    return True


def stop_trainer(record: Mapping[str, Any], log: JsonLog, run: Runner = subprocess.run,
                 grace_seconds: float = TRAINER_STOP_SECONDS) -> None:
    """SIGTERM, then SIGKILL after the grace period (`docker stop -t` for a container)."""
    if record.get("container"):
        try:
            run(["docker", "stop", "-t", str(int(grace_seconds)), record["container"]], capture_output=True,
                text=True, timeout=grace_seconds + 30)
        except (OSError, subprocess.SubprocessError) as error:
            log("stop-trainer", level="error", container=record["container"], error=str(error))
            return
        log("stop-trainer", container=record["container"])
        return
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 1:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.05)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    log("stop-trainer", pid=pid)


def _pid_alive(pid: int) -> bool:
    """Running (a zombie is not; it is left for its parent to reap, whose exit code it is)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _read_text(Path(f"/proc/{pid}/stat")) or ""
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


@dataclass
class TrainerProcess:
    """A started trainer: its current-run fields and a way to learn its exit code."""

    fields: Dict[str, Any]
    poll: Callable[[], Optional[int]]


class ProcessLauncher:
    """The trainer as a local process: `command + args`, output to a log file (the drill, tests)."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir

    def start(self, run_id: str, attempt: int, instance_id: str, spec: Mapping[str, Any],
              env: Mapping[str, str], log: JsonLog) -> TrainerProcess:
        argv = list(spec.get("command") or []) + list(spec.get("args") or [])
        if not argv:
            raise LaunchError("the process launcher needs spec.command")
        path = self._log_dir / log_stream_name(run_id, attempt, instance_id).replace("/", "_")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as out:
            try:
                process = subprocess.Popen(argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL)
            except OSError as error:
                raise LaunchError(f"cannot start {argv[0]}: {error}") from error
        log("trainer-start", launcher="process", pid=process.pid, argv=argv, output=str(path))
        return TrainerProcess({"pid": process.pid}, process.poll)


class LaunchError(Exception):
    """The trainer could not be started; the attempt counts as a failure (exit code 125, as docker)."""


class DockerLauncher:
    """`docker run --gpus all` with the awslogs driver, after an ECR login when the image is in ECR."""

    def __init__(self, config: Config, ecr_factory: Callable[[str], Any], run: Runner = subprocess.run,
                 popen: Callable[..., Any] = subprocess.Popen) -> None:
        self._config = config
        self._ecr_factory = ecr_factory
        self._run = run
        self._popen = popen

    def login(self, image: str, log: JsonLog) -> None:
        match = ECR_IMAGE.match(image)
        if not match:
            return
        registry_id, region = match.group(1), match.group(2)
        data = self._ecr_factory(region).get_authorization_token(registryIds=[registry_id])["authorizationData"][0]
        user, password = base64.b64decode(data["authorizationToken"]).decode().split(":", 1)
        result = self._run(["docker", "login", "--username", user, "--password-stdin", data["proxyEndpoint"]],
                           input=password, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise LaunchError(f"docker login {data['proxyEndpoint']} failed: {(result.stderr or '').strip()[:300]}")
        log("ecr-login", registry=data["proxyEndpoint"])

    def command(self, run_id: str, attempt: int, instance_id: str, spec: Mapping[str, Any],
                env: Mapping[str, str]) -> List[str]:
        config = self._config
        ckpt = str(config.checkpoint_dir)
        argv = ["docker", "run", "--detach", "--name", container_name(run_id, attempt), "--init", "--gpus", "all",
                "--ipc", "host",
                "--log-driver", "awslogs", "--log-opt", f"awslogs-region={config.region}",
                "--log-opt", f"awslogs-group={config.runs_log_group}",
                "--log-opt", f"awslogs-stream={log_stream_name(run_id, attempt, instance_id)}",
                "--volume", f"{ckpt}:{ckpt}",
                "--volume", f"{config.health.progress_dir}:{config.health.progress_dir}"]
        for name in sorted(env):
            argv += ["--env", name]  # the value comes from docker's own environment, never the command line
        command = list(spec.get("command") or [])
        if command:
            argv += ["--entrypoint", command[0]]
        return argv + [spec["image"]] + command[1:] + list(spec.get("args") or [])

    def prepare(self, spec: Mapping[str, Any], log: JsonLog) -> None:
        """Log in to ECR if needed and pull the image (outside the run lock: a pull can take minutes)."""
        self.login(spec["image"], log)
        result = self._run(["docker", "pull", spec["image"]], capture_output=True, text=True, timeout=3600)
        if result.returncode != 0:
            raise LaunchError(f"docker pull {spec['image']} failed: {(result.stderr or '').strip()[:500]}")
        log("image-pull", image=spec["image"])

    def start(self, run_id: str, attempt: int, instance_id: str, spec: Mapping[str, Any],
              env: Mapping[str, str], log: JsonLog) -> TrainerProcess:
        name = container_name(run_id, attempt)
        self._run(["docker", "rm", "--force", name], capture_output=True, text=True, timeout=60)
        argv = self.command(run_id, attempt, instance_id, spec, env)
        result = self._run(argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise LaunchError(f"docker run failed ({result.returncode}): {(result.stderr or '').strip()[:500]}")
        log("trainer-start", launcher="docker", container=name, image=spec["image"])
        return self.adopt(name)

    def adopt(self, name: str) -> TrainerProcess:
        waiter = self._popen(["docker", "wait", name], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

        def poll() -> Optional[int]:
            if waiter.poll() is None:
                return None
            out = (waiter.stdout.read() if waiter.stdout else "").strip()
            self._run(["docker", "rm", name], capture_output=True, text=True, timeout=60)
            return int(out) if out.lstrip("-").isdigit() else 125

        return TrainerProcess({"container": name}, poll)

    def running(self, name: str) -> bool:
        result = self._run(["docker", "inspect", "--format", "{{.State.Running}}", name], capture_output=True,
                           text=True, timeout=60)
        return result.returncode == 0 and result.stdout.strip() == "true"


def _reset_progress(path: Path) -> None:
    """A new attempt starts with no progress report (the directory is shared with the trainer's container)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _progress_mark(path: Path) -> Optional[Tuple[int, str]]:
    """(mtime ns, first 200 characters) of the progress file; a change of either is progress."""
    try:
        return path.stat().st_mtime_ns, path.read_text(errors="replace")[:200].strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


def gpu_count(config: Config, run: Runner = subprocess.run) -> int:
    if config.gpu_count is not None:
        return config.gpu_count
    try:
        result = run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in result.stdout.splitlines() if line.startswith("GPU ")) if result.returncode == 0 else 0


# --------------------------------------------------------------------------- GPU health

# THE list of fatal Xid codes (README "GPU health" points here). A fatal Xid
# takes the instance out: checkpoint, release, Unhealthy. Source: NVIDIA's Xid
# catalog for Ampere and newer (docs.nvidia.com/deploy/xid-errors/
# analyzing-xid-catalog.html: immediate action RESET_GPU / RESTART_BM /
# CONTACT_SUPPORT on A100/H100) and NVIDIA's Dynamic Page Retirement guide
# (docs.nvidia.com/deploy/dynamic-page-retirement: 48 DBE, 63/64 page retired /
# retirement failed, both needing a reset). 94 is "contained": NVIDIA only
# restarts the application, but every GPU of a training run belongs to that
# application and the row is remapped only at the next reset, so it counts
# here. Every other Xid (13, 31, 43, 45: application faults) is counted as a
# metric, never acted on.
FATAL_XIDS: Dict[int, str] = {
    48: "double-bit ECC error",
    63: "ECC page retirement or row remapping recorded; GPU reset needed",
    64: "ECC page retirement or row remapping failed",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}
# `NVRM: Xid (PCI:0000:3b:00): 79, pid=..., GPU has fallen off the bus.` (the driver's kernel log line).
XID_LINE = re.compile(r"NVRM: Xid \((?:PCI:)?([0-9A-Fa-f:.]+)\): (\d+)")
# GPUs per instance type of the training fleet's families (EC2 accelerated computing instance specs);
# ML_EXPECTED_GPU_COUNT overrides, an unknown type skips the count check (logged).
INSTANCE_GPUS: Dict[str, int] = {
    "p3.2xlarge": 1, "p3.8xlarge": 4, "p3.16xlarge": 8, "p3dn.24xlarge": 8,
    "p4d.24xlarge": 8, "p4de.24xlarge": 8, "p5.48xlarge": 8, "p5e.48xlarge": 8, "p5en.48xlarge": 8,
    **{f"{family}.{size}": 1 for family in ("g4dn", "g5", "g6", "g6e")
       for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g4dn.12xlarge": 4, "g4dn.metal": 8, "g5.12xlarge": 4, "g5.24xlarge": 4, "g5.48xlarge": 8,
    "g6.12xlarge": 4, "g6.24xlarge": 4, "g6.48xlarge": 8, "g6e.12xlarge": 4, "g6e.24xlarge": 4,
    "g6e.48xlarge": 8,
}
NVIDIA_SMI_GPU_QUERY = ("index,pci.bus_id,ecc.errors.uncorrected.volatile.total,retired_pages.sbe,"
                        "retired_pages.dbe,retired_pages.pending")
NVIDIA_SMI_ROWS_QUERY = "gpu_bus_id,remapped_rows.uncorrectable,remapped_rows.pending,remapped_rows.failure"
DCGM_DIAG = ["dcgmi", "diag", "-r", "1", "-j"]


def parse_xid(line: str) -> Optional[Tuple[int, str]]:
    """(code, PCI address) of an `NVRM: Xid` kernel log line, None for any other line."""
    match = XID_LINE.search(line)
    return (int(match.group(2)), match.group(1)) if match else None


def _csv_rows(text: str) -> List[List[str]]:
    return [[cell.strip() for cell in line.split(",")] for line in text.splitlines() if line.strip()]


def _count(value: str) -> Optional[int]:
    """A counter cell of nvidia-smi's CSV; None for "[N/A]", "[Not Supported]" (no ECC, or rows not pages)."""
    return int(value) if value.isdigit() else None


def _dcgm_failures(output: str) -> List[str]:
    """Failed tests of `dcgmi diag -j` (DCGM's JSON: "DCGM Diagnostic" > test_categories > tests > results)."""
    try:
        report = json.loads(output)
    except ValueError:
        return [f"dcgmi diag printed no JSON: {output.strip()[:200]!r}"]
    failures = []
    for category in (report.get("DCGM Diagnostic") or {}).get("test_categories", []):
        for test in category.get("tests", []):
            for result in test.get("results", []):
                if str(result.get("status", "")).lower() == "fail":
                    why = "; ".join(str(w.get("warning", w)) if isinstance(w, dict) else str(w)
                                    for w in result.get("warnings", []))
                    gpu = result.get("gpu_id", result.get("entity_id", result.get("gpu_ids", "?")))
                    failures.append(f"DCGM {test.get('name')} failed on GPU {gpu}: {why or 'no detail'}")
    return failures


class HealthGate:
    """The launch check: expected GPU count, ECC and retired pages/rows, no fatal Xid since boot, DCGM level 1."""

    def __init__(self, settings: HealthSettings, run: Runner, log: JsonLog, instance_type: Optional[str]) -> None:
        self._settings = settings
        self._run = run
        self._log = log
        self._instance_type = instance_type

    def _command(self, argv: List[str], timeout: float = 120) -> Tuple[Optional[int], str]:
        try:
            result = self._run(argv, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            return None, f"{argv[0]} not found"
        except (OSError, subprocess.SubprocessError) as error:
            return 1, f"{argv[0]} failed: {error}"
        return result.returncode, result.stdout if result.returncode == 0 else (result.stderr or result.stdout)

    def running_check(self) -> List[str]:
        """The nvidia-smi checks alone (while a run trains: no DCGM diagnostic, no boot log)."""
        return self._nvidia_smi()

    def check(self) -> List[str]:
        """Every problem found; empty means healthy."""
        problems = self._nvidia_smi()
        problems += self._boot_xids()
        code, output = self._command(DCGM_DIAG, timeout=600)
        if code is None:
            self._log("health-gate", check="dcgm", skipped=True, message="dcgmi not installed on this AMI")
        elif code != 0 or _dcgm_failures(output):
            problems += _dcgm_failures(output) or [f"dcgmi diag -r 1 exited {code}: {output.strip()[:300]}"]
        return problems

    def expected_gpus(self) -> Optional[int]:
        if self._settings.expected_gpus is not None:
            return self._settings.expected_gpus
        return INSTANCE_GPUS.get(self._instance_type or "")

    def _nvidia_smi(self) -> List[str]:
        code, output = self._command(["nvidia-smi", f"--query-gpu={NVIDIA_SMI_GPU_QUERY}",
                                      "--format=csv,noheader,nounits"])
        if code != 0:
            return [f"nvidia-smi --query-gpu failed: {output.strip()[:300]}"]
        rows = [r for r in _csv_rows(output) if len(r) == 6]
        problems = []
        expected = self.expected_gpus()
        if expected is None:
            self._log("health-gate", check="gpu-count", skipped=True, instance_type=self._instance_type)
        elif len(rows) != expected:
            where = self._instance_type or "this instance"
            problems.append(f"{len(rows)} GPUs visible, {expected} expected for {where}")
        for index, bus, ecc, sbe, dbe, pending in rows:
            gpu = f"GPU {index} ({bus})"
            if (_count(ecc) or 0) > self._settings.ecc_uncorrected_max:
                problems.append(f"{gpu}: {ecc} uncorrected ECC errors since the driver loaded "
                                f"(max {self._settings.ecc_uncorrected_max})")
            retired = (_count(sbe) or 0) + (_count(dbe) or 0)
            if retired > self._settings.retired_pages_max:
                problems.append(f"{gpu}: {retired} retired pages (max {self._settings.retired_pages_max})")
            if pending.lower() == "yes":
                problems.append(f"{gpu}: a page retirement is pending (needs a GPU reset)")
        code, output = self._command(["nvidia-smi", f"--query-remapped-rows={NVIDIA_SMI_ROWS_QUERY}",
                                      "--format=csv,noheader,nounits"])
        for row in (_csv_rows(output) if code == 0 else []):  # GPUs before Ampere have no row remapping
            if len(row) == 4 and row[2].lower() in ("yes", "1"):
                problems.append(f"GPU {row[0]}: a row remapping is pending (needs a GPU reset)")
            if len(row) == 4 and row[3].lower() in ("yes", "1"):
                problems.append(f"GPU {row[0]}: row remapping failed")
        return problems

    def _boot_xids(self) -> List[str]:
        source = self._settings.kernel_log
        if source == "off":
            return []
        if source == "journal":
            code, text = self._command(["journalctl", "-k", "-b", "--no-pager", "-o", "cat"])
            if code != 0:
                return [f"cannot read the kernel log: {text.strip()[:200]}"]
        else:
            text = _read_text(Path(source)) or ""
        found = [parsed for parsed in map(parse_xid, text.splitlines()) if parsed]
        return [f"Xid {code} ({FATAL_XIDS[code]}) on {bus} since boot" for code, bus in found if code in FATAL_XIDS]


def follow_kernel_log(source: str, stop: threading.Event, popen: Callable[..., Any] = subprocess.Popen,
                      poll_seconds: float = 0.2) -> Iterator[str]:
    """New kernel log lines from now on: `journalctl -k -f` or, for a file path, the lines appended to it."""
    if source == "journal":
        return _follow_journal(stop, popen)
    path = Path(source)
    return _follow_file(path, path.stat().st_size if path.exists() else 0, stop, poll_seconds)


def _follow_journal(stop: threading.Event, popen: Callable[..., Any]) -> Iterator[str]:
    process = popen(["journalctl", "-k", "-f", "-n", "0", "--no-pager", "-o", "cat"], stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL, text=True)
    try:
        for line in process.stdout:
            if stop.is_set():
                return
            yield line
    finally:
        process.kill()


def _follow_file(path: Path, position: int, stop: threading.Event, poll_seconds: float) -> Iterator[str]:
    pending = ""
    while not stop.is_set():
        try:
            with open(path, "r", errors="replace") as handle:
                handle.seek(position)
                pending += handle.read()
                position = handle.tell()
        except FileNotFoundError:
            pass
        *lines, pending = pending.split("\n")
        yield from lines
        stop.wait(poll_seconds)


class Telemetry:
    """Metrics (PutMetricData, dimension AutoScalingGroupName) and alerts (the alerts topic); never raises."""

    def __init__(self, config: Config, cloudwatch: Any, sns: Any, log: JsonLog) -> None:
        self._config = config
        self._cloudwatch = cloudwatch
        self._sns = sns
        self._log = log

    def metric(self, name: str, value: float = 1.0, **dimensions: str) -> None:
        dims = [{"Name": "AutoScalingGroupName", "Value": self._config.autoscaling_group_name or "none"}]
        dims += [{"Name": k, "Value": str(v)} for k, v in sorted(dimensions.items())]
        try:
            self._cloudwatch.put_metric_data(Namespace=self._config.health.metrics_namespace, MetricData=[
                {"MetricName": name, "Dimensions": dims, "Value": value, "Unit": "Count"}])
            self._log("metric", name=name, value=value, **dimensions)
        except Exception as error:  # noqa: BLE001 - a metric must never stop the reaction
            self._log("metric", level="error", name=name, error=f"{type(error).__name__}: {error}")

    def alert(self, subject: str, lines: List[str]) -> None:
        subject = f"[ml-{self._config.stage}] {subject}"[:100]
        try:
            self._sns.publish(TopicArn=self._config.alerts_topic_arn, Subject=subject, Message="\n".join(lines))
            self._log("alert", subject=subject, topic=self._config.alerts_topic_arn)
        except Exception as error:  # noqa: BLE001
            self._log("alert", level="error", subject=subject, error=f"{type(error).__name__}: {error}")


def mark_unhealthy(autoscaling: Any, instance_id: str, log: JsonLog, why: str) -> bool:
    """SetInstanceHealth(Unhealthy, ShouldRespectGracePeriod=False): the group replaces the instance now."""
    try:
        autoscaling.set_instance_health(InstanceId=instance_id, HealthStatus="Unhealthy",
                                        ShouldRespectGracePeriod=False)
    except Exception as error:  # noqa: BLE001 - logged; the instance still claims nothing
        log("set-instance-health", level="error", health="Unhealthy", error=f"{type(error).__name__}: {error}")
        return False
    log("set-instance-health", health="Unhealthy", reason=why)
    return True


# --------------------------------------------------------------------------- lifecycle


@dataclass(frozen=True)
class LifecycleAction:
    hook_name: str
    autoscaling_group_name: str
    token: str

    def params(self, instance_id: Optional[str]) -> Dict[str, str]:
        params = {
            "LifecycleHookName": self.hook_name,
            "AutoScalingGroupName": self.autoscaling_group_name,
            "LifecycleActionToken": self.token,
        }
        if instance_id:
            params["InstanceId"] = instance_id
        return params


def _error_code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return response.get("Error", {}).get("Code", "")


def _is_no_active_action(error: Exception) -> bool:
    response = getattr(error, "response", None) or {}
    err = response.get("Error", {})
    return err.get("Code") == "ValidationError" and NO_ACTIVE_LIFECYCLE_ACTION in err.get("Message", "")


class Heartbeat:
    """RecordLifecycleActionHeartbeat at most every `interval` seconds, first one at once.

    Callers poll `maybe_beat()` from their wait loops, so the cadence is exact
    and testable with a fake clock. An expired token stops the heartbeats.
    """

    def __init__(self, autoscaling: Any, action: LifecycleAction, instance_id: Optional[str],
                 interval_seconds: float, log: JsonLog, clock: Callable[[], float] = time.monotonic) -> None:
        self._client = autoscaling
        self._action = action
        self._instance_id = instance_id
        self._interval = interval_seconds
        self._log = log
        self._clock = clock
        self._last: Optional[float] = None
        self.beats = 0
        self.expired = False

    def maybe_beat(self) -> None:
        if self.expired:
            return
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            return
        self._last = now
        try:
            self._client.record_lifecycle_action_heartbeat(**self._action.params(self._instance_id))
        except Exception as error:  # noqa: BLE001 - a failed heartbeat must never stop the checkpoint
            if _is_no_active_action(error):
                self.expired = True
                self._log("heartbeat", level="warning", expired=True, error=str(error))
            else:
                self._log("heartbeat", level="error", error=str(error))
            return
        self.beats += 1
        self._log("heartbeat", count=self.beats)


def _noop() -> None:
    return None


def complete_lifecycle_action(autoscaling: Any, action: LifecycleAction, instance_id: Optional[str],
                              log: JsonLog) -> bool:
    """CompleteLifecycleAction(CONTINUE); an expired or used token is logged and ignored."""
    params = action.params(instance_id)
    params["LifecycleActionResult"] = "CONTINUE"
    try:
        autoscaling.complete_lifecycle_action(**params)
    except Exception as error:  # noqa: BLE001 - logged; the hook's own timeout (CONTINUE) still applies
        if _is_no_active_action(error):
            log("complete-lifecycle", level="warning", result="CONTINUE", ignored=True, error=str(error))
            return True
        log("complete-lifecycle", level="error", result="CONTINUE", error=str(error))
        return False
    log("complete-lifecycle", result="CONTINUE", hook=action.hook_name,
        autoscaling_group=action.autoscaling_group_name)
    return True


# --------------------------------------------------------------------------- marker and upload


def marker_mtime(path: Path) -> Optional[float]:
    try:
        return path.stat().st_mtime
    except (FileNotFoundError, NotADirectoryError):
        return None


def marker_answers(mtime: Optional[float], requested: float, before: Optional[float]) -> bool:
    """A marker answers a request when it changed since the signal and is not older than the request.

    "Not older" tolerates MARKER_SKEW_SECONDS of clock skew; "changed since
    the signal" keeps a completed checkpoint from just before the request
    from being mistaken for the trainer's answer.
    """
    if mtime is None:
        return False
    return mtime != before and mtime > requested - MARKER_SKEW_SECONDS


def wait_for_marker(path: Path, requested: float, deadline: float, log: JsonLog,
                    before: Optional[float] = None, tick: Callable[[], None] = _noop,
                    clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                    poll_seconds: float = 0.2) -> Optional[float]:
    """Wait until the marker answers the request (see marker_answers); its mtime, or None at the deadline."""
    started = clock()
    while True:
        tick()
        mtime = marker_mtime(path)
        if marker_answers(mtime, requested, before):
            log("wait", marker=str(path), waited_seconds=round(clock() - started, 3), found=True)
            return mtime
        now = clock()
        if now >= deadline:
            log("wait", level="error", marker=str(path), waited_seconds=round(now - started, 3), found=False,
                error="no checkpoint-done marker newer than the request within the budget")
            return None
        sleep(min(poll_seconds, max(deadline - now, 0.0)))


def checkpoint_files(directory: Path) -> List[Tuple[Path, str]]:
    """Regular files under `directory` (symlinks not followed), with their POSIX relative keys."""
    files: List[Tuple[Path, str]] = []
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                files.append((path, path.relative_to(directory).as_posix()))
    return files


def utc_stamp(epoch: float) -> str:
    """Checkpoint prefix stamp, YYYYmmddTHHMMSSffffffZ (RUNS_CONTRACT.md)."""
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


class UploadError(Exception):
    pass


class TornCheckpoint(UploadError):
    """The trainer was writing a new checkpoint while it was read: retry later."""


def snapshot_checkpoint(directory: Path, marker: str, dest: Path) -> Tuple[float, List[Tuple[Path, str]]]:
    """Freeze the completed checkpoint: hard links (a copy across file systems) into `dest`.

    Trainers replace files atomically (new inode), so the links keep the
    completed checkpoint even while the next one is written. A file newer
    than the marker, or a marker that changed, means a checkpoint was half
    written when the snapshot was taken: TornCheckpoint.
    """
    before = marker_mtime(directory / marker)
    if before is None:
        raise UploadError(f"no completed checkpoint in {directory} (no {marker})")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    files: List[Tuple[Path, str]] = []
    for path, key in checkpoint_files(directory):
        target = dest / key
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except FileNotFoundError:
            raise TornCheckpoint(f"{key} disappeared while taking the snapshot") from None
        except OSError:
            _copy_preserving_mtime(path, target)
        files.append((target, key))
    newest = max((p.stat().st_mtime for p, _ in files), default=before)
    if marker_mtime(directory / marker) != before or newest > before:
        raise TornCheckpoint(f"a checkpoint was being written in {directory} while it was read")
    return before, files


def _copy_preserving_mtime(source: Path, target: Path) -> None:
    with open(source, "rb") as src, open(target, "wb") as dst:
        stat = os.fstat(src.fileno())
        shutil.copyfileobj(src, dst, 1 << 20)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _run_with_deadline(tasks: List[Tuple[str, Callable[[], Any]]], seconds: float, tick: Callable[[], None],
                       workers: int = 4) -> None:
    """Run the tasks on daemon threads; UploadError on the first failure or when `seconds` pass.

    Daemon threads: an upload that outlives its deadline cannot keep the
    process (and the lifecycle action behind it) waiting.
    """
    work: "queue.Queue[Tuple[str, Callable[[], Any]]]" = queue.Queue()
    results: "queue.Queue[Tuple[str, Optional[BaseException]]]" = queue.Queue()
    for task in tasks:
        work.put(task)
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            try:
                name, fn = work.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
                results.put((name, None))
            except BaseException as error:  # noqa: BLE001 - reported to the caller
                results.put((name, error))

    for _ in range(min(workers, len(tasks))):
        threading.Thread(target=worker, daemon=True).start()
    deadline = time.monotonic() + seconds
    for _ in tasks:
        while True:
            tick()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                stop.set()
                raise UploadError(f"upload did not finish within its {seconds:g} s deadline")
            try:
                name, error = results.get(timeout=min(1.0, remaining))
                break
            except queue.Empty:
                continue
        if error is not None:
            stop.set()
            raise UploadError(f"upload of {name} failed: {error}")


def upload_checkpoint(s3: Any, bucket: str, files: List[Tuple[Path, str]], run_id: str, stamp: str, log: JsonLog,
                      deadline_seconds: float = BACKGROUND_UPLOAD_SECONDS, tick: Callable[[], None] = _noop) -> str:
    """Upload every file to runs/<run-id>/<stamp>/, then point runs/<run-id>/LATEST at that prefix.

    LATEST is written only after every object is in place, and nothing is ever
    deleted, so a reader following LATEST always finds a complete checkpoint.
    """
    if not files:
        raise UploadError("the checkpoint has no files")
    prefix = f"runs/{run_id}/{stamp}/"
    started = time.monotonic()
    tasks = [(key, (lambda p=path, k=key: s3.upload_file(str(p), bucket, prefix + k))) for path, key in files]
    _run_with_deadline(tasks, deadline_seconds, tick)
    log("upload", bucket=bucket, prefix=prefix, files=len(files), bytes=sum(p.stat().st_size for p, _ in files),
        seconds=round(time.monotonic() - started, 3))
    tick()
    latest_key = f"runs/{run_id}/LATEST"
    remaining = deadline_seconds - (time.monotonic() - started)
    _run_with_deadline([(latest_key, lambda: s3.put_object(Bucket=bucket, Key=latest_key, Body=prefix.encode(),
                                                           ContentType="text/plain"))],
                       max(remaining, 1.0), tick)
    log("latest", bucket=bucket, key=latest_key, prefix=prefix)
    return prefix


def _download_config() -> Any:
    """Large checkpoints in a few big parallel ranges: full throughput with few requests."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=128 << 20, max_concurrency=8)


def restore_checkpoint(s3: Any, bucket: str, run_id: str, directory: Path, log: JsonLog) -> str:
    """Empty `directory`, download runs/<run-id>/LATEST's prefix into it; the s3:// prefix or "" if none."""
    directory.mkdir(parents=True, exist_ok=True)
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    try:
        body = s3.get_object(Bucket=bucket, Key=f"runs/{run_id}/LATEST")["Body"].read().decode().strip()
    except Exception as error:  # noqa: BLE001 - only "no such key" means a first attempt
        if _error_code(error) in ("NoSuchKey", "404"):
            log("restore", run_id=run_id, restored=False, message="no checkpoint yet")
            return ""
        raise
    if not body.startswith(f"runs/{run_id}/") or not body.endswith("/"):
        raise UploadError(f"runs/{run_id}/LATEST does not name a prefix of the run: {body[:200]!r}")
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=body):
        for item in page.get("Contents", []):
            rel = item["Key"][len(body):]
            target = (directory / rel).resolve()
            if not rel or directory.resolve() not in target.parents:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(target), Config=_download_config())
            count += 1
    if not count:
        raise UploadError(f"s3://{bucket}/{body} named by LATEST is empty")
    log("restore", run_id=run_id, restored=True, prefix=body, files=count)
    return f"s3://{bucket}/{body}"


class CheckpointUploader:
    """Uploads the completed checkpoint when its marker is newer than the last upload (one at a time)."""

    def __init__(self, config: Config, state: NodeState, s3: Any, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._state = state
        self._s3 = s3
        self._clock = clock

    @property
    def _snapshot_dir(self) -> Path:
        ckpt = self._config.checkpoint_dir
        return ckpt.parent / f".{ckpt.name}.ml-node-agent-snapshot-{os.getpid()}"

    def pending(self, run_id: str) -> bool:
        """A completed checkpoint of this run is on disk and has not been uploaded."""
        mtime = marker_mtime(self._config.marker_path)
        uploads = self._state.uploads()
        last = uploads.get("marker_mtime") if uploads.get("run_id") == run_id else None
        return mtime is not None and (last is None or mtime > float(last))

    def upload_if_new(self, run_id: str, log: JsonLog, deadline_seconds: float,
                      allowed: Callable[[], bool] = lambda: True,
                      tick: Callable[[], None] = _noop) -> Tuple[str, Optional[str]]:
        """(UPLOADED | NOTHING_NEW, s3:// prefix of the newest uploaded checkpoint or None).

        Raises UploadError (TornCheckpoint while a checkpoint is being written).
        ``allowed`` is checked under the upload lock: false means the run is
        no longer this uploader's to write.
        """
        started = time.monotonic()
        if not self._state.upload_lock.acquire(timeout=deadline_seconds, tick=tick):
            raise UploadError("another upload held the lock past the deadline")
        try:
            uploads = self._state.uploads()
            last_prefix = uploads.get("prefix") if uploads.get("run_id") == run_id else None
            last_uri = f"s3://{self._config.bucket}/{last_prefix}" if last_prefix else None
            if not self.pending(run_id) or not allowed():
                return NOTHING_NEW, last_uri
            mtime, files = snapshot_checkpoint(self._config.checkpoint_dir, self._config.done_marker,
                                               self._snapshot_dir)
            remaining = deadline_seconds - (time.monotonic() - started)
            prefix = upload_checkpoint(self._s3, self._config.bucket, files, run_id, utc_stamp(self._clock()), log,
                                       deadline_seconds=max(remaining, 1.0), tick=tick)
            self._state.set_uploads({"run_id": run_id, "marker_mtime": mtime, "prefix": prefix})
            return UPLOADED, f"s3://{self._config.bucket}/{prefix}"
        finally:
            shutil.rmtree(self._snapshot_dir, ignore_errors=True)
            self._state.upload_lock.release()


# --------------------------------------------------------------------------- runs table


def _to_python(value: Any) -> Any:
    from decimal import Decimal

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, list):
        return [_to_python(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    return value


def _item(raw: Mapping[str, Any]) -> Dict[str, Any]:
    from boto3.dynamodb.types import TypeDeserializer

    deserializer = TypeDeserializer()
    return {k: _to_python(deserializer.deserialize(v)) for k, v in raw.items()}


def _values(**values: Any) -> Dict[str, Any]:
    from boto3.dynamodb.types import TypeSerializer

    serializer = TypeSerializer()
    return {f":{k}": serializer.serialize(v) for k, v in values.items()}


_NAMES = {"#s": "state", "#ac": "attempt_count", "#at": "attempts", "#lh": "lease_holder", "#le": "lease_expires_at",
          "#ua": "updated_at", "#sa": "started_at", "#f": "failures", "#lc": "last_checkpoint",
          "#cr": "cancel_requested", "#ea": "ended_at", "#er": "end_reason", "#ec": "exit_code", "#dt": "detail"}


_NAMES["#ended"] = "ended_at"
_NAMES["#endr"] = "end_reason"


def _names(*expressions: str) -> Dict[str, str]:
    """The attribute names the expressions use (DynamoDB rejects unused ones)."""
    used = set(re.findall(r"#\w+", " ".join(expressions)))
    return {k: v for k, v in _NAMES.items() if k in used}


class LeaseLost(Exception):
    """A conditional write found the run no longer held by this instance."""


class RunsTable:
    """The agent's side of the runs table (RUNS_CONTRACT.md): claim, renew, release, end; conditional writes only."""

    def __init__(self, client: Any, table: str, instance_id: str, lease_seconds: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._table = table
        self._me = instance_id
        self._lease = lease_seconds
        self._clock = clock

    def _now(self) -> Tuple[float, str]:
        now = self._clock()
        return now, utc_seconds(now)

    def _query(self, state: str, **kwargs: Any) -> Iterator[Dict[str, Any]]:
        paginator = self._client.get_paginator("query")
        for page in paginator.paginate(TableName=self._table, IndexName=BY_STATE_INDEX,
                                       KeyConditionExpression="#s = :state", ScanIndexForward=True,
                                       ExpressionAttributeNames={"#s": "state", **kwargs.pop("names", {})},
                                       ExpressionAttributeValues={**_values(state=state), **kwargs.pop("values", {})},
                                       **kwargs):
            for raw in page.get("Items", []):
                yield _item(raw)

    def candidates(self) -> Iterator[Dict[str, Any]]:
        """PENDING runs oldest first, then RUNNING runs whose holder's lease expired."""
        yield from self._query("PENDING")
        yield from self._query("RUNNING", FilterExpression="#le < :now", names={"#le": "lease_expires_at"},
                               values=_values(now=int(self._clock())))

    def get(self, run_id: str) -> Optional[Dict[str, Any]]:
        raw = self._client.get_item(TableName=self._table, Key={"run_id": {"S": run_id}},
                                    ConsistentRead=True).get("Item")
        return _item(raw) if raw else None

    def claim(self, seen: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
        """Take the run as seen (PENDING or orphaned RUNNING); the new item, or None if another instance won."""
        now, stamp = self._now()
        count = int(seen.get("attempt_count", 0))
        new_attempt = {"attempt": count + 1, "instance_id": self._me, "started_at": stamp}
        values = dict(running="RUNNING", me=self._me, exp=int(now + self._lease), n=count + 1, now=stamp,
                      seen_state=seen["state"])
        condition = "#s = :seen_state AND " + ("#ac = :seen" if "attempt_count" in seen else "attribute_not_exists(#ac)")
        if "attempt_count" in seen:
            values["seen"] = count
        if seen["state"] == "RUNNING":
            current = self.get(seen["run_id"])
            if not current or int(current.get("attempt_count", 0)) != count or current.get("state") != "RUNNING":
                return None
            attempts = list(current.get("attempts", []))
            if attempts:
                attempts[-1] = {**attempts[-1], "ended_at": stamp, "end_reason": "reclaimed",
                                "detail": "lease-expired"}
            values.update(attempts=attempts + [new_attempt], old=current.get("lease_holder", ""), epoch=int(now))
            condition += " AND #lh = :old AND #le < :epoch"
            attempts_expr = "#at = :attempts"
        else:
            values.update(new=[new_attempt], empty=[])
            attempts_expr = "#at = list_append(if_not_exists(#at, :empty), :new)"
        update = (f"SET #s = :running, #lh = :me, #le = :exp, #ac = :n, {attempts_expr}, "
                  "#ua = :now, #sa = if_not_exists(#sa, :now)")
        try:
            response = self._client.update_item(
                TableName=self._table, Key={"run_id": {"S": seen["run_id"]}},
                UpdateExpression=update, ConditionExpression=condition,
                ExpressionAttributeNames=_names(update, condition),
                ExpressionAttributeValues=_values(**values), ReturnValues="ALL_NEW")
        except Exception as error:  # noqa: BLE001 - only a lost race is expected here
            if _error_code(error) == "ConditionalCheckFailedException":
                return None
            raise
        return _item(response["Attributes"])

    def _held(self, attempt: int) -> Tuple[str, Dict[str, Any]]:
        return "#lh = :me AND #s = :running AND #ac = :n", dict(me=self._me, running="RUNNING", n=attempt)

    def renew(self, run_id: str, attempt: int) -> Dict[str, Any]:
        """Extend the lease; the item (cancel_requested, started_at). LeaseLost if it is not ours any more."""
        now, stamp = self._now()
        condition, values = self._held(attempt)
        try:
            response = self._client.update_item(
                TableName=self._table, Key={"run_id": {"S": run_id}}, UpdateExpression="SET #le = :exp, #ua = :now",
                ConditionExpression=condition, ExpressionAttributeNames=_names("#le #ua", condition),
                ExpressionAttributeValues=_values(exp=int(now + self._lease), now=stamp, **values),
                ReturnValues="ALL_NEW")
        except Exception as error:  # noqa: BLE001
            if _error_code(error) == "ConditionalCheckFailedException":
                raise LeaseLost(f"run {run_id} attempt {attempt} is no longer held by {self._me}") from error
            raise
        return _item(response["Attributes"])

    def set_last_checkpoint(self, run_id: str, attempt: int, uri: str) -> None:
        condition, values = self._held(attempt)
        try:
            self._client.update_item(
                TableName=self._table, Key={"run_id": {"S": run_id}}, UpdateExpression="SET #lc = :lc, #ua = :now",
                ConditionExpression=condition, ExpressionAttributeNames=_names("#lc #ua", condition),
                ExpressionAttributeValues=_values(lc=uri, now=self._now()[1], **values))
        except Exception as error:  # noqa: BLE001
            if _error_code(error) == "ConditionalCheckFailedException":
                raise LeaseLost(f"run {run_id} attempt {attempt} is no longer held by {self._me}") from error
            raise

    def end_attempt(self, run_id: str, attempt: int, *, state: str, attempt_end: str, detail: Optional[str] = None,
                    exit_code: Optional[int] = None, run_end_reason: Optional[str] = None,
                    failures: Optional[Tuple[int, int]] = None, last_checkpoint: Optional[str] = None,
                    cancel_seen: Optional[bool] = None) -> Dict[str, Any]:
        """Close this instance's attempt and move the run to `state`, lease removed; the new item.

        ``failures`` is (seen, new); ``cancel_seen`` makes the write conditional
        on what was read of ``cancel_requested``. LeaseLost when the condition fails.
        """
        _, stamp = self._now()
        condition, values = self._held(attempt)
        i = attempt - 1
        sets = ["#s = :state", "#ua = :now", f"#at[{i}].#ea = :now", f"#at[{i}].#er = :aend"]
        values.update(state=state, now=stamp, aend=attempt_end)
        optional = {"#dt": ("detail", detail), "#ec": ("exit_code", exit_code)}
        for name, (key, value) in optional.items():
            if value is not None:
                sets.append(f"#at[{i}].{name} = :{key}")
                values[key] = value
        if state in ("SUCCEEDED", "FAILED", "CANCELLED"):
            sets += ["#ended = :now", "#endr = :rend"]
            values["rend"] = run_end_reason or attempt_end
        if last_checkpoint:
            sets.append("#lc = :lc")
            values["lc"] = last_checkpoint
        if failures is not None:
            sets.append("#f = :nf")
            values.update(nf=failures[1], of=failures[0])
            condition += " AND (#f = :of OR attribute_not_exists(#f))"
        if cancel_seen is not None:
            values["true"] = True
            condition += " AND #cr = :true" if cancel_seen else " AND (attribute_not_exists(#cr) OR #cr <> :true)"
        update = "SET " + ", ".join(sets) + " REMOVE #lh, #le"
        try:
            response = self._client.update_item(
                TableName=self._table, Key={"run_id": {"S": run_id}}, UpdateExpression=update,
                ConditionExpression=condition, ExpressionAttributeNames=_names(update, condition),
                ExpressionAttributeValues=_values(**values), ReturnValues="ALL_NEW")
        except Exception as error:  # noqa: BLE001
            if _error_code(error) == "ConditionalCheckFailedException":
                raise LeaseLost(f"run {run_id} attempt {attempt} is no longer held by {self._me}") from error
            raise
        return _item(response["Attributes"])

    def release(self, run_id: str, attempt: int, detail: str, last_checkpoint: Optional[str]) -> Dict[str, Any]:
        """Give the run back after an interruption: PENDING, or CANCELLED if a cancel was requested."""
        for _ in range(3):
            current = self.get(run_id) or {}
            cancel = bool(current.get("cancel_requested"))
            try:
                return self.end_attempt(
                    run_id, attempt, state="CANCELLED" if cancel else "PENDING",
                    attempt_end="cancelled" if cancel else "reclaimed", detail=detail,
                    run_end_reason="cancelled" if cancel else None, last_checkpoint=last_checkpoint,
                    cancel_seen=cancel)
            except LeaseLost:
                if current.get("lease_holder") != self._me:
                    raise
        raise LeaseLost(f"run {run_id}: cancel_requested kept changing during the release")

    def active_count(self, excluding: str = "") -> int:
        """PENDING + RUNNING runs other than `excluding`.

        The index is eventually consistent: right after this instance ended a
        run it may still list that run as RUNNING, so the run itself is never
        counted (a plain Select=COUNT would count it and the fleet would
        never be told the job finished).
        """
        total = 0
        for state in ("PENDING", "RUNNING"):
            paginator = self._client.get_paginator("query")
            for page in paginator.paginate(TableName=self._table, IndexName=BY_STATE_INDEX,
                                           ProjectionExpression="run_id", KeyConditionExpression="#s = :state",
                                           ExpressionAttributeNames={"#s": "state"},
                                           ExpressionAttributeValues=_values(state=state)):
                total += sum(1 for raw in page.get("Items", []) if raw.get("run_id", {}).get("S") != excluding)
        return total


class RunEvents:
    """What happens when a run reaches a terminal state: the FAILED alert and the job-finished event."""

    def __init__(self, config: Config, runs: RunsTable, sns: Any, events: Any, log: JsonLog) -> None:
        self._config = config
        self._runs = runs
        self._sns = sns
        self._events = events
        self._log = log

    def terminal(self, item: Mapping[str, Any]) -> None:
        if item.get("state") == "FAILED":
            self.alert(item)
        self.job_finished(item)

    def alert(self, item: Mapping[str, Any]) -> None:
        run_id = item["run_id"]
        lines = [f"Run {run_id} ({item.get('name', '')}) FAILED in stage {self._config.stage}.",
                 f"Reason: {item.get('end_reason', 'unknown')}; trainer failures: {item.get('failures', 0)} of "
                 f"max_failures {item.get('spec', {}).get('max_failures', '?')}.",
                 f"Last checkpoint: {item.get('last_checkpoint') or 'none'}", "Attempts:"]
        for attempt in item.get("attempts", []):
            lines.append(f"  {attempt.get('attempt')}: {attempt.get('instance_id')} {attempt.get('started_at')} -> "
                         f"{attempt.get('ended_at', '?')} {attempt.get('end_reason', '?')}"
                         + (f" exit {attempt['exit_code']}" if "exit_code" in attempt else "")
                         + (f" ({attempt['detail']})" if attempt.get("detail") else ""))
        stage = self._config.stage
        lines.append(f'Inspect: make run STAGE={stage} ARGS="show {run_id}"  '
                     f'(logs: make run STAGE={stage} ARGS="logs {run_id}")')
        subject = f"[ml-{self._config.stage}] run {run_id} FAILED"[:100]
        try:
            self._sns.publish(TopicArn=self._config.alerts_topic_arn, Subject=subject, Message="\n".join(lines))
            self._log("alert", run_id=run_id, topic=self._config.alerts_topic_arn, subject=subject)
        except Exception as error:  # noqa: BLE001 - the run's state is already recorded
            self._log("alert", level="error", run_id=run_id, error=str(error))

    def job_finished(self, item: Mapping[str, Any]) -> None:
        try:
            active = self._runs.active_count(excluding=item["run_id"])
            if active:
                self._log("job-finished", run_id=item["run_id"], sent=False, active_runs=active)
                return
            detail = {"autoScalingGroupName": self._config.autoscaling_group_name or "", "runId": item["run_id"],
                      "state": item.get("state")}
            response = self._events.put_events(Entries=[{
                "Source": "ml.training", "DetailType": "Training Job Finished", "Detail": json.dumps(detail),
                "EventBusName": self._config.event_bus_name}])
            if response.get("FailedEntryCount"):
                raise RuntimeError(f"PutEvents rejected the event: {response.get('Entries')}")
            self._log("job-finished", run_id=item["run_id"], sent=True, bus=self._config.event_bus_name)
        except Exception as error:  # noqa: BLE001 - the idle stack's sweep still scales an idle fleet in
            self._log("job-finished", level="error", run_id=item["run_id"], error=str(error))


# --------------------------------------------------------------------------- dedupe


class Coordinator:
    """One checkpoint per instance at a time, shared by `watch` and Run Command invocations.

    `leader.lock` is flock'ed by the process doing the checkpoint for its whole
    run (the kernel drops it if that process dies); `checkpoint.json` records
    the last attempt. A request finds a leader running, or a record finished
    less than `window_seconds` ago, and then follows instead of signalling.
    """

    def __init__(self, state_dir: Path, window_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self._dir = state_dir
        self._window = window_seconds
        self._clock = clock
        self._leader_fd: Optional[int] = None

    @property
    def _state_path(self) -> Path:
        return self._dir / "checkpoint.json"

    def _open(self, name: str) -> int:
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return os.open(str(self._dir / name), os.O_RDWR | os.O_CREAT, 0o600)

    def read(self) -> Dict[str, Any]:
        try:
            return json.loads(self._state_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _write(self, record: Dict[str, Any]) -> None:
        _atomic_write(self._state_path, json.dumps(record, sort_keys=True))

    def _try_leader_lock(self) -> Optional[int]:
        fd = self._open("leader.lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise
        return fd

    def claim(self, reason: str, event_id: str) -> Tuple[str, Dict[str, Any]]:
        """("leader", record) to run the checkpoint, or ("follower", record) to wait for one."""
        guard = self._open("state.lock")
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            fd = self._try_leader_lock()
            record = self.read()
            if fd is None:
                return "follower", record
            if record.get("state") == "done" and self._clock() - float(record.get("finished", 0)) < self._window:
                os.close(fd)
                return "follower", record
            record = {"state": "in-progress", "started": self._clock(), "reason": reason, "event_id": event_id,
                      "pid": os.getpid()}
            self._write(record)
            self._leader_fd = fd
            return "leader", record
        finally:
            os.close(guard)

    def finish(self, result: str, **fields: Any) -> Dict[str, Any]:
        record = self.read()
        record.update(fields)
        record.update({"state": "done", "finished": self._clock(), "result": result})
        self._write(record)
        if self._leader_fd is not None:
            os.close(self._leader_fd)  # closing drops the flock
            self._leader_fd = None
        return record

    def wait_for_leader(self, tick: Callable[[], None] = _noop, sleep: Callable[[float], None] = time.sleep,
                        poll_seconds: float = 0.5, timeout_seconds: Optional[float] = None) -> Dict[str, Any]:
        """Block (calling `tick` between polls) until no leader holds the lock, or the timeout; the final record."""
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        while True:
            tick()
            fd = self._try_leader_lock()
            if fd is not None:
                os.close(fd)
                record = self.read()
                if record.get("state") != "done":
                    record = dict(record, result=LEADER_LOST)
                return record
            if deadline is not None and time.monotonic() >= deadline:
                return dict(self.read(), result=LEADER_LOST)
            sleep(poll_seconds)


# --------------------------------------------------------------------------- the checkpoint flow


def _aws_clients(config: Config) -> Dict[str, Any]:
    import boto3  # imported late so `--help` and config errors need no boto3
    from botocore.config import Config as BotoConfig

    boto_config = BotoConfig(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=60)
    session = boto3.session.Session(region_name=config.region)
    clients = {name: session.client(service, config=boto_config) for name, service in (
        ("s3", "s3"), ("autoscaling", "autoscaling"), ("dynamodb", "dynamodb"), ("sns", "sns"),
        ("events", "events"), ("cloudwatch", "cloudwatch"))}
    clients["ecr_factory"] = lambda region: session.client("ecr", region_name=region, config=boto_config)
    return clients


class Agent:
    """The checkpoint flow (`checkpoint`, Run Command) and the IMDS watch (`watch`)."""

    def __init__(self, config: Config, *, imds: Imds, s3: Any, autoscaling: Any, log: JsonLog,
                 dynamodb: Any = None, sns: Any = None, events: Any = None,
                 run: Runner = subprocess.run, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, marker_poll_seconds: float = 0.2,
                 follower_poll_seconds: float = 0.2) -> None:
        self.config = config
        self.imds = imds
        self.s3 = s3
        self.autoscaling = autoscaling
        self.dynamodb = dynamodb
        self.sns = sns
        self.events = events
        self.log = log
        self.state = NodeState(config.state_dir)
        self._run = run
        self._clock = clock
        self._sleep = sleep
        self._marker_poll = marker_poll_seconds
        self._follower_poll = follower_poll_seconds

    @property
    def _flow_seconds(self) -> float:
        return self.config.budget_seconds + UPLOAD_GRACE_SECONDS

    def checkpoint(self, reason: str, event_id: str, lifecycle: Optional[LifecycleAction] = None,
                   on_leader: Callable[[], None] = _noop) -> int:
        """The checkpoint flow; ``on_leader`` runs once this request leads it (a GPU fault marks the
        instance Unhealthy there: the termination it starts finds this flow in progress and follows it)."""
        self._on_leader = on_leader
        log = self.log.bind(reason=reason, event_id=event_id)
        log("start", lifecycle_hook=lifecycle.hook_name if lifecycle else None,
            autoscaling_group=lifecycle.autoscaling_group_name if lifecycle else None)
        try:
            instance_id: Optional[str] = self.imds.instance_id()
        except ImdsError as error:
            instance_id = None
            log("instance-id", level="error", error=str(error))
        log = log.bind(instance_id=instance_id)
        if instance_id and reason in REPLACE_AFTER_CHECKPOINT and on_leader is _noop:
            # As for a GPU fault: the termination this starts runs the hook's
            # checkpoint, which finds this flow in progress and follows it.
            self._on_leader = lambda: mark_unhealthy(self.autoscaling, instance_id, log, reason)

        heartbeat = (Heartbeat(self.autoscaling, lifecycle, instance_id, self.config.heartbeat_seconds, log,
                               clock=self._clock) if lifecycle else None)
        tick = heartbeat.maybe_beat if heartbeat else _noop

        if instance_id is None:
            result = NO_INSTANCE_ID
        else:
            try:
                result = self._coordinated(reason, event_id, instance_id, log, tick)
            except Exception as error:  # noqa: BLE001 - the lifecycle action is still completed below
                log("error", level="error", error=f"{type(error).__name__}: {error}")
                result = INTERNAL_ERROR

        if lifecycle:
            complete_lifecycle_action(self.autoscaling, lifecycle, instance_id, log)
        code = 0 if result in OK_RESULTS else 1
        log("done", level="info" if code == 0 else "error", result=result, exit_code=code)
        return code

    def _drain(self, reason: str, event_id: str, log: JsonLog) -> None:
        """From now on this instance claims and starts no run; a run loop mid-claim finishes first."""
        locked = self.state.run_lock.acquire(timeout=10)
        try:
            self.state.start_draining(reason, event_id, self._clock())
        finally:
            if locked:
                self.state.run_lock.release()
        log("drain", locked=locked)

    def _coordinated(self, reason: str, event_id: str, instance_id: str, log: JsonLog,
                     tick: Callable[[], None]) -> str:
        self._drain(reason, event_id, log)
        coordinator = Coordinator(self.config.state_dir, self.config.budget_seconds, clock=self._clock)
        role, record = coordinator.claim(reason, event_id)
        if role == "follower":
            log("dedupe", role="follower", leader_reason=record.get("reason"),
                leader_event_id=record.get("event_id"), leader_state=record.get("state"))
            final = coordinator.wait_for_leader(tick=tick, sleep=self._sleep, poll_seconds=self._follower_poll,
                                                timeout_seconds=self._flow_seconds + 10)
            result = final.get("result", LEADER_LOST)
            log("dedupe", role="follower", leader_result=result, prefix=final.get("prefix"))
            return result
        try:
            result, fields = self._lead(record, instance_id, log, tick)
        except Exception as error:  # noqa: BLE001 - recorded so followers and retries see it
            log("error", level="error", error=f"{type(error).__name__}: {error}")
            result, fields = INTERNAL_ERROR, {}
        coordinator.finish(result, **fields)
        return result

    def _lead(self, record: Dict[str, Any], instance_id: str, log: JsonLog,
              tick: Callable[[], None]) -> Tuple[str, Dict[str, Any]]:
        """Signal, wait, upload, stop the trainer, release the run; the result and the fields to record."""
        log("dedupe", role="leader")
        getattr(self, "_on_leader", _noop)()
        tick()
        current = self.state.current_run()
        if not current.get("run_id") or current.get("phase") not in ("starting", "running"):
            log("run", current=False, phase=current.get("phase"), message="no run on this instance")
            return NO_RUN, {}
        run_id, attempt = current["run_id"], int(current["attempt"])
        log = log.bind(run_id=run_id, attempt=attempt)
        requested = float(record["started"])
        flow_ends = requested + self._flow_seconds
        answered: Optional[float] = None
        signalled = False
        if current.get("phase") == "running":
            before = marker_mtime(self.config.marker_path)
            signalled = signal_trainer(current, self.config.training_signal, log, run=self._run)
            if signalled:
                answered = wait_for_marker(self.config.marker_path, requested, requested + self.config.budget_seconds,
                                           log, before=before, tick=tick, clock=self._clock, sleep=self._sleep,
                                           poll_seconds=self._marker_poll)
        # Whatever completed checkpoint never reached S3 goes now: the answer,
        # or the last one when the trainer did not answer.
        upload_result, uri, upload_error = self._upload(run_id, log, flow_ends, tick)
        if current.get("phase") == "running":
            stop_trainer(current, log, run=self._run,
                         grace_seconds=max(1.0, min(TRAINER_STOP_SECONDS, flow_ends - self._clock() - 5)))
            # It may have completed one more checkpoint before it stopped.
            again, newer, again_error = self._upload(run_id, log, flow_ends, tick)
            if again == UPLOADED:
                upload_result, uri = UPLOADED, newer
            upload_error = upload_error or again_error
        self._release(run_id, attempt, instance_id, current, record["reason"], uri, log)
        if upload_error:
            return UPLOAD_FAILED, {"run_id": run_id}
        if signalled and answered is None:
            return TIMED_OUT, {"run_id": run_id, "prefix": uri}
        return upload_result, {"run_id": run_id, "prefix": uri}

    def _upload(self, run_id: str, log: JsonLog, flow_ends: float,
                tick: Callable[[], None]) -> Tuple[str, Optional[str], Optional[str]]:
        """(result, newest uploaded s3:// prefix, error) within the flow's deadline; torn snapshots retried."""
        uploader = CheckpointUploader(self.config, self.state, self.s3, clock=self._clock)
        allowed = lambda: self.state.current_run().get("run_id") == run_id  # noqa: E731
        while True:
            remaining = flow_ends - self._clock()
            if remaining <= 0:
                log("upload", level="error", error="no time left before the lifecycle action must be completed")
                return UPLOAD_FAILED, None, "deadline"
            try:
                result, uri = uploader.upload_if_new(run_id, log, remaining, allowed=allowed, tick=tick)
                return result, uri, None
            except TornCheckpoint as error:
                log("upload", level="warning", retry=True, error=str(error))
                self._sleep(0.2)
            except Exception as error:  # noqa: BLE001 - reported; the previous checkpoint stays LATEST
                log("upload", level="error", error=str(error))
                return UPLOAD_FAILED, None, str(error)

    def _release(self, run_id: str, attempt: int, instance_id: str, current: Mapping[str, Any], reason: str,
                 uri: Optional[str], log: JsonLog) -> None:
        runs = RunsTable(self.dynamodb, self.config.runs_table, instance_id, self.config.lease_seconds,
                         clock=self._clock)
        uploads = self.state.uploads()
        if uri is None and uploads.get("run_id") == run_id and uploads.get("prefix"):
            uri = f"s3://{self.config.bucket}/{uploads['prefix']}"
        try:
            item = runs.release(run_id, attempt, reason, uri)
        except LeaseLost as error:
            log("release", level="warning", released=False, error=str(error))
        except Exception as error:  # noqa: BLE001 - the lease expires by itself; another instance takes over
            log("release", level="error", released=False, error=f"{type(error).__name__}: {error}")
        else:
            log("release", released=True, state=item.get("state"), last_checkpoint=uri)
            if item.get("state") == "CANCELLED":
                RunEvents(self.config, runs, self.sns, self.events, log).terminal(item)
        self.state.update_current_run(phase="released")

    def watch(self, poll_seconds: float = IMDS_POLL_SECONDS, exit_after_notice: bool = False,
              stop: Callable[[], bool] = lambda: False,
              poll_sleep: Optional[Callable[[float], None]] = None) -> int:
        poll_sleep = poll_sleep or self._sleep
        log = self.log.bind(command="watch")
        log("watch-start", imds=self.config.imds_endpoint, poll_seconds=poll_seconds)
        handled_path = self.config.state_dir / "imds-notice.json"
        try:
            handled = json.loads(handled_path.read_text())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            handled = None
        failing = False
        while not stop():
            try:
                notice = self.imds.spot_instance_action(retry_seconds=max(poll_seconds, 0.5))
                if failing:
                    log("imds", message="IMDS reachable again")
                failing = False
            except ImdsError as error:
                if not failing:
                    log("imds", level="error", error=str(error))
                failing = True
                notice = None
            if notice is not None and notice != handled:
                log("notice", action=notice.get("action"), notice_time=notice.get("time"))
                code = self.checkpoint(WATCH_REASON, f"imds-{notice.get('action')}-{notice.get('time')}")
                # Remembered only once handled: a watch that crashed mid-flow retries after its restart.
                handled = notice
                _atomic_write(handled_path, json.dumps(notice, sort_keys=True))
                if exit_after_notice:
                    return code
            poll_sleep(poll_seconds)
        log("watch-stop")
        return 0


# --------------------------------------------------------------------------- the run loop


class _ActiveRun:
    """What the monitor of one attempt tracks."""

    def __init__(self, item: Mapping[str, Any], lease_seconds: float) -> None:
        self.item = dict(item)
        self.run_id: str = item["run_id"]
        self.attempt: int = int(item["attempt_count"])
        self.spec: Dict[str, Any] = dict(item.get("spec") or {})
        self.lease_valid_until = time.monotonic() + lease_seconds
        self.done = threading.Event()
        # Hung-run watch: the progress file's last (mtime, content) and when it last changed.
        self.progress_mark: Optional[Tuple[int, str]] = None
        self.last_progress = time.monotonic()
        self.hung_alerted = False


class RunLoop:
    """`run`: claim a run, restore its checkpoint, start and watch its trainer, record how it ended."""

    def __init__(self, config: Config, *, imds: Imds, s3: Any, dynamodb: Any, sns: Any, events: Any,
                 launcher: Any, log: JsonLog, run: Runner = subprocess.run,
                 stop: Callable[[], bool] = lambda: False, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, monitor_poll_seconds: float = 0.5,
                 upload_poll_seconds: float = 1.0, autoscaling: Any = None, cloudwatch: Any = None,
                 kernel_lines: Optional[Callable[[threading.Event], Iterator[str]]] = None) -> None:
        self.config = config
        self.autoscaling = autoscaling
        self.cloudwatch = cloudwatch
        self._kernel_lines = kernel_lines or (lambda stop: follow_kernel_log(config.health.kernel_log, stop))
        self._watch_stop = threading.Event()
        self.unhealthy = threading.Event()
        self._fault_lock = threading.Lock()
        self.telemetry = Telemetry(config, cloudwatch, sns, log)
        self.imds = imds
        self.s3 = s3
        self.dynamodb = dynamodb
        self.sns = sns
        self.events = events
        self.launcher = launcher
        self.log = log.bind(command="run")
        self.state = NodeState(config.state_dir)
        self._run = run
        self._stop = stop
        self._clock = clock
        self._sleep = sleep
        self._monitor_poll = monitor_poll_seconds
        self._upload_poll = upload_poll_seconds
        self.instance_id = ""
        self.runs: Optional[RunsTable] = None

    def _sleep_unless_stopped(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stop() and time.monotonic() < end:
            self._sleep(min(0.2, max(end - time.monotonic(), 0.0)))

    def serve(self, max_runs: Optional[int] = None) -> int:
        """Loop until stopped (or `max_runs` attempts executed, for tests)."""
        while not self._stop() and not self.instance_id:
            try:
                self.instance_id = self.imds.instance_id()
            except ImdsError as error:
                self.log("instance-id", level="error", error=str(error))
                self._sleep_unless_stopped(self.config.claim_poll_seconds)
        if self._stop():
            return 0
        self.log = self.log.bind(instance_id=self.instance_id)
        self.runs = RunsTable(self.dynamodb, self.config.runs_table, self.instance_id, self.config.lease_seconds,
                              clock=self._clock)
        gpus = gpu_count(self.config, run=self._run)
        self.log("run-loop-start", gpus=gpus, launcher=self.config.launcher, table=self.config.runs_table)
        self.telemetry = Telemetry(self.config, self.cloudwatch, self.sns, self.log)
        self._recover()
        if not self.state.draining() and self.config.health.gate:
            self._health_gate()
        if self.config.health.kernel_log != "off":
            threading.Thread(target=self._watch_xids, name="xid-watch", daemon=True).start()
        if self.config.health.gpu_poll_seconds and not self.state.draining():
            threading.Thread(target=self._poll_gpus, name="gpu-poll", daemon=True).start()
        executed, draining_logged = 0, False
        while not self._stop() and (max_runs is None or executed < max_runs):
            if self.state.draining():
                if not draining_logged:
                    self.log("claim", claimed=False, message="instance is draining: no new run")
                    draining_logged = True
                self._sleep_unless_stopped(self.config.claim_poll_seconds)
                continue
            try:
                item = self._claim_one(gpus)
            except Exception as error:  # noqa: BLE001 - the next poll tries again
                self.log("claim", level="error", error=f"{type(error).__name__}: {error}")
                item = None
            if item is None:
                self._sleep_unless_stopped(self.config.claim_poll_seconds)
                continue
            executed += 1
            self._execute(_ActiveRun(item, self.config.lease_seconds))
        self._watch_stop.set()
        self.log("run-loop-stop")
        return 0

    # ------------------------------------------------------------------ GPU health

    def _instance_type(self) -> Optional[str]:
        try:
            return (self.imds.get("/latest/meta-data/instance-type") or "").strip() or None
        except ImdsError as error:
            self.log("instance-type", level="warning", error=str(error))
            return None

    def _health_gate(self) -> bool:
        """Before the first claim: a failing instance says why, marks itself Unhealthy and never claims."""
        instance_type = self._instance_type()
        gate = HealthGate(self.config.health, self._run, self.log, instance_type)
        problems = gate.check()
        self.log("health-gate", level="error" if problems else "info", healthy=not problems,
                 instance_type=instance_type, expected_gpus=gate.expected_gpus(), problems=problems or None)
        self.telemetry.metric("GpuHealthCheckFailed", 1.0 if problems else 0.0)
        if not problems:
            return True
        self._take_out("health-gate", "gpu-health-gate")
        self.telemetry.alert(f"instance {self.instance_id} failed the GPU health gate", [
            f"Instance {self.instance_id} ({instance_type or 'unknown type'}) of group "
            f"{self.config.autoscaling_group_name} failed its GPU health check at launch and claims no run:",
            *[f"  - {p}" for p in problems],
            "It marked itself Unhealthy; the Auto Scaling group replaces it."])
        return False

    def _take_out(self, event_id: str, reason: str) -> None:
        """Claim nothing from now on and tell the group to replace this instance (once)."""
        self.state.start_draining(reason, event_id, self._clock())
        if self.unhealthy.is_set():
            return
        self.unhealthy.set()
        mark_unhealthy(self.autoscaling, self.instance_id, self.log, reason)

    def _watch_xids(self) -> None:
        """Every `NVRM: Xid` line: counted as a metric; a fatal one (FATAL_XIDS) takes the instance out.

        A source that ends or fails (journald restarted) is followed again after 5 s."""
        while not self._watch_stop.is_set():
            try:
                for line in self._kernel_lines(self._watch_stop):
                    parsed = parse_xid(line)
                    if not parsed:
                        continue
                    code, bus = parsed
                    fatal = code in FATAL_XIDS
                    self.log("xid", level="error" if fatal else "warning", xid=code, pci=bus, fatal=fatal,
                             line=line.strip()[:300])
                    self.telemetry.metric("GpuXid", 1.0, Xid=str(code))
                    if fatal:
                        self._gpu_fault(f"gpu-xid-{code}", f"xid-{code}-{bus}", f"GPU fault Xid {code}", [
                            f"Xid {code} ({FATAL_XIDS[code]}) on {bus}.", f"Kernel log: {line.strip()[:300]}"])
            except Exception as error:  # noqa: BLE001 - the run loop keeps going; the watch starts again
                self.log("xid-watch", level="error", error=f"{type(error).__name__}: {error}")
            self._watch_stop.wait(5.0)

    def _poll_gpus(self) -> None:
        """Every ML_GPU_POLL_SECONDS while running: the gate's nvidia-smi checks (a lost GPU, uncorrected ECC
        errors, a pending or failed row remap) are a GPU fault (detail `gpu-nvidia-smi`)."""
        gate = HealthGate(self.config.health, self._run, self.log, self._instance_type())
        while not self._watch_stop.wait(self.config.health.gpu_poll_seconds) and not self.unhealthy.is_set():
            problems = gate.running_check()
            if problems:
                self.log("gpu-poll", level="error", healthy=False, problems=problems)
                self._gpu_fault("gpu-nvidia-smi", "nvidia-smi", "GPU fault (nvidia-smi)", problems)

    def _gpu_fault(self, reason: str, event: str, subject: str, details: List[str]) -> None:
        """Checkpoint within the budget, release the run (detail `reason`), Unhealthy, claim nothing more."""
        with self._fault_lock:
            if self.unhealthy.is_set():
                return
            current = self.state.current_run()
            agent = Agent(self.config, imds=self.imds, s3=self.s3, autoscaling=self.autoscaling, log=self.log,
                          dynamodb=self.dynamodb, sns=self.sns, events=self.events, run=self._run,
                          clock=self._clock, sleep=self._sleep)
            result = agent.checkpoint(reason, f"{event}-{int(self._clock())}",
                                      on_leader=lambda: self._take_out(event, reason))
            self._take_out(event, reason)  # a follower of another flow, or no run at all
        self.telemetry.alert(f"instance {self.instance_id} {subject}", [
            f"Instance {self.instance_id} of group {self.config.autoscaling_group_name}:", *details,
            f"Run: {current.get('run_id') or 'none'}; checkpoint flow exit code {result} (0: uploaded or nothing new).",
            "The run was released for another instance; this one is marked Unhealthy and is being replaced."])

    def _claim_one(self, gpus: int) -> Optional[Dict[str, Any]]:
        assert self.runs is not None
        with self.state.run_lock:
            if self.state.draining():
                return None
            for seen in self.runs.candidates():
                needed = int((seen.get("spec") or {}).get("gpus", 0))
                if needed > gpus:
                    self.log("claim", level="warning", run_id=seen["run_id"], skipped=True, gpus_needed=needed,
                             gpus=gpus)
                    continue
                item = self.runs.claim(seen)
                if item is None:
                    self.log("claim", run_id=seen["run_id"], claimed=False, message="another instance won")
                    continue
                attempt = int(item["attempt_count"])
                self.state.set_current_run({"run_id": item["run_id"], "attempt": attempt, "phase": "starting",
                                            "instance_id": self.instance_id, "launcher": self.config.launcher})
                self.state.set_uploads({"run_id": item["run_id"]})
                self.log("claim", run_id=item["run_id"], attempt=attempt, claimed=True, orphan=seen["state"] == "RUNNING")
                return item
        return None

    def _trainer_env(self, active: _ActiveRun, resume_from: str) -> Dict[str, str]:
        env = {str(k): str(v) for k, v in (active.spec.get("environment") or {}).items()}
        env.update({"ML_RUN_ID": active.run_id, "ML_CHECKPOINT_DIR": str(self.config.checkpoint_dir),
                    "ML_RESUME_FROM": resume_from, "ML_CHECKPOINT_DONE_MARKER": self.config.done_marker,
                    "ML_TRAINING_SIGNAL": self.config.training_signal,
                    "ML_PROGRESS_FILE": str(self.config.health.progress_file)})
        return env

    def _execute(self, active: _ActiveRun) -> None:
        log = self.log.bind(run_id=active.run_id, attempt=active.attempt)
        try:
            resume_from = restore_checkpoint(self.s3, self.config.bucket, active.run_id, self.config.checkpoint_dir,
                                             log)
            uploads = {"run_id": active.run_id, "marker_mtime": marker_mtime(self.config.marker_path)}
            if resume_from:
                uploads["prefix"] = resume_from.split("/", 3)[3]
            self.state.set_uploads(uploads)
            if hasattr(self.launcher, "prepare"):
                self.launcher.prepare(active.spec, log)
        except LaunchError as error:
            log("trainer-start", level="error", error=str(error))
            self._finished(active, 125, log)
            return
        except UploadError as error:
            # LATEST names no usable checkpoint: every instance would fail the
            # same way, so it counts (max_failures ends it with an alert).
            log("restore", level="error", error=str(error))
            self._finished(active, None, log, detail="restore-failed")
            return
        except Exception as error:  # noqa: BLE001 - an instance fault: the run goes to another instance
            log("restore", level="error", error=f"{type(error).__name__}: {error}")
            self._give_back(active, "restore-failed", log)
            return
        with self.state.run_lock:
            if self.state.draining():
                log("trainer-start", started=False, message="instance is draining; the interruption releases the run")
                return
            try:
                _reset_progress(self.config.health.progress_file)
                trainer = self.launcher.start(active.run_id, active.attempt, self.instance_id, active.spec,
                                              self._trainer_env(active, resume_from), log)
            except LaunchError as error:
                log("trainer-start", level="error", error=str(error))
                trainer = None
            if trainer is not None:
                self.state.update_current_run(phase="running", **trainer.fields)
        if trainer is None:
            self._finished(active, 125, log)
            return
        self._monitor(active, trainer, log)

    def _monitor(self, active: _ActiveRun, trainer: TrainerProcess, log: JsonLog) -> None:
        uploader = threading.Thread(target=self._upload_loop, args=(active, log), daemon=True)
        uploader.start()
        next_renew = time.monotonic() + self.config.lease_renew_seconds
        try:
            while True:
                code = trainer.poll()
                if code is not None:
                    break
                if self._stop():
                    # systemd stops the unit: a container keeps training and the
                    # restarted loop adopts it; otherwise the lease expires.
                    log("run-loop-stop", trainer_left=True)
                    return
                if time.monotonic() >= next_renew:
                    verdict = self._renew(active, trainer, log)
                    if verdict == "stop":
                        return
                    next_renew = time.monotonic() + (self.config.lease_renew_seconds if verdict == "ok"
                                                     else min(self.config.lease_renew_seconds, 5.0))
                if self._hung(active, log):
                    return
                self._sleep(self._monitor_poll)
        finally:
            active.done.set()
            uploader.join(timeout=BACKGROUND_UPLOAD_SECONDS)
        self._trainer_exited(active, code, log)

    def _hung(self, active: _ActiveRun, log: JsonLog) -> bool:
        """No progress report for ML_HUNG_AFTER_SECONDS: alert once per attempt; with
        ML_HUNG_ACTION=restart also stop the trainer and end the attempt `failed`/`hung` (True)."""
        limit = self.config.health.hung_after_seconds
        if not limit or self.state.draining():
            return False
        mark = _progress_mark(self.config.health.progress_file)
        now = time.monotonic()
        if mark is not None and mark != active.progress_mark:
            active.progress_mark, active.last_progress = mark, now
            return False
        silent = now - active.last_progress
        if silent < limit or active.hung_alerted:
            return False
        active.hung_alerted = True
        restart = self.config.health.hung_action == "restart"
        last = active.progress_mark[1] if active.progress_mark else None
        log("hung", level="error", silent_seconds=round(silent, 3), hung_after_seconds=limit, last_progress=last,
            action=self.config.health.hung_action)
        self.telemetry.metric("RunHung")
        self.telemetry.alert(f"run {active.run_id} hung", [
            f"Run {active.run_id} attempt {active.attempt} on {self.instance_id} reported no progress for "
            f"{silent:.0f} s (ML_HUNG_AFTER_SECONDS={limit:g}).",
            f"Last progress report: {last or 'none since the trainer started'}.",
            "Action: " + ("the attempt is stopped and counted as a failure (detail hung); the run restarts from its "
                          "last checkpoint" if restart else "none (ML_HUNG_ACTION=alert); the trainer keeps running"),
            f'Inspect: make run ARGS="logs {active.run_id}"'])
        if not restart:
            return False
        active.done.set()
        with self.state.run_lock:
            if self.state.draining():
                return False
            self.state.update_current_run(phase="finishing")
        stop_trainer(self.state.current_run(), log, run=self._run)
        uploader = CheckpointUploader(self.config, self.state, self.s3, clock=self._clock)
        for _ in range(20):  # a checkpoint completed before it hung and not uploaded yet
            if self._upload_once(active, uploader, log):
                break
            self._sleep(0.2)
        self._finished(active, None, log, detail="hung")
        return True

    def _renew(self, active: _ActiveRun, trainer: TrainerProcess, log: JsonLog) -> str:
        """"ok", "retry" (transient error) or "stop" (lease lost, cancelled, out of time: the attempt is over)."""
        assert self.runs is not None
        try:
            item = self.runs.renew(active.run_id, active.attempt)
        except LeaseLost as error:
            self._lost(active, log, str(error))
            return "stop"
        except Exception as error:  # noqa: BLE001 - transient: retried until the lease would have expired
            log("renew", level="error", error=f"{type(error).__name__}: {error}")
            if time.monotonic() >= active.lease_valid_until:
                self._lost(active, log, "the lease expired while renewals failed")
                return "stop"
            return "retry"
        active.lease_valid_until = time.monotonic() + self.config.lease_seconds
        active.item = item
        if self.state.draining():
            return "ok"  # the interruption's checkpoint flow owns the run now
        if item.get("cancel_requested"):
            self._end_early(active, log, state="CANCELLED", attempt_end="cancelled", detail="cancel-requested",
                            run_end_reason="cancelled")
            return "stop"
        limit = float((item.get("spec") or {}).get("max_duration_minutes") or 0) * 60
        started = parse_utc_seconds(item.get("started_at", ""))
        if limit and started is not None and self._clock() - started > limit:
            self._end_early(active, log, state="FAILED", attempt_end="failed", detail="max-duration",
                            run_end_reason="max-duration")
            return "stop"
        log("renew", lease_expires_at=item.get("lease_expires_at"))
        return "ok"

    def _lost(self, active: _ActiveRun, log: JsonLog, why: str) -> None:
        active.done.set()
        if not self.state.draining():
            stop_trainer(self.state.current_run(), log, run=self._run)
        log("lease-lost", level="warning", error=why)
        self._clear(active)

    def _end_early(self, active: _ActiveRun, log: JsonLog, **end: Any) -> None:
        """Cancel or max duration: stop the trainer, then write the terminal state."""
        active.done.set()
        with self.state.run_lock:
            if self.state.draining():
                return
            self.state.update_current_run(phase="finishing")
        stop_trainer(self.state.current_run(), log, run=self._run)
        self._record_end(active, log, **end)

    def _record_end(self, active: _ActiveRun, log: JsonLog, **end: Any) -> None:
        assert self.runs is not None
        try:
            item = self.runs.end_attempt(active.run_id, active.attempt, **end)
        except Exception as error:  # noqa: BLE001 - LeaseLost included: nothing more this instance may write
            log("end", level="error", error=f"{type(error).__name__}: {error}")
        else:
            log("end", state=item.get("state"), attempt_end=end.get("attempt_end"), exit_code=end.get("exit_code"),
                detail=end.get("detail"))
            if item.get("state") in ("SUCCEEDED", "FAILED", "CANCELLED"):
                RunEvents(self.config, self.runs, self.sns, self.events, log).terminal(item)
        self._clear(active)

    def _clear(self, active: _ActiveRun) -> None:
        with self.state.run_lock:
            if self.state.current_run().get("run_id") == active.run_id:
                self.state.clear_current_run()

    def _upload_loop(self, active: _ActiveRun, log: JsonLog) -> None:
        """Upload every completed checkpoint while the trainer runs (not after an interruption began)."""
        uploader = CheckpointUploader(self.config, self.state, self.s3, clock=self._clock)
        while not active.done.wait(self._upload_poll):
            self._upload_once(active, uploader, log)

    def _allowed_to_upload(self, active: _ActiveRun) -> bool:
        current = self.state.current_run()
        return (not self.state.draining() and current.get("run_id") == active.run_id
                and current.get("phase") in ("running", "finishing")
                and time.monotonic() < active.lease_valid_until - min(5.0, self.config.lease_seconds / 4))

    def _upload_once(self, active: _ActiveRun, uploader: CheckpointUploader, log: JsonLog) -> bool:
        """One upload attempt; False when the checkpoint was half written (try again soon)."""
        assert self.runs is not None
        try:
            result, uri = uploader.upload_if_new(active.run_id, log, BACKGROUND_UPLOAD_SECONDS,
                                                 allowed=lambda: self._allowed_to_upload(active))
            if result == UPLOADED and uri:
                self.runs.set_last_checkpoint(active.run_id, active.attempt, uri)
        except TornCheckpoint:
            return False
        except LeaseLost as error:
            log("upload", level="warning", error=str(error))
        except Exception as error:  # noqa: BLE001 - retried at the next poll
            log("upload", level="error", error=f"{type(error).__name__}: {error}")
        return True

    def _trainer_exited(self, active: _ActiveRun, code: int, log: JsonLog) -> None:
        with self.state.run_lock:
            current = self.state.current_run()
            if self.state.draining() or current.get("phase") == "released":
                log("trainer-exit", exit_code=code, interrupted=True,
                    message="exit during an interruption: a reclaim, never a failure")
                return
            self.state.update_current_run(phase="finishing")
        log("trainer-exit", exit_code=code, interrupted=False)
        uploader = CheckpointUploader(self.config, self.state, self.s3, clock=self._clock)
        for _ in range(20):  # the final checkpoint; torn only if the trainer died mid-write
            if self._upload_once(active, uploader, log):
                break
            self._sleep(0.2)
        self._finished(active, code, log)

    def _finished(self, active: _ActiveRun, code: Optional[int], log: JsonLog, detail: Optional[str] = None) -> None:
        """Record how the attempt ended: exit 0 succeeds; anything else (None: no trainer ran) is a failure."""
        uploads = self.state.uploads()
        uri = (f"s3://{self.config.bucket}/{uploads['prefix']}"
               if uploads.get("run_id") == active.run_id and uploads.get("prefix") else None)
        if code == 0:
            self._record_end(active, log, state="SUCCEEDED", attempt_end="finished", exit_code=0,
                             run_end_reason="finished", last_checkpoint=uri)
            return
        seen = int(active.item.get("failures", 0))
        limit = int(active.spec.get("max_failures", 0))
        failed = seen + 1 >= limit
        self._record_end(active, log, state="FAILED" if failed else "PENDING", attempt_end="failed", exit_code=code,
                         detail=detail, run_end_reason="max-failures" if failed else None,
                         failures=(seen, seen + 1), last_checkpoint=uri)

    def _give_back(self, active: _ActiveRun, detail: str, log: JsonLog) -> None:
        assert self.runs is not None
        try:
            item = self.runs.release(active.run_id, active.attempt, detail, None)
            log("release", released=True, state=item.get("state"), detail=detail)
        except Exception as error:  # noqa: BLE001 - the lease expires by itself
            log("release", level="error", released=False, error=f"{type(error).__name__}: {error}")
        self._clear(active)

    def _recover(self) -> None:
        """After an agent restart: adopt a still-running container, or give its run back."""
        current = self.state.current_run()
        if not current.get("run_id") or current.get("phase") not in ("starting", "running", "finishing"):
            return
        if self.state.draining() or current.get("instance_id") != self.instance_id:
            return
        assert self.runs is not None
        log = self.log.bind(run_id=current["run_id"], attempt=current["attempt"])
        try:
            item = self.runs.renew(current["run_id"], int(current["attempt"]))
        except LeaseLost as error:
            log("recover", level="warning", adopted=False, error=str(error))
            stop_trainer(current, log, run=self._run)
            self.state.clear_current_run()
            return
        active = _ActiveRun(item, self.config.lease_seconds)
        container = current.get("container")
        if container and current.get("phase") == "running" and isinstance(self.launcher, DockerLauncher) \
                and self.launcher.running(container):
            log("recover", adopted=True, container=container)
            self._monitor(active, self.launcher.adopt(container), log)
            return
        stop_trainer(current, log, run=self._run)
        log("recover", adopted=False, message="the trainer did not survive the agent restart")
        self._give_back(active, "agent-restarted", log)


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ml_node_agent.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    watch = commands.add_parser("watch", help="poll IMDSv2 for a spot interruption notice")
    watch.add_argument("--poll-seconds", type=float, default=IMDS_POLL_SECONDS,
                       help="IMDS polling interval (default 1)")
    watch.add_argument("--exit-after-notice", action="store_true",
                       help="exit with the checkpoint's exit code after the first notice (drills)")
    commands.add_parser("run", help="claim runs from the runs table and run their trainers")
    checkpoint = commands.add_parser("checkpoint", help="run the checkpoint flow once")
    checkpoint.add_argument("--reason", required=True, choices=CHECKPOINT_REASONS)
    checkpoint.add_argument("--event-id", required=True)
    checkpoint.add_argument("--lifecycle-hook-name", default="")
    checkpoint.add_argument("--lifecycle-action-token", default="")
    checkpoint.add_argument("--autoscaling-group-name", default="")
    return parser


def _lifecycle_from_args(args: argparse.Namespace, config: Config) -> Optional[LifecycleAction]:
    if not args.lifecycle_action_token:
        return None
    hook = args.lifecycle_hook_name or config.lifecycle_hook_name
    group = args.autoscaling_group_name or config.autoscaling_group_name
    missing = [name for name, value in (("--lifecycle-hook-name (or ML_LIFECYCLE_HOOK_NAME)", hook),
                                        ("--autoscaling-group-name (or ML_AUTOSCALING_GROUP_NAME)", group))
               if not value]
    if missing:
        raise ConfigError("a lifecycle action token needs " + " and ".join(missing))
    return LifecycleAction(hook_name=hook, autoscaling_group_name=group, token=args.lifecycle_action_token)


class _Stopper:
    """SIGTERM/SIGINT: stop polling, but let a running checkpoint finish first."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.requested = True

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self)
        signal.signal(signal.SIGINT, self)

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.requested and time.monotonic() < end:
            time.sleep(min(0.1, max(end - time.monotonic(), 0.0)))


def main(argv: Optional[List[str]] = None, environ: Optional[Mapping[str, str]] = None) -> int:
    args = _parser().parse_args(argv)
    log = JsonLog(command=args.command)
    try:
        config = Config.from_env(merged_environment(os.environ if environ is None else environ))
        lifecycle = _lifecycle_from_args(args, config) if args.command == "checkpoint" else None
    except ConfigError as error:
        log("config", level="error", error=str(error))
        print(f"ml_node_agent.py: {error}", file=sys.stderr)
        return 1
    clients = _aws_clients(config)
    imds = Imds(config.imds_endpoint, cache_dir=config.state_dir)
    agent = Agent(config, imds=imds, s3=clients["s3"], autoscaling=clients["autoscaling"], log=log,
                  dynamodb=clients["dynamodb"], sns=clients["sns"], events=clients["events"])
    if args.command == "checkpoint":
        return agent.checkpoint(args.reason, args.event_id, lifecycle)
    stopper = _Stopper()
    stopper.install()
    if args.command == "watch":
        return agent.watch(poll_seconds=args.poll_seconds, exit_after_notice=args.exit_after_notice,
                           stop=lambda: stopper.requested, poll_sleep=stopper.sleep)
    launcher: Any = (ProcessLauncher(config.state_dir / "trainer-logs") if config.launcher == "process"
                     else DockerLauncher(config, clients["ecr_factory"]))
    loop = RunLoop(config, imds=imds, s3=clients["s3"], dynamodb=clients["dynamodb"], sns=clients["sns"],
                   events=clients["events"], launcher=launcher, log=log, stop=lambda: stopper.requested,
                   autoscaling=clients["autoscaling"], cloudwatch=clients["cloudwatch"])
    return loop.serve()


if __name__ == "__main__":
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # An upload abandoned at its deadline may still hold worker threads:
    # the result is decided, so do not wait for them.
    os._exit(exit_code)
