"""Loads the idle-shutdown function's modules the way Lambda does: with its
folder on ``sys.path``. The handler is registered under a name no other
function's ``handler.py`` can clash with."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

FUNCTION_DIR = Path(__file__).resolve().parent.parent / "lambda" / "idle_shutdown"
HANDLER_MODULE = "idle_shutdown_handler"


def _on_path() -> None:
    if str(FUNCTION_DIR) not in sys.path:
        sys.path.insert(0, str(FUNCTION_DIR))


def module(name: str) -> ModuleType:
    """``idle_settings``, ``idle_fleet``, ``idle_decide`` or ``idle_report``."""
    _on_path()
    return importlib.import_module(name)


def handler_module() -> ModuleType:
    if HANDLER_MODULE not in sys.modules:
        _on_path()
        spec = importlib.util.spec_from_file_location(HANDLER_MODULE, FUNCTION_DIR / "handler.py")
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[HANDLER_MODULE] = loaded
        spec.loader.exec_module(loaded)
    return sys.modules[HANDLER_MODULE]
