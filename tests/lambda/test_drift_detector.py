"""The drift detector: which stacks it checks, what it reports, when it notifies.

botocore's Stubber validates every call's parameters and every canned
response against the real CloudFormation and SNS API models.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import sys
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

CODE = Path(__file__).resolve().parents[2] / "lambda" / "drift_detector"
sys.path.insert(0, str(CODE))
import drift_checks  # noqa: E402

_spec = importlib.util.spec_from_file_location("drift_detector_handler", CODE / "handler.py")
handler_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(handler_module)

TOPIC = "arn:aws:sns:us-east-1:111122223333:ml-dev-ops-Alerts91F83244-AbCdEf123456"
NOW = dt.datetime(2026, 11, 23, 6, 0, tzinfo=dt.timezone.utc)
EVENT = json.loads((Path(__file__).parent / "fixtures" / "scheduled_event.json").read_text())


def _client(service: str):
    return boto3.client(service, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def _summary(name: str, status: str = "UPDATE_COMPLETE") -> dict:
    return {"StackName": name, "StackId": f"arn:aws:cloudformation:us-east-1:111122223333:stack/{name}/1",
            "CreationTime": NOW, "StackStatus": status}


def _expect_list(stub: Stubber, names: list[str]) -> None:
    stub.add_response("list_stacks", {"StackSummaries": [_summary(n) for n in names]},
                      {"StackStatusFilter": list(drift_checks.CHECKABLE_STATUSES)})


def _status(detection_id: str, name: str, detection: str, drift: str | None = None, count: int = 0) -> dict:
    response = {"StackId": f"arn:aws:cloudformation:us-east-1:111122223333:stack/{name}/1",
                "StackDriftDetectionId": detection_id, "DetectionStatus": detection, "Timestamp": NOW}
    if drift:
        response["StackDriftStatus"] = drift
        response["DriftedStackResourceCount"] = count
    return response


def _forever() -> int:
    return 600_000


def test_checks_only_this_stages_stacks_and_notifies_the_drifted_one() -> None:
    cfn, sns = _client("cloudformation"), _client("sns")
    with Stubber(cfn) as cfn_stub, Stubber(sns) as sns_stub:
        # ml-devtools-x shares the "ml-dev" prefix but not "ml-dev-".
        _expect_list(cfn_stub, ["ml-dev-network", "ml-dev-storage", "ml-prod-network", "ml-devtools-x"])
        cfn_stub.add_response("detect_stack_drift", {"StackDriftDetectionId": "d-net"},
                              {"StackName": "ml-dev-network"})
        cfn_stub.add_response("detect_stack_drift", {"StackDriftDetectionId": "d-sto"},
                              {"StackName": "ml-dev-storage"})
        cfn_stub.add_response("describe_stack_drift_detection_status",
                              _status("d-net", "ml-dev-network", "DETECTION_IN_PROGRESS"),
                              {"StackDriftDetectionId": "d-net"})
        cfn_stub.add_response("describe_stack_drift_detection_status",
                              _status("d-sto", "ml-dev-storage", "DETECTION_COMPLETE", "IN_SYNC"),
                              {"StackDriftDetectionId": "d-sto"})
        cfn_stub.add_response("describe_stack_drift_detection_status",
                              _status("d-net", "ml-dev-network", "DETECTION_COMPLETE", "DRIFTED", 1),
                              {"StackDriftDetectionId": "d-net"})
        cfn_stub.add_response("describe_stack_resource_drifts", {"StackResourceDrifts": [{
            "StackId": "arn:aws:cloudformation:us-east-1:111122223333:stack/ml-dev-network/1",
            "LogicalResourceId": "VpcEndpointsSecurityGroup1A2B3C4D",
            "PhysicalResourceId": "sg-0123456789abcdef0",
            "ResourceType": "AWS::EC2::SecurityGroup",
            "StackResourceDriftStatus": "MODIFIED",
            "Timestamp": NOW,
            "PropertyDifferences": [{"PropertyPath": "/SecurityGroupIngress/1", "ExpectedValue": "",
                                     "ActualValue": "{\"CidrIp\":\"0.0.0.0/0\"}", "DifferenceType": "ADD"}],
        }]}, {"StackName": "ml-dev-network", "StackResourceDriftStatusFilters": ["MODIFIED", "DELETED"]})

        sleeps: list[float] = []
        report = drift_checks.detect(cfn, "dev", "ml-dev-", remaining_ms=_forever, sleep=sleeps.append)

        sns_stub.add_response("publish", {"MessageId": "m-1"}, {
            "TopicArn": TOPIC,
            "Subject": "[ml-dev] CloudFormation drift: 1 stack(s) drifted",
            "Message": drift_checks.render(report)[1],
        })
        assert drift_checks.notify(sns, TOPIC, report) == "m-1"
        cfn_stub.assert_no_pending_responses()
        sns_stub.assert_no_pending_responses()

    assert sleeps == [drift_checks.POLL_SECONDS]
    assert [(s.stack_name, s.status) for s in report.stacks] == [
        ("ml-dev-network", "DRIFTED"), ("ml-dev-storage", "IN_SYNC")]
    body = drift_checks.render(report)[1]
    assert "MODIFIED AWS::EC2::SecurityGroup VpcEndpointsSecurityGroup1A2B3C4D (sg-0123456789abcdef0)" in body
    assert "ADD /SecurityGroupIngress/1" in body
    # Only the path goes into the message: actual values can hold anything.
    assert "0.0.0.0/0" not in body


def test_stays_quiet_when_every_stack_is_in_sync() -> None:
    cfn, sns = _client("cloudformation"), _client("sns")
    with Stubber(cfn) as cfn_stub, Stubber(sns) as sns_stub:
        _expect_list(cfn_stub, ["ml-dev-ops"])
        cfn_stub.add_response("detect_stack_drift", {"StackDriftDetectionId": "d-ops"}, {"StackName": "ml-dev-ops"})
        cfn_stub.add_response("describe_stack_drift_detection_status",
                              _status("d-ops", "ml-dev-ops", "DETECTION_COMPLETE", "IN_SYNC"))
        report = drift_checks.detect(cfn, "dev", "ml-dev-", remaining_ms=_forever, sleep=lambda s: None)
        assert drift_checks.notify(sns, TOPIC, report) is None  # the stub has no publish: none made
        sns_stub.assert_no_pending_responses()
    assert not report.needs_attention


def test_a_stack_that_cannot_be_checked_is_reported_not_called_in_sync() -> None:
    cfn = _client("cloudformation")
    with Stubber(cfn) as cfn_stub:
        _expect_list(cfn_stub, ["ml-dev-network", "ml-dev-storage"])
        cfn_stub.add_client_error("detect_stack_drift", "ValidationError",
                                  "Stack ml-dev-network is in UPDATE_IN_PROGRESS state",
                                  expected_params={"StackName": "ml-dev-network"})
        cfn_stub.add_response("detect_stack_drift", {"StackDriftDetectionId": "d-sto"},
                              {"StackName": "ml-dev-storage"})
        cfn_stub.add_response("describe_stack_drift_detection_status", {
            **_status("d-sto", "ml-dev-storage", "DETECTION_FAILED", "IN_SYNC"),
            "DetectionStatusReason": "Failed to detect drift on resource [Key961B73FD]",
        })
        report = drift_checks.detect(cfn, "dev", "ml-dev-", remaining_ms=_forever, sleep=lambda s: None)
    assert [(s.stack_name, s.status) for s in report.stacks] == [
        ("ml-dev-network", "UNKNOWN"), ("ml-dev-storage", "UNKNOWN")]
    assert "UPDATE_IN_PROGRESS" in report.stacks[0].detail
    assert report.needs_attention
    assert drift_checks.render(report)[0] == "[ml-dev] CloudFormation drift: 2 not checked"


def test_reports_unfinished_detections_before_the_function_times_out() -> None:
    cfn = _client("cloudformation")
    with Stubber(cfn) as cfn_stub:
        _expect_list(cfn_stub, ["ml-dev-network"])
        cfn_stub.add_response("detect_stack_drift", {"StackDriftDetectionId": "d-net"})
        cfn_stub.add_response("describe_stack_drift_detection_status",
                              _status("d-net", "ml-dev-network", "DETECTION_IN_PROGRESS"))
        report = drift_checks.detect(cfn, "dev", "ml-dev-", remaining_ms=lambda: 20_000,
                                     sleep=lambda s: pytest.fail("must not wait past the deadline"))
    assert report.stacks[0].status == "UNKNOWN"
    assert report.stacks[0].detail == "detection did not finish in time"


def test_handler_reads_its_stage_from_the_environment_and_publishes_to_the_topic(monkeypatch) -> None:
    cfn, sns = _client("cloudformation"), _client("sns")
    monkeypatch.setenv("STAGE", "dev")
    monkeypatch.setenv("STACK_PREFIX", "ml-dev-")
    monkeypatch.setenv("TOPIC_ARN", TOPIC)
    monkeypatch.setattr(handler_module.boto3, "client",
                        lambda service: {"cloudformation": cfn, "sns": sns}[service])

    class Context:
        @staticmethod
        def get_remaining_time_in_millis() -> int:
            return 600_000

    with Stubber(cfn) as cfn_stub, Stubber(sns) as sns_stub:
        _expect_list(cfn_stub, ["ml-dev-ops"])
        cfn_stub.add_response("detect_stack_drift", {"StackDriftDetectionId": "d-ops"}, {"StackName": "ml-dev-ops"})
        cfn_stub.add_response("describe_stack_drift_detection_status",
                              _status("d-ops", "ml-dev-ops", "DETECTION_COMPLETE", "DRIFTED", 1))
        cfn_stub.add_response("describe_stack_resource_drifts", {"StackResourceDrifts": [{
            "StackId": "arn:aws:cloudformation:us-east-1:111122223333:stack/ml-dev-ops/1",
            "LogicalResourceId": "Alerts91F83244", "ResourceType": "AWS::SNS::Topic",
            "StackResourceDriftStatus": "DELETED", "Timestamp": NOW}], "NextToken": "page-2"})
        cfn_stub.add_response("describe_stack_resource_drifts", {"StackResourceDrifts": []}, {
            "StackName": "ml-dev-ops", "StackResourceDriftStatusFilters": ["MODIFIED", "DELETED"],
            "NextToken": "page-2"})
        sns_stub.add_response("publish", {"MessageId": "m-2"})
        result = handler_module.handler(EVENT, Context())
        cfn_stub.assert_no_pending_responses()
        sns_stub.assert_no_pending_responses()
    assert result == {"stage": "dev", "checked": 1, "drifted": ["ml-dev-ops"], "unchecked": [],
                      "notified": True}


def test_stacks_in_the_stages_other_regions_are_checked_there_and_named_with_their_region() -> None:
    home, replica_region = _client("cloudformation"), boto3.client(
        "cloudformation", region_name="us-west-2", aws_access_key_id="testing", aws_secret_access_key="testing")
    replica_id = "arn:aws:cloudformation:us-west-2:111122223333:stack/ml-prod-replica/1"
    with Stubber(home) as home_stub, Stubber(replica_region) as replica_stub:
        _expect_list(home_stub, ["ml-prod-storage"])
        home_stub.add_response("detect_stack_drift", {"StackDriftDetectionId": "d-sto"},
                               {"StackName": "ml-prod-storage"})
        home_stub.add_response("describe_stack_drift_detection_status",
                               _status("d-sto", "ml-prod-storage", "DETECTION_COMPLETE", "IN_SYNC"),
                               {"StackDriftDetectionId": "d-sto"})
        _expect_list(replica_stub, ["ml-prod-replica", "ml-staging-replica"])
        replica_stub.add_response("detect_stack_drift", {"StackDriftDetectionId": "d-rep"},
                                  {"StackName": "ml-prod-replica"})
        replica_stub.add_response("describe_stack_drift_detection_status", {
            **_status("d-rep", "ml-prod-replica", "DETECTION_COMPLETE", "DRIFTED", 1), "StackId": replica_id},
            {"StackDriftDetectionId": "d-rep"})
        replica_stub.add_response("describe_stack_resource_drifts", {"StackResourceDrifts": [{
            "StackId": replica_id, "LogicalResourceId": "TrainingData3FDB6D34",
            "PhysicalResourceId": "ml-prod-training-data-replica-111122223333-us-west-2",
            "ResourceType": "AWS::S3::Bucket", "StackResourceDriftStatus": "MODIFIED", "Timestamp": NOW,
            "PropertyDifferences": [{"PropertyPath": "/VersioningConfiguration/Status", "ExpectedValue": "Enabled",
                                     "ActualValue": "Suspended", "DifferenceType": "NOT_EQUAL"}]}]},
            {"StackName": "ml-prod-replica", "StackResourceDriftStatusFilters": ["MODIFIED", "DELETED"]})
        report = drift_checks.detect(home, "prod", "ml-prod-", remaining_ms=_forever, sleep=lambda s: None,
                                     other_regions={"us-west-2": replica_region})
        home_stub.assert_no_pending_responses()
        replica_stub.assert_no_pending_responses()
    assert [(s.label, s.status) for s in report.stacks] == [
        ("ml-prod-replica (us-west-2)", "DRIFTED"), ("ml-prod-storage", "IN_SYNC")]
    subject, body = drift_checks.render(report)
    assert subject == "[ml-prod] CloudFormation drift: 1 stack(s) drifted"
    assert "ml-prod-replica (us-west-2): DRIFTED (1 resources drifted)" in body
    assert "NOT_EQUAL /VersioningConfiguration/Status" in body


def test_handler_checks_the_regions_its_environment_names(monkeypatch) -> None:
    home, sns = _client("cloudformation"), _client("sns")
    replica_region = boto3.client("cloudformation", region_name="us-west-2", aws_access_key_id="testing",
                                  aws_secret_access_key="testing")
    monkeypatch.setenv("STAGE", "prod")
    monkeypatch.setenv("STACK_PREFIX", "ml-prod-")
    monkeypatch.setenv("TOPIC_ARN", TOPIC)
    monkeypatch.setenv("OTHER_REGIONS", "us-west-2")
    made: list[tuple[str, str | None]] = []

    def client(service, region_name=None):
        made.append((service, region_name))
        return {("cloudformation", None): home, ("cloudformation", "us-west-2"): replica_region,
                ("sns", None): sns}[(service, region_name)]

    monkeypatch.setattr(handler_module.boto3, "client", client)

    class Context:
        @staticmethod
        def get_remaining_time_in_millis() -> int:
            return 600_000

    with Stubber(home) as home_stub, Stubber(replica_region) as replica_stub:
        _expect_list(home_stub, [])
        _expect_list(replica_stub, ["ml-prod-replica"])
        replica_stub.add_client_error("detect_stack_drift", "AccessDenied", "not authorized",
                                      expected_params={"StackName": "ml-prod-replica"})
        with Stubber(sns) as sns_stub:
            sns_stub.add_response("publish", {"MessageId": "m-3"})
            result = handler_module.handler(EVENT, Context())
    assert ("cloudformation", "us-west-2") in made
    assert result == {"stage": "prod", "checked": 1, "drifted": [],
                      "unchecked": ["ml-prod-replica (us-west-2)"], "notified": True}
