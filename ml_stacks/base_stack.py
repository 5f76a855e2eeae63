"""What every stack of a stage shares: naming, environment and AZs."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_logs as logs
from constructs import Construct

from ml_stacks.config import LOG_RETENTION_DAYS, StageConfig


def log_retention(days: int) -> logs.RetentionDays:
    """The ``aws_logs.RetentionDays`` member for a validated retention in days."""
    return getattr(logs.RetentionDays, LOG_RETENTION_DAYS[days])


class StageStack(cdk.Stack):
    """A stack of one stage, named ``ml-<stage>-<construct id>``.

    The AZs come from the stage config instead of a lookup, so synth is
    offline and deterministic with or without an account (without this
    override a stack with an account reports AZ names that do not exist).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: StageConfig,
        description: str,
        termination_protection: bool = False,
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            stack_name=f"{config.stack_prefix}-{construct_id}",
            env=cdk.Environment(account=config.account, region=config.region),
            description=description,
            termination_protection=termination_protection,
        )
        self.config = config
        # Stateful resources follow the stage's retain flag; so does anything
        # holding data worth keeping (flow logs).
        self.removal_policy = (
            cdk.RemovalPolicy.RETAIN if config.storage.retain else cdk.RemovalPolicy.DESTROY
        )

    @property
    def availability_zones(self) -> list[str]:
        return list(self.config.network.availability_zones)
