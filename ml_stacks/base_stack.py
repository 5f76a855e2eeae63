"""What every stack of a stage shares: naming, environment and AZs."""

from __future__ import annotations

import aws_cdk as cdk
from constructs import Construct

from ml_stacks.config import StageConfig


class StageStack(cdk.Stack):
    """A stack of one stage, named ``ml-<stage>-<construct id>``.

    The AZs come from the stage config instead of a lookup, so synth is
    offline and deterministic with or without an account (without this
    override a stack with an account reports placeholder AZs).
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
