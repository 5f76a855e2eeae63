"""InferenceEndpoint release features, synthesized in a bare stack: a model
package version, a shadow candidate, high-resolution scaling, off hours."""

from __future__ import annotations

import re

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk.assertions import Template

from constructs_lib.inference_endpoint import (
    VARIANT_NAME,
    InferenceEndpoint,
    InferenceImage,
    InferenceModelPackage,
    ShadowVariant,
)
from constructs_lib.off_hours import OffHoursSchedule, application_autoscaling_cron

REGION = "us-east-1"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6.0-cpu-py312-ubuntu22.04-sagemaker"
PACKAGE_IMAGE = "111122223333.dkr.ecr.us-east-1.amazonaws.com/team/ranker@sha256:" + "b" * 64
PACKAGE_ARN = "arn:aws:sagemaker:us-east-1:111122223333:model-package/ranker/7"
PACKAGE_DATA = "s3://registry-artifacts-111122223333/ranker/7/model.tar.gz"


def build(**props) -> tuple[InferenceEndpoint, dict]:
    stack = cdk.Stack(cdk.App(), "Test", env=cdk.Environment(account="111122223333", region=REGION))
    vpc = ec2.Vpc(stack, "Vpc", availability_zones=[f"{REGION}a", f"{REGION}b"])
    models = s3.Bucket(stack, "Models")
    if "model_package" not in props:
        props = {"image": InferenceImage.from_uri(IMAGE), "model_data_bucket": models,
                 "model_data_key": "ranker/v1/model.tar.gz", **props}
    shadow = props.pop("shadow_props", None)
    if shadow is not None:
        props["shadow"] = ShadowVariant(model_data_bucket=models, **shadow)
    endpoint = InferenceEndpoint(
        stack, "Ranker", endpoint_name="ml-test-ranker",
        capture_bucket=s3.Bucket(stack, "Captures"), key=kms.Key(stack, "Key"), vpc=vpc,
        alarm_topic=sns.Topic(stack, "Alerts"), **{"instance_type": "ml.c5.xlarge", **props})
    return endpoint, Template.from_stack(stack).to_json()


def resources(template: dict, kind: str) -> dict[str, dict]:
    return {lid: r for lid, r in template["Resources"].items() if r["Type"] == kind}


def role_statements(template: dict) -> list[dict]:
    [policy] = [r for lid, r in resources(template, "AWS::IAM::Policy").items()
                if lid.startswith("RankerRoleDefaultPolicy")]
    return policy["Properties"]["PolicyDocument"]["Statement"]


def test_a_model_package_version_is_the_model_and_its_pinned_sources_are_all_the_role_reads() -> None:
    package = InferenceModelPackage(PACKAGE_ARN, [(PACKAGE_IMAGE, PACKAGE_DATA)])
    _, template = build(model_package=package, environment={"TS_WORKERS": "2"})
    [model] = resources(template, "AWS::SageMaker::Model").values()
    assert model["Properties"]["PrimaryContainer"] == {"ModelPackageName": PACKAGE_ARN,
                                                      "Environment": {"TS_WORKERS": "2"}}
    statements = {s.get("Sid"): s for s in role_statements(template)}
    assert statements["ReadItsModelPackageArtifacts"]["Resource"] == {
        "Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"},
                          ":s3:::registry-artifacts-111122223333/ranker/7/model.tar.gz"]]}
    assert statements["PullItsImage"]["Resource"] == "arn:aws:ecr:us-east-1:111122223333:repository/team/ranker"
    assert "ReadItsModelArtifact" not in statements


def test_fails_without_exactly_one_model_source() -> None:
    package = InferenceModelPackage(PACKAGE_ARN, [(PACKAGE_IMAGE, PACKAGE_DATA)])
    with pytest.raises(ValueError, match="model_package names its image and artifact"):
        build(model_package=package, image=InferenceImage.from_uri(IMAGE))
    with pytest.raises(ValueError, match="not a model package"):
        build(model_package=package, scale_to_zero=True, min_instance_count=0)


SHADOW = {"image": InferenceImage.from_uri(IMAGE.replace("2.6.0", "2.7.0")),
          "model_data_key": "ranker/v2/model.tar.gz", "sampling_percent": 25,
          "instance_type": "ml.c5.2xlarge", "instance_count": 1}


def test_a_shadow_candidate_is_a_shadow_variant_with_its_sampled_share_of_traffic() -> None:
    endpoint, template = build(shadow_props=SHADOW)
    [config] = resources(template, "AWS::SageMaker::EndpointConfig").values()
    [production] = config["Properties"]["ProductionVariants"]
    [shadow] = config["Properties"]["ShadowProductionVariants"]
    assert (production["VariantName"], production["InitialVariantWeight"]) == (VARIANT_NAME, 1)
    assert (shadow["VariantName"], shadow["InstanceType"], shadow["InitialInstanceCount"]) == (
        endpoint.shadow_variant_name, "ml.c5.2xlarge", 1)
    assert re.fullmatch(r"Shadow-[0-9a-f]{8}", endpoint.shadow_variant_name)
    assert shadow["InitialVariantWeight"] == SHADOW["sampling_percent"] / 100
    assert shadow["ModelName"]["Fn::GetAtt"][0].startswith("RankerShadowModel")
    models = resources(template, "AWS::SageMaker::Model")
    shadow_model = models[shadow["ModelName"]["Fn::GetAtt"][0]]["Properties"]
    assert shadow_model["PrimaryContainer"]["Image"] == SHADOW["image"].image_uri
    assert shadow_model["PrimaryContainer"]["ModelDataUrl"]["Fn::Join"][1][-1] == "/ranker/v2/model.tar.gz"
    assert shadow_model["EnableNetworkIsolation"] is True and "VpcConfig" in shadow_model
    statements = {s.get("Sid"): s for s in role_statements(template)}
    assert statements["ReadItsShadowArtifact"]["Resource"]["Fn::Join"][1][-1] == "/ranker/v2/model.tar.gz"
    # Both images, one repository: pulled from that one repository.
    assert statements["PullItsImage"]["Resource"] == "arn:aws:ecr:us-east-1:763104351884:repository/pytorch-inference"


def test_shadow_alarms_notify_but_never_roll_a_deployment_back() -> None:
    endpoint, template = build(shadow_props=SHADOW, alarm_latency_p99=cdk.Duration.millis(800),
                               alarm_5xx_errors=3)
    alarms = {r["Properties"]["AlarmName"]: r["Properties"]
              for r in resources(template, "AWS::CloudWatch::Alarm").values()}
    latency = alarms["ml-test-ranker-shadow-model-latency-p99"]
    assert (latency["Threshold"], latency["ExtendedStatistic"]) == (800_000, "p99")
    assert {"Name": "VariantName", "Value": endpoint.shadow_variant_name} in latency["Dimensions"]
    errors = alarms["ml-test-ranker-shadow-invocation-5xx-errors"]
    assert (errors["Threshold"], errors["MetricName"]) == (3, "Invocation5XXErrors")
    assert errors["AlarmActions"] and errors["OKActions"]
    [deployed] = resources(template, "AWS::SageMaker::Endpoint").values()
    rollback = deployed["Properties"]["DeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"]
    assert len(rollback) == 3
    assert not any("Shadow" in str(a) for a in rollback), rollback


def test_no_volume_key_when_the_shadow_instance_type_has_local_storage() -> None:
    _, template = build(shadow_props={**SHADOW, "instance_type": "ml.g5.xlarge"})
    [config] = resources(template, "AWS::SageMaker::EndpointConfig").values()
    assert "KmsKeyId" not in config["Properties"]
    _, template = build(shadow_props=SHADOW)
    [config] = resources(template, "AWS::SageMaker::EndpointConfig").values()
    assert "KmsKeyId" in config["Properties"]


def test_fails_when_a_shadow_is_asked_of_an_inference_component() -> None:
    with pytest.raises(ValueError, match="carries no model to shadow"):
        build(shadow_props=SHADOW, scale_to_zero=True, min_instance_count=0)


def policies(template: dict) -> dict[str, dict]:
    return {r["Properties"]["PolicyName"]: r["Properties"]
            for r in resources(template, "AWS::ApplicationAutoScaling::ScalingPolicy").values()}


@pytest.mark.parametrize(("scale_to_zero", "metric"), [
    (False, "SageMakerVariantConcurrentRequestsPerModelHighResolution"),
    (True, "SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution"),
])
def test_high_resolution_target_tracking_on_concurrent_requests(scale_to_zero, metric) -> None:
    extra = {"scale_to_zero": True, "min_instance_count": 0} if scale_to_zero else {}
    _, template = build(target_concurrent_requests=4.5, **extra)
    [policy] = [p for name, p in policies(template).items() if "ConcurrentRequests" in name]
    config = policy["TargetTrackingScalingPolicyConfiguration"]
    assert config["PredefinedMetricSpecification"] == {"PredefinedMetricType": metric}
    assert config["TargetValue"] == 4.5


def test_no_high_resolution_policy_unless_a_target_is_given() -> None:
    _, template = build()
    assert not [n for n in policies(template) if "ConcurrentRequests" in n]


def test_an_inference_component_closes_for_the_night_and_reopens_in_the_morning() -> None:
    schedule = OffHoursSchedule(scale_in_cron="0 20 * * MON-FRI", scale_out_cron="30 7 * * 1-5",
                                time_zone="Europe/Berlin")
    _, template = build(scale_to_zero=True, min_instance_count=0, max_instance_count=3,
                        off_hours=schedule)
    [target] = resources(template, "AWS::ApplicationAutoScaling::ScalableTarget").values()
    props = target["Properties"]
    assert props["ScalableDimension"] == "sagemaker:inference-component:DesiredCopyCount"
    actions = {a["ScheduledActionName"]: a for a in props["ScheduledActions"]}
    night = actions["OffHoursScaleIn"]
    assert night["Schedule"] == "cron(0 20 ? * MON-FRI *)"
    assert night["ScalableTargetAction"] == {"MinCapacity": 0, "MaxCapacity": 0}
    assert night["Timezone"] == "Europe/Berlin"
    morning = actions["OffHoursScaleOut"]
    # Unix day 1-5 (Monday-Friday) is 2-6 for Application Auto Scaling (Sunday is 1).
    assert morning["Schedule"] == "cron(30 7 ? * 2-6 *)"
    assert morning["ScalableTargetAction"] == {"MinCapacity": 0, "MaxCapacity": 3}


def test_off_hours_are_refused_for_an_endpoint_variant() -> None:
    with pytest.raises(ValueError, match="only an inference component"):
        build(off_hours=OffHoursSchedule(scale_in_cron="0 20 * * *", scale_out_cron="0 7 * * *"))


@pytest.mark.parametrize(("unix", "aws"), [
    ("0 20 * * MON-FRI", "cron(0 20 ? * MON-FRI *)"),
    ("0 7 * * 0,6", "cron(0 7 ? * 1,7 *)"),
    ("15 6 1 * *", "cron(15 6 1 * ? *)"),
    ("0 22 * * *", "cron(0 22 * * ? *)"),
    ("0 7 * * 1-5/2", "cron(0 7 ? * 2-6/2 *)"),
    ("0 7 * * MON#1", "cron(0 7 ? * MON#1 *)"),
])
def test_unix_crons_become_application_autoscaling_crons(unix, aws) -> None:
    assert application_autoscaling_cron(unix).expression_string == aws


def test_a_cron_with_both_day_fields_is_refused() -> None:
    with pytest.raises(ValueError, match="both day of month and day of week"):
        application_autoscaling_cron("0 7 1 * MON")


def test_a_registry_candidate_shadows_the_pinned_production_version() -> None:
    production = InferenceModelPackage(PACKAGE_ARN, [(PACKAGE_IMAGE, PACKAGE_DATA)])
    candidate = InferenceModelPackage(PACKAGE_ARN[:-1] + "8", [(
        "111122223333.dkr.ecr.us-east-1.amazonaws.com/ranker-next:8", PACKAGE_DATA.replace("/7/", "/8/"))])
    _, template = build(model_package=production, shadow=ShadowVariant(
        model_package=candidate, sampling_percent=5, instance_type="ml.c5.xlarge"))
    models = resources(template, "AWS::SageMaker::Model")
    [shadow] = [m["Properties"] for lid, m in models.items() if lid.startswith("RankerShadowModel")]
    assert shadow["PrimaryContainer"] == {"ModelPackageName": candidate.package_arn}
    statements = {s.get("Sid"): s for s in role_statements(template)}
    assert [r["Fn::Join"][1][-1] for r in statements["ReadItsModelPackageArtifacts"]["Resource"]] == [
        ":s3:::registry-artifacts-111122223333/ranker/7/model.tar.gz",
        ":s3:::registry-artifacts-111122223333/ranker/8/model.tar.gz"]
    assert statements["PullItsImage"]["Resource"] == [
        "arn:aws:ecr:us-east-1:111122223333:repository/team/ranker",
        "arn:aws:ecr:us-east-1:111122223333:repository/ranker-next"]
    assert "ReadItsShadowArtifact" not in statements


def test_fails_when_a_shadow_has_no_or_two_candidates() -> None:
    package = InferenceModelPackage(PACKAGE_ARN, [(PACKAGE_IMAGE, PACKAGE_DATA)])
    with pytest.raises(ValueError, match="shadow: give image, model_data_bucket and model_data_key, or model_package"):
        build(shadow=ShadowVariant(sampling_percent=5, instance_type="ml.c5.xlarge"))
    with pytest.raises(ValueError, match="shadow: give image"):
        build(shadow=ShadowVariant(sampling_percent=5, instance_type="ml.c5.xlarge", model_package=package,
                                   image=InferenceImage.from_uri(IMAGE)))


def test_a_new_candidate_or_fleet_is_a_new_shadow_variant_and_its_share_is_not_retained() -> None:
    first, template = build(shadow_props=SHADOW)
    [deployed] = resources(template, "AWS::SageMaker::Endpoint").values()
    assert deployed["Properties"]["ExcludeRetainedVariantProperties"] == [
        {"VariantPropertyType": "DataCaptureConfig"}, {"VariantPropertyType": "DesiredWeight"}]
    assert build(shadow_props={**SHADOW, "sampling_percent": 50})[0].shadow_variant_name == first.shadow_variant_name
    for change in ({"instance_count": 2}, {"instance_type": "ml.c5.4xlarge"},
                   {"model_data_key": "ranker/v3/model.tar.gz"}):
        assert build(shadow_props={**SHADOW, **change})[0].shadow_variant_name != first.shadow_variant_name
    _, template = build()
    [deployed] = resources(template, "AWS::SageMaker::Endpoint").values()
    assert deployed["Properties"]["ExcludeRetainedVariantProperties"] == [
        {"VariantPropertyType": "DataCaptureConfig"}]
