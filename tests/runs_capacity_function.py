"""Loads the runs capacity function's handler the way Lambda does, under a
name no other function's ``handler.py`` can clash with."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

FUNCTION_DIR = Path(__file__).resolve().parent.parent / "lambda" / "runs_capacity"
HANDLER_MODULE = "runs_capacity_handler"


def handler_module() -> ModuleType:
    if HANDLER_MODULE not in sys.modules:
        spec = importlib.util.spec_from_file_location(HANDLER_MODULE, FUNCTION_DIR / "handler.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[HANDLER_MODULE] = module
        # Lambda imports the function's own modules (spot_fallback) by bare name.
        sys.path.insert(0, str(FUNCTION_DIR))
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(FUNCTION_DIR))
    return sys.modules[HANDLER_MODULE]
