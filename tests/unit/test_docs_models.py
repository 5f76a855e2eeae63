"""docs/models.md's add-a-model example builds a stage that passes the gates of ``make test``.

The example is read from the page itself (the first ``python`` block of
"Adding a model"), so the page cannot drift from what works.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ml_stacks.app_factory import PROJECT_ROOT
from ml_stacks.config import ModelConfig, default_configs
from ml_stacks.serving_names import model_stack_id
from tests.config_variants import repository_configs
from tests.conftest import resources_of_type, synthesize

PAGE = PROJECT_ROOT / "docs" / "models.md"


def documented_model() -> ModelConfig:
    """The ``ModelConfig(...)`` of the page's example, evaluated as the stage file would."""
    section = PAGE.read_text().split("## Adding a model", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, re.DOTALL)[:1]
    expression = ast.parse(code.strip().rstrip(","), mode="eval")
    assert isinstance(expression.body, ast.Call) and expression.body.func.id == "ModelConfig"
    return eval(compile(expression, str(PAGE), "eval"), {"ModelConfig": ModelConfig})  # noqa: S307


@pytest.fixture(scope="module")
def with_example(tmp_path_factory):
    # The repository's dev (not a variant's, which already holds the example).
    dev = repository_configs()["dev"]
    model = documented_model()
    config = replace(dev, serving=replace(dev.serving, models=(*dev.serving.models, model)))
    # synthesize() runs cdk-nag: an unacknowledged finding fails here.
    return model, synthesize({"dev": config}, tmp_path_factory.mktemp("docs-example"))


def test_the_example_is_a_model_from_the_stage_repository(with_example) -> None:
    model, _ = with_example
    assert model.image_tag is not None and model.model_data_key is not None


def test_the_example_passes_cdk_nag_and_cfn_lint(with_example) -> None:
    _, synthesized = with_example
    report = json.loads((synthesized.outdir / "validation-report.json").read_text())
    assert all(not p.get("violations") for p in report["pluginReports"])
    templates = sorted(str(s.template_path) for s in synthesized.stacks.values())
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), "--format", "parseable", "--", *templates],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=False,
    )
    # E1022 here was the README example's failure: Fn::Split of a cross-stack ARN.
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_example_gets_its_own_stack_pulling_its_tag_from_the_stage_repository(with_example) -> None:
    model, synthesized = with_example
    stack = synthesized.stack("dev", model_stack_id(model.name))
    assert stack.stack_name == f"ml-dev-serving-{model.name}"
    [sagemaker_model] = resources_of_type(stack.template_json, "AWS::SageMaker::Model").values()
    image = sagemaker_model["Properties"]["PrimaryContainer"]["Image"]
    assert "Fn::Split" not in json.dumps(image)
    parts = image["Fn::Join"][1]
    assert parts[-1] == f":{model.image_tag}"
    assert parts[-2]["Fn::GetStackOutput"]["StackName"] == "ml-dev-storage"
