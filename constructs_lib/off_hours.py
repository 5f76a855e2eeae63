"""Off-hours schedules: close a GPU Auto Scaling group at night (minimum,
desired and maximum 0) and reopen it in the morning (scheduled actions on the
group itself, no Lambda). The same schedule closes an Application Auto
Scaling target, e.g. a SageMaker inference component's copy count."""

from __future__ import annotations

import re
from dataclasses import dataclass

import aws_cdk as cdk
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_autoscaling as autoscaling


def add_off_hours_schedule(
    group: autoscaling.AutoScalingGroup,
    *,
    scale_in_cron: str | None,
    scale_out_cron: str | None,
    restore_max_capacity: int,
    time_zone: str = "UTC",
    restore_min_capacity: int = 0,
    restore_desired_capacity: int | None = None,
) -> list[autoscaling.ScheduledAction]:
    """Add the two scheduled actions to ``group``; none when the crons are None.

    At ``scale_in_cron`` the group's minimum, desired capacity and maximum go
    to 0: the fleet is closed, and nothing that raises the desired capacity
    (``ml_runs submit``, the runs capacity reconciler) can bring an instance
    until the morning. At ``scale_out_cron`` the maximum goes back to
    ``restore_max_capacity`` (the group's configured maximum), the minimum to
    ``restore_min_capacity`` and, if given, the desired capacity to
    ``restore_desired_capacity`` (default: left at 0; runs scale the fleet
    up). Crons are five-field unix cron in ``time_zone`` (IANA name), e.g.
    ``"0 20 * * MON-FRI"`` and ``"0 7 * * MON-FRI"``: off at night and over
    the weekend.
    """
    if scale_in_cron is None and scale_out_cron is None:
        return []
    if scale_in_cron is None or scale_out_cron is None:
        raise ValueError("off-hours schedule: scale_in_cron and scale_out_cron go together, "
                         f"got {scale_in_cron!r} and {scale_out_cron!r}")
    if restore_min_capacity < 0 or (restore_desired_capacity is not None
                                    and restore_desired_capacity < restore_min_capacity):
        raise ValueError("off-hours schedule: restore_desired_capacity must be at least "
                         f"restore_min_capacity ({restore_min_capacity}) and both >= 0, got "
                         f"{restore_desired_capacity!r}")
    highest = max(1, restore_min_capacity, restore_desired_capacity or 0)
    if restore_max_capacity < highest:
        raise ValueError("off-hours schedule: restore_max_capacity must be at least 1, "
                         "restore_min_capacity and restore_desired_capacity "
                         f"({highest}), got {restore_max_capacity!r}")
    scale_in = group.scale_on_schedule(
        "OffHoursScaleIn",
        schedule=autoscaling.Schedule.expression(scale_in_cron),
        time_zone=time_zone,
        min_capacity=0,
        desired_capacity=0,
        max_capacity=0,
    )
    scale_out = group.scale_on_schedule(
        "OffHoursScaleOut",
        schedule=autoscaling.Schedule.expression(scale_out_cron),
        time_zone=time_zone,
        min_capacity=restore_min_capacity,
        max_capacity=restore_max_capacity,
        desired_capacity=restore_desired_capacity,
    )
    return [scale_in, scale_out]


@dataclass(frozen=True)
class OffHoursSchedule:
    """A stage's night: five-field unix crons in an IANA ``time_zone``
    (the idle config's ``off_hours_*`` values)."""

    scale_in_cron: str
    scale_out_cron: str
    time_zone: str = "UTC"


# A day-of-week number: not a step (``/2``) or an occurrence (``#1``), which keep their value.
_WEEK_DAY_NUMBER_RE = re.compile(r"(?<![#/\d])\d+")


def application_autoscaling_cron(cron: str) -> appscaling.Schedule:
    """A five-field unix cron as an Application Auto Scaling ``cron(...)``
    schedule, which wants six fields, a ``?`` in day-of-month or day-of-week,
    and numbers days of the week from 1 (Sunday) instead of 0."""
    fields = cron.split()
    if len(fields) != 5:
        raise ValueError(f"off-hours schedule: {cron!r} is not a five-field unix cron")
    minute, hour, day, month, week_day = fields
    if day != "*" and week_day != "*":
        raise ValueError(f"off-hours schedule: {cron!r} sets both day of month and day of week; "
                         "Application Auto Scaling accepts one of them")
    if week_day != "*":
        week_day = _WEEK_DAY_NUMBER_RE.sub(lambda m: str(int(m.group()) % 7 + 1), week_day)
    return appscaling.Schedule.cron(
        minute=minute, hour=hour, month=month,
        day=None if day == "*" else day,
        week_day=None if week_day == "*" else week_day)


def add_scalable_target_off_hours_schedule(
    target: appscaling.ScalableTarget,
    schedule: OffHoursSchedule | None,
    *,
    restore_max_capacity: int,
    restore_min_capacity: int = 0,
) -> list[str]:
    """Close ``target`` at ``schedule.scale_in_cron`` (minimum and maximum 0:
    nothing scales it out, not even a scale-out-from-zero alarm) and reopen it
    at ``scale_out_cron`` (``restore_min_capacity``..``restore_max_capacity``;
    its own scaling policies take it from there). Returns the two action names;
    none without a schedule."""
    if schedule is None:
        return []
    if restore_min_capacity < 0 or restore_max_capacity < max(1, restore_min_capacity):
        raise ValueError("off-hours schedule: restore_max_capacity must be at least 1 and "
                         f"restore_min_capacity ({restore_min_capacity}, >= 0), got {restore_max_capacity!r}")
    if schedule.scale_in_cron == schedule.scale_out_cron:
        raise ValueError(f"off-hours schedule: scale in and out at the same time ({schedule.scale_in_cron!r})")
    time_zone = cdk.TimeZone.of(schedule.time_zone)
    target.scale_on_schedule("OffHoursScaleIn", schedule=application_autoscaling_cron(schedule.scale_in_cron),
                             min_capacity=0, max_capacity=0, time_zone=time_zone)
    target.scale_on_schedule("OffHoursScaleOut",
                             schedule=application_autoscaling_cron(schedule.scale_out_cron),
                             min_capacity=restore_min_capacity, max_capacity=restore_max_capacity,
                             time_zone=time_zone)
    return ["OffHoursScaleIn", "OffHoursScaleOut"]
