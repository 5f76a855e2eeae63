"""A monthly AWS Budgets cost budget that alerts an SNS topic."""

from __future__ import annotations

from typing import Mapping, Sequence

from aws_cdk import aws_budgets as budgets
from aws_cdk import aws_sns as sns
from constructs import Construct


class StageBudget(Construct):
    """A monthly cost budget of ``monthly_limit_usd`` with an alert to
    ``alerts_topic`` at each of ``actual_alert_percents`` (actual spend) and
    ``forecast_alert_percents`` (forecast spend) of the limit.

    ``cost_tags`` restricts the budget to costs carrying all those tags
    (cost allocation tags must be activated in Billing); empty: the whole
    account. The topic must let ``budgets.amazonaws.com`` publish and use
    its key.

    Attributes: ``budget`` (``budgets.CfnBudget``), ``budget_name``.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        budget_name: str,
        monthly_limit_usd: int,
        alerts_topic: sns.ITopic,
        actual_alert_percents: Sequence[int] = (80, 100),
        forecast_alert_percents: Sequence[int] = (100,),
        cost_tags: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.budget_name = budget_name
        subscribers = [budgets.CfnBudget.SubscriberProperty(
            address=alerts_topic.topic_arn, subscription_type="SNS")]

        def alert(kind: str, percent: int) -> budgets.CfnBudget.NotificationWithSubscribersProperty:
            return budgets.CfnBudget.NotificationWithSubscribersProperty(
                notification=budgets.CfnBudget.NotificationProperty(
                    comparison_operator="GREATER_THAN",
                    notification_type=kind,
                    threshold=percent,
                    threshold_type="PERCENTAGE",
                ),
                subscribers=subscribers,
            )

        cost_filters = None
        if cost_tags:
            cost_filters = {"TagKeyValue": [f"user:{k}${v}" for k, v in sorted(cost_tags.items())]}
        self.budget = budgets.CfnBudget(
            self,
            "Resource",
            budget=budgets.CfnBudget.BudgetDataProperty(
                budget_name=budget_name,
                budget_type="COST",
                time_unit="MONTHLY",
                budget_limit=budgets.CfnBudget.SpendProperty(amount=monthly_limit_usd, unit="USD"),
                cost_filters=cost_filters,
            ),
            notifications_with_subscribers=[
                *(alert("ACTUAL", p) for p in actual_alert_percents),
                *(alert("FORECASTED", p) for p in forecast_alert_percents),
            ],
        )
