"""Stacks, stages and the app factory of ml-infra-cdk."""

from ml_stacks.app_factory import build_app

__all__ = ["build_app"]
