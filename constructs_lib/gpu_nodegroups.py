"""Managed node groups for an EKS cluster: system CPU nodes and GPU nodes.

Every group gets its own launch template (IMDSv2 required with a hop limit
of 1, so pods cannot read the node role's credentials from instance
metadata; gp3 volumes sized from config, encrypted with the stage key) and carries
cluster-autoscaler ``node-template`` tags for its labels and taints, so the
autoscaler can scale a group up from zero nodes.

EKS does not copy node group tags to the group's Auto Scaling group, and the
cluster autoscaler reads node-template tags from the Auto Scaling group: a
small custom resource per group looks the Auto Scaling group up
(``eks:DescribeNodegroup``) and tags it (``autoscaling:CreateOrUpdateTags``).
The same tags stay on the node group itself too.

Every group's nodes share one node role (``node_role``): the node role's
policies are the same for every group (kubelet's and image pulls, nothing
group-specific), and EKS maps the role to nodes through one access entry
that it creates with the first group and keeps while any group uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import custom_resources as cr
from constructs import Construct

from constructs_lib.acknowledge import acknowledge
# Managed node groups launch through an Auto Scaling group as well: the same
# key policy the training fleet's volumes need.
from constructs_lib.gpu_training_fleet import allow_autoscaling_service_role
from ml_stacks.config import (
    BOTTLEROCKET_DATA_DEVICE,
    ROOT_DEVICE,
    NodegroupConfig,
    NodeRepairConfig,
    ServingPairConfig,
)

WORKLOAD_LABEL = "workload"
GPU_TAINT_KEY = "nvidia.com/gpu"
GPU_TAINT_VALUE = "true"
ASG_NAME_PATH = "nodegroup.resources.autoScalingGroups.0.name"
# Label of the nodes whose AMI does not ship the NVIDIA device plugin: the
# plugin's DaemonSet runs on these nodes only, never twice on a node.
DEVICE_PLUGIN_LABEL = "ml-infra.io/nvidia-device-plugin"
SERVING_TIER_LABEL = "ml-infra.io/serving-tier"
AUTOSCALER_LABEL_TAG = "k8s.io/cluster-autoscaler/node-template/label/"
AUTOSCALER_TAINT_TAG = "k8s.io/cluster-autoscaler/node-template/taint/"

DEVICE_PLUGIN_CHART = "nvidia-device-plugin"
DEVICE_PLUGIN_REPOSITORY = "https://nvidia.github.io/k8s-device-plugin"

# What a node's own identity needs: kubelet's (join, describe) and pulling
# images. Not AmazonEKS_CNI_Policy (modify any network interface in the
# account): the vpc-cni add-on has its own Pod Identity role.
NODE_MANAGED_POLICIES = ("AmazonEKSWorkerNodePolicy", "AmazonEC2ContainerRegistryPullOnly")

_K8S_TAINT_EFFECT = {eks.TaintEffect.NO_SCHEDULE: "NoSchedule",
                     eks.TaintEffect.PREFER_NO_SCHEDULE: "PreferNoSchedule",
                     eks.TaintEffect.NO_EXECUTE: "NoExecute"}


@dataclass(frozen=True)
class _Role:
    construct_id: str
    capacity_type: eks.CapacityType
    labels: dict[str, str]
    gpu: bool


def autoscaler_tags(labels: dict[str, str], taints: list[eks.TaintSpec]) -> dict[str, str]:
    """The cluster-autoscaler node-template tags describing ``labels`` and ``taints``."""
    tags = {f"{AUTOSCALER_LABEL_TAG}{k}": v for k, v in sorted(labels.items())}
    for taint in taints:
        tags[f"{AUTOSCALER_TAINT_TAG}{taint.key}"] = f"{taint.value}:{_K8S_TAINT_EFFECT[taint.effect]}"
    return tags


class GpuNodegroups(Construct):
    """The node groups of one cluster.

    - ``system``: CPU, on-demand, label ``workload=system``, untainted:
      cluster add-ons such as CoreDNS run here.
    - ``gpu_inference``: on-demand, label ``workload=gpu-inference``.
    - ``gpu_training``: spot, label ``workload=gpu-training``.
    - ``serving_pair`` (optional): on-demand baseline and spot burst, both
      ``workload=gpu-inference`` plus ``ml-infra.io/serving-tier``.

    Every GPU group is tainted ``nvidia.com/gpu=true:NoSchedule``: only pods
    that tolerate it (and ask for ``nvidia.com/gpu``) land on GPU nodes.

    When a GPU group uses an AMI without the NVIDIA device plugin (AL2023
    NVIDIA), the plugin's Helm chart is installed through the cluster's
    kubectl provider, pinned to ``device_plugin_chart_version``, and runs only
    on that group's nodes. Bottlerocket NVIDIA nodes use the plugin their AMI
    ships.

    ``release_versions`` maps an AMI type to the node group release version
    its groups run (Bottlerocket ``1.52.0-b7ac6e1a``); a group whose AMI type
    is not in it gets the latest release EKS has when the group is created
    and keeps it. Default: none pinned.

    ``node_repair`` turns on EKS node auto repair for every GPU group (its
    limits in percent of the group's nodes); the system group is left to
    its own health checks. Default: ``NodeRepairConfig()`` (enabled, 25 %
    repaired at once, stop above 50 % unhealthy). Repair acts on the
    conditions the node monitoring agent add-on reports.

    ``log_group_name`` / ``log_key``: name and key of the log group of the
    tagging function. Defaults: generated name, CloudWatch Logs' encryption.

    ``volume_key`` encrypts every node volume (root and, on Bottlerocket,
    data); its key policy gets statements for EC2 Auto Scaling's
    service-linked role, which launches the nodes of a managed node group.
    Default: None, EBS's AWS managed key (``aws/ebs``).

    The groups share one node role (``node_role``) holding
    ``NODE_MANAGED_POLICIES`` only: the VPC CNI's permissions must come from
    the ``vpc-cni`` add-on's own identity (a Pod Identity association for
    ``kube-system/aws-node``); the caller makes ``node_role`` depend on that
    add-on, so no node runs without the CNI's permissions. A node group's
    ``NodeRole`` cannot change in place: moving an existing cluster from one
    role per group to the shared role replaces each group (CloudFormation
    creates the new group, then deletes the old one; pods move as the old
    nodes drain).

    Attributes: ``node_role`` (``iam.Role``), ``nodegroups`` (role -> ``eks.Nodegroup``),
    ``launch_templates`` (role -> ``ec2.LaunchTemplate``), ``device_plugin``
    (``eks.HelmChart`` or None).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster: eks.Cluster,
        system: NodegroupConfig,
        gpu_inference: NodegroupConfig,
        gpu_training: NodegroupConfig,
        serving_pair: ServingPairConfig | None = None,
        device_plugin_chart_version: str,
        release_versions: Mapping[str, str] | None = None,
        node_repair: NodeRepairConfig | None = None,
        volume_key: kms.IKey | None = None,
        log_group_name: str | None = None,
        log_key: kms.IKey | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.cluster = cluster
        self._node_repair = node_repair if node_repair is not None else NodeRepairConfig()
        self._release_versions = dict(release_versions or {})
        self._volume_key = volume_key
        if volume_key is not None:
            allow_autoscaling_service_role(volume_key)
        self.nodegroups: dict[str, eks.Nodegroup] = {}
        self.launch_templates: dict[str, ec2.LaunchTemplate] = {}
        self._build_tagger(cluster, log_group_name=log_group_name, log_key=log_key)
        self.node_role = self._build_node_role()

        on_demand, spot = eks.CapacityType.ON_DEMAND, eks.CapacityType.SPOT
        groups: list[tuple[str, NodegroupConfig, _Role]] = [
            ("system", system, _Role("System", on_demand, {WORKLOAD_LABEL: "system"}, gpu=False)),
            ("gpu_inference", gpu_inference,
             _Role("GpuInference", on_demand, {WORKLOAD_LABEL: "gpu-inference"}, gpu=True)),
            ("gpu_training", gpu_training,
             _Role("GpuTraining", spot, {WORKLOAD_LABEL: "gpu-training"}, gpu=True)),
        ]
        if serving_pair is not None:
            groups += [
                ("serving_baseline", serving_pair.baseline,
                 _Role("ServingBaseline", on_demand,
                       {WORKLOAD_LABEL: "gpu-inference", SERVING_TIER_LABEL: "baseline"}, gpu=True)),
                ("serving_burst", serving_pair.burst,
                 _Role("ServingBurst", spot,
                       {WORKLOAD_LABEL: "gpu-inference", SERVING_TIER_LABEL: "burst"}, gpu=True)),
            ]
        for name, config, role in groups:
            self._add_group(name, config, role)

        needs_plugin = any(config.needs_device_plugin for _, config, role in groups if role.gpu)
        self.device_plugin: eks.HelmChart | None = None
        if needs_plugin:
            self.device_plugin = self._add_device_plugin(device_plugin_chart_version)

    def _add_group(self, name: str, config: NodegroupConfig, role: _Role) -> None:
        taints = ([eks.TaintSpec(key=GPU_TAINT_KEY, value=GPU_TAINT_VALUE,
                                 effect=eks.TaintEffect.NO_SCHEDULE)] if role.gpu else [])
        labels = dict(role.labels)
        if config.needs_device_plugin:
            labels[DEVICE_PLUGIN_LABEL] = "helm"

        template = ec2.LaunchTemplate(
            self,
            f"{role.construct_id}LaunchTemplate",
            require_imdsv2=True,
            # One hop: the node itself reaches IMDS, a pod behind the CNI's
            # extra hop does not (pods use EKS Pod Identity instead).
            http_put_response_hop_limit=1,
            http_tokens=ec2.LaunchTemplateHttpTokens.REQUIRED,
            block_devices=_block_devices(config, self._volume_key),
        )
        nodegroup = eks.Nodegroup(
            self,
            role.construct_id,
            cluster=self.cluster,
            ami_type=eks.NodegroupAmiType[config.ami_type.upper()],
            release_version=self._release_versions.get(config.ami_type),
            capacity_type=role.capacity_type,
            min_size=config.min_size,
            desired_size=config.desired_size,
            max_size=config.max_size,
            labels=labels,
            taints=taints,
            launch_template_spec=eks.LaunchTemplateSpec(
                id=template.launch_template_id,
                version=template.latest_version_number,
            ),
            subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            tags=autoscaler_tags(labels, taints),
            node_role=self.node_role,
        )
        # Instance types go straight onto the node group resource: the L2's
        # own GPU check only knows some GPU classes (not p5, p5e, p6, gr6)
        # and rejects an NVIDIA AMI type for the rest. The config already
        # checked every type against GPU_INSTANCE_FAMILIES and the AMI's
        # architecture.
        cfn = nodegroup.node.default_child
        assert isinstance(cfn, eks.CfnNodegroup)
        cfn.instance_types = list(config.instance_types)
        if role.gpu:
            # A GPU node the monitoring agent reports unhealthy (Xid, ECC,
            # lost GPU) is replaced by EKS without a person.
            repair = self._node_repair
            cfn.node_repair_config = eks.CfnNodegroup.NodeRepairConfigProperty(
                enabled=repair.enabled,
                max_parallel_nodes_repaired_percentage=repair.max_parallel_repaired_percentage,
                max_unhealthy_node_threshold_percentage=repair.max_unhealthy_percentage)
        self.nodegroups[name] = nodegroup
        self.launch_templates[name] = template
        self._tag_autoscaling_group(role.construct_id, cfn, autoscaler_tags(labels, taints))

    def _build_tagger(self, cluster: eks.Cluster, *, log_group_name: str | None,
                      log_key: kms.IKey | None) -> None:
        """Log group, role and policy of the Auto Scaling group tagging custom resources."""
        # One log group for the tagging custom resources' singleton function.
        self._tagger_logs = logs.LogGroup(self, "AsgTaggerLogs", retention=logs.RetentionDays.ONE_MONTH,
                                          log_group_name=log_group_name, encryption_key=log_key,
                                          removal_policy=cdk.RemovalPolicy.DESTROY)
        # Its own role instead of one with the AWS managed basic execution
        # policy: logs to that group only, plus each lookup's and tagging's call.
        self._tagger_role = iam.Role(
            self, "AsgTaggerRole", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Tags the EKS node groups' Auto Scaling groups for the cluster autoscaler")
        self._tagger_logs.grant_write(self._tagger_role)
        # One policy for every group's lookup and tagging call (each call
        # below adds its statement): one place, one acknowledgement.
        self._tagger_policy = iam.Policy(self, "AsgTaggerPolicy", roles=[self._tagger_role])
        self._tagger_policy.add_statements(iam.PolicyStatement(
            sid="TagThisClustersNodeGroupAsgs",
            actions=["autoscaling:CreateOrUpdateTags"],
            resources=["*"],
            # Only the Auto Scaling groups EKS made for this cluster.
            conditions={"StringEquals": {"aws:ResourceTag/eks:cluster-name": cluster.cluster_name}},
        ))
        acknowledge(
            self._tagger_policy,
            "AwsSolutions::AwsSolutions-IAM5[Resource::*]",
            "autoscaling:CreateOrUpdateTags on a managed node group's Auto Scaling group, whose ARN "
            "holds a UUID (and a name suffix) known only after EKS creates it; the statement is "
            "limited to groups tagged eks:cluster-name=<this cluster> instead.",
        )

    def _build_node_role(self) -> iam.Role:
        """The node role of every group: ``NODE_MANAGED_POLICIES`` only."""
        role = iam.Role(
            self, "NodeRole", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="Nodes of every managed node group of the stage's EKS cluster",
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name(name)
                              for name in NODE_MANAGED_POLICIES])
        acknowledge(
            role,
            "AwsSolutions::AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonEKSWorkerNodePolicy]",
            "EKS's documented node role policy; AWS keeps it in step with what kubelet needs.",
        )
        acknowledge(
            role,
            "AwsSolutions::AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonEC2ContainerRegistryPullOnly]",
            "Nodes pull images from the stage's ECR repository and EKS's own add-on registries: "
            "AWS's pull-only policy (no listing or describing of repositories).",
        )
        return role

    def _tag_autoscaling_group(self, construct_id: str, nodegroup: eks.CfnNodegroup,
                               tags: dict[str, str]) -> None:
        cluster_name = self.cluster.cluster_name
        lookup_call = cr.AwsSdkCall(
            service="EKS",
            action="describeNodegroup",
            parameters={"clusterName": cluster_name, "nodegroupName": nodegroup.attr_nodegroup_name},
            physical_resource_id=cr.PhysicalResourceId.from_response(ASG_NAME_PATH),
            output_paths=[ASG_NAME_PATH],
        )
        lookup = cr.AwsCustomResource(
            self,
            f"{construct_id}AsgLookup",
            on_create=lookup_call,
            on_update=lookup_call,
            role=self._tagger_role,
            log_group=self._tagger_logs,
            install_latest_aws_sdk=False,
        )
        self._tagger_policy.add_statements(iam.PolicyStatement(
            sid=f"Describe{construct_id}", actions=["eks:DescribeNodegroup"],
            resources=[nodegroup.attr_arn]))
        lookup.node.add_dependency(self._tagger_policy)
        asg_name = lookup.get_response_field(ASG_NAME_PATH)
        tag_call = cr.AwsSdkCall(
            service="AutoScaling",
            action="createOrUpdateTags",
            parameters={"Tags": [
                {"ResourceId": asg_name, "ResourceType": "auto-scaling-group", "Key": key,
                 "Value": value, "PropagateAtLaunch": False}
                for key, value in sorted(tags.items())]},
            physical_resource_id=cr.PhysicalResourceId.of(asg_name),
        )
        tagger = cr.AwsCustomResource(
            self,
            f"{construct_id}AsgTags",
            on_create=tag_call,
            on_update=tag_call,
            role=self._tagger_role,
            log_group=self._tagger_logs,
            install_latest_aws_sdk=False,
        )
        tagger.node.add_dependency(lookup)
        tagger.node.add_dependency(self._tagger_policy)

    def _add_device_plugin(self, chart_version: str) -> eks.HelmChart:
        if self.cluster.kubectl_provider is None:
            raise ValueError(
                "GpuNodegroups: an AL2023 NVIDIA node group needs the NVIDIA device plugin, "
                "installed through the cluster's kubectl provider: create the cluster with "
                "kubectl_provider_options")
        return eks.HelmChart(
            self,
            "NvidiaDevicePlugin",
            cluster=self.cluster,
            chart=DEVICE_PLUGIN_CHART,
            repository=DEVICE_PLUGIN_REPOSITORY,
            version=chart_version,
            release=DEVICE_PLUGIN_CHART,
            namespace="kube-system",
            create_namespace=False,
            values={
                # Only nodes whose AMI lacks the plugin: Bottlerocket NVIDIA
                # nodes already run their own.
                "nodeSelector": {DEVICE_PLUGIN_LABEL: "helm"},
                # Replaces the chart's default affinity, which wants node
                # labels from NVIDIA's feature discovery (not installed here).
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [
                        {"key": DEVICE_PLUGIN_LABEL, "operator": "In", "values": ["helm"]}]}]}}},
                "tolerations": [{"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
            },
        )


def _block_devices(config: NodegroupConfig, key: kms.IKey | None) -> list[ec2.BlockDevice]:
    def gp3(size_gib: int | None) -> ec2.BlockDeviceVolume:
        return ec2.BlockDeviceVolume(ebs_device=ec2.EbsDeviceProps(
            volume_type=ec2.EbsDeviceVolumeType.GP3,
            volume_size=size_gib,
            encrypted=True,
            kms_key=key,
            delete_on_termination=True,
        ))

    if config.ami_type.startswith("BOTTLEROCKET"):
        # The OS volume keeps the AMI's size; images and containers live on
        # the data volume, which is the one sized from config.
        return [
            ec2.BlockDevice(device_name=ROOT_DEVICE, volume=gp3(None)),
            ec2.BlockDevice(device_name=BOTTLEROCKET_DATA_DEVICE, volume=gp3(config.disk_size_gib)),
        ]
    return [ec2.BlockDevice(device_name=ROOT_DEVICE, volume=gp3(config.disk_size_gib))]

