"""Preflight quotas: what a stage needs at deploy time and at max capacity,
and the verdict against the account's values (Service Quotas and Lambda
through botocore Stubber: moto implements neither)."""

from __future__ import annotations

import dataclasses
import datetime

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from delivery.preflight import FAIL, PASS, WARN
from delivery.preflight import quotas
from ml_stacks.config import (EksConfig, ModelConfig, NodegroupConfig, ServingConfig, TrainingConfig,
                              default_configs, PYTORCH_GPU_INFERENCE_IMAGE)

KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def _group(types, low, desired, high, gpu=True):
    return NodegroupConfig(instance_types=types, min_size=low, desired_size=desired, max_size=high,
                           ami_type="BOTTLEROCKET_x86_64_NVIDIA" if gpu else "BOTTLEROCKET_x86_64")


def _stage():
    """A stage with numbers unlike the repository's, to compute by hand."""
    base = default_configs()["staging"]
    return dataclasses.replace(
        base,
        training=TrainingConfig(instance_types=("g5.xlarge", "g6.4xlarge"), max_capacity=10,
                                on_demand_base=2, on_demand_percentage=25),
        eks=EksConfig(
            system=_group(("m7i.large",), 2, 3, 5, gpu=False),
            gpu_inference=_group(("g6.2xlarge", "g5.xlarge"), 1, 2, 4),
            gpu_training=_group(("g5.12xlarge", "p4d.24xlarge"), 0, 0, 3),
        ),
        serving=ServingConfig(models=(
            ModelConfig(name="a", image_uri=PYTORCH_GPU_INFERENCE_IMAGE, model_data_key="a/model.tar.gz",
                        instance_type="ml.g5.xlarge", initial_instance_count=2, min_instance_count=1,
                        max_instance_count=3),
            ModelConfig(name="b", image_uri=PYTORCH_GPU_INFERENCE_IMAGE, model_data_key="b/model.tar.gz",
                        instance_type="ml.g5.xlarge", initial_instance_count=1, min_instance_count=1,
                        max_instance_count=1),
        )),
    )


def test_needs_count_every_group_at_its_largest_type_per_quota() -> None:
    needs = {n.code or n.name: n for n in quotas.quota_needs(_stage())}
    # Training: 10 at max, 2 on-demand base + ceil(8 x 25%) = 4 on-demand, 6 spot, at g6.4xlarge (16).
    # EKS GPU inference (on-demand): desired 2, max 4 x g6.2xlarge (8).
    g_on_demand = needs["L-DB2E81BA"]
    assert (g_on_demand.deploy, g_on_demand.maximum) == (2 * 8, 4 * 16 + 4 * 8)
    # Spot G: training 6 x 16, EKS training group 3 x g5.12xlarge (48).
    g_spot = needs["L-3819A6DF"]
    assert (g_spot.deploy, g_spot.maximum) == (0, 6 * 16 + 3 * 48)
    # Spot P: the same group could be all p4d.24xlarge (96 vCPUs).
    assert (needs["L-7212CCBC"].deploy, needs["L-7212CCBC"].maximum) == (0, 3 * 96)
    assert (needs["L-1216C47A"].deploy, needs["L-1216C47A"].maximum) == (3 * 2, 5 * 2)
    assert "L-417A185B" not in needs  # no on-demand P instance anywhere
    sagemaker = needs["ml.g5.xlarge for endpoint usage"]
    assert (sagemaker.deploy, sagemaker.maximum, sagemaker.update_peak) == (3, 4, 8)
    assert (needs["L-6D54EA21"].maximum, needs["L-BD136A63"].maximum) == (3, 5)


def test_a_disabled_fleet_and_cluster_need_nothing() -> None:
    stage = dataclasses.replace(_stage(), training=dataclasses.replace(_stage().training, enabled=False),
                                eks=dataclasses.replace(_stage().eks, enabled=False))
    assert [n.name for n in quotas.quota_needs(stage)] == ["ml.g5.xlarge for endpoint usage"]


def test_vcpu_table_matches_ec2_instance_type_data() -> None:
    with mock_aws():
        ec2 = boto3.client("ec2", **KEYS)
        data = ec2.describe_instance_types(InstanceTypes=list(quotas.VCPUS))["InstanceTypes"]
    assert {t["InstanceType"]: t["VCpuInfo"]["DefaultVCpus"] for t in data} == dict(quotas.VCPUS)


def test_every_repository_instance_type_is_in_the_table_or_looked_up() -> None:
    for config in default_configs().values():
        assert set(quotas.stage_instance_types(config)) <= set(quotas.VCPUS)
    with mock_aws():
        ec2 = boto3.client("ec2", **KEYS)
        assert quotas.instance_vcpus(ec2, ["g5.xlarge", "c7i.4xlarge"]) == {"g5.xlarge": 4, "c7i.4xlarge": 16}


def test_spot_roles_match_the_synthesized_node_groups(synthesized) -> None:
    template = synthesized.stack("prod", "eks").template_json
    groups = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::EKS::Nodegroup"]
    spot = {tuple(g["InstanceTypes"]) for g in groups if g["CapacityType"] == "SPOT"}
    eks = synthesized.configs["prod"].eks
    expected = {tuple(g.instance_types) for role, g in eks.nodegroups.items() if role in quotas.SPOT_NODEGROUPS}
    assert spot == expected and spot


@pytest.fixture
def aws_ec2():
    with mock_aws():
        yield boto3.client("ec2", **KEYS)


def _need(deploy: int, maximum: int, peak: int | None = None) -> quotas.QuotaNeed:
    need = quotas.QuotaNeed("ec2", "L-DB2E81BA", "Running On-Demand G and VT instances", "vCPUs")
    need.add(deploy, maximum, "x", update_peak=peak)
    return need


@pytest.mark.parametrize("value, status", [(64, PASS), (40, WARN), (8, FAIL)])
def test_quota_verdict_against_deploy_and_max(value, status) -> None:
    client = boto3.client("service-quotas", **KEYS)
    with Stubber(client) as stub:
        stub.add_response("get_service_quota", {"Quota": {"QuotaCode": "L-DB2E81BA", "Value": value}},
                          {"ServiceCode": "ec2", "QuotaCode": "L-DB2E81BA"})
        [row] = quotas.check_quotas(client, [_need(16, 48)], region="us-east-1")
    assert row.status == status
    assert f"need 16 vCPUs at deploy, 48 at max (x); quota {value}" in row.figure
    assert ("--desired-value 48" in row.fix) == (status != PASS)


def test_running_instances_warn_when_they_leave_less_than_max(aws_ec2) -> None:
    ec2 = aws_ec2
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ec2.run_instances(ImageId=image, InstanceType="g5.2xlarge", MinCount=3, MaxCount=3)
    ec2.run_instances(ImageId=image, InstanceType="m7i.large", MinCount=1, MaxCount=1)
    in_use = quotas.ec2_vcpus_in_use(ec2)
    assert in_use == {"L-DB2E81BA": 3 * 8, "L-1216C47A": 2}
    client = boto3.client("service-quotas", **KEYS)
    with Stubber(client) as stub:
        stub.add_response("get_service_quota", {"Quota": {"Value": 64.0}})
        [row] = quotas.check_quotas(client, [_need(16, 48)], region="us-east-1", in_use=in_use)
    assert row.status == WARN and row.figure.endswith("quota 64, 24 in use now")
    assert "leave 40" in row.fix


def test_falls_back_to_the_default_when_no_value_is_applied() -> None:
    client = boto3.client("service-quotas", **KEYS)
    with Stubber(client) as stub:
        stub.add_client_error("get_service_quota", "NoSuchResourceException")
        stub.add_response("get_aws_default_service_quota", {"Quota": {"Value": 0.0}})
        [row] = quotas.check_quotas(client, [_need(4, 8)], region="us-east-1")
    assert row.status == FAIL and "quota 0" in row.figure


def test_sagemaker_quota_found_by_name_warns_for_a_blue_green_update_at_max() -> None:
    client = boto3.client("service-quotas", **KEYS)
    need = quotas.QuotaNeed("sagemaker", None, "ml.g5.xlarge for endpoint usage", "instances")
    need.add(2, 6, "endpoint m 2..6", update_peak=12)
    quota = {"QuotaName": "ml.g5.xlarge for endpoint usage", "QuotaCode": "L-1928E07B", "Value": 4.0}
    with Stubber(client) as stub:
        stub.add_response("list_aws_default_service_quotas", {"Quotas": [{**quota, "Value": 0.0}]})
        stub.add_response("list_service_quotas", {"Quotas": [{**quota, "Value": 8.0}]})
        [row] = quotas.check_quotas(client, [need], region="us-east-1")
    assert row.status == WARN and "quota 8" in row.figure and "12 during a blue/green update" in row.figure
    assert "--quota-code L-1928E07B --desired-value 12" in row.fix


def test_sagemaker_type_without_a_quota_in_the_region_warns() -> None:
    client = boto3.client("service-quotas", **KEYS)
    need = quotas.QuotaNeed("sagemaker", None, "ml.g6e.xlarge for endpoint usage", "instances")
    need.add(1, 1, "endpoint m")
    with Stubber(client) as stub:
        stub.add_response("list_aws_default_service_quotas", {"Quotas": []})
        stub.add_response("list_service_quotas", {"Quotas": []})
        [row] = quotas.check_quotas(client, [need], region="eu-north-1")
    assert row.status == WARN and "no quota 'ml.g6e.xlarge for endpoint usage' in eu-north-1" in row.figure


@pytest.mark.parametrize("limit, unreserved, reserved, status", [
    (1000, 1000, 0, PASS), (10, 10, 0, WARN), (10, 10, 1, FAIL), (50, 15, 6, FAIL)])
def test_lambda_concurrency(limit, unreserved, reserved, status) -> None:
    client = boto3.client("lambda", **KEYS)
    with Stubber(client) as stub:
        stub.add_response("get_account_settings", {"AccountLimit": {
            "ConcurrentExecutions": limit, "UnreservedConcurrentExecutions": unreserved}})
        row = quotas.check_lambda_concurrency(client, functions=12, reserved=reserved)
    assert row.status == status
    assert row.figure == (f"account limit {limit}, unreserved {unreserved}; stage reserves {reserved} "
                          "across 12 functions")


@pytest.mark.parametrize("existing, limit, status", [([], 100, PASS), (["a", "b"], 2, FAIL),
                                                     (["a", "ml-prod"], 2, PASS)])
def test_eks_cluster_headroom(existing, limit, status) -> None:
    eks, service_quotas = boto3.client("eks", **KEYS), boto3.client("service-quotas", **KEYS)
    with Stubber(eks) as eks_stub, Stubber(service_quotas) as sq_stub:
        eks_stub.add_response("list_clusters", {"clusters": existing})
        sq_stub.add_response("get_service_quota", {"Quota": {"Value": float(limit)}})
        row = quotas.check_eks_cluster_headroom(eks, service_quotas, cluster_name="ml-prod", region="us-east-1")
    assert row.status == status and f"{len(existing)} in us-east-1 already; quota {limit}" in row.figure


# --- one stack per model: the account-wide counts grow with the models -------------------

def _stacks(names: list[str]) -> dict:
    created = datetime.datetime(2026, 11, 1, tzinfo=datetime.timezone.utc)
    return {"Stacks": [{"StackName": n, "CreationTime": created, "StackStatus": "CREATE_COMPLETE"}
                       for n in names]}


@pytest.mark.parametrize("deployed, others, limit, status", [
    (0, 10, 2000, PASS),        # a first deploy with room to spare
    (5, 1990, 2000, FAIL),      # the new stacks do not fit
    (206, 1700, 2000, WARN),    # fits, but not another stage of this size
    (206, 1500, 2000, PASS),    # a redeploy: only new stacks count
])
def test_stack_count_counts_the_stages_new_stacks_against_the_quota(deployed, others, limit, status) -> None:
    stage = [f"ml-prod-serving-model-{i:03d}" for i in range(200)] + [
        f"ml-prod-{s}" for s in ("network", "storage", "ops", "idle", "training", "serving")]
    existing = stage[:deployed] + [f"other-{i}" for i in range(others)]
    cfn, service_quotas = boto3.client("cloudformation", **KEYS), boto3.client("service-quotas", **KEYS)
    with Stubber(cfn) as cfn_stub, Stubber(service_quotas) as sq_stub:
        cfn_stub.add_response("describe_stacks", _stacks(existing), {})
        sq_stub.add_response("get_service_quota", {"Quota": {"Value": float(limit)}},
                             {"ServiceCode": "cloudformation", "QuotaCode": "L-0485CB21"})
        row = quotas.check_stack_count(cfn, service_quotas, stack_names=stage, region="us-east-1")
    after = len(existing) + len(stage) - deployed
    assert row.status == status, row
    assert (f"the stage has 206 stacks ({deployed} deployed, {206 - deployed} new), {len(existing)} in "
            f"us-east-1 already, {after} after the deploy; quota {limit}") in row.figure


def test_stack_count_reads_every_page_of_stacks() -> None:
    with mock_aws():
        cfn = boto3.client("cloudformation", **KEYS)
        for i in range(120):  # DescribeStacks pages at 100
            cfn.create_stack(StackName=f"other-{i}", TemplateBody='{"Resources": {"T": {"Type": "AWS::SNS::Topic"}}}')
        service_quotas = boto3.client("service-quotas", **KEYS)
        with Stubber(service_quotas) as sq_stub:
            sq_stub.add_response("get_service_quota", {"Quota": {"Value": 2000.0}})
            row = quotas.check_stack_count(cfn, service_quotas, stack_names=["ml-dev-serving"],
                                           region="us-east-1")
    assert "120 in us-east-1 already, 121 after the deploy" in row.figure and row.status == PASS


def test_endpoint_instances_grow_with_every_model_of_the_stage() -> None:
    from tests.serving_scale import with_models

    stage = with_models(default_configs()["prod"], 200)
    need = quotas.endpoint_instances_need(stage)
    models = stage.serving.models
    assert (need.code, need.service) == ("L-7A3DF611", "sagemaker")
    assert need.deploy == sum(m.initial_instance_count for m in models)
    assert need.maximum == sum(m.max_instance_count for m in models)
    assert need.update_peak == 2 * need.maximum  # blue/green: the new fleet next to the old one
    # A default account (200 instances) cannot hold 200 models at their maximum,
    # nor their deploy once one model starts with more than one instance.
    assert need.maximum > 200
    expected = FAIL if need.deploy > 200 else WARN
    assert quotas.judge(need, 200.0, region="us-east-1").status == expected
    assert quotas.endpoint_instances_need(dataclasses.replace(
        stage, serving=dataclasses.replace(stage.serving, models=()))) is None
