"""Preflight checks one by one: moto where it implements the API, botocore
Stubber where it does not (DescribeAddonVersions, Cost Explorer, AMI
deprecation, region opt-in), each for PASS, WARN and FAIL."""

from __future__ import annotations

import datetime as dt
import json

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from delivery.preflight import FAIL, PASS, WARN, account, artifacts, billing, leftovers, pins, zones
from delivery.preflight.account import BootstrapRequirement
from ml_stacks.config import ModelConfig, PYTORCH_CPU_INFERENCE_IMAGE

KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
NOW = dt.datetime(2026, 11, 29, 12, tzinfo=dt.timezone.utc)


@pytest.fixture
def aws():
    with mock_aws():
        yield lambda service: boto3.client(service, **KEYS)


# --- account, region, bootstrap ---------------------------------------------

def test_account_passes_unpinned_and_matching_and_fails_another(aws) -> None:
    sts = aws("sts")
    mine = sts.get_caller_identity()["Account"]
    assert account.check_account(sts, stage="dev", expected_account=None)[0].status == PASS
    assert account.check_account(sts, stage="dev", expected_account=mine) == (
        account.check_account(sts, stage="dev", expected_account=mine)[0], mine)
    row, _ = account.check_account(sts, stage="prod", expected_account="999999999999")
    assert row.status == FAIL and f"credentials are in {mine}, prod deploys to 999999999999" == row.figure


def test_region_warns_when_the_shell_points_elsewhere(aws) -> None:
    ec2 = aws("ec2")
    assert account.check_region(ec2, region="us-east-1", session_region="us-east-1").status == PASS
    row = account.check_region(ec2, region="us-east-1", session_region="eu-west-1")
    assert row.status == WARN and "export AWS_REGION=us-east-1" in row.fix


# The stage's region, and another region of the stage (a replica's) on a line of its own.
@pytest.mark.parametrize("name", [{}, {"name": "region ap-east-1"}])
def test_region_fails_when_not_enabled(name) -> None:
    ec2 = boto3.client("ec2", **KEYS)
    with Stubber(ec2) as stub:
        stub.add_response("describe_regions", {"Regions": [
            {"RegionName": "ap-east-1", "OptInStatus": "not-opted-in"}]},
            {"RegionNames": ["ap-east-1"], "AllRegions": True})
        row = account.check_region(ec2, region="ap-east-1", session_region=None, **name)
    assert (row.status, row.check) == (FAIL, name.get("name", "region"))
    assert "not enabled" in row.figure and row.fix.startswith("enable ap-east-1 in the account settings")


def test_bootstrap_requirement_is_read_from_the_assembly(synthesized) -> None:
    requirement = account.bootstrap_requirement(synthesized.outdir, "dev")
    manifest = json.loads((synthesized.outdir / "assembly-dev" / "manifest.json").read_text())
    stated = {a["properties"]["requiresBootstrapStackVersion"] for a in manifest["artifacts"].values()
              if "requiresBootstrapStackVersion" in a.get("properties", {})}
    assert requirement.version == max(stated)
    assert requirement.ssm_parameter == "/cdk-bootstrap/hnb659fds/version"


PARAMETER = "/cdk-bootstrap/hnb659fds/version"


def _toolkit(aws, version: str | None) -> None:
    aws("cloudformation").create_stack(StackName="CDKToolkit", TemplateBody=json.dumps({
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {"BootstrapVersion": {"Value": version or "0"}}}))
    if version is not None:
        aws("ssm").put_parameter(Name=PARAMETER, Value=version, Type="String")


@pytest.mark.parametrize("stack, version, status", [(False, None, FAIL), (True, None, FAIL),
                                                    (True, "5", FAIL), (True, "6", PASS), (True, "28", PASS)])
def test_bootstrap(aws, stack, version, status) -> None:
    if stack:
        _toolkit(aws, version)
    row = account.check_bootstrap(aws("cloudformation"), aws("ssm"), region="us-east-1",
                                  account="123456789012", stage="dev",
                                  requirement=BootstrapRequirement(6, PARAMETER))
    assert row.status == status
    if status == FAIL:
        assert row.fix.startswith("make bootstrap STAGE=dev")
    else:
        assert row.figure == f"bootstrap version {version} >= 6 required ({PARAMETER})"


# --- zones and offerings ----------------------------------------------------

def test_zones_by_name_or_id_resolve_against_the_account(aws) -> None:
    available = zones.account_zones(aws("ec2"))
    first = available[0]
    rows = zones.check_zones((first["ZoneName"], available[1]["ZoneId"], "us-east-1z"), available,
                             region="us-east-1")
    assert [r.status for r in rows] == [PASS, PASS, FAIL]
    assert rows[0].figure == f"{first['ZoneName']} is {first['ZoneId']} in this account, available"
    assert first["ZoneName"] in rows[2].fix


@pytest.mark.parametrize("by", ["ZoneName", "ZoneId"])
def test_offerings_are_read_in_the_configs_spelling(aws, by) -> None:
    ec2 = aws("ec2")
    everything = [z[by] for z in zones.account_zones(ec2)]
    offered = zones.offerings(ec2, ["g5.xlarge", "m7i.large"], everything, by_id=by == "ZoneId")
    assert offered["g5.xlarge"] <= set(everything) and offered["g5.xlarge"]
    # moto's EC2 data (from AWS) has a us-east-1 zone without g5.xlarge.
    gap = set(everything) - offered["g5.xlarge"]
    assert len(gap) == 1
    [row] = zones.check_offerings({"fleet": ("g5.xlarge",)}, offered, everything)
    assert row.status == FAIL and gap.pop() in row.fix


def test_a_group_with_no_type_in_a_zone_warns_with_that_zone() -> None:
    offered = {"g5.xlarge": {"a"}, "g6.xlarge": {"a"}}
    [row] = zones.check_offerings({"fleet": ("g5.xlarge", "g6.xlarge")}, offered, ("a", "b"))
    assert row.status == WARN and row.fix.endswith("no type of the group in b, it runs in the other zones only")


def test_offerings_verdict_per_group() -> None:
    offered = {"g5.xlarge": {"a", "b"}, "g6.xlarge": {"a"}, "p9.huge": set()}
    rows = zones.check_offerings({"all": ("g5.xlarge",), "mixed": ("g5.xlarge", "g6.xlarge"),
                                  "single": ("g6.xlarge",), "nowhere": ("g5.xlarge", "p9.huge")},
                                 offered, ("a", "b"))
    assert [r.status for r in rows] == [PASS, WARN, FAIL, FAIL]
    assert rows[1].figure == "g5.xlarge in 2/2 zones; g6.xlarge in 1/2 zones"
    assert rows[1].fix == "g6.xlarge missing in b: the group runs on its other types there"
    assert rows[3].fix.startswith("p9.huge not offered in a, b")


# --- pins -------------------------------------------------------------------

def test_addon_pins_against_describe_addon_versions() -> None:
    eks = boto3.client("eks", **KEYS)
    listed = ["v1.34.1-eksbuild.2", "v1.34.3-eksbuild.1", "v1.34.2-eksbuild.4"]
    with Stubber(eks) as stub:
        for addon in ("kube-proxy", "coredns"):
            stub.add_response("describe_addon_versions", {"addons": [{
                "addonName": addon, "addonVersions": [{"addonVersion": v} for v in listed]}]},
                {"addonName": addon, "kubernetesVersion": "1.34"})
        rows = pins.check_addon_pins(eks, {"kube-proxy": "v1.34.0-eksbuild.5", "coredns": "v1.34.2-eksbuild.4"},
                                     kubernetes_version="1.34")
    assert [r.status for r in rows] == [FAIL, PASS]
    assert "newest: v1.34.3-eksbuild.1, v1.34.2-eksbuild.4, v1.34.1-eksbuild.2" in rows[0].figure


def test_amis_exist_and_missing(aws) -> None:
    ec2 = aws("ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]
    rows = pins.check_amis(ec2, [pins.PinnedAmi("training fleet", image["ImageId"]),
                                 pins.PinnedAmi("old", "ami-0123456789abcdef0", "gone")], now=NOW)
    assert [r.status for r in rows] == [PASS, FAIL]
    assert rows[1].figure == "ami-0123456789abcdef0 (gone) does not exist in this region"
    assert "make refresh-amis" in rows[1].fix


@pytest.mark.parametrize("deprecation, status", [("2026-06-01T00:00:00.000Z", FAIL),
                                                 ("2026-12-10T00:00:00.000Z", WARN),
                                                 ("2028-01-01T00:00:00.000Z", PASS)])
def test_ami_deprecation(deprecation, status) -> None:
    ec2 = boto3.client("ec2", **KEYS)
    with Stubber(ec2) as stub:
        stub.add_response("describe_images", {"Images": [{
            "ImageId": "ami-0abc", "Name": "dlami", "State": "available", "DeprecationTime": deprecation}]},
            {"Filters": [{"Name": "image-id", "Values": ["ami-0abc"]}], "IncludeDeprecated": True})
        [row] = pins.check_amis(ec2, [pins.PinnedAmi("training fleet", "ami-0abc")], now=NOW)
    assert row.status == status and deprecation in row.figure


@pytest.mark.parametrize("ami_type, release, name", [
    ("BOTTLEROCKET_x86_64_NVIDIA", "1.52.0-b7ac6e1a", "bottlerocket-aws-k8s-1.34-nvidia-x86_64-v1.52.0-b7ac6e1a"),
    ("BOTTLEROCKET_ARM_64", "1.52.0-b7ac6e1a", "bottlerocket-aws-k8s-1.34-aarch64-v1.52.0-b7ac6e1a"),
    ("AL2023_x86_64_NVIDIA", "1.34.1-20251016", "amazon-eks-node-al2023-x86_64-nvidia-1.34-v20251016"),
    ("AL2023_ARM_64_STANDARD", "1.34.1-20251016", "amazon-eks-node-al2023-arm64-standard-1.34-v20251016"),
])
def test_release_versions_name_their_public_amis(ami_type, release, name) -> None:
    assert pins.eks_ami_name("1.34", ami_type, release) == name


def test_release_versions_exist_or_are_not_pinned() -> None:
    ec2 = boto3.client("ec2", **KEYS)
    name = "bottlerocket-aws-k8s-1.34-x86_64-v1.52.0-b7ac6e1a"
    with Stubber(ec2) as stub:
        stub.add_response("describe_images", {"Images": [{"ImageId": "ami-0b1", "Name": name,
                                                          "State": "available"}]},
                          {"Filters": [{"Name": "name", "Values": [name]}], "IncludeDeprecated": True,
                           "Owners": ["amazon"]})
        stub.add_response("describe_images", {"Images": []})
        rows = pins.check_release_versions(ec2, [
            ("system", "BOTTLEROCKET_x86_64", "1.34", "1.52.0-b7ac6e1a"),
            ("gpu", "BOTTLEROCKET_x86_64_NVIDIA", "1.34", "1.99.0-deadbeef"),
            ("al", "AL2023_x86_64_STANDARD", "1.34", None)], now=NOW)
    assert [r.status for r in rows] == [PASS, FAIL, WARN]
    assert rows[0].figure == f"ami-0b1 {name} available"
    assert "bottlerocket-aws-k8s-1.34-nvidia-x86_64-v1.99.0-deadbeef" in rows[1].figure


def test_stage_amis_come_from_the_pin_file() -> None:
    from ml_stacks import pins as pin_file
    from ml_stacks.config import default_configs

    config = default_configs()["prod"]
    amis, releases = pins.stage_amis(config)
    assert [a.ami_id for a in amis] == [pin_file.training_ami(config.region).ami_id]
    groups = {"system": config.eks.system, **config.eks.nodegroups}
    assert [(g, t) for g, t, _, _ in releases] == [(g, s.ami_type) for g, s in groups.items()]
    version = config.eks.kubernetes_version
    assert all(r == pin_file.eks_release_version(config.region, version, t) for _, t, _, r in releases)


# --- model artifacts --------------------------------------------------------

def _model(name: str) -> ModelConfig:
    return ModelConfig(name=name, image_uri=PYTORCH_CPU_INFERENCE_IMAGE, model_data_key=f"{name}/model.tar.gz",
                       instance_type="ml.m5.large")


def test_artifacts_before_the_storage_stack_exists_fail_with_the_way_in(aws) -> None:
    bucket = artifacts.artifacts_bucket(aws("cloudformation"), "ml-dev-storage")
    assert bucket is None
    [row] = artifacts.check_model_artifacts(aws("s3"), bucket=None, models=[_model("m")], stage="dev",
                                            storage_stack="ml-dev-storage")
    assert row.status == FAIL and "cdk deploy -c stages=dev 'dev/storage'" in row.fix
    assert "/m/model.tar.gz" in row.fix


def test_artifacts_in_the_deployed_bucket(aws) -> None:
    s3, cfn = aws("s3"), aws("cloudformation")
    cfn.create_stack(StackName="ml-dev-storage", TemplateBody=json.dumps({
        "Resources": {"B": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": "ml-dev-models"}}},
        "Outputs": {"ModelArtifactsBucketName": {"Value": {"Ref": "B"}}}}))
    bucket = artifacts.artifacts_bucket(cfn, "ml-dev-storage")
    s3.put_object(Bucket=bucket, Key="here/model.tar.gz", Body=b"12345")
    rows = artifacts.check_model_artifacts(s3, bucket=bucket, models=[_model("here"), _model("gone")],
                                           stage="dev", storage_stack="ml-dev-storage")
    assert [r.status for r in rows] == [PASS, FAIL]
    assert rows[0].figure == "s3://ml-dev-models/here/model.tar.gz exists (5 bytes)"
    assert rows[1].fix == "upload it: aws s3 cp model.tar.gz s3://ml-dev-models/gone/model.tar.gz"


def test_an_example_model_ships_with_the_deploy(aws) -> None:
    example = ModelConfig(name="demo", image_uri=PYTORCH_CPU_INFERENCE_IMAGE, example_model="sentiment",
                          instance_type="ml.m5.large")
    [row] = artifacts.check_model_artifacts(aws("s3"), bucket=None, models=[example], stage="dev",
                                            storage_stack="ml-dev-storage")
    assert row.status == PASS and row.figure == "example model 'sentiment' ships with the deploy"


# --- leftovers --------------------------------------------------------------

TEMPLATE = {"Resources": {
    "Logs": {"Type": "AWS::Logs::LogGroup", "Properties": {"LogGroupName": "/aws/eks/ml-x/cluster"}},
    "Repo": {"Type": "AWS::ECR::Repository", "Properties": {"RepositoryName": "ml-x/images"}},
    "Named": {"Type": "AWS::Logs::LogGroup", "Properties": {"LogGroupName": {"Fn::Sub": "x"}}},
    "Policy": {"Type": "AWS::IAM::Policy", "Properties": {"PolicyName": "P"}},
}}


def test_fixed_names_come_from_literal_name_properties() -> None:
    names = leftovers.fixed_names({"ml-x-eks": TEMPLATE})
    assert [(n.logical_id, n.name) for n in names] == [("Logs", "/aws/eks/ml-x/cluster"), ("Repo", "ml-x/images")]


REPLICA_TEMPLATE = {"Resources": {
    "Bucket": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": {"Fn::Join": ["", [
        "ml-x-data-replica-", {"Ref": "AWS::AccountId"}, "-", {"Ref": "AWS::Region"}]]}}},
    "Generated": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": {"Fn::Join": ["", [
        "ml-x-", {"Ref": "Other"}]]}}},
}}


def test_joined_names_are_filled_with_the_account_and_their_stacks_region() -> None:
    names = leftovers.fixed_names({"ml-x-eks": TEMPLATE, "ml-x-replica": REPLICA_TEMPLATE},
                                  account="123456789012", home_region="us-east-1",
                                  regions={"ml-x-eks": "us-east-1", "ml-x-replica": "eu-west-1"})
    assert [(n.stack_name, n.name, n.region) for n in names] == [
        ("ml-x-eks", "/aws/eks/ml-x/cluster", None), ("ml-x-eks", "ml-x/images", None),
        ("ml-x-replica", "ml-x-data-replica-123456789012-eu-west-1", "eu-west-1")]
    # Without an account (a list for people): the placeholder stays.
    [unfilled] = leftovers.fixed_names({"ml-x-replica": REPLICA_TEMPLATE})
    assert unfilled.name == "ml-x-data-replica-${AWS::AccountId}-${AWS::Region}"


@pytest.mark.parametrize("code, found", [("404", False), ("403", "in another account")])
def test_a_bucket_name_is_absent_or_held_by_another_account(code, found) -> None:
    s3 = boto3.client("s3", **KEYS)
    with Stubber(s3) as stub:
        stub.add_client_error("head_bucket", code, expected_params={"Bucket": "ml-x-data"})
        assert leftovers.CHECKERS[("AWS::S3::Bucket", "BucketName")][1](s3, "ml-x-data") == found


def test_a_bucket_name_another_account_holds_cannot_be_adopted() -> None:
    s3 = boto3.client("s3", **KEYS)
    fixed = leftovers.FixedName("ml-x-replica", "Bucket", "AWS::S3::Bucket", "BucketName",
                                "ml-x-data-replica-123456789012-eu-west-1", "eu-west-1")
    regions: list = []
    with Stubber(s3) as stub:
        stub.add_client_error("head_bucket", "403", expected_params={"Bucket": fixed.name})
        [row] = leftovers.check_leftovers(lambda service, *region: regions.append(region) or s3, None,
                                          [fixed], stage="x")
    assert regions == [("eu-west-1",)]
    assert row.status == FAIL and row.figure == f"AWS::S3::Bucket {fixed.name} exists in another account"
    assert "cdk import" not in row.fix and "its owner must delete it" in row.fix


def test_every_literal_name_in_the_app_is_classified(synthesized) -> None:
    for stack in synthesized.stacks.values():
        for _, kind, prop, _ in leftovers.literal_names(stack.template_json):
            assert (kind, prop) in leftovers.CHECKERS or (kind, prop) in leftovers.NOT_COLLIDING, (kind, prop)


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_template_names_cover_the_stacks_own_list(synthesized, stage) -> None:
    from ml_stacks import fixed_names as listed

    templates = {s.stack_name: s.template_json for s in synthesized.stacks.values() if s.stage == stage}
    found = {(n.stack_name, n.name) for n in leftovers.fixed_names(templates)}
    config = synthesized.configs[stage]
    expected = {(f"{config.stack_prefix}-{n.stack}", n.name) for n in listed.fixed_names(config)}
    assert expected and expected <= found
    assert f"/aws/eks/{config.stack_prefix}/cluster" in {name for _, name in found}


def test_leftovers_fail_unless_managed_by_their_stack(aws) -> None:
    logs, ecr, cfn = aws("logs"), aws("ecr"), aws("cloudformation")
    names = leftovers.fixed_names({"ml-x-eks": TEMPLATE})
    [clean] = leftovers.check_leftovers(aws, cfn, names, stage="x")
    assert clean.status == PASS and clean.figure == "none of 2 fixed names exists outside its stack"

    logs.create_log_group(logGroupName="/aws/eks/ml-x/cluster")
    ecr.create_repository(repositoryName="ml-x/images")
    rows = leftovers.check_leftovers(aws, cfn, names, stage="x")
    assert [r.status for r in rows] == [FAIL, FAIL]
    assert "cdk import -c stages=x 'x/eks' (answer the prompt for Logs with /aws/eks/ml-x/cluster" in rows[0].fix
    assert "aws logs delete-log-group --log-group-name /aws/eks/ml-x/cluster" in rows[0].fix

    # The stack that creates them owns them: an update, not a collision.
    logs.delete_log_group(logGroupName="/aws/eks/ml-x/cluster")
    cfn.create_stack(StackName="ml-x-eks", TemplateBody=json.dumps({"Resources": {"Logs": TEMPLATE["Resources"]["Logs"]}}))
    rows = leftovers.check_leftovers(aws, cfn, names, stage="x")
    assert [r.check for r in rows] == ["leftover ml-x/images"]


@pytest.mark.parametrize("physical, status, owned", [
    ("arn:aws:sagemaker:us-east-1:123456789012:endpoint/ml-x-classifier", "UPDATE_COMPLETE", True),
    ("ml-x-classifier", "CREATE_COMPLETE", True),
    ("arn:aws:sagemaker:us-east-1:123456789012:endpoint/ml-x-classifier", "DELETE_COMPLETE", False),
    ("arn:aws:sagemaker:us-east-1:123456789012:endpoint/ml-x-classifier-old", "CREATE_COMPLETE", False),
])
def test_an_endpoint_its_stack_owns_is_no_leftover(physical, status, owned) -> None:
    cfn, sagemaker = boto3.client("cloudformation", **KEYS), boto3.client("sagemaker", **KEYS)
    fixed = leftovers.FixedName("ml-x-serving", "classifier31C39906", "AWS::SageMaker::Endpoint",
                                "EndpointName", "ml-x-classifier")
    with Stubber(cfn) as cfn_stub, Stubber(sagemaker) as sagemaker_stub:
        sagemaker_stub.add_response("describe_endpoint", {
            "EndpointName": "ml-x-classifier", "EndpointStatus": "InService", "CreationTime": NOW,
            "LastModifiedTime": NOW,
            "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/ml-x-classifier"},
            {"EndpointName": "ml-x-classifier"})
        cfn_stub.add_response("describe_stack_resource", {"StackResourceDetail": {
            "LogicalResourceId": fixed.logical_id, "PhysicalResourceId": physical,
            "ResourceType": fixed.resource_type, "ResourceStatus": status,
            "LastUpdatedTimestamp": NOW}},
            {"StackName": "ml-x-serving", "LogicalResourceId": fixed.logical_id})
        [row] = leftovers.check_leftovers(lambda service: sagemaker, cfn, [fixed], stage="x")
    assert row.status == (PASS if owned else FAIL)


# --- cost allocation tag ----------------------------------------------------

@pytest.mark.parametrize("tags, status", [([{"TagKey": "Environment", "Type": "UserDefined", "Status": "Active"}], PASS),
                                          ([{"TagKey": "Environment", "Type": "UserDefined", "Status": "Inactive"}], WARN),
                                          ([], WARN)])
def test_cost_allocation_tag(tags, status) -> None:
    ce = boto3.client("ce", **KEYS)
    with Stubber(ce) as stub:
        stub.add_response("list_cost_allocation_tags", {"CostAllocationTags": tags},
                          {"TagKeys": ["Environment"], "Type": "UserDefined"})
        row = billing.check_cost_allocation_tag(ce, tag_key="Environment")
    assert row.status == status
    if status == WARN:
        assert "would read $0" in row.figure and "TagKey=Environment,Status=Active" in row.fix


def test_no_tag_filter_needs_no_tag() -> None:
    assert billing.check_cost_allocation_tag(None, tag_key=None).status == PASS


def test_a_zone_eks_refuses_fails_only_for_a_stage_with_a_cluster(aws) -> None:
    from ml_stacks.config.eks import EKS_UNSUPPORTED_ZONE_IDS

    available = zones.account_zones(aws("ec2"))
    [refused] = EKS_UNSUPPORTED_ZONE_IDS["us-east-1"]
    [name] = [z["ZoneName"] for z in available if z["ZoneId"] == refused]  # moto's mapping of the account
    other = next(z["ZoneName"] for z in available if z["ZoneId"] != refused)
    without_cluster = zones.check_zones((other, name), available, region="us-east-1")
    assert [r.status for r in without_cluster] == [PASS, PASS]
    with_cluster = zones.check_zones((other, name), available, region="us-east-1", refused=(refused,))
    assert [r.status for r in with_cluster] == [PASS, FAIL]
    assert f"{name} is {refused} in this account" in with_cluster[1].figure
    assert refused not in with_cluster[1].fix and other in with_cluster[1].fix


@pytest.mark.parametrize("cluster", [True, False])
def test_the_stage_zone_rows_refuse_eks_zones_when_the_stage_has_a_cluster(aws, cluster) -> None:
    from dataclasses import replace

    from delivery.preflight.runner import _zone_rows
    from ml_stacks.config import default_configs
    from ml_stacks.config.eks import EKS_UNSUPPORTED_ZONE_IDS

    dev = default_configs()["dev"]
    ec2 = aws("ec2")
    [refused] = EKS_UNSUPPORTED_ZONE_IDS[dev.region]
    names = {z["ZoneId"]: z["ZoneName"] for z in zones.account_zones(ec2)}
    configured = (names["use1-az1"], names[refused])
    stage = replace(dev, network=replace(dev.network, availability_zones=configured),
                    eks=replace(dev.eks, enabled=cluster))
    rows = {r.check: r for r in _zone_rows(stage, ec2)}
    assert rows[f"zone {names[refused]}"].status == (FAIL if cluster else PASS)
    assert rows[f"zone {names['use1-az1']}"].status == PASS


# --- Kubernetes version support ----------------------------------------------

NOW = dt.datetime(2026, 11, 29, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize(("standard_ends", "status", "figure"), [
    (NOW + dt.timedelta(days=118), PASS, "EKS standard support until 2027-03-27"),
    (NOW + dt.timedelta(days=3), WARN, "EKS standard support ends 2026-12-02, in 3 days: extra"),
    (NOW - dt.timedelta(days=1), WARN, "in EKS extended support since 2026-11-28: extra"),
])
def test_kubernetes_support_warns_before_and_after_standard_support_ends(standard_ends, status, figure) -> None:
    eks = boto3.client("eks", region_name="us-east-1")
    with Stubber(eks) as stub:
        stub.add_response("describe_cluster_versions", {"clusterVersions": [{
            "clusterVersion": "1.34", "versionStatus": "STANDARD_SUPPORT",
            "endOfStandardSupportDate": standard_ends,
            "endOfExtendedSupportDate": standard_ends + dt.timedelta(days=365)}]},
            {"clusterVersions": ["1.34"]})
        row = pins.check_kubernetes_support(eks, "1.34", now=NOW, extra_cost="extra")
    assert (row.status, row.check, row.figure) == (status, "kubernetes 1.34", figure)
    assert (row.fix == "") == (status == PASS)
    assert status == PASS or "eks.kubernetes_version" in row.fix


def test_a_kubernetes_version_eks_does_not_offer_fails() -> None:
    eks = boto3.client("eks", region_name="us-east-1")
    with Stubber(eks) as stub:
        stub.add_response("describe_cluster_versions", {"clusterVersions": []}, {"clusterVersions": ["1.29"]})
        row = pins.check_kubernetes_support(eks, "1.29", now=NOW)
    assert row.status == FAIL and "does not offer Kubernetes 1.29" in row.figure


def test_the_extended_support_figure_comes_from_the_region_price_table() -> None:
    from delivery import cost
    from delivery.preflight.runner import _extended_support_cost

    prices = cost.Prices.load("us-east-1")
    extra = prices.monthly(prices.eks_extended_support_cluster_hour - prices.eks_cluster_hour)
    assert _extended_support_cost("us-east-1") == (
        f"the cluster costs ${prices.eks_extended_support_cluster_hour:.2f}/hour instead of "
        f"${prices.eks_cluster_hour:.2f}/hour (+${extra:,.0f}/month)")
    assert _extended_support_cost("ap-southeast-7") == ""  # no price table: no figure, still the warning


def test_a_node_group_type_missing_a_zone_fails_where_an_own_group_only_warns() -> None:
    zones_ = ("use1-az1", "use1-az2")
    offered = {"g6e.2xlarge": {"use1-az1"}, "g5.2xlarge": {"use1-az1", "use1-az2"}}
    groups = {"training fleet": ("g6e.2xlarge", "g5.2xlarge"), "eks serving": ("g6e.2xlarge", "g5.2xlarge")}
    rows = {r.check: r for r in zones.check_offerings(groups, offered, zones_, every_zone=("eks serving",))}
    # Our Auto Scaling group launches g5 in use1-az2; EKS refuses to create the node group.
    assert rows["offered training fleet"].status == WARN
    assert rows["offered eks serving"].status == FAIL
    assert rows["offered eks serving"].fix.startswith("g6e.2xlarge not offered in use1-az2")
