"""delivery.cli_errors: expected failures are one line, bugs keep their traceback."""

import io

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from delivery.cli_errors import UserError, run
from ml_stacks.config import ConfigError


def _run(exc: BaseException) -> tuple[int, str]:
    err = io.StringIO()

    def main() -> int:
        raise exc

    return run(main, stderr=err), err.getvalue()


@pytest.mark.parametrize("exc, expected", [
    (UserError("stage: 'foo' is not a stage"), "stage: 'foo' is not a stage"),
    (ConfigError("stages", "foo", "dev, staging, prod"), "stages: 'foo' is not allowed"),
    (NoCredentialsError(), "no AWS credentials found: set AWS_PROFILE"),
    (EndpointConnectionError(endpoint_url="https://sts.example"), "AWS endpoint unreachable"),
    (ClientError({"Error": {"Code": "ExpiredToken", "Message": "expired"}}, "GetCallerIdentity"),
     "AWS rejected the credentials (ExpiredToken"),
    (ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow"}}, "DescribeStacks"),
     "AWS throttled DescribeStacks after retries"),
    (FileNotFoundError(2, "No such file", "spec.json"), "spec.json: no such file"),
])
def test_expected_failure_is_one_line_and_status_1(exc, expected):
    status, output = _run(exc)
    assert status == 1
    assert output.startswith("error: " + expected)
    assert output.count("\n") == 1 and "Traceback" not in output


def test_unexpected_failure_keeps_its_traceback():
    with pytest.raises(KeyError):
        _run(KeyError("bug"))


def test_unknown_client_error_is_a_bug():
    with pytest.raises(ClientError):
        _run(ClientError({"Error": {"Code": "InternalFailure", "Message": "x"}}, "Op"))


def test_success_returns_mains_status():
    assert run(lambda: 3) == 3
    assert run(lambda: None) == 0
