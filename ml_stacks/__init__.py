"""Stacks, stages and the app factory of ml-infra-cdk.

``build_app`` is imported on first use: commands that only read the stage
configs (``python -m ml_runs``, ``delivery.drift_cli``) must not load
aws_cdk and its Node runtime to do so.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_app"]


def __getattr__(name: str) -> Any:
    if name == "build_app":
        from ml_stacks.app_factory import build_app
        return build_app
    raise AttributeError(f"module 'ml_stacks' has no attribute {name!r}")
