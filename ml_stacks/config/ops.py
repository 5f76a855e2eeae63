"""The ``alerts``, ``budget`` and ``drift`` sections (the ``ops`` stack)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ml_stacks.config.base import LOG_RETENTION_DAYS, _require


_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class AlertsConfig:
    """Who hears about the stage's alarms and notifications (SNS e-mail).

    Subscribers must confirm the e-mail AWS sends them before they receive
    anything.
    """

    email_subscribers: tuple[str, ...] = ()

    def validate(self, prefix: str) -> None:
        path = f"{prefix}.email_subscribers"
        _require(isinstance(self.email_subscribers, tuple), path, self.email_subscribers,
                 "a tuple of e-mail addresses")
        for address in self.email_subscribers:
            _require(isinstance(address, str) and bool(_EMAIL_RE.match(address)), path, address,
                     "an e-mail address such as 'ml-oncall@example.com'")


# AWS Budgets accepts at most five notifications per budget.
MAX_BUDGET_NOTIFICATIONS = 5


@dataclass(frozen=True)
class BudgetConfig:
    """The stage's monthly AWS Budgets cost budget, alerting the alerts topic.

    ``filter_by_environment_tag`` counts only costs tagged
    ``Environment=<stage>`` (stages sharing an account); the tag must be
    activated as a cost allocation tag in Billing once per account. False
    counts the whole account (one account per stage).
    """

    monthly_limit_usd: int = 1000
    actual_alert_percents: tuple[int, ...] = (80, 100)
    forecast_alert_percents: tuple[int, ...] = (100,)
    filter_by_environment_tag: bool = True

    def validate(self, prefix: str) -> None:
        path = f"{prefix}.monthly_limit_usd"
        _require(isinstance(self.monthly_limit_usd, int) and not isinstance(self.monthly_limit_usd, bool)
                 and 1 <= self.monthly_limit_usd <= 10_000_000, path, self.monthly_limit_usd,
                 "a whole number of US dollars from 1 to 10,000,000")
        for name in ("actual_alert_percents", "forecast_alert_percents"):
            path = f"{prefix}.{name}"
            values = getattr(self, name)
            _require(isinstance(values, tuple), path, values, "a tuple of percentages, e.g. (80, 100)")
            for value in values:
                _require(isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1000,
                         path, value, "whole percentages of the limit from 1 to 1000")
            _require(len(set(values)) == len(values), path, values, "each percentage once")
        total = len(self.actual_alert_percents) + len(self.forecast_alert_percents)
        _require(1 <= total <= MAX_BUDGET_NOTIFICATIONS, f"{prefix}.actual_alert_percents", total,
                 f"1 to {MAX_BUDGET_NOTIFICATIONS} alerts in total (actual plus forecast): "
                 "the AWS Budgets limit per budget")
        _require(isinstance(self.filter_by_environment_tag, bool), f"{prefix}.filter_by_environment_tag",
                 self.filter_by_environment_tag, "True or False")


@dataclass(frozen=True)
class DriftConfig:
    """The stage's own scheduled CloudFormation drift detection.

    Runs daily at ``schedule_hour_utc`` on every stack of the stage and
    notifies the alerts topic when a stack drifted or could not be checked.
    """

    enabled: bool = True
    schedule_hour_utc: int = 6
    log_retention_days: int = 90

    def validate(self, prefix: str) -> None:
        _require(isinstance(self.enabled, bool), f"{prefix}.enabled", self.enabled, "True or False")
        _require(isinstance(self.schedule_hour_utc, int) and not isinstance(self.schedule_hour_utc, bool)
                 and 0 <= self.schedule_hour_utc <= 23, f"{prefix}.schedule_hour_utc",
                 self.schedule_hour_utc, "an hour of the day, 0 to 23 (UTC)")
        _require(self.log_retention_days in LOG_RETENTION_DAYS, f"{prefix}.log_retention_days",
                 self.log_retention_days,
                 "a CloudWatch Logs retention: " + ", ".join(map(str, LOG_RETENTION_DAYS)))
