"""The ``training`` section: the GPU fleet, its interruption path and its runs."""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ml_stacks.config.base import LOG_RETENTION_DAYS, _is_int, _require


# GPU families the training fleet may use: x86_64 NVIDIA instances the Deep
# Learning Base GPU AMI supports (G4ad is AMD, G5g is Arm: neither runs it).
TRAINING_GPU_FAMILIES: tuple[str, ...] = (
    "g4dn", "g5", "g6", "g6e", "gr6", "p4d", "p4de", "p5", "p5e", "p5en",
)
# Sizes with an EFA interface, per family (multi-node training).
EFA_INSTANCE_TYPES: frozenset[str] = frozenset({
    "g4dn.8xlarge", "g4dn.12xlarge", "g4dn.16xlarge", "g4dn.metal",
    "g5.8xlarge", "g5.12xlarge", "g5.16xlarge", "g5.24xlarge", "g5.48xlarge",
    "g6.8xlarge", "g6.12xlarge", "g6.16xlarge", "g6.24xlarge", "g6.48xlarge",
    "g6e.8xlarge", "g6e.12xlarge", "g6e.16xlarge", "g6e.24xlarge", "g6e.48xlarge",
    "p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge", "p5e.48xlarge", "p5en.48xlarge",
})
# GPUs per instance type, for every type the training fleet may use (the
# families above). A run asks for 1 to the largest count among its stage's
# instance types; the node agent takes only runs that fit its instance.
GPUS_PER_INSTANCE_TYPE: Mapping[str, int] = {
    **{f"g4dn.{s}": 1 for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g4dn.12xlarge": 4, "g4dn.metal": 8,
    **{f"{family}.{s}": 1 for family in ("g5", "g6", "g6e")
       for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    **{f"{family}.{s}": n for family in ("g5", "g6", "g6e")
       for s, n in (("12xlarge", 4), ("24xlarge", 4), ("48xlarge", 8))},
    "gr6.4xlarge": 1, "gr6.8xlarge": 1,
    "p4d.24xlarge": 8, "p4de.24xlarge": 8,
    "p5.4xlarge": 1, "p5.48xlarge": 8, "p5e.48xlarge": 8, "p5en.48xlarge": 8,
}
# A run holder that vanished must free its run within 2 minutes (issue 11).
MAX_LEASE_SECONDS = 120
MAX_RUN_DURATION_MINUTES = 30 * 24 * 60
_INSTANCE_TYPE_RE = re.compile(r"^([a-z][a-z0-9]*)\.(metal|[0-9]*x?large)$")
TRAINING_SIGNALS: tuple[str, ...] = ("SIGUSR1", "SIGUSR2", "SIGTERM", "SIGINT", "SIGHUP")
REBALANCE_ACTIONS: tuple[str, ...] = ("checkpoint", "log-only")
# What the node agent does about a run without progress for hung_after_minutes:
# tell the alerts topic only, or also restart the attempt from its last checkpoint.
HUNG_ACTIONS: tuple[str, ...] = ("alert", "restart")
MAX_HUNG_AFTER_MINUTES = 24 * 60
ROOT_DEVICE_NAMES: tuple[str, ...] = ("/dev/xvda", "/dev/sda1")
# Absolute path without shell metacharacters: it lands in user data.
_SAFE_PATH_RE = re.compile(r"^/[A-Za-z0-9_./-]{1,254}$")
_SAFE_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
# Time the node agent needs after the checkpoint budget to upload the
# checkpoint and complete the lifecycle action.
CHECKPOINT_UPLOAD_MARGIN_SECONDS = 60
HEARTBEAT_TIMEOUT_MIN_SECONDS, HEARTBEAT_TIMEOUT_MAX_SECONDS = 30, 7200
# The GPU metric definition shared by the CloudWatch agent config and the
# idle-shutdown function (constructs_lib/gpu_metrics.py reads it too).
GPU_METRICS_DEFINITION = Path(__file__).resolve().parents[2] / "lambda" / "idle_shutdown" / "gpu_metrics.json"


# The interface endpoints a training instance needs when it may not reach
# the internet: the node agent (autoscaling lifecycle and health, sns,
# events, monitoring), trainer logs (logs), images (ecr.api, ecr.dkr) and the
# SSM agent (ssm, ssmmessages, ec2messages: Run Command, the GPU agent
# config). S3 and DynamoDB go through the gateway endpoints.
FLEET_INTERFACE_ENDPOINTS: tuple[str, ...] = (
    "autoscaling", "sns", "events", "monitoring", "logs", "ecr.api", "ecr.dkr",
    "ssm", "ssmmessages", "ec2messages",
)
_PREFIX_LIST_RE = re.compile(r"^pl-[0-9a-f]{8,17}$")
# Characters EC2 accepts in a security group rule description.
_RULE_DESCRIPTION_RE = re.compile(r"^[A-Za-z0-9 ._\-:/()#,@\[\]+=&;{}!$*]{1,255}$")
EGRESS_PROTOCOLS: tuple[str, ...] = ("tcp", "udp")


@dataclass(frozen=True)
class EgressDestination:
    """A destination the training fleet's security group lets instances reach.

    ``destination``: an IPv4 CIDR (``"203.0.113.0/24"``, ``"0.0.0.0/0"``)
    or a managed prefix list ID (``"pl-0123456789abcdef0"``, e.g. a list of
    your package mirrors). ``port`` (default 443) to ``to_port`` (default:
    ``port``), ``protocol`` ``"tcp"`` (default) or ``"udp"``.
    ``description`` says what is there and which run needs it.
    """

    destination: str
    description: str
    port: int = 443
    to_port: int | None = None
    protocol: str = "tcp"

    @property
    def last_port(self) -> int:
        return self.port if self.to_port is None else self.to_port

    @property
    def is_prefix_list(self) -> bool:
        return self.destination.startswith("pl-")

    def validate(self, path: str) -> None:
        dest = self.destination
        valid = isinstance(dest, str) and bool(_PREFIX_LIST_RE.match(dest))
        if isinstance(dest, str) and not valid:
            try:
                valid = str(ipaddress.IPv4Network(dest, strict=True)) == dest
            except ValueError:
                valid = False
        _require(valid, f"{path}.destination", dest,
                 "an IPv4 CIDR such as '203.0.113.0/24' or a managed prefix list ID such as "
                 "'pl-0123456789abcdef0'")
        _require(_is_int(self.port) and 1 <= self.port <= 65535, f"{path}.port", self.port,
                 "a port from 1 to 65535")
        _require(self.to_port is None or (_is_int(self.to_port) and self.port <= self.to_port <= 65535),
                 f"{path}.to_port", self.to_port, f"None or a port from {self.port} to 65535")
        _require(self.protocol in EGRESS_PROTOCOLS, f"{path}.protocol", self.protocol,
                 "one of " + ", ".join(EGRESS_PROTOCOLS))
        _require(isinstance(self.description, str) and bool(_RULE_DESCRIPTION_RE.match(self.description)),
                 f"{path}.description", self.description,
                 "1 to 255 characters: letters, digits, spaces and ._-:/()#,@[]+=&;{}!$*")

    def reaches_internet_https(self) -> bool:
        return (self.destination == "0.0.0.0/0" and self.protocol == "tcp"
                and self.port <= 443 <= self.last_port)


# HTTPS anywhere, through the stage's NAT gateways: AWS APIs without an
# interface endpoint, package indexes, registries. The default fleet egress.
INTERNET_HTTPS = EgressDestination(
    "0.0.0.0/0", "HTTPS through NAT: AWS APIs without an interface endpoint, package indexes, registries")


def gpu_metric_period_seconds() -> int:
    """The period the agent publishes GPU metrics at (gpu_metrics.json)."""
    return int(json.loads(GPU_METRICS_DEFINITION.read_text())["period_seconds"])


@dataclass(frozen=True)
class TrainingConfig:
    """The GPU training fleet and its interruption handling.

    The fleet is an Auto Scaling group of spot (and optionally on-demand)
    GPU instances, ``min_capacity`` 0 and at most ``max_capacity``; its
    termination lifecycle hook waits ``lifecycle_heartbeat_timeout_seconds``
    (renewed by the node agent's heartbeats) for a checkpoint that must fit
    in ``checkpoint_budget_seconds``. The fleet's AMI is the stage region's
    pin in ``ml_stacks/ami_pins.json`` (``make refresh-amis`` changes it).

    Runs (node_agent/RUNS_CONTRACT.md): an instance holds a run with a lease
    of ``lease_seconds`` (at most 120: a vanished holder's run is claimable
    within 2 minutes), renewed every ``lease_renew_seconds``; an idle
    instance looks for a run every ``claim_poll_seconds``. A run spec without
    ``max_failures`` / ``max_duration_minutes`` gets
    ``run_default_max_failures`` / ``run_default_max_duration_minutes``.
    Trainer output is kept ``runs_log_retention_days``. Every
    ``runs_capacity_rate_minutes`` the runs capacity reconciler raises the
    fleet's desired capacity to the PENDING + RUNNING runs (capped by its
    maximum; it never lowers it).

    Hung runs: a trainer that reports no progress for ``hung_after_minutes``
    is reported to the alerts topic and, with ``hung_action`` ``"restart"``
    (default), its attempt is restarted from the last checkpoint by the
    node agent; ``"alert"`` only reports.

    When spot runs dry: if a PENDING run's spot launches have failed for lack
    of capacity for ``spot_fallback_after_minutes`` (default 15; None turns
    the fallback off), the runs capacity reconciler raises the fleet's
    on-demand share above its base to ``spot_fallback_on_demand_percentage``
    (default 100) and puts it back to ``on_demand_percentage`` when no run is
    active any more (or, below 100 %, when launches succeed with no spot
    capacity failure). Every switch goes to the alerts topic. A fleet with
    ``on_demand_percentage`` 100 has no fallback.

    Network egress (docs/security.md, "Data protection and network egress"):
    the fleet's security group allows HTTPS to the stage's interface
    endpoints and the S3/DynamoDB gateway endpoints, traffic within the
    group when ``efa_enabled``, and ``egress``: the extra destinations
    (``EgressDestination``) runs need. Default ``(INTERNET_HTTPS,)``:
    HTTPS anywhere through NAT, the only setting that works without
    interface endpoints (AWS APIs are then reached over the internet).
    ``()`` closes everything else; the stage must then have every endpoint
    of ``FLEET_INTERFACE_ENDPOINTS`` and a region in
    ``GATEWAY_ENDPOINT_PREFIX_LISTS`` (checked when the stage is built).
    """

    enabled: bool = True
    instance_types: tuple[str, ...] = ("g5.xlarge", "g6.xlarge", "g5.2xlarge", "g6.2xlarge")
    max_capacity: int = 4
    on_demand_base: int = 0
    on_demand_percentage: int = 0
    root_volume_size_gib: int = 200
    root_volume_iops: int = 3000
    root_volume_throughput_mibps: int = 250
    root_device_name: str = "/dev/xvda"
    imds_hop_limit: int = 2
    efa_enabled: bool = False
    checkpoint_budget_seconds: int = 90
    lifecycle_heartbeat_timeout_seconds: int = 300
    heartbeat_interval_seconds: int = 30
    checkpoint_dir: str = "/opt/ml/checkpoints"
    checkpoint_done_marker: str = "CHECKPOINT_DONE"
    training_signal: str = "SIGUSR1"
    rebalance_action: str = "checkpoint"
    lambda_timeout_seconds: int = 8
    log_retention_days: int = 90
    lease_seconds: int = 90
    lease_renew_seconds: int = 30
    claim_poll_seconds: int = 15
    run_default_max_failures: int = 3
    run_default_max_duration_minutes: int = 72 * 60
    runs_log_retention_days: int = 90
    runs_capacity_rate_minutes: int = 5
    hung_after_minutes: int = 30
    hung_action: str = "restart"
    spot_fallback_after_minutes: int | None = 15
    spot_fallback_on_demand_percentage: int = 100
    egress: tuple[EgressDestination, ...] = (INTERNET_HTTPS,)

    def validate(self, prefix: str) -> None:
        _require(isinstance(self.enabled, bool), f"{prefix}.enabled", self.enabled, "True or False")
        self._validate_instances(prefix)
        self._validate_volume(prefix)
        self._validate_checkpointing(prefix)
        self._validate_runs(prefix)
        self._validate_egress(prefix)

        _require(_is_int(self.imds_hop_limit) and 1 <= self.imds_hop_limit <= 3,
                 f"{prefix}.imds_hop_limit", self.imds_hop_limit,
                 "1 to 3 (2 lets a container on the instance reach IMDSv2)")
        _require(self.rebalance_action in REBALANCE_ACTIONS, f"{prefix}.rebalance_action",
                 self.rebalance_action, "one of " + ", ".join(REBALANCE_ACTIONS))
        _require(_is_int(self.lambda_timeout_seconds) and 3 <= self.lambda_timeout_seconds <= 8,
                 f"{prefix}.lambda_timeout_seconds", self.lambda_timeout_seconds,
                 "3 to 8 seconds (the queue's visibility timeout is 6 times this, and a retried "
                 "record must be acted on within 60 s: README, interruption time budget)")
        _require(self.log_retention_days in LOG_RETENTION_DAYS, f"{prefix}.log_retention_days",
                 self.log_retention_days,
                 "a CloudWatch Logs retention: " + ", ".join(map(str, LOG_RETENTION_DAYS)))

    def _validate_instances(self, prefix: str) -> None:
        path = f"{prefix}.instance_types"
        types = self.instance_types
        _require(isinstance(types, tuple) and 2 <= len(types) <= 20, path, types,
                 "a tuple of 2 to 20 instance types (spot needs several pools to choose from)")
        for instance_type in types:
            match = _INSTANCE_TYPE_RE.match(instance_type) if isinstance(instance_type, str) else None
            _require(match is not None and match.group(1) in TRAINING_GPU_FAMILIES, path,
                     instance_type, "an NVIDIA x86_64 GPU instance type of family "
                     + ", ".join(TRAINING_GPU_FAMILIES) + ", e.g. 'g5.xlarge'")
            _require(instance_type in GPUS_PER_INSTANCE_TYPE, path, instance_type,
                     "a size listed in GPUS_PER_INSTANCE_TYPE (ml_stacks/config/training.py), which runs "
                     "need to know how many GPUs it has")
        _require(len(set(types)) == len(types), path, types, "each instance type once")
        families = {t.split(".")[0] for t in types}
        _require(len(families) >= 2, path, types,
                 "at least two instance families (e.g. g5 and g6): one family's spot "
                 "capacity can vanish at once")
        if self.efa_enabled:
            for instance_type in types:
                _require(instance_type in EFA_INSTANCE_TYPES, path, instance_type,
                         "an EFA-capable size when efa_enabled, e.g. 'g5.8xlarge' or 'p4d.24xlarge'")

        _require(isinstance(self.efa_enabled, bool), f"{prefix}.efa_enabled", self.efa_enabled,
                 "True or False")
        _require(_is_int(self.max_capacity) and 1 <= self.max_capacity <= 1000,
                 f"{prefix}.max_capacity", self.max_capacity, "an integer from 1 to 1000")
        _require(_is_int(self.on_demand_base) and 0 <= self.on_demand_base <= self.max_capacity,
                 f"{prefix}.on_demand_base", self.on_demand_base,
                 f"an integer from 0 to max_capacity ({self.max_capacity})")
        _require(_is_int(self.on_demand_percentage) and 0 <= self.on_demand_percentage <= 100,
                 f"{prefix}.on_demand_percentage", self.on_demand_percentage,
                 "an integer from 0 (all spot above the base) to 100 (all on-demand)")

    def _validate_volume(self, prefix: str) -> None:
        size, iops, throughput = (self.root_volume_size_gib, self.root_volume_iops,
                                  self.root_volume_throughput_mibps)
        _require(_is_int(size) and 75 <= size <= 16384, f"{prefix}.root_volume_size_gib", size,
                 "75 to 16384 GiB (the Deep Learning AMI's root snapshot is 75 GiB)")
        _require(_is_int(iops) and 3000 <= iops <= 16000, f"{prefix}.root_volume_iops", iops,
                 "3000 to 16000 (gp3)")
        _require(_is_int(throughput) and 125 <= throughput <= 1000,
                 f"{prefix}.root_volume_throughput_mibps", throughput, "125 to 1000 MiB/s (gp3)")
        _require(throughput * 4 <= iops, f"{prefix}.root_volume_throughput_mibps", throughput,
                 f"at most 0.25 MiB/s per provisioned IOPS: {iops // 4} for {iops} IOPS")
        _require(self.root_device_name in ROOT_DEVICE_NAMES, f"{prefix}.root_device_name",
                 self.root_device_name,
                 "the AMI's root device: /dev/xvda (Amazon Linux) or /dev/sda1 (Ubuntu)")

    def _validate_checkpointing(self, prefix: str) -> None:
        budget = self.checkpoint_budget_seconds
        _require(_is_int(budget) and 10 <= budget <= 3600, f"{prefix}.checkpoint_budget_seconds",
                 budget, "10 to 3600 seconds (a spot notice gives 120 s in all)")
        timeout = self.lifecycle_heartbeat_timeout_seconds
        path = f"{prefix}.lifecycle_heartbeat_timeout_seconds"
        _require(_is_int(timeout)
                 and HEARTBEAT_TIMEOUT_MIN_SECONDS <= timeout <= HEARTBEAT_TIMEOUT_MAX_SECONDS,
                 path, timeout,
                 f"{HEARTBEAT_TIMEOUT_MIN_SECONDS} to {HEARTBEAT_TIMEOUT_MAX_SECONDS} seconds "
                 "(the lifecycle hook's limits)")
        _require(timeout >= budget + CHECKPOINT_UPLOAD_MARGIN_SECONDS, path, timeout,
                 f"at least checkpoint_budget_seconds + {CHECKPOINT_UPLOAD_MARGIN_SECONDS} "
                 f"({budget + CHECKPOINT_UPLOAD_MARGIN_SECONDS}): the hook must outlast a whole "
                 "checkpoint and its upload even if every heartbeat is lost")
        interval = self.heartbeat_interval_seconds
        _require(_is_int(interval) and 5 <= interval <= timeout // 2,
                 f"{prefix}.heartbeat_interval_seconds", interval,
                 f"5 to half the heartbeat timeout ({timeout // 2} s), so one lost heartbeat "
                 "does not expire the hook")
        _require(isinstance(self.checkpoint_dir, str) and bool(_SAFE_PATH_RE.match(self.checkpoint_dir))
                 and ".." not in self.checkpoint_dir.split("/"),
                 f"{prefix}.checkpoint_dir", self.checkpoint_dir,
                 "an absolute path of letters, digits and _ . - / without '..'")
        _require(isinstance(self.checkpoint_done_marker, str)
                 and bool(_SAFE_FILE_NAME_RE.match(self.checkpoint_done_marker))
                 and self.checkpoint_done_marker not in (".", ".."),
                 f"{prefix}.checkpoint_done_marker", self.checkpoint_done_marker,
                 "a file name of letters, digits and _ . -")
        _require(self.training_signal in TRAINING_SIGNALS, f"{prefix}.training_signal",
                 self.training_signal, "one of " + ", ".join(TRAINING_SIGNALS))

    def _validate_runs(self, prefix: str) -> None:
        lease = self.lease_seconds
        _require(_is_int(lease) and 30 <= lease <= MAX_LEASE_SECONDS, f"{prefix}.lease_seconds", lease,
                 f"30 to {MAX_LEASE_SECONDS} seconds (a vanished holder's run must be claimable "
                 "within 2 minutes)")
        renew = self.lease_renew_seconds
        _require(_is_int(renew) and 5 <= renew <= lease // 2, f"{prefix}.lease_renew_seconds", renew,
                 f"5 to half the lease ({lease // 2} s), so one lost renewal does not lose the run")
        _require(_is_int(self.claim_poll_seconds) and 1 <= self.claim_poll_seconds <= 300,
                 f"{prefix}.claim_poll_seconds", self.claim_poll_seconds, "1 to 300 seconds")
        _require(_is_int(self.run_default_max_failures) and 1 <= self.run_default_max_failures <= 100,
                 f"{prefix}.run_default_max_failures", self.run_default_max_failures,
                 "1 to 100 trainer failures")
        minutes = self.run_default_max_duration_minutes
        _require(_is_int(minutes) and 1 <= minutes <= MAX_RUN_DURATION_MINUTES,
                 f"{prefix}.run_default_max_duration_minutes", minutes,
                 f"1 to {MAX_RUN_DURATION_MINUTES} minutes (30 days)")
        _require(self.runs_log_retention_days in LOG_RETENTION_DAYS, f"{prefix}.runs_log_retention_days",
                 self.runs_log_retention_days,
                 "a CloudWatch Logs retention: " + ", ".join(map(str, LOG_RETENTION_DAYS)))
        rate = self.runs_capacity_rate_minutes
        _require(_is_int(rate) and 1 <= rate <= 60, f"{prefix}.runs_capacity_rate_minutes", rate,
                 "1 to 60 minutes (the longest a PENDING run waits for the fleet to be raised)")
        hung = self.hung_after_minutes
        _require(_is_int(hung) and 1 <= hung <= MAX_HUNG_AFTER_MINUTES, f"{prefix}.hung_after_minutes",
                 hung, f"1 to {MAX_HUNG_AFTER_MINUTES} minutes without progress from the trainer "
                 "(longer than its slowest step plus checkpoint)")
        _require(self.hung_action in HUNG_ACTIONS, f"{prefix}.hung_action", self.hung_action,
                 "one of " + ", ".join(HUNG_ACTIONS))
        after = self.spot_fallback_after_minutes
        _require(after is None or (_is_int(after) and self.runs_capacity_rate_minutes <= after <= 1440),
                 f"{prefix}.spot_fallback_after_minutes", after,
                 f"None (no fallback) or {self.runs_capacity_rate_minutes} (runs_capacity_rate_minutes: "
                 "the reconciler looks no more often) to 1440 minutes")
        share = self.spot_fallback_on_demand_percentage
        # An all on-demand fleet has nothing to fall back from.
        _require(after is None or self.on_demand_percentage == 100
                 or (_is_int(share) and self.on_demand_percentage < share <= 100),
                 f"{prefix}.spot_fallback_on_demand_percentage", share,
                 f"more than on_demand_percentage ({self.on_demand_percentage}) and at most 100 "
                 "(or spot_fallback_after_minutes=None for no fallback)")

    def _validate_egress(self, prefix: str) -> None:
        path = f"{prefix}.egress"
        _require(isinstance(self.egress, tuple) and len(self.egress) <= 50, path, self.egress,
                 "a tuple of at most 50 EgressDestination (one security group rule each)")
        for index, rule in enumerate(self.egress):
            _require(isinstance(rule, EgressDestination), f"{path}[{index}]", rule, "an EgressDestination")
            rule.validate(f"{path}[{index}]")
        keys = [(r.destination, r.protocol, r.port, r.last_port) for r in self.egress]
        _require(len(set(keys)) == len(keys), path, self.egress, "each destination and port range once")

    @property
    def reaches_internet_https(self) -> bool:
        """True when ``egress`` allows HTTPS to the whole internet."""
        return any(r.reaches_internet_https() for r in self.egress)

    @property
    def max_gpus_per_instance(self) -> int:
        """The most GPUs one instance of the fleet has: the most a run may ask for."""
        return max(GPUS_PER_INSTANCE_TYPE[t] for t in self.instance_types)
