"""Pure decisions: is an instance idle, and which idle ones may be stopped.

No AWS calls here. Anything uncertain (no data, a partly covered window, an
unreadable keep-alive tag, an unknown launch time) means "not idle": a GPU
left running for five more minutes is cheap, a training run killed is not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Mapping, Sequence

# Reasons, as logged. Only IDLE leads to a stop.
PROTECTED = "protected_from_scale_in"
KEEP_ALIVE = "keep_alive_until_future"
KEEP_ALIVE_MALFORMED = "keep_alive_tag_malformed"
LAUNCH_UNKNOWN = "launch_time_unknown"
YOUNG = "within_launch_grace"
NO_DATA = "no_data"
PARTIAL = "window_not_covered"
BUSY = "busy"
IDLE = "idle"
AT_MINIMUM = "idle_but_group_at_minimum"


@dataclass(frozen=True)
class Group:
    name: str
    min_size: int
    desired_capacity: int
    tags: Mapping[str, str]


@dataclass(frozen=True)
class Instance:
    instance_id: str
    group: str
    instance_type: str
    protected: bool
    launch_time: datetime | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Series:
    """The window's datapoints of one instance (timestamps are bucket starts)."""

    values: Sequence[float] = ()
    timestamps: Sequence[datetime] = ()


@dataclass(frozen=True)
class Verdict:
    instance: Instance
    idle: bool
    reason: str
    age_seconds: float | None = None
    max_utilization: float | None = None
    datapoints: int | None = None
    keep_alive_until: str | None = None


def parse_keep_alive(value: str | None) -> tuple[datetime | None, bool]:
    """``(until, malformed)`` for a ``ml:keep-alive-until`` tag value.

    ISO 8601 date or time; a time without offset is UTC; a bare date means
    the start of that day (UTC).
    """
    if value is None:
        return None, False
    try:
        until = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None, True
    if until.tzinfo is None:
        until = until.replace(tzinfo=timezone.utc)
    return until, False


def precheck(instance: Instance, group: Group, *, now: datetime, grace_seconds: int,
             keep_alive_tag: str) -> Verdict | None:
    """The checks that need no metrics; a Verdict when one already says "not idle"."""
    if instance.protected:
        return Verdict(instance, False, PROTECTED)
    for tags in (instance.tags, group.tags):
        raw = tags.get(keep_alive_tag)
        until, malformed = parse_keep_alive(raw)
        if malformed:
            return Verdict(instance, False, KEEP_ALIVE_MALFORMED, keep_alive_until=raw)
        if until is not None and until > now:
            return Verdict(instance, False, KEEP_ALIVE, keep_alive_until=raw)
    if instance.launch_time is None:
        return Verdict(instance, False, LAUNCH_UNKNOWN)
    age = (now - instance.launch_time).total_seconds()
    if age < grace_seconds:
        return Verdict(instance, False, YOUNG, age_seconds=age)
    return None


def judge(instance: Instance, series: Series | None, *, now: datetime, threshold_percent: float,
          expected_datapoints: int) -> Verdict:
    """Idle only if the whole window is covered and every datapoint is below the threshold."""
    age = (now - instance.launch_time).total_seconds() if instance.launch_time else None
    values = list(series.values) if series else []
    if not values:
        return Verdict(instance, False, NO_DATA, age_seconds=age, datapoints=0)
    peak = max(values)
    # One value per period bucket: distinct timestamps count, duplicates from
    # overlapping pages do not.
    covered = len(set(series.timestamps)) if series.timestamps else len(values)
    if covered < expected_datapoints:
        return Verdict(instance, False, PARTIAL, age_seconds=age, max_utilization=peak,
                       datapoints=covered)
    if peak >= threshold_percent:
        return Verdict(instance, False, BUSY, age_seconds=age, max_utilization=peak,
                       datapoints=covered)
    return Verdict(instance, True, IDLE, age_seconds=age, max_utilization=peak, datapoints=covered)


def select_stops(verdicts: Iterable[Verdict], groups: Mapping[str, Group]
                 ) -> tuple[list[Verdict], list[Verdict]]:
    """``(to_stop, held_at_minimum)``: each group keeps at least its minimum.

    Every stop decrements the desired capacity, so a group can lose at most
    ``desired - min`` instances. The least used (then oldest) go first.
    """
    by_group: dict[str, list[Verdict]] = {}
    for verdict in verdicts:
        if verdict.idle:
            by_group.setdefault(verdict.instance.group, []).append(verdict)
    to_stop: list[Verdict] = []
    held: list[Verdict] = []
    for name in sorted(by_group):
        group = groups[name]
        budget = max(0, group.desired_capacity - group.min_size)
        ranked = sorted(by_group[name], key=lambda v: (v.max_utilization or 0.0,
                                                       -(v.age_seconds or 0.0),
                                                       v.instance.instance_id))
        to_stop.extend(ranked[:budget])
        held.extend(ranked[budget:])
    return to_stop, held
