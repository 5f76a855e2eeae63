"""Training stack: fleet, interruption path, node agent install, IAM scope."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk.assertions import Match, Template

from constructs_lib.gpu_training_fleet import SSM_AGENT_ACTIONS
from constructs_lib.interruption_handler import RUNTIME, checkpoint_document
from ml_stacks.app_factory import build_app
from ml_stacks.config import default_configs
from ml_stacks.pins import training_ami
from tests.conftest import STAGES, resources_of_type, stacks_of


def only(template: dict, resource_type: str, prefix: str = "") -> dict:
    """The one resource of ``resource_type`` whose logical ID starts with ``prefix``."""
    [resource] = [r for lid, r in resources_of_type(template, resource_type).items()
                  if lid.startswith(prefix)]
    return resource


def statements(template: dict) -> list[dict]:
    return [s for p in resources_of_type(template, "AWS::IAM::Policy").values()
            for s in p["Properties"]["PolicyDocument"]["Statement"]]


def policy_of(template: dict, role_prefix: str) -> list[dict]:
    """The statements of the role's default policy (the one grants write)."""
    [policy] = [p for lid, p in resources_of_type(template, "AWS::IAM::Policy").items()
                if p["Properties"]["Roles"][0]["Ref"].startswith(role_prefix)
                and lid.startswith(f"{role_prefix}DefaultPolicy")]
    return policy["Properties"]["PolicyDocument"]["Statement"]


def unscoped_of(template: dict, role_prefix: str) -> list[dict]:
    """The statements of the role's ``UnscopedApis`` policy (its only ones on ``*``)."""
    [policy] = [p for lid, p in resources_of_type(template, "AWS::IAM::Policy").items()
                if p["Properties"]["Roles"][0]["Ref"].startswith(role_prefix)
                and lid.startswith(f"{role_prefix}UnscopedApis")]
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    assert all(s["Resource"] == "*" for s in statements)
    return statements


def flat(value) -> str:
    return json.dumps(value, sort_keys=True)


@pytest.fixture(scope="module")
def dev(synthesized) -> dict:
    return synthesized.stack("dev", "training").template_json


# --- launch template ---------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_ami_is_the_pinned_id_and_no_public_parameter_resolves_at_deploy(synthesized, stage) -> None:
    template = synthesized.stack(stage, "training").template_json
    pin = training_ami(synthesized.configs[stage].region)
    data = only(template, "AWS::EC2::LaunchTemplate")["Properties"]["LaunchTemplateData"]
    assert data["ImageId"] == pin.ami_id
    # A parameter of type AWS::SSM::Parameter::Value<AWS::EC2::Image::Id> re-resolves
    # at every deploy (the bootstrap version parameter is CDK's own and harmless).
    assert not [p for p in template.get("Parameters", {}).values() if "Image::Id" in p["Type"]]
    assert "/aws/service/" not in json.dumps(template)


def test_launch_template_requires_imdsv2_with_an_explicit_hop_limit_and_monitoring(dev) -> None:
    data = only(dev, "AWS::EC2::LaunchTemplate")["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"] == {"HttpEndpoint": "enabled", "HttpTokens": "required",
                                       "HttpPutResponseHopLimit": 2}
    assert data["Monitoring"] == {"Enabled": True}
    assert "NetworkInterfaces" not in data  # EFA off by default
    assert "Placement" not in data


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_root_volume_is_encrypted_gp3_with_the_stage_key(synthesized, stage) -> None:
    training = synthesized.configs[stage].training
    template = synthesized.stack(stage, "training").template_json
    [mapping] = only(template, "AWS::EC2::LaunchTemplate")["Properties"]["LaunchTemplateData"]["BlockDeviceMappings"]
    assert mapping["DeviceName"] == training.root_device_name
    ebs = mapping["Ebs"]
    assert (ebs["VolumeType"], ebs["VolumeSize"], ebs["Iops"], ebs["Throughput"]) == (
        "gp3", training.root_volume_size_gib, training.root_volume_iops, training.root_volume_throughput_mibps)
    assert ebs["Encrypted"] is True and ebs["DeleteOnTermination"] is True
    assert ebs["KmsKeyId"]["Fn::GetStackOutput"]["StackName"] == f"ml-{stage}-storage"
    assert "Key" in ebs["KmsKeyId"]["Fn::GetStackOutput"]["OutputName"]


def test_user_data_installs_the_node_agent_as_the_contract_says(dev) -> None:
    user_data = only(dev, "AWS::EC2::LaunchTemplate")["Properties"]["LaunchTemplateData"]["UserData"]
    parts = user_data["Fn::Base64"]["Fn::Join"][1]
    script = "".join(p if isinstance(p, str) else "<token>" for p in parts)
    assert script.startswith("#!/bin/bash\nset -euo pipefail\n")
    assert "aws s3 cp 's3://<token>/" in script and ".zip' '/tmp/ml-node-agent.zip'" in script
    assert "python3 -m zipfile -e /tmp/ml-node-agent.zip /opt/ml-node-agent/" in script
    [install] = [line for line in script.splitlines() if line.endswith("install.sh")]
    assert install.endswith(" bash /opt/ml-node-agent/install.sh")
    # Every variable of CONTRACT.md and RUNS_CONTRACT.md: tests/unit/test_training_runs.py.
    assert "ML_TRAINING_UNIT" not in script
    bucket = [p for p in parts if isinstance(p, dict) and "Fn::GetStackOutput" in p]
    assert any("Checkpoints" in p["Fn::GetStackOutput"]["OutputName"] for p in bucket)


def test_node_agent_asset_leaves_out_caches_and_the_contract(synthesized) -> None:
    asset = synthesized.app.node.find_child("dev").training.node_agent.asset
    staged = synthesized.outdir / f"asset.{asset.asset_hash}"
    assert staged.is_dir()
    names = {p.name for p in staged.rglob("*")}
    assert "CONTRACT.md" not in names and "RUNS_CONTRACT.md" not in names
    assert "ml_node_agent.py" in names
    assert not any(n.endswith(".pyc") or n == "__pycache__" for n in names)


def test_lambda_asset_is_the_handler_modules_without_caches(synthesized) -> None:
    function = synthesized.app.node.find_child("dev").training.interruption_handler.function
    code = function.node.default_child.code
    key = synthesized.app.node.find_child("dev").training.resolve(code)["s3Key"]
    staged = synthesized.outdir / f"asset.{key.removesuffix('.zip')}"
    assert {p.name for p in staged.iterdir()} == {"handler.py", "batch.py", "calls.py", "ledger.py",
                                                  "logic.py", "messages.py", "quarantine.py", "requeue.py",
                                                  "telemetry.py"}


# --- Auto Scaling group ---------------------------------------------------------------

@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_group_is_a_diversified_spot_first_mixed_instances_policy(synthesized, stage) -> None:
    training = synthesized.configs[stage].training
    group = only(synthesized.stack(stage, "training").template_json, "AWS::AutoScaling::AutoScalingGroup")
    props = group["Properties"]
    assert (props["MinSize"], props["MaxSize"]) == ("0", str(training.max_capacity))
    assert "DesiredCapacity" not in props  # a deploy never resets a running fleet
    assert props["CapacityRebalance"] is True
    policy = props["MixedInstancesPolicy"]
    assert policy["InstancesDistribution"] == {
        "OnDemandAllocationStrategy": "lowest-price", "OnDemandBaseCapacity": training.on_demand_base,
        "OnDemandPercentageAboveBaseCapacity": training.on_demand_percentage,
        "SpotAllocationStrategy": "price-capacity-optimized"}
    # Every configured type, in the configured order (the on-demand priority).
    assert [o["InstanceType"] for o in policy["LaunchTemplate"]["Overrides"]] == list(training.instance_types)
    azs = synthesized.configs[stage].network.availability_zones
    subnets = props["VPCZoneIdentifier"]
    assert len(subnets) == len(azs)
    assert all("private" in s["Fn::GetStackOutput"]["OutputName"] for s in subnets)


def test_group_replaces_instances_one_by_one_when_the_template_changes(dev) -> None:
    group = only(dev, "AWS::AutoScaling::AutoScalingGroup")
    assert group["UpdatePolicy"]["AutoScalingRollingUpdate"]["MaxBatchSize"] == 1
    assert group["UpdatePolicy"]["AutoScalingRollingUpdate"]["MinInstancesInService"] == 0
    spec = group["Properties"]["MixedInstancesPolicy"]["LaunchTemplate"]["LaunchTemplateSpecification"]
    assert spec["Version"]["Fn::GetAtt"][1] == "LatestVersionNumber"


def test_group_notifies_the_encrypted_alerts_topic_and_tags_its_instances(dev, synthesized) -> None:
    props = only(dev, "AWS::AutoScaling::AutoScalingGroup")["Properties"]
    [notification] = props["NotificationConfigurations"]
    assert notification["TopicARN"]["Fn::GetStackOutput"]["StackName"] == "ml-dev-ops"
    assert sorted(notification["NotificationTypes"]) == [
        "autoscaling:EC2_INSTANCE_LAUNCH", "autoscaling:EC2_INSTANCE_LAUNCH_ERROR",
        "autoscaling:EC2_INSTANCE_TERMINATE", "autoscaling:EC2_INSTANCE_TERMINATE_ERROR"]
    assert {"Key": "ml:training-fleet", "Value": "ml-dev-training-gpu", "PropagateAtLaunch": True} in props["Tags"]


@pytest.mark.parametrize("key_id", ["Key961B73FD", "MessagingKey9A79A2B1"])
def test_autoscaling_service_role_may_use_the_volume_and_topic_keys_before_it_even_exists(
        synthesized, key_id) -> None:
    # The data key encrypts the root volumes, the messaging key the alerts topic
    # the group notifies.
    key = synthesized.stack("dev", "storage").template_json["Resources"][key_id]
    by_sid = {s.get("Sid"): s for s in key["Properties"]["KeyPolicy"]["Statement"]}
    use = by_sid["AllowAutoScalingServiceRoleToUseKey"]
    assert use["Principal"] == {"AWS": "*"}
    arn = use["Condition"]["StringEquals"]["aws:PrincipalArn"]
    assert flat(arn).endswith(
        ':role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling"]]}')
    assert use["Condition"]["StringEquals"]["kms:CallerAccount"] == {"Ref": "AWS::AccountId"}
    assert set(use["Action"]) == {"kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                                  "kms:DescribeKey"}
    if key_id == "MessagingKey9A79A2B1":
        # Notifications only: nothing for the group to grant on to EBS.
        assert "AllowAutoScalingServiceRoleToGrantKeyToEbs" not in by_sid
        return
    grant = by_sid["AllowAutoScalingServiceRoleToGrantKeyToEbs"]
    assert grant["Action"] == "kms:CreateGrant"
    assert grant["Condition"]["Bool"] == {"kms:GrantIsForAWSResource": "true"}


# --- instance role ---------------------------------------------------------------------

def test_instance_role_reads_training_data_and_only_the_runs_prefix_of_the_checkpoints(dev) -> None:
    role = only({"Resources": {k: v for k, v in dev["Resources"].items() if k.startswith("FleetRole")
                               and v["Type"] == "AWS::IAM::Role"}}, "AWS::IAM::Role")
    assert "AmazonSSMManagedInstanceCore" not in flat(role["Properties"].get("ManagedPolicyArns", []))
    fleet = policy_of(dev, "FleetRole")
    writes = [s for s in fleet if "s3:PutObject" in s["Action"]]
    [write] = writes
    assert flat(write["Resource"]).endswith('"/runs/*"]]}')
    assert "Checkpoints" in flat(write["Resource"])
    assert not any("s3:DeleteObject" in flat(s["Action"]) for s in fleet)
    reads = [s for s in fleet if "TrainingData" in flat(s["Resource"])]
    assert {s["Sid"]: s["Action"] for s in reads} == {
        "ReadTrainingData": "s3:GetObject", "ListTrainingData": "s3:ListBucket"}
    assert "Checkpoints" not in flat(reads)
    # No S3 action family: every S3 action the role holds is named in full.
    assert not [a for s in fleet for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
                if a.startswith("s3:") and "*" in a]
    assert "/i-*" not in flat(fleet)  # no instance-ID prefix grant is left
    assert not any("autoscaling:" in flat(s["Action"]) for s in fleet)
    # The group actions name the group's exact ARN, in a policy created
    # after the group (the launch template depends on the role's policies).
    [(group_policy_id, group_policy)] = [
        (lid, p) for lid, p in resources_of_type(dev, "AWS::IAM::Policy").items()
        if lid.startswith("FleetGroupActionsPolicy")]
    [lifecycle] = group_policy["Properties"]["PolicyDocument"]["Statement"]
    assert lifecycle["Action"] == ["autoscaling:CompleteLifecycleAction",
                                   "autoscaling:RecordLifecycleActionHeartbeat",
                                   "autoscaling:SetInstanceHealth"]
    [(group_id, _)] = resources_of_type(dev, "AWS::AutoScaling::AutoScalingGroup").items()
    assert lifecycle["Resource"] == {"Fn::GetAtt": [group_id, "AutoScalingGroupARN"]}
    assert group_policy["Properties"]["Roles"] == [{"Ref": group_policy["Properties"]["Roles"][0]["Ref"]}]
    assert group_policy["Properties"]["Roles"][0]["Ref"].startswith("FleetRole")
    [(_, template)] = resources_of_type(dev, "AWS::EC2::LaunchTemplate").items()
    assert group_policy_id not in template.get("DependsOn", [])


def test_no_s3_action_family_is_acknowledged_for_the_fleet_in_any_stage(synthesized) -> None:
    report = json.loads((synthesized.outdir / "validation-report.json").read_text())
    acknowledged = [(c["constructPath"], v["acknowledgedId"])
                    for plugin in report["pluginReports"] for v in plugin["suppressedViolations"]
                    for c in v["violatingConstructs"] if "/training/Fleet/" in c["constructPath"]]
    assert acknowledged, "the report lists no acknowledgement of the fleet at all"
    assert [a for a in acknowledged if "[Action::s3:" in a[1]] == []


def test_instance_role_reads_the_node_agent_asset_object_and_nothing_else_of_the_asset_bucket(
        dev, synthesized) -> None:
    asset = synthesized.app.node.find_child("dev").training.node_agent.asset
    fleet = [s for p in resources_of_type(dev, "AWS::IAM::Policy").values()
             if p["Properties"]["Roles"][0]["Ref"].startswith("FleetRole")
             for s in p["Properties"]["PolicyDocument"]["Statement"]]
    on_assets = [s for s in fleet if "-assets-" in flat(s["Resource"])]
    [read] = on_assets
    assert read["Action"] == "s3:GetObject"
    [_, parts] = read["Resource"]["Fn::Join"]
    assert parts[-1] == f"/{asset.s3_object_key}" and asset.s3_object_key.endswith(".zip")
    metadata = flat([r.get("Metadata", {}) for r in dev["Resources"].values()])
    assert "-assets-" not in metadata  # no acknowledgement names the asset bucket


@pytest.mark.parametrize("stage", STAGES)
def test_instance_role_has_the_ssm_agent_actions_and_reads_no_parameter_but_its_own(synthesized, stage) -> None:
    template = synthesized.stack(stage, "training").template_json
    roles = {lid: r for lid, r in resources_of_type(template, "AWS::IAM::Role").items()
             if lid.startswith("FleetRole")}
    [(role_id, role)] = roles.items()
    assert "ManagedPolicyArns" not in role["Properties"]  # no AmazonSSMManagedInstanceCore
    fleet = [s for p in resources_of_type(template, "AWS::IAM::Policy").values()
             if {"Ref": role_id} in p["Properties"]["Roles"]
             for s in p["Properties"]["PolicyDocument"]["Statement"]]
    [agent] = [s for s in fleet if s.get("Sid") == "SsmAgentCore"]
    assert set(agent["Action"]) == set(SSM_AGENT_ACTIONS)
    assert {"ssm:UpdateInstanceInformation", "ssmmessages:OpenDataChannel",
            "ec2messages:GetMessages"} <= set(agent["Action"])
    def actions(statement: dict) -> set[str]:
        action = statement["Action"]
        return set(action if isinstance(action, list) else [action])

    # The only parameter read: the GPU metrics agent config, one ARN.
    [read] = [s for s in fleet if any(a.startswith("ssm:GetParameter") or a == "ssm:*" for a in actions(s))]
    assert actions(read) == {"ssm:GetParameter"}
    [_, parts] = read["Resource"]["Fn::Join"]
    assert parts[2] == ":parameter" and "GpuMetrics" in flat(parts[3])


# --- interruption path -----------------------------------------------------------------

def test_termination_hook_sends_to_the_queue_with_continue_and_the_configured_timeout(dev) -> None:
    hook = only(dev, "AWS::AutoScaling::LifecycleHook")["Properties"]
    assert hook["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
    assert hook["DefaultResult"] == "CONTINUE"
    assert hook["HeartbeatTimeout"] == 300
    assert hook["LifecycleHookName"] == "ml-dev-training-gpu-terminating"
    assert hook["NotificationTargetARN"]["Fn::GetAtt"][0].startswith("InterruptionHandlerQueue")


def test_every_interruption_rule_feeds_the_queue_with_a_dead_letter_queue(dev) -> None:
    rules = [r for r in resources_of_type(dev, "AWS::Events::Rule").values()
             if "EventPattern" in r["Properties"]]  # the runs capacity schedule has none
    patterns = sorted((r["Properties"]["EventPattern"]["source"], r["Properties"]["EventPattern"]["detail-type"])
                      for r in rules)
    assert patterns == [
        (["aws.ec2"], ["Capacity Block Expiration Warning", "Capacity Block Reservation Expiration Warning"]),
        (["aws.ec2"], ["EC2 Capacity Reservation Instance Interruption Warning"]),
        (["aws.ec2"], ["EC2 Instance Rebalance Recommendation"]),
        (["aws.ec2"], ["EC2 Spot Instance Interruption Warning"]),
        (["aws.health"], ["AWS Health Event"]),
    ]
    for rule in rules:
        [target] = rule["Properties"]["Targets"]
        assert target["Arn"]["Fn::GetAtt"][0].startswith("InterruptionHandlerQueue")
        assert target["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0].startswith("InterruptionHandlerDeadLetterQueue")
        assert target["RetryPolicy"]["MaximumRetryAttempts"] == 10
        pattern = rule["Properties"]["EventPattern"]
        # Only the Health rule needs a detail filter; the EC2 detail-types are exact already.
        assert ("detail" in pattern) == (pattern["source"] == ["aws.health"])


def test_health_rule_matches_only_ec2_scheduled_changes_that_stop_retire_or_reboot(dev) -> None:
    from tests.interruption_lambda import messages

    [rule] = [r for r in resources_of_type(dev, "AWS::Events::Rule").values()
              if r["Properties"].get("EventPattern", {}).get("source") == ["aws.health"]]
    detail = rule["Properties"]["EventPattern"]["detail"]
    assert detail == {"service": ["EC2"], "eventTypeCategory": ["scheduledChange"],
                      "eventTypeCode": list(messages.HEALTH_EVENT_TYPE_CODES),
                      "statusCode": ["upcoming", "open"]}
    assert not any("NETWORK" in c or "POWER" in c for c in detail["eventTypeCode"])
    # A change days ahead still matters after an hour of failed deliveries; a
    # two-minute notice does not.
    [target] = rule["Properties"]["Targets"]
    assert target["RetryPolicy"]["MaximumEventAgeInSeconds"] == 3600


@pytest.mark.parametrize("stage", STAGES)
def test_queue_is_encrypted_tls_only_with_a_dlq_and_six_times_the_lambda_timeout(synthesized, stage) -> None:
    template = synthesized.stack(stage, "training").template_json
    queues = resources_of_type(template, "AWS::SQS::Queue")
    [main] = [q for k, q in queues.items() if k.startswith("InterruptionHandlerQueue")]
    [dlq] = [q for k, q in queues.items() if k.startswith("InterruptionHandlerDeadLetterQueue")]
    function = only(template, "AWS::Lambda::Function", "InterruptionHandler")
    timeout = function["Properties"]["Timeout"]
    assert timeout == synthesized.configs[stage].training.lambda_timeout_seconds
    assert main["Properties"]["VisibilityTimeout"] >= 6 * timeout
    assert main["Properties"]["RedrivePolicy"]["maxReceiveCount"] >= 5
    for queue in (main, dlq):
        assert "Key" in queue["Properties"]["KmsMasterKeyId"]["Fn::GetStackOutput"]["OutputName"]
    policies = resources_of_type(template, "AWS::SQS::QueuePolicy").values()
    assert len(policies) == 2
    for policy in policies:
        denies = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
        assert denies[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert (denies[0]["Action"], denies[0]["Principal"]) == ("sqs:*", {"AWS": "*"})


def alarms_by_metric(template: dict) -> dict[str, dict]:
    return {a["Properties"]["MetricName"]: a["Properties"]
            for a in resources_of_type(template, "AWS::CloudWatch::Alarm").values()}


def test_dead_letter_queue_alarm_goes_to_the_alerts_topic(dev) -> None:
    alarm = alarms_by_metric(dev)["ApproximateNumberOfMessagesVisible"]
    assert (alarm["MetricName"], alarm["Namespace"], alarm["Threshold"], alarm["ComparisonOperator"]) == (
        "ApproximateNumberOfMessagesVisible", "AWS/SQS", 0, "GreaterThanThreshold")
    assert alarm["Dimensions"][0]["Value"]["Fn::GetAtt"][0].startswith("InterruptionHandlerDeadLetterQueue")
    assert alarm["AlarmActions"][0]["Fn::GetStackOutput"]["StackName"] == "ml-dev-ops"
    assert alarm["TreatMissingData"] == "notBreaching"


def test_lambda_reports_batch_item_failures_and_runs_without_a_layer(dev) -> None:
    mapping = only(dev, "AWS::Lambda::EventSourceMapping")["Properties"]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["EventSourceArn"]["Fn::GetAtt"][0].startswith("InterruptionHandlerQueue")
    function = only(dev, "AWS::Lambda::Function", "InterruptionHandler")["Properties"]
    assert function["Handler"] == "handler.handler"
    # The runtime of every other function of the app, nothing from a public layer.
    runtimes = {f["Properties"]["Runtime"] for f in resources_of_type(dev, "AWS::Lambda::Function").values()}
    assert function["Runtime"] == RUNTIME.name and runtimes == {RUNTIME.name}
    assert "Layers" not in function
    env = function["Environment"]["Variables"]
    assert not [name for name in env if name.startswith("POWERTOOLS_")]
    assert env["AUTOSCALING_GROUP_NAME"] == "ml-dev-training-gpu"
    assert env["REBALANCE_ACTION"] == "checkpoint"
    assert env["CHECKPOINT_DOCUMENT_NAME"]["Ref"].startswith("InterruptionHandlerCheckpointDocument")


@pytest.mark.parametrize("stage", STAGES)
def test_a_record_failed_once_is_acted_on_within_60_seconds_of_first_delivery(synthesized, stage) -> None:
    """The time budget, from the synthesized settings (README, interruption time budget).

    A record handed back through batchItemFailures stays invisible for the
    queue's visibility timeout from its receive, then waits at most the
    batching window before the next invocation, which runs at most the
    function timeout (its in-call retries stop before that)."""
    template = synthesized.stack(stage, "training").template_json
    queues = resources_of_type(template, "AWS::SQS::Queue")
    [main] = [q["Properties"] for k, q in queues.items() if k.startswith("InterruptionHandlerQueue")]
    mapping = only(template, "AWS::Lambda::EventSourceMapping")["Properties"]
    function = only(template, "AWS::Lambda::Function", "InterruptionHandler")["Properties"]
    hook = only(template, "AWS::AutoScaling::LifecycleHook")["Properties"]
    visibility, timeout = main["VisibilityTimeout"], function["Timeout"]
    window = mapping.get("MaximumBatchingWindowInSeconds", 0)  # absent: 0 for standard queues

    worst_case = visibility + window + timeout
    assert worst_case <= 60
    assert visibility >= timeout  # CreateEventSourceMapping rejects less
    assert visibility >= 6 * timeout + window  # AWS's guidance for SQS event sources
    # A record failing every time reaches the DLQ (and its alarm) before the hook times out.
    assert main["RedrivePolicy"]["maxReceiveCount"] >= 5
    assert main["RedrivePolicy"]["maxReceiveCount"] * visibility < hook["HeartbeatTimeout"]
    assert mapping["BatchSize"] == 10
    assert mapping["ScalingConfig"] == {"MaximumConcurrency": 5}


def test_malformed_messages_alarm_the_dlq_takes_their_copies_and_failed_records_requeue(dev) -> None:
    alarm = alarms_by_metric(dev)["MalformedMessages"]
    assert (alarm["Namespace"], alarm["Statistic"], alarm["Period"], alarm["Threshold"]) == (
        "MlInfra/Training", "Sum", 60, 1)
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["Dimensions"] == [{"Name": "service", "Value": "interruption-handler"}]
    assert alarm["AlarmActions"][0]["Fn::GetStackOutput"]["StackName"] == "ml-dev-ops"
    function = only(dev, "AWS::Lambda::Function", "InterruptionHandler")["Properties"]
    env = function["Environment"]["Variables"]
    assert env["DEAD_LETTER_QUEUE_URL"]["Ref"].startswith("InterruptionHandlerDeadLetterQueue")
    assert env["QUEUE_URL"]["Ref"].startswith("InterruptionHandlerQueue")
    queues = resources_of_type(dev, "AWS::SQS::Queue")
    [main] = [q for k, q in queues.items() if k.startswith("InterruptionHandlerQueue")]
    assert env["QUEUE_VISIBILITY_TIMEOUT_SECONDS"] == str(main["Properties"]["VisibilityTimeout"])
    handler = policy_of(dev, "InterruptionHandlerRole")
    [send] = [s for s in handler if "sqs:SendMessage" in flat(s["Action"])]
    assert send["Resource"]["Fn::GetAtt"][0].startswith("InterruptionHandlerDeadLetterQueue")
    # ChangeMessageVisibility(Batch) on its own queue comes with the event source mapping's grant.
    [consume] = [s for s in handler if "sqs:ChangeMessageVisibility" in flat(s["Action"])]
    assert consume["Resource"]["Fn::GetAtt"][0].startswith("InterruptionHandlerQueue")


def test_idempotency_table_is_encrypted_with_ttl_and_point_in_time_recovery(dev) -> None:
    [table] = [t["Properties"] for k, t in resources_of_type(dev, "AWS::DynamoDB::Table").items()
               if k.startswith("InterruptionHandlerIdempotencyTable")]
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["SSESpecification"] == {"SSEEnabled": True}
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}


def test_lambda_may_complete_lifecycle_actions_of_this_group_only(dev) -> None:
    handler = policy_of(dev, "InterruptionHandlerRole")
    [complete] = [s for s in handler if s["Action"] == "autoscaling:CompleteLifecycleAction"]
    [(group_id, _)] = resources_of_type(dev, "AWS::AutoScaling::AutoScalingGroup").items()
    assert complete["Resource"] == {"Fn::GetAtt": [group_id, "AutoScalingGroupARN"]}
    assert not any("autoscaling:" in flat(s["Action"]) and s["Resource"] == "*" for s in handler)


def test_lambda_runs_only_this_stacks_document_on_fleet_tagged_instances(dev) -> None:
    handler = policy_of(dev, "InterruptionHandlerRole")
    send = [s for s in handler if s["Action"] == "ssm:SendCommand"]
    by_sid = {s["Sid"]: s for s in send}
    assert set(by_sid) == {"RunTheCheckpointDocument", "OnFleetInstancesOnly"}
    assert "InterruptionHandlerCheckpointDocument" in flat(by_sid["RunTheCheckpointDocument"]["Resource"])
    assert ":document/" in flat(by_sid["RunTheCheckpointDocument"]["Resource"])
    assert by_sid["OnFleetInstancesOnly"]["Condition"] == {
        "StringEquals": {"ssm:resourceTag/ml:training-fleet": "ml-dev-training-gpu"}}
    assert flat(by_sid["OnFleetInstancesOnly"]["Resource"]).endswith(':instance/*"]]}')
    assert not any(s["Resource"] == "*" for s in handler)
    # The lookups on * are the role's one unscoped policy.
    [wild] = unscoped_of(dev, "InterruptionHandlerRole")
    assert wild["Action"] == ["ec2:DescribeInstances", "ssm:DescribeInstanceInformation",
                              "ssm:ListCommands"]


def test_checkpoint_document_runs_the_agent_and_binds_every_parameter(dev) -> None:
    document = only(dev, "AWS::SSM::Document")["Properties"]
    assert document["DocumentType"] == "Command"
    content = document["Content"]
    assert content == checkpoint_document(budget_seconds=90)
    assert content["schemaVersion"] == "2.2"
    params = content["parameters"]
    assert set(params) == {"Reason", "EventId", "LifecycleHookName", "LifecycleActionToken",
                           "AutoScalingGroupName", "executionTimeout"}
    assert all("allowedPattern" in p for p in params.values())
    assert [params[p].get("default") for p in ("LifecycleHookName", "LifecycleActionToken",
                                               "AutoScalingGroupName")] == ["", "", ""]
    assert params["executionTimeout"]["default"] == "150"  # budget + 60
    [step] = content["mainSteps"]
    assert step["action"] == "aws:runShellScript"
    assert step["inputs"]["timeoutSeconds"] == "{{ executionTimeout }}"
    script = "\n".join(step["inputs"]["runCommand"])
    assert "exec /opt/ml-node-agent/ml_node_agent.py \"$@\"" in script
    assert "if [ -n '{{ LifecycleActionToken }}' ]" in script


@pytest.mark.parametrize(("parameter", "value"), [
    ("Reason", "spot-interruption'; reboot; '"), ("EventId", "a b"), ("EventId", "$(id)"),
    ("LifecycleHookName", "hook'"), ("LifecycleActionToken", "not-a-uuid"),
    ("AutoScalingGroupName", "g;rm -rf /"), ("executionTimeout", "1; reboot"),
])
def test_document_patterns_reject_shell_injection(parameter, value) -> None:
    pattern = checkpoint_document(budget_seconds=90)["parameters"][parameter]["allowedPattern"]
    assert not re.match(pattern, value)


@pytest.mark.parametrize(("parameter", "value"), [
    ("Reason", "lifecycle-terminate"), ("EventId", "1e5527d7-bb36-4607-3370-4164db56a40e"),
    ("LifecycleHookName", "ml-prod-training-gpu-terminating"), ("LifecycleActionToken", ""),
    ("LifecycleActionToken", "71514b9d-6a40-4b26-8523-05e7ee35fa4c"),
    ("AutoScalingGroupName", "ml-prod-training-gpu"), ("executionTimeout", "150"),
])
def test_document_patterns_accept_what_the_handler_sends(parameter, value) -> None:
    pattern = checkpoint_document(budget_seconds=90)["parameters"][parameter]["allowedPattern"]
    assert re.match(pattern, value)


# --- composition and options ------------------------------------------------------------

def test_fleet_exposes_what_other_constructs_build_on(synthesized) -> None:
    fleet = synthesized.app.node.find_child("dev").training.fleet
    assert isinstance(fleet.auto_scaling_group, autoscaling.AutoScalingGroup)
    assert isinstance(fleet.launch_template, ec2.LaunchTemplate)
    assert isinstance(fleet.user_data, ec2.UserData)
    assert isinstance(fleet.role, iam.Role) and callable(fleet.role.add_to_principal_policy)
    assert callable(fleet.auto_scaling_group.scale_on_schedule)


def _training_template(tmp_path, **training) -> dict:
    dev = default_configs()["dev"]
    config = replace(dev, training=replace(dev.training, **training))
    app = build_app([config], outdir=str(tmp_path))
    app.synth()
    return Template.from_stack(app.node.find_child("dev").training).to_json()


def test_efa_option_adds_an_efa_interface_and_a_cluster_placement_group_in_one_az(tmp_path) -> None:
    template = _training_template(tmp_path, efa_enabled=True,
                                  instance_types=("g5.12xlarge", "g6.12xlarge"))
    data = only(template, "AWS::EC2::LaunchTemplate")["Properties"]["LaunchTemplateData"]
    [interface] = data["NetworkInterfaces"]
    assert interface["InterfaceType"] == "efa" and interface["DeviceIndex"] == 0
    assert "SecurityGroupIds" not in data
    assert only(template, "AWS::EC2::PlacementGroup")["Properties"]["Strategy"] == "cluster"
    assert "FleetPlacementGroup" in flat(data["Placement"]["GroupName"])
    assert len(only(template, "AWS::AutoScaling::AutoScalingGroup")["Properties"]["VPCZoneIdentifier"]) == 1
    ingress = resources_of_type(template, "AWS::EC2::SecurityGroupIngress").values()
    assert any(r["Properties"]["IpProtocol"] == "-1" for r in ingress)
    egress = resources_of_type(template, "AWS::EC2::SecurityGroupEgress").values()
    assert any(r["Properties"]["IpProtocol"] == "-1" for r in egress)  # egress is closed otherwise


def test_log_only_rebalance_reaches_the_lambda(tmp_path) -> None:
    template = _training_template(tmp_path, rebalance_action="log-only")
    env = only(template, "AWS::Lambda::Function", "InterruptionHandler")["Properties"]["Environment"]["Variables"]
    assert env["REBALANCE_ACTION"] == "log-only"


def test_disabled_training_creates_no_training_stack(tmp_path) -> None:
    dev = default_configs()["dev"]
    app = build_app([replace(dev, training=replace(dev.training, enabled=False))], outdir=str(tmp_path))
    stage = app.node.find_child("dev")
    assert stage.training is None
    assert {s.node.id for s in stage.stacks} == set(stacks_of(stage.config))
    assert "training" not in stacks_of(stage.config)


def test_fleet_is_enrolled_in_idle_shutdown_and_publishes_gpu_metrics(dev) -> None:
    [group] = resources_of_type(dev, "AWS::AutoScaling::AutoScalingGroup").values()
    tags = {t["Key"]: t for t in group["Properties"]["Tags"]}
    assert tags["ml:idle-shutdown"]["Value"] == "enabled"
    assert tags["ml:idle-shutdown"]["PropagateAtLaunch"] is False
    # The function acts on a job-finished event only for a group its stage enrolled.
    assert (tags["ml:idle-shutdown-stage"]["Value"], tags["ml:idle-shutdown-stage"]["PropagateAtLaunch"]) \
        == ("dev", False)
    user_data = only(dev, "AWS::EC2::LaunchTemplate")["Properties"]["LaunchTemplateData"]["UserData"]
    script = "".join(p if isinstance(p, str) else "<token>"
                     for p in user_data["Fn::Base64"]["Fn::Join"][1])
    lines = script.splitlines()
    agent_line = next(i for i, line in enumerate(lines) if line.endswith("install.sh"))
    metrics_line = next(i for i, line in enumerate(lines)
                        if "amazon-cloudwatch-agent-ctl -a fetch-config" in line)
    # Checkpoint protection first: the node agent is up before the slower
    # CloudWatch agent install starts.
    assert agent_line < metrics_line
    assert "-c ssm:/ml-dev/cloudwatch-agent/gpu" in lines[metrics_line]


@pytest.mark.parametrize("stage", STAGES)
def test_off_hours_schedule_scales_the_fleet_only_where_a_stage_configures_one(synthesized, stage) -> None:
    idle = synthesized.configs[stage].idle_shutdown
    training = synthesized.configs[stage].training
    scheduled = idle.off_hours  # both crons or neither (validated)
    template = synthesized.template(stage, "training")
    template.resource_count_is("AWS::AutoScaling::ScheduledAction", 2 if scheduled else 0)
    if scheduled:
        # Night: the fleet is closed (maximum 0), so nothing can raise it
        # until the morning action reopens it at its configured maximum.
        template.has_resource_properties("AWS::AutoScaling::ScheduledAction", {
            "MinSize": 0, "DesiredCapacity": 0, "MaxSize": 0, "Recurrence": idle.off_hours_scale_in_cron,
            "TimeZone": idle.off_hours_time_zone})
        template.has_resource_properties("AWS::AutoScaling::ScheduledAction", {
            "MinSize": 0, "MaxSize": training.max_capacity, "DesiredCapacity": Match.absent(),
            "Recurrence": idle.off_hours_scale_out_cron, "TimeZone": idle.off_hours_time_zone})
