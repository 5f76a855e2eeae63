"""A stage serving a registry model with a shadow candidate, synthesized
through build_app with every gate (cdk-nag included): the pinned package is
the model, the approval rule notifies the alerts topic, a shadowed model's
dashboard shows the shadow beside production, the dev component follows the
off hours."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from dataclasses import replace

import pytest

from ml_stacks import model_pins
from ml_stacks.config import ConfigError, ModelConfig, ShadowConfig, default_configs
from tests.conftest import synthesize

PIN = {
    "model_package_group": "ranker-models",
    "model_package_arn": "arn:aws:sagemaker:us-east-1:111122223333:model-package/ranker-models/12",
    "version": 12,
    "containers": [{"image": "111122223333.dkr.ecr.us-east-1.amazonaws.com/ranker:12",
                    "model_data_url": "s3://registry-111122223333/ranker/12/model.tar.gz"}],
    "resolved_at": "2026-11-29",
}
RANKER = ModelConfig(
    name="ranker", model_package_group="ranker-models", instance_type="ml.c5.xlarge",
    target_concurrent_requests=6,
    shadow=ShadowConfig(sampling_percent=30, model_data_key="ranker/candidate/model.tar.gz",
                        image_uri="111122223333.dkr.ecr.us-east-1.amazonaws.com/ranker:13-rc1",
                        instance_type="ml.c5.large"))


SCORER_PIN = {
    **PIN, "model_package_group": "scorer-models", "version": 3,
    "model_package_arn": "arn:aws:sagemaker:us-east-1:111122223333:model-package/scorer-models/3",
    "containers": [{"image": "111122223333.dkr.ecr.us-east-1.amazonaws.com/scorer:3",
                    "model_data_url": "s3://registry-111122223333/scorer/3/model.tar.gz"}],
    "shadow": {**PIN, "model_package_group": "scorer-models", "version": 4,
               "model_package_arn": "arn:aws:sagemaker:us-east-1:111122223333:model-package/scorer-models/4",
               "containers": [{"image": "111122223333.dkr.ecr.us-east-1.amazonaws.com/scorer:4",
                               "model_data_url": "s3://registry-111122223333/scorer/4/model.tar.gz"}]},
}
# A registry model shadowing a pending version of its own group.
SCORER = ModelConfig(name="scorer", model_package_group="scorer-models", instance_type="ml.m5.large",
                     shadow=ShadowConfig(sampling_percent=5, model_package_version=4))


def dev_with(*models: ModelConfig):
    dev = default_configs()["dev"]
    return replace(dev, serving=replace(dev.serving, models=models))


def write_pins(path, pins) -> None:
    path.write_text(json.dumps(pins))


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    pins = tmp_path_factory.mktemp("pins") / "model_pins.json"
    write_pins(pins, {"dev": {"ranker": PIN, "scorer": SCORER_PIN}})
    classifier = default_configs()["dev"].serving.models[0]
    config = dev_with(classifier, RANKER, SCORER)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_pins, "PIN_FILE", pins)
        synthesized = synthesize({"dev": config}, tmp_path_factory.mktemp("out"))
    return config, synthesized


def model_template(synthesized, model: str) -> dict:
    """The template of ``model``'s own stack (one stack per model)."""
    return synthesized.stack("dev", f"serving-{model}").template_json


def of_type(template: dict, kind: str) -> dict[str, dict]:
    return {lid: r for lid, r in template["Resources"].items() if r["Type"] == kind}


def test_the_pinned_package_version_is_the_model_and_the_candidate_is_its_shadow(stage) -> None:
    _, synthesized = stage
    template = model_template(synthesized, "ranker")
    models = {lid: r["Properties"] for lid, r in of_type(template, "AWS::SageMaker::Model").items()
              if lid.startswith("ranker")}
    production = next(p for lid, p in models.items() if not lid.startswith("rankerShadow"))
    assert production["PrimaryContainer"] == {"ModelPackageName": PIN["model_package_arn"]}
    shadow = next(p for lid, p in models.items() if lid.startswith("rankerShadow"))
    assert shadow["PrimaryContainer"]["Image"] == RANKER.shadow.image_uri
    [config] = [r["Properties"] for lid, r in of_type(template, "AWS::SageMaker::EndpointConfig").items()
                if lid.startswith("ranker")]
    [variant] = config["ShadowProductionVariants"]
    assert (variant["InstanceType"], variant["InitialVariantWeight"]) == ("ml.c5.large", 0.3)


def test_the_role_pulls_and_reads_what_the_pin_and_the_candidate_name(stage) -> None:
    _, synthesized = stage
    template = model_template(synthesized, "ranker")
    [policy] = [r for lid, r in of_type(template, "AWS::IAM::Policy").items()
                if lid.startswith("rankerRoleDefaultPolicy")]
    statements = {s["Sid"]: s for s in policy["Properties"]["PolicyDocument"]["Statement"]}
    assert statements["PullItsImage"]["Resource"] == "arn:aws:ecr:us-east-1:111122223333:repository/ranker"
    assert json.dumps(statements["ReadItsModelPackageArtifacts"]["Resource"]).endswith(
        ':s3:::registry-111122223333/ranker/12/model.tar.gz"]]}')
    assert json.dumps(statements["ReadItsShadowArtifact"]["Resource"]).endswith(
        '/ranker/candidate/model.tar.gz"]]}')


def test_high_resolution_scaling_tracks_concurrent_requests_per_model(stage) -> None:
    _, synthesized = stage
    template = model_template(synthesized, "ranker")
    tracked = {r["Properties"]["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"]
               ["PredefinedMetricType"]: r["Properties"]["TargetTrackingScalingPolicyConfiguration"]["TargetValue"]
               for lid, r in of_type(template, "AWS::ApplicationAutoScaling::ScalingPolicy").items()
               if lid.startswith("ranker") and "TargetTrackingScalingPolicyConfiguration" in r["Properties"]}
    assert tracked == {"SageMakerVariantInvocationsPerInstance": RANKER.target_invocations_per_instance,
                       "SageMakerVariantConcurrentRequestsPerModelHighResolution": 6}


def test_each_shadowed_model_has_a_dashboard_of_production_beside_its_shadow(stage) -> None:
    _, synthesized = stage
    for name in ("ranker", "scorer"):
        [dashboard] = of_type(model_template(synthesized, name), "AWS::CloudWatch::Dashboard").values()
        assert dashboard["Properties"]["DashboardName"] == f"ml-dev-{name}-shadow"
        body = json.dumps(dashboard["Properties"]["DashboardBody"])
        assert body.count("production vs shadow") == 3
        assert len(re.findall(r'\\"VariantName\\",\\"Shadow-[0-9a-f]{8}\\"', body)) == 3
    # A model without a shadow gets no dashboard of its own: the stage's shows it.
    assert not of_type(model_template(synthesized, "classifier"), "AWS::CloudWatch::Dashboard")


def test_the_dev_component_follows_the_stage_off_hours(stage) -> None:
    config, synthesized = stage
    template = model_template(synthesized, "classifier")
    [target] = [r["Properties"] for lid, r in of_type(template, "AWS::ApplicationAutoScaling::ScalableTarget").items()
                if lid.startswith("classifier")]
    actions = {a["ScheduledActionName"]: a for a in target["ScheduledActions"]}
    idle = config.idle_shutdown
    minute, hour, _, _, days = idle.off_hours_scale_in_cron.split()
    assert actions["OffHoursScaleIn"]["Schedule"] == f"cron({minute} {hour} ? * {days} *)"
    assert actions["OffHoursScaleIn"]["ScalableTargetAction"] == {"MinCapacity": 0, "MaxCapacity": 0}
    assert actions["OffHoursScaleIn"]["Timezone"] == idle.off_hours_time_zone
    minute, hour, _, _, days = idle.off_hours_scale_out_cron.split()
    assert actions["OffHoursScaleOut"]["Schedule"] == f"cron({minute} {hour} ? * {days} *)"
    classifier = config.serving.models[0]
    assert actions["OffHoursScaleOut"]["ScalableTargetAction"] == {
        "MinCapacity": 0, "MaxCapacity": classifier.max_instance_count}
    [ranker_target] = [r["Properties"] for lid, r in
                       of_type(model_template(synthesized, "ranker"),
                               "AWS::ApplicationAutoScaling::ScalableTarget").items()
                       if lid.startswith("ranker")]
    assert "ScheduledActions" not in ranker_target


def test_an_approval_in_the_stage_groups_notifies_the_alerts_topic_with_the_command(stage) -> None:
    _, synthesized = stage
    template = synthesized.stack("dev", "ops").template_json
    [rule] = [r["Properties"] for lid, r in of_type(template, "AWS::Events::Rule").items()
              if lid.startswith("ModelApprovals")]
    assert rule["EventPattern"] == {
        "source": ["aws.sagemaker"], "detail-type": ["SageMaker Model Package State Change"],
        "detail": {"ModelPackageGroupName": ["ranker-models", "scorer-models"],
                   "ModelApprovalStatus": ["Approved"]}}
    [target] = rule["Targets"]
    [topic_id] = of_type(template, "AWS::SNS::Topic")
    assert target["Arn"] == {"Ref": topic_id}
    transformer = target["InputTransformer"]
    assert transformer["InputPathsMap"] == {"detail-ModelPackageGroupName": "$.detail.ModelPackageGroupName",
                                            "detail-ModelPackageVersion": "$.detail.ModelPackageVersion",
                                            "detail-ModelPackageArn": "$.detail.ModelPackageArn"}
    assert "<detail-ModelPackageVersion>" in transformer["InputTemplate"]
    assert "make refresh-models STAGE=dev" in transformer["InputTemplate"]
    # The topic policy is the ops stack's own: no unconditioned grant to EventBridge was added.
    [policy] = of_type(template, "AWS::SNS::TopicPolicy").values()
    publishers = [s for s in policy["Properties"]["PolicyDocument"]["Statement"]
                  if s["Effect"] == "Allow" and "events.amazonaws.com" in json.dumps(s.get("Principal"))]
    assert publishers and all("aws:SourceAccount" in json.dumps(s["Condition"]) for s in publishers)


def test_no_approval_rule_when_the_stage_serves_no_registry_model(synthesized) -> None:
    for stage_name, config in synthesized.configs.items():
        assert not config.serving.model_package_groups
        rules = of_type(synthesized.stack(stage_name, "ops").template_json, "AWS::Events::Rule")
        assert not [r for r in rules.values() if "aws.sagemaker" in json.dumps(r["Properties"])]


def test_a_missing_pin_fails_at_synth_with_the_command_to_run(tmp_path, monkeypatch) -> None:
    write_pins(tmp_path / "model_pins.json", {"staging": {"ranker": PIN}})
    monkeypatch.setattr(model_pins, "PIN_FILE", tmp_path / "model_pins.json")
    with pytest.raises(ConfigError) as caught:
        synthesize({"dev": dev_with(RANKER)}, tmp_path / "out")
    assert str(caught.value) == ("model pin dev.ranker: 'ranker-models' is not allowed — a package version "
                                 "pinned in model_pins.json: run `make refresh-models STAGE=dev`")


def test_cfn_lint_finds_nothing_in_the_release_templates(stage) -> None:
    _, synthesized = stage
    templates = [str(synthesized.stack("dev", name).template_path)
                 for name in ("serving", "serving-ranker", "serving-scorer", "ops")]
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), "--format", "parseable", "--", *templates],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_pending_registry_version_shadows_the_pinned_one(stage) -> None:
    _, synthesized = stage
    template = model_template(synthesized, "scorer")
    models = {lid: r["Properties"]["PrimaryContainer"] for lid, r in of_type(template, "AWS::SageMaker::Model").items()
              if lid.startswith("scorer")}
    assert sorted(c["ModelPackageName"] for c in models.values()) == [
        SCORER_PIN["model_package_arn"], SCORER_PIN["shadow"]["model_package_arn"]]
    [config] = [r["Properties"] for lid, r in of_type(template, "AWS::SageMaker::EndpointConfig").items()
                if lid.startswith("scorer")]
    assert config["ShadowProductionVariants"][0]["InitialVariantWeight"] == 0.05


def test_an_approval_notice_needs_a_group_to_watch() -> None:
    import aws_cdk as cdk
    from aws_cdk import aws_sns as sns

    from constructs_lib.model_approval_notice import ModelApprovalNotice

    stack = cdk.Stack(cdk.App(), "Test")
    with pytest.raises(ValueError, match="at least one model package group"):
        ModelApprovalNotice(stack, "Notice", groups=(), topic=sns.Topic(stack, "Topic"),
                            command="make refresh-models STAGE=dev")


def test_the_approval_rule_adds_no_synth_warning(stage) -> None:
    from aws_cdk.assertions import Annotations, Match

    _, synthesized = stage
    ops = synthesized.app.node.find_child("dev").ops
    warnings = Annotations.from_stack(ops).find_warning("*", Match.any_value())
    assert not [w for w in warnings if "ModelApprovals" in w.id], warnings
