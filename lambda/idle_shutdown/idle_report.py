"""Structured log lines, EMF metrics and the SNS summary.

Everything is printed as one JSON object per line on stdout: Lambda ships
stdout to CloudWatch Logs unchanged, which is what Embedded Metric Format
needs (a logging prefix would break it).
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Sequence

from idle_decide import Verdict

EMF_NAMESPACE = "MlPlatform/IdleShutdown"
MAX_LISTED = 200  # instances listed in one SNS message (256 KB limit)
SUBJECT_LIMIT = 100


class Reporter:
    def __init__(self, write: Callable[[str], None] = print) -> None:
        self._write = write

    def log(self, event: str, **fields: Any) -> None:
        self._write(json.dumps({"event": event, **fields}, default=str, sort_keys=True))

    def decision(self, verdict: Verdict, *, action: str, threshold_percent: float,
                 expected_datapoints: int, dry_run: bool) -> None:
        instance = verdict.instance
        self.log(
            "instance_decision",
            instance_id=instance.instance_id,
            group=instance.group,
            instance_type=instance.instance_type,
            action=action,
            reason=verdict.reason,
            max_utilization_percent=verdict.max_utilization,
            threshold_percent=threshold_percent,
            datapoints=verdict.datapoints,
            expected_datapoints=expected_datapoints,
            age_seconds=None if verdict.age_seconds is None else round(verdict.age_seconds),
            keep_alive_until=verdict.keep_alive_until,
            dry_run=dry_run,
        )

    def metrics(self, *, stage: str, evaluated: int, idle: int, stopped: int,
                gpu_hours_saved: float, failed: int) -> None:
        names = (("InstancesEvaluated", "Count"), ("InstancesIdle", "Count"),
                 ("InstancesStopped", "Count"), ("StopFailures", "Count"),
                 ("GpuHoursSaved", "None"))
        self._write(json.dumps({
            "_aws": {
                "Timestamp": int(time.time() * 1000),
                "CloudWatchMetrics": [{
                    "Namespace": EMF_NAMESPACE,
                    "Dimensions": [["Stage"]],
                    "Metrics": [{"Name": n, "Unit": u} for n, u in names],
                }],
            },
            "Stage": stage,
            "InstancesEvaluated": evaluated,
            "InstancesIdle": idle,
            "InstancesStopped": stopped,
            "StopFailures": failed,
            "GpuHoursSaved": round(gpu_hours_saved, 3),
        }, sort_keys=True))


def stop_summary(stage: str, stopped: Sequence[Verdict], *, dry_run: bool, window_minutes: int,
                 threshold_percent: float) -> tuple[str, str]:
    """``(subject, message)`` listing what was (or in dry-run would be) stopped."""
    verb = "would stop" if dry_run else "stopped"
    subject = f"[ml-{stage}] idle shutdown {verb} {len(stopped)} GPU instance(s)"[:SUBJECT_LIMIT]
    lines = [
        f"Idle shutdown {verb} {len(stopped)} instance(s) whose GPU utilization stayed below "
        f"{threshold_percent:g}% for {window_minutes} minutes"
        + (" (dry run: nothing was stopped)." if dry_run else "."),
        "",
    ]
    for verdict in stopped[:MAX_LISTED]:
        i = verdict.instance
        lines.append(f"- {i.instance_id} ({i.instance_type}) in {i.group}: "
                     f"max {verdict.max_utilization:g}% over {verdict.datapoints} datapoints")
    if len(stopped) > MAX_LISTED:
        lines.append(f"... and {len(stopped) - MAX_LISTED} more (see the function's log).")
    return subject, "\n".join(lines)


def notify(sns: Any, topic_arn: str | None, subject: str, message: str, reporter: Reporter) -> None:
    """Publish, or log why not; a failed notification never undoes a decision."""
    if not topic_arn:
        return
    try:
        sns.publish(TopicArn=topic_arn, Subject=subject, Message=message)
    except Exception as error:  # noqa: BLE001 - the stops already happened; say so in the log
        reporter.log("notification_failed", topic_arn=topic_arn, error=str(error))
