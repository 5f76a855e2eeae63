"""One deployable stage: ``cdk deploy '<stage>/*'`` deploys exactly its stacks."""

from __future__ import annotations

import aws_cdk as cdk
from constructs import Construct

from constructs_lib.tagging import apply_tags
from ml_stacks.config import ModelConfig, StageConfig
from ml_stacks.eks_stack import EksStack
from ml_stacks.idle_stack import IdleStack
from ml_stacks.network_stack import NetworkStack
from ml_stacks.ops_stack import OpsStack
from ml_stacks.replica_stack import ReplicaStack
from ml_stacks.serving_names import SHARED_STACK_ID, model_stack_id
from ml_stacks.serving_stack import ModelServingStack, ServingStack
from ml_stacks.storage_stack import StorageStack
from ml_stacks.training_stack import TrainingStack


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

        # The replica (another region) comes first: storage replicates into it.
        self.replica: ReplicaStack | None = None
        if config.storage.replication_region is not None:
            self.replica = ReplicaStack(self, "replica", config=config)
        # Storage before the stage's own stacks: every other stack encrypts
        # with its keys, and it depends on none of them (only on the replica).
        self.storage = StorageStack(self, "storage", config=config, replica=self.replica)
        storage = self.storage
        self.network = NetworkStack(self, "network", config=config, logs_key=storage.logs_key)
        self.ops = OpsStack(self, "ops", config=config, messaging_key=storage.messaging_key,
                            logs_key=storage.logs_key, buckets=storage.buckets,
                            other_region_stacks=[self.replica] if self.replica else [])
        self.idle = IdleStack(self, "idle", config=config, alerts_topic=self.ops.alerts_topic,
                              logs_key=storage.logs_key)
        self.training: TrainingStack | None = None
        if config.training.enabled:
            self.training = TrainingStack(
                self, "training", config=config,
                vpc=self.network.vpc,
                data_key=storage.data_key,
                messaging_key=storage.messaging_key,
                logs_key=storage.logs_key,
                training_data_bucket=self.storage.training_data_bucket,
                checkpoint_bucket=self.storage.checkpoint_bucket,
                image_repository=self.storage.image_repository,
                alerts_topic=self.ops.alerts_topic,
                gpu_metrics=self.idle.gpu_metrics,
                idle_shutdown=self.idle.shutdown,
                endpoint_security_group=self.network.endpoint_security_group,
            )
        self.serving = ServingStack(self, SHARED_STACK_ID, config=config)
        self.model_stacks: dict[str, ModelServingStack] = {}
        for model in config.serving.models:
            self.model_stacks[model.name] = self._model_stack(config, model)
        self.eks: EksStack | None = None
        if config.eks.enabled:
            self.eks = EksStack(self, "eks", config=config, vpc=self.network.vpc,
                                data_key=storage.data_key, logs_key=storage.logs_key)

    def _model_stack(self, config: StageConfig, model: ModelConfig) -> ModelServingStack:
        storage = self.storage
        stack = ModelServingStack(
            self, model_stack_id(model.name), config=config, model=model,
            vpc=self.network.vpc,
            data_key=storage.data_key,
            capture_key=storage.capture_key,
            logs_key=storage.logs_key,
            model_artifacts_bucket=storage.model_artifacts_bucket,
            data_capture_bucket=storage.data_capture_bucket,
            image_repository=storage.image_repository,
            alerts_topic=self.ops.alerts_topic,
        )
        # Deploy order only (no reference, no template change): the shared
        # stack first, so a stage moving from the single serving stack has
        # deleted the old endpoints before a model stack creates them again
        # under the same names (docs/models.md, migration).
        stack.add_stack_dependency(self.serving)
        return stack

    @property
    def stacks(self) -> list[cdk.Stack]:
        return [c for c in self.node.children if isinstance(c, cdk.Stack)]


def stage_tags(config: StageConfig) -> dict[str, str]:
    """The tags every taggable resource of ``config``'s stage carries."""
    return {"Environment": config.name, **config.tags.as_dict(), "ManagedBy": "cdk"}
