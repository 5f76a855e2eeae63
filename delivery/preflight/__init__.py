"""``make preflight STAGE=<stage>``: read-only checks of the account a stage
is about to be deployed into, so that every account-dependent failure shows
up before any stack is touched, with its fix.

Each check is a plain function taking boto3 clients and plain values and
returning :class:`Result` rows; :mod:`delivery.preflight.runner` gathers
them for one stage and :mod:`delivery.preflight.__main__` prints them.
Every AWS call here is a Describe/Get/List/Head call (a test proves it).
"""

from __future__ import annotations

from dataclasses import dataclass

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
STATUSES = (PASS, WARN, FAIL)


@dataclass(frozen=True)
class Result:
    """One line of the preflight table.

    ``figure`` is what was compared (``need 8 vCPUs, quota 0``), ``fix`` what
    to do about a WARN or FAIL (empty on PASS).
    """

    status: str
    check: str
    figure: str
    fix: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")


def passed(check: str, figure: str) -> Result:
    return Result(PASS, check, figure)


def warned(check: str, figure: str, fix: str) -> Result:
    return Result(WARN, check, figure, fix)


def failed(check: str, figure: str, fix: str) -> Result:
    return Result(FAIL, check, figure, fix)


def error_code(error: Exception) -> str:
    """The AWS error code of a botocore ClientError, '' for anything else."""
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))
