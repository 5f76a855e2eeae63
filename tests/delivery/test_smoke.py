"""`make smoke STAGE=...`: one request per model of the deployed stage, cold starts waited out."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from delivery import smoke
from delivery.cli_errors import UserError
from ml_stacks.config import ModelConfig, default_configs
from ml_stacks.serving_stack import component_output_key, endpoint_output_key
from tests.config_variants import REPOSITORY_VALUES
from tests.conftest import CONFIG_VARIANT

REPOSITORY = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)
NO_CAPACITY = ("Inference Component has no capacity to process this request. ApplicationAutoScaling may be "
               "in-progress (if configured) or try to increase the capacity by invoking "
               "UpdateInferenceComponentRuntimeConfig API.")
ANSWER = b'{"predictions": [{"label": "positive", "scores": {"negative": 0.002, "positive": 0.998}}]}'


def client(service: str):
    return boto3.client(service, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


class FakeClock:
    """Time that moves by ``step`` seconds per reading and by whatever the code sleeps."""

    def __init__(self, step: float = 0.125) -> None:
        self.now = 1000.0
        self.step = step
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def model_outputs(config, model) -> list[dict]:
    outputs = [{"OutputKey": endpoint_output_key(model.name),
                "OutputValue": f"{config.stack_prefix}-{model.name}"}]
    if model.scale_to_zero:
        outputs.append({"OutputKey": component_output_key(model.name),
                        "OutputValue": f"{config.stack_prefix}-{model.name}"})
    return outputs


def outputs_of(config) -> list[dict]:
    outputs = []
    for model in config.serving.models:
        outputs.append({"OutputKey": endpoint_output_key(model.name),
                        "OutputValue": f"{config.stack_prefix}-{model.name}"})
        if model.scale_to_zero:
            outputs.append({"OutputKey": component_output_key(model.name),
                            "OutputValue": f"{config.stack_prefix}-{model.name}"})
    return outputs


def describe_stacks(stub: Stubber, config, outputs=None, status="UPDATE_COMPLETE") -> None:
    """One DescribeStacks per model, of the model's own stack ml-<stage>-serving-<model>."""
    for model in config.serving.models:
        name = f"{config.stack_prefix}-serving-{model.name}"
        stub.add_response("describe_stacks", {"Stacks": [{
            "StackName": name, "CreationTime": NOW, "StackStatus": status,
            "Outputs": model_outputs(config, model) if outputs is None else outputs}]},
            {"StackName": name})


def expected_invoke(config, model: ModelConfig) -> dict:
    params = {"EndpointName": f"{config.stack_prefix}-{model.name}",
              "Body": (REPOSITORY / model.payload_path).read_bytes(),
              "ContentType": "application/json", "Accept": "application/json"}
    if model.scale_to_zero:
        params["InferenceComponentName"] = f"{config.stack_prefix}-{model.name}"
    return params


def answer(body: bytes = ANSWER) -> dict:
    return {"Body": StreamingBody(io.BytesIO(body), len(body)), "ContentType": "application/json",
            "InvokedProductionVariant": "AllTraffic"}


@pytest.fixture
def dev():
    """Dev serving its first model only: the scale-to-zero example model."""
    config = default_configs()["dev"]
    return replace(config, serving=replace(config.serving, models=config.serving.models[:1]))


def test_invokes_the_dev_component_with_the_example_payload_and_prints_answer_and_latency(dev) -> None:
    cfn, runtime, out, clock = client("cloudformation"), client("sagemaker-runtime"), io.StringIO(), FakeClock()
    [model] = dev.serving.models
    with Stubber(cfn) as cfn_stub, Stubber(runtime) as runtime_stub:
        describe_stacks(cfn_stub, dev)
        runtime_stub.add_response("invoke_endpoint", answer(), expected_invoke(dev, model))
        assert smoke.smoke(dev, cfn, runtime, out=out, clock=clock, sleep=clock.sleep) == 0
        runtime_stub.assert_no_pending_responses()
    text = out.getvalue()
    assert (f"classifier: ml-dev-classifier (inference component ml-dev-classifier) answered in 125 ms\n"
            f"  sent {model.payload_path} (application/json), got application/json: {ANSWER.decode()}\n") == text
    assert clock.sleeps == []


def test_waits_out_a_scale_to_zero_cold_start_and_says_so(dev) -> None:
    cfn, runtime, out, clock = client("cloudformation"), client("sagemaker-runtime"), io.StringIO(), FakeClock()
    [model] = dev.serving.models
    with Stubber(cfn) as cfn_stub, Stubber(runtime) as runtime_stub:
        describe_stacks(cfn_stub, dev)
        for _ in range(3):
            runtime_stub.add_client_error("invoke_endpoint", service_error_code="ValidationError",
                                          service_message=NO_CAPACITY, http_status_code=400,
                                          expected_params=expected_invoke(dev, model))
        runtime_stub.add_client_error("invoke_endpoint", service_error_code="ModelNotReadyException",
                                      service_message="still loading", http_status_code=429,
                                      expected_params=expected_invoke(dev, model))
        runtime_stub.add_response("invoke_endpoint", answer(), expected_invoke(dev, model))
        assert smoke.smoke(dev, cfn, runtime, out=out, clock=clock, sleep=clock.sleep,
                           retry_seconds=30, wait_seconds=600) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("classifier: cold start (Inference Component has no capacity")
    assert "retrying every 30 s for up to 600 s" in lines[0]
    assert clock.sleeps == [30, 30, 30, 30]
    assert lines[1] == ("classifier: ml-dev-classifier (inference component ml-dev-classifier) answered in "
                        "125 ms, after a cold start of 121 s (5 attempts)")  # 4 × 30 s + 9 clock reads


def test_gives_up_on_a_cold_start_after_the_wait_and_exits_1(dev) -> None:
    cfn, runtime, out, clock = client("cloudformation"), client("sagemaker-runtime"), io.StringIO(), FakeClock()
    with Stubber(cfn) as cfn_stub, Stubber(runtime) as runtime_stub:
        describe_stacks(cfn_stub, dev)
        for _ in range(4):  # at 0, 20, 40, 60 s; the next retry would end after the 70 s wait
            runtime_stub.add_client_error("invoke_endpoint", service_error_code="ValidationError",
                                          service_message=NO_CAPACITY, http_status_code=400)
        assert smoke.smoke(dev, cfn, runtime, out=out, clock=clock, sleep=clock.sleep,
                           retry_seconds=20, wait_seconds=70) == 1
        runtime_stub.assert_no_pending_responses()
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("classifier: FAIL still not ready after 61 s and 4 attempts (Inference Component "
                           "has no capacity")
    assert "--wait-seconds 1800" in last
    assert sum(clock.sleeps) <= 70


def test_a_model_error_fails_at_once_with_where_to_look(dev) -> None:
    cfn, runtime, out, clock = client("cloudformation"), client("sagemaker-runtime"), io.StringIO(), FakeClock()
    with Stubber(cfn) as cfn_stub, Stubber(runtime) as runtime_stub:
        describe_stacks(cfn_stub, dev)
        runtime_stub.add_client_error("invoke_endpoint", service_error_code="ModelError",
                                      service_message="Received server error (500) from primary",
                                      http_status_code=424)
        assert smoke.smoke(dev, cfn, runtime, out=out, clock=clock, sleep=clock.sleep) == 1
    assert out.getvalue() == ("classifier: FAIL ModelError: Received server error (500) from primary (the model "
                              "itself failed: read /aws/sagemaker/Endpoints/ml-dev-classifier in CloudWatch "
                              "Logs)\n")
    assert clock.sleeps == []


def test_every_model_of_the_stage_is_invoked_each_with_its_own_payload(dev, tmp_path, monkeypatch) -> None:
    """An instance-based model without scale to zero is invoked without a component name,
    with the payload its config names; one failure does not stop the others."""
    payload = tmp_path / "ranker.csv"
    payload.write_text("1,2,3\n")
    example = tmp_path / dev.serving.models[0].payload_path
    example.parent.mkdir(parents=True)
    example.write_bytes((REPOSITORY / dev.serving.models[0].payload_path).read_bytes())
    monkeypatch.setattr(smoke, "REPOSITORY", tmp_path)
    ranker = ModelConfig(name="ranker", image_tag="ranker-1", model_data_key="ranker/v1/model.tar.gz",
                         instance_type="ml.c5.xlarge", smoke_payload="ranker.csv")
    config = replace(dev, serving=replace(dev.serving, models=(ranker, dev.serving.models[0])))
    cfn, runtime, out, clock = client("cloudformation"), client("sagemaker-runtime"), io.StringIO(), FakeClock()
    with Stubber(cfn) as cfn_stub, Stubber(runtime) as runtime_stub:
        describe_stacks(cfn_stub, config)
        runtime_stub.add_client_error("invoke_endpoint", service_error_code="ValidationError",
                                      service_message="Endpoint ml-dev-ranker of account 111122223333 not found.",
                                      http_status_code=400,
                                      expected_params={"EndpointName": "ml-dev-ranker", "Body": b"1,2,3\n",
                                                       "ContentType": "text/csv", "Accept": "application/json"})
        runtime_stub.add_response("invoke_endpoint", answer(), {
            "EndpointName": "ml-dev-classifier", "InferenceComponentName": "ml-dev-classifier",
            "Body": ANY, "ContentType": "application/json", "Accept": "application/json"})
        assert smoke.smoke(config, cfn, runtime, out=out, clock=clock, sleep=clock.sleep) == 1
        runtime_stub.assert_no_pending_responses()
    lines = out.getvalue().splitlines()
    assert lines[0] == "ranker: FAIL ValidationError: Endpoint ml-dev-ranker of account 111122223333 not found."
    assert lines[1].startswith("classifier: ml-dev-classifier (inference component ml-dev-classifier) answered")


def test_fails_in_one_line_when_a_model_stack_is_not_deployed(dev) -> None:
    cfn = client("cloudformation")
    with Stubber(cfn) as stub:
        stub.add_client_error("describe_stacks", service_error_code="ValidationError",
                              service_message="Stack with id ml-dev-serving-classifier does not exist",
                              http_status_code=400)
        with pytest.raises(UserError, match=r"^stack ml-dev-serving-classifier does not exist in us-east-1: deploy the "
                                            r"stage first \(make deploy STAGE=dev\)$"):
            smoke.smoke(dev, cfn, client("sagemaker-runtime"), out=io.StringIO())


def test_fails_when_the_stack_is_mid_deploy_or_rolled_back(dev) -> None:
    cfn = client("cloudformation")
    with Stubber(cfn) as stub:
        describe_stacks(stub, dev, status="UPDATE_ROLLBACK_COMPLETE")
        with pytest.raises(UserError, match="is UPDATE_ROLLBACK_COMPLETE"):
            smoke.smoke(dev, cfn, client("sagemaker-runtime"), out=io.StringIO())


def test_fails_when_the_deployed_stack_predates_the_component_output(dev) -> None:
    cfn = client("cloudformation")
    with Stubber(cfn) as stub:
        describe_stacks(stub, dev, outputs=[{"OutputKey": "ClassifierEndpointName",
                                             "OutputValue": "ml-dev-classifier"}])
        with pytest.raises(UserError, match=r"has no output ClassifierInferenceComponentName for model "
                                            r"classifier: deploy the current code"):
            smoke.smoke(dev, cfn, client("sagemaker-runtime"), out=io.StringIO())


def test_fails_when_a_model_has_no_payload(dev) -> None:
    bare = ModelConfig(name="ranker", image_tag="r", model_data_key="ranker/model.tar.gz",
                       instance_type="ml.c5.xlarge")
    config = replace(dev, serving=replace(dev.serving, models=(bare,)))
    with pytest.raises(UserError, match="model ranker has no payload to send: set smoke_payload"):
        smoke.targets(config, {"RankerEndpointName": "ml-dev-ranker"})


def test_fails_when_the_payload_file_is_missing(dev, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(smoke, "REPOSITORY", tmp_path)
    with pytest.raises(UserError, match=r"^model classifier: payload examples/models/sentiment/payload.json "
                                        r"does not exist in the repository$"):
        smoke.targets(dev, {o["OutputKey"]: o["OutputValue"] for o in outputs_of(dev)})


@pytest.mark.skipif(CONFIG_VARIANT is not None, reason=REPOSITORY_VALUES)
def test_every_stage_has_a_payload_file_in_the_repository() -> None:
    for config in default_configs().values():
        for target in smoke.targets(config, {o["OutputKey"]: o["OutputValue"] for o in outputs_of(config)}):
            assert target.payload.is_file()
            json.loads(target.payload.read_text())


def test_a_stage_without_models_has_nothing_to_invoke(dev) -> None:
    out = io.StringIO()
    empty = replace(dev, serving=replace(dev.serving, models=()))
    assert smoke.smoke(empty, None, None, out=out) == 0
    assert "nothing to invoke" in out.getvalue()


def test_without_credentials_make_smoke_fails_in_one_line(tmp_path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true", PYTHONDONTWRITEBYTECODE="1",
               # The project's Node 22, as make puts it: jsii prints a banner on stderr for others.
               PATH=f"{REPOSITORY / 'node_modules' / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run([sys.executable, "-m", "delivery.smoke", "--stage", "dev"], cwd=REPOSITORY,
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: no AWS credentials found: set AWS_PROFILE")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
