"""EKS stack: the stage's cluster (aws_eks_v2, native AWS::EKS::Cluster) and
its GPU node groups.

Access is by EKS access entries only (no aws-auth ConfigMap), one per
principal named in stage config (``eks.admin_principal_arns`` /
``eks.readonly_principal_arns``): no role the whole account may assume, and
no implicit admin for whoever runs CloudFormation.
"""

from __future__ import annotations

import json

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk.lambda_layer_kubectl_v34 import KubectlV34Layer
from constructs import Construct

from constructs_lib.acknowledge import acknowledge
from constructs_lib.gpu_nodegroups import GPU_TAINT_KEY, GpuNodegroups
from ml_stacks.base_stack import StageStack, log_retention
from ml_stacks.config import ADDONS_NEEDING_NODES, NODE_MONITORING_ADDON, StageConfig
from ml_stacks.fixed_names import eks_control_plane_log_group
from ml_stacks.log_groups import encrypted_log_group, log_group_name
from ml_stacks.pins import eks_release_version

ALL_CONTROL_PLANE_LOGS = [
    eks.ClusterLoggingTypes.API,
    eks.ClusterLoggingTypes.AUDIT,
    eks.ClusterLoggingTypes.AUTHENTICATOR,
    eks.ClusterLoggingTypes.CONTROLLER_MANAGER,
    eks.ClusterLoggingTypes.SCHEDULER,
]
ADMIN_ACCESS_POLICY = "AmazonEKSClusterAdminPolicy"
# View, not AdminView: read-only users do not read Secrets.
READONLY_ACCESS_POLICY = "AmazonEKSViewPolicy"
VPC_CNI_ADDON = "vpc-cni"
# The VPC CNI's daemon (ipamd) runs as this service account in kube-system.
VPC_CNI_SERVICE_ACCOUNT = "aws-node"
VPC_CNI_POLICY = "AmazonEKS_CNI_Policy"


class EksStack(StageStack):
    """Exposes ``cluster`` (``eks.Cluster``), ``nodegroups`` (``GpuNodegroups``),
    ``addons`` (name -> ``eks.Addon``), ``vpc_cni_role`` and ``access_entries`` (principal ARN ->
    ``eks.AccessEntry``)."""

    def __init__(self, scope: Construct, construct_id: str, *, config: StageConfig,
                 vpc: ec2.IVpc, data_key: kms.IKey, logs_key: kms.IKey) -> None:
        super().__init__(scope, construct_id, config=config,
                         description=f"ml-infra {config.name}: EKS cluster with GPU node groups")
        log_group = self._build_control_plane_logs(logs_key)
        self.cluster = self._build_cluster(vpc, data_key, log_group)
        self.access_entries = self._add_access()
        self.nodegroups = self._build_nodegroups(data_key, logs_key)
        self.vpc_cni_role = self._vpc_cni_role()
        self.addons = self._add_addons()
        # No node starts without the CNI's permissions: the add-on has its own first.
        self.nodegroups.node_role.node.add_dependency(self.addons[VPC_CNI_ADDON])
        if self.cluster.kubectl_provider is not None:
            self._acknowledge_kubectl_provider()
            self._encrypt_kubectl_provider_logs(config, logs_key)

        acknowledge(
            self.cluster.role,
            "AwsSolutions::AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonEKSClusterPolicy]",
            "The EKS service role's documented policy; AWS updates it as the control plane's needs change.",
        )
        self._add_outputs()

    # --- construction steps, in the order the constructor calls them ------

    def _build_control_plane_logs(self, logs_key: kms.IKey) -> logs.LogGroup:
        """EKS writes control-plane logs (audit included) to this group;
        creating it first gives it a retention instead of "never expire"
        and the stage's logs key instead of CloudWatch Logs' own."""
        return logs.LogGroup(
            self,
            "ControlPlaneLogs",
            log_group_name=eks_control_plane_log_group(self.config),
            retention=log_retention(self.config.eks.control_plane_log_retention_days),
            encryption_key=logs_key,
            removal_policy=self.removal_policy,
        )

    def _build_cluster(self, vpc: ec2.IVpc, data_key: kms.IKey,
                       log_group: logs.LogGroup) -> eks.Cluster:
        """The cluster (private endpoint unless ``eks.public_access_cidrs``),
        created after its control-plane log group."""
        eks_config = self.config.eks
        if eks_config.public_access_cidrs:
            endpoint_access = eks.EndpointAccess.PUBLIC_AND_PRIVATE.only_from(
                *eks_config.public_access_cidrs)
        else:
            endpoint_access = eks.EndpointAccess.PRIVATE

        kubectl_options = None
        if eks_config.needs_device_plugin:
            # Only an AL2023 NVIDIA group needs anything applied inside the
            # cluster (the device plugin chart); otherwise no kubectl Lambda.
            kubectl_options = eks.KubectlProviderOptions(
                kubectl_layer=KubectlV34Layer(self, "KubectlLayer"))

        cluster = eks.Cluster(
            self,
            "Cluster",
            cluster_name=self.config.stack_prefix,
            version=eks.KubernetesVersion.of(eks_config.kubernetes_version),
            vpc=vpc,
            vpc_subnets=[ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)],
            endpoint_access=endpoint_access,
            cluster_logging=ALL_CONTROL_PLANE_LOGS,
            secrets_encryption_key=data_key,
            # Managed node groups below, not EKS Auto Mode, and no default group.
            default_capacity_type=eks.DefaultCapacityType.NODEGROUP,
            default_capacity=0,
            # Whoever runs CloudFormation (CDK's deploy role, admin of the
            # account) would otherwise stay cluster admin for the cluster's
            # life, outside config: access is only the entries below.
            bootstrap_cluster_creator_admin_permissions=False,
            kubectl_provider_options=kubectl_options,
            output_config_command=False,
        )
        cluster.node.add_dependency(log_group)
        return cluster

    def _build_nodegroups(self, data_key: kms.IKey, logs_key: kms.IKey) -> GpuNodegroups:
        """The system and GPU managed node groups of ``config.eks``."""
        eks_config = self.config.eks
        return GpuNodegroups(
            self,
            "Nodegroups",
            cluster=self.cluster,
            system=eks_config.system,
            gpu_inference=eks_config.gpu_inference,
            gpu_training=eks_config.gpu_training,
            serving_pair=eks_config.serving_pair,
            device_plugin_chart_version=eks_config.device_plugin_chart_version,
            release_versions=self._release_versions(),
            node_repair=eks_config.node_repair,
            # Node volumes hold images, container layers and pod scratch
            # data (datasets and weights a pod stages): the data key, not aws/ebs.
            volume_key=data_key,
            log_group_name=log_group_name(self, self.config, "asg-tagger"),
            log_key=logs_key,
        )

    def _add_outputs(self) -> None:
        """The cluster's name and the command that writes a kubeconfig for it."""
        cdk.CfnOutput(self, "ClusterName", value=self.cluster.cluster_name)
        cdk.CfnOutput(
            self,
            "UpdateKubeconfigCommand",
            value=f"aws eks update-kubeconfig --name {self.config.stack_prefix} --region {self.region}",
            description="kubeconfig for a principal in eks.admin_principal_arns or "
                        "eks.readonly_principal_arns (run it as that principal)",
        )

    def _release_versions(self) -> dict[str, str]:
        """The pinned node group release version of every AMI type the stage uses."""
        eks_config = self.config.eks
        ami_types = {g.ami_type for g in (eks_config.system, *eks_config.nodegroups.values())}
        versions = {}
        for ami_type in sorted(ami_types):
            version = eks_release_version(self.config.region, eks_config.kubernetes_version, ami_type)
            if version is None:
                cdk.Annotations.of(self).add_warning_v2(
                    "ml-infra:UnpinnedNodeAmi",
                    f"{ami_type} node groups have no pinned release for Kubernetes "
                    f"{eks_config.kubernetes_version} in {self.config.region}: EKS picks its latest "
                    f"when a group is created. Pin it: make refresh-amis STAGE={self.config.name}")
                continue
            versions[ami_type] = version
        return versions

    def _add_addons(self) -> dict[str, eks.Addon]:
        versions = self.config.eks.addons.as_dict()
        # The cluster's own Pod Identity agent add-on, pinned: the cluster
        # wires service accounts with pod identity to this one.
        agent = self.cluster.eks_pod_identity_agent
        cfn_agent = agent.node.default_child
        assert isinstance(cfn_agent, eks.CfnAddon)
        cfn_agent.addon_version = versions.pop("eks-pod-identity-agent")
        cfn_agent.resolve_conflicts = "OVERWRITE"
        addons = {}
        for name, version in versions.items():
            addon = eks.Addon(self, "Addon" + "".join(p.title() for p in name.split("-")),
                              cluster=self.cluster, addon_name=name, addon_version=version)
            cfn = addon.node.default_child
            assert isinstance(cfn, eks.CfnAddon)
            # EKS installs self-managed vpc-cni, coredns and kube-proxy at
            # creation: the managed add-on takes them over.
            cfn.resolve_conflicts = "OVERWRITE"
            if name == VPC_CNI_ADDON:
                # aws-node gets its credentials through the agent's DaemonSet.
                addon.node.add_dependency(agent)
                cfn.pod_identity_associations = [eks.CfnAddon.PodIdentityAssociationProperty(
                    role_arn=self.vpc_cni_role.role_arn, service_account=VPC_CNI_SERVICE_ACCOUNT)]
            if name == NODE_MONITORING_ADDON:
                cfn.configuration_values = json.dumps(node_monitoring_values(), sort_keys=True)
            if name in ADDONS_NEEDING_NODES:
                # Its pods need a node: created before one is ACTIVE, the
                # add-on stays DEGRADED and the stack fails.
                addon.node.add_dependency(self.nodegroups.nodegroups["system"])
            addons[name] = addon
        return addons

    def _vpc_cni_role(self) -> iam.Role:
        """The VPC CNI's own identity (EKS Pod Identity for
        ``kube-system/aws-node``): the network-interface permissions it needs
        to give pods IPs, held by the CNI alone instead of by every node."""
        role = iam.Role(
            self,
            "VpcCniRole",
            # Pod Identity assumes the role and tags the session.
            assumed_by=iam.ServicePrincipal("pods.eks.amazonaws.com").with_session_tags(),
            description="VPC CNI (kube-system/aws-node) of the stage's EKS cluster, through EKS Pod Identity",
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name(VPC_CNI_POLICY)],
        )
        acknowledge(
            role,
            f"AwsSolutions::AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/{VPC_CNI_POLICY}]",
            "The VPC CNI's documented policy (assign and release pod IPs on the nodes' network "
            "interfaces); AWS keeps it in step with each CNI release. Held by the CNI's own "
            "Pod Identity role only, not by the nodes.",
        )
        return role

    def _add_access(self) -> dict[str, eks.AccessEntry]:
        """One access entry per configured principal, each with its policy
        and scope: admins ``AmazonEKSClusterAdminPolicy``, readers
        ``AmazonEKSViewPolicy`` (no Secrets), both cluster-wide. None
        configured: no human can reach the cluster."""
        eks_config = self.config.eks
        cluster_scope = eks.AccessScopeType.CLUSTER
        grants = (("Admin", eks_config.admin_principal_arns, ADMIN_ACCESS_POLICY),
                  ("ReadOnly", eks_config.readonly_principal_arns, READONLY_ACCESS_POLICY))
        entries = {}
        for kind, arns, policy_name in grants:
            policy = eks.AccessPolicy.from_access_policy_name(policy_name, access_scope_type=cluster_scope)
            for index, arn in enumerate(arns):
                # Under the cluster, as before: an unchanged principal keeps
                # its logical ID (a replacement would collide with itself).
                self.cluster.grant_access(f"{kind}Access{index}", arn, [policy])
                entry = self.cluster.node.find_child(f"{kind}Access{index}")
                assert isinstance(entry, eks.AccessEntry)
                entries[arn] = entry
        return entries

    def _encrypt_kubectl_provider_logs(self, config: StageConfig, logs_key: kms.IKey) -> None:
        """The kubectl provider's functions offer no log group option: without
        this they write to groups Lambda creates, unencrypted and kept forever."""
        provider = self.cluster.kubectl_provider
        assert isinstance(provider, Construct)
        log_group = encrypted_log_group(
            self, "KubectlProviderLogs", config=config, purpose="kubectl-provider", key=logs_key,
            retention=logs.RetentionDays.ONE_MONTH, removal_policy=cdk.RemovalPolicy.DESTROY)
        functions = [c for c in provider.node.find_all() if isinstance(c, lambda_.Function)]
        for function in functions:
            function.node.default_child.add_property_override("LoggingConfig.LogGroup",
                                                              log_group.log_group_name)
            log_group.grant_write(function)

    def _acknowledge_kubectl_provider(self) -> None:
        """The kubectl provider is aws-cdk-lib's own (two Lambda functions in
        the VPC); its roles and runtime are not configurable."""
        provider = self.cluster.kubectl_provider
        assert isinstance(provider, Construct)
        handler = provider.node.find_child("Handler")
        framework = provider.node.find_child("Provider").node.find_child("framework-onEvent")
        managed = "AwsSolutions::AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/"
        for construct in (handler, framework):
            acknowledge(construct, managed + "service-role/AWSLambdaBasicExecutionRole]",
                        "aws_eks_v2's kubectl provider gives its Lambda functions the AWS managed "
                        "basic execution policy (CloudWatch Logs) and offers no option to replace it.")
            acknowledge(construct, managed + "service-role/AWSLambdaVPCAccessExecutionRole]",
                        "The kubectl Lambda functions run in the VPC to reach the private API "
                        "endpoint; aws-cdk-lib attaches the managed ENI policy for that.")
        acknowledge(handler, managed + "AmazonEC2ContainerRegistryReadOnly]",
                    "aws_eks_v2's kubectl handler may pull Helm charts from ECR; aws-cdk-lib "
                    "attaches the managed read-only ECR policy.")
        acknowledge(handler,
                    "AwsSolutions::AwsSolutions-IAM4[Policy::{\"Fn::If\":[\""
                    + self.get_logical_id(handler.node.find_child("HasEcrPublic")) + "\",{\"Fn::Join\":[\"\","
                    "[\"arn:\",{\"Ref\":\"AWS::Partition\"},\":iam::aws:policy/"
                    "AmazonElasticContainerRegistryPublicReadOnly\"]]},{\"Ref\":\"AWS::NoValue\"}]}]",
                    "aws_eks_v2's kubectl handler may pull Helm charts from ECR Public (aws partition "
                    "only); aws-cdk-lib attaches the managed read-only policy.")
        acknowledge(handler, "AwsSolutions::AwsSolutions-L1",
                    "aws-cdk-lib picks the kubectl handler's Python runtime (the newest it knows "
                    "for the region) and exposes no runtime option.")
        acknowledge(framework,
                    "AwsSolutions::AwsSolutions-IAM5[Resource::<"
                    + self.get_logical_id(handler.node.default_child) + ".Arn>:*]",
                    "CDK's custom-resource provider framework invokes any version of its own "
                    "kubectl handler function, and only that function.")


def node_monitoring_values() -> dict:
    """Add-on configuration of the node monitoring agent.

    Its node agent tolerates every taint already; its DCGM server (the GPU
    health checks) tolerates none by default, so it would never run on our
    GPU nodes, which all carry the ``nvidia.com/gpu`` taint.
    """
    return {"dcgmAgent": {"tolerations": [
        {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]}}
