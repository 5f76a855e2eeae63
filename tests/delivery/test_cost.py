"""Cost estimate: the synthesized stages against what their configs add up to
(worked out from the config, whatever its values), hand-computed totals on a
small stage config and on small hand-written templates of the resource types
other stacks add.

Prices (delivery/prices/us-east-1.json, 730 h/month): NAT $0.045/h = $32.85,
interface endpoint $0.01/h per AZ = $7.30, EKS $0.10/h = $73.00, KMS key
$1.00, g5.xlarge $1.006/h = $734.38, g5.12xlarge $5.672/h = $4140.56,
m6i.large $0.096/h = $70.08, ml.g5.xlarge $1.408/h = $1027.84.
"""

from __future__ import annotations

import json

import pytest

from delivery import cost
from delivery.assembly import templates_by_stack

REGION = {"dev": "us-east-1"}


def estimate(resources: dict) -> cost.StageCost:
    return cost.estimate({("dev", "x"): {"Resources": resources}}, region_of=REGION)["dev"]


# The storage stack's keys, one per data class: data, capture, logs, messaging.
STAGE_KEYS = 4


def replica_keys(config) -> int:
    """The replica stack's one key, when the stage replicates."""
    return 1 if config.storage.replication_region is not None else 0


def config_cost(config, prices: cost.Prices) -> tuple[float, float]:
    """(always on, maximum) of a stage, monthly, worked out from its config alone.

    What each capability builds, per the pricing rules of delivery/cost.py:
    a group of several instance types at its priciest type, spot at the
    on-demand price, a scalable endpoint between its minimum and maximum, a
    scale-to-zero endpoint at the instance it starts with.
    """
    month = prices.monthly

    def ec2(types) -> float:
        return month(max(prices.ec2_instance_hour[t] for t in types))

    network = config.network
    fixed = (network.nat_gateways * month(prices.nat_gateway_hour)
             + len(network.interface_endpoints) * len(network.availability_zones)
             * month(prices.interface_endpoint_az_hour)
             + (STAGE_KEYS + replica_keys(config)) * prices.kms_key_month)
    low = high = fixed
    if config.eks.enabled:
        low, high = low + month(prices.eks_cluster_hour), high + month(prices.eks_cluster_hour)
        for group in (config.eks.system, *config.eks.nodegroups.values()):
            low += group.min_size * ec2(group.instance_types)
            high += group.max_size * ec2(group.instance_types)
    if config.training.enabled:  # the fleet's minimum is always 0
        high += config.training.max_capacity * ec2(config.training.instance_types)
    for model in config.serving.models:
        hourly = month(prices.sagemaker_instance_hour[model.instance_type])
        if model.scale_to_zero:
            low, high = low + model.initial_instance_count * hourly, high + model.initial_instance_count * hourly
        else:
            low, high = low + model.min_instance_count * hourly, high + model.max_instance_count * hourly
    return low, high


def test_synthesized_stages_cost_what_their_configs_add_up_to(synthesized) -> None:
    """The estimate read from the templates equals the one worked out from each stage's config."""
    stages = cost.estimate(templates_by_stack(synthesized.outdir),
                           region_of=cost.regions_of([synthesized.outdir]))
    assert set(stages) == set(synthesized.configs)
    for name, config in synthesized.configs.items():
        low, high = config_cost(config, cost.Prices.load(config.region))
        assert (stages[name].always_on, stages[name].maximum) == (
            pytest.approx(low, abs=0.01), pytest.approx(high, abs=0.01)), name
        assert not stages[name].unpriced, name
        # Spot training fleets and node groups at 0 cost nothing until they scale.
        assert stages[name].maximum > stages[name].always_on, name


def test_config_cost_of_a_hand_worked_stage() -> None:
    """config_cost above, checked by hand on a small stage (prices in the module docstring)."""
    from ml_stacks.config import (EksConfig, ModelConfig, NetworkConfig, NodegroupConfig, ServingConfig,
                                  StageConfig, StageTags, TrainingConfig)

    prices = cost.Prices.load("us-east-1")
    h = prices.hours_per_month
    nodegroup = NodegroupConfig(instance_types=("g6.xlarge", "g5.xlarge"), min_size=0, desired_size=0,
                                max_size=2, ami_type="BOTTLEROCKET_x86_64_NVIDIA", disk_size_gib=100)
    stage = StageConfig(
        name="dev", region="us-east-1", tags=StageTags(team="t", project="p", cost_center="c", repository="r"),
        network=NetworkConfig(vpc_cidr="10.0.0.0/16", availability_zones=("us-east-1a", "us-east-1b"),
                              nat_gateways=1, interface_endpoints=("sts",)),
        training=TrainingConfig(max_capacity=3, instance_types=("g6.xlarge", "g5.2xlarge")),
        eks=EksConfig(system=NodegroupConfig(instance_types=("m7i.large",), min_size=1, desired_size=1,
                                             max_size=2, ami_type="BOTTLEROCKET_x86_64", disk_size_gib=40),
                      gpu_inference=nodegroup, gpu_training=nodegroup),
        serving=ServingConfig(models=(ModelConfig(name="m", image_tag="t", model_data_key="m/model.tar.gz",
                                                  instance_type="ml.g5.xlarge", min_instance_count=1,
                                                  max_instance_count=2),)),
    )
    nat, endpoint_az, eks, keys = 32.85, 7.30, 73.00, 4 * 1.00  # four $1 keys
    m7i_large, g5_xlarge, g5_2xlarge, ml_g5_xlarge = 0.1008 * h, 734.38, 1.212 * h, 1027.84
    always_on = nat + 1 * 2 * endpoint_az + keys + eks + 1 * m7i_large + 1 * ml_g5_xlarge
    maximum = (nat + 2 * endpoint_az + keys + eks + 2 * m7i_large + 2 * 2 * g5_xlarge + 3 * g5_2xlarge
               + 2 * ml_g5_xlarge)
    # The training fleet is priced at its priciest type, g5.2xlarge, 0 at rest.
    assert config_cost(stage, prices) == (pytest.approx(always_on, abs=0.01), pytest.approx(maximum, abs=0.01))


def test_every_instance_type_in_the_templates_has_a_price(all_templates) -> None:
    prices = cost.Prices.load("us-east-1")
    stages = cost.estimate(all_templates, region_of={s: "us-east-1" for s, _ in all_templates})
    assert [u for c in stages.values() for u in c.unpriced] == []
    assert prices.retrieved and prices.hours_per_month == 730


def test_price_table_is_dated_and_names_its_sources() -> None:
    raw = json.loads((cost.PRICES_DIR / "us-east-1.json").read_text())
    assert raw["retrieved"] == "2025-06-30"
    assert all(s.startswith("https://aws.amazon.com/") for s in raw["source"])


def test_eks_cluster_and_managed_nodegroup_min_and_max() -> None:
    stage = estimate({
        "Cluster": {"Type": "AWS::EKS::Cluster", "Properties": {"Name": "ml-dev"}},
        "GpuNodes": {"Type": "AWS::EKS::Nodegroup", "Properties": {
            "ClusterName": {"Ref": "Cluster"}, "InstanceTypes": ["g5.xlarge", "g5.12xlarge"],
            "CapacityType": "SPOT", "ScalingConfig": {"MinSize": 0, "MaxSize": 4, "DesiredSize": 0}}},
        "SystemNodes": {"Type": "AWS::EKS::Nodegroup", "Properties": {
            "ClusterName": {"Ref": "Cluster"},
            "LaunchTemplate": {"Id": {"Ref": "SystemTemplate"}, "Version": "1"},
            "ScalingConfig": {"MinSize": 2, "MaxSize": 3, "DesiredSize": 2}}},
        "SystemTemplate": {"Type": "AWS::EC2::LaunchTemplate",
                           "Properties": {"LaunchTemplateData": {"InstanceType": "m6i.large"}}},
    })
    # Cluster 73.00; GPU: 0..4 priced at the priciest type g5.12xlarge;
    # system: 2..3 x m6i.large.
    assert stage.always_on == pytest.approx(73.00 + 2 * 70.08)
    assert stage.maximum == pytest.approx(73.00 + 4 * 4140.56 + 3 * 70.08)


def test_auto_scaling_groups_from_launch_template_and_mixed_instances_policy() -> None:
    stage = estimate({
        "Template": {"Type": "AWS::EC2::LaunchTemplate",
                     "Properties": {"LaunchTemplateData": {"InstanceType": "g5.xlarge"}}},
        "Plain": {"Type": "AWS::AutoScaling::AutoScalingGroup", "Properties": {
            "MinSize": "1", "MaxSize": "2",
            "LaunchTemplate": {"LaunchTemplateId": {"Ref": "Template"},
                               "Version": {"Fn::GetAtt": ["Template", "LatestVersionNumber"]}}}},
        "Mixed": {"Type": "AWS::AutoScaling::AutoScalingGroup", "Properties": {
            "MinSize": "0", "MaxSize": "8",
            "MixedInstancesPolicy": {
                "InstancesDistribution": {"OnDemandBaseCapacity": 0,
                                          "OnDemandPercentageAboveBaseCapacity": 0},
                "LaunchTemplate": {
                    "LaunchTemplateSpecification": {"LaunchTemplateId": {"Ref": "Template"}, "Version": "1"},
                    "Overrides": [{"InstanceType": "g5.xlarge"}, {"InstanceType": "g5.12xlarge"}]}}}},
        "FromTemplateOnly": {"Type": "AWS::AutoScaling::AutoScalingGroup", "Properties": {
            "MinSize": "0", "MaxSize": "3",
            "MixedInstancesPolicy": {"LaunchTemplate": {
                "LaunchTemplateSpecification": {"LaunchTemplateId": {"Ref": "Template"}, "Version": "1"}}}}},
    })
    assert stage.always_on == pytest.approx(734.38)
    assert stage.maximum == pytest.approx(2 * 734.38 + 8 * 4140.56 + 3 * 734.38)
    assert not stage.unpriced


def test_sagemaker_endpoint_uses_autoscaling_min_and_max_or_the_initial_count() -> None:
    stage = estimate({
        "Config": {"Type": "AWS::SageMaker::EndpointConfig", "Properties": {"ProductionVariants": [
            {"VariantName": "AllTraffic", "InstanceType": "ml.g5.xlarge", "InitialInstanceCount": 2,
             "ModelName": "m", "InitialVariantWeight": 1},
            {"VariantName": "Shadow", "InstanceType": "ml.g5.xlarge", "InitialInstanceCount": 1,
             "ModelName": "m", "InitialVariantWeight": 0}]}},
        "Serverless": {"Type": "AWS::SageMaker::EndpointConfig", "Properties": {"ProductionVariants": [
            {"VariantName": "AllTraffic", "ModelName": "m",
             "ServerlessConfig": {"MaxConcurrency": 5, "MemorySizeInMB": 2048}}]}},
        "Endpoint": {"Type": "AWS::SageMaker::Endpoint", "Properties": {
            "EndpointConfigName": {"Fn::GetAtt": ["Config", "EndpointConfigName"]}}},
        "Target": {"Type": "AWS::ApplicationAutoScaling::ScalableTarget", "Properties": {
            "ServiceNamespace": "sagemaker", "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
            "MinCapacity": 1, "MaxCapacity": 6,
            "ResourceId": {"Fn::Join": ["", ["endpoint/", {"Fn::GetAtt": ["Endpoint", "EndpointName"]},
                                             "/variant/AllTraffic"]]}}},
    })
    # AllTraffic scales 1..6; Shadow has no target: 1..1; serverless: nothing always on.
    assert stage.always_on == pytest.approx((1 + 1) * 1027.84)
    assert stage.maximum == pytest.approx((6 + 1) * 1027.84)


def test_literal_endpoint_and_config_names_link_the_scalable_target() -> None:
    stage = estimate({
        "Config": {"Type": "AWS::SageMaker::EndpointConfig", "Properties": {
            "EndpointConfigName": "ml-dev-llm-v1", "ProductionVariants": [
                {"VariantName": "v1", "InstanceType": "ml.g5.xlarge", "InitialInstanceCount": 3, "ModelName": "m"}]}},
        "Endpoint": {"Type": "AWS::SageMaker::Endpoint", "Properties": {
            "EndpointName": "ml-dev-llm", "EndpointConfigName": "ml-dev-llm-v1"}},
        "Target": {"Type": "AWS::ApplicationAutoScaling::ScalableTarget", "Properties": {
            "ServiceNamespace": "sagemaker", "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
            "MinCapacity": 0, "MaxCapacity": 2, "ResourceId": "endpoint/ml-dev-llm/variant/v1"}},
    })
    assert (stage.always_on, stage.maximum) == (0, pytest.approx(2 * 1027.84))


def test_interface_endpoints_cost_per_az_gateway_endpoints_nothing_and_kms_keys_a_dollar() -> None:
    stage = estimate({
        "Ecr": {"Type": "AWS::EC2::VPCEndpoint", "Properties": {
            "VpcEndpointType": "Interface", "ServiceName": "com.amazonaws.us-east-1.ecr.api",
            "VpcId": {"Ref": "Vpc"}, "SubnetIds": [{"Ref": "A"}, {"Ref": "B"}]}},
        "S3": {"Type": "AWS::EC2::VPCEndpoint", "Properties": {
            "ServiceName": "com.amazonaws.us-east-1.s3", "VpcId": {"Ref": "Vpc"}}},
        "Nat": {"Type": "AWS::EC2::NatGateway", "Properties": {"SubnetId": {"Ref": "A"}}},
        "PrivateNat": {"Type": "AWS::EC2::NatGateway", "Properties": {
            "SubnetId": {"Ref": "A"}, "ConnectivityType": "private"}},
        "Key": {"Type": "AWS::KMS::Key", "Properties": {}},
    })
    assert stage.always_on == stage.maximum == pytest.approx(2 * 7.30 + 32.85 + 1.00)


def test_unknown_instance_type_or_unresolvable_size_is_reported_unpriced() -> None:
    stage = estimate({
        "Odd": {"Type": "AWS::EKS::Nodegroup", "Properties": {
            "InstanceTypes": ["x9.mega"], "ScalingConfig": {"MinSize": 1, "MaxSize": 1}}},
        "Param": {"Type": "AWS::AutoScaling::AutoScalingGroup", "Properties": {
            "MinSize": {"Ref": "MinParam"}, "MaxSize": "2", "LaunchConfigurationName": "x"}},
    })
    reasons = {u.logical_id: u.reason for u in stage.unpriced}
    assert reasons["Odd"] == "no us-east-1 price for x9.mega"
    assert reasons["Param"].startswith("MinSize is not a literal number")
    assert stage.lines == []


def test_cost_delta_table_signs_each_change() -> None:
    base = {"dev": estimate({"Nat": {"Type": "AWS::EC2::NatGateway", "Properties": {}}})}
    head = {"dev": estimate({"Nat": {"Type": "AWS::EC2::NatGateway", "Properties": {}},
                             "Nat2": {"Type": "AWS::EC2::NatGateway", "Properties": {}}})}
    table = cost.format_delta(base, head)
    assert "| dev   | $32.85         | $65.70 | +$32.85 | $32.85   | $65.70 | +$32.85 |" in table
