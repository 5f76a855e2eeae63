"""Serving stack: one SageMaker endpoint per configured model, per stage."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from ml_stacks import example_models
from ml_stacks.config import ModelConfig, default_configs
from ml_stacks.serving_stack import component_output_key, endpoint_output_key
from tests.conftest import STAGES, resources_of_type, synthesize

# What the repository's stages configure for their one model, "classifier".
EXPECTED = {
    "dev": dict(instance_type="ml.m5.large", sampling=100, min=0, max=1, scale_to_zero=True,
                volume_key=True, gpu=False),
    "staging": dict(instance_type="ml.g5.xlarge", sampling=50, min=1, max=2, scale_to_zero=False,
                    volume_key=False, gpu=True),
    "prod": dict(instance_type="ml.g5.xlarge", sampling=10, min=2, max=6, scale_to_zero=False,
                 volume_key=False, gpu=True),
}
INSTANCE_STAGES = ("staging", "prod")
DLC_REPOSITORY_ARN = "arn:aws:ecr:us-east-1:763104351884:repository/pytorch-inference"


def serving(all_templates, stage: str) -> dict:
    return all_templates[(stage, "serving")]


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


def example_asset(synthesized, stage: str) -> tuple[dict, dict]:
    """(source, destination) of the one example-model archive in the stage's serving assets."""
    template_path = synthesized.stack(stage, "serving").template_path
    manifest = json.loads(template_path.with_name(
        template_path.name.replace(".template.json", ".assets.json")).read_text())
    [asset] = [a for a in manifest["files"].values() if a["source"]["path"].endswith(".tar.gz")]
    [destination] = asset["destinations"].values()
    return asset["source"] | {"path": template_path.parent / asset["source"]["path"]}, destination


def policy_statements(template: dict, prefix: str) -> list[dict]:
    [policy] = [r for lid, r in resources_of_type(template, "AWS::IAM::Policy").items()
                if lid.startswith(prefix)]
    return policy["Properties"]["PolicyDocument"]["Statement"]


# --- endpoint, model and configuration -------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_each_model_gets_an_endpoint_named_after_stage_and_model(synthesized, all_templates, stage) -> None:
    endpoint = one(serving(all_templates, stage), "AWS::SageMaker::Endpoint")
    assert endpoint["Properties"]["EndpointName"] == f"ml-{stage}-classifier"
    synthesized.template(stage, "serving").has_output(
        "ClassifierEndpointName", {"Value": f"ml-{stage}-classifier"})


@pytest.mark.parametrize("stage", STAGES)
def test_model_and_config_names_are_generated_so_updates_never_replace_the_endpoint(all_templates, stage) -> None:
    template = serving(all_templates, stage)
    config_id, config = next(iter(resources_of_type(template, "AWS::SageMaker::EndpointConfig").items()))
    assert "EndpointConfigName" not in config["Properties"]
    endpoint = one(template, "AWS::SageMaker::Endpoint")
    assert endpoint["Properties"]["EndpointConfigName"] == {"Fn::GetAtt": [config_id, "EndpointConfigName"]}
    for model in resources_of_type(template, "AWS::SageMaker::Model").values():
        assert "ModelName" not in model["Properties"]


@pytest.mark.parametrize("stage", INSTANCE_STAGES)
def test_model_is_network_isolated_in_the_private_subnets_with_its_own_security_group(all_templates, stage) -> None:
    template = serving(all_templates, stage)
    model = one(template, "AWS::SageMaker::Model")["Properties"]
    assert model["EnableNetworkIsolation"] is True
    [sg_id] = resources_of_type(template, "AWS::EC2::SecurityGroup")
    assert model["VpcConfig"]["SecurityGroupIds"] == [{"Fn::GetAtt": [sg_id, "GroupId"]}]
    subnets = model["VpcConfig"]["Subnets"]
    assert len(subnets) == 3
    assert all(output_ref(s, stage, "network", "PublishOutputRefVpcprivateSubnet") for s in subnets)
    assert model["PrimaryContainer"]["Image"] == (
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/"
        "pytorch-inference:2.6.0-gpu-py312-cu124-ubuntu22.04-sagemaker")
    url = joined(model["PrimaryContainer"]["ModelDataUrl"])
    assert url[0] == "s3://" and url[2] == "/classifier/model.tar.gz"
    assert output_ref(url[1], stage, "storage", "PublishOutputRefModelArtifacts858A2101")
    config = one(template, "AWS::SageMaker::EndpointConfig")["Properties"]
    [variant] = config["ProductionVariants"]
    assert variant["ModelName"] == {"Fn::GetAtt": [next(iter(resources_of_type(template, "AWS::SageMaker::Model"))),
                                                   "ModelName"]}
    assert (variant["InstanceType"], variant["VariantName"]) == (EXPECTED[stage]["instance_type"], "AllTraffic")


def test_dev_endpoint_is_network_isolated_in_the_private_subnets_through_its_config(all_templates) -> None:
    template = serving(all_templates, "dev")
    assert not resources_of_type(template, "AWS::SageMaker::Model")
    config = one(template, "AWS::SageMaker::EndpointConfig")["Properties"]
    assert config["EnableNetworkIsolation"] is True
    [sg_id] = resources_of_type(template, "AWS::EC2::SecurityGroup")
    assert config["VpcConfig"]["SecurityGroupIds"] == [{"Fn::GetAtt": [sg_id, "GroupId"]}]
    assert len(config["VpcConfig"]["Subnets"]) == 2
    assert all(output_ref(s, "dev", "network", "PublishOutputRefVpcprivateSubnet")
               for s in config["VpcConfig"]["Subnets"])
    [role_id] = [lid for lid in resources_of_type(template, "AWS::IAM::Role")]
    assert config["ExecutionRoleArn"] == {"Fn::GetAtt": [role_id, "Arn"]}


@pytest.mark.parametrize("stage", STAGES)
def test_security_group_admits_nothing_and_sends_only_https(all_templates, stage) -> None:
    group = one(serving(all_templates, stage), "AWS::EC2::SecurityGroup")["Properties"]
    assert "SecurityGroupIngress" not in group
    assert [(r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in group["SecurityGroupEgress"]] == [("tcp", 443, 443)]
    assert output_ref(group["VpcId"], stage, "network", "PublishOutputRefVpc")


@pytest.mark.parametrize("stage", STAGES)
def test_data_capture_records_input_and_output_encrypted_with_the_capture_key(all_templates, stage) -> None:
    capture = one(serving(all_templates, stage), "AWS::SageMaker::EndpointConfig")["Properties"]["DataCaptureConfig"]
    assert capture_key_arn(capture["KmsKeyId"], stage), capture["KmsKeyId"]
    assert capture["EnableCapture"] is True
    assert capture["CaptureOptions"] == [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]
    assert capture["InitialSamplingPercentage"] == EXPECTED[stage]["sampling"]
    assert capture["CaptureContentTypeHeader"] == {"CsvContentTypes": ["text/csv"],
                                                   "JsonContentTypes": ["application/json"]}
    destination = joined(capture["DestinationS3Uri"])
    assert destination[0] == "s3://" and destination[2] == "/classifier/"
    assert output_ref(destination[1], stage, "storage", "PublishOutputRefDataCapture91154E3A")


@pytest.mark.parametrize("stage", STAGES)
def test_volume_is_encrypted_with_the_stage_key_unless_it_is_local_nvme(all_templates, stage) -> None:
    config = one(serving(all_templates, stage), "AWS::SageMaker::EndpointConfig")["Properties"]
    if EXPECTED[stage]["volume_key"]:
        assert key_arn(config["KmsKeyId"], stage)
    else:
        # ml.g5 instance storage is hardware-encrypted; SageMaker rejects a KmsKeyId for it.
        assert "KmsKeyId" not in config


# --- execution role --------------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_execution_role_is_assumed_by_sagemaker_and_has_no_managed_policies(all_templates, stage) -> None:
    roles = resources_of_type(serving(all_templates, stage), "AWS::IAM::Role")
    [role] = roles.values()
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"] == [{
        "Action": "sts:AssumeRole", "Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}}]
    assert "ManagedPolicyArns" not in role["Properties"]
    assert "AmazonSageMakerFullAccess" not in json.dumps(serving(all_templates, stage))


@pytest.mark.parametrize("stage", STAGES)
def test_role_reads_only_its_model_artifact_pulls_only_its_repository_and_uses_the_key(
        synthesized, all_templates, stage) -> None:
    template = serving(all_templates, stage)
    statements = {s["Sid"]: s for s in policy_statements(template, "classifierRoleDefaultPolicy")}
    assert set(statements) == {"ReadItsModelArtifact", "PullItsImage", "DecryptItsModelArtifact",
                               "EncryptItsDataCapture", "WriteItsLogs"} | (
        {"EncryptItsVolumes"} if EXPECTED[stage]["volume_key"] else set())

    read = statements["ReadItsModelArtifact"]
    assert read["Action"] == "s3:GetObject"
    parts = joined(read["Resource"])
    model = synthesized.configs[stage].serving.models[0]
    if model.example_model is not None:
        # The one object of the example model in the bootstrap bucket, not the bucket.
        destination = example_asset(synthesized, stage)[1]
        assert parts == ["arn:aws:s3:::", {"Fn::Sub": destination["bucketName"]},
                         "/" + destination["objectKey"]]
    else:
        assert output_ref(parts[0], stage, "storage", "PublishOutputFnGetAttModelArtifacts858A2101Arn")
        assert parts[1] == f"/{model.model_data_key}"

    pull = statements["PullItsImage"]
    assert pull["Action"] == ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    assert pull["Resource"] == DLC_REPOSITORY_ARN

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
    expected = [f"/aws/sagemaker/Endpoints/ml-{stage}-classifier"]
    if EXPECTED[stage]["scale_to_zero"]:
        expected.append(f"/aws/sagemaker/InferenceComponents/ml-{stage}-classifier")
    assert names == sorted(expected)


@pytest.mark.parametrize("stage", STAGES)
def test_role_writes_only_its_data_capture_prefix(all_templates, stage) -> None:
    [statement] = policy_statements(serving(all_templates, stage), "classifierCapturePolicy")
    assert statement["Action"] == "s3:PutObject"
    parts = joined(statement["Resource"])
    assert output_ref(parts[0], stage, "storage", "PublishOutputFnGetAttDataCapture91154E3AArn")
    assert parts[1] == "/classifier/*"


@pytest.mark.parametrize("stage", STAGES)
def test_wildcards_are_only_for_actions_without_resource_level_permissions(all_templates, stage) -> None:
    statements = {s["Sid"]: s for s in policy_statements(serving(all_templates, stage), "classifierServicePolicy")}
    wildcard = {sid for sid, s in statements.items() if s["Resource"] == "*"}
    assert wildcard == {"EcrAuthorizationTokenHasNoResource", "DescribeTheNetworkHasNoResource"}
    assert statements["EcrAuthorizationTokenHasNoResource"]["Action"] == "ecr:GetAuthorizationToken"
    assert all(a.startswith("ec2:Describe") for a in statements["DescribeTheNetworkHasNoResource"]["Action"])
    create = statements["NetworkInterfacesInItsSubnetsOnly"]
    assert create["Action"] == "ec2:CreateNetworkInterface"
    rendered = json.dumps(create["Resource"])
    assert rendered.count(":subnet/") == len(default_configs()[stage].network.availability_zones)
    assert rendered.count(":security-group/") == 1
    manage = statements["ManageNetworkInterfacesInItsVpc"]
    assert set(manage["Condition"]) == {"ArnEquals"} and "ec2:Vpc" in manage["Condition"]["ArnEquals"]


@pytest.mark.parametrize("stage", STAGES)
def test_endpoint_waits_for_its_role_policies_and_log_groups(all_templates, stage) -> None:
    template = serving(all_templates, stage)
    endpoint = one(template, "AWS::SageMaker::Endpoint")
    needed = {lid for lid, r in template["Resources"].items()
              if r["Type"] in {"AWS::IAM::Role", "AWS::IAM::Policy", "AWS::Logs::LogGroup"}}
    assert needed <= set(endpoint["DependsOn"])


# --- autoscaling -----------------------------------------------------------------------

AUTOSCALING_ROLE_SUFFIX = ("role/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/"
                           "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint")


def scaling_policies(template: dict) -> dict[str, dict]:
    return {r["Properties"]["PolicyName"].split("ScalableTarget")[-1]: r["Properties"]
            for r in resources_of_type(template, "AWS::ApplicationAutoScaling::ScalingPolicy").values()}


@pytest.mark.parametrize("stage", INSTANCE_STAGES)
def test_instance_count_scales_on_invocations_and_gpu_utilization(all_templates, stage) -> None:
    template = serving(all_templates, stage)
    target = one(template, "AWS::ApplicationAutoScaling::ScalableTarget")
    props = target["Properties"]
    assert props["ResourceId"] == f"endpoint/ml-{stage}-classifier/variant/AllTraffic"
    assert props["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert props["ServiceNamespace"] == "sagemaker"
    assert (props["MinCapacity"], props["MaxCapacity"]) == (EXPECTED[stage]["min"], EXPECTED[stage]["max"])
    assert joined(props["RoleARN"])[-1].endswith(AUTOSCALING_ROLE_SUFFIX)
    assert next(iter(resources_of_type(template, "AWS::SageMaker::Endpoint"))) in target["DependsOn"]

    policies = [r["Properties"] for r in
                resources_of_type(template, "AWS::ApplicationAutoScaling::ScalingPolicy").values()]
    configs = [p["TargetTrackingScalingPolicyConfiguration"] for p in policies]
    assert [p["PolicyType"] for p in policies] == ["TargetTrackingScaling", "TargetTrackingScaling"]
    invocations, gpu = configs
    assert invocations == {
        "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
        "TargetValue": 70, "ScaleInCooldown": 300, "ScaleOutCooldown": 60}
    assert gpu["TargetValue"] == 70
    assert (gpu["ScaleInCooldown"], gpu["ScaleOutCooldown"]) == (300, 60)
    metric = gpu["CustomizedMetricSpecification"]
    assert (metric["Namespace"], metric["MetricName"], metric["Statistic"]) == (
        "/aws/sagemaker/Endpoints", "GPUUtilization", "Average")
    assert metric["Dimensions"] == [{"Name": "EndpointName", "Value": f"ml-{stage}-classifier"},
                                    {"Name": "VariantName", "Value": "AllTraffic"}]


def test_dev_serves_through_an_inference_component_that_scales_to_zero(synthesized, all_templates) -> None:
    template = serving(all_templates, "dev")
    config = one(template, "AWS::SageMaker::EndpointConfig")["Properties"]
    [variant] = config["ProductionVariants"]
    assert "ModelName" not in variant
    assert variant["ManagedInstanceScaling"] == {"Status": "ENABLED", "MinInstanceCount": 0, "MaxInstanceCount": 1}
    assert variant["RoutingConfig"] == {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}

    component = one(template, "AWS::SageMaker::InferenceComponent")["Properties"]
    endpoint_id = next(iter(resources_of_type(template, "AWS::SageMaker::Endpoint")))
    assert component["EndpointName"] == {"Fn::GetAtt": [endpoint_id, "EndpointName"]}
    assert component["InferenceComponentName"] == "ml-dev-classifier"
    assert component["VariantName"] == "AllTraffic"
    assert component["RuntimeConfig"] == {"CopyCount": 1}
    spec = component["Specification"]
    assert spec["ComputeResourceRequirements"] == {"NumberOfCpuCoresRequired": 1, "MinMemoryRequiredInMb": 2048}
    assert spec["Container"]["Image"].endswith("pytorch-inference:2.6.0-cpu-py312-ubuntu22.04-sagemaker")
    destination = example_asset(synthesized, "dev")[1]
    assert joined(spec["Container"]["ArtifactUrl"]) == [
        "s3://", {"Fn::Sub": destination["bucketName"]}, "/" + destination["objectKey"]]

    target = one(template, "AWS::ApplicationAutoScaling::ScalableTarget")["Properties"]
    assert target["ResourceId"] == "inference-component/ml-dev-classifier"
    assert target["ScalableDimension"] == "sagemaker:inference-component:DesiredCopyCount"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 1)
    assert joined(target["RoleARN"])[-1].endswith(AUTOSCALING_ROLE_SUFFIX)


def test_dev_scales_out_from_zero_when_a_request_finds_no_copy(all_templates) -> None:
    template = serving(all_templates, "dev")
    policies = {lid: r["Properties"] for lid, r in
                resources_of_type(template, "AWS::ApplicationAutoScaling::ScalingPolicy").items()}
    [tracking] = [p for p in policies.values() if p["PolicyType"] == "TargetTrackingScaling"]
    assert tracking["TargetTrackingScalingPolicyConfiguration"] == {
        "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerInferenceComponentInvocationsPerCopy"},
        "TargetValue": 70, "ScaleInCooldown": 300, "ScaleOutCooldown": 60}
    [(step_id, step)] = [(lid, p) for lid, p in policies.items() if p["PolicyType"] == "StepScaling"]
    assert step["StepScalingPolicyConfiguration"]["StepAdjustments"] == [
        {"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]
    assert step["StepScalingPolicyConfiguration"]["AdjustmentType"] == "ChangeInCapacity"
    [alarm] = [a["Properties"] for a in resources_of_type(template, "AWS::CloudWatch::Alarm").values()
               if a["Properties"].get("MetricName") == "NoCapacityInvocationFailures"]
    assert alarm["AlarmActions"] == [{"Ref": step_id}]
    assert alarm["Dimensions"] == [{"Name": "InferenceComponentName", "Value": "ml-dev-classifier"}]
    assert (alarm["Threshold"], alarm["ComparisonOperator"], alarm["Statistic"]) == (
        1, "GreaterThanOrEqualToThreshold", "Maximum")


# --- alarms, rollback, dashboard -------------------------------------------------------

def health_alarms(template: dict) -> dict[str, dict]:
    return {a["Properties"]["AlarmName"]: a["Properties"]
            for a in resources_of_type(template, "AWS::CloudWatch::Alarm").values()
            if a["Properties"].get("MetricName") != "NoCapacityInvocationFailures"}


@pytest.mark.parametrize("stage", STAGES)
def test_alarms_on_5xx_4xx_rate_and_p99_latency_notify_the_alerts_topic(all_templates, stage) -> None:
    alarms = health_alarms(serving(all_templates, stage))
    name = f"ml-{stage}-classifier"
    assert set(alarms) == {f"{name}-invocation-5xx-errors", f"{name}-invocation-4xx-rate",
                           f"{name}-model-latency-p99"}
    dimensions = ([{"Name": "InferenceComponentName", "Value": name}] if stage == "dev" else
                  [{"Name": "EndpointName", "Value": name}, {"Name": "VariantName", "Value": "AllTraffic"}])
    for alarm in alarms.values():
        for actions in (alarm["AlarmActions"], alarm["OKActions"]):
            [topic] = actions
            assert output_ref(topic, stage, "ops", "PublishOutputRefAlerts")

    errors = alarms[f"{name}-invocation-5xx-errors"]
    assert (errors["MetricName"], errors["Statistic"], errors["Period"], errors["Threshold"],
            errors["ComparisonOperator"]) == ("Invocation5XXErrors", "Sum", 300, 1, "GreaterThanOrEqualToThreshold")
    assert errors["Dimensions"] == dimensions

    rate = alarms[f"{name}-invocation-4xx-rate"]
    assert (rate["Threshold"], rate["ComparisonOperator"]) == (5, "GreaterThanThreshold")
    queries = {m["Id"]: m for m in rate["Metrics"]}
    [expression] = [m for m in rate["Metrics"] if "Expression" in m]
    assert expression["Expression"] == "IF(invocations > 0, 100 * errors / invocations, 0)"
    assert queries["errors"]["MetricStat"]["Metric"]["MetricName"] == "Invocation4XXErrors"
    assert queries["invocations"]["MetricStat"]["Metric"]["MetricName"] == "Invocations"
    assert queries["errors"]["MetricStat"]["Metric"]["Dimensions"] == dimensions

    latency = alarms[f"{name}-model-latency-p99"]
    # ModelLatency is in microseconds: the 1000 ms default is 1,000,000 µs.
    assert (latency["MetricName"], latency["ExtendedStatistic"], latency["Threshold"]) == (
        "ModelLatency", "p99", 1_000_000)
    assert (latency["EvaluationPeriods"], latency["DatapointsToAlarm"]) == (5, 3)


@pytest.mark.parametrize(("stage", "routing"), [
    ("staging", {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}),
    ("prod", {"Type": "CANARY", "WaitIntervalInSeconds": 600,
              "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10}}),
])
def test_blue_green_deployment_rolls_back_on_the_endpoints_alarms(all_templates, stage, routing) -> None:
    template = serving(all_templates, stage)
    alarm_ids = {lid for lid, a in resources_of_type(template, "AWS::CloudWatch::Alarm").items()}
    deployment = one(template, "AWS::SageMaker::Endpoint")["Properties"]["DeploymentConfig"]
    policy = deployment["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"] == routing
    assert policy["TerminationWaitInSeconds"] == {"staging": 300, "prod": 600}[stage]
    # bake + termination wait + an hour to provision the new fleet
    assert policy["MaximumExecutionTimeoutInSeconds"] == {"staging": 3900, "prod": 4800}[stage]
    rollback = [a["AlarmName"] for a in deployment["AutoRollbackConfiguration"]["Alarms"]]
    assert {r["Ref"] for r in rollback} == alarm_ids
    assert len(rollback) == 3


@pytest.mark.parametrize("stage", INSTANCE_STAGES)
def test_deployments_keep_the_autoscaled_instance_count_but_apply_new_capture_settings(all_templates, stage) -> None:
    endpoint = one(serving(all_templates, stage), "AWS::SageMaker::Endpoint")["Properties"]
    assert endpoint["RetainAllVariantProperties"] is True
    assert endpoint["ExcludeRetainedVariantProperties"] == [{"VariantPropertyType": "DataCaptureConfig"}]


def test_dev_component_updates_roll_one_copy_at_a_time_and_roll_back_on_alarms(all_templates) -> None:
    template = serving(all_templates, "dev")
    health = {lid for lid, a in resources_of_type(template, "AWS::CloudWatch::Alarm").items()
              if a["Properties"].get("MetricName") != "NoCapacityInvocationFailures"}
    deployment = one(template, "AWS::SageMaker::InferenceComponent")["Properties"]["DeploymentConfig"]
    assert deployment["RollingUpdatePolicy"]["MaximumBatchSize"] == {"Type": "COPY_COUNT", "Value": 1}
    assert {a["AlarmName"]["Ref"] for a in deployment["AutoRollbackConfiguration"]["Alarms"]} == health


@pytest.mark.parametrize("stage", STAGES)
def test_one_dashboard_per_stage_shows_every_endpoint(all_templates, stage) -> None:
    dashboard = one(serving(all_templates, stage), "AWS::CloudWatch::Dashboard")["Properties"]
    assert dashboard["DashboardName"] == f"ml-{stage}-serving"
    body = json.dumps(dashboard["DashboardBody"])
    for metric in ("Invocations", "ModelLatency", "Invocation4XXErrors", "Invocation5XXErrors",
                   "CPUUtilization", "GPUUtilization"):
        assert metric in body, metric
    assert f"ml-{stage}-classifier" in body


def test_dev_ships_its_example_model_as_a_file_asset_uploaded_as_is(synthesized) -> None:
    model = synthesized.configs["dev"].serving.models[0]
    source, destination = example_asset(synthesized, "dev")
    assert source["packaging"] == "file"  # a file asset is uploaded as it is, not zipped
    assert source["path"].read_bytes() == example_models.archive_bytes(model.example_model)
    assert destination["objectKey"].endswith(".gz")
    assert destination["bucketName"].startswith("cdk-hnb659fds-assets-")


@pytest.mark.parametrize("stage", STAGES)
def test_only_example_models_ship_an_archive(synthesized, stage) -> None:
    template_path = synthesized.stack(stage, "serving").template_path
    manifest = template_path.with_name(template_path.name.replace(".template.json", ".assets.json"))
    archives = [a for a in json.loads(manifest.read_text())["files"].values()
                if a["source"]["path"].endswith(".tar.gz")]
    examples = [m for m in synthesized.configs[stage].serving.models if m.example_model is not None]
    assert len(archives) == len(examples)


@pytest.mark.parametrize("stage", STAGES)
def test_outputs_name_what_smoke_invokes(synthesized, stage) -> None:
    outputs = synthesized.stack(stage, "serving").template_json["Outputs"]
    for model in synthesized.configs[stage].serving.models:
        assert outputs[endpoint_output_key(model.name)]["Value"] == f"ml-{stage}-{model.name}"
        component = outputs.get(component_output_key(model.name))
        assert (component["Value"] if component else None) == (
            f"ml-{stage}-{model.name}" if model.scale_to_zero else None)


def test_serving_stack_exposes_its_endpoints(synthesized) -> None:
    stage = synthesized.app.node.find_child("prod")
    endpoint = stage.serving.endpoints["classifier"]
    assert endpoint.endpoint_name == "ml-prod-classifier"
    assert callable(endpoint.grant_invoke) and callable(endpoint.metric_invocations)


# --- models come and go independently ----------------------------------------------------

RANKER = ModelConfig(name="ranker", image_tag="ranker-1.4.0", model_data_key="ranker/v1/model.tar.gz",
                     instance_type="ml.c5.xlarge", min_instance_count=1, max_instance_count=3)


def _dev_with(*models: ModelConfig):
    dev = default_configs()["dev"]
    return replace(dev, serving=replace(dev.serving, models=models))


@pytest.fixture(scope="module")
def two_and_one(tmp_path_factory) -> tuple[dict, dict]:
    """dev with classifier + ranker, then dev with ranker alone."""
    classifier = default_configs()["dev"].serving.models[0]
    both = synthesize({"dev": _dev_with(classifier, RANKER)}, tmp_path_factory.mktemp("both"))
    alone = synthesize({"dev": _dev_with(RANKER)}, tmp_path_factory.mktemp("alone"))
    return both.stack("dev", "serving").template_json, alone.stack("dev", "serving").template_json


def test_two_models_synthesize_two_independent_endpoints(two_and_one) -> None:
    both, _ = two_and_one
    endpoints = sorted(r["Properties"]["EndpointName"]
                       for r in resources_of_type(both, "AWS::SageMaker::Endpoint").values())
    assert endpoints == ["ml-dev-classifier", "ml-dev-ranker"]
    for resource_type in ("AWS::IAM::Role", "AWS::EC2::SecurityGroup", "AWS::SageMaker::EndpointConfig",
                          "AWS::ApplicationAutoScaling::ScalableTarget"):
        assert len(resources_of_type(both, resource_type)) == 2, resource_type
    alarms = {a["Properties"]["AlarmName"] for a in resources_of_type(both, "AWS::CloudWatch::Alarm").values()}
    assert {f"ml-dev-ranker-{s}" for s in ("invocation-5xx-errors", "invocation-4xx-rate",
                                           "model-latency-p99")} <= alarms
    # The ranker's image comes from the stage repository, and its role may pull from that one only.
    [ranker_model] = resources_of_type(both, "AWS::SageMaker::Model").values()
    image = json.dumps(ranker_model["Properties"]["PrimaryContainer"]["Image"])
    assert "PublishOutputFnGetAttImages2D38C313Arn" in image and ":ranker-1.4.0" in image
    statements = {s["Sid"]: s for s in policy_statements(both, "rankerRoleDefaultPolicy")}
    assert output_ref(statements["PullItsImage"]["Resource"], "dev", "storage",
                      "PublishOutputFnGetAttImages2D38C313Arn")
    assert joined(statements["ReadItsModelArtifact"]["Resource"])[1] == "/ranker/v1/model.tar.gz"
    [capture] = policy_statements(both, "rankerCapturePolicy")
    assert joined(capture["Resource"])[1] == "/ranker/*"
    # ml.c5 has EBS volumes: the instance-based endpoint config encrypts them with the stage key.
    configs = [c["Properties"] for c in resources_of_type(both, "AWS::SageMaker::EndpointConfig").values()
               if "ExecutionRoleArn" not in c["Properties"]]
    [ranker_config] = configs
    assert key_arn(ranker_config["KmsKeyId"], "dev")
    assert capture_key_arn(ranker_config["DataCaptureConfig"]["KmsKeyId"], "dev")


def test_removing_a_model_leaves_the_others_resources_untouched(two_and_one) -> None:
    both, alone = two_and_one
    ranker_both = {lid: r for lid, r in both["Resources"].items() if lid.startswith("ranker")}
    ranker_alone = {lid: r for lid, r in alone["Resources"].items() if lid.startswith("ranker")}
    assert ranker_both and ranker_both == ranker_alone
    assert not [lid for lid in alone["Resources"] if lid.startswith("classifier")]
    assert sorted(r["Properties"]["EndpointName"]
                  for r in resources_of_type(alone, "AWS::SageMaker::Endpoint").values()) == ["ml-dev-ranker"]


def test_changing_a_model_keeps_the_endpoint_and_lets_cloudformation_name_the_rest(two_and_one, tmp_path) -> None:
    _, before = two_and_one
    changed = replace(RANKER, model_data_key="ranker/v2/model.tar.gz", environment={"TOP_K": "20"})
    after = synthesize({"dev": _dev_with(changed)}, tmp_path).stack("dev", "serving").template_json
    assert set(after["Resources"]) == set(before["Resources"])
    endpoint_before, endpoint_after = (one(t, "AWS::SageMaker::Endpoint") for t in (before, after))
    assert endpoint_before == endpoint_after  # same name, same (generated) config reference: an in-place update
    model_after = one(after, "AWS::SageMaker::Model")["Properties"]
    assert "ModelName" not in model_after
    assert joined(model_after["PrimaryContainer"]["ModelDataUrl"])[2] == "/ranker/v2/model.tar.gz"


def test_a_stage_without_models_still_deploys_its_dashboard(tmp_path) -> None:
    template = synthesize({"dev": _dev_with()}, tmp_path).stack("dev", "serving").template_json
    assert {r["Type"] for r in template["Resources"].values()} == {"AWS::CloudWatch::Dashboard"}
    assert "No models are configured" in json.dumps(one(template, "AWS::CloudWatch::Dashboard"))
