"""IdleShutdownConfig validation: each rejection names the field, the value and what is allowed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ml_stacks.config import (ConfigError, IdleShutdownConfig, NetworkConfig, StageConfig,
                              StageTags, default_configs, gpu_metric_period_seconds)

TAGS = StageTags(team="t", project="p", cost_center="c", repository="r")
NIGHT, MORNING = "0 20 * * MON-FRI", "0 7 * * MON-FRI"


def stage(**idle) -> StageConfig:
    return StageConfig(name="dev", region="eu-west-1", tags=TAGS,
                       network=NetworkConfig(vpc_cidr="10.0.0.0/16",
                                             availability_zones=("eu-west-1a", "eu-west-1b")),
                       idle_shutdown=IdleShutdownConfig(**idle))


def test_defaults_are_the_issue_defaults() -> None:
    idle = IdleShutdownConfig()
    assert (idle.enabled, idle.dry_run, idle.gpu_utilization_threshold_percent, idle.window_minutes,
            idle.schedule_rate_minutes, idle.opt_in_tag_key, idle.opt_in_tag_value) == (
        True, False, 5.0, 15, 5, "ml:idle-shutdown", "enabled")
    assert not idle.off_hours


def test_every_stage_sets_both_off_hours_crons_or_neither() -> None:
    for name, config in default_configs().items():
        idle = config.idle_shutdown
        assert idle.off_hours == (idle.off_hours_scale_out_cron is not None), name
        with pytest.raises(ConfigError) as error:
            replace(config, idle_shutdown=replace(idle, off_hours_scale_in_cron=None,
                                                  off_hours_scale_out_cron=MORNING))
        assert error.value.field_path.startswith(f"{name}.idle_shutdown.off_hours_scale_"), name


def test_accepts_a_valid_off_hours_schedule_in_a_time_zone() -> None:
    idle = stage(off_hours_scale_in_cron=NIGHT, off_hours_scale_out_cron=MORNING,
                 off_hours_time_zone="Europe/Berlin").idle_shutdown
    assert idle.off_hours


@pytest.mark.parametrize(
    ("overrides", "field", "value", "allowed"),
    [
        ({"enabled": "yes"}, "enabled", "yes", "True or False"),
        ({"dry_run": 1}, "dry_run", 1, "True or False"),
        ({"gpu_utilization_threshold_percent": 0}, "gpu_utilization_threshold_percent", 0,
         "above 0 and at most 100"),
        ({"gpu_utilization_threshold_percent": -5}, "gpu_utilization_threshold_percent", -5,
         "above 0 and at most 100"),
        ({"gpu_utilization_threshold_percent": 101}, "gpu_utilization_threshold_percent", 101,
         "above 0 and at most 100"),
        ({"gpu_utilization_threshold_percent": True}, "gpu_utilization_threshold_percent", True,
         "above 0 and at most 100"),
        ({"window_minutes": 1}, "window_minutes", 1, "two GPU metric periods"),
        ({"window_minutes": 0}, "window_minutes", 0, "two GPU metric periods"),
        ({"window_minutes": 1441}, "window_minutes", 1441, "to 1440"),
        ({"window_minutes": 7.5}, "window_minutes", 7.5, "whole minutes"),
        ({"launch_grace_minutes": -1}, "launch_grace_minutes", -1, "0 to 1440"),
        ({"launch_grace_minutes": 2000}, "launch_grace_minutes", 2000, "0 to 1440"),
        ({"schedule_rate_minutes": 0}, "schedule_rate_minutes", 0, "1 to 60"),
        ({"schedule_rate_minutes": 61}, "schedule_rate_minutes", 61, "1 to 60"),
        ({"schedule_rate_minutes": 20}, "schedule_rate_minutes", 20, "at most window_minutes (15)"),
        ({"opt_in_tag_key": ""}, "opt_in_tag_key", "", "a tag key of 1-128"),
        ({"opt_in_tag_key": "aws:idle"}, "opt_in_tag_key", "aws:idle", "not starting with 'aws:'"),
        ({"opt_in_tag_key": "k" * 129}, "opt_in_tag_key", "k" * 129, "a tag key of 1-128"),
        ({"opt_in_tag_value": ""}, "opt_in_tag_value", "", "a tag value of 1-256"),
        ({"opt_in_tag_value": "on;off"}, "opt_in_tag_value", "on;off", "a tag value of 1-256"),
        ({"off_hours_scale_in_cron": NIGHT}, "off_hours_scale_out_cron", None, "both or neither"),
        ({"off_hours_scale_out_cron": MORNING}, "off_hours_scale_out_cron", MORNING, "both or neither"),
        ({"off_hours_scale_in_cron": "0 20 * *", "off_hours_scale_out_cron": MORNING},
         "off_hours_scale_in_cron", "0 20 * *", "five-field unix cron"),
        ({"off_hours_scale_in_cron": NIGHT, "off_hours_scale_out_cron": "cron(0 7 * * ? *)"},
         "off_hours_scale_out_cron", "cron(0 7 * * ? *)", "five-field unix cron"),
        ({"off_hours_scale_in_cron": NIGHT, "off_hours_scale_out_cron": NIGHT},
         "off_hours_scale_out_cron", NIGHT, "a different time"),
        ({"off_hours_time_zone": "Mars/Olympus"}, "off_hours_time_zone", "Mars/Olympus",
         "IANA time zone"),
        ({"savings_horizon_hours": 0}, "savings_horizon_hours", 0, "above 0 and at most 168"),
        ({"savings_horizon_hours": 200}, "savings_horizon_hours", 200, "above 0 and at most 168"),
    ],
)
def test_fails_on_a_nonsense_value(overrides, field, value, allowed) -> None:
    with pytest.raises(ConfigError) as raised:
        stage(**overrides)
    assert raised.value.field_path == f"dev.idle_shutdown.{field}"
    assert raised.value.value == value
    assert allowed in raised.value.allowed
    assert f"dev.idle_shutdown.{field}: {value!r} is not allowed" in str(raised.value)


def test_window_minimum_follows_the_metric_period() -> None:
    assert gpu_metric_period_seconds() == 60
    assert stage(window_minutes=2, schedule_rate_minutes=2).idle_shutdown.window_minutes == 2
