"""The config variant `make test-config-change` runs the suite under changes what it claims.

tests/config_variants.py applies the two config changes the docs walk a
user through; these tests check the variant against the docs and that the
session really runs with it when ``ML_TEST_CONFIG_VARIANT`` is set. No synth.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import ml_stacks.config
from ml_stacks.app_factory import PROJECT_ROOT
from ml_stacks.config import ModelConfig
from tests import config_variants
from tests.conftest import CONFIG_VARIANT

DOCS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").rglob("*.md"))]


from tests.config_variants import repository_configs, repository_default_configs  # noqa: E402


def documented_model_examples() -> list[tuple[Path, ModelConfig]]:
    """Every ```python block of the docs that is one ModelConfig(...) expression, built."""
    examples = []
    for path in DOCS:
        if not path.is_file():
            continue
        for block in re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S):
            code = block.strip().rstrip(",")
            if code.startswith("ModelConfig(") and code.endswith(")"):
                # The docs' examples use the config package's names (ShadowConfig, ...).
                examples.append((path, eval(code, vars(ml_stacks.config))))  # noqa: S307 (our docs)
    return examples


def test_documented_changes_raise_dev_training_max_capacity_by_one_and_add_the_docs_model() -> None:
    before = repository_configs()
    after = config_variants.VARIANTS["documented-changes"](before)
    dev_before, dev_after = before["dev"], after["dev"]
    assert dev_after.training.max_capacity == dev_before.training.max_capacity + 1
    assert dev_after.serving.models == (*dev_before.serving.models, config_variants.DOCUMENTED_EXAMPLE_MODEL)
    assert len(dev_after.serving.models) >= 2
    # Nothing else changes: the other stages, and dev's other fields.
    assert {name: c for name, c in after.items() if name != "dev"} == {
        name: c for name, c in before.items() if name != "dev"}
    assert dataclasses.replace(dev_after, training=dev_before.training,
                               serving=dev_before.serving) == dev_before


def test_the_variant_model_is_the_docs_add_a_model_example_field_for_field() -> None:
    examples = documented_model_examples()
    assert examples, f"no ```python ModelConfig(...) example in {', '.join(p.name for p in DOCS)}"
    assert config_variants.DOCUMENTED_EXAMPLE_MODEL in [model for _, model in examples], examples


def test_the_docs_example_model_is_valid_in_the_stage_it_is_added_to() -> None:
    # StageConfig validates when built: a ConfigError here names the field.
    changed = config_variants.documented_changes(repository_configs())
    assert changed["dev"].serving.models[-1].name == config_variants.DOCUMENTED_EXAMPLE_MODEL.name


def test_an_unknown_variant_is_a_one_line_error(monkeypatch) -> None:
    monkeypatch.setenv(config_variants.ENV, "bigger")
    with pytest.raises(ValueError, match=r"^ML_TEST_CONFIG_VARIANT='bigger' is not a config variant: "
                                         r"one of documented-changes$"):
        config_variants.active()
    monkeypatch.setenv(config_variants.ENV, "")
    assert config_variants.active() is None


def test_wrap_applies_the_variant_to_what_default_configs_returns_and_passes_arguments_on() -> None:
    varied = config_variants.wrap(repository_default_configs(), "documented-changes")
    assert varied() == config_variants.documented_changes(repository_configs())
    assert varied(account="123456789012")["dev"].account == "123456789012"


def test_this_session_runs_under_the_variant_the_environment_names() -> None:
    """Under make test-config-change every default_configs() of the session is the varied one."""
    from ml_runs import cli  # binds `from ml_stacks.config import default_configs` at import

    assert CONFIG_VARIANT == config_variants.active()
    expected = repository_configs()
    if CONFIG_VARIANT is not None:
        expected = config_variants.VARIANTS[CONFIG_VARIANT](expected)
    assert ml_stacks.config.default_configs() == expected
    assert cli.default_configs() == expected
