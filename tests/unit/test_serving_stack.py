"""Serving: one stack per model (``serving-<model>``) and the stage's shared ``serving`` stack.

Every expectation is derived from the ``ModelConfig`` the stack was built
from, never from the repository's literal stage values: adding a model to a
stage, or changing one, keeps this file green (issue 15).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from constructs_lib.inference_endpoint import deployment_timeout_seconds, has_instance_storage
from ml_stacks import example_models
from ml_stacks.config import ModelConfig, default_configs, pytorch_inference_image
from ml_stacks.serving_names import component_output_key, endpoint_output_key, model_stack_id
from tests.config_variants import repository_configs
from tests.conftest import STAGES, resources_of_type, synthesize

# (stage, model name) of every model the repository's stages serve.
MODELS = tuple((stage, model.name) for stage, config in default_configs().items()
               for model in config.serving.models)
INSTANCE_MODELS = tuple((stage, model.name) for stage, config in default_configs().items()
                        for model in config.serving.models if not model.scale_to_zero)
ZERO_MODELS = tuple((stage, model.name) for stage, config in default_configs().items()
                    for model in config.serving.models if model.scale_to_zero)
AUTOSCALING_ROLE_SUFFIX = ("role/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/"
                           "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint")


def model_config(synthesized, stage: str, name: str) -> ModelConfig:
    [model] = [m for m in synthesized.configs[stage].serving.models if m.name == name]
    return model


def stack_of(all_templates, stage: str, name: str) -> dict:
    return all_templates[(stage, model_stack_id(name))]


def one(template: dict, resource_type: str) -> dict:
    [resource] = resources_of_type(template, resource_type).values()
    return resource


def output_ref(value: object, stage: str, stack: str, output_prefix: str) -> bool:
    """``value`` is the weak cross-stack reference to ``output_prefix...`` of ``ml-<stage>-<stack>``."""
    if not isinstance(value, dict) or set(value) != {"Fn::GetStackOutput"}:
        return False
    ref = value["Fn::GetStackOutput"]
    return ref["StackName"] == f"ml-{stage}-{stack}" and ref["OutputName"].startswith(output_prefix)


def key_arn(value: object, stage: str) -> bool:
    """``value`` is the stage's data key (model artifacts, volumes)."""
    return output_ref(value, stage, "storage", "PublishOutputFnGetAttKey961B73FDArn")


def capture_key_arn(value: object, stage: str) -> bool:
    """``value`` is the stage's capture key (request/response captures)."""
    return output_ref(value, stage, "storage", "PublishOutputFnGetAttCaptureKey")


def joined(value: dict) -> list:
    return value["Fn::Join"][1]


def example_asset(synthesized, stage: str, name: str) -> tuple[dict, dict]:
    """(source, destination) of the example-model archive in the model stack's assets."""
    template_path = synthesized.stack(stage, model_stack_id(name)).template_path
    manifest = json.loads(template_path.with_name(
        template_path.name.replace(".template.json", ".assets.json")).read_text())
    [asset] = [a for a in manifest["files"].values() if a["source"]["path"].endswith(".tar.gz")]
    [destination] = asset["destinations"].values()
    return asset["source"] | {"path": template_path.parent / asset["source"]["path"]}, destination


def policy_statements(template: dict, prefix: str) -> list[dict]:
    [policy] = [r for lid, r in resources_of_type(template, "AWS::IAM::Policy").items()
                if lid.startswith(prefix)]
    return policy["Properties"]["PolicyDocument"]["Statement"]


def assert_artifact_url(synthesized, stage: str, model: ModelConfig, url: dict) -> None:
    """``url`` is ``s3://<bucket>/<key>`` of the model's artifact, wherever it lives."""
    parts = joined(url)
    if model.example_model is not None:
        destination = example_asset(synthesized, stage, model.name)[1]
        assert parts == ["s3://", {"Fn::Sub": destination["bucketName"]}, "/" + destination["objectKey"]]
    else:
        assert parts[0] == "s3://" and parts[2] == f"/{model.model_data_key}"
        assert output_ref(parts[1], stage, "storage", "PublishOutputRefModelArtifacts858A2101")


def assert_image(stage: str, model: ModelConfig, image: object) -> None:
    if model.image_uri is not None:
        assert image == model.image_uri
        return
    # A tag in the stage repository: account and region of the stack, the
    # repository's name from the storage stack (no Fn::Split of its ARN).
    parts = joined(image)
    assert parts[0] == {"Ref": "AWS::AccountId"} and parts[-1] == f":{model.image_tag}"
    assert output_ref(parts[-2], stage, "storage", "PublishOutputRefImages")
    assert "Fn::Split" not in json.dumps(image)


# --- one stack per model -------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_each_model_has_a_stack_of_its_own_after_the_shared_serving_stack(synthesized, stage) -> None:
    config = synthesized.configs[stage]
    stage_node = synthesized.app.node.find_child(stage)
    assert set(stage_node.model_stacks) == {m.name for m in config.serving.models}
    for model in config.serving.models:
        stack = synthesized.stack(stage, model_stack_id(model.name))
        assert stack.stack_name == f"ml-{stage}-serving-{model.name}"
        # Deploy order, not a reference: the shared stack goes first.
        assert stage_node.serving in stage_node.model_stacks[model.name].dependencies


@pytest.mark.parametrize(("stage", "name"), MODELS)
def test_each_model_gets_an_endpoint_named_after_stage_and_model(synthesized, all_templates, stage, name) -> None:
    endpoint = one(stack_of(all_templates, stage, name), "AWS::SageMaker::Endpoint")
    assert endpoint["Properties"]["EndpointName"] == f"ml-{stage}-{name}"
    synthesized.template(stage, model_stack_id(name)).has_output(
        endpoint_output_key(name), {"Value": f"ml-{stage}-{name}"})


@pytest.mark.parametrize(("stage", "name"), MODELS)
def test_logical_ids_are_those_of_the_single_serving_stack(all_templates, stage, name) -> None:
    # The endpoint's constructs sit under a construct named after the model,
    # as they did in ml-<stage>-serving: an existing endpoint can be imported.
    template = stack_of(all_templates, stage, name)
    prefix = re.sub(r"[^A-Za-z0-9]", "", name)
    [endpoint_id] = resources_of_type(template, "AWS::SageMaker::Endpoint")
    assert re.fullmatch(prefix + r"[0-9A-F]{8}", endpoint_id), endpoint_id
    assert all(lid.startswith(prefix) for lid in template["Resources"] if lid != "CDKMetadata")


@pytest.mark.parametrize(("stage", "name"), MODELS)
def test_model_and_config_names_are_generated_so_updates_never_replace_the_endpoint(
        all_templates, stage, name) -> None:
    template = stack_of(all_templates, stage, name)
    config_id, config = next(iter(resources_of_type(template, "AWS::SageMaker::EndpointConfig").items()))
    assert "EndpointConfigName" not in config["Properties"]
    endpoint = one(template, "AWS::SageMaker::Endpoint")
    assert endpoint["Properties"]["EndpointConfigName"] == {"Fn::GetAtt": [config_id, "EndpointConfigName"]}
    for model in resources_of_type(template, "AWS::SageMaker::Model").values():
        assert "ModelName" not in model["Properties"]


@pytest.mark.parametrize(("stage", "name"), INSTANCE_MODELS)
def test_model_is_network_isolated_in_the_private_subnets_with_its_own_security_group(
        synthesized, all_templates, stage, name) -> None:
    model_cfg = model_config(synthesized, stage, name)
    template = stack_of(all_templates, stage, name)
    model = one(template, "AWS::SageMaker::Model")["Properties"]
    assert model["EnableNetworkIsolation"] is True
    [sg_id] = resources_of_type(template, "AWS::EC2::SecurityGroup")
    assert model["VpcConfig"]["SecurityGroupIds"] == [{"Fn::GetAtt": [sg_id, "GroupId"]}]
    subnets = model["VpcConfig"]["Subnets"]
    assert len(subnets) == len(synthesized.configs[stage].network.availability_zones)
    assert all(output_ref(s, stage, "network", "PublishOutputRefVpcprivateSubnet") for s in subnets)
    assert_image(stage, model_cfg, model["PrimaryContainer"]["Image"])
    assert_artifact_url(synthesized, stage, model_cfg, model["PrimaryContainer"]["ModelDataUrl"])
    [variant] = one(template, "AWS::SageMaker::EndpointConfig")["Properties"]["ProductionVariants"]
    assert variant["ModelName"] == {"Fn::GetAtt": [next(iter(resources_of_type(template, "AWS::SageMaker::Model"))),
                                                   "ModelName"]}
    assert (variant["InstanceType"], variant["VariantName"], variant["InitialInstanceCount"]) == (
        model_cfg.instance_type, "AllTraffic", model_cfg.initial_instance_count)


@pytest.mark.parametrize(("stage", "name"), ZERO_MODELS)
def test_scale_to_zero_endpoint_is_network_isolated_in_the_private_subnets_through_its_config(
        synthesized, all_templates, stage, name) -> None:
    template = stack_of(all_templates, stage, name)
    assert not resources_of_type(template, "AWS::SageMaker::Model")
    config = one(template, "AWS::SageMaker::EndpointConfig")["Properties"]
    assert config["EnableNetworkIsolation"] is True
    [sg_id] = resources_of_type(template, "AWS::EC2::SecurityGroup")
    assert config["VpcConfig"]["SecurityGroupIds"] == [{"Fn::GetAtt": [sg_id, "GroupId"]}]
    assert len(config["VpcConfig"]["Subnets"]) == len(synthesized.configs[stage].network.availability_zones)
    assert all(output_ref(s, stage, "network", "PublishOutputRefVpcprivateSubnet")
               for s in config["VpcConfig"]["Subnets"])
    [role_id] = resources_of_type(template, "AWS::IAM::Role")
    assert config["ExecutionRoleArn"] == {"Fn::GetAtt": [role_id, "Arn"]}


@pytest.mark.parametrize(("stage", "name"), MODELS)
def test_security_group_admits_nothing_and_sends_only_https(all_templates, stage, name) -> None:
    group = one(stack_of(all_templates, stage, name), "AWS::EC2::SecurityGroup")["Properties"]
    assert "SecurityGroupIngress" not in group
    assert [(r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in group["SecurityGroupEgress"]] == [("tcp", 443, 443)]
    assert output_ref(group["VpcId"], stage, "network", "PublishOutputRefVpc")


@pytest.mark.parametrize(("stage", "name"), MODELS)
def test_data_capture_records_input_and_output_encrypted_with_the_capture_key(
        synthesized, all_templates, stage, name) -> None:
    model = model_config(synthesized, stage, name)
    capture = one(stack_of(all_templates, stage, name),
                  "AWS::SageMaker::EndpointConfig")["Properties"]["DataCaptureConfig"]
    assert capture_key_arn(capture["KmsKeyId"], stage), capture["KmsKeyId"]
    assert capture["EnableCapture"] is True
    assert capture["CaptureOptions"] == [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]
    assert capture["InitialSamplingPercentage"] == model.capture_sampling_percent
    assert capture["CaptureContentTypeHeader"] == {"CsvContentTypes": list(model.capture_csv_content_types),
                                                   "JsonContentTypes": list(model.capture_json_content_types)}
    destination = joined(capture["DestinationS3Uri"])
    assert destination[0] == "s3://" and destination[2] == f"/{name}/"
    assert output_ref(destination[1], stage, "storage", "PublishOutputRefDataCapture91154E3A")


@pytest.mark.parametrize(("stage", "name"), MODELS)
def test_volume_is_encrypted_with_the_stage_key_unless_it_is_local_nvme(
        synthesized, all_templates, stage, name) -> None:
    model = model_config(synthesized, stage, name)
    config = one(stack_of(all_templates, stage, name), "AWS::SageMaker::EndpointConfig")["Properties"]
    if has_instance_storage(model.instance_type):
        # Instance storage is hardware-encrypted; SageMaker rejects a KmsKeyId for it.
        assert "KmsKeyId" not in config
    else:
        assert key_arn(config["KmsKeyId"], stage)


# --- execution role --------------------------------------------------------------------

@pytest.mark.parametrize(("stage", "name"), MODELS)
def test_execution_role_is_assumed_by_sagemaker_and_has_no_managed_policies(all_templates, stage, name) -> None:
    template = stack_of(all_templates, stage, name)
    role = one(template, "AWS::IAM::Role")
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"] == [{
        "Action": "sts:AssumeRole", "Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}}]
    assert "ManagedPolicyArns" not in role["Properties"]
    assert "AmazonSageMakerFullAccess" not in json.dumps(template)


@pytest.mark.parametrize(("stage", "name"), MODELS)
def test_role_reads_only_its_model_artifact_pulls_only_its_repository_and_uses_the_key(
        synthesized, all_templates, stage, name) -> None:
    model = model_config(synthesized, stage, name)
    template = stack_of(all_templates, stage, name)
    statements = {s["Sid"]: s for s in policy_statements(template, f"{name}RoleDefaultPolicy")}
    # Only an inference component's role encrypts volumes itself (no local NVMe).
    volume_key = model.scale_to_zero and not has_instance_storage(model.instance_type)
    assert set(statements) == {"ReadItsModelArtifact", "PullItsImage", "DecryptItsModelArtifact",
                               "EncryptItsDataCapture", "WriteItsLogs", "ReadRollbackAlarms"} | (
        {"EncryptItsVolumes"} if volume_key else set())

    read = statements["ReadItsModelArtifact"]
    assert read["Action"] == "s3:GetObject"
    parts = joined(read["Resource"])
    if model.example_model is not None:
        # The one object of the example model in the bootstrap bucket, not the bucket.
        destination = example_asset(synthesized, stage, name)[1]
        assert parts == ["arn:aws:s3:::", {"Fn::Sub": destination["bucketName"]},
                         "/" + destination["objectKey"]]
    else:
        assert output_ref(parts[0], stage, "storage", "PublishOutputFnGetAttModelArtifacts858A2101Arn")
        assert parts[1] == f"/{model.model_data_key}"

    pull = statements["PullItsImage"]
    assert pull["Action"] == ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    if model.image_uri is not None:
        account, rest = model.image_uri.split(".dkr.ecr.")
        region, repository = rest.split(".amazonaws.com/")
        assert pull["Resource"] == f"arn:aws:ecr:{region}:{account}:repository/{repository.split(':')[0]}"
    else:
        assert output_ref(pull["Resource"], stage, "storage", "PublishOutputFnGetAttImages2D38C313Arn")

    region = synthesized.configs[stage].region
    through_s3 = {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}}
    decrypt = statements["DecryptItsModelArtifact"]
    assert (decrypt["Action"], decrypt["Condition"]) == ("kms:Decrypt", through_s3)
    assert key_arn(decrypt["Resource"], stage)
    capture = statements["EncryptItsDataCapture"]
    assert capture["Action"] == ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"]
    assert capture["Condition"] == through_s3
    assert capture_key_arn(capture["Resource"], stage)

    log_groups = resources_of_type(template, "AWS::Logs::LogGroup")
    resources = statements["WriteItsLogs"]["Resource"]
    resources = resources if isinstance(resources, list) else [resources]
    assert sorted(r["Fn::GetAtt"][0] for r in resources) == sorted(log_groups)
    names = sorted(g["Properties"]["LogGroupName"] for g in log_groups.values())
    expected = [f"/aws/sagemaker/Endpoints/ml-{stage}-{name}"]
    if model.scale_to_zero:
        expected.append(f"/aws/sagemaker/InferenceComponents/ml-{stage}-{name}")
    assert names == sorted(expected)
    retention = synthesized.configs[stage].serving.log_retention_days
    assert {g["Properties"]["RetentionInDays"] for g in log_groups.values()} == {retention}


@pytest.mark.parametrize(("stage", "name"), MODELS)
def test_role_writes_only_its_data_capture_prefix(all_templates, stage, name) -> None:
    [statement] = policy_statements(stack_of(all_templates, stage, name), f"{name}CapturePolicy")
    assert statement["Action"] == "s3:PutObject"
    parts = joined(statement["Resource"])
    assert output_ref(parts[0], stage, "storage", "PublishOutputFnGetAttDataCapture91154E3AArn")
    assert parts[1] == f"/{name}/*"


@pytest.mark.parametrize(("stage", "name"), MODELS)
def test_wildcards_are_only_for_actions_without_resource_level_permissions(
        synthesized, all_templates, stage, name) -> None:
    statements = {s["Sid"]: s for s in policy_statements(stack_of(all_templates, stage, name),
                                                         f"{name}ServicePolicy")}
    wildcard = {sid for sid, s in statements.items() if s["Resource"] == "*"}
    assert wildcard == {"EcrAuthorizationTokenHasNoResource", "DescribeTheNetworkHasNoResource"}
    assert statements["EcrAuthorizationTokenHasNoResource"]["Action"] == "ecr:GetAuthorizationToken"
    assert all(a.startswith("ec2:Describe") for a in statements["DescribeTheNetworkHasNoResource"]["Action"])
    create = statements["NetworkInterfacesInItsSubnetsOnly"]
    assert create["Action"] == "ec2:CreateNetworkInterface"
    rendered = json.dumps(create["Resource"])
    assert rendered.count(":subnet/") == len(synthesized.configs[stage].network.availability_zones)
    assert rendered.count(":security-group/") == 1
    manage = statements["ManageNetworkInterfacesInItsVpc"]
    assert set(manage["Condition"]) == {"ArnEquals"} and "ec2:Vpc" in manage["Condition"]["ArnEquals"]


@pytest.mark.parametrize(("stage", "name"), MODELS)
def test_endpoint_waits_for_its_role_policies_and_log_groups(all_templates, stage, name) -> None:
    template = stack_of(all_templates, stage, name)
    endpoint = one(template, "AWS::SageMaker::Endpoint")
    needed = {lid for lid, r in template["Resources"].items()
              if r["Type"] in {"AWS::IAM::Role", "AWS::IAM::Policy", "AWS::Logs::LogGroup"}}
    assert needed <= set(endpoint["DependsOn"])


# --- autoscaling -----------------------------------------------------------------------

@pytest.mark.parametrize(("stage", "name"), INSTANCE_MODELS)
def test_instance_count_scales_on_invocations_and_optionally_gpu_utilization(
        synthesized, all_templates, stage, name) -> None:
    model = model_config(synthesized, stage, name)
    template = stack_of(all_templates, stage, name)
    target = one(template, "AWS::ApplicationAutoScaling::ScalableTarget")
    props = target["Properties"]
    assert props["ResourceId"] == f"endpoint/ml-{stage}-{name}/variant/AllTraffic"
    assert props["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert props["ServiceNamespace"] == "sagemaker"
    assert (props["MinCapacity"], props["MaxCapacity"]) == (model.min_instance_count, model.max_instance_count)
    assert joined(props["RoleARN"])[-1].endswith(AUTOSCALING_ROLE_SUFFIX)
    assert next(iter(resources_of_type(template, "AWS::SageMaker::Endpoint"))) in target["DependsOn"]

    cooldowns = {"ScaleInCooldown": model.scale_in_cooldown_seconds,
                 "ScaleOutCooldown": model.scale_out_cooldown_seconds}
    configs = [r["Properties"]["TargetTrackingScalingPolicyConfiguration"] for r in
               resources_of_type(template, "AWS::ApplicationAutoScaling::ScalingPolicy").values()]
    invocations = [c for c in configs if "PredefinedMetricSpecification" in c]
    assert invocations == [{
        "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
        "TargetValue": model.target_invocations_per_instance, **cooldowns}]
    gpu = [c for c in configs if "CustomizedMetricSpecification" in c]
    if model.gpu_utilization_target_percent is None:
        assert gpu == []
        return
    [gpu] = gpu
    assert gpu["TargetValue"] == model.gpu_utilization_target_percent
    assert (gpu["ScaleInCooldown"], gpu["ScaleOutCooldown"]) == tuple(cooldowns.values())
    metric = gpu["CustomizedMetricSpecification"]
    assert (metric["Namespace"], metric["MetricName"], metric["Statistic"]) == (
        "/aws/sagemaker/Endpoints", "GPUUtilization", "Average")
    assert metric["Dimensions"] == [{"Name": "EndpointName", "Value": f"ml-{stage}-{name}"},
                                    {"Name": "VariantName", "Value": "AllTraffic"}]


@pytest.mark.parametrize(("stage", "name"), ZERO_MODELS)
def test_scale_to_zero_serves_through_an_inference_component(synthesized, all_templates, stage, name) -> None:
    model = model_config(synthesized, stage, name)
    template = stack_of(all_templates, stage, name)
    [variant] = one(template, "AWS::SageMaker::EndpointConfig")["Properties"]["ProductionVariants"]
    assert "ModelName" not in variant
    assert variant["ManagedInstanceScaling"] == {"Status": "ENABLED", "MinInstanceCount": 0,
                                                 "MaxInstanceCount": model.max_instance_count}
    assert variant["RoutingConfig"] == {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}

    component = one(template, "AWS::SageMaker::InferenceComponent")["Properties"]
    endpoint_id = next(iter(resources_of_type(template, "AWS::SageMaker::Endpoint")))
    assert component["EndpointName"] == {"Fn::GetAtt": [endpoint_id, "EndpointName"]}
    assert component["InferenceComponentName"] == f"ml-{stage}-{name}"
    assert component["VariantName"] == "AllTraffic"
    assert component["RuntimeConfig"] == {"CopyCount": 1}
    spec = component["Specification"]
    requirements = {"NumberOfCpuCoresRequired": model.component_cpu_cores,
                    "MinMemoryRequiredInMb": model.component_memory_mb}
    if model.component_accelerators:
        requirements["NumberOfAcceleratorDevicesRequired"] = model.component_accelerators
    assert spec["ComputeResourceRequirements"] == requirements
    assert_image(stage, model, spec["Container"]["Image"])
    assert_artifact_url(synthesized, stage, model, spec["Container"]["ArtifactUrl"])

    target = one(template, "AWS::ApplicationAutoScaling::ScalableTarget")["Properties"]
    assert target["ResourceId"] == f"inference-component/ml-{stage}-{name}"
    assert target["ScalableDimension"] == "sagemaker:inference-component:DesiredCopyCount"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, model.max_instance_count)
    assert joined(target["RoleARN"])[-1].endswith(AUTOSCALING_ROLE_SUFFIX)


@pytest.mark.parametrize(("stage", "name"), ZERO_MODELS)
def test_scale_to_zero_scales_out_when_a_request_finds_no_copy(synthesized, all_templates, stage, name) -> None:
    model = model_config(synthesized, stage, name)
    template = stack_of(all_templates, stage, name)
    policies = {lid: r["Properties"] for lid, r in
                resources_of_type(template, "AWS::ApplicationAutoScaling::ScalingPolicy").items()}
    [tracking] = [p for p in policies.values() if p["PolicyType"] == "TargetTrackingScaling"]
    assert tracking["TargetTrackingScalingPolicyConfiguration"] == {
        "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerInferenceComponentInvocationsPerCopy"},
        "TargetValue": model.target_invocations_per_instance,
        "ScaleInCooldown": model.scale_in_cooldown_seconds,
        "ScaleOutCooldown": model.scale_out_cooldown_seconds}
    [(step_id, step)] = [(lid, p) for lid, p in policies.items() if p["PolicyType"] == "StepScaling"]
    assert step["StepScalingPolicyConfiguration"]["StepAdjustments"] == [
        {"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]
    assert step["StepScalingPolicyConfiguration"]["AdjustmentType"] == "ChangeInCapacity"
    [alarm] = [a["Properties"] for a in resources_of_type(template, "AWS::CloudWatch::Alarm").values()
               if a["Properties"].get("MetricName") == "NoCapacityInvocationFailures"]
    assert alarm["AlarmActions"] == [{"Ref": step_id}]
    assert alarm["Dimensions"] == [{"Name": "InferenceComponentName", "Value": f"ml-{stage}-{name}"}]
    assert (alarm["Threshold"], alarm["ComparisonOperator"], alarm["Statistic"]) == (
        1, "GreaterThanOrEqualToThreshold", "Maximum")


# --- alarms, rollback --------------------------------------------------------------------

def health_alarms(template: dict) -> dict[str, dict]:
    return {a["Properties"]["AlarmName"]: a["Properties"]
            for a in resources_of_type(template, "AWS::CloudWatch::Alarm").values()
            if a["Properties"].get("MetricName") != "NoCapacityInvocationFailures"}


@pytest.mark.parametrize(("stage", "name"), MODELS)
def test_alarms_on_5xx_4xx_rate_and_p99_latency_notify_the_alerts_topic(
        synthesized, all_templates, stage, name) -> None:
    model = model_config(synthesized, stage, name)
    alarms = health_alarms(stack_of(all_templates, stage, name))
    endpoint = f"ml-{stage}-{name}"
    assert set(alarms) == {f"{endpoint}-invocation-5xx-errors", f"{endpoint}-invocation-4xx-rate",
                           f"{endpoint}-model-latency-p99"}
    dimensions = ([{"Name": "InferenceComponentName", "Value": endpoint}] if model.scale_to_zero else
                  [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": "AllTraffic"}])
    for alarm in alarms.values():
        for actions in (alarm["AlarmActions"], alarm["OKActions"]):
            [topic] = actions
            assert output_ref(topic, stage, "ops", "PublishOutputRefAlerts")

    errors = alarms[f"{endpoint}-invocation-5xx-errors"]
    assert (errors["MetricName"], errors["Statistic"], errors["Period"], errors["Threshold"],
            errors["ComparisonOperator"]) == ("Invocation5XXErrors", "Sum", 300, model.alarm_5xx_errors,
                                              "GreaterThanOrEqualToThreshold")
    assert errors["Dimensions"] == dimensions

    rate = alarms[f"{endpoint}-invocation-4xx-rate"]
    assert (rate["Threshold"], rate["ComparisonOperator"]) == (model.alarm_4xx_rate_percent, "GreaterThanThreshold")
    queries = {m["Id"]: m for m in rate["Metrics"]}
    [expression] = [m for m in rate["Metrics"] if "Expression" in m]
    assert expression["Expression"] == "IF(invocations > 0, 100 * errors / invocations, 0)"
    assert queries["errors"]["MetricStat"]["Metric"]["MetricName"] == "Invocation4XXErrors"
    assert queries["invocations"]["MetricStat"]["Metric"]["MetricName"] == "Invocations"
    assert queries["errors"]["MetricStat"]["Metric"]["Dimensions"] == dimensions

    latency = alarms[f"{endpoint}-model-latency-p99"]
    # ModelLatency is in microseconds.
    assert (latency["MetricName"], latency["ExtendedStatistic"], latency["Threshold"]) == (
        "ModelLatency", "p99", model.alarm_latency_p99_ms * 1000)
    assert (latency["EvaluationPeriods"], latency["DatapointsToAlarm"]) == (5, 3)


def routing_of(model: ModelConfig) -> dict:
    routing = {"Type": {"canary": "CANARY", "linear": "LINEAR", "all_at_once": "ALL_AT_ONCE"}[model.deployment],
               "WaitIntervalInSeconds": model.deployment_wait_seconds}
    step = {"Type": "CAPACITY_PERCENT", "Value": model.deployment_step_percent}
    if model.deployment == "canary":
        routing["CanarySize"] = step
    elif model.deployment == "linear":
        routing["LinearStepSize"] = step
    return routing


@pytest.mark.parametrize(("stage", "name"), INSTANCE_MODELS)
def test_blue_green_deployment_rolls_back_on_the_endpoints_alarms(synthesized, all_templates, stage, name) -> None:
    model = model_config(synthesized, stage, name)
    template = stack_of(all_templates, stage, name)
    alarm_ids = set(resources_of_type(template, "AWS::CloudWatch::Alarm"))
    endpoint = one(template, "AWS::SageMaker::Endpoint")["Properties"]
    policy = endpoint["DeploymentConfig"]["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"] == routing_of(model)
    assert policy["TerminationWaitInSeconds"] == model.deployment_termination_wait_seconds
    assert policy["MaximumExecutionTimeoutInSeconds"] == deployment_timeout_seconds(
        model.deployment, model.deployment_step_percent, model.deployment_wait_seconds,
        model.deployment_termination_wait_seconds)
    rollback = [a["AlarmName"] for a in endpoint["DeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"]]
    assert {r["Ref"] for r in rollback} == alarm_ids and len(rollback) == 3
    # A deployment keeps the autoscaled instance count but applies new capture settings.
    assert endpoint["RetainAllVariantProperties"] is True
    assert endpoint["ExcludeRetainedVariantProperties"] == [{"VariantPropertyType": "DataCaptureConfig"}]


@pytest.mark.parametrize(("stage", "name"), ZERO_MODELS)
def test_component_updates_roll_one_copy_at_a_time_and_roll_back_on_alarms(
        synthesized, all_templates, stage, name) -> None:
    model = model_config(synthesized, stage, name)
    template = stack_of(all_templates, stage, name)
    health = {lid for lid, a in resources_of_type(template, "AWS::CloudWatch::Alarm").items()
              if a["Properties"].get("MetricName") != "NoCapacityInvocationFailures"}
    deployment = one(template, "AWS::SageMaker::InferenceComponent")["Properties"]["DeploymentConfig"]
    assert deployment["RollingUpdatePolicy"]["MaximumBatchSize"] == {"Type": "COPY_COUNT", "Value": 1}
    assert deployment["RollingUpdatePolicy"]["WaitIntervalInSeconds"] == model.deployment_wait_seconds
    assert {a["AlarmName"]["Ref"] for a in deployment["AutoRollbackConfiguration"]["Alarms"]} == health


@pytest.mark.parametrize(("stage", "name"), MODELS)
def test_the_execution_role_can_read_every_rollback_alarm(synthesized, all_templates, stage, name) -> None:
    """SageMaker reads the rollback alarms as the execution role during an
    update (deployment guardrails: cloudwatch:DescribeAlarms on them)."""
    template = stack_of(all_templates, stage, name)
    alarms = resources_of_type(template, "AWS::CloudWatch::Alarm")
    rolled_back_on = [
        alarms[a["AlarmName"]["Ref"]]["Properties"]["AlarmName"]
        for t in ("AWS::SageMaker::Endpoint", "AWS::SageMaker::InferenceComponent")
        for r in resources_of_type(template, t).values()
        for a in r["Properties"].get("DeploymentConfig", {}).get("AutoRollbackConfiguration", {}).get("Alarms", [])]
    assert rolled_back_on
    # The model's role, or with inference components the endpoint config's.
    [role_id] = {r["Properties"]["ExecutionRoleArn"]["Fn::GetAtt"][0]
                 for t in ("AWS::SageMaker::Model", "AWS::SageMaker::EndpointConfig")
                 for r in resources_of_type(template, t).values() if "ExecutionRoleArn" in r["Properties"]}
    readable = [json.dumps(resource) for p in resources_of_type(template, "AWS::IAM::Policy").values()
                if {"Ref": role_id} in p["Properties"]["Roles"]
                for st in p["Properties"]["PolicyDocument"]["Statement"]
                if st["Effect"] == "Allow" and "cloudwatch:DescribeAlarms" in st["Action"]
                for resource in (st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]])]
    region = synthesized.configs[stage].region
    assert sorted(readable) == sorted(json.dumps({"Fn::Join": ["", [
        f"arn:aws:cloudwatch:{region}:", {"Ref": "AWS::AccountId"}, f":alarm:{alarm}"]]}) for alarm in rolled_back_on)


# --- outputs, assets ---------------------------------------------------------------------

@pytest.mark.parametrize(("stage", "name"), MODELS)
def test_outputs_name_what_smoke_invokes(synthesized, stage, name) -> None:
    model = model_config(synthesized, stage, name)
    outputs = synthesized.stack(stage, model_stack_id(name)).template_json["Outputs"]
    assert outputs[endpoint_output_key(name)]["Value"] == f"ml-{stage}-{name}"
    component = outputs.get(component_output_key(name))
    assert (component["Value"] if component else None) == (f"ml-{stage}-{name}" if model.scale_to_zero else None)


@pytest.mark.parametrize(("stage", "name"), MODELS)
def test_only_example_models_ship_an_archive_uploaded_as_is(synthesized, stage, name) -> None:
    model = model_config(synthesized, stage, name)
    template_path = synthesized.stack(stage, model_stack_id(name)).template_path
    manifest = template_path.with_name(template_path.name.replace(".template.json", ".assets.json"))
    archives = [a for a in json.loads(manifest.read_text())["files"].values()
                if a["source"]["path"].endswith(".tar.gz")]
    assert len(archives) == (model.example_model is not None)
    if model.example_model is not None:
        source, destination = example_asset(synthesized, stage, name)
        assert source["packaging"] == "file"  # uploaded as it is, not zipped
        assert source["path"].read_bytes() == example_models.archive_bytes(model.example_model)
        assert destination["objectKey"].endswith(".gz")
        assert destination["bucketName"].startswith("cdk-hnb659fds-assets-")


def test_model_stacks_expose_their_endpoints(synthesized) -> None:
    for stage, name in MODELS:
        endpoint = synthesized.app.node.find_child(stage).model_stacks[name].endpoint
        assert endpoint.endpoint_name == f"ml-{stage}-{name}"
        assert callable(endpoint.grant_invoke) and callable(endpoint.metric_invocations)


# --- the shared serving stack -------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_the_shared_stack_holds_one_dashboard_that_finds_every_endpoint_of_the_stage(
        all_templates, stage) -> None:
    template = all_templates[(stage, "serving")]
    assert {r["Type"] for r in template["Resources"].values()} - {"AWS::CDK::Metadata"} == {
        "AWS::CloudWatch::Dashboard"}
    dashboard = one(template, "AWS::CloudWatch::Dashboard")["Properties"]
    assert dashboard["DashboardName"] == f"ml-{stage}-serving"
    body = "".join(p if isinstance(p, str) else json.dumps(p) for p in joined(dashboard["DashboardBody"]))
    for metric in ("Invocations", "ModelLatency", "Invocation4XXErrors", "Invocation5XXErrors",
                   "CPUUtilization", "GPUUtilization"):
        assert f'MetricName=\\"{metric}' in body, metric
    # Found at view time, by the stage's prefix: no model is named in it.
    assert f"EndpointName=ml-{stage}'" in body and f"InferenceComponentName=ml-{stage}'" in body
    for model in default_configs()[stage].serving.models:
        assert f"ml-{stage}-{model.name}" not in body


# --- models come and go independently ----------------------------------------------------

RANKER = ModelConfig(name="ranker", image_tag="ranker-1.4.0", model_data_key="ranker/v1/model.tar.gz",
                     instance_type="ml.c5.xlarge", min_instance_count=1, max_instance_count=3)
SCORER = ModelConfig(name="scorer", image_uri=pytorch_inference_image("us-east-1", gpu=True),
                     model_data_key="scorer/v3/model.tar.gz", instance_type="ml.g5.xlarge",
                     gpu_utilization_target_percent=60, deployment="linear", deployment_step_percent=25)


def _dev_with(*models: ModelConfig):
    dev = default_configs()["dev"]
    return replace(dev, serving=replace(dev.serving, models=models))


def _templates(configs, outdir) -> dict[str, bytes]:
    """Construct ID -> template bytes of every stack of the one stage."""
    synthesized = synthesize(configs, outdir)
    return {name: s.template_path.read_bytes() for (_, name), s in synthesized.stacks.items()}


def changed_stacks(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    """Stacks in both whose templates differ: serving stacks byte for byte; the
    stacks models reference (network, storage, ops) as CloudFormation reads
    them, because CDK lists the outputs it publishes for weak references in
    the order the consumers first asked for them, which a removed model can
    reorder without changing any output."""
    def differs(name: str) -> bool:
        if name == "serving" or name.startswith("serving-"):
            return before[name] != after[name]
        return json.loads(before[name]) != json.loads(after[name])
    return sorted(name for name in set(before) & set(after) if differs(name))


TAGGER = replace(RANKER, name="tagger", image_tag="tagger-0.9", model_data_key="tagger/v1/model.tar.gz")


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """dev with N models (the repository's plus three), then with one of them
    changed, one added, one removed, and the last one of a kind removed."""
    base = repository_configs()["dev"].serving.models
    before = (*base, RANKER, SCORER, TAGGER)
    changed = (*base, replace(RANKER, model_data_key="ranker/v2/model.tar.gz", image_tag="ranker-1.5.0",
                              environment={"TOP_K": "20"}), SCORER, TAGGER)
    added = (*before, replace(RANKER, name="reranker"))
    removed = (*base, SCORER, TAGGER)
    last_of_its_kind = (*base, SCORER)
    return {label: _templates({"dev": _dev_with(*models)}, tmp_path_factory.mktemp(label))
            for label, models in (("before", before), ("changed", changed), ("added", added),
                                  ("removed", removed), ("last_of_its_kind", last_of_its_kind))}


def test_changing_one_model_changes_only_its_stack(variants) -> None:
    before, after = variants["before"], variants["changed"]
    assert set(before) == set(after)
    assert changed_stacks(before, after) == ["serving-ranker"]


def test_adding_a_model_adds_its_stack_and_changes_no_other(variants) -> None:
    before, after = variants["before"], variants["added"]
    assert set(after) - set(before) == {"serving-reranker"}
    assert changed_stacks(before, after) == []


def test_removing_a_model_removes_its_stack_and_changes_no_other(variants) -> None:
    before, after = variants["before"], variants["removed"]
    assert set(before) - set(after) == {"serving-ranker"}
    assert changed_stacks(before, after) == []


def test_the_last_model_of_a_kind_takes_only_the_outputs_it_used_with_it(variants) -> None:
    # Weak cross-stack references: storage publishes the repository's name
    # while some model pulls from it. Removing the last such model drops
    # those two outputs from storage (outputs only, no resource) and nothing else.
    before, after = variants["removed"], variants["last_of_its_kind"]
    assert set(before) - set(after) == {"serving-tagger"}
    assert changed_stacks(before, after) == ["storage"]
    storage_before, storage_after = (json.loads(t["storage"]) for t in (before, after))
    assert storage_before["Resources"] == storage_after["Resources"]
    dropped = set(storage_before["Outputs"]) - set(storage_after["Outputs"])
    assert dropped and all("Images" in name for name in dropped)
    assert {k: v for k, v in storage_before["Outputs"].items() if k not in dropped} == storage_after["Outputs"]


def test_changing_a_model_keeps_the_endpoint_and_lets_cloudformation_name_the_rest(variants) -> None:
    before = json.loads(variants["before"]["serving-ranker"])
    after = json.loads(variants["changed"]["serving-ranker"])
    assert set(after["Resources"]) == set(before["Resources"])
    endpoint_before, endpoint_after = (one(t, "AWS::SageMaker::Endpoint") for t in (before, after))
    assert endpoint_before == endpoint_after  # same name, same (generated) config reference: an in-place update
    model_after = one(after, "AWS::SageMaker::Model")["Properties"]
    assert "ModelName" not in model_after
    assert joined(model_after["PrimaryContainer"]["ModelDataUrl"])[2] == "/ranker/v2/model.tar.gz"
    assert joined(model_after["PrimaryContainer"]["Image"])[-1] == ":ranker-1.5.0"


def test_models_of_every_kind_synthesize_independent_endpoints(variants) -> None:
    for name, model in (("ranker", RANKER), ("scorer", SCORER)):
        template = json.loads(variants["before"][model_stack_id(name)])
        assert one(template, "AWS::SageMaker::Endpoint")["Properties"]["EndpointName"] == f"ml-dev-{name}"
        assert_image("dev", model, one(template, "AWS::SageMaker::Model")["Properties"]["PrimaryContainer"]["Image"])
        config = one(template, "AWS::SageMaker::EndpointConfig")["Properties"]
        assert ("KmsKeyId" in config) == (not has_instance_storage(model.instance_type))
        policy = one(template, "AWS::SageMaker::Endpoint")["Properties"]["DeploymentConfig"]
        assert policy["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"] == routing_of(model)


def test_a_stage_without_models_still_deploys_its_dashboard(tmp_path) -> None:
    templates = _templates({"dev": _dev_with()}, tmp_path)
    assert not [name for name in templates if name.startswith("serving-")]
    template = json.loads(templates["serving"])
    assert {r["Type"] for r in template["Resources"].values()} - {"AWS::CDK::Metadata"} == {
        "AWS::CloudWatch::Dashboard"}
