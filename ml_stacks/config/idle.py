"""The ``idle_shutdown`` section: idle-GPU shutdown and off hours."""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass

from ml_stacks.config.base import _CRON_FIELD_RE, _TAG_KEY_RE, _TAG_VALUE_RE, _is_int, _is_number, _require
from ml_stacks.config.training import gpu_metric_period_seconds


@dataclass(frozen=True)
class IdleShutdownConfig:
    """Never pay for an idle GPU (the ``idle`` stack).

    An instance of a group tagged ``opt_in_tag_key=opt_in_tag_value`` is
    stopped when its GPU utilization stayed below
    ``gpu_utilization_threshold_percent`` for ``window_minutes`` (every
    datapoint, the whole window covered), it is older than
    ``launch_grace_minutes``, not scale-in protected and has no
    ``ml:keep-alive-until`` tag in the future. ``dry_run`` decides and
    reports without stopping anything. ``off_hours_scale_in_cron`` /
    ``off_hours_scale_out_cron`` (both or neither, unix cron in
    ``off_hours_time_zone``) scale the fleet to 0 at night and back in the
    morning; None (the default, and prod's value) means no schedule.
    ``savings_horizon_hours`` is the idle time a stop is assumed to save,
    for the ``GpuHoursSaved`` metric only.
    """

    enabled: bool = True
    dry_run: bool = False
    gpu_utilization_threshold_percent: float = 5.0
    window_minutes: int = 15
    launch_grace_minutes: int = 20
    schedule_rate_minutes: int = 5
    opt_in_tag_key: str = "ml:idle-shutdown"
    opt_in_tag_value: str = "enabled"
    off_hours_scale_in_cron: str | None = None
    off_hours_scale_out_cron: str | None = None
    off_hours_time_zone: str = "UTC"
    savings_horizon_hours: float = 1.0

    @property
    def off_hours(self) -> bool:
        return self.off_hours_scale_in_cron is not None

    def validate(self, prefix: str) -> None:
        for name in ("enabled", "dry_run"):
            _require(isinstance(getattr(self, name), bool), f"{prefix}.{name}",
                     getattr(self, name), "True or False")
        value = self.gpu_utilization_threshold_percent
        _require(_is_number(value) and 0 < value <= 100,
                 f"{prefix}.gpu_utilization_threshold_percent", value,
                 "a percentage above 0 and at most 100")
        period = gpu_metric_period_seconds()
        value = self.window_minutes
        _require(_is_int(value) and value * 60 >= 2 * period and value <= 1440,
                 f"{prefix}.window_minutes", value,
                 f"whole minutes from {max(1, 2 * period // 60)} (two GPU metric periods of "
                 f"{period} s) to 1440")
        _require(value * 60 % period == 0, f"{prefix}.window_minutes", value,
                 f"a multiple of the GPU metric period ({period} s)")
        value = self.launch_grace_minutes
        _require(_is_int(value) and 0 <= value <= 1440, f"{prefix}.launch_grace_minutes", value,
                 "whole minutes from 0 to 1440")
        value = self.schedule_rate_minutes
        _require(_is_int(value) and 1 <= value <= 60, f"{prefix}.schedule_rate_minutes", value,
                 "whole minutes from 1 to 60")
        _require(value <= self.window_minutes, f"{prefix}.schedule_rate_minutes", value,
                 f"at most window_minutes ({self.window_minutes}): a longer rate leaves "
                 "idle time unobserved between runs")
        value = self.opt_in_tag_key
        _require(isinstance(value, str) and bool(_TAG_KEY_RE.match(value))
                 and not value.lower().startswith("aws:"),
                 f"{prefix}.opt_in_tag_key", value,
                 "a tag key of 1-128 letters, digits, spaces and _ . : / = + - @, not starting with 'aws:'")
        value = self.opt_in_tag_value
        _require(isinstance(value, str) and 0 < len(value) <= 256 and bool(_TAG_VALUE_RE.match(value)),
                 f"{prefix}.opt_in_tag_value", value,
                 "a tag value of 1-256 letters, digits, spaces and _ . : / = + - @")
        crons = (self.off_hours_scale_in_cron, self.off_hours_scale_out_cron)
        _require((crons[0] is None) == (crons[1] is None), f"{prefix}.off_hours_scale_out_cron",
                 crons[1], "set together with off_hours_scale_in_cron (both or neither)")
        for name in ("off_hours_scale_in_cron", "off_hours_scale_out_cron"):
            value = getattr(self, name)
            if value is None:
                continue
            fields = value.split() if isinstance(value, str) else []
            _require(len(fields) == 5 and all(_CRON_FIELD_RE.match(f) for f in fields),
                     f"{prefix}.{name}", value,
                     "a five-field unix cron expression, e.g. '0 20 * * MON-FRI'")
        if self.off_hours:
            _require(crons[0] != crons[1], f"{prefix}.off_hours_scale_out_cron", crons[1],
                     "a different time than off_hours_scale_in_cron")
        value = self.off_hours_time_zone
        _require(isinstance(value, str) and _is_time_zone(value), f"{prefix}.off_hours_time_zone",
                 value, "an IANA time zone name such as 'UTC' or 'Europe/Berlin'")
        value = self.savings_horizon_hours
        _require(_is_number(value) and 0 < value <= 168, f"{prefix}.savings_horizon_hours", value,
                 "hours above 0 and at most 168")


def _is_time_zone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


# --- serving (SageMaker real-time endpoints) --------------------------------

# SageMaker resource names (endpoints, variants, components): letters, digits
# and single or repeated hyphens, starting and ending with a letter or digit.
