"""EKS stack: cluster, access, add-ons, node groups and their launch templates."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from aws_cdk.assertions import Match, Template

from constructs_lib.gpu_nodegroups import (
    AUTOSCALER_LABEL_TAG,
    AUTOSCALER_TAINT_TAG,
    DEVICE_PLUGIN_LABEL,
)
from ml_stacks.app_factory import build_app
from ml_stacks.config import AddonVersions, default_configs
from ml_stacks.pins import eks_release_version
from tests.conftest import STAGES, resources_of_type, stacks_of

GPU_TAINT = {"Key": "nvidia.com/gpu", "Value": "true", "Effect": "NO_SCHEDULE"}
HELM_CHART = "Custom::AWSCDK-EKS-HelmChart"
ALL_LOG_TYPES = ["api", "audit", "authenticator", "controllerManager", "scheduler"]

# role -> (logical ID prefix, capacity type, workload label, tainted)
GROUPS = {
    "system": ("NodegroupsSystem", "ON_DEMAND", "system", False),
    "gpu_inference": ("NodegroupsGpuInference", "ON_DEMAND", "gpu-inference", True),
    "gpu_training": ("NodegroupsGpuTraining", "SPOT", "gpu-training", True),
    "serving_baseline": ("NodegroupsServingBaseline", "ON_DEMAND", "gpu-inference", True),
    "serving_burst": ("NodegroupsServingBurst", "SPOT", "gpu-inference", True),
}


def build_stage(tmp_path, config):
    app = build_app([config], outdir=str(tmp_path))
    app.synth()  # the cdk-nag gate included
    return app.node.find_child(config.name)


def with_eks(stage_name: str, **changes):
    config = default_configs()[stage_name]
    return replace(config, eks=replace(config.eks, **changes))


def nodegroup(template_json: dict, prefix: str) -> dict:
    [(_, resource)] = [(lid, r) for lid, r in resources_of_type(template_json, "AWS::EKS::Nodegroup").items()
                       if lid.startswith(prefix) and "LaunchTemplate" not in lid]
    return resource["Properties"]


def group_configs(config) -> dict:
    return {"system": config.eks.system, **config.eks.nodegroups}


# --- cluster -----------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_endpoint_is_private_only_by_default_in_every_stage(synthesized, stage) -> None:
    # Public only to the CIDRs a stage names (-c eks_public_access_cidrs=... in dev).
    cidrs = list(synthesized.configs[stage].eks.public_access_cidrs)
    synthesized.template(stage, "eks").has_resource_properties("AWS::EKS::Cluster", {
        "Name": f"ml-{stage}",
        "ResourcesVpcConfig": Match.object_like({
            "EndpointPrivateAccess": True,
            "EndpointPublicAccess": bool(cidrs),
            "PublicAccessCidrs": cidrs or Match.absent(),
        }),
    })


def test_dev_endpoint_is_public_only_from_the_configured_cidrs(tmp_path) -> None:
    dev = default_configs(eks_public_access_cidrs=("203.0.113.0/24", "198.51.100.10/32"))["dev"]
    stage = build_stage(tmp_path, dev)
    Template.from_stack(stage.eks).has_resource_properties("AWS::EKS::Cluster", {
        "ResourcesVpcConfig": Match.object_like({
            "EndpointPrivateAccess": True,
            "EndpointPublicAccess": True,
            "PublicAccessCidrs": ["203.0.113.0/24", "198.51.100.10/32"],
        }),
    })


def test_eks_public_access_cidrs_reach_only_dev() -> None:
    configs = default_configs(eks_public_access_cidrs=("203.0.113.0/24",))
    assert configs["dev"].eks.public_access_cidrs == ("203.0.113.0/24",)
    assert configs["staging"].eks.public_access_cidrs == ()
    assert configs["prod"].eks.public_access_cidrs == ()


@pytest.mark.parametrize("stage", STAGES)
def test_cluster_logs_every_control_plane_log_type_to_a_group_with_retention(synthesized, stage) -> None:
    template = synthesized.template(stage, "eks")
    template.has_resource_properties("AWS::EKS::Cluster", {
        "Logging": {"ClusterLogging": {"EnabledTypes": [{"Type": t} for t in ALL_LOG_TYPES]}},
    })
    retention = synthesized.configs[stage].eks.control_plane_log_retention_days
    template.has_resource_properties("AWS::Logs::LogGroup", {
        "LogGroupName": f"/aws/eks/ml-{stage}/cluster", "RetentionInDays": retention})
    [cluster] = resources_of_type(synthesized.stack(stage, "eks").template_json, "AWS::EKS::Cluster").values()
    [log_group_id] = [lid for lid in resources_of_type(synthesized.stack(stage, "eks").template_json,
                                                       "AWS::Logs::LogGroup")
                      if lid.startswith("ControlPlaneLogs")]
    assert log_group_id in cluster["DependsOn"]  # exists before EKS writes to it


@pytest.mark.parametrize("stage", STAGES)
def test_secrets_are_envelope_encrypted_with_the_stage_key(synthesized, stage) -> None:
    synthesized.template(stage, "eks").has_resource_properties("AWS::EKS::Cluster", {
        "EncryptionConfig": [{
            "Provider": {"KeyArn": {"Fn::GetStackOutput": Match.object_like({
                "StackName": f"ml-{stage}-storage",
                "OutputName": Match.string_like_regexp(r"KeyArn|Key.*Arn")})}},
            "Resources": ["secrets"],
        }],
    })


@pytest.mark.parametrize("stage", STAGES)
def test_cluster_uses_access_entries_and_managed_node_groups_only(synthesized, stage) -> None:
    synthesized.template(stage, "eks").has_resource_properties("AWS::EKS::Cluster", {
        "Version": "1.34",
        "AccessConfig": {"AuthenticationMode": "API", "BootstrapClusterCreatorAdminPermissions": False},
        "ComputeConfig": {"Enabled": False},
        "ResourcesVpcConfig": Match.object_like({"SubnetIds": Match.array_with([
            {"Fn::GetStackOutput": Match.object_like({
                "StackName": f"ml-{stage}-network",
                "OutputName": Match.string_like_regexp("privateSubnet")})}])}),
    })


def principal_trusts_the_account(statement: dict) -> bool:
    """A trust statement any principal of the account may use (with its own
    sts:AssumeRole allowance): the account root, in any spelling."""
    aws = statement.get("Principal", {}).get("AWS")
    return aws is not None and ":root" in json.dumps(aws)


@pytest.mark.parametrize("stage", STAGES)
def test_cluster_access_comes_only_from_configured_principals(synthesized, stage) -> None:
    template = synthesized.template(stage, "eks")
    template_json = synthesized.stack(stage, "eks").template_json
    eks_config = synthesized.configs[stage].eks
    expected = len(eks_config.admin_principal_arns) + len(eks_config.readonly_principal_arns)
    template.resource_count_is("AWS::EKS::AccessEntry", expected)
    for lid, role in resources_of_type(template_json, "AWS::IAM::Role").items():
        trust = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert not any(principal_trusts_the_account(s) for s in trust), lid
    [cluster] = resources_of_type(template_json, "AWS::EKS::Cluster").values()
    assert cluster["Properties"]["AccessConfig"]["BootstrapClusterCreatorAdminPermissions"] is False
    assert not any(r["Type"] == "Custom::AWSCDK-EKS-KubernetesResource" for r in template_json["Resources"].values())


def test_stage_without_principals_has_no_access_entry(tmp_path) -> None:
    stage = build_stage(tmp_path, with_eks("staging", admin_principal_arns=(), readonly_principal_arns=()))
    template = Template.from_stack(stage.eks)
    template.resource_count_is("AWS::EKS::AccessEntry", 0)
    assert stage.eks.access_entries == {}


def test_configured_principals_get_their_access_entries(tmp_path) -> None:
    admins = ("arn:aws:iam::123456789012:role/ml-platform-admins",
              "arn:aws:iam::123456789012:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_Admin_0123")
    reader = "arn:aws:iam::123456789012:user/ml-researcher"
    stage = build_stage(tmp_path, with_eks("staging", admin_principal_arns=admins,
                                           readonly_principal_arns=(reader,)))
    template = Template.from_stack(stage.eks)
    template.resource_count_is("AWS::EKS::AccessEntry", 3)
    assert set(stage.eks.access_entries) == {*admins, reader}
    for principal, policy in ((admins[0], "AmazonEKSClusterAdminPolicy"),
                              (admins[1], "AmazonEKSClusterAdminPolicy"),
                              (reader, "AmazonEKSViewPolicy")):
        template.has_resource_properties("AWS::EKS::AccessEntry", {
            "PrincipalArn": principal,
            "Type": Match.absent(),
            "AccessPolicies": [{"AccessScope": {"Type": "cluster"}, "PolicyArn": {"Fn::Join": ["", [
                "arn:", {"Ref": "AWS::Partition"}, f":eks::aws:cluster-access-policy/{policy}"]]}}],
        })


# --- add-ons -----------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_managed_addons_are_pinned_to_the_configured_versions(synthesized, stage) -> None:
    template_json = synthesized.stack(stage, "eks").template_json
    addons = {r["Properties"]["AddonName"]: r["Properties"]
              for r in resources_of_type(template_json, "AWS::EKS::Addon").values()}
    expected = synthesized.configs[stage].eks.addons.as_dict()
    assert set(addons) >= {"vpc-cni", "coredns", "kube-proxy", "eks-pod-identity-agent",
                           "eks-node-monitoring-agent"}
    assert {name: a["AddonVersion"] for name, a in addons.items()} == expected
    assert all(a["ResolveConflicts"] == "OVERWRITE" for a in addons.values())


@pytest.mark.parametrize("stage", STAGES)
def test_node_monitoring_agent_runs_its_gpu_checks_on_tainted_gpu_nodes(synthesized, stage) -> None:
    template_json = synthesized.stack(stage, "eks").template_json
    [agent] = [r["Properties"] for r in resources_of_type(template_json, "AWS::EKS::Addon").values()
               if r["Properties"]["AddonName"] == "eks-node-monitoring-agent"]
    values = json.loads(agent["ConfigurationValues"])
    # Every GPU group carries this taint; without the toleration DCGM never runs there.
    assert values == {"dcgmAgent": {"tolerations": [
        {"key": GPU_TAINT["Key"], "operator": "Exists", "effect": "NoSchedule"}]}}


@pytest.mark.parametrize("stage", STAGES)
def test_every_gpu_node_group_has_node_auto_repair_from_the_config(synthesized, stage) -> None:
    template_json = synthesized.stack(stage, "eks").template_json
    repair = synthesized.configs[stage].eks.node_repair
    for role in expected_groups(stage):
        prefix, _, _, gpu = GROUPS[role]
        props = nodegroup(template_json, prefix)
        if gpu:
            assert props["NodeRepairConfig"] == {
                "Enabled": repair.enabled,
                "MaxParallelNodesRepairedPercentage": repair.max_parallel_repaired_percentage,
                "MaxUnhealthyNodeThresholdPercentage": repair.max_unhealthy_percentage}, role
        else:
            assert "NodeRepairConfig" not in props, role


def test_node_repair_limits_follow_the_config(tmp_path) -> None:
    from ml_stacks.config import NodeRepairConfig
    config = with_eks("dev", node_repair=NodeRepairConfig(
        max_parallel_repaired_percentage=10, max_unhealthy_percentage=30))
    stage = build_stage(tmp_path, config)
    template = Template.from_stack(stage.eks)
    groups = template.find_resources("AWS::EKS::Nodegroup", {"Properties": {"NodeRepairConfig": {
        "Enabled": True, "MaxParallelNodesRepairedPercentage": 10, "MaxUnhealthyNodeThresholdPercentage": 30}}})
    assert len(groups) == len(config.eks.nodegroups)  # every GPU group, none of the system group


def test_cloudwatch_observability_addon_is_optional(tmp_path) -> None:
    stage = build_stage(tmp_path, with_eks("dev", addons=AddonVersions(
        cloudwatch_observability="v4.4.0-eksbuild.1")))
    Template.from_stack(stage.eks).has_resource_properties("AWS::EKS::Addon", {
        "AddonName": "amazon-cloudwatch-observability", "AddonVersion": "v4.4.0-eksbuild.1"})


# --- node groups ---------------------------------------------------------------

def is_stage_key_arn(value, stage: str) -> bool:
    """The ARN of the storage stack's ``Key``, read across stacks."""
    ref = value.get("Fn::GetStackOutput", {}) if isinstance(value, dict) else {}
    return ref.get("StackName") == f"ml-{stage}-storage" and "GetAttKey" in ref.get("OutputName", "")


def expected_groups(stage: str) -> list[str]:
    """The stage's node group roles: system first, then the GPU groups its config has."""
    return ["system", *default_configs()[stage].eks.nodegroups]


@pytest.mark.parametrize("stage", STAGES)
def test_every_node_group_has_its_ami_capacity_scaling_labels_and_taints(synthesized, stage) -> None:
    template_json = synthesized.stack(stage, "eks").template_json
    configs = group_configs(synthesized.configs[stage])
    assert len(resources_of_type(template_json, "AWS::EKS::Nodegroup")) == len(expected_groups(stage))
    for role in expected_groups(stage):
        prefix, capacity, workload, tainted = GROUPS[role]
        config = configs[role]
        props = nodegroup(template_json, prefix)
        assert props["AmiType"] == config.ami_type, role
        assert props["CapacityType"] == capacity, role
        assert props["InstanceTypes"] == list(config.instance_types), role
        assert props["ScalingConfig"] == {"MinSize": config.min_size, "DesiredSize": config.desired_size,
                                          "MaxSize": config.max_size}, role
        assert props["Labels"]["workload"] == workload, role
        assert props["Taints"] == ([GPU_TAINT] if tainted else []), role
        assert "DiskSize" not in props  # sized in the launch template


@pytest.mark.parametrize("stage", STAGES)
def test_gpu_groups_run_the_configured_ami_and_training_scales_as_configured(synthesized, stage) -> None:
    eks = synthesized.configs[stage].eks
    template_json = synthesized.stack(stage, "eks").template_json
    for role in expected_groups(stage)[1:]:
        assert nodegroup(template_json, GROUPS[role][0])["AmiType"] == eks.nodegroups[role].ami_type, role
    training = nodegroup(template_json, "NodegroupsGpuTraining")
    assert (training["ScalingConfig"]["MinSize"], training["ScalingConfig"]["DesiredSize"]) == (
        eks.gpu_training.min_size, eks.gpu_training.desired_size)
    assert training["InstanceTypes"] == list(eks.gpu_training.instance_types)
    assert len(training["InstanceTypes"]) >= 2  # spot: at least two types (validated)


@pytest.mark.parametrize("stage", STAGES)
def test_node_groups_carry_autoscaler_node_template_tags_for_labels_and_taints(synthesized, stage) -> None:
    template_json = synthesized.stack(stage, "eks").template_json
    for role in expected_groups(stage):
        prefix, _, workload, tainted = GROUPS[role]
        props = nodegroup(template_json, prefix)
        tags = props["Tags"]
        for key, value in props["Labels"].items():
            assert tags[f"{AUTOSCALER_LABEL_TAG}{key}"] == value, role
        assert tags[f"{AUTOSCALER_LABEL_TAG}workload"] == workload
        taint_tag = f"{AUTOSCALER_TAINT_TAG}nvidia.com/gpu"
        if tainted:
            assert tags[taint_tag] == "true:NoSchedule", role
        else:
            assert taint_tag not in tags


@pytest.mark.parametrize("stage", STAGES)
def test_each_groups_auto_scaling_group_gets_the_node_template_tags(synthesized, stage) -> None:
    """EKS does not copy node group tags to the Auto Scaling group, where the
    cluster autoscaler reads them: a custom resource looks the group up and tags it."""
    template_json = synthesized.stack(stage, "eks").template_json
    custom = resources_of_type(template_json, "Custom::AWS")
    for role in expected_groups(stage):
        prefix = GROUPS[role][0]
        props = nodegroup(template_json, prefix)
        [ng_id] = [lid for lid, r in template_json["Resources"].items()
                   if r["Type"] == "AWS::EKS::Nodegroup" and lid.startswith(prefix)]
        [lookup_id] = [lid for lid in custom if lid.startswith(f"{prefix}AsgLookup")]
        [tags_id] = [lid for lid in custom if lid.startswith(f"{prefix}AsgTags")]
        lookup = json.dumps(custom[lookup_id]["Properties"]["Create"])
        assert '\\"action\\":\\"describeNodegroup\\"' in lookup
        assert json.dumps({"Fn::GetAtt": [ng_id, "NodegroupName"]}) in lookup
        create = custom[tags_id]["Properties"]["Create"]["Fn::Join"][1]
        call = "".join(p if isinstance(p, str) else "<asg>" for p in create)
        parsed = json.loads(call)
        assert parsed["action"] == "createOrUpdateTags" and parsed["service"] == "AutoScaling"
        asg_tags = {t["Key"]: t["Value"] for t in parsed["parameters"]["Tags"]}
        assert all(t["ResourceId"] == "<asg>" and t["PropagateAtLaunch"] is False
                   for t in parsed["parameters"]["Tags"])
        expected = {k: v for k, v in props["Tags"].items() if k.startswith("k8s.io/cluster-autoscaler/")}
        assert asg_tags == expected, role
        assert custom[tags_id]["Properties"]["Update"] == custom[tags_id]["Properties"]["Create"]
    # Tagging is limited to this cluster's Auto Scaling groups.
    # One policy for every group's lookup and tagging (one IAM5 finding per stage).
    policies = [r for r in resources_of_type(template_json, "AWS::IAM::Policy").values()
                if any(st["Action"] == "autoscaling:CreateOrUpdateTags"
                       for st in r["Properties"]["PolicyDocument"]["Statement"])]
    [policy] = policies
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    [tagging] = [st for st in statements if st["Action"] == "autoscaling:CreateOrUpdateTags"]
    assert tagging["Resource"] == "*"
    assert list(tagging["Condition"]["StringEquals"]) == ["aws:ResourceTag/eks:cluster-name"]
    # Every other statement of it is one group's lookup, on that group's ARN.
    lookups = [st for st in statements if st is not tagging]
    assert {st["Action"] for st in lookups} == {"eks:DescribeNodegroup"}
    assert len(lookups) == len(expected_groups(stage))
    assert all("Fn::GetAtt" in st["Resource"] for st in lookups)


@pytest.mark.parametrize("stage", STAGES)
def test_node_groups_share_one_node_role(synthesized, stage) -> None:
    """One role for every group's nodes: the same policies, one access entry
    (EKS creates it with the first group), one finding per managed policy."""
    template_json = synthesized.stack(stage, "eks").template_json
    node_roles = {json.dumps(nodegroup(template_json, GROUPS[role][0])["NodeRole"])
                  for role in expected_groups(stage)}
    assert len(node_roles) == 1
    [role_ref] = node_roles
    role = resources_of_type(template_json, "AWS::IAM::Role")[json.loads(role_ref)["Fn::GetAtt"][0]]
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "ec2.amazonaws.com"}


@pytest.mark.parametrize("stage", STAGES)
def test_launch_templates_require_imdsv2_with_hop_limit_1_and_encrypted_gp3(synthesized, stage) -> None:
    template_json = synthesized.stack(stage, "eks").template_json
    templates = resources_of_type(template_json, "AWS::EC2::LaunchTemplate")
    configs = group_configs(synthesized.configs[stage])
    for role in expected_groups(stage):
        props = nodegroup(template_json, GROUPS[role][0])
        data = templates[props["LaunchTemplate"]["Id"]["Ref"]]["Properties"]["LaunchTemplateData"]
        assert data["MetadataOptions"] == {"HttpTokens": "required", "HttpPutResponseHopLimit": 1}, role
        assert "IamInstanceProfile" not in data and "UserData" not in data
        devices = {d["DeviceName"]: d["Ebs"] for d in data["BlockDeviceMappings"]}
        assert all(e["Encrypted"] is True and e["VolumeType"] == "gp3" for e in devices.values())
        # The stage key (storage stack), not EBS's AWS managed key.
        assert all(is_stage_key_arn(e.get("KmsKeyId"), stage) for e in devices.values()), role
        # Bottlerocket: images and containers live on the data volume.
        assert devices["/dev/xvdb"]["VolumeSize"] == configs[role].disk_size_gib, role
        assert "VolumeSize" not in devices["/dev/xvda"]


@pytest.mark.parametrize("stage", STAGES)
def test_no_device_plugin_or_kubectl_lambda_with_bottlerocket_nvidia(synthesized, stage) -> None:
    template = synthesized.template(stage, "eks")
    template.resource_count_is(HELM_CHART, 0)
    template.resource_count_is("AWS::Lambda::LayerVersion", 0)
    functions = resources_of_type(synthesized.stack(stage, "eks").template_json, "AWS::Lambda::Function")
    assert not [lid for lid in functions if "Kubectl" in lid]
    for role in expected_groups(stage):
        labels = nodegroup(synthesized.stack(stage, "eks").template_json, GROUPS[role][0])["Labels"]
        assert DEVICE_PLUGIN_LABEL not in labels


def test_al2023_nvidia_installs_the_pinned_device_plugin_only_on_its_nodes(tmp_path) -> None:
    dev = default_configs()["dev"]
    training = replace(dev.eks.gpu_training, ami_type="AL2023_x86_64_NVIDIA")
    stage = build_stage(tmp_path, with_eks("dev", gpu_training=training, device_plugin_chart_version="0.17.1"))
    template = Template.from_stack(stage.eks)
    template_json = template.to_json()
    [chart] = resources_of_type(template_json, HELM_CHART).values()
    props = chart["Properties"]
    assert (props["Chart"], props["Version"], props["Namespace"]) == ("nvidia-device-plugin", "0.17.1", "kube-system")
    assert props["Repository"] == "https://nvidia.github.io/k8s-device-plugin"
    values = json.loads(props["Values"])
    assert values["nodeSelector"] == {DEVICE_PLUGIN_LABEL: "helm"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in values["tolerations"]
    # Through the cluster's kubectl provider, with the pinned kubectl layer.
    assert "KubectlProvider" in props["ServiceToken"]["Fn::GetAtt"][0]
    template.resource_count_is("AWS::Lambda::LayerVersion", 2)  # kubectl + AWS CLI
    # Only the AL2023 group's nodes run it; Bottlerocket nodes keep their own plugin.
    assert nodegroup(template_json, "NodegroupsGpuTraining")["Labels"][DEVICE_PLUGIN_LABEL] == "helm"
    assert DEVICE_PLUGIN_LABEL not in nodegroup(template_json, "NodegroupsGpuInference")["Labels"]
    # AL2023 has one root volume: it is the one sized from config.
    lt_id = nodegroup(template_json, "NodegroupsGpuTraining")["LaunchTemplate"]["Id"]["Ref"]
    data = template_json["Resources"][lt_id]["Properties"]["LaunchTemplateData"]
    [device] = data["BlockDeviceMappings"]
    assert is_stage_key_arn(device["Ebs"].pop("KmsKeyId"), "dev")
    assert device == {"DeviceName": "/dev/xvda", "Ebs": {
        "DeleteOnTermination": True, "Encrypted": True, "VolumeSize": training.disk_size_gib,
        "VolumeType": "gp3"}}


def test_gpu_families_cdk_does_not_know_still_get_the_nvidia_ami(tmp_path) -> None:
    dev = default_configs()["dev"]
    training = replace(dev.eks.gpu_training, instance_types=("p5.48xlarge", "p5e.48xlarge"))
    stage = build_stage(tmp_path, with_eks("dev", gpu_training=training))
    props = nodegroup(Template.from_stack(stage.eks).to_json(), "NodegroupsGpuTraining")
    assert props["InstanceTypes"] == ["p5.48xlarge", "p5e.48xlarge"]
    assert props["AmiType"] == "BOTTLEROCKET_x86_64_NVIDIA"


def managed_policy_names(role: dict) -> set[str]:
    return {arn["Fn::Join"][1][-1].rsplit("/", 1)[1] for arn in role["Properties"].get("ManagedPolicyArns", [])}


@pytest.mark.parametrize("stage", STAGES)
def test_vpc_cni_policy_is_held_by_the_cni_pod_identity_not_by_nodes(synthesized, stage) -> None:
    template_json = synthesized.stack(stage, "eks").template_json
    roles = resources_of_type(template_json, "AWS::IAM::Role")
    [(cni_id, cni)] = [(lid, r) for lid, r in resources_of_type(template_json, "AWS::EKS::Addon").items()
                       if r["Properties"]["AddonName"] == "vpc-cni"]
    [association] = cni["Properties"]["PodIdentityAssociations"]
    assert association["ServiceAccount"] == "aws-node"
    cni_role = roles[association["RoleArn"]["Fn::GetAtt"][0]]
    assert cni_role["Properties"]["AssumeRolePolicyDocument"]["Statement"] == [{
        "Action": ["sts:AssumeRole", "sts:TagSession"], "Effect": "Allow",
        "Principal": {"Service": "pods.eks.amazonaws.com"}}]
    assert managed_policy_names(cni_role) == {"AmazonEKS_CNI_Policy"}
    holders = [lid for lid, r in roles.items() if "AmazonEKS_CNI_Policy" in managed_policy_names(r)]
    assert holders == [association["RoleArn"]["Fn::GetAtt"][0]]
    for role in expected_groups(stage):
        props = nodegroup(template_json, GROUPS[role][0])
        node_role_id = props["NodeRole"]["Fn::GetAtt"][0]
        assert managed_policy_names(roles[node_role_id]) == {
            "AmazonEKSWorkerNodePolicy", "AmazonEC2ContainerRegistryPullOnly"}, role
        # Existing nodes keep the CNI policy until the add-on has its own identity.
        assert cni_id in roles[node_role_id].get("DependsOn", []), role


# --- stage wiring, outputs, cdk-nag ------------------------------------------------

def test_eks_can_be_disabled_per_stage(tmp_path) -> None:
    stage = build_stage(tmp_path, with_eks("dev", enabled=False))
    assert stage.eks is None
    assert {s.node.id for s in stage.stacks} == set(stacks_of(stage.config))
    assert "eks" not in stacks_of(stage.config)


def test_kubeconfig_output_uses_the_callers_own_identity(synthesized) -> None:
    outputs = synthesized.stack("prod", "eks").template_json["Outputs"]
    assert outputs["UpdateKubeconfigCommand"]["Value"] == \
        f"aws eks update-kubeconfig --name ml-prod --region {synthesized.configs['prod'].region}"


def test_prod_meets_eks1_and_eks2_without_acknowledgements(synthesized) -> None:
    report = json.loads((synthesized.outdir / "validation-report.json").read_text())
    for plugin in report["pluginReports"]:
        for violation in plugin.get("violations", []) + plugin.get("suppressedViolations", []):
            paths = [c["constructPath"] for c in violation["violatingConstructs"]]
            if any(p.startswith("prod/") for p in paths):
                assert not violation["ruleName"].startswith(("AwsSolutions-EKS1", "AwsSolutions-EKS2")), violation
    # cdk-nag 3.0.2's EKS1/EKS2 only inspect aws_eks (v1) CfnCluster, so they
    # never fire on an aws_eks_v2 cluster: assert what they check directly.
    [cluster] = resources_of_type(synthesized.stack("prod", "eks").template_json, "AWS::EKS::Cluster").values()
    assert cluster["Properties"]["ResourcesVpcConfig"]["EndpointPublicAccess"] is False  # EKS1
    enabled = [t["Type"] for t in cluster["Properties"]["Logging"]["ClusterLogging"]["EnabledTypes"]]
    assert sorted(enabled) == sorted(ALL_LOG_TYPES)  # EKS2


def test_stack_exposes_cluster_nodegroups_and_access_entries(synthesized) -> None:
    eks_stack = synthesized.app.node.find_child("prod").eks
    assert set(eks_stack.nodegroups.nodegroups) == set(expected_groups("prod"))
    assert eks_stack.cluster.cluster_name
    eks = synthesized.configs["prod"].eks
    assert set(eks_stack.access_entries) == {*eks.admin_principal_arns, *eks.readonly_principal_arns}


def test_al2023_group_without_a_kubectl_provider_is_refused() -> None:
    import aws_cdk as cdk
    from aws_cdk import aws_ec2 as ec2
    from aws_cdk import aws_eks_v2 as eks

    from constructs_lib.gpu_nodegroups import GpuNodegroups

    eks_config = default_configs()["dev"].eks
    stack = cdk.Stack(cdk.App(), "Bare")
    vpc = ec2.Vpc(stack, "Vpc", availability_zones=["us-east-1a", "us-east-1b"], nat_gateways=1)
    cluster = eks.Cluster(stack, "Cluster", version=eks.KubernetesVersion.V1_34, vpc=vpc,
                          default_capacity_type=eks.DefaultCapacityType.NODEGROUP, default_capacity=0)
    with pytest.raises(ValueError, match="needs the NVIDIA device plugin"):
        GpuNodegroups(stack, "Nodegroups", cluster=cluster, system=eks_config.system,
                      gpu_inference=replace(eks_config.gpu_inference, ami_type="AL2023_x86_64_NVIDIA"),
                      gpu_training=eks_config.gpu_training,
                      device_plugin_chart_version="0.17.1")


def test_node_volume_key_admits_the_auto_scaling_service_role_that_launches_the_nodes() -> None:
    import aws_cdk as cdk
    from aws_cdk import aws_ec2 as ec2
    from aws_cdk import aws_eks_v2 as eks
    from aws_cdk import aws_kms as kms

    from constructs_lib.gpu_nodegroups import GpuNodegroups

    eks_config = default_configs()["dev"].eks
    stack = cdk.Stack(cdk.App(), "Bare", env=cdk.Environment(account="123456789012", region="us-east-1"))
    vpc = ec2.Vpc(stack, "Vpc", availability_zones=["us-east-1a", "us-east-1b"], nat_gateways=1)
    cluster = eks.Cluster(stack, "Cluster", version=eks.KubernetesVersion.V1_34, vpc=vpc,
                          default_capacity_type=eks.DefaultCapacityType.NODEGROUP, default_capacity=0)
    key = kms.Key(stack, "VolumeKey")
    GpuNodegroups(stack, "Nodegroups", cluster=cluster, system=eks_config.system,
                  gpu_inference=eks_config.gpu_inference, gpu_training=eks_config.gpu_training,
                  device_plugin_chart_version="0.17.1", volume_key=key)
    template_json = Template.from_stack(stack).to_json()
    key_id = stack.get_logical_id(key.node.default_child)
    for data in (t["Properties"]["LaunchTemplateData"]
                 for t in resources_of_type(template_json, "AWS::EC2::LaunchTemplate").values()):
        for device in data["BlockDeviceMappings"]:
            assert device["Ebs"]["KmsKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}
    statements = {s.get("Sid"): s for s in
                  template_json["Resources"][key_id]["Properties"]["KeyPolicy"]["Statement"]}
    service_role = {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":iam::123456789012:role/"
                                      "aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling"]]}
    use = statements["AllowAutoScalingServiceRoleToUseKey"]
    grant = statements["AllowAutoScalingServiceRoleToGrantKeyToEbs"]
    for statement in (use, grant):
        assert statement["Condition"]["StringEquals"] == {"aws:PrincipalArn": service_role,
                                                          "kms:CallerAccount": "123456789012"}
    assert {"kms:Decrypt", "kms:GenerateDataKey*", "kms:ReEncrypt*", "kms:DescribeKey"} <= set(use["Action"])
    assert grant["Action"] == "kms:CreateGrant"
    assert grant["Condition"]["Bool"] == {"kms:GrantIsForAWSResource": "true"}


def test_kubectl_provider_runs_in_the_private_subnets_to_reach_the_private_endpoint(tmp_path) -> None:
    dev = default_configs()["dev"]
    stage = build_stage(tmp_path, with_eks("dev", gpu_inference=replace(
        dev.eks.gpu_inference, ami_type="AL2023_x86_64_NVIDIA")))
    functions = resources_of_type(Template.from_stack(stage.eks).to_json(), "AWS::Lambda::Function")
    kubectl = [f["Properties"] for lid, f in functions.items() if "KubectlProvider" in lid]
    assert len(kubectl) == 2  # handler and provider framework
    for props in kubectl:
        subnets = props["VpcConfig"]["SubnetIds"]
        assert all("privateSubnet" in s["Fn::GetStackOutput"]["OutputName"] for s in subnets)


# --- first deploy: add-ons wait for nodes, node AMIs are pinned -------------------

def _logical_id(template_json: dict, resource_type: str, prefix: str) -> str:
    [lid] = [lid for lid, r in resources_of_type(template_json, resource_type).items()
             if lid.startswith(prefix)]
    return lid


@pytest.mark.parametrize("stage", STAGES)
def test_addons_that_run_a_deployment_wait_for_the_system_node_group(synthesized, stage) -> None:
    template_json = synthesized.stack(stage, "eks").template_json
    system = _logical_id(template_json, "AWS::EKS::Nodegroup", "NodegroupsSystem")
    addons = {r["Properties"]["AddonName"]: r for r in resources_of_type(template_json, "AWS::EKS::Addon").values()}
    assert system in addons["coredns"].get("DependsOn", [])
    # DaemonSet add-ons are ACTIVE without nodes; vpc-cni must not wait for them.
    assert system not in addons["vpc-cni"].get("DependsOn", [])


def test_the_cloudwatch_addon_waits_for_the_system_node_group_too(tmp_path) -> None:
    stage = build_stage(tmp_path, with_eks("dev", addons=AddonVersions(
        cloudwatch_observability="v4.4.0-eksbuild.1")))
    template_json = Template.from_stack(stage.eks).to_json()
    system = _logical_id(template_json, "AWS::EKS::Nodegroup", "NodegroupsSystem")
    [addon] = [r for r in resources_of_type(template_json, "AWS::EKS::Addon").values()
               if r["Properties"]["AddonName"] == "amazon-cloudwatch-observability"]
    assert system in addon["DependsOn"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_node_group_runs_its_pinned_release_version(synthesized, stage) -> None:
    config = synthesized.configs[stage]
    groups = resources_of_type(synthesized.stack(stage, "eks").template_json, "AWS::EKS::Nodegroup")
    assert groups
    for lid, group in groups.items():
        props = group["Properties"]
        expected = eks_release_version(config.region, config.eks.kubernetes_version, props["AmiType"])
        assert expected is not None
        assert props["ReleaseVersion"] == expected, lid


def test_an_unpinned_ami_type_is_left_to_eks_with_a_warning(tmp_path) -> None:
    dev = default_configs()["dev"]
    stage = build_stage(tmp_path, with_eks("dev", system=replace(dev.eks.system, ami_type="AL2023_x86_64_STANDARD")))
    template_json = Template.from_stack(stage.eks).to_json()
    system = resources_of_type(template_json, "AWS::EKS::Nodegroup")[
        _logical_id(template_json, "AWS::EKS::Nodegroup", "NodegroupsSystem")]
    assert "ReleaseVersion" not in system["Properties"]
    warnings = [m.data for m in stage.eks.node.metadata if m.type == "aws:cdk:warning"]
    assert any("AL2023_x86_64_STANDARD" in str(w) and "make refresh-amis" in str(w) for w in warnings)
