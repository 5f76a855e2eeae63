"""A run spec: read from a JSON (or YAML) file, validated before anything is written.

Every rejection is one line naming the field, the value and what is allowed
(the same shape as ``ml_stacks.config.ConfigError``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from delivery.cli_errors import UserError

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Docker image reference grammar (distribution/reference): an optional
# registry host[:port], lowercase path components separated by / and an
# optional :tag and/or @digest.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_RE = re.compile(
    rf"^(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*(?::{_TAG})?(?:@{_DIGEST})?$")
IMAGE_NAME_MAX = 255
# Set by the node agent for every trainer (RUNS_CONTRACT.md): a spec may not
# override them.
RESERVED_ENV = frozenset({"ML_RUN_ID", "ML_CHECKPOINT_DIR", "ML_RESUME_FROM",
                          "ML_CHECKPOINT_DONE_MARKER", "ML_TRAINING_SIGNAL"})
# A run item must stay far below DynamoDB's 400 KB item limit, attempts included.
SPEC_MAX_BYTES = 64 * 1024
FIELDS = ("name", "image", "command", "args", "environment", "gpus", "max_failures",
          "max_duration_minutes")


class SpecError(UserError):
    """``spec.<field>: <value> is not allowed — <what is allowed>``."""

    def __init__(self, field_path: str, value: object, allowed: str) -> None:
        self.field_path, self.value, self.allowed = field_path, value, allowed
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"spec.{field_path}: {shown} is not allowed — {allowed}")


@dataclass(frozen=True)
class Limits:
    """What the stage allows: the most GPUs one instance has and the defaults."""

    max_gpus: int
    default_max_failures: int
    default_max_duration_minutes: int
    gpu_source: str = ""  # e.g. "g5.xlarge 1, g6.xlarge 1"; shown in the gpus error


@dataclass(frozen=True)
class RunSpec:
    name: str
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    gpus: int = 1
    max_failures: int = 3
    max_duration_minutes: int = 72 * 60

    def as_item(self) -> dict[str, Any]:
        """The ``spec`` map of the run item (RUNS_CONTRACT.md)."""
        return {
            "image": self.image,
            "command": list(self.command),
            "args": list(self.args),
            "environment": dict(self.environment),
            "gpus": self.gpus,
            "max_failures": self.max_failures,
            "max_duration_minutes": self.max_duration_minutes,
        }


def load(path: Path) -> Any:
    """The spec file's content: JSON, or YAML for a ``.yaml``/``.yml`` file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise UserError(f"{path}: not valid YAML{where}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON at line {error.lineno}: {error.msg}") from None


def validate(raw: Any, limits: Limits) -> RunSpec:
    """A ``RunSpec`` from the parsed file, or ``SpecError`` on the first bad field."""
    if not isinstance(raw, dict):
        raise SpecError("(top level)", type(raw).__name__, "an object with " + ", ".join(FIELDS))
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise SpecError(unknown[0], raw[unknown[0]], "a field of a run spec: " + ", ".join(FIELDS))
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SpecError("name", name, "1 to 48 lowercase letters, digits and '-', starting and "
                                      "ending with a letter or digit")
    image = raw.get("image")
    if not isinstance(image, str) or not IMAGE_RE.match(image):
        raise SpecError("image", image, "an image reference [registry/]repository[:tag][@digest], "
                                        "e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/ml-dev/images:trainer-1")
    if len(_image_name(image)) > IMAGE_NAME_MAX:
        raise SpecError("image", image, f"a name (registry and repository) of at most {IMAGE_NAME_MAX} "
                                        "characters")
    spec = RunSpec(
        name=name,
        image=image,
        command=_strings(raw, "command"),
        args=_strings(raw, "args"),
        environment=_environment(raw.get("environment", {})),
        gpus=_integer(raw, "gpus", 1, 1, limits.max_gpus,
                      f"1 to {limits.max_gpus} (the most GPUs one instance of the fleet has"
                      + (f": {limits.gpu_source})" if limits.gpu_source else ")")),
        max_failures=_integer(raw, "max_failures", limits.default_max_failures, 1, None,
                              "a whole number of trainer failures, at least 1"),
        max_duration_minutes=_integer(raw, "max_duration_minutes", limits.default_max_duration_minutes,
                                      1, None, "a whole number of minutes, at least 1"),
    )
    size = len(json.dumps(spec.as_item()).encode())
    if size > SPEC_MAX_BYTES:
        raise SpecError("(size)", f"{size} bytes", f"at most {SPEC_MAX_BYTES} bytes of spec")
    return spec


def _image_name(image: str) -> str:
    """The reference without its digest and tag (a tag's ':' follows the last '/')."""
    name = image.split("@", 1)[0]
    colon = name.rfind(":")
    return name[:colon] if colon > name.rfind("/") else name


def _strings(raw: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = raw.get(name, [])
    if not isinstance(value, list):
        raise SpecError(name, value, "a list of strings, e.g. [\"python\", \"train.py\"]")
    for index, item in enumerate(value):
        if not isinstance(item, str) or "\x00" in item:
            raise SpecError(f"{name}[{index}]", item, "a string (without NUL characters)")
    return tuple(value)


def _environment(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise SpecError("environment", value, "a map of variable names to string values")
    for key, item in value.items():
        if not isinstance(key, str) or not ENV_NAME_RE.match(key):
            raise SpecError("environment", key, "variable names of letters, digits and _, not "
                                                "starting with a digit")
        if key in RESERVED_ENV:
            raise SpecError(f"environment.{key}", item, "not set by a spec: the node agent sets "
                                                        + ", ".join(sorted(RESERVED_ENV)))
        if not isinstance(item, str) or "\x00" in item:
            raise SpecError(f"environment.{key}", item,
                            "a string (quote numbers and booleans, e.g. \"42\")")
    return dict(value)


def _integer(raw: Mapping[str, Any], name: str, default: int, low: int, high: int | None,
             allowed: str) -> int:
    value = raw.get(name, default)
    if (not isinstance(value, int) or isinstance(value, bool) or value < low
            or (high is not None and value > high)):
        raise SpecError(name, value, allowed)
    return value
