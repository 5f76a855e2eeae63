"""`make refresh-amis`: public parameters in, a rewritten pin file out, old -> new printed.

SSM is stubbed (botocore Stubber validates every call against the API model;
moto cannot hold parameters under the reserved /aws/ prefix); EC2 is moto, so
DescribeImages answers for an image that really was registered.
"""

from __future__ import annotations

import datetime as dt
import io
import json

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from delivery import refresh_amis
from delivery.cli_errors import run
from ml_stacks.config import default_configs
from ml_stacks.pins import load_pins, release_version_parameter, training_ami

REGION = "us-east-1"
TODAY = dt.date(2026, 11, 29)
NEW_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Amazon Linux 2023) 20261120"
NEW_RELEASE = "1.53.0-0a1b2c3d"


@pytest.fixture
def aws(monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        [image] = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][:1]
        instance = ec2.run_instances(ImageId=image["ImageId"], MinCount=1, MaxCount=1)["Instances"][0]
        new_ami = ec2.create_image(InstanceId=instance["InstanceId"], Name=NEW_NAME)["ImageId"]
        ssm = boto3.client("ssm", region_name=REGION)
        yield {"ec2": ec2, "ssm": ssm, "new_ami": new_ami}


def pin_file(tmp_path):
    path = tmp_path / "ami_pins.json"
    path.write_text(refresh_amis.PIN_FILE.read_text())
    return path


def expect_dev(stub: Stubber, new_ami: str) -> None:
    """The calls for dev (us-east-1): the DLAMI parameter, then each AMI type's release."""
    dev = default_configs()["dev"]
    stub.add_response("get_parameter", {"Parameter": {"Name": training_ami(REGION).ssm_parameter,
                                                      "Type": "String", "Value": new_ami}},
                      {"Name": training_ami(REGION).ssm_parameter})
    for ami_type in sorted({g.ami_type for g in (dev.eks.system, *dev.eks.nodegroups.values())}):
        name = release_version_parameter(dev.eks.kubernetes_version, ami_type)
        stub.add_response("get_parameter", {"Parameter": {"Name": name, "Type": "String",
                                                          "Value": NEW_RELEASE}}, {"Name": name})


def test_rewrites_the_pins_and_prints_old_and_new(aws, tmp_path, capsys) -> None:
    path = pin_file(tmp_path)
    old = training_ami(REGION, pin_file=path)
    clients = {"ssm": aws["ssm"], "ec2": aws["ec2"]}
    with Stubber(aws["ssm"]) as stub:
        expect_dev(stub, aws["new_ami"])
        assert refresh_amis.main(["--stage", "dev"], clients=lambda s, r: clients[s], today=TODAY,
                                 pin_file=path) == 0
        stub.assert_no_pending_responses()

    out = capsys.readouterr().out
    assert f"training {REGION}: {old.ami_id} ({old.name}) -> {aws['new_ami']} ({NEW_NAME})" in out
    assert f"eks {REGION} 1.34 BOTTLEROCKET_x86_64_NVIDIA: 1.52.0-b7ac6e1a -> {NEW_RELEASE}" in out
    pinned = training_ami(REGION, pin_file=path)
    assert (pinned.ami_id, pinned.name, pinned.resolved_at) == (aws["new_ami"], NEW_NAME, "2026-11-29")
    assert pinned.ssm_parameter == old.ssm_parameter
    pins = load_pins(path)
    assert pins["eks_release_versions"][REGION]["1.34"]["BOTTLEROCKET_x86_64"]["release_version"] == NEW_RELEASE
    assert path.read_text().endswith("}\n")


def test_a_second_run_with_nothing_new_writes_nothing(aws, tmp_path, capsys) -> None:
    path = pin_file(tmp_path)
    clients = {"ssm": aws["ssm"], "ec2": aws["ec2"]}
    for _ in range(2):
        with Stubber(aws["ssm"]) as stub:
            expect_dev(stub, aws["new_ami"])
            refresh_amis.main(["--stage", "dev"], clients=lambda s, r: clients[s], today=TODAY,
                              pin_file=path)
    written = path.read_text()
    capsys.readouterr()
    with Stubber(aws["ssm"]) as stub:
        expect_dev(stub, aws["new_ami"])
        refresh_amis.main(["--stage", "dev"], clients=lambda s, r: clients[s],
                          today=TODAY + dt.timedelta(days=3), pin_file=path)
    out = capsys.readouterr().out
    assert "(unchanged)" in out and "nothing written" in out
    assert path.read_text() == written  # resolved_at stays the day the value last changed


def test_every_stage_of_a_region_is_refreshed_once(aws) -> None:
    wanted = refresh_amis.targets(default_configs().values())
    assert list(wanted) == [REGION]
    assert wanted[REGION].training
    assert wanted[REGION].releases == {("1.34", "BOTTLEROCKET_x86_64"), ("1.34", "BOTTLEROCKET_x86_64_NVIDIA")}


def test_a_parameter_that_does_not_exist_is_one_line_and_nothing_is_written(aws, tmp_path) -> None:
    path = pin_file(tmp_path)
    before = path.read_text()
    clients = {"ssm": aws["ssm"], "ec2": aws["ec2"]}
    stderr = io.StringIO()
    with Stubber(aws["ssm"]) as stub:
        stub.add_client_error("get_parameter", service_error_code="ParameterNotFound",
                              expected_params={"Name": training_ami(REGION).ssm_parameter})
        status = run(lambda: refresh_amis.main(["--stage", "dev"], clients=lambda s, r: clients[s],
                                               today=TODAY, pin_file=path), stderr=stderr)
    assert status == 1
    [line] = stderr.getvalue().splitlines()
    assert line.startswith("error: public parameter /aws/service/deeplearning/") and REGION in line
    assert path.read_text() == before


def test_an_ami_the_parameter_names_but_ec2_does_not_know_is_one_line(aws, tmp_path) -> None:
    path = pin_file(tmp_path)
    clients = {"ssm": aws["ssm"], "ec2": aws["ec2"]}
    stderr = io.StringIO()
    with Stubber(aws["ssm"]) as stub:
        stub.add_response("get_parameter", {"Parameter": {"Value": "ami-0123456789abcdef0"}},
                          {"Name": training_ami(REGION).ssm_parameter})
        status = run(lambda: refresh_amis.main(["--stage", "dev"], clients=lambda s, r: clients[s],
                                               today=TODAY, pin_file=path), stderr=stderr)
    assert status == 1
    assert "ami-0123456789abcdef0" in stderr.getvalue() and len(stderr.getvalue().splitlines()) == 1


def test_without_credentials_the_command_says_how_to_provide_them(monkeypatch, tmp_path) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    stderr = io.StringIO()
    status = run(lambda: refresh_amis.main(["--stage", "dev"], pin_file=pin_file(tmp_path)), stderr=stderr)
    assert status == 1
    [line] = stderr.getvalue().splitlines()
    assert "no AWS credentials" in line and "AWS_PROFILE" in line


def test_an_unknown_stage_is_one_line(tmp_path) -> None:
    stderr = io.StringIO()
    assert run(lambda: refresh_amis.main(["--stage", "qa"], pin_file=pin_file(tmp_path)),
               stderr=stderr) == 1
    assert stderr.getvalue().startswith("error: stages: 'qa' is not allowed")


def test_the_committed_pin_file_round_trips_through_the_writer(tmp_path) -> None:
    path = tmp_path / "pins.json"
    refresh_amis.write_pins(path, json.loads(refresh_amis.PIN_FILE.read_text()))
    assert path.read_text() == refresh_amis.PIN_FILE.read_text()
