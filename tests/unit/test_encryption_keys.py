"""One key per data class, key policies that admit services only under the
conditions they support, every log group encrypted with the logs key, and no
KMS wildcard in any identity policy (docs/security.md, "Encryption keys")."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import replace

import pytest
from aws_cdk.assertions import Template

from ml_stacks.app_factory import build_app
from ml_stacks.config import default_configs
from ml_stacks.log_groups import log_group_name_patterns
from tests.conftest import STAGES, replicated_dev, resources_of_type

DATA_KEY, CAPTURE_KEY, LOGS_KEY, MESSAGING_KEY = (
    "Key961B73FD", "CaptureKey0B937016", "LogsKeyA6AB43B2", "MessagingKey9A79A2B1")


def key_reference(value, stack: str, stage: str, key_id: str) -> bool:
    """``value`` is ``key_id``'s ARN: a GetAtt in the storage stack, a stack output elsewhere."""
    if stack == "storage":
        return value == {"Fn::GetAtt": [key_id, "Arn"]}
    output = value.get("Fn::GetStackOutput", {}) if isinstance(value, dict) else {}
    return (output.get("StackName") == f"ml-{stage}-storage"
            and output.get("OutputName", "").startswith(f"PublishOutputFnGetAtt{key_id}Arn"))


def key_policy(all_templates, stage: str, key_id: str) -> list[dict]:
    return all_templates[(stage, "storage")]["Resources"][key_id]["Properties"]["KeyPolicy"]["Statement"]


def listed(value) -> list:
    return value if isinstance(value, list) else [value]


def flat(value, stage_uuid: str = "<uuid>") -> str:
    """A CloudFormation string with pseudo parameters and the stack UUID spelled out."""
    if isinstance(value, str):
        return value
    if "Fn::Join" in value:
        return "".join(flat(part, stage_uuid) for part in value["Fn::Join"][1])
    if value.get("Ref") == "AWS::AccountId":
        return "123456789012"
    if "Fn::Select" in value:
        return stage_uuid
    raise AssertionError(f"unexpected value {value}")


# --- gap 9: keys by data class ----------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_each_data_class_has_its_own_key(all_templates, stage) -> None:
    buckets = {lid: r for lid, r in resources_of_type(all_templates[(stage, "storage")], "AWS::S3::Bucket").items()
               if "BucketEncryption" in r["Properties"]}
    key_of = {lid[:-8]: r["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
              ["ServerSideEncryptionByDefault"].get("KMSMasterKeyID") for lid, r in buckets.items()}
    assert key_of["DataCapture"] == {"Fn::GetAtt": [CAPTURE_KEY, "Arn"]}
    for name in ("TrainingData", "Checkpoints", "ModelArtifacts"):
        assert key_of[name] == {"Fn::GetAtt": [DATA_KEY, "Arn"]}, name
    [topic] = resources_of_type(all_templates[(stage, "ops")], "AWS::SNS::Topic").values()
    assert key_reference(topic["Properties"]["KmsMasterKeyId"], "ops", stage, MESSAGING_KEY)
    queues = resources_of_type(all_templates[(stage, "training")], "AWS::SQS::Queue")
    assert len(queues) == 2 and all(key_reference(q["Properties"]["KmsMasterKeyId"], "training", stage,
                                                  MESSAGING_KEY) for q in queues.values())
    [table] = [t for lid, t in resources_of_type(all_templates[(stage, "training")], "AWS::DynamoDB::Table").items()
               if lid.startswith("RunsTable")]
    assert key_reference(table["Properties"]["SSESpecification"]["KMSMasterKeyId"], "training", stage, DATA_KEY)
    for (template_stage, stack), template in all_templates.items():
        if template_stage != stage or not stack.startswith("serving-"):
            continue  # one stack per model: each captures with the capture key
        for config in resources_of_type(template, "AWS::SageMaker::EndpointConfig").values():
            assert key_reference(config["Properties"]["DataCaptureConfig"]["KmsKeyId"], stack, stage,
                                 CAPTURE_KEY), stack


@pytest.mark.parametrize("stage", STAGES)
def test_no_service_principal_uses_a_key_without_a_condition(all_templates, stage) -> None:
    for key_id in (DATA_KEY, CAPTURE_KEY, LOGS_KEY, MESSAGING_KEY):
        for statement in key_policy(all_templates, stage, key_id):
            if "Service" in statement["Principal"] or statement["Principal"] == {"AWS": "*"}:
                assert statement.get("Condition"), (key_id, statement)
    # Capture payloads: no service principal at all, only the account's IAM policies.
    assert [s["Principal"] for s in key_policy(all_templates, stage, CAPTURE_KEY)] == [
        {"AWS": {"Fn::Join": ["", ["arn:aws:iam::", {"Ref": "AWS::AccountId"}, ":root"]]}}]


@pytest.mark.parametrize("stage", STAGES)
def test_logs_key_admits_cloudwatch_logs_for_exactly_the_stage_log_group_names(synthesized, all_templates,
                                                                               stage) -> None:
    config = synthesized.configs[stage]
    [statement] = [s for s in key_policy(all_templates, stage, LOGS_KEY) if "Service" in s["Principal"]]
    assert statement["Principal"] == {"Service": f"logs.{config.region}.amazonaws.com"}
    assert list(statement["Condition"]) == ["ArnLike"]
    arns = [flat(a) for a in listed(statement["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"])]
    prefix = f"arn:aws:logs:{config.region}:123456789012:log-group:"
    assert arns == [prefix + pattern for pattern in log_group_name_patterns(config)]
    assert arns[0] == f"{prefix}/ml-{stage}/*"
    # No other key admits CloudWatch Logs.
    for key_id in (DATA_KEY, CAPTURE_KEY, MESSAGING_KEY):
        assert "logs." not in json.dumps(key_policy(all_templates, stage, key_id)), key_id


@pytest.mark.parametrize("stage", STAGES)
def test_messaging_key_admits_publishers_only_for_this_accounts_topics_and_rules(all_templates, stage) -> None:
    statements = {s.get("Sid"): s for s in key_policy(all_templates, stage, MESSAGING_KEY)}
    topics = "kms:EncryptionContext:aws:sns:topicArn"
    alarms = statements["AllowAlarmsAndBudgetsToPublishToStageTopics"]
    assert alarms["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert flat(alarms["Condition"]["ArnLike"][topics]).endswith(":123456789012:*")
    events_topics = statements["AllowEventBridgeToPublishToStageTopics"]
    # EventBridge -> encrypted SNS sends no aws:SourceAccount (DESIGN.md, "First deploy").
    assert events_topics["Condition"] == {"ArnLike": {topics: alarms["Condition"]["ArnLike"][topics]}}
    events_queues = statements["AllowEventBridgeRulesToSendToStageQueues"]
    assert events_queues["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert flat(events_queues["Condition"]["ArnLike"]["aws:SourceArn"]).endswith(":123456789012:rule/*")
    for statement in (alarms, events_topics, events_queues):
        assert statement["Action"] == ["kms:Decrypt", "kms:GenerateDataKey"]


@pytest.mark.parametrize("stage", STAGES)
def test_the_storage_stack_depends_on_no_other_stack(all_templates, stage) -> None:
    # It holds the keys every other stack uses: a reference back would be a cycle.
    assert "Fn::GetStackOutput" not in json.dumps(all_templates[(stage, "storage")])
    assert "Fn::ImportValue" not in json.dumps(all_templates[(stage, "storage")])


# --- gap 8: every log group encrypted with the logs key ---------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_every_log_group_is_encrypted_with_the_logs_key_and_named_as_the_key_admits(
        synthesized, all_templates, stage) -> None:
    patterns = log_group_name_patterns(synthesized.configs[stage])
    groups = 0
    for (template_stage, stack), template in all_templates.items():
        if template_stage != stage:
            continue
        for logical_id, group in resources_of_type(template, "AWS::Logs::LogGroup").items():
            groups += 1
            props = group["Properties"]
            assert key_reference(props.get("KmsKeyId"), stack, stage, LOGS_KEY), (stack, logical_id)
            assert "RetentionInDays" in props, (stack, logical_id)
            name = flat(props["LogGroupName"])
            assert any(fnmatch.fnmatchcase(name, p) for p in patterns), (stack, name)
    # Flow logs, drift, idle, interruption, runs, runs capacity, tagger, EKS, SageMaker, providers.
    assert groups >= 10


@pytest.mark.parametrize("stage", STAGES)
def test_every_function_logs_to_a_log_group_of_the_stack(all_templates, stage) -> None:
    for (template_stage, stack), template in all_templates.items():
        if template_stage != stage:
            continue
        groups = resources_of_type(template, "AWS::Logs::LogGroup")
        for logical_id, function in resources_of_type(template, "AWS::Lambda::Function").items():
            target = function["Properties"].get("LoggingConfig", {}).get("LogGroup")
            assert isinstance(target, dict) and target.get("Ref") in groups, (stack, logical_id, target)


# --- explicit KMS actions ----------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_no_identity_policy_grants_a_kms_wildcard(all_templates, stage) -> None:
    for (template_stage, stack), template in all_templates.items():
        if template_stage != stage:
            continue
        for logical_id, policy in resources_of_type(template, "AWS::IAM::Policy").items():
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                wild = [a for a in listed(statement["Action"]) if a.startswith("kms:") and "*" in a]
                assert not wild, (stack, logical_id, wild)


@pytest.mark.parametrize("stage", STAGES)
def test_key_actions_that_go_through_sqs_sns_and_dynamodb_are_bound_to_them(synthesized, all_templates,
                                                                            stage) -> None:
    region = synthesized.configs[stage].region
    training = all_templates[(stage, "training")]
    via = {}
    for policy in resources_of_type(training, "AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if any(a in ("kms:GenerateDataKey", "kms:Encrypt") for a in listed(statement["Action"])):
                service = statement.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService")
                assert service, statement
                via.setdefault(service.split(".")[0], []).append(statement)
    # Checkpoints (S3), the runs table (DynamoDB), alerts (SNS), hook and DLQ sends (SQS).
    assert set(via) == {"s3", "dynamodb", "sns", "sqs"}
    assert all(s["Condition"]["StringEquals"]["kms:ViaService"].endswith(f".{region}.amazonaws.com")
               for statements in via.values() for s in statements)


@pytest.mark.parametrize("stage", STAGES)
def test_no_acknowledgement_covers_a_kms_action_wildcard(synthesized, stage) -> None:
    report = json.loads((synthesized.outdir / "validation-report.json").read_text())
    acknowledged = [v["acknowledgedId"] for p in report["pluginReports"] for v in p["suppressedViolations"]
                    if any(c["constructPath"].startswith(f"{stage}/") for c in v["violatingConstructs"])]
    assert not [a for a in acknowledged if "[Action::kms:" in a]


def test_the_kubectl_provider_functions_log_to_an_encrypted_group_too(tmp_path) -> None:
    # Only a stage with an AL2023 NVIDIA group has the provider (none of the
    # repository's stages): its two functions have no logging option of their own.
    dev = default_configs()["dev"]
    dev = replace(dev, eks=replace(dev.eks, gpu_inference=replace(dev.eks.gpu_inference,
                                                                  ami_type="AL2023_x86_64_NVIDIA")))
    app = build_app([dev], outdir=str(tmp_path))
    app.synth()
    template = Template.from_stack(app.node.find_child("dev").eks).to_json()
    groups = resources_of_type(template, "AWS::Logs::LogGroup")
    functions = resources_of_type(template, "AWS::Lambda::Function")
    kubectl = {lid: f for lid, f in functions.items() if "KubectlProvider" in lid}
    assert len(kubectl) == 2
    [provider_group] = {f["Properties"]["LoggingConfig"]["LogGroup"]["Ref"] for f in kubectl.values()}
    props = groups[provider_group]["Properties"]
    assert key_reference(props["KmsKeyId"], "eks", "dev", LOGS_KEY)
    assert props["LogGroupName"]["Fn::Join"][1][0] == "/ml-dev/eks/kubectl-provider/"


def test_a_replica_that_empties_itself_logs_to_a_group_encrypted_in_its_own_region(tmp_path) -> None:
    # A stage that keeps no data, replicated (to try replication out): CDK's
    # provider Lambda empties the replicas on destroy, in the replica's region,
    # where the stage's logs key (a regional resource) cannot encrypt its logs.
    dev, replica_region = replicated_dev()
    replica = Template.from_stack(build_app([dev], outdir=str(tmp_path)).node.find_child("dev").replica).to_json()
    [function] = resources_of_type(replica, "AWS::Lambda::Function").values()
    groups = resources_of_type(replica, "AWS::Logs::LogGroup")
    [group_id] = groups
    assert function["Properties"]["LoggingConfig"]["LogGroup"] == {"Ref": group_id}
    group = groups[group_id]["Properties"]
    keys = resources_of_type(replica, "AWS::KMS::Key")
    [logs_key] = [k for k in keys if group["KmsKeyId"] == {"Fn::GetAtt": [k, "Arn"]}]
    assert group["RetentionInDays"] == 30
    name = flat(group["LogGroupName"])
    patterns = log_group_name_patterns(dev)
    assert any(fnmatch.fnmatchcase(name, p) for p in patterns), name
    # Its key admits CloudWatch Logs of the replica's region, for the stage's groups only.
    [statement] = [s for s in keys[logs_key]["Properties"]["KeyPolicy"]["Statement"] if "Service" in s["Principal"]]
    assert statement["Principal"] == {"Service": f"logs.{replica_region}.amazonaws.com"}
    arns = [flat(a) for a in listed(statement["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"])]
    assert arns == [f"arn:aws:logs:{replica_region}:123456789012:log-group:{p}" for p in patterns]
    # The replicas' own key admits no logs service.
    [replica_key] = [k for k in keys if k != logs_key]
    assert "logs." not in json.dumps(keys[replica_key]["Properties"]["KeyPolicy"])


def test_a_retained_replica_has_no_provider_and_no_logs_key(all_templates) -> None:
    replicated = [stage for stage in STAGES if (stage, "replica") in all_templates]
    assert replicated, "a stage of the repository replicates (prod)"
    for stage in replicated:
        replica = all_templates[(stage, "replica")]
        assert not resources_of_type(replica, "AWS::Lambda::Function")
        assert len(resources_of_type(replica, "AWS::KMS::Key")) == 1
