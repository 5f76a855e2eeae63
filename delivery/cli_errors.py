"""One way for every command a user runs to report an expected failure.

An expected failure (a bad value, missing or expired credentials, an
unreachable endpoint, throttling after retries, a missing file) becomes one
line on stderr and exit status 1; a bug still raises with its traceback so
it can be reported. Commands wrap their ``main`` with :func:`run`::

    if __name__ == "__main__":
        sys.exit(run(main))

and raise :class:`UserError` for their own expected failures.
"""

from __future__ import annotations

import sys
from typing import Callable, TextIO

CREDENTIALS_HINT = ("set AWS_PROFILE (after `aws sso login --profile NAME`) or "
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
# Error codes AWS returns when the credentials themselves are the problem.
_CREDENTIAL_CODES = frozenset({
    "ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId",
    "UnrecognizedClientException", "InvalidSignatureException", "SignatureDoesNotMatch",
    "AuthFailure", "RequestExpired",
})
_THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "TooManyRequestsException",
    "RequestLimitExceeded", "ProvisionedThroughputExceededException", "SlowDown",
})


class UserError(Exception):
    """An expected failure: its message is the one line the user sees."""


def describe(error: BaseException) -> str | None:
    """The one line for an expected failure, None for anything else (a bug)."""
    if isinstance(error, UserError):
        return str(error)
    # ml_stacks.config.ConfigError already reads "<field>: <value> — <allowed>".
    if type(error).__name__ == "ConfigError":
        return str(error)
    if isinstance(error, FileNotFoundError):
        return f"{error.filename}: no such file"
    return _describe_aws(error)


def _describe_aws(error: BaseException) -> str | None:
    try:
        from botocore import exceptions as bx
    except ImportError:  # pragma: no cover - boto3 is a dev requirement
        return None
    if isinstance(error, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return f"no AWS credentials found: {CREDENTIALS_HINT}"
    if isinstance(error, (bx.TokenRetrievalError, bx.SSOTokenLoadError, bx.UnauthorizedSSOTokenError)):
        return f"AWS SSO session expired or missing ({error}): run `aws sso login` and retry"
    if isinstance(error, bx.NoRegionError):
        return "no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION)"
    if isinstance(error, bx.ProfileNotFound):
        return f"{error}: check AWS_PROFILE against ~/.aws/config"
    if isinstance(error, (bx.EndpointConnectionError, bx.ConnectTimeoutError,
                          bx.ReadTimeoutError, bx.ConnectionClosedError)):
        return f"AWS endpoint unreachable ({error}): check the network, proxy and region"
    if isinstance(error, bx.ClientError):
        return _describe_client_error(error)
    return None


def _describe_client_error(error) -> str | None:
    code = error.response.get("Error", {}).get("Code", "")
    message = error.response.get("Error", {}).get("Message", "")
    operation = getattr(error, "operation_name", "the call")
    if code in _CREDENTIAL_CODES:
        return f"AWS rejected the credentials ({code}: {message}): {CREDENTIALS_HINT}"
    if code in _THROTTLING_CODES:
        return f"AWS throttled {operation} after retries ({code}): wait a minute and retry"
    if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"):
        return (f"access denied to {operation} ({message or code}): use credentials "
                "allowed to call it (see the README's command table)")
    return None


def run(main: Callable[[], int | None], *, stderr: TextIO | None = None) -> int:
    """Call ``main``; turn an expected failure into one line on stderr and status 1."""
    stream = stderr or sys.stderr
    try:
        return int(main() or 0)
    except KeyboardInterrupt:
        stream.write("interrupted\n")
        return 130
    except Exception as error:  # noqa: BLE001 - filtered by describe(); bugs re-raise
        line = describe(error)
        if line is None:
            raise
        stream.write(f"error: {line}\n")
        return 1
