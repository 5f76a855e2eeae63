"""Typed, frozen stage configuration, one module per capability.

One ``StageConfig`` per stage (``stage.py``). Every section validates itself
when it is built, so a bad value fails before any construct exists, with a
message that names the field, the value and what is allowed. Each capability's
section lives in its own module (``network``, ``storage``, ``ops``,
``training``, ``idle``, ``serving``, ``eks``); the values this repository
deploys live in ``stages.py``, and adding a stage is an edit there alone.

Nothing here reads anything global: ``app.py`` alone reads CDK context and the
environment and passes plain values in.
"""

from ml_stacks.config.base import (  # noqa: F401
    ConfigError, LOG_RETENTION_DAYS,
)
from ml_stacks.config.network import (  # noqa: F401
    INTERFACE_ENDPOINTS, PRIVATE_GPU_NODE_ENDPOINTS, VPC_PREFIX_MIN, VPC_PREFIX_MAX,
    MAX_AZS, GATEWAY_ENDPOINT_PREFIX_LISTS, NetworkConfig, zone_id_prefix,
)
from ml_stacks.config.storage import (  # noqa: F401
    StorageConfig,
)
from ml_stacks.config.ops import (  # noqa: F401
    AlertsConfig, MAX_BUDGET_NOTIFICATIONS, BudgetConfig, DriftConfig,
)
from ml_stacks.config.training import (  # noqa: F401
    TRAINING_GPU_FAMILIES, EFA_INSTANCE_TYPES, GPUS_PER_INSTANCE_TYPE, MAX_LEASE_SECONDS,
    MAX_RUN_DURATION_MINUTES, TRAINING_SIGNALS,
    REBALANCE_ACTIONS, HUNG_ACTIONS, MAX_HUNG_AFTER_MINUTES, ROOT_DEVICE_NAMES,
    CHECKPOINT_UPLOAD_MARGIN_SECONDS, HEARTBEAT_TIMEOUT_MIN_SECONDS,
    HEARTBEAT_TIMEOUT_MAX_SECONDS, GPU_METRICS_DEFINITION, gpu_metric_period_seconds,
    FLEET_INTERFACE_ENDPOINTS, EGRESS_PROTOCOLS, INTERNET_HTTPS, EgressDestination, TrainingConfig,
)
from ml_stacks.config.idle import (  # noqa: F401
    IdleShutdownConfig,
)
from ml_stacks.config.serving import (  # noqa: F401
    MODEL_NAME_MAX, IMAGE_URI_RE, DEPLOYMENT_STRATEGIES, MAX_ENVIRONMENT, MAX_CONTENT_TYPES,
    MAX_LATENCY_MS, MAX_CONCURRENT_REQUESTS_TARGET, MODEL_PACKAGE_GROUP_RE,
    ModelConfig, ServingConfig, ShadowConfig,
)
from ml_stacks.config.eks import (  # noqa: F401
    GPU_INSTANCE_FAMILIES, GPU_AMI_TYPES, CPU_AMI_TYPES, AMI_TYPES_NEEDING_DEVICE_PLUGIN,
    BOTTLEROCKET_DATA_DEVICE, ROOT_DEVICE, KUBERNETES_VERSIONS, ADDON_NAMES,
    CLOUDWATCH_ADDON, NODE_MONITORING_ADDON, ADDONS_NEEDING_NODES, MAX_NODEGROUP_SIZE,
    NodeRepairConfig, DISK_SIZE_GIB_MIN, DISK_SIZE_GIB_MAX, instance_family,
    NodegroupConfig, ServingPairConfig, AddonVersions, EksConfig,
)
from ml_stacks.config.stage import (  # noqa: F401
    STAGE_NAME_MAX, StageTags, StageConfig,
)
from ml_stacks.config.stages import (  # noqa: F401
    pytorch_inference_image, PYTORCH_CPU_INFERENCE_IMAGE, PYTORCH_GPU_INFERENCE_IMAGE, DEFAULT_TAGS, STAGES,
    PUBLIC_EKS_ENDPOINT_STAGES, default_configs, select_stages,
)

__all__ = [
    "ConfigError", "LOG_RETENTION_DAYS", "INTERFACE_ENDPOINTS",
    "PRIVATE_GPU_NODE_ENDPOINTS", "VPC_PREFIX_MIN", "VPC_PREFIX_MAX", "MAX_AZS",
    "NetworkConfig", "zone_id_prefix", "GATEWAY_ENDPOINT_PREFIX_LISTS", "FLEET_INTERFACE_ENDPOINTS",
    "EGRESS_PROTOCOLS", "INTERNET_HTTPS", "EgressDestination", "StorageConfig", "AlertsConfig",
    "MAX_BUDGET_NOTIFICATIONS", "BudgetConfig", "DriftConfig", "TRAINING_GPU_FAMILIES",
    "EFA_INSTANCE_TYPES", "GPUS_PER_INSTANCE_TYPE", "MAX_LEASE_SECONDS",
    "MAX_RUN_DURATION_MINUTES", "TRAINING_SIGNALS",
    "REBALANCE_ACTIONS", "HUNG_ACTIONS", "MAX_HUNG_AFTER_MINUTES", "ROOT_DEVICE_NAMES",
    "CHECKPOINT_UPLOAD_MARGIN_SECONDS", "HEARTBEAT_TIMEOUT_MIN_SECONDS",
    "HEARTBEAT_TIMEOUT_MAX_SECONDS", "GPU_METRICS_DEFINITION", "gpu_metric_period_seconds",
    "TrainingConfig", "IdleShutdownConfig", "MODEL_NAME_MAX", "IMAGE_URI_RE",
    "DEPLOYMENT_STRATEGIES", "MAX_ENVIRONMENT", "MAX_CONTENT_TYPES", "MAX_LATENCY_MS",
    "ModelConfig", "ServingConfig", "ShadowConfig", "MAX_CONCURRENT_REQUESTS_TARGET",
    "MODEL_PACKAGE_GROUP_RE", "GPU_INSTANCE_FAMILIES", "GPU_AMI_TYPES",
    "CPU_AMI_TYPES", "AMI_TYPES_NEEDING_DEVICE_PLUGIN", "BOTTLEROCKET_DATA_DEVICE",
    "ROOT_DEVICE", "KUBERNETES_VERSIONS", "ADDON_NAMES", "CLOUDWATCH_ADDON",
    "NODE_MONITORING_ADDON", "ADDONS_NEEDING_NODES", "MAX_NODEGROUP_SIZE",
    "NodeRepairConfig", "DISK_SIZE_GIB_MIN", "DISK_SIZE_GIB_MAX", "instance_family",
    "NodegroupConfig", "ServingPairConfig", "AddonVersions", "EksConfig", "STAGE_NAME_MAX", "StageTags",
    "StageConfig", "pytorch_inference_image", "PYTORCH_CPU_INFERENCE_IMAGE", "PYTORCH_GPU_INFERENCE_IMAGE",
    "DEFAULT_TAGS", "STAGES", "PUBLIC_EKS_ENDPOINT_STAGES", "default_configs", "select_stages",
]
