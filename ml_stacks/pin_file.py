"""A JSON pin file of the repository (``ami_pins.json``, ``model_pins.json``).

Read and validated at synth, rewritten only by its ``make refresh-*``
command, so every change of a pinned version is a reviewed diff.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from ml_stacks.config import ConfigError

Validator = Callable[[Any, str], None]


def load(path: Path, validate: Validator, *, described_in: str) -> dict[str, Any]:
    """The pin file at ``path`` as a dict, checked by ``validate(pins, file name)``:
    a malformed pin fails at synth with one ConfigError naming it."""
    path = Path(path)
    return json.loads(_parse(path.read_text(), path.name, validate, described_in))


@lru_cache(maxsize=16)
def _parse(text: str, where: str, validate: Validator, described_in: str) -> str:
    """``text`` validated, normalized; cached on the content, so a rewritten file is re-read."""
    try:
        pins = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(where, error.msg, f"valid JSON (see {described_in})") from None
    validate(pins, where)
    return json.dumps(pins)


def write(path: Path, pins: dict[str, Any], *, sort_keys: bool = False) -> None:
    """``pins`` to ``path`` the way the repository keeps it: indented, one trailing newline."""
    Path(path).write_text(json.dumps(pins, indent=2, sort_keys=sort_keys) + "\n")


def report(changes: list, *, pins: dict[str, Any], pin_file: Path, sort_keys: bool = False,
           what_diff_shows: str) -> None:
    """Print each change (``old -> new``); write ``pins`` only when one changed."""
    for change in changes:
        print(change.line())
    changed = [c for c in changes if c.old != c.new]
    if not changed:
        print("every pin is current; nothing written")
        return
    write(pin_file, pins, sort_keys=sort_keys)
    print(f"{len(changed)} pin(s) changed in {Path(pin_file).name}: commit it; `make diff` shows "
          f"{what_diff_shows}")
