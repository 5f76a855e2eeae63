"""One synthesized app for the whole test session.

The app comes from the same ``build_app`` that ``app.py`` calls, with the
repository's stage configs, and is synthesized once (cdk-nag gate included:
an unacknowledged finding fails the fixture, and so every test).

Tests read stage values from ``synthesized.configs[stage]`` (or build their
own small configs), never from literals: with ``ML_TEST_CONFIG_VARIANT`` set
(``make test-config-change``), ``default_configs()`` returns the configs as
a user changed them (tests/config_variants.py), and the suite minus the
snapshots must pass all the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from ml_stacks.app_factory import build_app
from ml_stacks.config import StageConfig
from ml_stacks.serving_names import model_stack_id
from tests import config_variants

try:
    # Before any test module imports default_configs (see the docstring).
    CONFIG_VARIANT, _VARIANT_ERROR = config_variants.install(), None
except ValueError as error:
    CONFIG_VARIANT, _VARIANT_ERROR = None, str(error)


def pytest_configure(config: pytest.Config) -> None:
    if _VARIANT_ERROR:
        raise pytest.UsageError(_VARIANT_ERROR)


def _stage_names() -> tuple[str, ...]:
    import ml_stacks.config

    return tuple(ml_stacks.config.default_configs())


# The stages default_configs() builds (after the variant, if any), in order.
STAGES = _stage_names()
# Every fixed stack a stage can have; training and eks only where the stage
# enables them, replica only with storage.replication_region. "serving" is the
# shared one (its dashboard); each model adds "serving-<model>" (stacks_of).
STACKS = ("network", "replica", "storage", "ops", "idle", "training", "serving", "eks")


def stacks_of(config: StageConfig) -> tuple[str, ...]:
    """Construct IDs of every stack ``build_app`` gives the stage ``config``, one per model included."""
    disabled = {"training"} if not config.training.enabled else set()
    disabled |= {"eks"} if not config.eks.enabled else set()
    disabled |= {"replica"} if config.storage.replication_region is None else set()
    fixed = tuple(s for s in STACKS if s not in disabled)
    return (*fixed, *(model_stack_id(m.name) for m in config.serving.models))


def _all_stacks() -> tuple[tuple[str, str], ...]:
    import ml_stacks.config

    return tuple((name, stack) for name, config in ml_stacks.config.default_configs().items()
                 for stack in stacks_of(config))


# (stage, stack) of every stack the configs synthesize (after the variant, if any).
ALL_STACKS = _all_stacks()


@dataclass(frozen=True)
class SynthesizedStack:
    stage: str
    name: str  # construct id inside the stage: "network", "storage"
    stack_name: str
    template_path: Path
    termination_protection: bool
    environment: str

    @property
    def template_json(self) -> dict:
        return json.loads(self.template_path.read_text())

    @property
    def template(self) -> Template:
        return Template.from_json(self.template_json)


@dataclass(frozen=True)
class Synthesized:
    app: cdk.App
    outdir: Path
    configs: dict[str, StageConfig]
    stacks: dict[tuple[str, str], SynthesizedStack]

    def stack(self, stage: str, name: str) -> SynthesizedStack:
        return self.stacks[(stage, name)]

    def template(self, stage: str, name: str) -> Template:
        return self.stacks[(stage, name)].template


def synthesize(configs: dict[str, StageConfig], outdir: Path) -> Synthesized:
    app = build_app(configs.values(), outdir=str(outdir))
    assembly = app.synth()
    stacks: dict[tuple[str, str], SynthesizedStack] = {}
    for nested in assembly.nested_assemblies:
        for artifact in nested.nested_assembly.stacks:
            stage, name = artifact.hierarchical_id.split("/")
            stacks[(stage, name)] = SynthesizedStack(
                stage=stage,
                name=name,
                stack_name=artifact.stack_name,
                template_path=Path(nested.nested_assembly.directory) / artifact.template_file,
                termination_protection=bool(artifact.termination_protection),
                environment=artifact.environment.name,
            )
    return Synthesized(app=app, outdir=outdir, configs=configs, stacks=stacks)


def pytest_report_header(config: pytest.Config) -> str | None:
    if CONFIG_VARIANT:
        return f"stage configs: {config_variants.ENV}={CONFIG_VARIANT} (tests/config_variants.py)"
    return None


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    import ml_stacks.config

    return synthesize(ml_stacks.config.default_configs(), tmp_path_factory.mktemp("cdk.out"))


@pytest.fixture(scope="session")
def all_templates(synthesized: Synthesized) -> dict[tuple[str, str], dict]:
    return {key: stack.template_json for key, stack in synthesized.stacks.items()}


def resources_of_type(template: dict, resource_type: str) -> dict[str, dict]:
    return {lid: r for lid, r in template["Resources"].items() if r["Type"] == resource_type}
