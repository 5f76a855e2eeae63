"""A stage of 200 models synthesizes and passes every gate of ``make test``.

With one stack per model, no stack grows with the number of models: the
limit that comes next is the account's (stacks, endpoint instances), which
``make preflight`` checks (docs/models.md, "Scale limits").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ml_stacks.app_factory import PROJECT_ROOT
from ml_stacks.config import default_configs
from tests.conftest import stacks_of, synthesize
from tests.serving_scale import with_models

MODELS = 200
# CloudFormation's limit of resources per stack.
MAX_RESOURCES = 500


@pytest.fixture(scope="module")
def large_stage(tmp_path_factory):
    config = with_models(default_configs()["dev"], MODELS)
    # synthesize() runs the cdk-nag gate: an unacknowledged finding raises.
    return synthesize({"dev": config}, tmp_path_factory.mktemp("large"))


@pytest.mark.scale
def test_a_stage_of_200_models_has_a_stack_per_model_far_below_the_resource_limit(large_stage) -> None:
    config = large_stage.configs["dev"]
    assert len(config.serving.models) == MODELS
    assert set(large_stage.stacks) == {("dev", stack) for stack in stacks_of(config)}
    counts = {name: len(stack.template_json["Resources"]) for (_, name), stack in large_stage.stacks.items()}
    model_counts = {n: c for n, c in counts.items() if n.startswith("serving-")}
    assert len(model_counts) == MODELS
    # A model stack holds one endpoint whatever the stage's size.
    assert max(model_counts.values()) <= 30
    assert max(counts.values()) < MAX_RESOURCES
    report = json.loads((large_stage.outdir / "validation-report.json").read_text())
    assert all(not p.get("violations") for p in report["pluginReports"])


@pytest.mark.scale
def test_a_stage_of_200_models_passes_cfn_lint(large_stage) -> None:
    templates = sorted(str(s.template_path) for s in large_stage.stacks.values())
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), "--format", "parseable", "--", *templates],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
