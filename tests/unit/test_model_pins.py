"""The model pin file: what the serving stacks read, validated at synth."""

from __future__ import annotations

import json

import pytest

from ml_stacks import model_pins
from ml_stacks.config import ConfigError

PIN = {
    "model_package_group": "ranker-models",
    "model_package_arn": "arn:aws:sagemaker:us-east-1:111122223333:model-package/ranker-models/3",
    "version": 3,
    "containers": [{"image": "111122223333.dkr.ecr.us-east-1.amazonaws.com/ranker:3",
                    "model_data_url": "s3://registry-bucket/ranker/3/model.tar.gz"}],
    "resolved_at": "2026-11-29",
}


def pin_file(tmp_path, pins) -> object:
    path = tmp_path / "model_pins.json"
    path.write_text(json.dumps(pins))
    return path


def test_the_repository_pin_file_is_valid() -> None:
    assert isinstance(model_pins.load_pins(), dict)


def test_a_pin_names_the_package_and_what_its_containers_use(tmp_path) -> None:
    path = pin_file(tmp_path, {"prod": {"ranker": PIN}})
    pin = model_pins.model_pin("prod", "ranker", "ranker-models", region="us-east-1",
                               account="111122223333", pin_file=path)
    assert (pin.version, pin.region, pin.account) == (3, "us-east-1", "111122223333")
    assert pin.containers == (model_pins.ContainerPin(
        image=PIN["containers"][0]["image"], model_data_url=PIN["containers"][0]["model_data_url"]),)


@pytest.mark.parametrize(("stage", "group", "region", "account", "field", "fix"), [
    ("dev", "ranker-models", "us-east-1", None, "model pin dev.ranker", "run `make refresh-models STAGE=dev`"),
    ("prod", "other-group", "us-east-1", None, "model pin prod.ranker.model_package_group",
     "'other-group', the group the model is configured with: run `make refresh-models STAGE=prod`"),
    ("prod", "ranker-models", "eu-west-1", None, "model pin prod.ranker.model_package_arn",
     "a package in the stage's region eu-west-1: run"),
    ("prod", "ranker-models", "us-east-1", "999999999999", "model pin prod.ranker.model_package_arn",
     "and account 999999999999"),
])
def test_a_missing_or_stale_pin_is_one_line_naming_the_command(tmp_path, stage, group, region, account,
                                                               field, fix) -> None:
    path = pin_file(tmp_path, {"prod": {"ranker": PIN}})
    with pytest.raises(ConfigError) as caught:
        model_pins.model_pin(stage, "ranker", group, region=region, account=account, pin_file=path)
    assert caught.value.field_path == field
    assert fix in caught.value.allowed and "\n" not in str(caught.value)


@pytest.mark.parametrize(("change", "field"), [
    ({"version": 4}, "prod.ranker.model_package_arn"),
    ({"model_package_arn": "arn:aws:sagemaker:us-east-1:111122223333:model-package/other/3"},
     "prod.ranker.model_package_arn"),
    ({"model_package_group": "bad_group"}, "prod.ranker.model_package_group"),
    ({"containers": [{"image": "docker.io/ranker:3"}]}, "prod.ranker.containers[0].image"),
    ({"containers": [{"image": PIN["containers"][0]["image"], "model_data_url": "https://x/y"}]},
     "prod.ranker.containers[0].model_data_url"),
    ({"resolved_at": "yesterday"}, "prod.ranker.resolved_at"),
    ({"containers": []}, "prod.ranker"),
])
def test_a_malformed_pin_fails_at_load(tmp_path, change, field) -> None:
    path = pin_file(tmp_path, {"prod": {"ranker": {**PIN, **change}}})
    with pytest.raises(ConfigError) as caught:
        model_pins.load_pins(path)
    assert caught.value.field_path == f"model_pins.json: {field}"


def test_invalid_json_is_one_line(tmp_path) -> None:
    path = tmp_path / "model_pins.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"^model_pins\.json: .* valid JSON"):
        model_pins.load_pins(path)


SHADOW_PIN = {**PIN, "model_package_arn": PIN["model_package_arn"][:-1] + "4", "version": 4}


def test_a_shadow_candidate_pin_comes_with_production(tmp_path) -> None:
    path = pin_file(tmp_path, {"prod": {"ranker": {**PIN, "shadow": SHADOW_PIN}}})
    pin = model_pins.model_pin("prod", "ranker", "ranker-models", region="us-east-1", shadow_version=4,
                               pin_file=path)
    assert (pin.version, pin.shadow.version, pin.shadow.model_package_arn) == (
        3, 4, SHADOW_PIN["model_package_arn"])
    assert model_pins.model_pin("prod", "ranker", "ranker-models", region="us-east-1",
                                pin_file=path).shadow is None


@pytest.mark.parametrize("pins", [{"prod": {"ranker": PIN}}, {"prod": {"ranker": {**PIN, "shadow": PIN}}}],
                         ids=["no shadow pin", "another version"])
def test_a_missing_or_other_shadow_pin_names_the_command(tmp_path, pins) -> None:
    with pytest.raises(ConfigError) as caught:
        model_pins.model_pin("prod", "ranker", "ranker-models", region="us-east-1", shadow_version=4,
                             pin_file=pin_file(tmp_path, pins))
    assert caught.value.field_path == "model pin prod.ranker.shadow"
    assert caught.value.allowed == ("version 4 of 'ranker-models', the configured shadow candidate: "
                                    "run `make refresh-models STAGE=prod`")


def test_a_shadow_pin_of_another_group_fails_at_load(tmp_path) -> None:
    other = {**SHADOW_PIN, "model_package_group": "other",
             "model_package_arn": "arn:aws:sagemaker:us-east-1:111122223333:model-package/other/4"}
    with pytest.raises(ConfigError) as caught:
        model_pins.load_pins(pin_file(tmp_path, {"prod": {"ranker": {**PIN, "shadow": other}}}))
    assert caught.value.field_path == "model_pins.json: prod.ranker.shadow.model_package_group"
