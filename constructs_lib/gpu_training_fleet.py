"""A spot-first GPU training fleet: launch template plus mixed-instances Auto Scaling group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import aws_cdk as cdk
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from constructs import Construct

from constructs_lib.acknowledge import UnscopedApis, acknowledge
from constructs_lib.kms_grants import via_service

# Instances of the fleet carry this tag (value: the group name). Run Command
# permissions of the interruption handler are conditioned on it.
FLEET_TAG_KEY = "ml:training-fleet"
# The node agent writes checkpoints under s3://<bucket>/runs/<run-id>/...
# (node_agent/RUNS_CONTRACT.md): instances may read and write only there.
CHECKPOINT_PREFIX = "runs/"
CHECKPOINT_KEY_PATTERN = f"{CHECKPOINT_PREFIX}*"
# What the SSM agent calls to register, take Run Command messages (the
# checkpoint document), open Session Manager channels and report
# association status: AmazonSSMManagedInstanceCore (v2) without its
# parameter reads (ssm:GetParameter, ssm:GetParameters) and its Distributor
# calls (ssm:GetManifest, ssm:PutConfigurePackageResult).
SSM_AGENT_ACTIONS = (
    "ssm:UpdateInstanceInformation",
    "ssm:ListAssociations",
    "ssm:ListInstanceAssociations",
    "ssm:DescribeAssociation",
    "ssm:DescribeDocument",
    "ssm:GetDeployablePatchSnapshotForInstance",
    "ssm:GetDocument",
    "ssm:PutInventory",
    "ssm:PutComplianceItems",
    "ssm:UpdateAssociationStatus",
    "ssm:UpdateInstanceAssociationStatus",
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
    "ec2messages:AcknowledgeMessage",
    "ec2messages:DeleteMessage",
    "ec2messages:FailMessage",
    "ec2messages:GetEndpoint",
    "ec2messages:GetMessages",
    "ec2messages:SendReply",
)
SSM_AGENT_ACTION_WHY = {
    "ec2messages": "Run Command's message channel, no resource type",
    "ssmmessages": "Session Manager's channel, no resource type",
    "ssm": "the SSM agent registers and reports for its own instance, whose ID is not known "
           "before launch (as in AmazonSSMManagedInstanceCore)",
}


@dataclass(frozen=True)
class FleetEgress:
    """One outbound rule of the fleet's security group: ``port`` to ``peer``."""

    peer: ec2.IPeer
    port: ec2.Port
    description: str


# CDK's own "matches nothing" egress rule (255.255.255.255 is no host, ICMP
# type 252 code 86 does not exist).
NO_TRAFFIC_EGRESS = {"CidrIp": "255.255.255.255/32", "Description": "Disallow all traffic",
                     "FromPort": 252, "IpProtocol": "icmp", "ToPort": 86}
AUTOSCALING_SERVICE_LINKED_ROLE = (
    "role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling"
)


class GpuTrainingFleet(Construct):
    """GPU instances for training, spot first, that can be told to checkpoint.

    * Launch template: ``machine_image`` (a pinned AMI: a public SSM
      parameter here would re-resolve at every deploy and roll the fleet),
      IMDSv2 required with hop limit ``imds_hop_limit``, an encrypted gp3
      root volume (``volume_key``), detailed monitoring, and ``role``: read
      ``training_data_bucket``, read, write and list ``runs/`` of
      ``checkpoint_bucket`` only (no delete), SSM managed instance.
    * Auto Scaling group ``autoscaling_group_name``: mixed instances over
      ``instance_types`` (``on_demand_base`` on-demand nodes, then
      ``on_demand_percentage`` % on-demand, the rest spot,
      price-capacity-optimized), capacity rebalance, 0 to ``max_capacity``
      instances in the private subnets of every AZ, rolling replacement
      when the launch template changes, launches, terminations and their
      errors to ``notification_topic``.
    * ``efa_enabled`` (default False): an EFA interface and a cluster
      placement group for multi-node training; the group then uses the
      first AZ only (a cluster placement group lives in one AZ).
    * Security group: no inbound rule (EFA: all traffic from the group
      itself); outbound only ``egress`` (default none) and, with EFA, all
      traffic to the group itself. DNS (the VPC resolver), the instance
      metadata service and NTP (169.254.169.123) are not filtered by
      security groups and need no rule.

    ``user_data`` (``ec2.UserData``) and ``role`` stay open: other
    constructs add their node-side installation with them.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        autoscaling_group_name: str,
        instance_types: Sequence[str],
        max_capacity: int,
        volume_key: kms.IKey,
        training_data_bucket: s3.IBucket,
        checkpoint_bucket: s3.IBucket,
        notification_topic: sns.ITopic,
        notification_key: kms.IKey | None = None,
        on_demand_base: int = 0,
        on_demand_percentage: int = 0,
        machine_image: ec2.IMachineImage,
        root_device_name: str = "/dev/xvda",
        root_volume_size_gib: int = 200,
        root_volume_iops: int = 3000,
        root_volume_throughput_mibps: int = 250,
        imds_hop_limit: int = 2,
        efa_enabled: bool = False,
        egress: Sequence[FleetEgress] = (),
    ) -> None:
        super().__init__(scope, construct_id)
        self._set_identity(autoscaling_group_name, on_demand_percentage)
        self._build_role(autoscaling_group_name, training_data_bucket, checkpoint_bucket)
        placement_group = self._build_network(vpc, autoscaling_group_name, efa_enabled, egress)
        self._build_launch_template(
            machine_image=machine_image, imds_hop_limit=imds_hop_limit,
            placement_group=placement_group, volume_key=volume_key,
            root_device_name=root_device_name, root_volume_size_gib=root_volume_size_gib,
            root_volume_iops=root_volume_iops,
            root_volume_throughput_mibps=root_volume_throughput_mibps,
            efa_enabled=efa_enabled)
        self._build_auto_scaling_group(
            vpc=vpc, autoscaling_group_name=autoscaling_group_name,
            instance_types=instance_types, max_capacity=max_capacity,
            notification_topic=notification_topic, on_demand_base=on_demand_base,
            on_demand_percentage=on_demand_percentage, efa_enabled=efa_enabled)
        self._allow_service_role_on_keys(volume_key, notification_key)

    def _set_identity(self, autoscaling_group_name: str, on_demand_percentage: int) -> None:
        """Name, tag, on-demand share and ARN of the group (no constructs)."""
        self.auto_scaling_group_name = autoscaling_group_name
        self.fleet_tag = (FLEET_TAG_KEY, autoscaling_group_name)
        # The template's share; the spot fallback (RunsCapacity) raises it for a while.
        self.on_demand_percentage = on_demand_percentage
        # The instances' own grants on the group (see _grant_on_group).
        self._group_statement: iam.PolicyStatement | None = None

    def _build_role(self, autoscaling_group_name: str, training_data_bucket: s3.IBucket,
                    checkpoint_bucket: s3.IBucket) -> None:
        """The instance role: SSM agent, training data read, checkpoints."""
        self.role: iam.IRole = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description=f"GPU training instances of {autoscaling_group_name}",
        )
        self._grant_systems_manager_agent()
        self._grant_training_data(training_data_bucket)
        self._grant_checkpoints(checkpoint_bucket)

    def _grant_training_data(self, bucket: s3.IBucket) -> None:
        """Read the training data bucket: get and list objects, nothing else.

        Explicit actions instead of ``grant_read`` (whose ``s3:GetObject*``,
        ``s3:GetBucket*`` and ``s3:List*`` also read ACLs, tags, versions,
        the bucket's policy and configuration). The list is not narrowed to
        a prefix: datasets live under any prefix a team chooses, and a run
        names its own (the runs contract has no dataset layout).
        """
        objects = bucket.arn_for_objects("*")
        self.role.add_to_principal_policy(iam.PolicyStatement(
            sid="ReadTrainingData", actions=["s3:GetObject"], resources=[objects]))
        self.role.add_to_principal_policy(iam.PolicyStatement(
            sid="ListTrainingData", actions=["s3:ListBucket"], resources=[bucket.bucket_arn]))
        if bucket.encryption_key is not None:
            self.role.add_to_principal_policy(iam.PolicyStatement(
                sid="DecryptTrainingDataThroughS3",
                actions=["kms:Decrypt"],
                resources=[bucket.encryption_key.key_arn],
                conditions=via_service(self, "s3"),
            ))
        acknowledge(
            self.role, f"AwsSolutions::AwsSolutions-IAM5[Resource::{objects}]",
            "A training job may read any dataset object of the training data bucket (read only).")

    def _build_network(self, vpc: ec2.IVpc, autoscaling_group_name: str, efa_enabled: bool,
                       egress: Sequence[FleetEgress]) -> ec2.PlacementGroup | None:
        """The security group (outbound only where told) and, with EFA, the
        cluster placement group."""
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description=f"GPU training instances of {autoscaling_group_name}",
            # The instances can read all training data: nothing leaves
            # unless a rule below says where.
            allow_all_outbound=False,
        )
        for rule in egress:
            self.security_group.add_egress_rule(rule.peer, rule.port, rule.description)
        placement_group = None
        if efa_enabled:
            # EFA needs all traffic between the nodes of the group, both ways.
            self.security_group.add_ingress_rule(self.security_group, ec2.Port.all_traffic(),
                                                 "EFA between training nodes")
            self.security_group.add_egress_rule(self.security_group, ec2.Port.all_traffic(),
                                                "EFA between training nodes")
            placement_group = ec2.PlacementGroup(self, "PlacementGroup",
                                                 strategy=ec2.PlacementGroupStrategy.CLUSTER)
        if not any(r.peer.can_inline_rule and r.port.can_inline_rule for r in egress):
            # Every rule is its own AWS::EC2::SecurityGroupEgress (prefix
            # lists, groups), and CDK then leaves the group's own egress list
            # empty, which EC2 fills with its allow-all default: keep a rule
            # that matches nothing there instead.
            cfn_group = self.security_group.node.default_child
            assert isinstance(cfn_group, ec2.CfnSecurityGroup)
            cfn_group.add_property_override("SecurityGroupEgress", [NO_TRAFFIC_EGRESS])
        return placement_group

    def _build_launch_template(
        self,
        *,
        machine_image: ec2.IMachineImage,
        imds_hop_limit: int,
        placement_group: ec2.PlacementGroup | None,
        volume_key: kms.IKey,
        root_device_name: str,
        root_volume_size_gib: int,
        root_volume_iops: int,
        root_volume_throughput_mibps: int,
        efa_enabled: bool,
    ) -> None:
        """User data and the launch template (IMDSv2, encrypted gp3 root, EFA interface)."""
        self.user_data = ec2.UserData.for_linux()
        self.user_data.add_commands("set -euo pipefail")
        self.launch_template = ec2.LaunchTemplate(
            self,
            "LaunchTemplate",
            machine_image=machine_image,
            user_data=self.user_data,
            role=self.role,
            security_group=self.security_group,
            require_imdsv2=True,
            http_tokens=ec2.LaunchTemplateHttpTokens.REQUIRED,
            http_endpoint=True,
            http_put_response_hop_limit=imds_hop_limit,
            detailed_monitoring=True,
            ebs_optimized=True,
            placement_group=placement_group,
            block_devices=[ec2.BlockDevice(
                device_name=root_device_name,
                volume=ec2.BlockDeviceVolume.ebs(
                    root_volume_size_gib,
                    volume_type=ec2.EbsDeviceVolumeType.GP3,
                    iops=root_volume_iops,
                    throughput=root_volume_throughput_mibps,
                    encrypted=True,
                    kms_key=volume_key,
                    delete_on_termination=True,
                ),
            )],
        )
        if efa_enabled:
            cfn_template: ec2.CfnLaunchTemplate = self.launch_template.node.default_child
            cfn_template.add_property_override("LaunchTemplateData.NetworkInterfaces", [{
                "DeviceIndex": 0,
                "InterfaceType": "efa",
                "Groups": [self.security_group.security_group_id],
                "DeleteOnTermination": True,
            }])
            # Security groups go on the interface when interfaces are given.
            cfn_template.add_property_deletion_override("LaunchTemplateData.SecurityGroupIds")

    def _build_auto_scaling_group(
        self,
        *,
        vpc: ec2.IVpc,
        autoscaling_group_name: str,
        instance_types: Sequence[str],
        max_capacity: int,
        notification_topic: sns.ITopic,
        on_demand_base: int,
        on_demand_percentage: int,
        efa_enabled: bool,
    ) -> None:
        """The mixed-instances Auto Scaling group, its acknowledgement and fleet tag."""
        subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        if efa_enabled:
            subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS,
                                          availability_zones=[vpc.availability_zones[0]])
        self.auto_scaling_group = autoscaling.AutoScalingGroup(
            self,
            "Resource",
            vpc=vpc,
            vpc_subnets=subnets,
            auto_scaling_group_name=autoscaling_group_name,
            mixed_instances_policy=autoscaling.MixedInstancesPolicy(
                launch_template=self.launch_template,
                launch_template_overrides=[
                    autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType(t))
                    for t in instance_types
                ],
                instances_distribution=autoscaling.InstancesDistribution(
                    on_demand_base_capacity=on_demand_base,
                    on_demand_percentage_above_base_capacity=on_demand_percentage,
                    on_demand_allocation_strategy=autoscaling.OnDemandAllocationStrategy.LOWEST_PRICE,
                    spot_allocation_strategy=autoscaling.SpotAllocationStrategy.PRICE_CAPACITY_OPTIMIZED,
                ),
            ),
            min_capacity=0,
            max_capacity=max_capacity,
            capacity_rebalance=True,
            # Replace instances one at a time when the launch template
            # changes; each goes through the termination hook, so each
            # checkpoints first.
            update_policy=autoscaling.UpdatePolicy.rolling_update(
                max_batch_size=1, min_instances_in_service=0),
            notifications=[autoscaling.NotificationConfiguration(
                topic=notification_topic, scaling_events=autoscaling.ScalingEvents.ALL)],
            group_metrics=[autoscaling.GroupMetrics.all()],
        )
        cfn_group = self.auto_scaling_group.node.default_child
        assert isinstance(cfn_group, autoscaling.CfnAutoScalingGroup)
        # The group's exact ARN (its UUID included), known once it exists:
        # every grant on the group names it, no wildcard.
        self.auto_scaling_group_arn = cfn_group.attr_auto_scaling_group_arn
        acknowledge(cfn_group, "AwsSolutions::AwsSolutions-EC26",
                    "The rule cannot follow the group's launch template reference; the root "
                    "volume is an encrypted gp3 volume with the stage key in the launch template "
                    "itself (asserted by tests/unit/test_training_stack.py).")
        cdk.Tags.of(self.auto_scaling_group).add(FLEET_TAG_KEY, autoscaling_group_name,
                                                 apply_to_launched_instances=True)

    @staticmethod
    def _allow_service_role_on_keys(volume_key: kms.IKey,
                                    notification_key: kms.IKey | None) -> None:
        """Let the group's service-linked role use the root volume and topic keys."""
        # The group launches instances and publishes notifications as its
        # service-linked role: it must be able to use the key of the root
        # volume and of the notification topic, or launches fail and
        # notifications vanish. Only the volume key is granted on to EBS.
        allow_autoscaling_service_role(volume_key)
        if notification_key is not None and notification_key is not volume_key:
            allow_autoscaling_service_role(notification_key, grant_to_ebs=False)

    def _grant_systems_manager_agent(self) -> None:
        """What the SSM agent needs for Run Command and Session Manager, nothing more.

        Replaces ``AmazonSSMManagedInstanceCore``, which also reads every SSM
        parameter of the account (``ssm:GetParameter(s)`` on ``*``,
        SecureStrings under the default key included). The one parameter the
        instances read, the GPU metrics agent config, has its own scoped
        grant (``GpuMetricsAgent.install_on``).
        """
        UnscopedApis.of(self.role).allow("SsmAgentCore", {
            action: SSM_AGENT_ACTION_WHY[action.split(":")[0]] for action in SSM_AGENT_ACTIONS})

    def _grant_checkpoints(self, bucket: s3.IBucket) -> None:
        """Read, write and list ``runs/`` of the checkpoint bucket, nothing else.

        Put, never delete: the agent writes a new checkpoint before moving
        ``LATEST`` and never deletes the previous one. An upload it gives up
        on is aborted (the bucket's lifecycle rule would clean it up later).
        """
        objects = bucket.arn_for_objects(CHECKPOINT_KEY_PATTERN)
        self.role.add_to_principal_policy(iam.PolicyStatement(
            sid="ReadWriteRunCheckpoints",
            actions=["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
            resources=[objects],
        ))
        acknowledge(self.role, f"AwsSolutions::AwsSolutions-IAM5[Resource::{objects}]",
                    "A run's checkpoints live under runs/<run-id>/ (node_agent/RUNS_CONTRACT.md) "
                    "and any instance may carry any run, so the role reads and writes runs/*, "
                    "deletes nothing, and reaches no other prefix of the bucket.")
        # Listing under runs/ only; with it a missing LATEST is a 404, not a 403.
        self.role.add_to_principal_policy(iam.PolicyStatement(
            sid="ListRunCheckpoints",
            actions=["s3:ListBucket"],
            resources=[bucket.bucket_arn],
            conditions={"StringLike": {"s3:prefix": [CHECKPOINT_KEY_PATTERN]}},
        ))
        if bucket.encryption_key is not None:
            self.role.add_to_principal_policy(iam.PolicyStatement(
                sid="UseCheckpointBucketKey",
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=[bucket.encryption_key.key_arn],
                conditions=via_service(self, "s3"),
            ))

    def grant_complete_lifecycle_action(self, grantee: iam.IGrantable) -> iam.Grant:
        """Allow ``autoscaling:CompleteLifecycleAction`` on this group only."""
        return self._grant_on_group(grantee, "autoscaling:CompleteLifecycleAction")

    def grant_record_lifecycle_action_heartbeat(self, grantee: iam.IGrantable) -> iam.Grant:
        """Allow ``autoscaling:RecordLifecycleActionHeartbeat`` on this group only."""
        return self._grant_on_group(grantee, "autoscaling:RecordLifecycleActionHeartbeat")

    def grant_set_desired_capacity(self, grantee: iam.IGrantable) -> iam.Grant:
        """Allow ``autoscaling:SetDesiredCapacity`` on this group only."""
        return self._grant_on_group(grantee, "autoscaling:SetDesiredCapacity")

    def grant_set_instance_health(self, grantee: iam.IGrantable) -> iam.Grant:
        """Allow ``autoscaling:SetInstanceHealth`` on this group only (an
        instance that fails its GPU health check marks itself ``Unhealthy``)."""
        return self._grant_on_group(grantee, "autoscaling:SetInstanceHealth")

    def grant_switch_on_demand_share(self, grantee: iam.IGrantable) -> iam.Grant:
        """Allow changing this group's mixed instances policy and its tags
        (``UpdateAutoScalingGroup``, ``CreateOrUpdateTags``, ``DeleteTags``),
        on this group only: the spot fallback's switch and its state tag."""
        return iam.Grant.add_to_principal(
            grantee=grantee, resource_arns=[self.auto_scaling_group_arn],
            actions=["autoscaling:UpdateAutoScalingGroup", "autoscaling:CreateOrUpdateTags",
                     "autoscaling:DeleteTags"])

    def _grant_on_group(self, grantee: iam.IGrantable, action: str) -> iam.Grant:
        """``action`` on the group's exact ARN.

        The instances' own role gets it in a policy of its own, created
        after the group: the launch template depends on every policy of
        that role (so instances never boot without their grants), and the
        group on the launch template, so a policy naming the group's ARN
        in the role's default policy would be a cycle. What this policy
        holds (lifecycle completion and heartbeat, instance health) is
        only used once an instance runs, and the group starts with none.
        For that role the statement lives in ``GroupActionsPolicy``, so the
        grant returned is ``Grant.drop`` (CDK's grant for a permission
        written elsewhere: nothing more to add to the principal).
        """
        if grantee.grant_principal is not self.role:
            return iam.Grant.add_to_principal(grantee=grantee, actions=[action],
                                              resource_arns=[self.auto_scaling_group_arn])
        if self._group_statement is None:
            self._group_statement = iam.PolicyStatement(
                sid="OwnGroupActions", actions=[action], resources=[self.auto_scaling_group_arn])
            iam.CfnPolicy(self, "GroupActionsPolicy", policy_name="OwnGroupActions",
                          roles=[self.role.role_name],
                          policy_document=iam.PolicyDocument(statements=[self._group_statement]))
        else:
            self._group_statement.add_actions(action)
        return iam.Grant.drop(grantee, f"{action} on {self.auto_scaling_group_name}")


def allow_autoscaling_service_role(key: kms.IKey, *, grant_to_ebs: bool = True) -> None:
    """Key policy statements for EC2 Auto Scaling's service-linked role.

    ``grant_to_ebs`` (default True) adds ``kms:CreateGrant`` for AWS
    resources, which encrypted volumes need; a key the group only publishes
    notifications with does not.

    Matched on ``aws:PrincipalArn`` rather than named as the principal: a
    key policy naming a role that does not exist yet (a new account before
    its first Auto Scaling group) is rejected, the condition is not.
    """
    stack = cdk.Stack.of(key)
    service_role = f"arn:{stack.partition}:iam::{stack.account}:{AUTOSCALING_SERVICE_LINKED_ROLE}"
    is_service_role = {"StringEquals": {"aws:PrincipalArn": service_role,
                                        "kms:CallerAccount": stack.account}}
    key.add_to_resource_policy(iam.PolicyStatement(
        sid="AllowAutoScalingServiceRoleToUseKey",
        principals=[iam.AnyPrincipal()],
        actions=["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                 "kms:DescribeKey"],
        resources=["*"],
        conditions=is_service_role,
    ))
    if grant_to_ebs:
        key.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowAutoScalingServiceRoleToGrantKeyToEbs",
            principals=[iam.AnyPrincipal()],
            actions=["kms:CreateGrant"],
            resources=["*"],
            conditions={**is_service_role, "Bool": {"kms:GrantIsForAWSResource": "true"}},
        ))
