"""Preflight for release features: a registry model uploads nothing, a shadow
candidate's artifact must be there, and a shadow fleet draws on the quota."""

from __future__ import annotations

import dataclasses
import json

import boto3
import pytest
from moto import mock_aws

from delivery.preflight import FAIL, PASS, artifacts, quotas
from ml_stacks.config import PYTORCH_CPU_INFERENCE_IMAGE, ModelConfig, ShadowConfig, default_configs

KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
SHADOWED = ModelConfig(name="ranker", image_uri=PYTORCH_CPU_INFERENCE_IMAGE, model_data_key="ranker/v1/model.tar.gz",
                       instance_type="ml.m5.large",
                       shadow=ShadowConfig(sampling_percent=10, model_data_key="ranker/v2/model.tar.gz",
                                           instance_type="ml.c5.xlarge", instance_count=2))
REGISTRY = ModelConfig(name="scorer", model_package_group="scorer-models", instance_type="ml.m5.large")


def test_a_registry_model_passes_and_a_shadow_candidate_must_be_uploaded() -> None:
    with mock_aws():
        s3 = boto3.client("s3", **KEYS)
        s3.create_bucket(Bucket="ml-dev-models")
        s3.put_object(Bucket="ml-dev-models", Key="ranker/v1/model.tar.gz", Body=b"123")
        rows = artifacts.check_model_artifacts(s3, bucket="ml-dev-models", models=[SHADOWED, REGISTRY],
                                               stage="dev", storage_stack="ml-dev-storage")
    assert [(r.check, r.status) for r in rows] == [
        ("model ranker", PASS), ("model ranker shadow candidate", FAIL), ("model scorer", PASS)]
    assert rows[1].fix == "upload it: aws s3 cp model.tar.gz s3://ml-dev-models/ranker/v2/model.tar.gz"
    assert "scorer-models" in rows[2].figure and "make refresh-models" in rows[2].figure


def test_a_shadow_fleet_counts_against_its_instance_type_quota() -> None:
    prod = default_configs()["prod"]
    stage = dataclasses.replace(prod, serving=dataclasses.replace(prod.serving, models=(SHADOWED,)))
    needs = {n.name: n for n in quotas.quota_needs(stage)}
    shadow = needs["ml.c5.xlarge for endpoint usage"]
    assert (shadow.deploy, shadow.maximum, shadow.update_peak) == (2, 2, 4)
    assert json.dumps(shadow.parts) == '["endpoint ranker shadow 2"]'


def test_make_cost_prices_the_shadow_variant_of_an_endpoint_config() -> None:
    from delivery import cost

    stage = cost.estimate({("dev", "serving"): {"Resources": {
        "Config": {"Type": "AWS::SageMaker::EndpointConfig", "Properties": {
            "ProductionVariants": [{"VariantName": "AllTraffic", "InstanceType": "ml.g5.xlarge",
                                    "InitialInstanceCount": 2, "ModelName": "m"}],
            "ShadowProductionVariants": [{"VariantName": "Shadow", "InstanceType": "ml.g5.xlarge",
                                          "InitialInstanceCount": 1, "ModelName": "c",
                                          "InitialVariantWeight": 0.2}]}}}}},
        region_of={"dev": "us-east-1"})["dev"]
    # ml.g5.xlarge $1.408/h x 730 h = $1027.84 a month each; the shadow is a fixed fleet.
    assert stage.always_on == stage.maximum == pytest.approx(3 * 1027.84)
    assert [line.detail for line in stage.lines] == ["variant AllTraffic: 2..2 x ml.g5.xlarge",
                                                     "variant Shadow: 1..1 x ml.g5.xlarge"]


def _pins(tmp_path, monkeypatch) -> None:
    from ml_stacks import model_pins

    arn = "arn:aws:sagemaker:us-east-1:111122223333:model-package/scorer-models/{}"
    pin = {"model_package_group": "scorer-models", "model_package_arn": arn.format(3), "version": 3,
           "containers": [{"image": "111122223333.dkr.ecr.us-east-1.amazonaws.com/scorer:3"}],
           "resolved_at": "2026-11-29"}
    path = tmp_path / "model_pins.json"
    path.write_text(json.dumps({"prod": {"scorer": {**pin, "shadow": {
        **pin, "model_package_arn": arn.format(4), "version": 4}}}}))
    monkeypatch.setattr(model_pins, "PIN_FILE", path)


def _package(version: int, approval: str, status: str = "Completed") -> dict:
    import datetime as dt

    return {"ModelPackageName": "scorer-models", "ModelPackageGroupName": "scorer-models",
            "ModelPackageVersion": version, "CreationTime": dt.datetime(2026, 11, 1),
            "ModelPackageArn": f"arn:aws:sagemaker:us-east-1:111122223333:model-package/scorer-models/{version}",
            "ModelPackageStatus": status, "ModelApprovalStatus": approval,
            "ModelPackageStatusDetails": {"ValidationStatuses": []}}


@pytest.mark.parametrize(("production", "shadow", "statuses", "figures"), [
    (_package(3, "Approved"), _package(4, "PendingManualApproval"), [PASS, PASS],
     ["scorer-models v3 exists and is Approved", "scorer-models v4 exists and is PendingManualApproval"]),
    (_package(3, "Rejected"), _package(4, "Rejected"), [FAIL, "WARN"],
     ["scorer-models v3 was pinned, and is Rejected now", "scorer-models v4 was pinned, and is Rejected now"]),
    (None, _package(4, "Approved", status="Failed"), [FAIL, FAIL],
     ["scorer-models v3 is pinned but does not exist any more", "scorer-models v4 is Failed, not Completed"]),
])
def test_pinned_registry_versions_must_still_be_servable(tmp_path, monkeypatch, production, shadow, statuses,
                                                          figures) -> None:
    from botocore.stub import Stubber

    from delivery.preflight import model_packages

    _pins(tmp_path, monkeypatch)
    client = boto3.client("sagemaker", **KEYS)
    arn = "arn:aws:sagemaker:us-east-1:111122223333:model-package/scorer-models/{}"
    with Stubber(client) as stub:
        if production is None:
            stub.add_client_error("describe_model_package", "ValidationException", "does not exist",
                                  expected_params={"ModelPackageName": arn.format(3)})
        else:
            stub.add_response("describe_model_package", production, {"ModelPackageName": arn.format(3)})
        stub.add_response("describe_model_package", shadow, {"ModelPackageName": arn.format(4)})
        model = dataclasses.replace(REGISTRY, shadow=ShadowConfig(sampling_percent=5, model_package_version=4))
        rows = model_packages.check_model_packages(client, models=[SHADOWED, model], stage="prod",
                                                   region="us-east-1", account=None)
    assert [r.status for r in rows] == statuses
    assert [r.figure for r in rows] == figures
    assert all("make refresh-models STAGE=prod" in r.fix for r in rows if r.status != PASS)
