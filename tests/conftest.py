"""One synthesized app for the whole test session.

The app comes from the same ``build_app`` that ``app.py`` calls, with the
repository's stage configs, and is synthesized once (cdk-nag gate included:
an unacknowledged finding fails the fixture, and so every test).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from ml_stacks.app_factory import build_app
from ml_stacks.config import StageConfig, default_configs
from ml_stacks.serving_names import model_stack_id

STAGES = ("dev", "staging", "prod")
# The stacks every stage has ("serving" is the shared one: its dashboard);
# each model adds "serving-<model>" (stack_ids).
STACKS = ("network", "storage", "ops", "idle", "training", "serving", "eks")


def stack_ids(config: StageConfig) -> tuple[str, ...]:
    """Construct IDs of every stack of ``config``'s stage, one per model included."""
    fixed = [s for s in STACKS if (s != "training" or config.training.enabled)
             and (s != "eks" or config.eks.enabled)]
    return (*fixed, *(model_stack_id(m.name) for m in config.serving.models))


# (stage, stack) of every stack the repository's configs synthesize.
ALL_STACKS = tuple((name, stack) for name, config in default_configs().items()
                   for stack in stack_ids(config))


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


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return synthesize(default_configs(), tmp_path_factory.mktemp("cdk.out"))


@pytest.fixture(scope="session")
def all_templates(synthesized: Synthesized) -> dict[tuple[str, str], dict]:
    return {key: stack.template_json for key, stack in synthesized.stacks.items()}


def resources_of_type(template: dict, resource_type: str) -> dict[str, dict]:
    return {lid: r for lid, r in template["Resources"].items() if r["Type"] == resource_type}
