"""The one place that turns stage configs into a CDK app (app.py and tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from ml_stacks.config import StageConfig
from ml_stacks.stage import MlStage

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def project_context() -> dict[str, Any]:
    """The feature flags of ``cdk.json``, so an in-process app (tests, bench)
    synthesizes exactly what the CLI does."""
    return json.loads((PROJECT_ROOT / "cdk.json").read_text())["context"]


def build_app(
    configs: Iterable[StageConfig],
    *,
    outdir: str | None = None,
    context: Mapping[str, Any] | None = None,
) -> cdk.App:
    """An app with one ``MlStage`` per config and cdk-nag AwsSolutions as its gate.

    An unacknowledged cdk-nag finding makes ``app.synth()`` raise.
    """
    app = cdk.App(
        outdir=outdir,
        context={**project_context(), **(context or {})},
        # The CDK CLI passes failSynthOnValidationErrors=false and then does
        # not fail on the report either: the gate must hold under the CLI too.
        post_cli_context={"@aws-cdk/core:failSynthOnValidationErrors": True},
    )
    for config in configs:
        MlStage(app, config=config)
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app
