#!/usr/bin/env python3
"""ml-node-agent: checkpoint the training run before this instance goes away.

Runs on every GPU instance of the training fleet (see CONTRACT.md next to this
file). Python 3.9+, standard library and boto3 only.

    ml_node_agent.py watch
        Poll IMDSv2 spot/instance-action every 5 s; on a notice run the
        checkpoint flow once (reason ``spot-imds``, no lifecycle token).

    ml_node_agent.py checkpoint --reason REASON --event-id ID
        [--lifecycle-hook-name NAME --lifecycle-action-token TOKEN
         --autoscaling-group-name NAME]
        Signal the trainer, wait for its checkpoint-done marker, upload the
        checkpoint directory to s3://BUCKET/<instance-id>/<UTC timestamp>/,
        then write s3://BUCKET/<instance-id>/LATEST, then complete the
        lifecycle action (CONTINUE) if a token was given.

Configuration comes from the environment; variables not set there are read
from ``ML_ENV_FILE`` (default /etc/ml-node-agent.env, written by install.sh),
so the command works the same from the systemd unit and from Run Command.

Overrides for tests and drills (never needed on an instance): ``ML_IMDS_ENDPOINT``
(IMDS base URL), ``ML_STATE_DIR`` (dedupe state, default /run/ml-node-agent),
and boto3's own ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL_AUTO_SCALING``. The trainer is signalled with the
``systemctl`` found on PATH.

Exit codes: 0 checkpoint uploaded (or nothing new to upload), 1 otherwise
(configuration errors included), 2 command-line usage error.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, TextIO, Tuple

CHECKPOINT_REASONS = ("spot-interruption", "rebalance-recommendation", "lifecycle-terminate")
WATCH_REASON = "spot-imds"
DEFAULT_ENV_FILE = "/etc/ml-node-agent.env"
DEFAULT_STATE_DIR = "/run/ml-node-agent"
DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
IMDS_POLL_SECONDS = 5.0
NO_ACTIVE_LIFECYCLE_ACTION = "No active Lifecycle Action found"

# Results of a checkpoint attempt; the first two mean exit code 0.
UPLOADED = "uploaded"
NOTHING_NEW = "nothing-new"
TIMED_OUT = "checkpoint-timeout"
UPLOAD_FAILED = "upload-failed"
LEADER_LOST = "leader-lost"
NO_INSTANCE_ID = "instance-id-unavailable"
INTERNAL_ERROR = "internal-error"
OK_RESULTS = (UPLOADED, NOTHING_NEW)


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


@dataclass(frozen=True)
class Config:
    bucket: str
    checkpoint_dir: Path
    done_marker: str
    training_unit: str
    training_signal: str
    budget_seconds: float
    heartbeat_seconds: float
    region: str
    autoscaling_group_name: Optional[str]
    lifecycle_hook_name: Optional[str]
    imds_endpoint: str
    state_dir: Path

    @property
    def marker_path(self) -> Path:
        return self.checkpoint_dir / self.done_marker

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Config":
        problems: List[str] = []

        def required(name: str, hint: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                problems.append(f"{name} is not set ({hint})")
            return value

        def seconds(name: str, default: str, low: float, high: float) -> float:
            raw = env.get(name, default).strip()
            try:
                value = float(raw)
            except ValueError:
                problems.append(f"{name}={raw!r} is not a number of seconds ({low:g} to {high:g})")
                return 0.0
            if not low <= value <= high:
                problems.append(f"{name}={raw!r} is out of range ({low:g} to {high:g} seconds)")
            return value

        bucket = required("ML_CHECKPOINT_BUCKET", "the checkpoint bucket name")
        checkpoint_dir = required("ML_CHECKPOINT_DIR", "the directory the trainer writes its checkpoint to")
        unit = required("ML_TRAINING_UNIT", "the trainer's systemd unit, e.g. ml-training.service")
        region = env.get("AWS_REGION", "").strip() or env.get("AWS_DEFAULT_REGION", "").strip()
        if not region:
            problems.append("AWS_REGION is not set (the region of the bucket and the Auto Scaling group)")
        if checkpoint_dir and not checkpoint_dir.startswith("/"):
            problems.append(f"ML_CHECKPOINT_DIR={checkpoint_dir!r} is not an absolute path")
        marker = env.get("ML_CHECKPOINT_DONE_MARKER", "CHECKPOINT_DONE").strip()
        if not marker or "/" in marker or marker in (".", ".."):
            problems.append(f"ML_CHECKPOINT_DONE_MARKER={marker!r} is not a plain file name")
        raw_signal = env.get("ML_TRAINING_SIGNAL", "SIGUSR1")
        try:
            training_signal = _signal_name(raw_signal)
        except (KeyError, ValueError):
            training_signal = ""
            problems.append(f"ML_TRAINING_SIGNAL={raw_signal!r} is not a signal name, e.g. SIGUSR1")
        budget = seconds("ML_CHECKPOINT_BUDGET_SECONDS", "90", 1, 7200)
        heartbeat = seconds("ML_HEARTBEAT_SECONDS", "30", 1, 7200)
        if problems:
            raise ConfigError("invalid node agent configuration: " + "; ".join(problems))
        return cls(
            bucket=bucket,
            checkpoint_dir=Path(checkpoint_dir),
            done_marker=marker,
            training_unit=unit,
            training_signal=training_signal,
            budget_seconds=budget,
            heartbeat_seconds=heartbeat,
            region=region,
            autoscaling_group_name=env.get("ML_AUTOSCALING_GROUP_NAME") or None,
            lifecycle_hook_name=env.get("ML_LIFECYCLE_HOOK_NAME") or None,
            imds_endpoint=(env.get("ML_IMDS_ENDPOINT") or DEFAULT_IMDS_ENDPOINT).rstrip("/"),
            state_dir=Path(env.get("ML_STATE_DIR") or DEFAULT_STATE_DIR),
        )


# --------------------------------------------------------------------------- logging


def _utc_iso(epoch: float) -> str:
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class JsonLog:
    """One JSON object per line on stdout (Run Command and journald capture it)."""

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
        stream.write(json.dumps(line, default=str) + "\n")
        stream.flush()


# --------------------------------------------------------------------------- IMDSv2


class ImdsError(Exception):
    pass


class Imds:
    """Minimal IMDSv2 client: session token from PUT /latest/api/token, re-fetched on expiry or 401."""

    TOKEN_TTL_SECONDS = 21600

    def __init__(self, endpoint: str, timeout_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._endpoint = endpoint.rstrip("/")
        self._timeout = timeout_seconds
        self._clock = clock
        self._token: Optional[str] = None
        self._token_expires = 0.0

    def _request(self, method: str, path: str, headers: Dict[str, str]) -> Tuple[int, str]:
        request = urllib.request.Request(self._endpoint + path, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, ""
        except (urllib.error.URLError, OSError) as error:
            raise ImdsError(f"IMDS {method} {path} failed: {error}") from error

    def token(self) -> str:
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

    def get(self, path: str) -> Optional[str]:
        """Body of a metadata path, or None when it does not exist (HTTP 404)."""
        for attempt in range(2):
            status, body = self._request("GET", path, {"X-aws-ec2-metadata-token": self.token()})
            if status == 200:
                return body
            if status == 404:
                return None
            if status == 401 and attempt == 0:
                self._token = None
                continue
            raise ImdsError(f"IMDS GET {path} returned HTTP {status}")
        raise ImdsError(f"IMDS GET {path} kept returning HTTP 401")

    def instance_id(self) -> str:
        value = self.get("/latest/meta-data/instance-id")
        if not value:
            raise ImdsError("IMDS has no instance-id")
        return value.strip()

    def spot_instance_action(self) -> Optional[Dict[str, Any]]:
        body = self.get("/latest/meta-data/spot/instance-action")
        if body is None:
            return None
        try:
            notice = json.loads(body)
        except ValueError as error:
            raise ImdsError(f"IMDS spot/instance-action is not JSON: {body[:200]!r}") from error
        if not isinstance(notice, dict) or "action" not in notice:
            raise ImdsError(f"IMDS spot/instance-action has no action: {body[:200]!r}")
        return notice


# --------------------------------------------------------------------------- steps


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def signal_trainer(unit: str, signal_name: str, log: JsonLog, run: Runner = subprocess.run) -> bool:
    """`systemctl kill --signal=SIG UNIT`; True when the trainer was signalled.

    A missing unit (or no systemctl at all) is logged and the flow goes on.
    """
    command = ["systemctl", "kill", f"--signal={signal_name}", unit]
    try:
        result = run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        log("signal", level="error", unit=unit, signal=signal_name, signalled=False, error=str(error))
        return False
    if result.returncode != 0:
        log("signal", level="warning", unit=unit, signal=signal_name, signalled=False,
            exit_code=result.returncode, error=(result.stderr or result.stdout).strip()[:500])
        return False
    log("signal", unit=unit, signal=signal_name, signalled=True)
    return True


def marker_mtime(path: Path) -> Optional[float]:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


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


def wait_for_marker(path: Path, newer_than: float, deadline: float, log: JsonLog,
                    tick: Callable[[], None] = _noop, clock: Callable[[], float] = time.time,
                    sleep: Callable[[float], None] = time.sleep, poll_seconds: float = 0.2) -> Optional[float]:
    """Wait until `path` has an mtime after `newer_than`; its mtime, or None at the deadline."""
    started = clock()
    while True:
        tick()
        mtime = marker_mtime(path)
        if mtime is not None and mtime > newer_than:
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
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


class UploadError(Exception):
    pass


def upload_checkpoint(s3: Any, bucket: str, directory: Path, instance_id: str, stamp: str, log: JsonLog,
                      tick: Callable[[], None] = _noop, max_workers: int = 4) -> str:
    """Upload every file to <instance-id>/<stamp>/, then point <instance-id>/LATEST at that prefix.

    LATEST is written only after every object is in place, and nothing is ever
    deleted, so a reader following LATEST always finds a complete checkpoint:
    the previous one until this call returns, this one after.
    """
    files = checkpoint_files(directory)
    if not files:
        raise UploadError(f"checkpoint directory {directory} has no files")
    prefix = f"{instance_id}/{stamp}/"
    total_bytes = sum(path.stat().st_size for path, _ in files)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        pending = {pool.submit(s3.upload_file, str(path), bucket, prefix + key): key for path, key in files}
        try:
            while pending:
                tick()
                done, _ = wait(pending, timeout=1.0, return_when=FIRST_EXCEPTION)
                for future in done:
                    key = pending.pop(future)
                    error = future.exception()
                    if error is not None:
                        raise UploadError(f"upload of {key} to s3://{bucket}/{prefix}{key} failed: {error}")
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    log("upload", bucket=bucket, prefix=prefix, files=len(files), bytes=total_bytes,
        seconds=round(time.monotonic() - started, 3))
    tick()
    latest_key = f"{instance_id}/LATEST"
    try:
        s3.put_object(Bucket=bucket, Key=latest_key, Body=prefix.encode(), ContentType="text/plain")
    except Exception as error:  # noqa: BLE001 - reported as an upload failure
        raise UploadError(f"writing s3://{bucket}/{latest_key} failed: {error}") from error
    log("latest", bucket=bucket, key=latest_key, prefix=prefix)
    return prefix


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
        tmp = self._state_path.with_name(f".checkpoint.json.{os.getpid()}")
        tmp.write_text(json.dumps(record, sort_keys=True))
        os.replace(tmp, self._state_path)

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
            now = self._clock()
            record = {
                "state": "in-progress", "started": now, "reason": reason, "event_id": event_id,
                "pid": os.getpid(), "last_uploaded_marker_mtime": record.get("last_uploaded_marker_mtime"),
            }
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
                        poll_seconds: float = 0.5) -> Dict[str, Any]:
        """Block (calling `tick` between polls) until no leader holds the lock; the final record."""
        while True:
            tick()
            fd = self._try_leader_lock()
            if fd is not None:
                os.close(fd)
                record = self.read()
                if record.get("state") != "done":
                    record = dict(record, result=LEADER_LOST)
                return record
            sleep(poll_seconds)


# --------------------------------------------------------------------------- the flow


def _aws_clients(config: Config) -> Tuple[Any, Any]:
    import boto3  # imported late so `--help` and config errors need no boto3
    from botocore.config import Config as BotoConfig

    boto_config = BotoConfig(retries={"mode": "standard", "max_attempts": 5},
                             connect_timeout=5, read_timeout=60)
    session = boto3.session.Session(region_name=config.region)
    return session.client("s3", config=boto_config), session.client("autoscaling", config=boto_config)


class Agent:
    def __init__(self, config: Config, *, imds: Imds, s3: Any, autoscaling: Any, log: JsonLog,
                 run: Runner = subprocess.run, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, marker_poll_seconds: float = 0.2,
                 follower_poll_seconds: float = 0.2) -> None:
        self.config = config
        self.imds = imds
        self.s3 = s3
        self.autoscaling = autoscaling
        self.log = log
        self._run = run
        self._clock = clock
        self._sleep = sleep
        self._marker_poll = marker_poll_seconds
        self._follower_poll = follower_poll_seconds

    def checkpoint(self, reason: str, event_id: str, lifecycle: Optional[LifecycleAction] = None) -> int:
        log = self.log.bind(reason=reason, event_id=event_id)
        log("start", lifecycle_hook=lifecycle.hook_name if lifecycle else None,
            autoscaling_group=lifecycle.autoscaling_group_name if lifecycle else None)
        try:
            instance_id: Optional[str] = self.imds.instance_id()
        except ImdsError as error:
            instance_id = None
            log("instance-id", level="error", error=str(error))
        log = log.bind(instance_id=instance_id)

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

    def _coordinated(self, reason: str, event_id: str, instance_id: str, log: JsonLog,
                     tick: Callable[[], None]) -> str:
        coordinator = Coordinator(self.config.state_dir, self.config.budget_seconds, clock=self._clock)
        role, record = coordinator.claim(reason, event_id)
        if role == "follower":
            log("dedupe", role="follower", leader_reason=record.get("reason"),
                leader_event_id=record.get("event_id"), leader_state=record.get("state"))
            final = coordinator.wait_for_leader(tick=tick, sleep=self._sleep, poll_seconds=self._follower_poll)
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
        """Signal, wait, upload; the result and the fields to record."""
        config = self.config
        requested = float(record["started"])
        log("dedupe", role="leader")
        tick()
        signalled = signal_trainer(config.training_unit, config.training_signal, log, run=self._run)
        if signalled:
            mtime = wait_for_marker(config.marker_path, requested, requested + config.budget_seconds, log,
                                    tick=tick, clock=self._clock, sleep=self._sleep, poll_seconds=self._marker_poll)
            if mtime is None:
                return TIMED_OUT, {}
        else:
            # Nobody to write a new checkpoint: upload the last completed one
            # only if it never reached S3.
            mtime = marker_mtime(config.marker_path)
            last = record.get("last_uploaded_marker_mtime")
            if mtime is None or (last is not None and mtime <= float(last)):
                log("wait", skipped=True, marker=str(config.marker_path), found=mtime is not None,
                    message="trainer not signalled and no un-uploaded completed checkpoint")
                return NOTHING_NEW, {}
            log("wait", skipped=True, marker=str(config.marker_path), found=True,
                message="trainer not signalled; uploading its last completed checkpoint")
        try:
            prefix = upload_checkpoint(self.s3, config.bucket, config.checkpoint_dir, instance_id,
                                       utc_stamp(self._clock()), log, tick=tick)
        except Exception as error:  # noqa: BLE001 - reported, the previous checkpoint stays LATEST
            log("upload", level="error", error=str(error))
            return UPLOAD_FAILED, {}
        return UPLOADED, {"prefix": prefix, "last_uploaded_marker_mtime": mtime}

    def watch(self, poll_seconds: float = IMDS_POLL_SECONDS, exit_after_notice: bool = False,
              stop: Callable[[], bool] = lambda: False,
              poll_sleep: Optional[Callable[[float], None]] = None) -> int:
        poll_sleep = poll_sleep or self._sleep
        log = self.log.bind(command="watch")
        log("watch-start", imds=self.config.imds_endpoint, poll_seconds=poll_seconds)
        handled_path = self.config.state_dir / "imds-notice.json"
        try:
            handled = json.loads(handled_path.read_text())
        except (FileNotFoundError, ValueError):
            handled = None
        failing = False
        while not stop():
            try:
                notice = self.imds.spot_instance_action()
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
                self.config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                handled_path.write_text(json.dumps(notice, sort_keys=True))
                if exit_after_notice:
                    return code
            poll_sleep(poll_seconds)
        log("watch-stop")
        return 0


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ml_node_agent.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    watch = commands.add_parser("watch", help="poll IMDSv2 for a spot interruption notice")
    watch.add_argument("--poll-seconds", type=float, default=IMDS_POLL_SECONDS,
                       help="IMDS polling interval (default 5)")
    watch.add_argument("--exit-after-notice", action="store_true",
                       help="exit with the checkpoint's exit code after the first notice (drills)")
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
    s3, autoscaling = _aws_clients(config)
    imds = Imds(config.imds_endpoint)
    if args.command == "watch":
        stopper = _Stopper()
        stopper.install()

        def interruptible_sleep(seconds: float) -> None:
            end = time.monotonic() + seconds
            while not stopper.requested and time.monotonic() < end:
                time.sleep(min(0.2, end - time.monotonic()))

        agent = Agent(config, imds=imds, s3=s3, autoscaling=autoscaling, log=log)
        return agent.watch(poll_seconds=args.poll_seconds, exit_after_notice=args.exit_after_notice,
                           stop=lambda: stopper.requested, poll_sleep=interruptible_sleep)
    agent = Agent(config, imds=imds, s3=s3, autoscaling=autoscaling, log=log)
    return agent.checkpoint(args.reason, args.event_id, lifecycle)


if __name__ == "__main__":
    sys.exit(main())
