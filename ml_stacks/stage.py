"""One deployable stage: ``cdk deploy '<stage>/*'`` deploys exactly its stacks."""

from __future__ import annotations

import aws_cdk as cdk
from constructs import Construct

from constructs_lib.tagging import apply_tags
from ml_stacks.config import StageConfig
from ml_stacks.eks_stack import EksStack
from ml_stacks.network_stack import NetworkStack
from ml_stacks.ops_stack import OpsStack
from ml_stacks.storage_stack import StorageStack


class MlStage(cdk.Stage):
    """The stacks of one stage, wired with objects, never names or ARNs.

    Every taggable resource below it carries the stage's cost tags plus
    ``Environment`` and ``ManagedBy``.
    """

    def __init__(self, scope: Construct, *, config: StageConfig) -> None:
        super().__init__(scope, config.name,
                         env=cdk.Environment(account=config.account, region=config.region))
        self.config = config
        apply_tags(self, stage_tags(config))

        self.network = NetworkStack(self, "network", config=config)
        self.storage = StorageStack(self, "storage", config=config)
        self.ops = OpsStack(self, "ops", config=config, key=self.storage.key)
        self.eks: EksStack | None = None
        if config.eks.enabled:
            self.eks = EksStack(self, "eks", config=config, vpc=self.network.vpc,
                                key=self.storage.key)

    @property
    def stacks(self) -> list[cdk.Stack]:
        return [c for c in self.node.children if isinstance(c, cdk.Stack)]


def stage_tags(config: StageConfig) -> dict[str, str]:
    """The tags every taggable resource of ``config``'s stage carries."""
    return {"Environment": config.name, **config.tags.as_dict(), "ManagedBy": "cdk"}
