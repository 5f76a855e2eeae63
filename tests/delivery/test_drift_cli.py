"""`make drift STAGE=...`: the CI side of drift detection, same checks as the Lambda."""

from __future__ import annotations

import datetime as dt

import boto3
from botocore.stub import Stubber

from delivery import drift_cli

NOW = dt.datetime(2026, 11, 23, 5, 30, tzinfo=dt.timezone.utc)


def test_fails_and_writes_the_drifted_resources_to_the_job_summary(monkeypatch, tmp_path, capsys) -> None:
    cfn = boto3.client("cloudformation", region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    monkeypatch.setattr(boto3, "client", lambda service, region_name: cfn)
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    stack_id = "arn:aws:cloudformation:us-east-1:111122223333:stack/ml-staging-storage/1"
    with Stubber(cfn) as stub:
        stub.add_response("list_stacks", {"StackSummaries": [
            {"StackName": "ml-staging-storage", "StackId": stack_id, "CreationTime": NOW,
             "StackStatus": "UPDATE_COMPLETE"},
            {"StackName": "ml-dev-storage", "StackId": stack_id, "CreationTime": NOW,
             "StackStatus": "UPDATE_COMPLETE"}]})
        stub.add_response("detect_stack_drift", {"StackDriftDetectionId": "d-1"},
                          {"StackName": "ml-staging-storage"})
        stub.add_response("describe_stack_drift_detection_status", {
            "StackId": stack_id, "StackDriftDetectionId": "d-1", "DetectionStatus": "DETECTION_COMPLETE",
            "StackDriftStatus": "DRIFTED", "DriftedStackResourceCount": 1, "Timestamp": NOW})
        stub.add_response("describe_stack_resource_drifts", {"StackResourceDrifts": [{
            "StackId": stack_id, "LogicalResourceId": "TrainingData1A2B3C4D", "PhysicalResourceId": "ml-staging-td",
            "ResourceType": "AWS::S3::Bucket", "StackResourceDriftStatus": "MODIFIED", "Timestamp": NOW,
            "PropertyDifferences": [{"PropertyPath": "/VersioningConfiguration/Status", "ExpectedValue": "",
                                     "ActualValue": "Enabled", "DifferenceType": "ADD"}]}]})
        assert drift_cli.main(["--stage", "staging"]) == 1
        stub.assert_no_pending_responses()
    assert "[ml-staging] CloudFormation drift: 1 stack(s) drifted" in capsys.readouterr().out
    text = summary.read_text()
    assert "MODIFIED AWS::S3::Bucket TrainingData1A2B3C4D (ml-staging-td)" in text
    assert "ADD /VersioningConfiguration/Status" in text


def test_checks_the_stages_stacks_in_each_of_its_regions(monkeypatch, capsys) -> None:
    from ml_stacks.config import default_configs

    config = default_configs()["prod"]
    assert len(config.regions) > 1, "prod replicates into another region"
    clients = {region: boto3.client("cloudformation", region_name=region, aws_access_key_id="testing",
                                    aws_secret_access_key="testing") for region in config.regions}
    monkeypatch.setattr(boto3, "client", lambda service, region_name: clients[region_name])
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    stubs = {region: Stubber(client) for region, client in clients.items()}
    for region, stub in stubs.items():
        name = f"{config.stack_prefix}-in-{region}"
        stack_id = f"arn:aws:cloudformation:{region}:111122223333:stack/{name}/1"
        stub.add_response("list_stacks", {"StackSummaries": [
            {"StackName": name, "StackId": stack_id, "CreationTime": NOW, "StackStatus": "CREATE_COMPLETE"}]})
        stub.add_response("detect_stack_drift", {"StackDriftDetectionId": f"d-{region}"}, {"StackName": name})
        stub.add_response("describe_stack_drift_detection_status", {
            "StackId": stack_id, "StackDriftDetectionId": f"d-{region}", "DetectionStatus": "DETECTION_COMPLETE",
            "StackDriftStatus": "IN_SYNC", "Timestamp": NOW})
        stub.activate()
    assert drift_cli.main(["--stage", "prod"]) == 0
    for stub in stubs.values():
        stub.assert_no_pending_responses()
    out = capsys.readouterr().out
    assert f"{config.stack_prefix}-in-{config.region}: IN_SYNC" in out
    for region in config.regions[1:]:
        assert f"{config.stack_prefix}-in-{region} ({region}): IN_SYNC" in out
