"""Settings of the idle-shutdown function and the one GPU metric definition.

``gpu_metrics.json`` (next to this module) is the single definition of the
namespace, metric names, period and dimension of the GPU metrics. The CDK
construct that writes the CloudWatch agent config reads the same file at
synth, so the agent publishes exactly what this function queries.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

METRIC_DEFINITION_PATH = Path(__file__).resolve().parent / "gpu_metrics.json"

# The event a training job (or anything else) publishes when it is done with
# its Auto Scaling group. Documented in the README ("Job-completion event").
COMPLETION_SOURCE = "ml.training"
COMPLETION_DETAIL_TYPE = "Training Job Finished"
SCHEDULE_SOURCE = "aws.events"
SCHEDULE_DETAIL_TYPE = "Scheduled Event"

# Instance or group tag: an ISO 8601 time before which nothing is stopped.
KEEP_ALIVE_TAG = "ml:keep-alive-until"
# Group tag written by IdleShutdown.enroll: the stage whose idle function may
# act on the group's job-finished event (stages may share an account and the
# opt-in tag; a stage's producers may not scale another stage's fleet).
STAGE_TAG = "ml:idle-shutdown-stage"


@dataclass(frozen=True)
class MetricDefinition:
    namespace: str
    period_seconds: int
    instance_dimension: str
    measurements: tuple[str, ...]
    metric_prefix: str
    idle_metric: str
    idle_statistic: str

    @classmethod
    def load(cls, path: Path = METRIC_DEFINITION_PATH) -> "MetricDefinition":
        raw = json.loads(path.read_text())
        return cls(
            namespace=raw["namespace"],
            period_seconds=int(raw["period_seconds"]),
            instance_dimension=raw["instance_dimension"],
            measurements=tuple(raw["measurements"]),
            metric_prefix=raw["metric_prefix"],
            idle_metric=raw["idle_metric"],
            idle_statistic=raw["idle_statistic"],
        )

    @property
    def metric_names(self) -> tuple[str, ...]:
        """What the agent publishes: ``nvidia_smi_<measurement>``."""
        return tuple(self.metric_prefix + m for m in self.measurements)


_loaded: list[MetricDefinition] = []


def _default_metric() -> MetricDefinition:
    # Read once per container, not once per invocation.
    if not _loaded:
        _loaded.append(MetricDefinition.load())
    return _loaded[0]


@dataclass(frozen=True)
class Settings:
    """Everything the function reads from its environment, parsed once."""

    stage: str
    threshold_percent: float
    window_seconds: int
    grace_seconds: int
    dry_run: bool
    opt_in_tag_key: str
    opt_in_tag_value: str
    topic_arn: str | None
    savings_horizon_hours: float
    metric: MetricDefinition

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ,
                 metric: MetricDefinition | None = None) -> "Settings":
        return cls(
            stage=env.get("STAGE", "unknown"),
            threshold_percent=float(env.get("THRESHOLD_PERCENT", "5")),
            window_seconds=int(env.get("WINDOW_SECONDS", "900")),
            grace_seconds=int(env.get("GRACE_SECONDS", "1200")),
            dry_run=env.get("DRY_RUN", "false").lower() == "true",
            opt_in_tag_key=env.get("OPT_IN_TAG_KEY", "ml:idle-shutdown"),
            opt_in_tag_value=env.get("OPT_IN_TAG_VALUE", "enabled"),
            topic_arn=env.get("TOPIC_ARN") or None,
            savings_horizon_hours=float(env.get("SAVINGS_HORIZON_HOURS", "1")),
            metric=metric or _default_metric(),
        )

    @property
    def expected_datapoints(self) -> int:
        """Datapoints a fully covered window has: one per metric period."""
        return self.window_seconds // self.metric.period_seconds
