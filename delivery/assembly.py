"""Read the stacks of every stage from a synthesized cloud assembly."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable


@dataclass(frozen=True)
class AssemblyStack:
    """One stack of one stage as the CDK CLI addresses it (``<stage>/<stack>``)."""

    stage: str
    stack: str  # construct id inside the stage: "network", "storage", ...
    stack_name: str  # CloudFormation stack name: "ml-dev-network"
    template_path: Path
    environment: str = ""  # "aws://ACCOUNT/REGION" ("unknown-account" when agnostic)

    @property
    def display_name(self) -> str:
        return f"{self.stage}/{self.stack}"

    @property
    def account(self) -> str:
        return self.environment.removeprefix("aws://").partition("/")[0]

    @property
    def region(self) -> str:
        return self.environment.rpartition("/")[2]

    def template(self) -> dict:
        return json.loads(self.template_path.read_text())


def read_assembly(outdir: Path | str) -> list[AssemblyStack]:
    """Every stack of every stage (nested assembly) in manifest order.

    Stacks directly at the root (an app without stages) get stage ``""``.
    """
    outdir = Path(outdir)
    manifest = json.loads((outdir / "manifest.json").read_text())
    stacks: list[AssemblyStack] = []
    for artifact_id, artifact in manifest.get("artifacts", {}).items():
        kind = artifact.get("type")
        if kind == "cdk:cloud-assembly":
            stacks.extend(read_assembly(outdir / artifact["properties"]["directoryName"]))
        elif kind == "aws:cloudformation:stack":
            display = artifact.get("displayName", artifact_id)
            stage, _, stack = display.rpartition("/")
            props = artifact["properties"]
            stacks.append(AssemblyStack(
                stage=stage,
                stack=stack,
                stack_name=props.get("stackName", artifact_id),
                template_path=outdir / props["templateFile"],
                environment=artifact.get("environment", ""),
            ))
    return stacks


def home_regions(stacks: Iterable[AssemblyStack]) -> dict[str, str]:
    """{stage: its own region}: the region most of its stacks deploy to (a
    stage's replica stack lives in another region)."""
    counts: dict[str, Counter] = {}
    for stack in stacks:
        counts.setdefault(stack.stage, Counter())[stack.region] += 1
    return {stage: regions.most_common(1)[0][0] for stage, regions in counts.items()}


def templates_by_stack(outdir: Path | str) -> dict[tuple[str, str], dict]:
    """``{(stage, stack): template}`` of an assembly."""
    return {(s.stage, s.stack): s.template() for s in read_assembly(outdir)}
