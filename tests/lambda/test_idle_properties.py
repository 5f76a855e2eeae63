"""Robustness of the idle-shutdown function: mutated real events against
random fleets, every AWS call failing the ways the SDK fails (issue 12).

The expected decisions come from an oracle written from the README's rules
(opt-in tag, protection, keep-alive tags, grace period, a fully covered
window below the threshold, never below the minimum), not from the code:

* with AWS healthy: nothing escapes, and exactly the expected instances are
  stopped (or the group scaled to its minimum) and reported;
* with a fault: the only exception that may escape is the SDK's own, from a
  read before anything changed (the invocation fails, EventBridge retries
  and the Errors alarm fires); once a stop was attempted nothing escapes and
  every stop that happened is in the decision log, the metrics and the SNS
  summary;
* no payload that is not a sweep or a well-formed job-finished event makes
  any AWS call, and nothing is ever stopped that the rules keep.

1,000 payloads per run, derandomized.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note
from hypothesis import strategies as st

from tests.idle_function import handler_module, module
from tests.property_budget import examples

from .idle_fake import FAULTS, MUTATING, READS, FakeGroup, FakeInstance, IdleAccount

handler = handler_module()
idle_settings = module("idle_settings")
idle_report = module("idle_report")

EVENTS = {name: json.loads((Path(__file__).resolve().parent / "events" / f"{name}.json").read_text())
          for name in ("scheduled_event", "training_job_finished")}
NOW = datetime(2026, 11, 23, 9, 30, 30, tzinfo=timezone.utc)
FLEET, OTHER = "ml-dev-training-fleet", "someone-elses"
KEEP_ALIVE = "ml:keep-alive-until"
TOPIC = "arn:aws:sns:us-east-1:123456789012:ml-dev-alerts"
GROUP_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,255}")  # Auto Scaling's group name rule


def _settings(dry_run: bool):
    return idle_settings.Settings.from_env({
        "STAGE": "dev", "THRESHOLD_PERCENT": "5", "WINDOW_SECONDS": "900", "GRACE_SECONDS": "1200",
        "DRY_RUN": "true" if dry_run else "false", "TOPIC_ARN": TOPIC})


# --- fleets -------------------------------------------------------------------------

KEEP_ALIVE_VALUES = [None, None, None, "future", "past", "malformed"]


def _keep_alive(kind: str | None) -> dict[str, str]:
    return {} if kind is None else {KEEP_ALIVE: {
        "future": (NOW + timedelta(hours=2)).isoformat(), "past": (NOW - timedelta(hours=2)).isoformat(),
        "malformed": "next tuesday"}[kind]}


@st.composite
def fleets(draw) -> dict[str, FakeGroup]:
    expected = _settings(False).expected_datapoints
    usage = {"idle": [1.0] * expected, "busy": [1.0] * (expected - 1) + [60.0],
             "partial": [1.0] * (expected - 2), "none": []}
    groups = {}
    for name, opted in ((FLEET, True), (OTHER, False)):
        instances = []
        for n in range(draw(st.integers(0, 5))):
            instances.append(FakeInstance(
                instance_id=f"i-0{'a' if opted else 'b'}{n:015x}", group=name,
                launch_time=NOW - timedelta(minutes=draw(st.sampled_from([120, 120, 10]))),
                utilization=usage[draw(st.sampled_from(["idle", "idle", "busy", "partial", "none"]))],
                protected=draw(st.sampled_from([False, False, False, True])),
                tags=_keep_alive(draw(st.sampled_from(KEEP_ALIVE_VALUES)))))
        enrolled_by = draw(st.sampled_from(["dev", "dev", "dev", "prod", None]))
        tags = {**({"ml:idle-shutdown": "enabled"} if opted else {}),
                **({"ml:idle-shutdown-stage": enrolled_by} if enrolled_by else {}),
                **_keep_alive(draw(st.sampled_from(KEEP_ALIVE_VALUES + [None] * 6)))}
        groups[name] = FakeGroup(name, min_size=draw(st.integers(0, len(instances))),
                                 desired=len(instances), tags=tags, instances=instances)
    return groups


# --- payloads -------------------------------------------------------------------------

NEAR = ["{}\n", "{} ", " {}", "{}\r\n", "{}\t", "{}\x00"]
nasty = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
                  st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                  st.sampled_from(["x" * 300, "é" * 256, FLEET.upper(), OTHER, "no-such-group", "12345"]))


@st.composite
def payloads(draw) -> object:
    if draw(st.integers(0, 9)) == 0:
        return draw(nasty)
    payload = json.loads(json.dumps(EVENTS[draw(st.sampled_from(sorted(EVENTS)))]))
    if payload["source"] == "ml.training":
        payload["detail"]["autoScalingGroupName"] = draw(st.sampled_from([FLEET] * 3 + [OTHER]))
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        path = draw(st.sampled_from([("source",), ("detail-type",), ("detail",), ("id",), ("extra",),
                                     ("detail", "status")] + [("detail", "autoScalingGroupName")] * 4))
        target = payload if len(path) == 1 else payload.get("detail")
        if not isinstance(target, dict):
            continue
        how = draw(st.sampled_from(["near", "near", "delete", "nasty"]))
        if how == "delete":
            target.pop(path[-1], None)
        elif how == "near" and isinstance(target.get(path[-1]), str):
            target[path[-1]] = draw(st.sampled_from(NEAR)).format(target[path[-1]])
        else:
            target[path[-1]] = draw(nasty)
    return payload


faults = st.sampled_from([True, False]).flatmap(lambda healthy: st.just({}) if healthy else st.tuples(
    st.sampled_from(READS + MUTATING), st.sampled_from(FAULTS)).map(lambda p: {p[0]: p[1]}))


# --- the oracle ----------------------------------------------------------------------------

def kind_of(payload: object) -> str:
    if not isinstance(payload, dict):
        return "ignored"
    key = (payload.get("source"), payload.get("detail-type"))
    if key == ("aws.events", "Scheduled Event"):
        return "sweep"
    if key == ("ml.training", "Training Job Finished"):
        detail = payload.get("detail")
        name = detail.get("autoScalingGroupName") if isinstance(detail, dict) else None
        return "complete" if isinstance(name, str) and GROUP_NAME.fullmatch(name) else "ignored"
    return "ignored"


def _kept(tags: dict[str, str]) -> bool:
    value = tags.get(KEEP_ALIVE)
    return value is not None and (value == "next tuesday" or datetime.fromisoformat(value) > NOW)


def stoppable(groups: dict[str, FakeGroup]) -> tuple[set[str], int]:
    """Instances the rules allow to stop, and how many the group can lose."""
    group = groups[FLEET]
    if _kept(group.tags):
        return set(), 0
    allowed = {i.instance_id for i in group.instances
               if not i.protected and not _kept(i.tags) and NOW - i.launch_time >= timedelta(seconds=1200)
               and len(i.utilization) >= _settings(False).expected_datapoints and max(i.utilization) < 5}
    return allowed, group.desired - group.min_size


def expected_scale_down(groups: dict[str, FakeGroup], name: str) -> int | None:
    group = groups.get(name)
    if group is None or "ml:idle-shutdown" not in group.tags or _kept(group.tags) \
            or group.tags.get("ml:idle-shutdown-stage") != "dev" \
            or any(_kept(i.tags) for i in group.instances) or group.desired <= group.min_size:
        return None
    return group.min_size


# --- the property ------------------------------------------------------------------------------

@settings(max_examples=examples(1000), deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(payload=payloads(), groups=fleets(), fault=faults, dry_run=st.sampled_from([False, False, False, True]))
def test_any_payload_and_any_fault_stop_only_what_the_rules_allow_and_report_it(payload, groups, fault,
                                                                                 dry_run) -> None:
    kind = kind_of(payload)
    allowed, budget = stoppable(groups)
    target = expected_scale_down(groups, payload["detail"]["autoScalingGroupName"]) if kind == "complete" \
        else None
    account = IdleAccount(groups=groups, metric=_settings(dry_run).metric, faults=dict(fault))
    lines: list[str] = []
    note(f"{kind}, fault {'none' if not fault else next(iter(fault.values()))}")
    try:
        result = handler.dispatch(payload, settings=_settings(dry_run), clients=account.client, now=NOW,
                                  reporter=idle_report.Reporter(lines.append))
    except (ClientError, BotoCoreError):
        assert fault, "nothing may escape while AWS is healthy"
        # Only a read before any change (or the ambiguous scale-down call itself) may fail the invocation.
        assert "TerminateInstanceInAutoScalingGroup" not in account.calls and not account.published
        assert set(account.calls) <= set(READS) | {"SetDesiredCapacity"}
        return
    assert isinstance(result, dict)
    if kind == "ignored":
        assert account.calls == []
        return
    records = [json.loads(line) for line in lines]
    assert set(account.stopped) <= allowed and len(account.stopped) <= budget  # never what the rules keep
    if kind == "sweep":
        decisions = {r["instance_id"]: r["action"] for r in records if r.get("event") == "instance_decision"}
        reported = {i for i, a in decisions.items() if a == "stopped"}
        assert reported <= set(account.stopped) <= reported | {i for i, a in decisions.items()
                                                               if a == "stop_failed"}
        [metrics] = [r for r in records if "_aws" in r]
        assert metrics["InstancesStopped"] == (0 if dry_run else len(reported))
        if dry_run:
            assert account.stopped == []
        elif not fault:
            assert len(account.stopped) == min(len(allowed), budget)
        if reported and fault.get("Publish") is None:
            [summary] = account.published
            assert all(i in summary["Message"] for i in reported)
    if kind == "complete" and not dry_run:
        assert account.desired_set in ([], [(FLEET, target)])
        if not fault:
            assert account.desired_set == ([] if target is None else [(FLEET, target)])
