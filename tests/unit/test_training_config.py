"""Training config: every rejection names the field, the value and what is allowed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ml_stacks.config import (
    ConfigError,
    NetworkConfig,
    StageConfig,
    StageTags,
    TrainingConfig,
    default_configs,
)

TAGS = StageTags(team="t", project="p", cost_center="c", repository="r")


def stage(**training) -> StageConfig:
    return StageConfig(name="dev", region="eu-west-1", tags=TAGS,
                       network=NetworkConfig(vpc_cidr="10.0.0.0/16",
                                             availability_zones=("eu-west-1a", "eu-west-1b")),
                       training=TrainingConfig(**training))


def test_every_stage_validates_its_training_config_under_its_own_name() -> None:
    # Which stage trains on how many instances is the stage's choice (the
    # snapshots record the repository's); that each stage's choice is checked
    # when the stage is built, and named after it, is not.
    for name, config in default_configs().items():
        assert 1 <= config.training.max_capacity <= 1000
        assert 0 <= config.training.on_demand_base <= config.training.max_capacity
        with pytest.raises(ConfigError) as error:
            replace(config, training=replace(config.training, max_capacity=1001))
        assert (error.value.field_path, error.value.value) == (f"{name}.training.max_capacity", 1001)


def test_defaults_follow_the_contract_and_the_design() -> None:
    training = TrainingConfig()
    assert training.training_signal == "SIGUSR1"
    assert not hasattr(training, "training_unit")  # the agent starts the trainer (RUNS_CONTRACT.md)
    assert (training.lease_seconds, training.lease_renew_seconds, training.claim_poll_seconds) == (90, 30, 15)
    assert (training.run_default_max_failures, training.run_default_max_duration_minutes) == (3, 72 * 60)
    assert training.runs_capacity_rate_minutes == 5
    assert (training.hung_after_minutes, training.hung_action) == (30, "restart")
    assert (training.spot_fallback_after_minutes, training.spot_fallback_on_demand_percentage) == (15, 100)
    assert training.rebalance_action == "checkpoint"
    assert training.efa_enabled is False
    assert {t.split(".")[0] for t in training.instance_types} == {"g5", "g6"}
    assert (training.checkpoint_budget_seconds, training.heartbeat_interval_seconds) == (90, 30)


@pytest.mark.parametrize(
    ("training", "field", "value", "allowed"),
    [
        ({"enabled": "yes"}, "enabled", "yes", "True or False"),
        ({"instance_types": ("g5.xlarge",)}, "instance_types", ("g5.xlarge",), "2 to 20"),
        ({"instance_types": ["g5.xlarge", "g6.xlarge"]}, "instance_types", ["g5.xlarge", "g6.xlarge"], "tuple"),
        ({"instance_types": ("g5.xlarge", "m5.xlarge")}, "instance_types", "m5.xlarge", "NVIDIA x86_64 GPU"),
        ({"instance_types": ("g5.xlarge", "g5g.xlarge")}, "instance_types", "g5g.xlarge", "NVIDIA x86_64 GPU"),
        ({"instance_types": ("g5.xlarge", "banana")}, "instance_types", "banana", "e.g. 'g5.xlarge'"),
        ({"instance_types": ("g5.xlarge", "g5.xlarge")}, "instance_types", ("g5.xlarge", "g5.xlarge"), "each instance type once"),
        ({"instance_types": ("g5.xlarge", "g5.2xlarge")}, "instance_types", ("g5.xlarge", "g5.2xlarge"), "at least two instance families"),
        ({"efa_enabled": True}, "instance_types", "g5.xlarge", "EFA-capable"),
        ({"max_capacity": 0}, "max_capacity", 0, "1 to 1000"),
        ({"max_capacity": True}, "max_capacity", True, "integer"),
        ({"on_demand_base": 5, "max_capacity": 4}, "on_demand_base", 5, "0 to max_capacity (4)"),
        ({"on_demand_base": -1}, "on_demand_base", -1, "0 to max_capacity"),
        ({"on_demand_percentage": 101}, "on_demand_percentage", 101, "0 (all spot above the base) to 100"),
        ({"root_volume_size_gib": 50}, "root_volume_size_gib", 50, "75 to 16384"),
        ({"root_volume_iops": 2000}, "root_volume_iops", 2000, "3000 to 16000"),
        ({"root_volume_throughput_mibps": 100}, "root_volume_throughput_mibps", 100, "125 to 1000"),
        ({"root_volume_throughput_mibps": 1000}, "root_volume_throughput_mibps", 1000, "0.25 MiB/s per provisioned IOPS"),
        ({"root_device_name": "/dev/nvme0n1"}, "root_device_name", "/dev/nvme0n1", "/dev/xvda"),
        ({"imds_hop_limit": 0}, "imds_hop_limit", 0, "1 to 3"),
        ({"checkpoint_budget_seconds": 5}, "checkpoint_budget_seconds", 5, "10 to 3600"),
        ({"lifecycle_heartbeat_timeout_seconds": 20}, "lifecycle_heartbeat_timeout_seconds", 20, "30 to 7200"),
        ({"lifecycle_heartbeat_timeout_seconds": 7201}, "lifecycle_heartbeat_timeout_seconds", 7201, "30 to 7200"),
        ({"lifecycle_heartbeat_timeout_seconds": 120}, "lifecycle_heartbeat_timeout_seconds", 120,
         "at least checkpoint_budget_seconds + 60 (150)"),
        ({"checkpoint_budget_seconds": 600, "lifecycle_heartbeat_timeout_seconds": 600},
         "lifecycle_heartbeat_timeout_seconds", 600, "at least checkpoint_budget_seconds + 60 (660)"),
        ({"heartbeat_interval_seconds": 200}, "heartbeat_interval_seconds", 200, "half the heartbeat timeout (150 s)"),
        ({"heartbeat_interval_seconds": 1}, "heartbeat_interval_seconds", 1, "5 to"),
        ({"checkpoint_dir": "relative/dir"}, "checkpoint_dir", "relative/dir", "absolute path"),
        ({"checkpoint_dir": "/opt/ml/$(reboot)"}, "checkpoint_dir", "/opt/ml/$(reboot)", "absolute path"),
        ({"checkpoint_dir": "/opt/../etc"}, "checkpoint_dir", "/opt/../etc", "without '..'"),
        ({"checkpoint_done_marker": "a/b"}, "checkpoint_done_marker", "a/b", "file name"),
        ({"lease_seconds": 121}, "lease_seconds", 121, "30 to 120 seconds"),
        ({"lease_seconds": 20}, "lease_seconds", 20, "30 to 120 seconds"),
        ({"lease_renew_seconds": 50}, "lease_renew_seconds", 50, "half the lease (45 s)"),
        ({"lease_renew_seconds": 2}, "lease_renew_seconds", 2, "5 to"),
        ({"claim_poll_seconds": 0}, "claim_poll_seconds", 0, "1 to 300"),
        ({"run_default_max_failures": 0}, "run_default_max_failures", 0, "1 to 100"),
        ({"run_default_max_duration_minutes": 0}, "run_default_max_duration_minutes", 0, "1 to 43200"),
        ({"runs_log_retention_days": 2}, "runs_log_retention_days", 2, "CloudWatch Logs retention"),
        ({"runs_capacity_rate_minutes": 0}, "runs_capacity_rate_minutes", 0, "1 to 60 minutes"),
        ({"runs_capacity_rate_minutes": 61}, "runs_capacity_rate_minutes", 61, "1 to 60 minutes"),
        ({"runs_capacity_rate_minutes": 2.5}, "runs_capacity_rate_minutes", 2.5, "1 to 60 minutes"),
        ({"hung_after_minutes": 0}, "hung_after_minutes", 0, "1 to 1440 minutes"),
        ({"hung_after_minutes": 1441}, "hung_after_minutes", 1441, "1 to 1440 minutes"),
        ({"hung_after_minutes": True}, "hung_after_minutes", True, "1 to 1440 minutes"),
        ({"hung_action": "kill"}, "hung_action", "kill", "alert, restart"),
        ({"spot_fallback_after_minutes": 4}, "spot_fallback_after_minutes", 4, "None (no fallback) or 5"),
        ({"spot_fallback_after_minutes": 1441}, "spot_fallback_after_minutes", 1441, "to 1440 minutes"),
        ({"spot_fallback_on_demand_percentage": 101}, "spot_fallback_on_demand_percentage", 101, "at most 100"),
        ({"on_demand_percentage": 50, "spot_fallback_on_demand_percentage": 50},
         "spot_fallback_on_demand_percentage", 50, "more than on_demand_percentage (50)"),
        ({"instance_types": ("g5.xlarge", "g6.3xlarge")}, "instance_types", "g6.3xlarge",
         "GPUS_PER_INSTANCE_TYPE"),
        ({"training_signal": "SIGKILL"}, "training_signal", "SIGKILL", "SIGUSR1"),
        ({"rebalance_action": "ignore"}, "rebalance_action", "ignore", "checkpoint, log-only"),
        ({"lambda_timeout_seconds": 2}, "lambda_timeout_seconds", 2, "3 to 8"),
        ({"lambda_timeout_seconds": 9}, "lambda_timeout_seconds", 9, "within 60 s"),
        ({"log_retention_days": 42}, "log_retention_days", 42, "CloudWatch Logs retention"),
    ],
)
def test_fails_when_a_training_value_is_not_allowed(training, field, value, allowed) -> None:
    with pytest.raises(ConfigError) as caught:
        stage(**training)
    error = caught.value
    assert error.field_path == f"dev.training.{field}"
    assert error.value == value
    assert allowed in error.allowed, error.allowed
    assert str(error).startswith(f"dev.training.{field}: {value!r} is not allowed — ")


def test_fails_when_training_is_not_a_training_config() -> None:
    base = stage()
    with pytest.raises(ConfigError, match=r"dev.training: \{\} is not allowed — a TrainingConfig"):
        replace(base, training={})


@pytest.mark.parametrize("training", [
    {"lifecycle_heartbeat_timeout_seconds": 150},
    {"lifecycle_heartbeat_timeout_seconds": 7200, "checkpoint_budget_seconds": 3600},
    {"efa_enabled": True, "instance_types": ("g5.12xlarge", "g6.12xlarge", "p4d.24xlarge")},
    {"on_demand_base": 4, "max_capacity": 4, "on_demand_percentage": 100},
    {"rebalance_action": "log-only", "training_signal": "SIGTERM", "root_device_name": "/dev/sda1"},
])
def test_accepts_values_at_the_edges(training) -> None:
    assert stage(**training).training is not None


def test_every_gpu_type_the_fleet_may_use_has_a_known_gpu_count() -> None:
    from ml_stacks.config import EFA_INSTANCE_TYPES, GPUS_PER_INSTANCE_TYPE, TRAINING_GPU_FAMILIES

    assert EFA_INSTANCE_TYPES <= set(GPUS_PER_INSTANCE_TYPE)
    assert {t.split(".")[0] for t in GPUS_PER_INSTANCE_TYPE} == set(TRAINING_GPU_FAMILIES)
    assert all(n in (1, 4, 8) for n in GPUS_PER_INSTANCE_TYPE.values())
    for config in default_configs().values():
        types = config.training.instance_types
        assert config.training.max_gpus_per_instance == max(GPUS_PER_INSTANCE_TYPE[t] for t in types)
