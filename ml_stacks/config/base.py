"""Shared pieces of every config section: the error type, the checks and the value tables they use."""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any, Mapping


_REGION_RE = re.compile(
    r"^(us|eu|ap|sa|ca|me|af|il|mx)(-gov)?-"
    r"(north|south|east|west|central|northeast|southeast|northwest|southwest)-[1-9]$"
)
_ACCOUNT_RE = re.compile(r"^\d{12}$")
# Characters AWS accepts in tag keys and values.
_TAG_VALUE_RE = re.compile(r"^[\w .:/=+\-@]*$")


class ConfigError(ValueError):
    """A configuration value is not allowed.

    The message always has the shape ``<field>: <value> — <what is allowed>``.
    """

    def __init__(self, field_path: str, value: object, allowed: str) -> None:
        self.field_path = field_path
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field_path}: {value!r} is not allowed — {allowed}")


def _require(condition: bool, field_path: str, value: object, allowed: str) -> None:
    if not condition:
        raise ConfigError(field_path, value, allowed)


# The retention periods CloudWatch Logs accepts, in days, with the
# aws_logs.RetentionDays member for each.
LOG_RETENTION_DAYS: Mapping[int, str] = {
    1: "ONE_DAY", 3: "THREE_DAYS", 5: "FIVE_DAYS", 7: "ONE_WEEK", 14: "TWO_WEEKS",
    30: "ONE_MONTH", 60: "TWO_MONTHS", 90: "THREE_MONTHS", 120: "FOUR_MONTHS",
    150: "FIVE_MONTHS", 180: "SIX_MONTHS", 365: "ONE_YEAR", 400: "THIRTEEN_MONTHS",
    545: "EIGHTEEN_MONTHS", 731: "TWO_YEARS", 1096: "THREE_YEARS", 1827: "FIVE_YEARS",
    2192: "SIX_YEARS", 2557: "SEVEN_YEARS", 2922: "EIGHT_YEARS", 3288: "NINE_YEARS",
    3653: "TEN_YEARS",
}


_CRON_FIELD_RE = re.compile(r"^[0-9A-Za-z*/,\-?#L]+$")
_TAG_KEY_RE = re.compile(r"^[\w .:/=+\-@]{1,128}$")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _from_mapping(cls: type, values: Mapping[str, Any], path: str) -> dict[str, Any]:
    """``values`` as keyword arguments of dataclass ``cls``; an unknown key is
    rejected with the list of allowed keys (a typo must not be ignored)."""
    _require(isinstance(values, Mapping), path, values, "a mapping of field names to values")
    allowed = [f.name for f in fields(cls)]
    for key in values:
        _require(key in allowed, f"{path}.{key}", key, "a known field: " + ", ".join(allowed))
    return dict(values)
