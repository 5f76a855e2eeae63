"""Idle stack: never pay for an idle GPU.

Owns the GPU metrics agent config (SSM) and the idle-shutdown function with
its schedule and job-completion rule, on a bus of its own that only the
training stack's instance role may put events on. Fleets plug in from their own stack:

    idle.gpu_metrics.install_on(user_data=..., role=...)   # agent on every node
    idle.shutdown.enroll(group)                             # opt-in and stage tags
    idle.shutdown.accept_completion_only_from(stack, [role])  # who may say "job finished"
    add_off_hours_schedule(group, ...)                      # constructs_lib.off_hours
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from constructs import Construct

from constructs_lib.gpu_metrics import GpuMetricsAgent
from constructs_lib.idle_shutdown import IdleShutdown
from ml_stacks.base_stack import StageStack, log_retention
from ml_stacks.fixed_names import gpu_agent_parameter
from ml_stacks.config import StageConfig
from ml_stacks.log_groups import log_group_name


class IdleStack(StageStack):
    """Exposes ``gpu_metrics`` (GpuMetricsAgent) and ``shutdown`` (IdleShutdown)."""

    def __init__(self, scope: Construct, construct_id: str, *, config: StageConfig,
                 alerts_topic: sns.ITopic, logs_key: kms.IKey) -> None:
        super().__init__(scope, construct_id, config=config,
                         description=f"ml-infra {config.name}: idle-GPU shutdown, GPU metrics config")
        idle = config.idle_shutdown
        self.gpu_metrics = GpuMetricsAgent(
            self, "GpuMetrics", parameter_name=gpu_agent_parameter(config))
        self.shutdown = IdleShutdown(
            self,
            "IdleShutdown",
            alerts_topic=alerts_topic,
            stage=config.name,
            threshold_percent=idle.gpu_utilization_threshold_percent,
            window=cdk.Duration.minutes(idle.window_minutes),
            launch_grace=cdk.Duration.minutes(idle.launch_grace_minutes),
            schedule_rate=cdk.Duration.minutes(idle.schedule_rate_minutes),
            dry_run=idle.dry_run,
            enabled=idle.enabled,
            opt_in_tag_key=idle.opt_in_tag_key,
            opt_in_tag_value=idle.opt_in_tag_value,
            savings_horizon_hours=idle.savings_horizon_hours,
            log_retention=log_retention(config.network.flow_log_retention_days),
            removal_policy=self.removal_policy,
            log_group_name=log_group_name(self, config, "idle-shutdown"),
            log_key=logs_key,
        )
        if not config.training.enabled:
            # No fleet, no producer: the bus refuses every job-finished event.
            self.shutdown.accept_completion_only_from(self, [])
        cdk.CfnOutput(self, "GpuAgentConfigParameter",
                      value=self.gpu_metrics.parameter.parameter_name,
                      description="CloudWatch agent config for GPU nodes (fetch-config -c ssm:<name>)")
        cdk.CfnOutput(self, "IdleShutdownFunctionName", value=self.shutdown.function.function_name)
