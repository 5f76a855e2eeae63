"""Run spec validation: every rejection names the field, the value and what is allowed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ml_runs.cli import limits
from ml_runs.spec import SpecError, validate
from ml_stacks.config import GPUS_PER_INSTANCE_TYPE, default_configs

BASE = {"name": "resnet", "image": "ghcr.io/acme/trainer:1.2"}


def stage_limits(stage: str = "dev"):
    return limits(default_configs()[stage])


@pytest.mark.parametrize("image", [
    "trainer", "trainer:1", "acme/trainer:latest", "ghcr.io/acme/trainer:1.2",
    "localhost:5000/trainer", "123456789012.dkr.ecr.us-east-1.amazonaws.com/ml-dev/images:example-trainer-1",
    "nvcr.io/nvidia/pytorch:24.10-py3",
    "acme/trainer@sha256:" + "a" * 64, "acme/trainer:v2@sha256:" + "0f" * 32,
])
def test_image_references_docker_accepts_are_accepted(image) -> None:
    assert validate({**BASE, "image": image}, stage_limits()).image == image


@pytest.mark.parametrize("image", [
    "", "Acme/Trainer", "acme/trainer:", "acme//trainer", "acme/trainer:tag with space",
    "acme/trainer@sha256:short", "-acme/trainer", "acme/trainer:" + "t" * 129, 42,
    "registry.example.com/" + "a" * 250,
])
def test_malformed_image_references_are_rejected(image) -> None:
    with pytest.raises(SpecError) as caught:
        validate({**BASE, "image": image}, stage_limits())
    assert caught.value.field_path == "image"


@pytest.mark.parametrize(("fields", "field", "allowed"), [
    ({"name": "ResNet"}, "name", "lowercase letters, digits and '-'"),
    ({"name": "-resnet"}, "name", "starting and ending with a letter or digit"),
    ({"name": "a" * 49}, "name", "1 to 48"),
    ({"name": None}, "name", "1 to 48"),
    ({"command": "python train.py"}, "command", "a list of strings"),
    ({"command": ["python", 3]}, "command[1]", "a string"),
    ({"args": [None]}, "args[0]", "a string"),
    ({"environment": ["SEED=1"]}, "environment", "a map of variable names"),
    ({"environment": {"1SEED": "1"}}, "environment", "variable names of letters, digits and _"),
    ({"environment": {"SEED": 1}}, "environment.SEED", "quote numbers"),
    ({"environment": {"ML_RUN_ID": "x"}}, "environment.ML_RUN_ID", "the node agent sets"),
    ({"gpus": 0}, "gpus", "1 to 1 (the most GPUs one instance of the fleet has: g5.xlarge 1"),
    ({"gpus": True}, "gpus", "1 to 1"),
    ({"gpus": 1.5}, "gpus", "1 to 1"),
    ({"max_failures": 0}, "max_failures", "at least 1"),
    ({"max_duration_minutes": -5}, "max_duration_minutes", "at least 1"),
    ({"maxFailures": 3}, "maxFailures", "a field of a run spec: name, image, command"),
    ({"environment": {"BLOB": "x" * 70000}}, "(size)", "at most 65536 bytes"),
])
def test_bad_fields_name_the_field_the_value_and_what_is_allowed(fields, field, allowed) -> None:
    with pytest.raises(SpecError) as caught:
        validate({**BASE, **fields}, stage_limits())
    error = caught.value
    assert error.field_path == field
    assert allowed in error.allowed
    assert str(error).startswith(f"spec.{field}: ") and "\n" not in str(error)


def test_a_spec_that_is_not_an_object_is_rejected() -> None:
    with pytest.raises(SpecError, match=r"^spec.\(top level\): 'list' is not allowed — an object with name"):
        validate([BASE], stage_limits())


def test_defaults_come_from_the_stage_config() -> None:
    config = default_configs()["prod"]
    config = replace(config, training=replace(config.training, run_default_max_failures=5,
                                              run_default_max_duration_minutes=90))
    spec = validate(BASE, limits(config))
    assert (spec.gpus, spec.max_failures, spec.max_duration_minutes) == (1, 5, 90)
    assert (spec.command, spec.args, dict(spec.environment)) == ((), (), {})


def test_gpus_go_up_to_the_largest_instance_type_of_the_fleet() -> None:
    config = default_configs()["dev"]
    types = ("g5.12xlarge", "g6.48xlarge", "g6.xlarge")
    config = replace(config, training=replace(config.training, instance_types=types))
    most = max(GPUS_PER_INSTANCE_TYPE[t] for t in types)
    assert most == 8
    assert validate({**BASE, "gpus": most}, limits(config)).gpus == most
    with pytest.raises(SpecError, match=r"1 to 8 \(the most GPUs one instance of the fleet has: "
                                        r"g5.12xlarge 4, g6.48xlarge 8, g6.xlarge 1\)"):
        validate({**BASE, "gpus": most + 1}, limits(config))
