"""What the security review reads from a synthesized cloud assembly.

    python -m delivery.iam_report [cdk.out]
        acknowledged cdk-nag findings per rule and stage, then every IAM
        statement on ``Resource: *`` per stage (principal, actions)
    python -m delivery.iam_report [cdk.out] --acknowledgements
        the reviewed acknowledgement list (stage-independent, sorted, one a
        line): what tests/unit/acknowledgements.txt holds
    python -m delivery.iam_report [cdk.out] --update
        rewrite tests/unit/acknowledgements.txt from the assembly

``make acknowledgements`` synthesizes and runs ``--update``: commit the diff
with the change that made it, so every new acknowledgement is reviewed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from delivery.assembly import home_regions, read_assembly
from delivery.cli_errors import UserError, run

REVIEWED_LIST = Path(__file__).resolve().parent.parent / "tests" / "unit" / "acknowledgements.txt"
NAG_PLUGIN = "AwsSolutions"
# IAM resource types whose statements carry policies.
_POLICY_TYPES = ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")


@dataclass(frozen=True)
class Acknowledgement:
    """One acknowledged finding of one stage."""

    stage: str
    plugin: str
    rule: str  # e.g. AwsSolutions-IAM5, W3010
    finding: str  # the part in brackets (Resource::*, Action::s3:List*) or ""
    path: str  # construct path of the violating construct, without the stage
    reason: str

    def line(self, names: dict[str, str]) -> str:
        """The stage-independent line: stage-specific names replaced."""
        fields = (f"{self.plugin}::{self.rule}", self.path, self.finding or "-", self.reason)
        return " | ".join(_neutral(field, names) for field in fields)


def _neutral(text: str, names: dict[str, str]) -> str:
    # Longest first: "ml-dev" before "dev".
    for value in sorted(names, key=len, reverse=True):
        text = text.replace(value, names[value])
    return text


def _split_rule(rule_name: str) -> tuple[str, str]:
    match = re.fullmatch(r"([^\[]+)(?:\[(.*)\])?", rule_name, flags=re.DOTALL)
    assert match, rule_name
    return match.group(1), match.group(2) or ""


def read_report(assembly: Path) -> dict:
    report_file = assembly / "validation-report.json"
    if not report_file.exists():
        raise UserError(f"{report_file}: no validation report (synthesize first: make synth)")
    return json.loads(report_file.read_text())


def acknowledgements(assembly: Path) -> list[Acknowledgement]:
    """Every acknowledged finding of the assembly, one per violating construct."""
    result = []
    for plugin in read_report(assembly).get("pluginReports", []):
        name = plugin["pluginName"]
        for violation in plugin.get("suppressedViolations", []):
            rule, finding = _split_rule(violation["ruleName"])
            for construct in violation.get("violatingConstructs", []):
                stage, _, path = construct["constructPath"].partition("/")
                result.append(Acknowledgement(stage=stage, plugin=name, rule=rule, finding=finding,
                                              path=path, reason=" ".join(violation["reason"].split())))
    return result


def stage_names(assembly: Path) -> dict[str, dict[str, str]]:
    """Per stage, its specific strings -> placeholders: stack name prefix,
    account, its region (the one most of its stacks are in) as ``<region>``
    and any other region it deploys to (the replica's) as ``<other-region>``,
    so an acknowledgement there is a line of its own."""
    stacks = read_assembly(assembly)
    home = home_regions(stacks)
    names: dict[str, dict[str, str]] = defaultdict(dict)
    for stack in stacks:
        stage = names[stack.stage]
        stage[stack.region] = "<region>" if stack.region == home[stack.stage] else "<other-region>"
        stage[stack.stack_name.rsplit("-", 1)[0]] = "<prefix>"
        if stack.account.isdigit():
            stage[stack.account] = "<account>"
    return dict(names)


def stages_of(assembly: Path) -> list[str]:
    """The stages of the assembly, sorted."""
    return sorted({stack.stage for stack in read_assembly(assembly)})


def acknowledgement_lines(assembly: Path) -> list[str]:
    """The reviewed list: one line per distinct acknowledgement, sorted; a
    line that not every stage has ends with the stages that have it."""
    names = stage_names(assembly)
    stages = stages_of(assembly)
    by_line: dict[str, set[str]] = defaultdict(set)
    for ack in acknowledgements(assembly):
        by_line[ack.line(names[ack.stage])].add(ack.stage)
    return sorted(line if sorted(found) == stages else f"{line} | only: {','.join(sorted(found))}"
                  for line, found in by_line.items())


def unscoped_statements(assembly: Path) -> Iterator[tuple[str, str, str, list[str]]]:
    """(stage, stack display name, policy logical ID, actions) of every IAM
    statement that allows on ``Resource: *``."""
    for stack in read_assembly(assembly):
        for logical_id, statement in _statements(stack.template()):
            if statement.get("Effect") == "Allow" and "*" in _as_list(statement.get("Resource", [])):
                yield stack.stage, stack.stack, logical_id, sorted(_as_list(statement.get("Action", [])))


def _statements(template: dict) -> Iterable[tuple[str, dict]]:
    for logical_id, resource in template.get("Resources", {}).items():
        props = resource.get("Properties", {})
        if resource.get("Type") in _POLICY_TYPES:
            for statement in props.get("PolicyDocument", {}).get("Statement", []):
                yield logical_id, statement
        elif resource.get("Type") == "AWS::IAM::Role":
            for policy in props.get("Policies", []) or []:
                for statement in policy.get("PolicyDocument", {}).get("Statement", []):
                    yield logical_id, statement


def _as_list(value: object) -> list:
    return value if isinstance(value, list) else [value]


def report(assembly: Path) -> str:
    acks = [a for a in acknowledgements(assembly) if a.plugin == NAG_PLUGIN]
    stages = stages_of(assembly)
    per_rule: dict[str, Counter[str]] = defaultdict(Counter)
    for ack in acks:
        kind = ack.finding.split("::")[0] if ack.finding else ""
        per_rule[f"{ack.rule}[{kind}]" if kind else ack.rule][ack.stage] += 1
    width = max([len(rule) for rule in per_rule] + [len("total")])
    lines = ["cdk-nag AwsSolutions acknowledgements per rule and stage",
             f"  {'rule':<{width}}  " + "  ".join(f"{s:>7}" for s in stages)]
    for rule in sorted(per_rule):
        lines.append(f"  {rule:<{width}}  " + "  ".join(f"{per_rule[rule][s]:>7}" for s in stages))
    totals = Counter(a.stage for a in acks)
    lines.append(f"  {'total':<{width}}  " + "  ".join(f"{totals[s]:>7}" for s in stages)
                 + f"   (all stages: {len(acks)})")
    unscoped = list(unscoped_statements(assembly))
    counts = Counter(stage for stage, *_ in unscoped)
    lines.append("")
    lines.append("IAM statements on Resource: * per stage: "
                 + ", ".join(f"{s} {counts[s]}" for s in stages))
    for stage, stack, logical_id, actions in unscoped:
        shown = ", ".join(actions[:6]) + (f", ... ({len(actions)} actions)" if len(actions) > 6 else "")
        lines.append(f"  {stage}/{stack} {logical_id}: {shown}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m delivery.iam_report", description=__doc__.split("\n")[0])
    parser.add_argument("assembly", nargs="?", default="cdk.out", type=Path)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--acknowledgements", action="store_true",
                      help="print the stage-independent acknowledgement list")
    mode.add_argument("--update", action="store_true",
                      help=f"rewrite {REVIEWED_LIST.relative_to(REVIEWED_LIST.parents[2])}")
    args = parser.parse_args(argv)
    if not (args.assembly / "manifest.json").exists():
        raise UserError(f"{args.assembly}: not a cloud assembly (synthesize first: make synth)")
    try:
        return _run(args)
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run(args: argparse.Namespace) -> int:
    if args.update:
        lines = acknowledgement_lines(args.assembly)
        REVIEWED_LIST.write_text("\n".join(lines) + "\n")
        print(f"{REVIEWED_LIST}: {len(lines)} acknowledgements")
    elif args.acknowledgements:
        print("\n".join(acknowledgement_lines(args.assembly)))
    else:
        print(report(args.assembly))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
