"""Ships the node agent (``node_agent/``) to GPU instances and installs it at boot.

The agent itself, its systemd unit and ``install.sh`` follow
``node_agent/CONTRACT.md``; this construct is the training stack's side of
that contract: the S3 asset, the user data that installs it, and the
instance permissions the agent uses.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from constructs_lib.acknowledge_resolved import acknowledge_resources

AGENT_DIR = "/opt/ml-node-agent"
AGENT_ENV_FILE = "/etc/ml-node-agent.env"
AGENT_PROGRAM = f"{AGENT_DIR}/ml_node_agent.py"
# What the asset leaves out (CONTRACT.md is the seam's documentation, not
# part of the agent).
ASSET_EXCLUDE = ("__pycache__", "*.pyc", "CONTRACT.md")


class NodeAgent(Construct):
    """The node agent as an S3 asset, plus ``install_on`` for an instance's user data.

    ``source_dir`` is the ``node_agent/`` directory. ``checkpoint_bucket``
    receives the checkpoints; the other props become the agent's
    environment (see CONTRACT.md).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        source_dir: Path,
        checkpoint_bucket: s3.IBucket,
        checkpoint_dir: str,
        checkpoint_done_marker: str,
        training_unit: str,
        training_signal: str,
        checkpoint_budget: cdk.Duration,
        heartbeat_interval: cdk.Duration,
    ) -> None:
        super().__init__(scope, construct_id)
        self.asset = s3_assets.Asset(self, "Asset", path=str(source_dir), exclude=list(ASSET_EXCLUDE))
        self.checkpoint_bucket = checkpoint_bucket
        self._fixed_environment = {
            "ML_CHECKPOINT_DIR": checkpoint_dir,
            "ML_CHECKPOINT_DONE_MARKER": checkpoint_done_marker,
            "ML_TRAINING_UNIT": training_unit,
            "ML_TRAINING_SIGNAL": training_signal,
            "ML_CHECKPOINT_BUDGET_SECONDS": str(int(checkpoint_budget.to_seconds())),
            "ML_HEARTBEAT_SECONDS": str(int(heartbeat_interval.to_seconds())),
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

        ``role`` gets read access to the asset; the lifecycle permissions
        the agent needs come from the fleet (``grant_*_lifecycle_*``).
        """
        self.asset.grant_read(role)
        acknowledge_resources(
            role, "AwsSolutions::AwsSolutions-IAM5", [self.asset.bucket.arn_for_objects("*")],
            "The node agent asset is read from CDK's bootstrap asset bucket, whose object "
            "keys are content hashes; the instance only reads from that bucket.")
        zip_path = user_data.add_s3_download_command(
            bucket=self.asset.bucket, bucket_key=self.asset.s3_object_key,
            local_file="/tmp/ml-node-agent.zip")
        environment = {
            "ML_CHECKPOINT_BUCKET": self.checkpoint_bucket.bucket_name,
            **self._fixed_environment,
            "ML_AUTOSCALING_GROUP_NAME": autoscaling_group_name,
            "ML_LIFECYCLE_HOOK_NAME": lifecycle_hook_name,
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


def _quote(value: str) -> str:
    # Tokens (bucket name, region) render later and are shell-safe by
    # their own naming rules; literals are quoted.
    return value if cdk.Token.is_unresolved(value) else shlex.quote(value)

