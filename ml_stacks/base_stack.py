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
        region: str | None = None,
    ) -> None:
        # ``region`` (default: the stage's) only for a stack that must live
        # elsewhere, such as the storage replica.
        super().__init__(
            scope,
            construct_id,
            stack_name=f"{config.stack_prefix}-{construct_id}",
            env=cdk.Environment(account=config.account, region=region or config.region),
            description=description,
            termination_protection=termination_protection,
        )
        self.config = config
        # Stateful resources follow the stage's retain flag; so does anything
        # holding data worth keeping (flow logs).
        self.removal_policy = (
            cdk.RemovalPolicy.RETAIN if config.storage.retain else cdk.RemovalPolicy.DESTROY
        )

    def deletion_exempt_role_arns(self) -> list[str]:
        """The roles a protected bucket still lets destroy versions or lift
        the protection: the stage's break-glass role (by name, at any IAM
        path, so an IAM Identity Center permission-set role matches too) and
        the CDK CloudFormation execution role that deploys this stack."""
        name = self.config.storage.break_glass_role_name
        role = f"arn:{cdk.Aws.PARTITION}:iam::{cdk.Aws.ACCOUNT_ID}:role"
        synthesizer = self.synthesizer
        assert isinstance(synthesizer, cdk.DefaultStackSynthesizer)
        return [cdk.Fn.sub(synthesizer.cloud_formation_execution_role_arn),
                f"{role}/{name}", f"{role}/*/{name}"]

    @property
    def has_functions(self) -> bool:
        """Whether the stack holds a Lambda function, its own or a CDK
        provider's (a bucket that empties itself on destroy)."""
        return any(isinstance(child, cdk.CfnResource) and child.cfn_resource_type == "AWS::Lambda::Function"
                   for child in self.node.find_all())

    @property
    def availability_zones(self) -> list[str]:
        return list(self.config.network.availability_zones)
