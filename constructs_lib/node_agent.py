"""Ships the node agent (``node_agent/``) to GPU instances and installs it at boot.

The agent itself, its systemd unit and ``install.sh`` follow
``node_agent/CONTRACT.md`` and ``node_agent/RUNS_CONTRACT.md``; this
construct is the training stack's side of those contracts: the S3 asset, the
user data that installs it with its environment, and the instance
permissions the agent uses to carry runs.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_sns as sns
from constructs import Construct

from constructs_lib.acknowledge import PUT_METRIC_DATA_WHY, UnscopedApis
from constructs_lib.kms_grants import grant_publish
from constructs_lib.object_read import grant_read_object
from constructs_lib.training_runs import TrainingRuns

AGENT_DIR = "/opt/ml-node-agent"
AGENT_ENV_FILE = "/etc/ml-node-agent.env"
AGENT_PROGRAM = f"{AGENT_DIR}/ml_node_agent.py"
# What the asset leaves out (the contracts are the seam's documentation, not
# part of the agent).
ASSET_EXCLUDE = ("__pycache__", "*.pyc", "CONTRACT.md", "RUNS_CONTRACT.md")
# How the agent starts a trainer on a GPU instance (RUNS_CONTRACT.md);
# "process" is for the local drill only.
TRAINER_LAUNCHER = "docker"
# The only CloudWatch namespace the agent may publish to (GPU health, Xid
# counts, hung runs): instance roles get PutMetricData on it alone.
METRICS_NAMESPACE = "MlInfra/NodeAgent"
HUNG_ACTIONS = ("alert", "restart")


class NodeAgent(Construct):
    """The node agent as an S3 asset, plus ``install_on`` for an instance's user data.

    ``source_dir`` is the ``node_agent/`` directory. ``checkpoint_bucket``
    receives the checkpoints, ``runs`` holds the runs and their logs,
    ``alerts_topic`` hears about FAILED runs, ``event_bus`` gets
    ``Training Job Finished`` when nothing is left to run, and
    ``image_repository`` is the stage's ECR repository trainers are pulled
    from. The other props become the agent's environment (CONTRACT.md and
    RUNS_CONTRACT.md).

    :param lease: a vanished holder's run is claimable after this. Default 90 s.
    :param lease_renewal: how often a holder renews its lease. Default 30 s.
    :param claim_poll: how often an idle instance looks for a run. Default 15 s.
    :param hung_after: a trainer without progress this long is hung. Default 30 minutes.
    :param hung_action: ``"restart"`` (default) restarts a hung attempt from its
        last checkpoint; ``"alert"`` only reports it.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        source_dir: Path,
        stage: str,
        checkpoint_bucket: s3.IBucket,
        runs: TrainingRuns,
        alerts_topic: sns.ITopic,
        event_bus: events.IEventBus,
        image_repository: ecr.IRepository,
        checkpoint_dir: str,
        checkpoint_done_marker: str,
        training_signal: str,
        checkpoint_budget: cdk.Duration,
        heartbeat_interval: cdk.Duration,
        lease: cdk.Duration = cdk.Duration.seconds(90),
        lease_renewal: cdk.Duration = cdk.Duration.seconds(30),
        claim_poll: cdk.Duration = cdk.Duration.seconds(15),
        hung_after: cdk.Duration = cdk.Duration.minutes(30),
        hung_action: str = "restart",
    ) -> None:
        super().__init__(scope, construct_id)
        if hung_action not in HUNG_ACTIONS:
            raise ValueError(f"hung_action {hung_action!r}: use one of {', '.join(HUNG_ACTIONS)}")
        self.asset = s3_assets.Asset(self, "Asset", path=str(source_dir), exclude=list(ASSET_EXCLUDE))
        self.checkpoint_bucket = checkpoint_bucket
        self.runs = runs
        self.alerts_topic = alerts_topic
        self.event_bus = event_bus
        self.image_repository = image_repository
        self._fixed_environment = {
            "ML_STAGE": stage,
            "ML_CHECKPOINT_DIR": checkpoint_dir,
            "ML_CHECKPOINT_DONE_MARKER": checkpoint_done_marker,
            "ML_TRAINING_SIGNAL": training_signal,
            "ML_CHECKPOINT_BUDGET_SECONDS": _seconds(checkpoint_budget),
            "ML_HEARTBEAT_SECONDS": _seconds(heartbeat_interval),
            "ML_TRAINER_LAUNCHER": TRAINER_LAUNCHER,
            "ML_LEASE_SECONDS": _seconds(lease),
            "ML_LEASE_RENEW_SECONDS": _seconds(lease_renewal),
            "ML_CLAIM_POLL_SECONDS": _seconds(claim_poll),
            "ML_HUNG_AFTER_SECONDS": _seconds(hung_after),
            "ML_HUNG_ACTION": hung_action,
            "ML_METRICS_NAMESPACE": METRICS_NAMESPACE,
        }

    def install_on(
        self,
        *,
        user_data: ec2.UserData,
        role: iam.IRole,
        autoscaling_group_name: str,
        lifecycle_hook_name: str,
    ) -> None:
        """Download, unpack and install the agent at boot, as CONTRACT.md says.

        ``role`` may read the asset's one object and what carrying a run
        needs (``grant_run_permissions``); the lifecycle permissions come
        from the fleet (``grant_*_lifecycle_*``).
        """
        grant_read_object(role, bucket=self.asset.bucket, key=self.asset.s3_object_key,
                          sid="ReadTheNodeAgentAsset")
        self.grant_run_permissions(role)
        zip_path = user_data.add_s3_download_command(
            bucket=self.asset.bucket, bucket_key=self.asset.s3_object_key,
            local_file="/tmp/ml-node-agent.zip")
        environment = {
            "ML_CHECKPOINT_BUCKET": self.checkpoint_bucket.bucket_name,
            **self._fixed_environment,
            "ML_AUTOSCALING_GROUP_NAME": autoscaling_group_name,
            "ML_LIFECYCLE_HOOK_NAME": lifecycle_hook_name,
            "ML_RUNS_TABLE": self.runs.table.table_name,
            "ML_RUNS_LOG_GROUP": self.runs.log_group.log_group_name,
            "ML_ALERTS_TOPIC_ARN": self.alerts_topic.topic_arn,
            "ML_EVENT_BUS_NAME": self.event_bus.event_bus_name,
            "AWS_REGION": cdk.Stack.of(self).region,
        }
        assignments = " ".join(f"{name}={_quote(value)}" for name, value in environment.items())
        user_data.add_commands(
            f"mkdir -p {AGENT_DIR} {_quote(self._fixed_environment['ML_CHECKPOINT_DIR'])}",
            # The DLAMI has no unzip by default; python3 does.
            f"python3 -m zipfile -e {zip_path} {AGENT_DIR}/",
            f"chmod 0755 {AGENT_PROGRAM}",
            f"{assignments} bash {AGENT_DIR}/install.sh",
        )


    def grant_run_permissions(self, role: iam.IRole) -> None:
        """What an instance needs to carry runs (RUNS_CONTRACT.md, instance permissions).

        The runs table and log group (``TrainingRuns.grant_agent``),
        ``events:PutEvents`` on the event bus, ``sns:Publish`` on the alerts
        topic with the topic key's data-key actions, and pulling images from
        the stage repository, and ``cloudwatch:PutMetricData`` in
        ``METRICS_NAMESPACE`` (``grant_put_metrics``). Checkpoint access and
        ``SetInstanceHealth`` come with the fleet's grants.
        """
        self.runs.grant_agent(role)
        self.event_bus.grant_put_events_to(role)
        # SNS encrypts a published message with a data key the publisher
        # must be allowed to generate (and decrypt), through SNS only.
        grant_publish(self.alerts_topic, role)
        self.image_repository.grant(role, "ecr:BatchCheckLayerAvailability",
                                    "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage")
        UnscopedApis.of(role).allow("RegistryLogin", {
            "ecr:GetAuthorizationToken": "no resource type (it returns a registry login); image "
                                         "reads are scoped to the stage repository"})
        self.grant_put_metrics(role)

    def grant_put_metrics(self, role: iam.IRole) -> None:
        """``cloudwatch:PutMetricData`` into ``METRICS_NAMESPACE`` only (GPU
        health, Xid counts, hung runs). The action has no resource-level
        permission; the ``cloudwatch:namespace`` condition is the scope."""
        UnscopedApis.of(role).allow(
            "PutMetricDataInOwnNamespaces", {"cloudwatch:PutMetricData": PUT_METRIC_DATA_WHY},
            conditions={"StringEquals": {"cloudwatch:namespace": METRICS_NAMESPACE}})


def _seconds(duration: cdk.Duration) -> str:
    return str(int(duration.to_seconds()))


def _quote(value: str) -> str:
    # Tokens (bucket name, region) render later and are shell-safe by
    # their own naming rules; literals are quoted.
    return value if cdk.Token.is_unresolved(value) else shlex.quote(value)

