"""The stages this repository deploys, and their values.

Adding a stage (say ``perf``, in its own account and region) is an edit here
and nothing else: write a ``_perf_config()`` like the ones below and add it
to ``STAGES``. No stack code changes; the tests, ``make synth`` and every
command that takes ``STAGE=`` pick it up.

Each stage names its own ``account`` and ``region``. ``account=None`` keeps the
stage account-agnostic: it deploys into whichever account the credentials
belong to. Set it to the 12-digit ID and ``make deploy`` refuses credentials
of any other account. ``-c account=...`` still overrides it (CI does).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterable, Mapping

from ml_stacks.config.base import _require
from ml_stacks.config.eks import EksConfig, NodegroupConfig, ServingPairConfig
from ml_stacks.config.idle import IdleShutdownConfig
from ml_stacks.config.network import NetworkConfig, PRIVATE_GPU_NODE_ENDPOINTS
from ml_stacks.config.ops import BudgetConfig, DriftConfig
from ml_stacks.config.serving import ModelConfig, ServingConfig
from ml_stacks.config.stage import StageConfig, StageTags
from ml_stacks.config.storage import StorageConfig
from ml_stacks.config.training import FLEET_INTERFACE_ENDPOINTS, TrainingConfig


# AWS Deep Learning Containers for PyTorch inference (SageMaker flavour). A
# model.tar.gz for them holds the weights and code/inference.py
# (model_fn/predict_fn). SageMaker pulls only from the endpoint's own region.
_PYTORCH_INFERENCE_TAGS = {
    False: "2.6.0-cpu-py312-ubuntu22.04-sagemaker",
    True: "2.6.0-gpu-py312-cu124-ubuntu22.04-sagemaker",
}
# The account AWS publishes the Deep Learning Containers from in most
# commercial regions; AWS's "Available Deep Learning Containers Images" page
# names the few regions (opt-in ones such as ap-east-1) that use another.
_DLC_ACCOUNT = "763104351884"


def pytorch_inference_image(region: str, *, gpu: bool) -> str:
    """The PyTorch inference container in ``region`` (CPU or GPU build)."""
    return (f"{_DLC_ACCOUNT}.dkr.ecr.{region}.amazonaws.com/"
            f"pytorch-inference:{_PYTORCH_INFERENCE_TAGS[gpu]}")


PYTORCH_CPU_INFERENCE_IMAGE = pytorch_inference_image("us-east-1", gpu=False)
PYTORCH_GPU_INFERENCE_IMAGE = pytorch_inference_image("us-east-1", gpu=True)


DEFAULT_TAGS = StageTags(
    team="ml-platform",
    project="ml-infra",
    cost_center="ml-0001",
    repository="ml-infra-cdk",
)


def _dev_config() -> StageConfig:
    """Dev: small, scale-to-zero serving, the example model, off at night."""
    region = "us-east-1"
    return StageConfig(
        name="dev",
        account=None,
        region=region,
        network=NetworkConfig(
            vpc_cidr="10.10.0.0/16",
            availability_zones=("us-east-1a", "us-east-1b"),
            nat_gateways=1,
            # Each interface endpoint costs ~$7.3/month per AZ: in dev the one
            # NAT gateway is cheaper.
            interface_endpoints=(),
            flow_log_retention_days=30,
        ),
        storage=StorageConfig(retain=False, checkpoint_expiration_days=7,
                              ecr_immutable_tags=False, data_capture_expiration_days=30),
        # Two small GPUs at most: dev proves the interruption flow, not scale.
        # Egress: the default, HTTPS anywhere through NAT (dev has no
        # interface endpoints; pip install and public registries work).
        training=TrainingConfig(max_capacity=2, log_retention_days=30, runs_log_retention_days=30),
        # Nobody trains in dev at night: the fleet goes to 0 at 20:00 on
        # weekdays and stays there over the weekend.
        idle_shutdown=IdleShutdownConfig(
            off_hours_scale_in_cron="0 20 * * MON-FRI",
            off_hours_scale_out_cron="0 7 * * MON-FRI",
        ),
        # Dev serves on CPU through a scale-to-zero inference component: an
        # idle dev endpoint costs nothing, the first request after idling
        # waits for an instance. It serves the example model shipped in
        # examples/models/sentiment, so a fresh account needs no upload.
        serving=ServingConfig(models=(
            ModelConfig(
                name="classifier",
                image_uri=pytorch_inference_image(region, gpu=False),
                example_model="sentiment",
                instance_type="ml.m5.large",
                initial_instance_count=1,
                min_instance_count=0,
                max_instance_count=1,
                scale_to_zero=True,
                component_cpu_cores=1,
                component_memory_mb=2048,
                capture_sampling_percent=100,
                deployment="all_at_once",
                deployment_wait_seconds=0,
                deployment_termination_wait_seconds=0,
            ),
        ), log_retention_days=14),
        # Small, and no GPU runs unless a workload scales a group up.
        eks=EksConfig(
            control_plane_log_retention_days=30,
            system=NodegroupConfig(instance_types=("m7i.large",), min_size=1, desired_size=1,
                                   max_size=2, ami_type="BOTTLEROCKET_x86_64", disk_size_gib=40),
            gpu_inference=NodegroupConfig(instance_types=("g6.xlarge", "g5.xlarge"), min_size=0,
                                          desired_size=0, max_size=2,
                                          ami_type="BOTTLEROCKET_x86_64_NVIDIA", disk_size_gib=100),
            gpu_training=NodegroupConfig(instance_types=("g6.12xlarge", "g6e.12xlarge", "g5.12xlarge"),
                                         min_size=0, desired_size=0, max_size=2,
                                         ami_type="BOTTLEROCKET_x86_64_NVIDIA", disk_size_gib=200),
        ),
        budget=BudgetConfig(monthly_limit_usd=1500),
        drift=DriftConfig(log_retention_days=30),
        tags=DEFAULT_TAGS,
    )


def _staging_config() -> StageConfig:
    """Staging: what prod runs, on the smallest fleet that shows a blue/green deployment."""
    region = "us-east-1"
    return StageConfig(
        name="staging",
        account=None,
        region=region,
        network=NetworkConfig(
            vpc_cidr="10.20.0.0/16",
            availability_zones=("us-east-1a", "us-east-1b", "us-east-1c"),
            nat_gateways=1,
            interface_endpoints=("ecr.api", "ecr.dkr", "sts", "logs"),
            flow_log_retention_days=90,
        ),
        storage=StorageConfig(retain=True, ecr_immutable_tags=True),
        # Egress: the default, HTTPS anywhere through NAT: staging has four
        # interface endpoints, not the ten the fleet would need without it.
        training=TrainingConfig(max_capacity=4, log_retention_days=90),
        idle_shutdown=IdleShutdownConfig(
            off_hours_scale_in_cron="0 22 * * MON-FRI",
            off_hours_scale_out_cron="0 6 * * MON-FRI",
        ),
        # Staging runs what prod runs, on the smallest fleet that still shows
        # a blue/green deployment. Its artifact is the team's own upload
        # (make preflight fails until it exists); the smoke payload fits the
        # example archive the README suggests as a stand-in until then.
        serving=ServingConfig(models=(
            ModelConfig(
                name="classifier",
                image_uri=pytorch_inference_image(region, gpu=True),
                model_data_key="classifier/model.tar.gz",
                smoke_payload="examples/models/sentiment/payload.json",
                instance_type="ml.g5.xlarge",
                initial_instance_count=1,
                min_instance_count=1,
                max_instance_count=2,
                gpu_utilization_target_percent=70,
                capture_sampling_percent=50,
                deployment="all_at_once",
                deployment_wait_seconds=0,
                deployment_termination_wait_seconds=300,
            ),
        ), log_retention_days=30),
        eks=EksConfig(
            system=NodegroupConfig(instance_types=("m7i.large",), min_size=2, desired_size=2,
                                   max_size=3, ami_type="BOTTLEROCKET_x86_64", disk_size_gib=40),
            gpu_inference=NodegroupConfig(instance_types=("g6.xlarge", "g5.xlarge"), min_size=1,
                                          desired_size=1, max_size=2,
                                          ami_type="BOTTLEROCKET_x86_64_NVIDIA", disk_size_gib=100),
            gpu_training=NodegroupConfig(instance_types=("g6.12xlarge", "g6e.12xlarge", "g5.12xlarge"),
                                         min_size=0, desired_size=0, max_size=4,
                                         ami_type="BOTTLEROCKET_x86_64_NVIDIA", disk_size_gib=200),
        ),
        budget=BudgetConfig(monthly_limit_usd=5000),
        drift=DriftConfig(log_retention_days=90),
        tags=DEFAULT_TAGS,
    )


def _prod_eks() -> EksConfig:
    """Prod's cluster: three system nodes, two GPU inference nodes at least,
    training and burst groups that scale from zero."""
    return EksConfig(
        control_plane_log_retention_days=365,
        system=NodegroupConfig(instance_types=("m7i.large", "m6i.large"), min_size=2,
                               desired_size=3, max_size=4, ami_type="BOTTLEROCKET_x86_64",
                               disk_size_gib=40),
        gpu_inference=NodegroupConfig(instance_types=("g6.2xlarge", "g5.2xlarge"), min_size=2,
                                      desired_size=2, max_size=6,
                                      ami_type="BOTTLEROCKET_x86_64_NVIDIA", disk_size_gib=150),
        gpu_training=NodegroupConfig(instance_types=("g6e.12xlarge", "g6.12xlarge", "g5.12xlarge",
                                                     "p4d.24xlarge"),
                                     min_size=0, desired_size=0, max_size=8,
                                     ami_type="BOTTLEROCKET_x86_64_NVIDIA", disk_size_gib=500),
        serving_pair=ServingPairConfig(
            baseline=NodegroupConfig(instance_types=("g6.2xlarge",), min_size=1, desired_size=1,
                                     max_size=2, ami_type="BOTTLEROCKET_x86_64_NVIDIA",
                                     disk_size_gib=150),
            burst=NodegroupConfig(instance_types=("g6.2xlarge", "g5.2xlarge", "g6e.2xlarge"),
                                  min_size=0, desired_size=0, max_size=8,
                                  ami_type="BOTTLEROCKET_x86_64_NVIDIA", disk_size_gib=150),
        ),
    )


def _prod_config() -> StageConfig:
    """Prod: retained, private, on-demand coordinator, canary deployments."""
    region = "us-east-1"
    return StageConfig(
        name="prod",
        account=None,
        region=region,
        network=NetworkConfig(
            vpc_cidr="10.30.0.0/16",
            availability_zones=("us-east-1a", "us-east-1b", "us-east-1c"),
            nat_gateways=3,
            # Every API a private GPU node calls, the training fleet's
            # included: prod's fleet has no internet egress (training.egress).
            interface_endpoints=tuple(dict.fromkeys(PRIVATE_GPU_NODE_ENDPOINTS + FLEET_INTERFACE_ENDPOINTS)),
            flow_log_retention_days=365,
        ),
        # Prod's data and models survive a mistake and a region: deletion
        # protection (docs/security.md) and a replica in us-west-2.
        storage=StorageConfig(retain=True, ecr_immutable_tags=True, deletion_protection=True,
                              break_glass_role_name="ml-prod-break-glass",
                              replication_region="us-west-2"),
        training=TrainingConfig(
            instance_types=("g5.2xlarge", "g6.2xlarge", "g5.4xlarge", "g6.4xlarge",
                            "g6e.2xlarge"),
            max_capacity=16,
            # One on-demand node keeps a long run's coordinator off the spot market.
            on_demand_base=1,
            root_volume_size_gib=500,
            root_volume_iops=6000,
            root_volume_throughput_mibps=500,
            log_retention_days=365,
            runs_log_retention_days=365,
            # Endpoints only: training data never leaves through NAT. A run
            # that needs a package mirror or registry adds it here
            # (EgressDestination), reviewed like any other change.
            egress=(),
        ),
        # Long prod runs may sit on a barrier for a while: a longer window,
        # and no off-hours schedule.
        idle_shutdown=IdleShutdownConfig(window_minutes=30, launch_grace_minutes=30),
        # Two instances in two AZs so one failure never takes the endpoint
        # down; new versions take 10% of capacity for 10 minutes first.
        serving=ServingConfig(models=(
            ModelConfig(
                name="classifier",
                image_uri=pytorch_inference_image(region, gpu=True),
                # Uploaded by the model's owner before the first deploy
                # (checked by make preflight); replace the payload with one
                # your model answers.
                model_data_key="classifier/model.tar.gz",
                smoke_payload="examples/models/sentiment/payload.json",
                instance_type="ml.g5.xlarge",
                initial_instance_count=2,
                min_instance_count=2,
                max_instance_count=6,
                gpu_utilization_target_percent=70,
                capture_sampling_percent=10,
                deployment="canary",
                deployment_step_percent=10,
                deployment_wait_seconds=600,
                deployment_termination_wait_seconds=600,
            ),
        ), log_retention_days=90),
        eks=_prod_eks(),
        budget=BudgetConfig(monthly_limit_usd=60000),
        drift=DriftConfig(log_retention_days=365),
        tags=DEFAULT_TAGS,
    )


# Every stage, in promotion order.
STAGES: Mapping[str, Callable[[], StageConfig]] = {
    "dev": _dev_config,
    "staging": _staging_config,
    "prod": _prod_config,
}
# The stages whose EKS API endpoint ``-c eks_public_access_cidrs=...`` may open
# publicly (to the team's VPN or office egress); every other stage's endpoint
# stays private whatever the context says.
PUBLIC_EKS_ENDPOINT_STAGES: tuple[str, ...] = ("dev",)


def default_configs(*, account: str | None = None,
                    eks_public_access_cidrs: tuple[str, ...] = ()) -> dict[str, StageConfig]:
    """Every stage as this repository deploys it.

    ``account`` (``-c account=...``) overrides each stage's own account.
    ``eks_public_access_cidrs`` (``-c eks_public_access_cidrs=...``) opens the
    EKS API endpoint of the ``PUBLIC_EKS_ENDPOINT_STAGES`` publicly to those
    CIDRs only; without it every endpoint is private.
    """
    configs = {name: build() for name, build in STAGES.items()}
    for name, config in configs.items():
        if account:
            config = config.with_account(account)
        if eks_public_access_cidrs and name in PUBLIC_EKS_ENDPOINT_STAGES:
            config = replace(config, eks=replace(
                config.eks, public_access_cidrs=tuple(eks_public_access_cidrs)))
        configs[name] = config
    return configs


def select_stages(configs: Mapping[str, StageConfig], requested: str | Iterable[str] | None
                  ) -> list[StageConfig]:
    """The configs named by ``-c stages=...`` in stage order; all when None/empty."""
    if requested is None:
        return list(configs.values())
    names = [n.strip() for n in (requested.split(",") if isinstance(requested, str) else requested)]
    names = [n for n in names if n]
    if not names:
        return list(configs.values())
    for name in names:
        _require(name in configs, "stages", name,
                 "a comma-separated list of " + ", ".join(configs))
    return [c for n, c in configs.items() if n in names]
