"""Physical names the stacks fix and that can outlive a ``make destroy``.

A resource with a fixed name that is still there when its stack is created
again makes the create fail with "already exists" and roll back. Most of our
resources let CloudFormation generate their names, and the log groups we name
ourselves end in their stack's UUID (``ml_stacks/log_groups.py``), so a
rebuilt stage never meets its predecessor's leftovers. The ones listed here keep a fixed name
because the service decides it (EKS writes control-plane logs to
``/aws/eks/<cluster>/cluster``; SageMaker writes endpoint logs to
``/aws/sagemaker/Endpoints/<endpoint>``) or because the stage's config asks
for it (``storage.image_repository_name``, to keep an existing repository),
or because a stack in another region must know it before it exists (the
replica buckets, ``replica_bucket_name``; they are retained like the data
they hold).

``make preflight`` finds these (and every other literal name) in the
synthesized templates and looks each one up before deploying
(``delivery/preflight/leftovers.py``; its test proves it finds every name
listed here); ``tests/unit/test_fixed_names.py`` proves the list matches every
explicitly named log group and repository in the synthesized templates.
"""

from __future__ import annotations

from dataclasses import dataclass

from ml_stacks.config import StageConfig

LOG_GROUP = "AWS::Logs::LogGroup"
ECR_REPOSITORY = "AWS::ECR::Repository"
S3_BUCKET = "AWS::S3::Bucket"
# The replica stack's buckets: construct id -> purpose in the name.
REPLICA_BUCKETS = {"AccessLogs": "access-logs", "TrainingData": "training-data",
                   "ModelArtifacts": "model-artifacts"}


@dataclass(frozen=True)
class FixedName:
    """One fixed physical name of a stage.

    ``retained``: the stack's removal policy keeps it on destroy, so it is a
    leftover after every destroy. Otherwise the stack deletes it, and it is
    a leftover only if something recreated it (a service still writing
    logs while its resource shuts down) or a destroy failed half-way.
    ``logical_id_prefix`` is the construct path's logical ID prefix, for
    ``cdk import``; ``remove`` is the command that deletes the leftover.
    """

    stage: str
    stack: str
    resource_type: str
    name: str
    retained: bool
    reason: str
    logical_id_prefix: str

    @property
    def stack_path(self) -> str:
        """The stack as ``cdk`` addresses it: ``<stage>/<stack>``."""
        return f"{self.stage}/{self.stack}"

    @property
    def remove(self) -> str:
        if self.resource_type == LOG_GROUP:
            return f"aws logs delete-log-group --log-group-name {self.name}"
        if self.resource_type == S3_BUCKET:
            return f"aws s3 rb s3://{self.name} --force (after deleting every object version)"
        return f"aws ecr delete-repository --repository-name {self.name} --force"

    @property
    def adopt(self) -> str:
        return (f"npx cdk import -c stages={self.stage} '{self.stack_path}' "
                f"(answer the prompt for {self.logical_id_prefix}* with {self.name}), then make deploy")


def gpu_agent_parameter(config: StageConfig) -> str:
    """The SSM parameter holding the stage's CloudWatch agent GPU config
    (idle stack; read by the nodes and by drift detection)."""
    return f"/{config.stack_prefix}/cloudwatch-agent/gpu"


def eks_control_plane_log_group(config: StageConfig) -> str:
    """The log group EKS writes the stage cluster's control-plane logs to."""
    return f"/aws/eks/{config.stack_prefix}/cluster"


def replica_bucket_name(config: StageConfig, purpose: str, account: str) -> str:
    """A replica bucket's name: globally unique and known before either stack
    exists (the stage, the account and the region are in it; at most 62
    characters). ``account`` may be a token (``cdk.Aws.ACCOUNT_ID``)."""
    return f"{config.stack_prefix}-{purpose}-replica-{account}-{config.storage.replication_region}"


def fixed_names(config: StageConfig) -> tuple[FixedName, ...]:
    """Every fixed physical name of ``config``'s stage that can collide on create."""
    retained = config.storage.retain
    names: list[FixedName] = []
    if config.eks.enabled:
        names.append(FixedName(
            stage=config.name, stack="eks", resource_type=LOG_GROUP,
            name=eks_control_plane_log_group(config), retained=retained,
            reason="EKS writes control-plane logs to /aws/eks/<cluster>/cluster; the stack "
                   "creates it first to give it a retention",
            logical_id_prefix="ControlPlaneLogs"))
    for model in config.serving.models:
        endpoint = f"{config.stack_prefix}-{model.name}"
        names.append(FixedName(
            stage=config.name, stack=f"serving-{model.name}", resource_type=LOG_GROUP,
            name=f"/aws/sagemaker/Endpoints/{endpoint}", retained=False,
            reason="SageMaker writes endpoint logs to /aws/sagemaker/Endpoints/<endpoint>; "
                   "it can recreate the group while the endpoint shuts down",
            logical_id_prefix=f"{model.name}Logs"))
        if model.scale_to_zero:
            names.append(FixedName(
                stage=config.name, stack=f"serving-{model.name}", resource_type=LOG_GROUP,
                name=f"/aws/sagemaker/InferenceComponents/{endpoint}", retained=False,
                reason="SageMaker writes inference component logs to "
                       "/aws/sagemaker/InferenceComponents/<component>",
                logical_id_prefix=f"{model.name}ComponentLogs"))
    if config.storage.replication_region is not None:
        for construct_id, purpose in REPLICA_BUCKETS.items():
            names.append(FixedName(
                stage=config.name, stack="replica", resource_type=S3_BUCKET,
                name=replica_bucket_name(config, purpose, "${AWS::AccountId}"), retained=retained,
                reason="the storage stack (and drift detection) in the stage's region address the "
                       "replica's buckets by name: CloudFormation passes no generated name across regions",
                logical_id_prefix=construct_id))
    repository = config.storage.image_repository_name
    if repository is not None:
        names.append(FixedName(
            stage=config.name, stack="storage", resource_type=ECR_REPOSITORY,
            name=repository, retained=retained,
            reason="storage.image_repository_name keeps an existing repository's name",
            logical_id_prefix="Images"))
    return tuple(names)
