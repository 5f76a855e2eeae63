"""`make refresh-models`: the newest Approved version of each registry model in, a
rewritten pin file out, old -> new printed; expected failures are one line.

SageMaker and STS are botocore Stubbers: every call is validated against the
real API model (parameter names, enum values such as SortBy/ModelPackageType).
"""

from __future__ import annotations

import datetime as dt
import io
import json
from contextlib import redirect_stdout
from dataclasses import replace

import boto3
import pytest
from botocore.stub import Stubber

from delivery import refresh_models
from delivery.cli_errors import run
from ml_stacks import model_pins
from ml_stacks.config import ModelConfig, ShadowConfig, default_configs

REGION = "us-east-1"
ACCOUNT = "111122223333"
TODAY = dt.date(2026, 11, 29)
GROUP = "ranker-models"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/ranker:{{}}"
RANKER = ModelConfig(name="ranker", model_package_group=GROUP, instance_type="ml.c5.xlarge")


def arn(version: int, group: str = GROUP) -> str:
    return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/{group}/{version}"


def prod_with(*models: ModelConfig):
    prod = default_configs()["prod"]
    return replace(prod, serving=replace(prod.serving, models=(*prod.serving.models, *models)))


def list_request(group: str = GROUP, token: str | None = None) -> dict:
    request = {"ModelPackageGroupName": group, "ModelApprovalStatus": "Approved",
               "ModelPackageType": "Versioned", "SortBy": "CreationTime", "SortOrder": "Descending",
               "MaxResults": refresh_models.PAGE_SIZE}
    if token:
        request["NextToken"] = token
    return request


def summary(version: int, status: str = "Completed", group: str = GROUP) -> dict:
    return {"ModelPackageArn": arn(version, group), "ModelPackageGroupName": group,
            "ModelPackageVersion": version, "ModelPackageStatus": status,
            "ModelApprovalStatus": "Approved", "CreationTime": dt.datetime(2026, 11, version % 28 + 1)}


def description(version: int, group: str = GROUP, approval: str = "Approved", **container) -> dict:
    container = container or {"Image": IMAGE.format(version),
                              "ModelDataUrl": f"s3://registry-{ACCOUNT}/ranker/{version}/model.tar.gz"}
    return {"ModelPackageName": group, "ModelPackageGroupName": group, "ModelPackageVersion": version,
            "ModelPackageArn": arn(version, group), "CreationTime": dt.datetime(2026, 11, 1),
            "ModelPackageStatus": "Completed", "ModelApprovalStatus": approval,
            "ModelPackageStatusDetails": {"ValidationStatuses": [], "ImageScanStatuses": []},
            "InferenceSpecification": {"Containers": [container], "SupportedContentTypes": ["application/json"],
                                       "SupportedResponseMIMETypes": ["application/json"]}}


@pytest.fixture
def sagemaker():
    client = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


def expect_latest(stub: Stubber, version: int, group: str = GROUP) -> None:
    stub.add_response("list_model_packages", {"ModelPackageSummaryList": [summary(version, group=group)]},
                      list_request(group))
    stub.add_response("describe_model_package", description(version, group), {"ModelPackageName": arn(version, group)})


def test_pins_the_newest_approved_completed_version_with_what_its_containers_use(sagemaker) -> None:
    client, stub = sagemaker
    # The newest approved version is still being created: the next one down is pinned.
    stub.add_response("list_model_packages", {
        "ModelPackageSummaryList": [summary(9, status="InProgress")], "NextToken": "page-2"}, list_request())
    stub.add_response("list_model_packages", {"ModelPackageSummaryList": [summary(8)]},
                      list_request(token="page-2"))
    stub.add_response("describe_model_package", description(8), {"ModelPackageName": arn(8)})
    pins, changes = refresh_models.refresh({}, prod_with(RANKER), sagemaker=client, today=TODAY)
    assert pins == {"prod": {"ranker": {
        "model_package_group": GROUP, "model_package_arn": arn(8), "version": 8,
        "containers": [{"image": IMAGE.format(8),
                        "model_data_url": f"s3://registry-{ACCOUNT}/ranker/8/model.tar.gz"}],
        "resolved_at": "2026-11-29", "source": refresh_models.SOURCE}}}
    assert [c.line() for c in changes] == [f"prod/ranker: (none) -> {GROUP} v8"]


def test_keeps_other_stages_and_drops_models_that_left_the_registry(sagemaker) -> None:
    client, stub = sagemaker
    expect_latest(stub, 5)
    old = {"staging": {"ranker": {"model_package_group": GROUP, "model_package_arn": arn(4), "version": 4,
                                  "containers": [{"image": IMAGE.format(4), "model_data_url": None}],
                                  "resolved_at": "2026-11-01"}},
           "prod": {"ranker": {"model_package_group": GROUP, "model_package_arn": arn(5), "version": 5,
                               "containers": [{"image": IMAGE.format(5), "model_data_url": None}],
                               "resolved_at": "2026-11-01"},
                    "retired": {"model_package_group": "old", "model_package_arn": arn(2, "old"),
                                "version": 2, "containers": [{"image": IMAGE.format(2)}],
                                "resolved_at": "2026-10-01"}}}
    pins, changes = refresh_models.refresh(old, prod_with(RANKER), sagemaker=client, today=TODAY)
    assert pins["staging"] == old["staging"]
    assert set(pins["prod"]) == {"ranker"}
    assert [c.line() for c in changes] == [f"prod/ranker: {GROUP} v5 (unchanged)",
                                           "prod/retired: old v2 -> (removed)"]


@pytest.mark.parametrize(("responses", "message"), [
    ([("list_model_packages", {"ModelPackageSummaryList": []})],
     f"model package group {GROUP} in {REGION} has no Approved, completed version"),
    ([("list_model_packages", {"ModelPackageSummaryList": [summary(3)]}),
      ("describe_model_package", description(3, ModelDataSource={"S3DataSource": {
          "S3Uri": "s3://b/prefix/", "S3DataType": "S3Prefix", "CompressionType": "None"}},
          Image=IMAGE.format(3)))],
     "loads an uncompressed S3 prefix (ModelDataSource)"),
    ([("list_model_packages", {"ModelPackageSummaryList": [summary(3)]}),
      ("describe_model_package", description(3, Image="763104351884.dkr.ecr.eu-west-1.amazonaws.com/x:1",
                                             ModelDataUrl="s3://b/k.tar.gz"))],
     f"SageMaker serves an ECR image in the endpoint's region {REGION} only"),
    ([("list_model_packages", {"ModelPackageSummaryList": [summary(3)]}),
      ("describe_model_package", description(3, approval="Rejected"))],
     "is 'Rejected', not Approved: run the command again"),
])
def test_expected_failures_are_one_line(sagemaker, responses, message) -> None:
    client, stub = sagemaker
    for operation, response in responses:
        stub.add_response(operation, response)
    with pytest.raises(refresh_models.UserError) as caught:
        refresh_models.refresh({}, prod_with(RANKER), sagemaker=client, today=TODAY)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.fixture
def cli(tmp_path, monkeypatch, sagemaker):
    """main() on prod with the ranker, a copy of the pin file, stubbed STS and SageMaker."""
    client, stub = sagemaker
    sts = boto3.client("sts", region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    sts_stub = Stubber(sts)
    for _ in range(2):  # one identity check per run; a test runs the command at most twice
        sts_stub.add_response("get_caller_identity", {"Account": ACCOUNT, "UserId": "u",
                                                      "Arn": f"arn:aws:iam::{ACCOUNT}:user/release"})
    sts_stub.activate()
    pin_file = tmp_path / "model_pins.json"
    pin_file.write_text("{}\n")
    monkeypatch.setattr(refresh_models, "stage_config",
                        lambda name, account=None: prod_with(RANKER) if name == "prod" else None)
    clients = {"sts": sts, "sagemaker": client}

    def main(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out):
            code = run(lambda: refresh_models.main(list(argv), clients=lambda s, r: clients[s],
                                                   today=TODAY, pin_file=pin_file), stderr=err)
        return code, out.getvalue(), err.getvalue()
    return main, stub, pin_file


def test_the_command_rewrites_the_pins_and_prints_old_to_new(cli) -> None:
    main, stub, pin_file = cli
    expect_latest(stub, 12)
    code, out, _ = main("--stage", "prod")
    assert code == 0
    assert out.splitlines()[0] == f"prod/ranker: (none) -> {GROUP} v12"
    assert "1 pin(s) changed in model_pins.json" in out
    pin = model_pins.model_pin("prod", "ranker", GROUP, region=REGION, pin_file=pin_file)
    assert (pin.model_package_arn, pin.version, pin.containers[0].image) == (arn(12), 12, IMAGE.format(12))
    # Run again with nothing new: nothing is written.
    before = pin_file.read_text()
    expect_latest(stub, 12)
    code, out, _ = main("--stage", "prod")
    assert (code, pin_file.read_text()) == (0, before)
    assert "every pin is current; nothing written" in out


def test_an_empty_group_fails_in_one_line_and_leaves_the_pins_alone(cli) -> None:
    main, stub, pin_file = cli
    stub.add_response("list_model_packages", {"ModelPackageSummaryList": []}, list_request())
    code, _, err = main("--stage", "prod")
    assert code == 1
    assert err.startswith(f"error: model package group {GROUP} in {REGION} has no Approved")
    assert err.count("\n") == 1
    assert json.loads(pin_file.read_text()) == {}


def test_a_stage_without_registry_models_has_nothing_to_pin(tmp_path) -> None:
    sts = boto3.client("sts", region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    with Stubber(sts) as stub:
        stub.add_response("get_caller_identity", {"Account": ACCOUNT, "UserId": "u", "Arn": "arn:aws:iam::1:user/x"})
        pin_file = tmp_path / "model_pins.json"
        pin_file.write_text("{}\n")
        out = io.StringIO()
        with redirect_stdout(out):
            code = refresh_models.main(["--stage", "dev"], clients=lambda s, r: sts, today=TODAY,
                                       pin_file=pin_file)
    assert code == 0
    assert "dev serves no model from the model registry" in out.getvalue()


def test_a_missing_stage_is_one_line() -> None:
    err = io.StringIO()
    assert run(lambda: refresh_models.main([]), stderr=err) == 1
    assert err.getvalue() == "error: STAGE is required, e.g. STAGE=dev\n"


def test_credentials_for_another_account_than_the_stage_are_refused(cli, monkeypatch) -> None:
    main, _, pin_file = cli
    monkeypatch.setattr(refresh_models, "stage_config",
                        lambda name, account=None: replace(prod_with(RANKER), account="999999999999"))
    code, _, err = main("--stage", "prod")
    assert code == 1
    assert err.startswith(f"error: account: the credentials are for {ACCOUNT}, stage prod is pinned to "
                          "999999999999")
    assert json.loads(pin_file.read_text()) == {}


SHADOWED = replace(RANKER, shadow=ShadowConfig(sampling_percent=10, model_package_version=13))


def test_a_shadow_candidate_version_is_pinned_beside_production_even_while_pending(sagemaker, tmp_path) -> None:
    client, stub = sagemaker
    expect_latest(stub, 12)
    stub.add_response("describe_model_package", description(13, approval="PendingManualApproval"),
                      {"ModelPackageName": arn(13)})
    pins, changes = refresh_models.refresh({}, prod_with(SHADOWED), sagemaker=client, today=TODAY)
    assert pins["prod"]["ranker"]["version"] == 12
    assert pins["prod"]["ranker"]["shadow"]["model_package_arn"] == arn(13)
    assert [c.line() for c in changes] == [f"prod/ranker: (none) -> {GROUP} v12",
                                           f"prod/ranker shadow: (none) -> {GROUP} v13"]
    refresh_models.write_pins(tmp_path / "model_pins.json", pins)
    pin = model_pins.model_pin("prod", "ranker", GROUP, region=REGION, shadow_version=13,
                               pin_file=tmp_path / "model_pins.json")
    assert (pin.version, pin.shadow.version) == (12, 13)


@pytest.mark.parametrize(("response", "message"), [
    ({"error": ("ValidationException", "ModelPackage arn does not exist")}, "does not exist"),
    ({"body": description(13, approval="Rejected")}, "a rejected version is no candidate"),
])
def test_a_missing_or_rejected_shadow_version_is_one_line(sagemaker, response, message) -> None:
    client, stub = sagemaker
    expect_latest(stub, 12)
    if "error" in response:
        code, text = response["error"]
        stub.add_client_error("describe_model_package", code, text, expected_params={"ModelPackageName": arn(13)})
    else:
        stub.add_response("describe_model_package", response["body"], {"ModelPackageName": arn(13)})
    with pytest.raises(refresh_models.UserError, match=message):
        refresh_models.refresh({}, prod_with(SHADOWED), sagemaker=client, today=TODAY)
