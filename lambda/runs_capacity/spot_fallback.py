"""When spot runs dry: raise the fleet's on-demand share, and put it back.

Auto Scaling groups never fall back to on-demand on their own: a spot-only
group with no spot capacity just records failed launches while a PENDING
run waits. On each schedule the runs capacity function also reads the
group's recent scaling activities:

* **switch on**: there are PENDING runs, the newest launch activity is a
  failed spot launch for lack of capacity, and such failures (with no
  successful launch between them) go back at least ``after_seconds``:
  ``OnDemandPercentageAboveBaseCapacity`` goes to ``fallback_percentage``
  (UpdateAutoScalingGroup, only that field) and the group gets the tag
  ``ml:spot-fallback-since`` (the switch time);
* **switch back** to ``base_percentage`` (the template's value) and drop
  the tag: when no run is PENDING or RUNNING any more (the run ended), or,
  with a fallback share below 100 % (spot is still tried), when a launch
  succeeded after the switch and no spot launch failed for lack of
  capacity since;
* a tag whose group no longer has ``fallback_percentage`` was undone by
  someone else (a deploy that changed the mixed instances policy, a
  person): the tag is dropped and the next schedules decide afresh.

The state is the group's tag and its activity history, nothing else. Every
switch is one JSON log line and one message to the alerts topic.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

FALLBACK_TAG = "ml:spot-fallback-since"
# DescribeScalingActivities StatusMessage of a spot launch that failed for
# lack of capacity, e.g. "Could not launch Spot Instances.
# InsufficientInstanceCapacity - There is no Spot capacity available that
# matches your request. Launching EC2 instance failed."
SPOT_FAILURE_PREFIX = "Could not launch Spot Instances."
SPOT_CAPACITY_CODES = ("InsufficientInstanceCapacity", "UnfulfillableCapacity")
LAUNCH_PREFIX = "Launching a new EC2 instance"
# Activities are returned newest first, 100 a page at most.
MAX_ACTIVITIES = 100


@dataclass(frozen=True)
class FallbackSettings:
    after_seconds: int
    base_percentage: int
    fallback_percentage: int
    topic_arn: str


@dataclass(frozen=True)
class Switch:
    action: str  # "fallback-on", "fallback-off", "tag-cleared" or "none"
    reason: str
    percentage: int | None = None


def is_spot_capacity_failure(activity: dict[str, Any]) -> bool:
    message = activity.get("StatusMessage") or ""
    return (activity.get("StatusCode") == "Failed" and message.startswith(SPOT_FAILURE_PREFIX)
            and any(code in message for code in SPOT_CAPACITY_CODES))


def _is_launch(activity: dict[str, Any]) -> bool:
    return str(activity.get("Description", "")).startswith(LAUNCH_PREFIX)


def dry_since(activities: Iterable[dict[str, Any]]) -> datetime | None:
    """Start of the unbroken run of spot capacity failures that ends with the
    newest launch activity, or None if the newest launch did not fail so."""
    oldest: datetime | None = None
    for activity in activities:  # newest first
        if not _is_launch(activity):
            continue
        if not is_spot_capacity_failure(activity):
            break
        oldest = activity["StartTime"]
    return oldest


def decide(*, group: dict[str, Any], activities: list[dict[str, Any]], pending: int, active: int,
           settings: FallbackSettings, now: datetime) -> Switch:
    current = _on_demand_percentage(group)
    if current is None:
        return Switch("none", "no_mixed_instances_policy")
    since = _tag(group, FALLBACK_TAG)
    if since is not None:
        return _while_on(since, current, activities, active, settings)
    if current != settings.base_percentage:
        return Switch("none", "on_demand_share_changed_by_someone_else")
    if pending == 0:
        return Switch("none", "no_pending_runs")
    started = dry_since(activities)
    if started is None:
        return Switch("none", "spot_launches_not_failing")
    if now - started < timedelta(seconds=settings.after_seconds):
        return Switch("none", "spot_dry_for_less_than_the_threshold")
    return Switch("fallback-on", f"spot capacity failures since {started.isoformat()}",
                  settings.fallback_percentage)


def _while_on(since: str, current: int, activities: list[dict[str, Any]], active: int,
              settings: FallbackSettings) -> Switch:
    if current != settings.fallback_percentage:
        return Switch("tag-cleared", f"on-demand share is {current}, not the fallback's "
                      f"{settings.fallback_percentage}: undone by a deploy or a person")
    if active == 0:
        return Switch("fallback-off", "no pending or running runs", settings.base_percentage)
    if settings.fallback_percentage < 100:
        switched = _parse_time(since)
        after = [a for a in activities if _is_launch(a) and switched is not None
                 and a["StartTime"] >= switched]
        if any(a.get("StatusCode") == "Successful" for a in after) \
                and not any(is_spot_capacity_failure(a) for a in after):
            return Switch("fallback-off", "launches succeed again with no spot capacity failure "
                          "since the switch", settings.base_percentage)
    return Switch("none", "fallback_on")


def apply(switch: Switch, *, autoscaling: Any, sns: Any, group_name: str, settings: FallbackSettings,
          now: datetime) -> None:
    """Make the switch: the group's share first, then its tag, then the alert."""
    if switch.action in ("fallback-on", "fallback-off"):
        autoscaling.update_auto_scaling_group(
            AutoScalingGroupName=group_name,
            MixedInstancesPolicy={"InstancesDistribution": {
                "OnDemandPercentageAboveBaseCapacity": switch.percentage}})
    tag = {"ResourceId": group_name, "ResourceType": "auto-scaling-group", "Key": FALLBACK_TAG}
    if switch.action == "fallback-on":
        autoscaling.create_or_update_tags(Tags=[{**tag, "Value": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                                 "PropagateAtLaunch": False}])
    elif switch.action in ("fallback-off", "tag-cleared"):
        autoscaling.delete_tags(Tags=[tag])
    if switch.action == "none":
        return
    subjects = {"fallback-on": f"{group_name}: spot capacity dry, on-demand share raised to "
                               f"{switch.percentage} %",
                "fallback-off": f"{group_name}: on-demand share back to {switch.percentage} %",
                "tag-cleared": f"{group_name}: spot fallback ended by someone else"}
    sns.publish(TopicArn=settings.topic_arn, Subject=subjects[switch.action][:100],
                Message=f"{subjects[switch.action]}\nReason: {switch.reason}\n"
                        f"Configured on-demand share: {settings.base_percentage} %, fallback: "
                        f"{settings.fallback_percentage} %, after "
                        f"{settings.after_seconds // 60} minutes of spot capacity failures.")


def recent_activities(autoscaling: Any, group_name: str) -> list[dict[str, Any]]:
    """The newest activities of the group (one page: enough for the threshold
    at a few launches per schedule)."""
    page = autoscaling.describe_scaling_activities(AutoScalingGroupName=group_name,
                                                   MaxRecords=MAX_ACTIVITIES)
    return list(page.get("Activities", []))


def _on_demand_percentage(group: dict[str, Any]) -> int | None:
    distribution = (group.get("MixedInstancesPolicy") or {}).get("InstancesDistribution") or {}
    value = distribution.get("OnDemandPercentageAboveBaseCapacity")
    return value if isinstance(value, int) else None


def _tag(group: dict[str, Any], key: str) -> str | None:
    for tag in group.get("Tags", []):
        if tag.get("Key") == key:
            return str(tag.get("Value", ""))
    return None


def _parse_time(value: str) -> datetime | None:
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
