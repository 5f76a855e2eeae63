"""Training stack: the GPU fleet, its interruption handling, the node agent and the runs it carries."""

from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from constructs import Construct

from constructs_lib.gpu_metrics import GpuMetricsAgent
from constructs_lib.gpu_training_fleet import FleetEgress, GpuTrainingFleet
from constructs_lib.idle_shutdown import IdleShutdown
from constructs_lib.interruption_handler import InterruptionHandler
from constructs_lib.node_agent import NodeAgent
from constructs_lib.off_hours import add_off_hours_schedule
from constructs_lib.runs_capacity import RunsCapacity
from constructs_lib.training_runs import TrainingRuns
from ml_stacks.base_stack import StageStack, log_retention
from ml_stacks.config import GATEWAY_ENDPOINT_PREFIX_LISTS, StageConfig
from ml_stacks.log_groups import log_group_name
from ml_stacks.pins import training_ami

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class TrainingStack(StageStack):
    """Exposes ``fleet`` (``GpuTrainingFleet``), ``interruption_handler``,
    ``runs`` (``TrainingRuns``), ``runs_capacity`` (``RunsCapacity``) and
    ``node_agent``.

    The fleet is wired into idle shutdown: ``gpu_metrics`` installs the GPU
    CloudWatch agent on its nodes and ``idle_shutdown`` enrolls its group;
    when no run is left, a ``Training Job Finished`` event on idle
    shutdown's own bus lets it scale the group to its minimum; only the
    fleet's instance role may put events on that bus.

    The fleet's egress (``fleet_egress``): HTTPS to the VPC's interface
    endpoints (``endpoint_security_group``, None when the VPC has none) and
    to the S3 and DynamoDB gateway endpoints, plus ``training.egress``.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: StageConfig,
        vpc: ec2.IVpc,
        data_key: kms.IKey,
        messaging_key: kms.IKey,
        logs_key: kms.IKey,
        training_data_bucket: s3.IBucket,
        checkpoint_bucket: s3.IBucket,
        image_repository: ecr.IRepository,
        alerts_topic: sns.ITopic,
        gpu_metrics: GpuMetricsAgent,
        idle_shutdown: IdleShutdown,
        endpoint_security_group: ec2.ISecurityGroup | None = None,
    ) -> None:
        super().__init__(scope, construct_id, config=config,
                         description=f"ml-infra {config.name}: GPU training fleet, interruption handling, runs")
        training = config.training
        budget = cdk.Duration.seconds(training.checkpoint_budget_seconds)

        self._build_fleet(config, vpc, data_key, messaging_key, training_data_bucket,
                          checkpoint_bucket, alerts_topic, fleet_egress(config, endpoint_security_group))
        self._build_interruption_handler(config, messaging_key, logs_key, alerts_topic, budget)
        self._build_runs(config, data_key, logs_key)
        self._build_node_agent(config, checkpoint_bucket, alerts_topic, image_repository,
                               idle_shutdown, budget)
        self._wire_idle_shutdown(config, gpu_metrics, idle_shutdown)
        self._build_runs_capacity(config, alerts_topic, logs_key)
        self._grant_lifecycle_actions()
        self._add_outputs(checkpoint_bucket)

    def _build_fleet(self, config: StageConfig, vpc: ec2.IVpc, data_key: kms.IKey,
                     messaging_key: kms.IKey, training_data_bucket: s3.IBucket, checkpoint_bucket: s3.IBucket,
                     alerts_topic: sns.ITopic, egress: list[FleetEgress]) -> None:
        training = config.training
        self.fleet = GpuTrainingFleet(
            self,
            "Fleet",
            vpc=vpc,
            autoscaling_group_name=f"{config.stack_prefix}-training-gpu",
            instance_types=training.instance_types,
            max_capacity=training.max_capacity,
            on_demand_base=training.on_demand_base,
            on_demand_percentage=training.on_demand_percentage,
            machine_image=ec2.MachineImage.generic_linux(
                {config.region: training_ami(config.region).ami_id}),
            root_device_name=training.root_device_name,
            root_volume_size_gib=training.root_volume_size_gib,
            root_volume_iops=training.root_volume_iops,
            root_volume_throughput_mibps=training.root_volume_throughput_mibps,
            imds_hop_limit=training.imds_hop_limit,
            efa_enabled=training.efa_enabled,
            egress=egress,
            volume_key=data_key,
            training_data_bucket=training_data_bucket,
            checkpoint_bucket=checkpoint_bucket,
            notification_topic=alerts_topic,
            # The stage's alerts topic is encrypted with the messaging key.
            notification_key=messaging_key,
        )

    def _build_interruption_handler(self, config: StageConfig, messaging_key: kms.IKey,
                                    logs_key: kms.IKey, alerts_topic: sns.ITopic, budget: cdk.Duration) -> None:
        training = config.training
        self.interruption_handler = InterruptionHandler(
            self,
            "InterruptionHandler",
            fleet=self.fleet,
            key=messaging_key,
            alarm_topic=alerts_topic,
            lambda_code_dir=PROJECT_ROOT / "lambda" / "interruption_handler",
            heartbeat_timeout=cdk.Duration.seconds(training.lifecycle_heartbeat_timeout_seconds),
            checkpoint_budget=budget,
            rebalance_action=training.rebalance_action,
            lambda_timeout=cdk.Duration.seconds(training.lambda_timeout_seconds),
            log_retention=log_retention(training.log_retention_days),
            log_group_name=log_group_name(self, config, "interruption-handler"),
            log_key=logs_key,
        )

    def _build_runs(self, config: StageConfig, data_key: kms.IKey, logs_key: kms.IKey) -> None:
        training = config.training
        self.runs = TrainingRuns(
            self,
            "Runs",
            key=data_key,
            log_key=logs_key,
            log_group_name=log_group_name(self, config, "runs"),
            removal_policy=self.removal_policy,
            # Outside dev the run history outlives mistakes: a delete or a
            # replacement of the table is refused until protection is lifted.
            deletion_protection=config.storage.retain,
            log_retention=log_retention(training.runs_log_retention_days),
        )

    def _build_node_agent(self, config: StageConfig, checkpoint_bucket: s3.IBucket,
                          alerts_topic: sns.ITopic, image_repository: ecr.IRepository,
                          idle_shutdown: IdleShutdown, budget: cdk.Duration) -> None:
        training = config.training
        self.node_agent = NodeAgent(
            self,
            "NodeAgent",
            source_dir=PROJECT_ROOT / "node_agent",
            stage=config.name,
            checkpoint_bucket=checkpoint_bucket,
            runs=self.runs,
            alerts_topic=alerts_topic,
            # The idle stack's job-finished rule listens on its own bus.
            event_bus=idle_shutdown.event_bus,
            image_repository=image_repository,
            checkpoint_dir=training.checkpoint_dir,
            checkpoint_done_marker=training.checkpoint_done_marker,
            training_signal=training.training_signal,
            checkpoint_budget=budget,
            heartbeat_interval=cdk.Duration.seconds(training.heartbeat_interval_seconds),
            lease=cdk.Duration.seconds(training.lease_seconds),
            lease_renewal=cdk.Duration.seconds(training.lease_renew_seconds),
            claim_poll=cdk.Duration.seconds(training.claim_poll_seconds),
            hung_after=cdk.Duration.minutes(training.hung_after_minutes),
            hung_action=training.hung_action,
        )
        self.node_agent.install_on(
            user_data=self.fleet.user_data,
            role=self.fleet.role,
            autoscaling_group_name=self.fleet.auto_scaling_group_name,
            lifecycle_hook_name=self.interruption_handler.lifecycle_hook_name,
        )

    def _wire_idle_shutdown(self, config: StageConfig, gpu_metrics: GpuMetricsAgent,
                            idle_shutdown: IdleShutdown) -> None:
        training = config.training
        # Never pay for an idle GPU: every node publishes GPU utilization the
        # idle-shutdown function reads, the group is opted in to it, and
        # outside prod it scales to 0 at night (config.idle_shutdown).
        gpu_metrics.install_on(user_data=self.fleet.user_data, role=self.fleet.role)
        idle_shutdown.enroll(self.fleet.auto_scaling_group)
        # The instances are the only producers of job-finished events: any
        # other principal of the account is denied on the bus.
        idle_shutdown.accept_completion_only_from(self, [self.fleet.role])
        idle = config.idle_shutdown
        # At night the fleet is closed (maximum 0): runs wait, checkpointed,
        # and the reconciler below brings instances for them in the morning.
        add_off_hours_schedule(
            self.fleet.auto_scaling_group,
            scale_in_cron=idle.off_hours_scale_in_cron,
            scale_out_cron=idle.off_hours_scale_out_cron,
            restore_max_capacity=training.max_capacity,
            time_zone=idle.off_hours_time_zone,
        )

    def _build_runs_capacity(self, config: StageConfig, alerts_topic: sns.ITopic,
                             logs_key: kms.IKey) -> None:
        training = config.training
        self.runs_capacity = RunsCapacity(
            self,
            "RunsCapacity",
            runs=self.runs,
            fleet=self.fleet,
            alerts_topic=alerts_topic,
            max_gpus_per_instance=training.max_gpus_per_instance,
            schedule_rate=cdk.Duration.minutes(training.runs_capacity_rate_minutes),
            spot_fallback_after=(None if training.spot_fallback_after_minutes is None
                                 or training.on_demand_percentage == 100
                                 else cdk.Duration.minutes(training.spot_fallback_after_minutes)),
            spot_fallback_on_demand_percentage=training.spot_fallback_on_demand_percentage,
            log_retention=log_retention(training.log_retention_days),
            log_group_name=log_group_name(self, config, "runs-capacity"),
            log_key=logs_key,
        )

    def _grant_lifecycle_actions(self) -> None:
        # The agent heartbeats and completes the hook itself.
        self.fleet.grant_complete_lifecycle_action(self.fleet.role)
        self.fleet.grant_record_lifecycle_action_heartbeat(self.fleet.role)
        # A GPU that fails its health gate or a fatal Xid: the agent marks
        # its own instance Unhealthy and the group replaces it.
        self.fleet.grant_set_instance_health(self.fleet.role)

    def _add_outputs(self, checkpoint_bucket: s3.IBucket) -> None:
        # What `python -m ml_runs` reads (RUNS_CONTRACT.md, stack outputs).
        cdk.CfnOutput(self, "AutoScalingGroupName", value=self.fleet.auto_scaling_group_name,
                      description="GPU training fleet (ml_runs submit raises its desired capacity)")
        cdk.CfnOutput(self, "RunsTableName", value=self.runs.table.table_name,
                      description="Runs: state, attempts, last checkpoint (ml_runs list/show)")
        cdk.CfnOutput(self, "RunsLogGroupName", value=self.runs.log_group.log_group_name,
                      description="Trainer output, one stream per attempt (ml_runs logs)")
        cdk.CfnOutput(self, "CheckpointBucketName", value=checkpoint_bucket.bucket_name,
                      description="Checkpoints under runs/<run-id>/")
        cdk.CfnOutput(self, "InterruptionQueueUrl", value=self.interruption_handler.queue.queue_url,
                      description="Spot warnings, rebalance recommendations, termination hooks")
        cdk.CfnOutput(self, "CheckpointDocumentName", value=self.interruption_handler.document.ref,
                      description="Run Command document that checkpoints an instance")


def fleet_egress(config: StageConfig, endpoint_security_group: ec2.ISecurityGroup | None
                 ) -> list[FleetEgress]:
    """Where the stage's training instances may connect to: AWS through the
    VPC's endpoints, then what ``training.egress`` adds."""
    https = ec2.Port.tcp(443)
    rules = []
    if endpoint_security_group is not None:
        rules.append(FleetEgress(endpoint_security_group, https, "HTTPS to the VPC interface endpoints"))
    for service, prefix_list in GATEWAY_ENDPOINT_PREFIX_LISTS.get(config.region, {}).items():
        rules.append(FleetEgress(ec2.Peer.prefix_list(prefix_list), https,
                                 f"HTTPS to {service} through its gateway endpoint"))
    for destination in config.training.egress:
        peer = (ec2.Peer.prefix_list(destination.destination) if destination.is_prefix_list
                else ec2.Peer.ipv4(destination.destination))
        ports = (ec2.Port.tcp_range if destination.protocol == "tcp" else ec2.Port.udp_range)(
            destination.port, destination.last_port)
        rules.append(FleetEgress(peer, ports, destination.description))
    return rules
